//! paystep: the accounting server for stepwise mobile payments. See ARCHITECTURE.md.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod http;
pub mod ledger;
pub mod outbox;
pub mod startup;
pub mod store;
