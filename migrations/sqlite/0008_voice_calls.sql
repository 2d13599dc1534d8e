-- Issue 11: voice calls. Each outbox message sent by voice is one call; its script and
-- answer URLs serve that call only (the first CallSid that fetches the script), and a call
-- that has ended takes no more answers.
CREATE TABLE voice_calls (
    message_id TEXT PRIMARY KEY,
    call_sid TEXT NOT NULL,
    -- Gathers that ended without a key: the second one ends the call.
    no_inputs BIGINT NOT NULL DEFAULT 0,
    finished_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL
);
