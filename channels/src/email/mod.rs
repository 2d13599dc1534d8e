//! The email channel: messages through an SMTP relay (lettre), as multipart text and HTML.
//!
//! Every message is `multipart/alternative` (a text part and a small inline-styled HTML part,
//! see `templates.rs`) with an explicit `Message-ID` derived from the outbox id, so that the
//! same message keeps the same Message-ID on every attempt and a receiver can drop duplicates.
//!
//! The relay's answers decide retries: a 4xx reply, a refused or timed-out connection, a failed
//! TLS handshake or a refused login are retriable (the relay recovers, or an operator fixes
//! it); a 5xx reply to the message itself is permanent. `EmailTls::StartTls` never falls back
//! to plain text: a relay that does not offer STARTTLS gets nothing, not even the login.

mod settings;
mod templates;

pub use settings::{EmailSettings, EmailTls};

use std::error::Error as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::{Channel, ChannelName, Delivery, HealthError, OutboundMessage, SendError};
use templates::Language;

/// Why the email channel cannot be built from its settings. Each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum EmailSetupError {
    #[error("cannot read channels.email.ca_file {path}: {source}")]
    CaFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("channels.email.ca_file {path} is not a PEM CA certificate: {reason}")]
    CaFileInvalid { path: PathBuf, reason: String },
    #[error("channels.email.{key} {value:?} is not a valid mailbox (`Name <address>` or `address`): {reason}")]
    InvalidMailbox {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("channels.email.username and channels.email.password must be set together")]
    IncompleteCredentials,
    #[error("invalid email settings:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("cannot set up TLS for channels.email.host {host:?}: {reason}")]
    Tls { host: String, reason: String },
    /// lettre's connection pool runs a cleanup task on the tokio runtime it is built in.
    #[error("the email channel must be built inside a tokio runtime")]
    NoRuntime,
}

/// Sends messages through one SMTP relay over a bounded pool of connections.
///
/// Build and drop it inside a tokio runtime: lettre's pool runs a task there.
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// `host:port`, for the reasons given to operators.
    relay: String,
    tls: EmailTls,
    username: Option<String>,
    /// lettre's `max_size` only bounds the idle connections it keeps, not how many it opens:
    /// this semaphore bounds the exchanges in flight to `pool_size`, and with them the
    /// connections (a finished exchange hands its connection back to the pool a moment later).
    sessions: Arc<Semaphore>,
    pool_size: u32,
    timeout: Duration,
}

// No secret here: lettre's transport keeps the login, and it is left out.
impl std::fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailChannel")
            .field("relay", &self.relay)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl EmailChannel {
    /// Checks the settings (mailboxes, login, CA file) and prepares the pool; connects to
    /// nothing: `health_check` does. Must run inside a tokio runtime.
    pub fn new(settings: &EmailSettings) -> Result<EmailChannel, EmailSetupError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EmailSetupError::NoRuntime);
        }
        let mut problems = crate::Problems::new();
        problems.under("channels.email", |problems| settings.validate(problems));
        if !problems.is_empty() {
            return Err(EmailSetupError::Invalid(problems.into_vec()));
        }
        let from = parse_mailbox("from", &settings.from)?;
        let reply_to = settings
            .reply_to
            .as_deref()
            .map(|reply_to| parse_mailbox("reply_to", reply_to))
            .transpose()?;
        let tls = match settings.tls {
            EmailTls::None => {
                if settings.ca_file.is_some() {
                    tracing::warn!(
                        "The email channel ignores channels.email.ca_file: channels.email.tls is none"
                    );
                }
                Tls::None
            }
            EmailTls::StartTls => Tls::Required(tls_parameters(settings)?),
            EmailTls::Tls => Tls::Wrapper(tls_parameters(settings)?),
        };
        let timeout = Duration::from_millis(settings.timeout_ms);
        // "Dangerous" only means that lettre does not pick the TLS mode itself: it is set here.
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
                .port(settings.port)
                .tls(tls)
                .timeout(Some(timeout))
                .pool_config(PoolConfig::new().max_size(settings.pool_size));
        match (&settings.username, &settings.password) {
            (Some(username), Some(password)) => {
                builder = builder.credentials(Credentials::new(
                    username.clone(),
                    password.expose().to_string(),
                ));
            }
            (None, None) => {}
            // Half a login would send unauthenticated and fail at the relay on every message.
            (Some(_), None) | (None, Some(_)) => {
                return Err(EmailSetupError::IncompleteCredentials)
            }
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from,
            reply_to,
            relay: relay_name(&settings.host, settings.port),
            tls: settings.tls,
            username: settings.username.clone(),
            sessions: Arc::new(Semaphore::new(settings.pool_size as usize)),
            pool_size: settings.pool_size,
            timeout,
        })
    }
}

