-- Wakes the outbox relay as soon as a transaction that added outbox rows commits
-- (NOTIFY is delivered at commit; one per statement is enough, the relay takes every
-- pending row it finds). The relay also polls, so a lost notification only delays.
CREATE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tailor_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION outbox_notify();
