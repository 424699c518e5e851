-- nself-realtime schema for the embedded SQLite store. It mirrors the PostgreSQL schema of the
-- original plugin (same tables and columns) so that the CLI reads both backends the same way.
-- Types map as: UUID -> TEXT, TIMESTAMPTZ -> TEXT (RFC 3339, UTC), JSONB -> TEXT (JSON), INET -> TEXT.

CREATE TABLE IF NOT EXISTS realtime_connections (
    id TEXT PRIMARY KEY,
    socket_id TEXT NOT NULL UNIQUE,
    user_id TEXT,
    session_id TEXT,
    status TEXT NOT NULL DEFAULT 'connected',
    transport TEXT,
    ip_address TEXT,
    user_agent TEXT,
    device_info TEXT,
    connected_at TEXT NOT NULL,
    disconnected_at TEXT,
    last_ping TEXT,
    last_pong TEXT,
    latency_ms INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    node_id TEXT
);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_user_id ON realtime_connections(user_id);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_status ON realtime_connections(status);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_connected_at ON realtime_connections(connected_at);

CREATE TABLE IF NOT EXISTS realtime_rooms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL DEFAULT 'channel',
    visibility TEXT NOT NULL DEFAULT 'public',
    max_members INTEGER,
    is_active INTEGER NOT NULL DEFAULT 1,
    settings TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_realtime_rooms_type ON realtime_rooms(type);
CREATE INDEX IF NOT EXISTS idx_realtime_rooms_is_active ON realtime_rooms(is_active);

CREATE TABLE IF NOT EXISTS realtime_room_members (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES realtime_rooms(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'member',
    is_muted INTEGER NOT NULL DEFAULT 0,
    is_banned INTEGER NOT NULL DEFAULT 0,
    joined_at TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    metadata TEXT,
    UNIQUE (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_realtime_room_members_user_id ON realtime_room_members(user_id);

CREATE TABLE IF NOT EXISTS realtime_presence (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'offline',
    custom_status TEXT,
    custom_emoji TEXT,
    last_active TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    expires_at TEXT,
    connections_count INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_realtime_presence_status ON realtime_presence(status);

-- thread_id '' stands for "no thread" so that the uniqueness holds without a thread
-- (the original's UNIQUE never matched NULLs and duplicated rows).
CREATE TABLE IF NOT EXISTS realtime_typing (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES realtime_rooms(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    thread_id TEXT,
    started_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_realtime_typing ON realtime_typing(room_id, user_id, COALESCE(thread_id, ''));
CREATE INDEX IF NOT EXISTS idx_realtime_typing_expires_at ON realtime_typing(expires_at);

CREATE TABLE IF NOT EXISTS realtime_events (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    socket_id TEXT,
    user_id TEXT,
    room_id TEXT REFERENCES realtime_rooms(id) ON DELETE SET NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    ip_address TEXT,
    metadata TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_realtime_events_event_type ON realtime_events(event_type);
CREATE INDEX IF NOT EXISTS idx_realtime_events_created_at ON realtime_events(created_at);
