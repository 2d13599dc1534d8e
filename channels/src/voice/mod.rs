//! The voice channel: confirmation requests as synthetic voice calls, answered with DTMF.
//!
//! paystep asks the voice platform to place a call (`twiml`: Twilio's `Calls.json`, HTTP
//! Basic); the platform then fetches the call's script from paystep
//! (`{public_url}/voice/twiml/calls/{message id}`), speaks it, gathers keys and posts them
//! back. The core serves those requests (`src/http/voice.rs`) and decides what the call says
//! next; this adapter checks the platform's signatures and writes each step as TwiML.
//!
//! The `voicexml` dialect originates calls with a JSON request signed as Standard Webhooks;
//! the platform fetches `{public_url}/voice/vxml/calls/{message id}/{token}`, where the token
//! is an HMAC of the message id under the channel's secret, and every later URL carries a
//! single-use random token the core issues.

mod settings;
mod signature;
pub mod twiml;
pub mod voicexml;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;

use crate::{
    constant_time_equal, CallRequest, CallStep, Channel, ChannelName, Delivery, HealthError,
    OutboundMessage, PeerAnswer, Problems, SendError, SpeakerSample, SpeakerVerdict,
};
pub use settings::{Dialect, VoiceIdSettings, VoiceSettings};
pub use signature::twilio_signature;

/// The longest platform answer read.
const RESPONSE_BODY_MAX_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VoiceSetupError {
    #[error("invalid voice settings:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct VoiceChannel {
    settings: VoiceSettings,
    /// `http.public_url`: the base of the URLs the platform calls back.
    public_url: String,
    client: reqwest::Client,
}

