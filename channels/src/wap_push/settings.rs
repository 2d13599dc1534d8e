//! `[channels.wap_push]`: the WAP push channel's own settings, defaults and validation.

use serde::Deserialize;

use crate::{Problems, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WapPushSettings {
    /// The Push Proxy Gateway's PAP 2.0 endpoint, such as `http://ppg.example:8080/wappush`.
    pub ppg_url: String,
    /// Push-initiator credentials (HTTP Basic), where the PPG asks for them.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The part after `@` in `WAPPUSH=+49.../TYPE=PLMN@...`; the PPG URL's host by default.
    #[serde(default)]
    pub address_domain: Option<String>,
    /// `X-Wap-Application-Id` of the content: the browser (`x-wap-application:wml.ua`).
    #[serde(default = "default_application_id")]
    pub application_id: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A confirmation request pushed this long ago and still unanswered goes out again by
    /// SMS (once, where SMS is configured); 0 sends the SMS only when the PPG refuses the
    /// push for good.
    #[serde(default = "default_fallback_after_s")]
    pub fallback_after_s: u64,
    /// Where the PPG posts result notifications: this daemon's
    /// `{http.public_url}/peers/wap_push/{token}`, with a long random token of the operator's
    /// choosing. Unset, no notifications are asked for.
    #[serde(default)]
    pub notify_url: Option<Secret>,
}

impl WapPushSettings {
    /// Every problem, with keys relative to `channels.wap_push`.
    pub fn validate(&self, problems: &mut Problems) {
        let url = reqwest::Url::parse(&self.ppg_url);
        problems.require(
            url.as_ref()
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host()),
            "ppg_url",
            "must be an http(s) URL such as http://ppg.example:8080/wappush",
        );
        problems.require(
            self.username.is_some() == self.password.is_some(),
            "username",
            "needs channels.wap_push.password, and the other way round",
        );
        problems.require(
            self.address_domain.as_deref().is_none_or(|domain| {
                !domain.is_empty()
                    && domain
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || b".-".contains(&byte))
            }),
            "address_domain",
            "must be a host name such as ppg.example",
        );
        problems.require(
            !self.application_id.is_empty() && self.application_id.is_ascii(),
            "application_id",
            "must be an application id such as x-wap-application:wml.ua",
        );
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
            self.notify_url
                .as_ref()
                .is_none_or(|url| notify_token(url.expose()).is_some()),
            "notify_url",
            "must be an http(s) URL ending in /peers/wap_push/ and a token of 32 to 128 letters, \
             digits, - or _",
        );
        problems.require(
            self.fallback_after_s <= 86_400,
            "fallback_after_s",
            "must be at most 86400",
        );
    }

    /// The token result notifications must carry, if they are asked for.
    pub fn notify_token(&self) -> Option<&str> {
        self.notify_url
            .as_ref()
            .and_then(|url| notify_token(url.expose()))
    }

    /// The domain of every push address.
    pub fn address_domain(&self) -> String {
        match &self.address_domain {
            Some(domain) => domain.clone(),
            None => reqwest::Url::parse(&self.ppg_url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_string))
                .unwrap_or_else(|| "localhost".to_string()),
        }
    }

    /// The longest one send may take; the outbox's claim on a message must outlast it.
    pub fn attempt_ms_max(&self) -> u64 {
        self.timeout_ms
    }
}

fn default_application_id() -> String {
    "x-wap-application:wml.ua".to_string()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_fallback_after_s() -> u64 {
    0
}

/// The token at the end of a notify URL (`.../peers/wap_push/{token}`), if it is one.
fn notify_token(url: &str) -> Option<&str> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
        return None;
    }
    let (_, token) = url.rsplit_once("/peers/wap_push/")?;
    let valid = (32..=128).contains(&token.len())
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    valid.then_some(token)
}
