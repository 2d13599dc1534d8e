-- Issue 11, voicexml dialect: a VoiceXML platform signs nothing, so every URL a call is
-- given carries a single-use random token; the hash of the one the call may use next.
ALTER TABLE voice_calls ADD COLUMN next_token_hash TEXT;
