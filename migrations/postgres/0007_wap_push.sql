-- Issue 10: WAP push. A Service Indication carries when its request expires, and a pushed
-- confirmation request keeps the SMS that stands in for it if the PPG refuses the push.

-- When the link a message carries stops working (si-expires of a Service Indication).
ALTER TABLE outbox ADD COLUMN expires_at_ms BIGINT;
-- The SMS text to send instead, once, if this message is refused for good; cleared when
-- the SMS is queued, so that it goes out once.
ALTER TABLE outbox ADD COLUMN fallback_text TEXT;
-- On a fallback SMS: the message it stands in for.
ALTER TABLE outbox ADD COLUMN fallback_for TEXT;
-- Pushed requests that may still need their SMS, oldest first.
CREATE INDEX outbox_fallback_pending ON outbox (created_at_ms) WHERE fallback_text IS NOT NULL;
