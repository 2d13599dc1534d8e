-- paystep's schema. Money is BIGINT minor units; times are BIGINT Unix milliseconds; ids
-- are UUID text. SQLite and PostgreSQL differ only in the outbox position and the triggers.

CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    msisdn TEXT UNIQUE,
    email TEXT UNIQUE,
    name TEXT NOT NULL,
    language TEXT NOT NULL CHECK (language IN ('en', 'de')),
    preferred_channel TEXT NOT NULL,
    pin_hash TEXT,
    pin_failures BIGINT NOT NULL DEFAULT 0 CHECK (pin_failures >= 0),
    pin_locked_until_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    CHECK (msisdn IS NOT NULL OR email IS NOT NULL)
);

CREATE TABLE retailers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    webhook_url TEXT,
    webhook_secret TEXT NOT NULL,
    msisdn TEXT,
    email TEXT,
    notify TEXT NOT NULL,
    last_event_seq BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL
);

-- Balances are credits minus debits. Only the operator's funding account may go negative:
-- it is where deposited money comes from.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('operator_funding', 'customer_credit', 'process_hold', 'retailer_receivable')),
    owner_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (kind, owner_id, currency),
    CHECK (kind = 'operator_funding' OR balance >= 0)
);

CREATE TABLE processes (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    retailer_id TEXT NOT NULL REFERENCES retailers (id),
    customer_id TEXT REFERENCES customers (id),
    status TEXT NOT NULL CHECK (status IN ('awaiting_confirmation', 'active', 'closed', 'declined', 'expired')),
    currency TEXT NOT NULL,
    release_requested BIGINT NOT NULL CHECK (release_requested > 0),
    released BIGINT NOT NULL DEFAULT 0 CHECK (released >= 0),
    charged BIGINT NOT NULL DEFAULT 0 CHECK (charged >= 0),
    remaining BIGINT NOT NULL DEFAULT 0 CHECK (remaining >= 0),
    returned BIGINT NOT NULL DEFAULT 0 CHECK (returned >= 0),
    description TEXT,
    reference TEXT,
    channel TEXT,
    top_up_policy TEXT NOT NULL,
    top_up_factor TEXT NOT NULL,
    inactivity_s BIGINT NOT NULL CHECK (inactivity_s > 0),
    step_count BIGINT NOT NULL DEFAULT 0 CHECK (step_count >= 0),
    decline_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    lock_version BIGINT NOT NULL DEFAULT 0,
    CHECK (remaining = released - charged - returned)
);
-- A code identifies one open process at a time.
CREATE UNIQUE INDEX processes_open_code ON processes (code) WHERE status IN ('awaiting_confirmation', 'active');
CREATE INDEX processes_by_retailer ON processes (retailer_id, created_at_ms, id);
CREATE INDEX processes_open_by_expiry ON processes (expires_at_ms) WHERE status IN ('awaiting_confirmation', 'active');
CREATE INDEX processes_by_customer ON processes (customer_id, status);

CREATE TABLE steps (
    id TEXT PRIMARY KEY,
    process_id TEXT NOT NULL REFERENCES processes (id),
    number BIGINT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    status TEXT NOT NULL CHECK (status IN ('charged', 'awaiting_confirmation', 'declined', 'expired')),
    remaining_after BIGINT,
    description TEXT,
    reference TEXT,
    decline_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (process_id, number)
);

-- Transfers are the ledger's entries: each moves a positive amount from one account to
-- another of the same currency. They are never updated or deleted.
CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('deposit', 'release', 'step', 'return')),
    debit_account_id TEXT NOT NULL REFERENCES accounts (id),
    credit_account_id TEXT NOT NULL REFERENCES accounts (id),
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    process_id TEXT REFERENCES processes (id),
    -- A step is charged at most once.
    step_id TEXT UNIQUE REFERENCES steps (id),
    reference TEXT,
    created_at_ms BIGINT NOT NULL,
    CHECK (debit_account_id <> credit_account_id)
);
CREATE INDEX transfers_by_process ON transfers (process_id);

CREATE TABLE confirmations (
    id TEXT PRIMARY KEY,
    process_id TEXT NOT NULL REFERENCES processes (id),
    step_id TEXT REFERENCES steps (id),
    kind TEXT NOT NULL CHECK (kind IN ('initial', 'top_up')),
    amount BIGINT NOT NULL CHECK (amount > 0),
    token_hash TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'declined', 'expired')),
    pin_failures BIGINT NOT NULL DEFAULT 0 CHECK (pin_failures >= 0),
    decline_reason TEXT,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT
);
-- At most one open question per process.
CREATE UNIQUE INDEX confirmations_one_pending ON confirmations (process_id) WHERE status = 'pending';
CREATE INDEX confirmations_pending_by_expiry ON confirmations (expires_at_ms) WHERE status = 'pending';

CREATE TABLE pin_attempts (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    confirmation_id TEXT REFERENCES confirmations (id),
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'wrong', 'locked_out')),
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX pin_attempts_by_customer ON pin_attempts (customer_id, created_at_ms);

-- seq is gapless and in commit order per retailer: the retailer row is locked to take it.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    retailer_id TEXT NOT NULL REFERENCES retailers (id),
    seq BIGINT NOT NULL,
    process_id TEXT,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (retailer_id, seq)
);

CREATE TABLE outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    intended_channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL CHECK (recipient IN ('customer', 'retailer')),
    to_address TEXT NOT NULL,
    retailer_id TEXT,
    process_id TEXT,
    code TEXT,
    language TEXT NOT NULL,
    text TEXT NOT NULL,
    url TEXT,
    payload TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'dead')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    last_error TEXT,
    remote_id TEXT,
    created_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at_ms) WHERE status = 'queued';
CREATE INDEX outbox_by_process ON outbox (process_id);

CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    response_body TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The ledger is append-only, enforced by the database too.
CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
CREATE TRIGGER transfers_no_delete BEFORE DELETE ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
