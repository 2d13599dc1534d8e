//! The WAP push channel: confirmation requests as Service Indications, pushed through an
//! operator's Push Proxy Gateway with PAP 2.0 (paystep is the Push Initiator).
//!
//! One HTTP POST per message: a `multipart/related` body with the PAP control document and
//! the SI (`text/vnd.wap.si`; the PPG tokenises it to WBXML and sends it as a WAP push SMS).
//! The push-id and the si-id derive from the outbox id, so a repeated attempt carries the
//! same ids: a PPG that still holds the push answers 2007 (duplicate push id), which counts
//! as accepted, and a handset replaces an SI with the same si-id instead of showing two.
//! The PAP code decides the rest (see `pap::classify`). No User-Agent goes out: Kannel copies
//! it into the SMS.

mod notification;
mod pap;
mod settings;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;

use crate::{
    constant_time_equal, Channel, ChannelName, Delivery, HealthError, OutboundMessage, PeerAnswer,
    PeerRequest, PeerRequestOutcome, Secret, SendError,
};
pub use notification::{notification_response, parse_result_notification, ResultNotification};
pub use pap::{classify, parse_response, PapResult, Verdict};
pub use settings::WapPushSettings;

/// The longest PPG answer read, only to find its PAP code or to say why it failed.
const RESPONSE_BODY_MAX_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WapPushSetupError {
    #[error("invalid WAP push settings:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct WapPushChannel {
    client: reqwest::Client,
    settings: WapPushSettings,
    address_domain: String,
}

// The settings' Debug redacts the password; the client holds no secret.
impl std::fmt::Debug for WapPushChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WapPushChannel")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl WapPushChannel {
    pub fn new(settings: &WapPushSettings) -> Result<WapPushChannel, WapPushSetupError> {
        let mut problems = crate::Problems::new();
        problems.under("channels.wap_push", |problems| settings.validate(problems));
        if !problems.is_empty() {
            return Err(WapPushSetupError::Invalid(problems.into_vec()));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .build()?;
        Ok(WapPushChannel {
            client,
            address_domain: settings.address_domain(),
            settings: settings.clone(),
        })
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let request = self.client.request(method, &self.settings.ppg_url);
        match (&self.settings.username, &self.settings.password) {
            (Some(username), Some(password)) => {
                request.basic_auth(username, Some(password.expose()))
            }
            _ => request,
        }
    }
}

