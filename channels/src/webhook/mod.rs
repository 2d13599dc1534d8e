//! The webhook channel: retailer events as signed HTTP POSTs, per Standard Webhooks
//! (<https://www.standardwebhooks.com>): `webhook-id` (stable across retries, so receivers
//! deduplicate), `webhook-timestamp`, and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`, one signature per valid secret during a rotation.
//!
//! Redirects are not followed (a webhook URL that redirects is misconfigured, and following
//! it could send events somewhere the retailer did not say); response bodies are read up to
//! a bound, only to record why a delivery failed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;

use crate::{Channel, ChannelName, Delivery, HealthError, OutboundMessage, SendError};

const SECRET_PREFIX: &str = "whsec_";

/// `[channels.webhook]`. Each retailer's URL and secret are data, not configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub enabled: bool,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub response_body_max_bytes: usize,
    /// After a rotation, the previous secret also signs for this long.
    pub previous_secret_valid_s: i64,
}

impl WebhookSettings {
    /// Every problem, with keys relative to `channels.webhook`.
    pub fn validate(&self, problems: &mut crate::Problems) {
        problems.require(
            (100..=120_000).contains(&self.timeout_ms),
            "timeout_ms",
            "must be between 100 and 120000",
        );
        problems.require(
            (100..=60_000).contains(&self.connect_timeout_ms),
            "connect_timeout_ms",
            "must be between 100 and 60000",
        );
        problems.require(
            (256..=1_048_576).contains(&self.response_body_max_bytes),
            "response_body_max_bytes",
            "must be between 256 and 1048576",
        );
        problems.require(
            self.previous_secret_valid_s >= 0,
            "previous_secret_valid_s",
            "must not be negative",
        );
    }

    /// The longest one send may take; the outbox's claim on a message must outlast it.
    pub fn attempt_ms_max(&self) -> u64 {
        self.timeout_ms
    }
}

/// Holds no secret: each message brings its retailer's.
#[derive(Debug)]
pub struct WebhookChannel {
    client: reqwest::Client,
    response_body_max_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl WebhookChannel {
    pub fn new(settings: &WebhookSettings) -> Result<WebhookChannel, WebhookSetupError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .user_agent(concat!("paystep-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookChannel {
            client,
            response_body_max_bytes: settings.response_body_max_bytes,
        })
    }
}

/// The `webhook-signature` header value for `body`, signed with every secret.
pub fn signature_header(
    secrets: &[String],
    message_id: &str,
    timestamp_s: u64,
    body: &str,
) -> Result<String, String> {
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let key = STANDARD
            .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
            .map_err(|error| format!("a webhook secret is not base64: {error}"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(format!("{message_id}.{timestamp_s}.{body}").as_bytes());
        signatures.push(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    Ok(signatures.join(" "))
}

/// What an HTTP status means for a delivery. Every status is named: a new one must be
/// classified on purpose, not by accident.
fn classify(status: StatusCode) -> Result<(), Classified> {
    match status.as_u16() {
        200..=299 => Ok(()),
        // Redirects are not followed; retrying cannot help until the URL is fixed.
        300..=399 => Err(Classified::Permanent),
        // Gone: the retailer removed the endpoint on purpose.
        410 => Err(Classified::Permanent),
        // Timeouts, throttling, and everything else may pass: the receiver may be
        // mid-deploy, overloaded, or misconfigured for a moment.
        100..=199 | 400..=409 | 411..=599 => Err(Classified::Retriable),
        _ => Err(Classified::Retriable),
    }
}

enum Classified {
    Retriable,
    Permanent,
}

#[async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Webhook
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        let payload = message
            .payload
            .as_ref()
            .ok_or_else(|| SendError::Permanent("a webhook message has no payload".into()))?;
        if message.signing_secrets.is_empty() {
            return Err(SendError::Permanent(
                "the retailer has no webhook secret".into(),
            ));
        }
        let body = payload.to_string();
        // The wire timestamp is the real time of this attempt: receivers reject old ones.
        let timestamp_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default();
        let signature = signature_header(&message.signing_secrets, &message.id, timestamp_s, &body)
            .map_err(SendError::Permanent)?;
        let response = self
            .client
            .post(&message.to)
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|error| {
                if error.is_builder() {
                    SendError::Permanent(format!("invalid webhook URL: {error}"))
                } else {
                    SendError::Retriable(format!("webhook request failed: {error}"))
                }
            })?;
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        match classify(status) {
            Ok(()) => Ok(Delivery::default()),
            Err(kind) => {
                let body =
                    crate::http_body::read_bounded(response, self.response_body_max_bytes).await;
                let mut reason = format!("webhook answered {status}");
                if let Some(location) = location {
                    reason.push_str(&format!(" (redirect to {location} not followed)"));
                }
                if !body.is_empty() {
                    reason.push_str(&format!(": {body}"));
                }
                Err(match kind {
                    Classified::Retriable => SendError::Retriable(reason),
                    Classified::Permanent => SendError::Permanent(reason),
                })
            }
        }
    }

    /// There is no one peer to check: each retailer has its own endpoint.
    async fn health_check(&self) -> Result<(), HealthError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification's reference implementations.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string();
        let header = signature_header(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_valid_secret_signs() {
        let secrets = vec!["whsec_AAAA".to_string(), "whsec_BBBB".to_string()];
        let header = signature_header(&secrets, "id", 1, "{}").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|part| part.starts_with("v1,")));
    }

    #[test]
    fn statuses_are_classified() {
        assert!(classify(StatusCode::OK).is_ok());
        assert!(classify(StatusCode::NO_CONTENT).is_ok());
        assert!(matches!(
            classify(StatusCode::FOUND),
            Err(Classified::Permanent)
        ));
        assert!(matches!(
            classify(StatusCode::GONE),
            Err(Classified::Permanent)
        ));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR),
            Err(Classified::Retriable)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            Err(Classified::Retriable)
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND),
            Err(Classified::Retriable)
        ));
    }
}
