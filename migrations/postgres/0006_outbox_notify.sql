-- Every daemon's dispatcher LISTENs on paystep_outbox: a commit that queued messages wakes
-- them all at once, instead of at their next poll. A statement-level trigger costs no
-- round trip, and PostgreSQL sends one notification per transaction (duplicates fold).
CREATE FUNCTION paystep_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paystep_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION paystep_outbox_notify();