// The settings' Debug redacts the auth token and the secret.
impl std::fmt::Debug for VoiceChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceChannel")
            .field("settings", &self.settings)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl VoiceChannel {
    pub fn new(
        settings: &VoiceSettings,
        public_url: &str,
    ) -> Result<VoiceChannel, VoiceSetupError> {
        let mut problems = Problems::new();
        problems.under("channels.voice", |problems| settings.validate(problems));
        if !problems.is_empty() {
            return Err(VoiceSetupError::Invalid(problems.into_vec()));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .build()?;
        Ok(VoiceChannel {
            settings: settings.clone(),
            public_url: public_url.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// The script URL of the call that delivers `message_id`.
    pub fn script_url(&self, message_id: &str) -> String {
        match self.settings.dialect {
            Dialect::Twiml => format!("{}/voice/twiml/calls/{message_id}", self.public_url),
            Dialect::Voicexml => format!(
                "{}/voice/vxml/calls/{message_id}/{}",
                self.public_url,
                self.url_token(message_id, "script")
            ),
        }
    }

    /// base64url(HMAC-SHA256(secret, "{purpose}:{message_id}")): unguessable without the
    /// secret, the same on every attempt of the message.
    fn url_token(&self, message_id: &str, purpose: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac;
        let secret = self
            .settings
            .secret
            .as_ref()
            .map(|secret| secret.expose())
            .unwrap_or_default();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(format!("{purpose}:{message_id}").as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Originates a VoiceXML call: JSON signed as Standard Webhooks with the secret.
    async fn originate_voicexml_call(
        &self,
        message: &OutboundMessage,
    ) -> Result<Delivery, SendError> {
        let body = serde_json::json!({
            "call_id": message.id,
            "to": message.to,
            "from": self.settings.from,
            "url": self.script_url(&message.id),
            "status_url": format!(
                "{}/voice/vxml/calls/{}/status/{}",
                self.public_url,
                message.id,
                self.url_token(&message.id, "status")
            ),
        })
        .to_string();
        let secret = self
            .settings
            .secret
            .as_ref()
            .map(|secret| secret.expose().to_string())
            .unwrap_or_default();
        let timestamp_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default();
        let signature =
            crate::webhook::signature_header(&[secret], &message.id, timestamp_s, &body)
                .map_err(SendError::Permanent)?;
        let response = self
            .client
            .post(self.settings.originate_url.as_deref().unwrap_or_default())
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|error| {
                SendError::Retriable(format!("the voice platform did not answer: {error}"))
            })?;
        let status = response.status();
        let answer = crate::http_body::read_bounded(response, RESPONSE_BODY_MAX_BYTES).await;
        let reason = format!("the voice platform answered {status}: {answer}");
        match classify_status(status) {
            Verdict::Accepted => Ok(Delivery {
                remote_id: Some(message.id.clone()),
            }),
            Verdict::Retriable => Err(SendError::Retriable(reason)),
            Verdict::Permanent => Err(SendError::Permanent(reason)),
        }
    }

    fn auth_token(&self) -> &str {
        self.settings
            .auth_token
            .as_ref()
            .map(|token| token.expose())
            .unwrap_or_default()
    }

    async fn place_twiml_call(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        let api_url = self.settings.api_url.as_deref().unwrap_or_default();
        let account_sid = self.settings.account_sid.as_deref().unwrap_or_default();
        let url = format!(
            "{}/2010-04-01/Accounts/{account_sid}/Calls.json",
            api_url.trim_end_matches('/')
        );
        let script_url = self.script_url(&message.id);
        let status_url = format!("{script_url}/status");
        let form = [
            ("To", message.to.as_str()),
            ("From", self.settings.from.as_str()),
            ("Url", script_url.as_str()),
            ("Method", "POST"),
            ("StatusCallback", status_url.as_str()),
            ("StatusCallbackMethod", "POST"),
        ];
        let body = form
            .iter()
            .map(|(name, value)| format!("{name}={}", form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .client
            .post(url)
            .basic_auth(account_sid, Some(self.auth_token()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|error| {
                SendError::Retriable(format!("the voice platform did not answer: {error}"))
            })?;
        let status = response.status();
        let answer = crate::http_body::read_bounded(response, RESPONSE_BODY_MAX_BYTES).await;
        let reason = format!("the voice platform answered {status}: {answer}");
        match classify_status(status) {
            Verdict::Accepted => {
                let sid = serde_json::from_str::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|call| call["sid"].as_str().map(str::to_string));
                Ok(Delivery { remote_id: sid })
            }
            Verdict::Retriable => Err(SendError::Retriable(reason)),
            Verdict::Permanent => Err(SendError::Permanent(reason)),
        }
    }
}

/// What the platform's answer to a call request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Retriable,
    Permanent,
}

/// Every status is named, so that a new one is classed on purpose.
pub fn classify_status(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Accepted,
        // Credentials refused, or too many calls at once: an operator or time fixes these.
        401 | 403 | 408 | 429 => Verdict::Retriable,
        // The call as asked will never be placed: a number the platform refuses (Twilio
        // answers 400 with code 21211), an unknown account resource.
        400 | 402 | 404..=407 | 409..=428 | 430..=499 => Verdict::Permanent,
        500..=599 => Verdict::Retriable,
        0..=199 | 300..=399 | 600..=u16::MAX => Verdict::Retriable,
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[async_trait]
impl Channel for VoiceChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Voice
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        // A call asks a question; a message without a request behind it has nothing to ask.
        if message.url.is_none() {
            return Err(SendError::Permanent(
                "a call carries confirmation requests only, and this message is none".into(),
            ));
        }
        match self.settings.dialect {
            Dialect::Twiml => self.place_twiml_call(message).await,
            Dialect::Voicexml => self.originate_voicexml_call(message).await,
        }
    }

    /// The platform knows the account and takes our login, within `timeout_ms`.
    async fn health_check(&self) -> Result<(), HealthError> {
        let unhealthy = |reason: String| HealthError {
            channel: ChannelName::Voice,
            reason,
        };
        if self.settings.dialect == Dialect::Voicexml {
            // No standard account endpoint: the originate URL answering at all will do.
            let url = self.settings.originate_url.as_deref().unwrap_or_default();
            return match self.client.head(url).send().await {
                Ok(_) => Ok(()),
                Err(error) => Err(unhealthy(format!(
                    "the voice platform at {url} does not answer: {error}"
                ))),
            };
        }
        let api_url = self.settings.api_url.as_deref().unwrap_or_default();
        let account_sid = self.settings.account_sid.as_deref().unwrap_or_default();
        let url = format!(
            "{}/2010-04-01/Accounts/{account_sid}.json",
            api_url.trim_end_matches('/')
        );
        let response = self
            .client
            .get(url)
            .basic_auth(account_sid, Some(self.auth_token()))
            .send()
            .await
            .map_err(|error| {
                unhealthy(format!(
                    "the voice platform at {api_url} does not answer: {error}"
                ))
            })?;
        match response.status() {
            status if status.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(unhealthy(format!(
                "the voice platform refuses channels.voice.account_sid and auth_token (HTTP {})",
                response.status()
            ))),
            status => Err(unhealthy(format!(
                "the voice platform answered HTTP {status} for the account"
            ))),
        }
    }

    fn authenticate_call_request(&self, request: &CallRequest<'_>) -> bool {
        // VoiceXML platforms sign nothing: their URLs carry tokens, checked by the core.
        if self.settings.dialect != Dialect::Twiml {
            return false;
        }
        let Some(signature) = request.signature else {
            return false;
        };
        let expected = twilio_signature(self.auth_token(), request.url, request.fields);
        constant_time_equal(signature.as_bytes(), expected.as_bytes())
    }

    /// Posts the recording's URL to the speaker-verification service and reads its verdict,
    /// within `voice_id.timeout_ms`.
    async fn verify_speaker(&self, sample: &SpeakerSample<'_>) -> Option<SpeakerVerdict> {
        let voice_id = self.settings.voice_id.as_ref()?;
        let body = serde_json::json!({
            "recording_url": sample.recording_url,
            "customer_id": sample.customer_id,
            "call_sid": sample.call_sid,
        });
        let asked = self
            .client
            .post(&voice_id.url)
            .timeout(Duration::from_millis(voice_id.timeout_ms))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let response = match asked {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                return Some(SpeakerVerdict::Unavailable(format!(
                    "the speaker-verification service answered {}",
                    response.status()
                )))
            }
            Err(error) => {
                return Some(SpeakerVerdict::Unavailable(format!(
                    "no verdict from the speaker-verification service: {error}"
                )))
            }
        };
        let answer = crate::http_body::read_bounded(response, RESPONSE_BODY_MAX_BYTES).await;
        let verdict = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|answer| answer["match"].as_bool());
        Some(match verdict {
            Some(true) => SpeakerVerdict::Match,
            Some(false) => SpeakerVerdict::NoMatch,
            None => SpeakerVerdict::Unavailable(format!("not a verdict: {answer}")),
        })
    }

    fn render_call_step(&self, step: &CallStep) -> Option<PeerAnswer> {
        let (body, content_type) = match self.settings.dialect {
            Dialect::Twiml => (twiml::render(step).ok()?, "application/xml"),
            Dialect::Voicexml => (voicexml::render(step).ok()?, "application/voicexml+xml"),
        };
        Some(PeerAnswer {
            status: 200,
            content_type,
            body,
        })
    }

    fn call_url_token(&self, message_id: &str, purpose: &str) -> Option<String> {
        if self.settings.dialect != Dialect::Voicexml {
            return None;
        }
        match purpose {
            // The service number's URL: a token the operator chose and gave the platform.
            "incoming" => self
                .settings
                .incoming_token
                .as_ref()
                .map(|token| token.expose().to_string()),
            _ => Some(self.url_token(message_id, purpose)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classed() {
        for (status, verdict) in [
            (201, Verdict::Accepted),
            (400, Verdict::Permanent),
            (404, Verdict::Permanent),
            (401, Verdict::Retriable),
            (429, Verdict::Retriable),
            (503, Verdict::Retriable),
        ] {
            assert_eq!(
                classify_status(StatusCode::from_u16(status).unwrap()),
                verdict,
                "{status}"
            );
        }
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("+49 30/x?a=b&c"), "%2B49+30%2Fx%3Fa%3Db%26c");
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use std::panic::AssertUnwindSafe;

    use quick_xml::events::Event;
    use quick_xml::Reader;

    use super::*;

    const AUTH_TOKEN: &str = "fuzz-auth-token";

    fn channel(dialect: Dialect) -> VoiceChannel {
        let settings = VoiceSettings {
            dialect,
            api_url: Some("https://api.example".into()),
            account_sid: Some("AC123".into()),
            auth_token: Some(AUTH_TOKEN.into()),
            originate_url: Some("https://vxml.example/originate".into()),
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            incoming_token: None,
            from: "+4930123456".into(),
            timeout_ms: 2_000,
            connect_timeout_ms: 1_000,
            busy_retries: 2,
            busy_retry_delay_s: 120,
            voice_id: None,
        };
        VoiceChannel::new(&settings, "https://pay.example").expect("valid settings")
    }

    fn authenticated(
        channel: &VoiceChannel,
        url: &str,
        fields: &[(String, String)],
        signature: Option<&str>,
    ) -> bool {
        channel.authenticate_call_request(&CallRequest {
            url,
            fields,
            signature,
        })
    }

    #[test]
    fn platform_requests_pass_exactly_when_signed_with_the_auth_token() {
        // Built once: a channel holds an HTTP client, which is slow to make.
        let channels = AssertUnwindSafe((channel(Dialect::Twiml), channel(Dialect::Voicexml)));
        bolero::check!()
            .with_type::<(String, Vec<(String, String)>, String, String)>()
            .with_iterations(2_000)
            .for_each(|(url, fields, forged, other_token)| {
                let (twiml, voicexml) = &*channels;
                let signature = twilio_signature(AUTH_TOKEN, url, fields);
                assert_eq!(signature.len(), 28, "base64 of a SHA-1 HMAC");
                assert!(authenticated(twiml, url, fields, Some(&signature)));
                // The platform may post its fields in any order.
                let reversed: Vec<(String, String)> = fields.iter().rev().cloned().collect();
                assert!(authenticated(twiml, url, &reversed, Some(&signature)));
                assert!(!authenticated(twiml, url, fields, None));
                if *forged != signature {
                    assert!(!authenticated(twiml, url, fields, Some(forged)));
                }
                let guessed = twilio_signature(other_token, url, fields);
                if other_token != AUTH_TOKEN {
                    assert!(!authenticated(twiml, url, fields, Some(&guessed)));
                }
                // VoiceXML platforms sign nothing: their URLs' tokens are checked instead.
                assert!(!authenticated(voicexml, url, fields, Some(&signature)));
            });
    }

    /// A call step's texts and URLs, and which step it is.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Step {
        kind: u8,
        text: String,
        language: String,
        url: String,
        one_key: bool,
        no_input: String,
        max_length_s: u32,
    }

    impl Step {
        fn call_step(&self) -> CallStep {
            match self.kind % 3 {
                0 => CallStep::Ask {
                    text: self.text.clone(),
                    language: self.language.clone(),
                    answer_url: self.url.clone(),
                    one_key: self.one_key,
                    no_input: self.no_input.clone(),
                },
                1 => CallStep::Record {
                    text: self.text.clone(),
                    language: self.language.clone(),
                    recording_url: self.url.clone(),
                    max_length_s: self.max_length_s,
                },
                _ => CallStep::End {
                    text: self.text.clone(),
                    language: self.language.clone(),
                },
            }
        }
    }

    /// What a platform reads in `document`: the root's name, every text (references
    /// resolved) and every attribute value; panics where the document is not well-formed.
    fn read(document: &[u8]) -> (String, Vec<String>, Vec<String>) {
        let mut reader = Reader::from_reader(document);
        let (mut root, mut texts, mut values) = (None::<Vec<u8>>, Vec::new(), Vec::new());
        let mut open: Vec<Vec<u8>> = Vec::new();
        // Text comes in pieces between references (`&amp;`); this joins them.
        let mut text: Option<String> = None;
        let mut buffer = Vec::new();
        loop {
            let event = reader
                .read_event_into(&mut buffer)
                .expect("well-formed XML");
            match &event {
                Event::Text(piece) => text
                    .get_or_insert_default()
                    .push_str(&piece.decode().expect("UTF-8")),
                Event::GeneralRef(reference) => {
                    let name = reference.decode().expect("UTF-8");
                    let resolved = match reference.resolve_char_ref().expect("a character") {
                        Some(character) => character.to_string(),
                        None => quick_xml::escape::resolve_predefined_entity(&name)
                            .expect("a predefined entity")
                            .to_string(),
                    };
                    text.get_or_insert_default().push_str(&resolved);
                }
                _ => texts.extend(text.take()),
            }
            match &event {
                Event::Start(element) | Event::Empty(element) => {
                    let name = element.name().as_ref().to_vec();
                    // One root, and everything else inside it.
                    assert!(root.is_none() || !open.is_empty(), "a second root");
                    root.get_or_insert_with(|| name.clone());
                    for attribute in element.attributes() {
                        let attribute = attribute.expect("well-formed attribute");
                        values.push(attribute.unescape_value().expect("escaped").into_owned());
                    }
                    if matches!(event, Event::Start(_)) {
                        open.push(name);
                    }
                }
                Event::End(element) => {
                    assert_eq!(open.pop().as_deref(), Some(element.name().as_ref()));
                }
                Event::Eof => break,
                _ => {}
            }
            buffer.clear();
        }
        assert!(open.is_empty(), "unclosed elements");
        let root = String::from_utf8(root.expect("a root element")).expect("UTF-8");
        (root, texts, values)
    }

    #[test]
    fn call_steps_render_as_documents_that_say_what_the_step_says() {
        bolero::check!()
            .with_type::<Step>()
            .with_iterations(2_000)
            .for_each(|step| {
                let call_step = step.call_step();
                for (root, document) in [
                    ("Response", twiml::render(&call_step)),
                    ("vxml", voicexml::render(&call_step)),
                ] {
                    let document = document.expect("rendered in memory");
                    let (read_root, texts, values) = read(&document);
                    assert_eq!(read_root, root);
                    assert!(
                        texts.contains(&step.text) || step.text.is_empty(),
                        "{texts:?}"
                    );
                    let ends = matches!(call_step, CallStep::End { .. });
                    let spoken_only =
                        root == "vxml" && matches!(call_step, CallStep::Record { .. });
                    if !ends && !spoken_only {
                        assert!(values.contains(&step.url), "{values:?}");
                    }
                }
            });
    }
}
