//! `[channels.email]`: the email channel's own settings, their defaults and their validation.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{Problems, Secret};

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EmailTls {
    /// Plain SMTP: only for a relay on the same host.
    None,
    /// STARTTLS, required: never falls back to plain text.
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
}

impl TryFrom<String> for EmailTls {
    type Error = String;

    fn try_from(value: String) -> Result<EmailTls, String> {
        match value.as_str() {
            "none" => Ok(EmailTls::None),
            "starttls" => Ok(EmailTls::StartTls),
            "tls" => Ok(EmailTls::Tls),
            _ => Err(format!(
                "{value:?} is not a TLS mode: use \"none\", \"starttls\" or \"tls\""
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    #[serde(default = "default_tls")]
    pub tls: EmailTls,
    /// An extra trust anchor (PEM) for a relay with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// `Name <address>`, the sender of every message.
    pub from: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// SMTP connections kept open at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl EmailSettings {
    /// Every problem, with keys relative to `channels.email`. (Mailboxes and the CA file's
    /// contents are parsed when the channel is built, which names the key too.)
    pub fn validate(&self, problems: &mut Problems) {
        problems.require(!self.host.is_empty(), "host", "must not be empty");
        problems.require(
            self.username.is_some() == self.password.is_some(),
            "username",
            "needs channels.email.password, and the other way round",
        );
        problems.require(
            self.from.contains('@'),
            "from",
            "must be a mailbox like \"paystep <pay@example.com>\"",
        );
        problems.require(
            (1..=64).contains(&self.pool_size),
            "pool_size",
            "must be between 1 and 64",
        );
        problems.require(
            (100..=120_000).contains(&self.timeout_ms),
            "timeout_ms",
            "must be between 100 and 120000",
        );
        problems.require(
            self.ca_file
                .as_ref()
                .is_none_or(|ca_file| ca_file.is_file()),
            "ca_file",
            "must be a readable PEM file",
        );
    }

    /// The longest one send may take; the outbox's claim on a message must outlast it.
    pub fn attempt_ms_max(&self) -> u64 {
        self.timeout_ms
    }
}

fn default_tls() -> EmailTls {
    EmailTls::StartTls
}
fn default_pool_size() -> u32 {
    4
}
fn default_timeout_ms() -> u64 {
    10_000
}
