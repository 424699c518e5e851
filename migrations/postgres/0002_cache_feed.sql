-- Membership notifications carry the change itself (nself-realtime): the operation, the row's
-- role and flags, and the node whose writer made it (the transaction-local setting
-- realtime.origin, unset for the CLI and plain SQL). Servers apply them to their caches and
-- member counts without a query, and skip their own. The row id makes two inserts of one
-- membership in one transaction two notifications (PostgreSQL folds identical payloads); the
-- transaction id lets a server tell whether a change is already in a count it read.
CREATE OR REPLACE FUNCTION realtime_notify_member_change()
RETURNS TRIGGER AS $$
DECLARE
    origin TEXT := NULLIF(current_setting('realtime.origin', true), '');
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.role IS NOT DISTINCT FROM NEW.role
       AND OLD.is_muted IS NOT DISTINCT FROM NEW.is_muted
       AND OLD.is_banned IS NOT DISTINCT FROM NEW.is_banned
       AND OLD.room_id IS NOT DISTINCT FROM NEW.room_id
       AND OLD.user_id = NEW.user_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND (OLD.room_id IS DISTINCT FROM NEW.room_id
                                                OR OLD.user_id <> NEW.user_id)) THEN
        PERFORM pg_notify('realtime_cache', json_build_object(
            'roomId', OLD.room_id, 'userId', OLD.user_id, 'op', 'delete',
            'id', OLD.id, 'origin', origin, 'tx', txid_current())::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('realtime_cache', json_build_object(
            'roomId', NEW.room_id, 'userId', NEW.user_id,
            'op', CASE WHEN TG_OP = 'INSERT' OR OLD.room_id IS DISTINCT FROM NEW.room_id
                            OR OLD.user_id <> NEW.user_id THEN 'insert' ELSE 'update' END,
            'id', NEW.id, 'role', NEW.role, 'muted', NEW.is_muted, 'banned', NEW.is_banned,
            'origin', origin, 'tx', txid_current())::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
