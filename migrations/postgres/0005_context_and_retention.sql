-- Issue 8: every outbound message carries the process's context; old rows are pruned.

-- The retailer's description and reference of the process, beside the text that quotes it
-- (claim 7: every message carries the context of the goods or service).
ALTER TABLE outbox ADD COLUMN description TEXT;
ALTER TABLE outbox ADD COLUMN reference TEXT;

-- The sweeper deletes what is past its retention in batches, oldest first; these indexes
-- find a batch without scanning what is kept.
CREATE INDEX outbox_delivered_by_age ON outbox (delivered_at_ms) WHERE status = 'delivered';
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_ms);
CREATE INDEX confirmations_resolved_by_age ON confirmations (resolved_at_ms) WHERE status <> 'pending';
CREATE INDEX pin_attempts_by_age ON pin_attempts (created_at_ms);
CREATE INDEX pin_attempts_by_confirmation ON pin_attempts (confirmation_id);
CREATE INDEX delivery_receipts_by_age ON delivery_receipts (received_at_ms);
