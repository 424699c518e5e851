-- Room history kept in the database (REALTIME_HISTORY_PERSIST=true): the messages of rooms with
-- history, by room, epoch (the history's generation) and offset, until they expire. Content is
-- kept only here, only for rooms with history and only for their TTL (the audit log never
-- stores it).
CREATE TABLE IF NOT EXISTS realtime_messages (
    room_name VARCHAR(255) NOT NULL,
    epoch VARCHAR(64) NOT NULL,
    msg_offset BIGINT NOT NULL,
    message JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_name, epoch, msg_offset)
);
CREATE INDEX IF NOT EXISTS idx_realtime_messages_room_created
    ON realtime_messages(room_name, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_realtime_messages_expires ON realtime_messages(expires_at);