fn parse_mailbox(key: &'static str, value: &str) -> Result<Mailbox, EmailSetupError> {
    value
        .parse::<Mailbox>()
        .map_err(|error| EmailSetupError::InvalidMailbox {
            key,
            value: value.to_string(),
            reason: error.to_string(),
        })
}

fn relay_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The system's roots plus the operator's CA, checked against the relay's name (or address).
fn tls_parameters(settings: &EmailSettings) -> Result<TlsParameters, EmailSetupError> {
    let mut builder = TlsParameters::builder(settings.host.clone());
    if let Some(path) = &settings.ca_file {
        for certificate in read_ca_file(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build_rustls()
        .map_err(|error| EmailSetupError::Tls {
            host: settings.host.clone(),
            reason: error.to_string(),
        })
}

/// Every certificate in the PEM file, each checked to be usable as a trust anchor, so that a
/// wrong file fails at startup rather than at the first handshake.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, EmailSetupError> {
    let invalid = |reason: String| EmailSetupError::CaFileInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|source| EmailSetupError::CaFileUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(error.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid(
            "it holds no `-----BEGIN CERTIFICATE-----` block".to_string(),
        ));
    }
    let mut anchors = rustls::RootCertStore::empty();
    certificates
        .into_iter()
        .map(|certificate| {
            anchors
                .add(certificate.clone())
                .map_err(|error| invalid(error.to_string()))?;
            Certificate::from_der(certificate.to_vec()).map_err(|error| invalid(error.to_string()))
        })
        .collect()
}

/// The Message-ID of an outbox message: the same on every attempt, so that a receiver can
/// drop a duplicate after a retry. Letters, digits, `-` and `_` of the id pass unchanged;
/// every other byte (`=` included) becomes `=XX`, which keeps the msg-id valid and distinct
/// ids distinct.
fn message_id(id: &str) -> String {
    let mut left = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            left.push(char::from(byte));
        } else {
            left.push_str(&format!("={byte:02X}"));
        }
    }
    format!("<{left}@paystep>")
}

/// What went wrong, in the terms that decide a retry and tell an operator what to fix.
#[derive(Debug)]
enum Failure {
    /// A 4xx reply: the relay may take the message later.
    Deferred { reply: String },
    /// A 5xx reply to this message: a bad mailbox, a refused content.
    Rejected { reply: String },
    /// 530, 534, 535 or 538: the relay refuses our login, not the message.
    LoginRefused { reply: String },
    /// The TLS handshake failed, most often over the relay's certificate.
    Handshake { error: rustls::Error },
    /// The relay did not answer within `timeout_ms`.
    TimedOut,
    /// Every connection of the pool stayed busy for `timeout_ms`.
    ConnectionsBusy,
    /// Anything else between us and the relay: a refused or reset connection, an unparsable
    /// reply, a relay that does not offer STARTTLS.
    Transport { detail: String },
}

fn diagnose(error: &lettre::transport::smtp::Error) -> Failure {
    if let Some(code) = error.status() {
        let text = error.source().map(ToString::to_string).unwrap_or_default();
        let reply = format!("{code} {text}").trim_end().to_string();
        return match u16::from(code) {
            // Authentication required, too weak, invalid, or in need of encryption: the relay
            // would take the message from a correctly configured sender.
            530 | 534 | 535 | 538 => Failure::LoginRefused { reply },
            400..=499 => Failure::Deferred { reply },
            500..=599 => Failure::Rejected { reply },
            // lettre reports a status only for 4xx and 5xx replies.
            _ => Failure::Transport {
                detail: error.to_string(),
            },
        };
    }
    if let Some(tls_error) = rustls_error(error) {
        return Failure::Handshake {
            error: tls_error.clone(),
        };
    }
    if error.is_timeout() {
        return Failure::TimedOut;
    }
    Failure::Transport {
        detail: error.to_string(),
    }
}

