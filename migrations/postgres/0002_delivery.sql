-- Issue 3: webhook secret rotation, receipt policy, pre-expiry notices, requeueable outbox.

-- The previous webhook secret stays valid until the given time after a rotation, so a
-- retailer can switch verification over without losing a delivery.
ALTER TABLE retailers ADD COLUMN webhook_secret_previous TEXT;
ALTER TABLE retailers ADD COLUMN webhook_secret_previous_until_ms BIGINT;
-- 'every_step': a receipt per charged step; 'summary': one on release and one on close.
ALTER TABLE retailers ADD COLUMN receipt_policy TEXT NOT NULL DEFAULT 'every_step'
    CHECK (receipt_policy IN ('every_step', 'summary'));

-- Set when the retailer was told the release will expire soon; cleared by any activity.
ALTER TABLE processes ADD COLUMN pre_expiry_notified BIGINT NOT NULL DEFAULT 0;

-- Retries stop this long after queued_at_ms; requeueing a dead letter starts it again.
ALTER TABLE outbox ADD COLUMN queued_at_ms BIGINT;
UPDATE outbox SET queued_at_ms = created_at_ms;
ALTER TABLE outbox ADD COLUMN event_id TEXT;
CREATE INDEX outbox_dead ON outbox (position) WHERE status = 'dead';
