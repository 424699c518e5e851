-- Change feed of rooms and memberships for the servers' caches (the SQLite counterpart of the
-- PostgreSQL NOTIFY triggers): every change, whoever made it (a server, the CLI, plain SQL),
-- is appended to realtime_cache_changes, which servers poll. A server's own writer marks its
-- transactions with its node id in realtime_cache_origin (one row, present only inside such a
-- transaction: SQLite runs one write transaction at a time), so a server can skip the changes
-- it has already applied to its cache.

CREATE TABLE IF NOT EXISTS realtime_cache_origin (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    node TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS realtime_cache_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT,
    room_id TEXT,
    user_id TEXT,
    op TEXT NOT NULL,
    role TEXT,
    is_muted INTEGER,
    is_banned INTEGER,
    origin TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TRIGGER IF NOT EXISTS realtime_rooms_feed_insert AFTER INSERT ON realtime_rooms
BEGIN
    INSERT INTO realtime_cache_changes (room, op, origin)
    VALUES (NEW.name, 'room', (SELECT node FROM realtime_cache_origin WHERE id = 1));
END;

CREATE TRIGGER IF NOT EXISTS realtime_rooms_feed_update AFTER UPDATE ON realtime_rooms
BEGIN
    INSERT INTO realtime_cache_changes (room, op, origin)
    VALUES (NEW.name, 'room', (SELECT node FROM realtime_cache_origin WHERE id = 1));
    INSERT INTO realtime_cache_changes (room, op, origin)
    SELECT OLD.name, 'room', (SELECT node FROM realtime_cache_origin WHERE id = 1)
    WHERE OLD.name IS NOT NEW.name;
END;

CREATE TRIGGER IF NOT EXISTS realtime_rooms_feed_delete AFTER DELETE ON realtime_rooms
BEGIN
    INSERT INTO realtime_cache_changes (room, op, origin)
    VALUES (OLD.name, 'room', (SELECT node FROM realtime_cache_origin WHERE id = 1));
END;

CREATE TRIGGER IF NOT EXISTS realtime_members_feed_insert AFTER INSERT ON realtime_room_members
BEGIN
    INSERT INTO realtime_cache_changes (room_id, user_id, op, role, is_muted, is_banned, origin)
    VALUES (NEW.room_id, NEW.user_id, 'insert', NEW.role, NEW.is_muted, NEW.is_banned,
            (SELECT node FROM realtime_cache_origin WHERE id = 1));
END;

CREATE TRIGGER IF NOT EXISTS realtime_members_feed_update AFTER UPDATE ON realtime_room_members
WHEN OLD.role IS NOT NEW.role OR OLD.is_muted IS NOT NEW.is_muted
  OR OLD.is_banned IS NOT NEW.is_banned OR OLD.room_id IS NOT NEW.room_id
  OR OLD.user_id IS NOT NEW.user_id
BEGIN
    INSERT INTO realtime_cache_changes (room_id, user_id, op, origin)
    SELECT OLD.room_id, OLD.user_id, 'delete', (SELECT node FROM realtime_cache_origin WHERE id = 1)
    WHERE OLD.room_id IS NOT NEW.room_id OR OLD.user_id IS NOT NEW.user_id;
    INSERT INTO realtime_cache_changes (room_id, user_id, op, role, is_muted, is_banned, origin)
    VALUES (NEW.room_id, NEW.user_id,
            CASE WHEN OLD.room_id IS NOT NEW.room_id OR OLD.user_id IS NOT NEW.user_id
                 THEN 'insert' ELSE 'update' END,
            NEW.role, NEW.is_muted, NEW.is_banned,
            (SELECT node FROM realtime_cache_origin WHERE id = 1));
END;

CREATE TRIGGER IF NOT EXISTS realtime_members_feed_delete AFTER DELETE ON realtime_room_members
BEGIN
    INSERT INTO realtime_cache_changes (room_id, user_id, op, origin)
    VALUES (OLD.room_id, OLD.user_id, 'delete', (SELECT node FROM realtime_cache_origin WHERE id = 1));
END;
