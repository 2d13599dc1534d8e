//! The one integration test binary: every scenario runs against SQLite and PostgreSQL.

mod daemon;
mod helpers;

mod browser;

mod audit;
mod batches;
mod claims;
mod concurrency;
mod confirmation;
mod crashes;
mod durability;
mod email;
mod expiry;
mod faults;
mod idempotency;
mod openapi;
mod operations;
mod retention;
mod routing;
mod security;
mod simulation;
mod sms;
mod sms_replies;
mod sms_window;
mod validation;
mod voice;
mod wap_push;
mod webhooks;
