-- nself-realtime schema for PostgreSQL (12+). It is the original plugin's schema (same tables,
-- columns, types, views, functions and triggers), fixed where the original was broken, plus what
-- the product adds. Every statement is idempotent: it applies to an empty database, to a database
-- the original plugin created, and a second time to its own result.

CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

-- ---------------------------------------------------------------------------------------------
-- Tables of the original
-- ---------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS realtime_connections (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    socket_id VARCHAR(255) UNIQUE NOT NULL,
    user_id VARCHAR(255),
    session_id VARCHAR(255),
    status VARCHAR(20) DEFAULT 'connected',
    transport VARCHAR(20),
    ip_address INET,
    user_agent TEXT,
    device_info JSONB,
    connected_at TIMESTAMPTZ DEFAULT NOW(),
    disconnected_at TIMESTAMPTZ,
    last_ping TIMESTAMPTZ DEFAULT NOW(),
    last_pong TIMESTAMPTZ DEFAULT NOW(),
    latency_ms INTEGER,
    metadata JSONB DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_socket_id ON realtime_connections(socket_id);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_user_id ON realtime_connections(user_id);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_status ON realtime_connections(status);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_connected_at ON realtime_connections(connected_at);

CREATE TABLE IF NOT EXISTS realtime_rooms (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    name VARCHAR(255) UNIQUE NOT NULL,
    type VARCHAR(50) DEFAULT 'channel',
    visibility VARCHAR(20) DEFAULT 'public',
    max_members INTEGER,
    is_active BOOLEAN DEFAULT TRUE,
    settings JSONB DEFAULT '{}',
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_realtime_rooms_name ON realtime_rooms(name);
CREATE INDEX IF NOT EXISTS idx_realtime_rooms_type ON realtime_rooms(type);
CREATE INDEX IF NOT EXISTS idx_realtime_rooms_is_active ON realtime_rooms(is_active);

CREATE TABLE IF NOT EXISTS realtime_room_members (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    room_id UUID REFERENCES realtime_rooms(id) ON DELETE CASCADE,
    user_id VARCHAR(255) NOT NULL,
    role VARCHAR(50) DEFAULT 'member',
    is_muted BOOLEAN DEFAULT FALSE,
    is_banned BOOLEAN DEFAULT FALSE,
    joined_at TIMESTAMPTZ DEFAULT NOW(),
    last_seen TIMESTAMPTZ DEFAULT NOW(),
    metadata JSONB,
    UNIQUE(room_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_realtime_room_members_room_id ON realtime_room_members(room_id);
CREATE INDEX IF NOT EXISTS idx_realtime_room_members_user_id ON realtime_room_members(user_id);
CREATE INDEX IF NOT EXISTS idx_realtime_room_members_joined_at ON realtime_room_members(joined_at);

CREATE TABLE IF NOT EXISTS realtime_presence (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    user_id VARCHAR(255) UNIQUE NOT NULL,
    status VARCHAR(20) DEFAULT 'offline',
    custom_status TEXT,
    custom_emoji VARCHAR(100),
    last_active TIMESTAMPTZ DEFAULT NOW(),
    last_heartbeat TIMESTAMPTZ DEFAULT NOW(),
    expires_at TIMESTAMPTZ,
    connections_count INTEGER DEFAULT 0,
    metadata JSONB,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_realtime_presence_user_id ON realtime_presence(user_id);
CREATE INDEX IF NOT EXISTS idx_realtime_presence_status ON realtime_presence(status);
CREATE INDEX IF NOT EXISTS idx_realtime_presence_last_active ON realtime_presence(last_active);

CREATE TABLE IF NOT EXISTS realtime_typing (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    room_id UUID REFERENCES realtime_rooms(id) ON DELETE CASCADE,
    user_id VARCHAR(255) NOT NULL,
    thread_id VARCHAR(255),
    started_at TIMESTAMPTZ DEFAULT NOW(),
    expires_at TIMESTAMPTZ NOT NULL,
    UNIQUE(room_id, user_id, thread_id)
);
CREATE INDEX IF NOT EXISTS idx_realtime_typing_room_id ON realtime_typing(room_id);
CREATE INDEX IF NOT EXISTS idx_realtime_typing_user_id ON realtime_typing(user_id);
CREATE INDEX IF NOT EXISTS idx_realtime_typing_expires_at ON realtime_typing(expires_at);

CREATE TABLE IF NOT EXISTS realtime_events (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    event_type VARCHAR(100) NOT NULL,
    socket_id VARCHAR(255),
    user_id VARCHAR(255),
    room_id UUID REFERENCES realtime_rooms(id) ON DELETE SET NULL,
    payload JSONB DEFAULT '{}',
    ip_address INET,
    metadata JSONB,
    created_at TIMESTAMPTZ DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_realtime_events_event_type ON realtime_events(event_type);
CREATE INDEX IF NOT EXISTS idx_realtime_events_socket_id ON realtime_events(socket_id);
CREATE INDEX IF NOT EXISTS idx_realtime_events_user_id ON realtime_events(user_id);
CREATE INDEX IF NOT EXISTS idx_realtime_events_room_id ON realtime_events(room_id);
CREATE INDEX IF NOT EXISTS idx_realtime_events_created_at ON realtime_events(created_at);

-- ---------------------------------------------------------------------------------------------
-- Fixes
-- ---------------------------------------------------------------------------------------------

-- The original's UNIQUE(room_id, user_id, thread_id) never matches rows whose thread_id is NULL,
-- so "typing without a thread" piled up duplicates. Remove those duplicates (keep the newest),
-- then enforce uniqueness with NULL meaning "no thread" (an expression index works on 12+).
DELETE FROM realtime_typing t
USING realtime_typing d
WHERE t.thread_id IS NULL AND d.thread_id IS NULL
  AND t.room_id IS NOT DISTINCT FROM d.room_id AND t.user_id = d.user_id
  AND (t.started_at, t.id::text) < (d.started_at, d.id::text);
CREATE UNIQUE INDEX IF NOT EXISTS uq_realtime_typing_thread
    ON realtime_typing(room_id, user_id, (COALESCE(thread_id, '')));

-- ---------------------------------------------------------------------------------------------
-- Additions of nself-realtime (new columns and tables only; original columns are unchanged)
-- ---------------------------------------------------------------------------------------------

-- The node that owns a live connection: crash cleanup marks the connections of a node whose
-- lease expired as disconnected.
ALTER TABLE realtime_connections ADD COLUMN IF NOT EXISTS node_id VARCHAR(255);
CREATE INDEX IF NOT EXISTS idx_realtime_connections_node_live
    ON realtime_connections(node_id) WHERE status = 'connected';

-- One row per running server: it renews its lease; an expired lease means the node is gone.
CREATE TABLE IF NOT EXISTS realtime_nodes (
    node_id VARCHAR(255) PRIMARY KEY,
    hostname VARCHAR(255),
    pid INTEGER,
    started_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    lease_expires_at TIMESTAMPTZ NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- Views of the original
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE VIEW realtime_active_connections AS
SELECT
    c.id,
    c.socket_id,
    c.user_id,
    c.status,
    c.transport,
    c.connected_at,
    c.latency_ms,
    p.status AS user_status,
    p.custom_status,
    p.custom_emoji
FROM realtime_connections c
LEFT JOIN realtime_presence p ON c.user_id = p.user_id
WHERE c.status = 'connected' AND c.disconnected_at IS NULL
ORDER BY c.connected_at DESC;

CREATE OR REPLACE VIEW realtime_room_stats AS
SELECT
    r.id,
    r.name,
    r.type,
    COUNT(DISTINCT rm.user_id) AS member_count,
    COUNT(DISTINCT c.socket_id) AS active_connections,
    MAX(rm.last_seen) AS last_activity,
    r.created_at
FROM realtime_rooms r
LEFT JOIN realtime_room_members rm ON r.id = rm.room_id
LEFT JOIN realtime_connections c ON rm.user_id = c.user_id AND c.status = 'connected'
WHERE r.is_active = TRUE
GROUP BY r.id, r.name, r.type, r.created_at
ORDER BY active_connections DESC, member_count DESC;

CREATE OR REPLACE VIEW realtime_current_typing AS
SELECT
    t.room_id,
    r.name AS room_name,
    t.user_id,
    t.thread_id,
    t.started_at,
    t.expires_at
FROM realtime_typing t
JOIN realtime_rooms r ON t.room_id = r.id
WHERE t.expires_at > NOW()
ORDER BY t.started_at DESC;

CREATE OR REPLACE VIEW realtime_presence_summary AS
SELECT
    status,
    COUNT(*) AS user_count,
    COUNT(*) FILTER (WHERE last_heartbeat > NOW() - INTERVAL '1 minute') AS recent_activity
FROM realtime_presence
GROUP BY status
ORDER BY user_count DESC;

-- ---------------------------------------------------------------------------------------------
-- Functions of the original
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION cleanup_expired_typing()
RETURNS void AS $$
BEGIN
    DELETE FROM realtime_typing WHERE expires_at < NOW();
END;
$$ LANGUAGE plpgsql;

-- last_active is moved by what a user does (events), not by the liveness heartbeat (which moves
-- last_heartbeat), so this rule reflects activity.
CREATE OR REPLACE FUNCTION update_presence_from_activity()
RETURNS void AS $$
BEGIN
    UPDATE realtime_presence
    SET status = 'away'
    WHERE status = 'online'
      AND last_active < NOW() - INTERVAL '5 minutes'
      AND last_active > NOW() - INTERVAL '30 minutes';

    UPDATE realtime_presence
    SET status = 'offline'
    WHERE status IN ('online', 'away')
      AND last_active < NOW() - INTERVAL '30 minutes';
END;
$$ LANGUAGE plpgsql;

-- A connection is stale when neither the client's pong nor its connect is recent. The server
-- itself relies on node leases; this remains for operators who call it from cron.
CREATE OR REPLACE FUNCTION disconnect_stale_connections()
RETURNS void AS $$
BEGIN
    UPDATE realtime_connections
    SET status = 'disconnected',
        disconnected_at = NOW()
    WHERE status = 'connected'
      AND GREATEST(COALESCE(last_pong, connected_at), COALESCE(last_ping, connected_at))
          < NOW() - INTERVAL '2 minutes';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION update_room_timestamp()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION update_presence_timestamp()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- The original's CREATE TRIGGER failed on a second run; drop-then-create is safe on 12+.
DROP TRIGGER IF EXISTS trigger_update_room_timestamp ON realtime_rooms;
CREATE TRIGGER trigger_update_room_timestamp
    BEFORE UPDATE ON realtime_rooms
    FOR EACH ROW EXECUTE FUNCTION update_room_timestamp();

DROP TRIGGER IF EXISTS trigger_update_presence_timestamp ON realtime_presence;
CREATE TRIGGER trigger_update_presence_timestamp
    BEFORE UPDATE ON realtime_presence
    FOR EACH ROW EXECUTE FUNCTION update_presence_timestamp();

-- ---------------------------------------------------------------------------------------------
-- Cache invalidation (nself-realtime): servers cache rooms and memberships; a change made by any
-- node, the CLI or plain SQL is announced on channel 'realtime_cache'.
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION realtime_notify_room_change()
RETURNS TRIGGER AS $$
DECLARE
    r RECORD;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    PERFORM pg_notify('realtime_cache', json_build_object('room', r.name)::text);
    IF TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name THEN
        PERFORM pg_notify('realtime_cache', json_build_object('room', OLD.name)::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION realtime_notify_member_change()
RETURNS TRIGGER AS $$
DECLARE
    m RECORD;
BEGIN
    IF TG_OP = 'DELETE' THEN m := OLD; ELSE m := NEW; END IF;
    IF TG_OP = 'UPDATE'
       AND OLD.role IS NOT DISTINCT FROM NEW.role
       AND OLD.is_muted IS NOT DISTINCT FROM NEW.is_muted
       AND OLD.is_banned IS NOT DISTINCT FROM NEW.is_banned
       AND OLD.room_id IS NOT DISTINCT FROM NEW.room_id
       AND OLD.user_id = NEW.user_id THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('realtime_cache',
        json_build_object('roomId', m.room_id, 'userId', m.user_id)::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS trigger_realtime_room_notify ON realtime_rooms;
CREATE TRIGGER trigger_realtime_room_notify
    AFTER INSERT OR UPDATE OR DELETE ON realtime_rooms
    FOR EACH ROW EXECUTE FUNCTION realtime_notify_room_change();

DROP TRIGGER IF EXISTS trigger_realtime_member_notify ON realtime_room_members;
CREATE TRIGGER trigger_realtime_member_notify
    AFTER INSERT OR UPDATE OR DELETE ON realtime_room_members
    FOR EACH ROW EXECUTE FUNCTION realtime_notify_member_change();
