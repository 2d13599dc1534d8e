//! `[channels.sms]`: the SMS channel's own settings, their defaults and their validation.

use std::path::PathBuf;
use std::str::FromStr;

use rusmpp::types::COctetString;
use serde::Deserialize;

use crate::{Problems, Secret};

/// The whole channel's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// The short code or number customers reply to.
    pub source_addr: String,
    /// 0 unknown, 1 international, 3 network specific (short codes), 5 alphanumeric.
    #[serde(default = "default_source_addr_ton")]
    pub source_addr_ton: u8,
    #[serde(default)]
    pub source_addr_npi: u8,
    /// Ask SMSCs for delivery receipts.
    #[serde(default = "default_true")]
    pub registered_delivery: bool,
    /// One table per SMSC link (`[[channels.sms.smsc]]`).
    #[serde(rename = "smsc")]
    pub smscs: Vec<SmscSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BindMode {
    Transceiver,
    TransmitterReceiver,
}

impl TryFrom<String> for BindMode {
    type Error = String;

    fn try_from(value: String) -> Result<BindMode, String> {
        match value.as_str() {
            "transceiver" => Ok(BindMode::Transceiver),
            "transmitter_receiver" => Ok(BindMode::TransmitterReceiver),
            _ => Err(format!(
                "{value:?} is not a bind mode: use \"transceiver\" or \"transmitter_receiver\""
            )),
        }
    }
}

/// One SMSC link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmscSettings {
    pub name: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    /// An extra trust anchor (PEM) for an SMSC with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub system_id: String,
    pub password: Secret,
    #[serde(default)]
    pub system_type: String,
    #[serde(default = "default_bind")]
    pub bind: BindMode,
    /// Unacknowledged submits in flight at most.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Submits per second at most.
    #[serde(default = "default_throughput_per_s")]
    pub throughput_per_s: u32,
    #[serde(default = "default_enquire_link_interval_ms")]
    pub enquire_link_interval_ms: u64,
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "default_reconnect_backoff_min_ms")]
    pub reconnect_backoff_min_ms: u64,
    #[serde(default = "default_reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
}

/// The longest address SMPP 3.4 carries in source_addr and destination_addr.
pub(super) const ADDRESS_LENGTH_MAX: usize = 20;

impl SmsSettings {
    /// Every problem, with keys relative to `channels.sms`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.require(
            !self.source_addr.is_empty()
                && self.source_addr.len() <= ADDRESS_LENGTH_MAX
                && COctetString::<1, 21>::from_str(&self.source_addr).is_ok(),
            "source_addr",
            "must be 1 to 20 ASCII characters",
        );
        problems.require(!self.smscs.is_empty(), "smsc", "needs at least one SMSC");
        for (index, smsc) in self.smscs.iter().enumerate() {
            problems.under(&format!("smsc[{index}]"), |problems| {
                smsc.validate(problems)
            });
        }
    }

    /// The longest one send may take: a response per part and a pause on throttling. The
    /// outbox's claim on a message must outlast it, or a second worker could submit it again.
    pub fn attempt_ms_max(&self) -> u64 {
        self.smscs
            .iter()
            .map(|smsc| smsc.response_timeout_ms.saturating_mul(3))
            .max()
            .unwrap_or(0)
    }
}

impl SmscSettings {
    fn validate(&self, problems: &mut Problems) {
        problems.require(!self.name.trim().is_empty(), "name", "must not be empty");
        problems.require(!self.host.is_empty(), "host", "must not be empty");
        problems.require(
            self.ca_file
                .as_ref()
                .is_none_or(|ca_file| ca_file.is_file()),
            "ca_file",
            "must be a readable PEM file",
        );
        problems.require(
            !self.system_id.is_empty() && self.system_id.len() <= 15 && self.system_id.is_ascii(),
            "system_id",
            "must be 1 to 15 ASCII characters",
        );
        problems.require(
            self.password.expose().len() <= 8 && self.password.expose().is_ascii(),
            "password",
            "must be at most 8 ASCII characters (SMPP 3.4)",
        );
        problems.require(
            self.system_type.len() <= 12 && self.system_type.is_ascii(),
            "system_type",
            "must be at most 12 ASCII characters (SMPP 3.4)",
        );
        problems.require(
            (1..=1000).contains(&self.window),
            "window",
            "must be between 1 and 1000",
        );
        problems.require(
            (1..=10_000).contains(&self.throughput_per_s),
            "throughput_per_s",
            "must be between 1 and 10000",
        );
        problems.require(
            self.enquire_link_interval_ms >= 1000,
            "enquire_link_interval_ms",
            "must be at least 1000",
        );
        problems.require(
            (100..=120_000).contains(&self.response_timeout_ms),
            "response_timeout_ms",
            "must be between 100 and 120000",
        );
        problems.require(
            self.reconnect_backoff_min_ms >= 10
                && self.reconnect_backoff_min_ms <= self.reconnect_backoff_max_ms,
            "reconnect_backoff_min_ms",
            "must be at least 10 and at most reconnect_backoff_max_ms",
        );
    }
}

fn default_source_addr_ton() -> u8 {
    3
}
fn default_true() -> bool {
    true
}
fn default_bind() -> BindMode {
    BindMode::Transceiver
}
fn default_window() -> usize {
    10
}
fn default_throughput_per_s() -> u32 {
    50
}
fn default_enquire_link_interval_ms() -> u64 {
    30_000
}
fn default_response_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_backoff_min_ms() -> u64 {
    1_000
}
fn default_reconnect_backoff_max_ms() -> u64 {
    60_000
}
