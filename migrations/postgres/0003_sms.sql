-- Issue 4: SMS delivery receipts.

-- The ids a peer gave an outbound message's parts (an SMSC's message ids), so that a
-- delivery receipt finds its message.
CREATE TABLE outbox_remote_ids (
    remote_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    outbox_id TEXT NOT NULL REFERENCES outbox (id),
    PRIMARY KEY (channel, remote_id)
);
CREATE INDEX outbox_remote_ids_by_message ON outbox_remote_ids (outbox_id);

-- Delivery receipts as they come, kept even when one arrives before its message's ids are
-- recorded; the latest per id wins.
CREATE TABLE delivery_receipts (
    channel TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, remote_id)
);
