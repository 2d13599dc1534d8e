//! Channel adapters: the seam between paystep's core and the outside world, one folder each.
//!
//! The vocabulary both sides share (messages, the [`Channel`] and [`InboundSink`] traits, the
//! error classes) lives in `paystep-channel-core` and is re-exported here. Each adapter owns
//! its settings (serde, `deny_unknown_fields`, secrets redacted), their `validate()`, and a
//! `build()` that returns the running channel; everything else about a wire protocol stays
//! inside its folder.

pub mod console;
pub mod email;
mod http_body;
pub mod sms;
pub mod voice;
pub mod wap_push;
pub mod webhook;

pub use paystep_channel_core::*;
