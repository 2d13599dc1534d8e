//! `[channels.voice]`: the voice channel's own settings, defaults and validation.

use serde::Deserialize;

use crate::{Problems, Secret};

/// Which kind of voice platform places the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Dialect {
    /// A Twilio-compatible REST API; call scripts in TwiML, requests signed with
    /// `X-Twilio-Signature`.
    Twiml,
    /// A VoiceXML 2.1 platform; calls originated by a signed JSON request.
    Voicexml,
}

impl TryFrom<String> for Dialect {
    type Error = String;

    fn try_from(value: String) -> Result<Dialect, String> {
        match value.as_str() {
            "twiml" => Ok(Dialect::Twiml),
            "voicexml" => Ok(Dialect::Voicexml),
            _ => Err(format!(
                "{value:?} is not a voice dialect: use \"twiml\" or \"voicexml\""
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSettings {
    pub dialect: Dialect,
    /// twiml: the platform's REST base, such as `https://api.twilio.com`.
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(default)]
    pub account_sid: Option<String>,
    /// twiml: HTTP Basic password of the REST API, and the key of `X-Twilio-Signature`.
    #[serde(default)]
    pub auth_token: Option<Secret>,
    /// voicexml: where calls are originated.
    #[serde(default)]
    pub originate_url: Option<String>,
    /// voicexml: the Standard Webhooks secret that signs originate requests.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// voicexml: the token in the service number's URL,
    /// `{http.public_url}/voice/vxml/incoming/{token}?from={caller}`; unset, calls to the
    /// service number are not taken (twiml platforms sign theirs instead).
    #[serde(default)]
    pub incoming_token: Option<Secret>,
    /// The caller id, and the service number customers call.
    pub from: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A call that was busy or not answered is placed again this many times, this long
    /// after; then the request goes by SMS, where SMS is configured.
    #[serde(default = "default_busy_retries")]
    pub busy_retries: u32,
    #[serde(default = "default_busy_retry_delay_s")]
    pub busy_retry_delay_s: u64,
    /// `[channels.voice.voice_id]`: a speaker-verification service whose positive verdict a
    /// call's confirmation needs (claim 13).
    #[serde(default)]
    pub voice_id: Option<VoiceIdSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceIdSettings {
    /// Where the recording's URL is posted (JSON `recording_url`, `customer_id`,
    /// `call_sid`); the answer is `{"match": true|false}`.
    pub url: String,
    /// No verdict within this time declines.
    #[serde(default = "default_voice_id_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest phrase recorded.
    #[serde(default = "default_voice_id_max_length_s")]
    pub max_length_s: u32,
}

fn http_url(url: Option<&str>) -> bool {
    url.and_then(|url| reqwest::Url::parse(url).ok())
        .is_some_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
}

impl VoiceSettings {
    /// Every problem, with keys relative to `channels.voice`.
    pub fn validate(&self, problems: &mut Problems) {
        match self.dialect {
            Dialect::Twiml => {
                problems.require(
                    http_url(self.api_url.as_deref()),
                    "api_url",
                    "must be the platform's http(s) REST base, such as https://api.twilio.com",
                );
                problems.require(
                    self.account_sid.as_deref().is_some_and(|sid| {
                        !sid.is_empty() && sid.bytes().all(|b| b.is_ascii_alphanumeric())
                    }),
                    "account_sid",
                    "must be the platform's account id (letters and digits)",
                );
                problems.require(
                    self.auth_token
                        .as_ref()
                        .is_some_and(|token| !token.is_empty()),
                    "auth_token",
                    "must be set for the twiml dialect",
                );
            }
            Dialect::Voicexml => {
                problems.require(
                    http_url(self.originate_url.as_deref()),
                    "originate_url",
                    "must be the platform's http(s) originate endpoint",
                );
                problems.require(
                    self.secret
                        .as_ref()
                        .is_some_and(|secret| secret.expose().starts_with("whsec_")),
                    "secret",
                    "must be a Standard Webhooks secret (whsec_...) for the voicexml dialect",
                );
            }
        }
        problems.require(
            self.incoming_token.as_ref().is_none_or(|token| {
                let token = token.expose();
                (32..=128).contains(&token.len())
                    && token
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            }),
            "incoming_token",
            "must be 32 to 128 letters, digits, - or _",
        );
        let digits = self.from.strip_prefix('+').unwrap_or("");
        problems.require(
            (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
            "from",
            "must be an international number such as +4930123456",
        );
        problems.require(
            (100..=120_000).contains(&self.timeout_ms),
            "timeout_ms",
            "must be between 100 and 120000",
        );
        problems.require(
            self.busy_retries <= 10,
            "busy_retries",
            "must be at most 10",
        );
        problems.require(
            self.voice_id.is_none() || self.dialect == Dialect::Twiml,
            "voice_id",
            "needs the twiml dialect (VoiceXML recordings are not taken yet)",
        );
        if let Some(voice_id) = &self.voice_id {
            problems.require(
                http_url(Some(&voice_id.url)),
                "voice_id.url",
                "must be the speaker-verification service's http(s) URL",
            );
            problems.require(
                (100..=60_000).contains(&voice_id.timeout_ms),
                "voice_id.timeout_ms",
                "must be between 100 and 60000",
            );
            problems.require(
                (1..=30).contains(&voice_id.max_length_s),
                "voice_id.max_length_s",
                "must be between 1 and 30",
            );
        }
        problems.require(
            self.busy_retry_delay_s <= 86_400,
            "busy_retry_delay_s",
            "must be at most 86400",
        );
        problems.require(
            (100..=60_000).contains(&self.connect_timeout_ms),
            "connect_timeout_ms",
            "must be between 100 and 60000",
        );
    }

    /// The longest one send may take; the outbox's claim on a message must outlast it.
    pub fn attempt_ms_max(&self) -> u64 {
        self.timeout_ms
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_voice_id_timeout_ms() -> u64 {
    5_000
}
fn default_voice_id_max_length_s() -> u32 {
    5
}
fn default_busy_retries() -> u32 {
    2
}
fn default_busy_retry_delay_s() -> u64 {
    120
}
