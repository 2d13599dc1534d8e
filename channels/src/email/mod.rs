//! The email channel: messages through an SMTP relay (lettre), as multipart text and HTML.

use std::path::PathBuf;

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailTls {
    /// Plain SMTP: only for a relay on the same host.
    None,
    /// STARTTLS, required: never falls back to plain text.
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
}

#[derive(Clone)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub tls: EmailTls,
    /// An extra trust anchor (PEM) for a relay with a private CA.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Name <address>`, the sender of every message.
    pub from: String,
    pub reply_to: Option<String>,
    /// SMTP connections kept open at most.
    pub pool_size: u32,
    pub timeout_ms: u64,
}

// The password is a secret: never print it.
impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}