/// The rustls error behind a failed handshake. lettre reports it as a connection error whose
/// source is the `io::Error` tokio-rustls wraps it in (and `io::Error::source` skips the
/// wrapped error, so it is read with `get_ref`).
fn rustls_error(error: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    let mut cause = error.source();
    while let Some(current) = cause {
        if let Some(tls_error) = current.downcast_ref::<rustls::Error>() {
            return Some(tls_error);
        }
        if let Some(io_error) = current.downcast_ref::<std::io::Error>() {
            if let Some(tls_error) = io_error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(tls_error);
            }
        }
        cause = current.source();
    }
    None
}

/// What an operator can do about a certificate the relay presents.
fn certificate_hint(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (set channels.email.ca_file to the relay's CA)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (channels.email.host must be a name or address the relay's certificate names)",
        // Expired certificates, protocol mismatches and the like are for the relay's operator.
        _ => "",
    }
}

/// Runs one SMTP exchange on a pooled connection, bounded in time: lettre bounds only the TCP
/// connect, not the TLS handshake or the replies. A timed-out exchange may leave its
/// connection in the pool; lettre's NOOP check before reuse then drops it if it is dead.
async fn bounded<T>(
    sessions: &Semaphore,
    timeout: Duration,
    exchange: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Failure> {
    let _session = tokio::time::timeout(timeout, sessions.acquire())
        .await
        .map_err(|_elapsed| Failure::ConnectionsBusy)?
        .expect("the session semaphore is never closed");
    match tokio::time::timeout(timeout, exchange).await {
        Err(_elapsed) => Err(Failure::TimedOut),
        Ok(Err(error)) => Err(diagnose(&error)),
        Ok(Ok(value)) => Ok(value),
    }
}

impl EmailChannel {
    /// Runs one SMTP exchange on a pooled connection, bounded in time (see [`bounded`]).
    async fn bounded<T>(
        &self,
        exchange: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Failure> {
        bounded(&self.sessions, self.timeout, exchange).await
    }

    fn describe(&self, failure: &Failure) -> String {
        let relay = &self.relay;
        match failure {
            Failure::Deferred { reply } => format!("the relay at {relay} deferred the message: {reply}"),
            Failure::Rejected { reply } => format!("the relay at {relay} rejected the message: {reply}"),
            Failure::LoginRefused { reply } => match &self.username {
                Some(username) => format!(
                    "the relay at {relay} refused the login of {username:?}: {reply} \
                     (check channels.email.username and channels.email.password)"
                ),
                None => format!(
                    "the relay at {relay} requires a login: {reply} \
                     (set channels.email.username and channels.email.password)"
                ),
            },
            Failure::Handshake { error } => format!(
                "TLS handshake with {relay} failed: {error}{hint}",
                hint = certificate_hint(error)
            ),
            Failure::TimedOut => format!(
                "the relay at {relay} did not answer within {timeout_ms} ms",
                timeout_ms = self.timeout.as_millis()
            ),
            Failure::ConnectionsBusy => format!(
                "all {pool_size} connections to the relay at {relay} stayed busy for {timeout_ms} ms",
                pool_size = self.pool_size,
                timeout_ms = self.timeout.as_millis()
            ),
            Failure::Transport { detail } => {
                // lettre says "STARTTLS is not supported on this server" as a client error.
                let hint = if self.tls == EmailTls::StartTls && detail.contains("STARTTLS") {
                    " (channels.email.tls is starttls, which never falls back to plain text)"
                } else {
                    ""
                };
                format!("the SMTP session with {relay} failed: {detail}{hint}")
            }
        }
    }

    fn send_error(&self, failure: Failure) -> SendError {
        let reason = self.describe(&failure);
        match failure {
            // The relay spoke about this very message and will say the same again.
            Failure::Rejected { .. } => SendError::Permanent(reason),
            // The relay asked us to come back later.
            Failure::Deferred { .. } => SendError::Retriable(reason),
            // Configuration and relay problems: the message is fine, an operator fixes the
            // login, the trust or the relay, and the outbox tries again.
            Failure::LoginRefused { .. }
            | Failure::Handshake { .. }
            | Failure::Transport { .. } => SendError::Retriable(reason),
            // Busy or slow: it may pass next time.
            Failure::TimedOut | Failure::ConnectionsBusy => SendError::Retriable(reason),
        }
    }

    /// The email for an outbox message, and its Message-ID.
    fn compose(&self, message: &OutboundMessage) -> Result<(Message, String), SendError> {
        let language = Language::from_code(&message.language);
        let subject = templates::subject(message.kind, language, message.code.as_deref())
            .ok_or_else(|| {
                SendError::Permanent(format!(
                    "a {} message is for webhooks, not email",
                    message.kind.as_str()
                ))
            })?;
        let to = message.to.parse::<Mailbox>().map_err(|error| {
            SendError::Permanent(format!(
                "invalid recipient address {:?}: {error}",
                message.to
            ))
        })?;
        let message_id = message_id(&message.id);
        let url = message.url.as_deref();
        let body = MultiPart::alternative_plain_html(
            templates::plain_body(&message.text, url),
            templates::html_body(message.kind, language, &subject, &message.text, url),
        );
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id.clone()));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let email = builder
            .multipart(body)
            .map_err(|error| SendError::Permanent(format!("cannot build the email: {error}")))?;
        Ok((email, message_id))
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Email
    }

    /// The SMTP pool: each exchange in flight holds one of its connections.
    fn parallel_sends_max(&self) -> Option<usize> {
        usize::try_from(self.pool_size).ok()
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        let (email, message_id) = self.compose(message)?;
        // The SMTP transaction runs to its end in its own task even when the caller stops
        // waiting (a shutdown, a dropped send): cut short after MAIL FROM, its pooled
        // connection would go back to the pool inside a transaction, pass the pool's NOOP
        // check, and fail the next message with "503 nested MAIL command". The conformance
        // suite's cancelled sends found this.
        let (transport, sessions, timeout) =
            (self.transport.clone(), self.sessions.clone(), self.timeout);
        let exchange =
            tokio::spawn(async move { bounded(&sessions, timeout, transport.send(email)).await });
        exchange
            .await
            .map_err(|error| SendError::Retriable(format!("the SMTP exchange was lost: {error}")))?
            .map_err(|failure| self.send_error(failure))?;
        tracing::debug!(
            message_id = %message_id,
            relay = %self.relay,
            "The relay accepted an email"
        );
        Ok(Delivery {
            remote_id: Some(message_id),
        })
    }

    /// Connects (TLS and login included) and sends NOOP, on a pooled connection.
    async fn health_check(&self) -> Result<(), HealthError> {
        let reason = match self.bounded(self.transport.test_connection()).await {
            Ok(true) => return Ok(()),
            Ok(false) => format!("the relay at {} did not answer NOOP", self.relay),
            Err(failure) => self.describe(&failure),
        };
        Err(HealthError {
            channel: ChannelName::Email,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_valid() {
        assert_eq!(
            message_id("0b6f1c2e-9a4d-4f7e-8c3b-2d1e0f9a8b7c"),
            "<0b6f1c2e-9a4d-4f7e-8c3b-2d1e0f9a8b7c@paystep>"
        );
        assert_eq!(message_id("a b@c>"), "<a=20b=40c=3E@paystep>");
        assert_ne!(message_id("a=20"), message_id("a "));
    }

    #[test]
    fn ipv6_relays_are_named_with_brackets() {
        assert_eq!(relay_name("::1", 25), "[::1]:25");
        assert_eq!(relay_name("mail.example", 587), "mail.example:587");
    }
}
