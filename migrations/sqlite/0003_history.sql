-- Room history kept in the database (REALTIME_HISTORY_PERSIST=true); see the PostgreSQL
-- migration of the same name.
CREATE TABLE IF NOT EXISTS realtime_messages (
    room_name TEXT NOT NULL,
    epoch TEXT NOT NULL,
    msg_offset INTEGER NOT NULL,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (room_name, epoch, msg_offset)
);
CREATE INDEX IF NOT EXISTS idx_realtime_messages_room_created
    ON realtime_messages(room_name, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_realtime_messages_expires ON realtime_messages(expires_at);
