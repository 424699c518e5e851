-- Drops exactly the database objects the PostgreSQL migrations (migrations/postgres/) create,
-- without CASCADE: an object of someone else's that depends on them stops the uninstall.
-- The uuid-ossp extension stays (other schemas may use it). `nself-realtime uninstall --yes`
-- runs this in one transaction and then removes the migration records; a unit test checks
-- that it names every table, view and function the migrations create.
DROP VIEW IF EXISTS realtime_active_connections, realtime_room_stats, realtime_current_typing,
    realtime_presence_summary;
DROP TABLE IF EXISTS realtime_typing, realtime_events, realtime_room_members, realtime_presence,
    realtime_connections, realtime_rooms, realtime_nodes, realtime_messages;
DROP FUNCTION IF EXISTS cleanup_expired_typing(), update_presence_from_activity(),
    disconnect_stale_connections(), update_room_timestamp(), update_presence_timestamp(),
    realtime_notify_room_change(), realtime_notify_member_change();
