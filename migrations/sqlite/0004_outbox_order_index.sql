-- The dispatcher takes a message only when no earlier queued message of the same process
-- (or of no process) goes to the same address. This index answers that with one probe
-- instead of a scan of the earlier messages, which grew with the queue.
CREATE INDEX outbox_queued_order ON outbox (COALESCE(process_id, ''), channel, to_address, position)
    WHERE status = 'queued';
