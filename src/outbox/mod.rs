//! The outbox: every outbound message is a row written with the state change that caused
//! it; the dispatcher delivers rows through channel adapters and records the outcome.

pub mod dead_letters;
mod dispatcher;
pub(crate) mod fallback;

pub use dispatcher::Dispatcher;
