-- Issue 11, claim 13: a call whose confirmation needs the speaker-verification service's
-- positive verdict records when it got it.
ALTER TABLE voice_calls ADD COLUMN speaker_verified_at_ms BIGINT;