/// `YYYY-MM-DDThh:mm:ssZ`, the date form of SI and PAP, never later than `unix_ms`.
///
/// SI dates travel as packed digits with trailing zero digits dropped. Kannel drops them
/// one digit at a time, so a date whose digits end in an odd number of zeros ("...15:08:10")
/// leaves half an octet, and the handset (or any WBXML decoder) gets a broken SI. Such a date
/// is moved back a second ("...15:08:09"), which is never later than the request's own
/// expiry; every date is at most one second early.
fn wap_date(unix_ms: i64) -> Option<String> {
    let mut unix_s = unix_ms.div_euclid(1000);
    for _ in 0..3 {
        let date = chrono::DateTime::from_timestamp(unix_s, 0)?;
        let digits = date.format("%Y%m%d%H%M%S").to_string();
        if digits.trim_end_matches('0').len() % 2 == 0 {
            return Some(date.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        unix_s -= 1;
    }
    None
}

/// The push address for an international MSISDN.
fn push_address(to: &str, domain: &str) -> Result<String, SendError> {
    let digits = to.strip_prefix('+').unwrap_or(to);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(SendError::Permanent(format!(
            "{to:?} is not an international MSISDN"
        )));
    }
    Ok(format!("WAPPUSH=+{digits}/TYPE=PLMN@{domain}"))
}

/// The outcome of an answer without a PAP document, by its HTTP status alone.
fn classify_status(status: StatusCode) -> Verdict {
    match status.as_u16() {
        // A 2xx without a PAP code says nothing about the push: try again.
        100..=299 => Verdict::Retriable,
        // Not followed: the URL is wrong until an operator fixes it, which a retry survives.
        300..=399 => Verdict::Retriable,
        // Credentials refused, or the PPG is busy: an operator or time fixes these.
        401 | 403 | 407 | 408 | 429 => Verdict::Retriable,
        // The PPG read the request and will never take it.
        400 | 402 | 404..=406 | 409..=428 | 430..=499 => Verdict::Permanent,
        500..=599 => Verdict::Retriable,
        0..=99 | 600..=u16::MAX => Verdict::Retriable,
    }
}

#[async_trait]
impl Channel for WapPushChannel {
    fn name(&self) -> ChannelName {
        ChannelName::WapPush
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        let href = message.url.as_deref().ok_or_else(|| {
            SendError::Permanent(
                "a Service Indication needs a link, and this message has none".into(),
            )
        })?;
        let address = push_address(&message.to, &self.address_domain)?;
        let push_id = format!("{}@paystep", message.id);
        let created = wap_date(now_ms()).unwrap_or_default();
        let expires = message.expires_at_ms.and_then(wap_date);
        let push = pap::Push {
            push_id: &push_id,
            address: &address,
            si_id: &message.id,
            href,
            text: &message.text,
            created: &created,
            expires: expires.as_deref(),
            application_id: &self.settings.application_id,
            notify_url: self.settings.notify_url.as_ref().map(Secret::expose),
        };
        let (body, content_type) = pap::push_body(&push)
            .map_err(|error| SendError::Permanent(format!("cannot write the push: {error}")))?;
        let response = self
            .request(reqwest::Method::POST)
            .header("content-type", content_type)
            // Kannel copies the request's headers into the push SMS; reqwest would send
            // `Accept: */*` by default, so say once, briefly, what we take back.
            .header("accept", "application/xml")
            .body(body)
            .send()
            .await
            .map_err(|error| SendError::Retriable(format!("the PPG did not answer: {error}")))?;
        let status = response.status();
        let answer = crate::http_body::read_bounded(response, RESPONSE_BODY_MAX_BYTES).await;
        let (verdict, reason) = match parse_response(&answer) {
            Some(result) => (
                classify(result.code),
                format!(
                    "PAP {} {}",
                    result.code,
                    result.description.as_deref().unwrap_or("(no description)")
                ),
            ),
            None => (
                classify_status(status),
                format!("the PPG answered HTTP {status} without a PAP result"),
            ),
        };
        match verdict {
            Verdict::Accepted => Ok(Delivery {
                remote_id: Some(push_id),
            }),
            Verdict::Retriable => Err(SendError::Retriable(reason)),
            Verdict::Permanent => Err(SendError::Permanent(reason)),
        }
    }

    /// A result notification, when `notify_url` asked for them and the token matches.
    fn receive_from_peer(&self, request: PeerRequest<'_>) -> Option<PeerRequestOutcome> {
        let expected = self.settings.notify_token()?;
        if !constant_time_equal(request.token.as_bytes(), expected.as_bytes()) {
            return Some(PeerRequestOutcome::Refused);
        }
        let body = String::from_utf8_lossy(request.body);
        let answer = |status: u16, body: Vec<u8>| PeerAnswer {
            status,
            content_type: "application/xml",
            body,
        };
        Some(match parse_result_notification(&body) {
            Ok(notification) => {
                let accepted = notification_response(&notification, 1000, "OK").unwrap_or_default();
                PeerRequestOutcome::Received {
                    message: notification.into_inbound(),
                    answer: answer(200, accepted),
                }
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "A result notification that does not parse");
                PeerRequestOutcome::Invalid(answer(400, reason.into_bytes()))
            }
        })
    }

    /// The PPG answers HTTP (any answer but a refused login will do), within `timeout_ms`.
    async fn health_check(&self) -> Result<(), HealthError> {
        let unhealthy = |reason: String| HealthError {
            channel: ChannelName::WapPush,
            reason,
        };
        let response = self
            .request(reqwest::Method::GET)
            .send()
            .await
            .map_err(|error| {
                unhealthy(format!(
                    "the PPG at {} does not answer: {error}",
                    self.settings.ppg_url
                ))
            })?;
        match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(unhealthy(format!(
                "the PPG at {} refuses our credentials (HTTP {})",
                self.settings.ppg_url,
                response.status()
            ))),
            _ => Ok(()),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_international() {
        assert_eq!(
            push_address("+491701234567", "ppg.example").unwrap(),
            "WAPPUSH=+491701234567/TYPE=PLMN@ppg.example"
        );
        assert!(matches!(
            push_address("+49 170", "ppg.example"),
            Err(SendError::Permanent(_))
        ));
    }

    #[test]
    fn dates_are_utc_seconds() {
        assert_eq!(wap_date(1_796_212_800_000).unwrap(), "2026-12-02T12:00:00Z");
        assert_eq!(wap_date(1_796_212_801_999).unwrap(), "2026-12-02T12:00:01Z");
    }

    #[test]
    fn dates_whose_digits_end_in_an_odd_run_of_zeros_move_back_a_second() {
        // 12:00:10 packs as 20261202120001 after Kannel drops one zero: half an octet.
        assert_eq!(wap_date(1_796_212_810_000).unwrap(), "2026-12-02T12:00:09Z");
        // 12:10:00 -> 12:09:59; midnight on the 10th -> 23:59:59 the day before.
        assert_eq!(wap_date(1_796_213_400_000).unwrap(), "2026-12-02T12:09:59Z");
        assert_eq!(wap_date(1_796_860_800_000).unwrap(), "2026-12-09T23:59:59Z");
        // An even run of zeros is left as it is.
        assert_eq!(wap_date(1_796_216_400_000).unwrap(), "2026-12-02T13:00:00Z");
    }
}
