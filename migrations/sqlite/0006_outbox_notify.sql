-- PostgreSQL wakes every daemon's dispatcher with NOTIFY when messages are queued. SQLite
-- has one daemon, whose own commits wake its dispatcher in memory: nothing to do here.
SELECT 1;
