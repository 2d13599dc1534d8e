//! Configuration: `config/default.toml` built in, then an optional `--config FILE`, then
//! `PAYSTEP__SECTION__KEY` environment variables. Unknown keys and bad values fail at start
//! with the key's path.

use std::net::SocketAddr;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;

use paystep_channels::console::ConsoleSettings;
use paystep_channels::email::EmailSettings;
use paystep_channels::sms::SmsSettings;
use paystep_channels::voice::VoiceSettings;
use paystep_channels::wap_push::WapPushSettings;
use paystep_channels::webhook::WebhookSettings;
use paystep_channels::Problems;

use crate::domain::TopUpPolicyKind;

/// The built-in defaults, so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Source(#[from] config::ConfigError),
    #[error("configuration key `{path}`: {message}")]
    Key { path: String, message: String },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub limits: LimitSettings,
    pub engine: EngineSettings,
    pub security: SecuritySettings,
    pub retention: RetentionSettings,
    pub outbox: OutboxSettings,
    pub channels: ChannelSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    pub acquire_timeout_ms: u64,
    /// Group commit (SQLite): at most this many operations share one transaction.
    pub write_batch_operations_max: usize,
    /// How long a batch's first operation may wait for company; 0 takes only what queued
    /// while the previous batch committed.
    pub write_batch_wait_ms: u64,
    /// Writes waiting for the writer; past this, requests are refused with 503.
    pub write_queue_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub public_url: String,
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// Where `/metrics` is served without a token; unset, it is served on `listen` behind
    /// the admin token.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub token: String,
}

// The token is a secret: never print it.
impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// In major units; a decimal string so it never passes through a float.
    pub max_amount: Decimal,
    pub steps_per_process_max: i64,
    pub page_size_max: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub confirmation_ttl_s: i64,
    pub process_inactivity_s: i64,
    pub process_inactivity_max_s: i64,
    pub sweep_interval_ms: u64,
    pub sweep_batch_size: i64,
    pub top_up_policy: TopUpPolicyKind,
    pub top_up_factor: Decimal,
    pub pre_expiry_notice_s: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub pin_tries_per_request: i64,
    pub pin_lockout_after: i64,
    pub pin_lockout_s: i64,
    /// Failed guesses (wrong API keys, admin tokens, confirmation tokens, PINs) one client
    /// address may make at once, and how many more it earns per minute; past them failures
    /// are answered 429. Correct requests are never counted.
    pub failures_per_source_burst: u32,
    pub failures_per_source_per_minute: u32,
    /// The same, per target: the presented key or link (by its first characters, so that
    /// repeated tries of one count together), or the one admin token.
    pub failures_per_target_burst: u32,
    pub failures_per_target_per_minute: u32,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl SecuritySettings {
    /// `trusted_proxies` parsed; `validate` refuses entries that do not parse.
    pub fn trusted_proxy_nets(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|entry| parse_net(entry))
            .collect()
    }
}

/// A CIDR range, or a single address as a range of one.
fn parse_net(entry: &str) -> Option<ipnet::IpNet> {
    let entry = entry.trim();
    entry.parse::<ipnet::IpNet>().ok().or_else(|| {
        entry
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Saved answers to `Idempotency-Key`s are kept at least this long (at least a day).
    pub idempotency_keys_s: i64,
    /// Answered or expired confirmation requests (their PIN tries stay, unlinked).
    pub confirmations_s: i64,
    pub pin_attempts_s: i64,
    /// Delivered outbox messages (dead letters stay until requeued or looked at).
    pub delivered_outbox_s: i64,
    /// Rows deleted per statement, so a prune never holds the writer for long.
    pub batch_size: i64,
    /// How long the sweeper waits after a prune that found nothing.
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    pub poll_interval_ms: u64,
    pub batch_size: i64,
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    pub retry_max_age_s: i64,
    /// How long a claimed message is reserved for the worker delivering it; after a crash
    /// mid-delivery, another worker tries again once it runs out.
    pub claim_lease_ms: i64,
    pub workers: usize,
    /// False: this daemon delivers nothing (another daemon on the same PostgreSQL does, or
    /// a benchmark measures writes alone). Messages are still written and wait for one.
    pub deliver: bool,
}

/// `[channels.*]`: each adapter owns its settings' shape, defaults and checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    pub console: ConsoleSettings,
    pub webhook: WebhookSettings,
    /// SMS over SMPP; absent means no SMS channel.
    #[serde(default)]
    pub sms: Option<SmsSettings>,
    /// Email through an SMTP relay; absent means no email channel.
    #[serde(default)]
    pub email: Option<EmailSettings>,
    /// Service Indications through a Push Proxy Gateway; absent means no WAP push channel.
    #[serde(default)]
    pub wap_push: Option<WapPushSettings>,
    /// Synthetic voice calls through a voice platform; absent means no voice channel.
    #[serde(default)]
    pub voice: Option<VoiceSettings>,
}

impl ChannelSettings {
    /// Every adapter's problems, under its key.
    fn validate(&self, problems: &mut Problems) {
        problems.under("channels.console", |problems| {
            self.console.validate(problems)
        });
        problems.under("channels.webhook", |problems| {
            self.webhook.validate(problems)
        });
        if let Some(sms) = &self.sms {
            problems.under("channels.sms", |problems| sms.validate(problems));
        }
        if let Some(email) = &self.email {
            problems.under("channels.email", |problems| email.validate(problems));
        }
        if let Some(wap_push) = &self.wap_push {
            problems.under("channels.wap_push", |problems| wap_push.validate(problems));
        }
        if let Some(voice) = &self.voice {
            problems.under("channels.voice", |problems| voice.validate(problems));
        }
    }

    /// The slowest send of each configured channel with a remote peer, in milliseconds.
    fn attempt_ms_max(&self) -> Vec<(&'static str, u64)> {
        let mut attempts = Vec::new();
        if self.webhook.enabled {
            attempts.push(("channels.webhook", self.webhook.attempt_ms_max()));
        }
        if let Some(sms) = &self.sms {
            attempts.push(("channels.sms", sms.attempt_ms_max()));
        }
        if let Some(email) = &self.email {
            attempts.push(("channels.email", email.attempt_ms_max()));
        }
        if let Some(wap_push) = &self.wap_push {
            attempts.push(("channels.wap_push", wap_push.attempt_ms_max()));
        }
        if let Some(voice) = &self.voice {
            attempts.push(("channels.voice", voice.attempt_ms_max()));
        }
        attempts
    }
}

impl Settings {
    /// Loads the layered configuration: built-in defaults, `file`, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_layers(file.map(|file| config::File::from(file).required(true)))
    }

    /// `load` with the operator's file as any source, so that the fuzz target can hand it
    /// over from memory.
    fn load_layers<S>(file: Option<S>) -> Result<Settings, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PAYSTEP")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists from the environment are comma-separated.
                .list_separator(",")
                .with_list_parse_key("security.trusted_proxies"),
        );
        let raw = builder.build()?;
        let settings: Settings =
            serde_path_to_error::deserialize(raw).map_err(|error| ConfigError::Key {
                path: error.path().to_string(),
                message: error.inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types cannot, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, path: &str, message: &str| {
            if !ok {
                problems.push(format!("`{path}`: {message}"));
            }
        };
        let url = &self.database.url;
        require(
            url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"),
            "database.url",
            "must start with sqlite: or postgres:",
        );
        require(
            self.database.max_connections >= 1,
            "database.max_connections",
            "must be at least 1",
        );
        require(
            self.database.acquire_timeout_ms >= 1,
            "database.acquire_timeout_ms",
            "must be at least 1",
        );
        require(
            (1..=10_000).contains(&self.database.write_batch_operations_max),
            "database.write_batch_operations_max",
            "must be between 1 and 10000",
        );
        require(
            self.database.write_batch_wait_ms <= 100,
            "database.write_batch_wait_ms",
            "must be at most 100",
        );
        require(
            (1..=1_000_000).contains(&self.database.write_queue_max),
            "database.write_queue_max",
            "must be between 1 and 1000000",
        );
        let public_url = &self.http.public_url;
        require(
            (public_url.starts_with("http://") || public_url.starts_with("https://"))
                && !public_url.ends_with('/'),
            "http.public_url",
            "must be an http(s) URL without a trailing slash",
        );
        require(
            self.http.body_limit_bytes >= 1024,
            "http.body_limit_bytes",
            "must be at least 1024",
        );
        require(
            self.http.request_timeout_ms >= 100,
            "http.request_timeout_ms",
            "must be at least 100",
        );
        require(
            self.admin.token.len() >= 12,
            "admin.token",
            "must be at least 12 characters",
        );
        require(
            self.limits.max_amount > Decimal::ZERO,
            "limits.max_amount",
            "must be positive",
        );
        require(
            self.limits.steps_per_process_max >= 1,
            "limits.steps_per_process_max",
            "must be at least 1",
        );
        require(
            (1..=1000).contains(&self.limits.page_size_max),
            "limits.page_size_max",
            "must be between 1 and 1000",
        );
        require(
            self.engine.confirmation_ttl_s >= 1,
            "engine.confirmation_ttl_s",
            "must be at least 1",
        );
        require(
            self.engine.process_inactivity_s >= 1
                && self.engine.process_inactivity_s <= self.engine.process_inactivity_max_s,
            "engine.process_inactivity_s",
            "must be between 1 and engine.process_inactivity_max_s",
        );
        require(
            self.engine.sweep_interval_ms >= 10,
            "engine.sweep_interval_ms",
            "must be at least 10",
        );
        require(
            (1..=10_000).contains(&self.engine.sweep_batch_size),
            "engine.sweep_batch_size",
            "must be between 1 and 10000",
        );
        require(
            self.engine.top_up_factor > Decimal::ONE,
            "engine.top_up_factor",
            "must be greater than 1",
        );
        require(
            self.security.pin_tries_per_request >= 1,
            "security.pin_tries_per_request",
            "must be at least 1",
        );
        require(
            self.security.pin_lockout_after >= 1,
            "security.pin_lockout_after",
            "must be at least 1",
        );
        require(
            self.security.pin_lockout_s >= 1,
            "security.pin_lockout_s",
            "must be at least 1",
        );
        for (index, entry) in self.security.trusted_proxies.iter().enumerate() {
            require(
                parse_net(entry).is_some(),
                &format!("security.trusted_proxies[{index}]"),
                "must be an IP address or a CIDR range such as 10.0.0.0/8",
            );
        }
        require(
            self.security.failures_per_source_burst >= 1
                && self.security.failures_per_source_per_minute >= 1,
            "security.failures_per_source_burst",
            "and failures_per_source_per_minute must be at least 1",
        );
        require(
            self.security.failures_per_target_burst >= 1
                && self.security.failures_per_target_per_minute >= 1,
            "security.failures_per_target_burst",
            "and failures_per_target_per_minute must be at least 1",
        );
        let retention = &self.retention;
        require(
            retention.idempotency_keys_s >= 86_400,
            "retention.idempotency_keys_s",
            "must be at least 86400 (a retailer may retry for a day)",
        );
        for (ok, path) in [
            (retention.confirmations_s >= 1, "retention.confirmations_s"),
            (retention.pin_attempts_s >= 1, "retention.pin_attempts_s"),
            (
                retention.delivered_outbox_s >= 1,
                "retention.delivered_outbox_s",
            ),
        ] {
            require(ok, path, "must be at least 1");
        }
        require(
            (1..=10_000).contains(&retention.batch_size),
            "retention.batch_size",
            "must be between 1 and 10000",
        );
        require(
            retention.interval_ms >= 10,
            "retention.interval_ms",
            "must be at least 10",
        );
        require(
            self.outbox.poll_interval_ms >= 10,
            "outbox.poll_interval_ms",
            "must be at least 10",
        );
        require(
            (1..=1000).contains(&self.outbox.batch_size),
            "outbox.batch_size",
            "must be between 1 and 1000",
        );
        require(
            self.outbox.retry_base_ms >= 1 && self.outbox.retry_base_ms <= self.outbox.retry_max_ms,
            "outbox.retry_base_ms",
            "must be between 1 and outbox.retry_max_ms",
        );
        require(
            self.outbox.retry_max_age_s >= 1,
            "outbox.retry_max_age_s",
            "must be at least 1",
        );
        require(
            self.outbox.claim_lease_ms >= 100,
            "outbox.claim_lease_ms",
            "must be at least 100",
        );
        require(
            (1..=64).contains(&self.outbox.workers),
            "outbox.workers",
            "must be between 1 and 64",
        );
        require(
            self.engine.pre_expiry_notice_s >= 0,
            "engine.pre_expiry_notice_s",
            "must not be negative",
        );
        let mut channel_problems = Problems::new();
        self.channels.validate(&mut channel_problems);
        // A delivery that outlives its claim could be claimed again by another worker and
        // arrive twice; the lease must outlast the slowest attempt.
        for (channel, attempt_ms) in self.channels.attempt_ms_max() {
            channel_problems.require(
                self.outbox.claim_lease_ms > i64::try_from(attempt_ms).unwrap_or(i64::MAX),
                "outbox.claim_lease_ms",
                &format!("must be longer than the slowest {channel} send ({attempt_ms} ms)"),
            );
        }
        problems.extend(channel_problems.into_vec());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use super::*;

    /// The channels' sections with values that pass, so that overrides reach their checks.
    const CHANNEL_SECTIONS: &[(&str, &[(&str, &str)])] = &[
        ("channels.sms", &[("source_addr", "\"12345\"")]),
        (
            "channels.sms.smsc",
            &[
                ("name", "\"a\""),
                ("host", "\"127.0.0.1\""),
                ("port", "2775"),
                ("system_id", "\"paystep\""),
                ("password", "\"secret\""),
                ("bind", "\"transceiver\""),
                ("window", "10"),
                ("throughput_per_s", "50"),
                ("response_timeout_ms", "5000"),
                ("reconnect_backoff_min_ms", "100"),
                ("reconnect_backoff_max_ms", "1000"),
            ],
        ),
        (
            "channels.email",
            &[
                ("host", "\"localhost\""),
                ("port", "587"),
                ("tls", "\"starttls\""),
                ("from", "\"paystep <pay@example.com>\""),
                ("pool_size", "4"),
                ("timeout_ms", "10000"),
            ],
        ),
        (
            "channels.wap_push",
            &[
                ("ppg_url", "\"http://127.0.0.1:8080/wappush\""),
                ("timeout_ms", "10000"),
                ("fallback_after_s", "60"),
                (
                    "notify_url",
                    "\"http://127.0.0.1/peers/wap_push/0123456789abcdef0123456789abcdef\"",
                ),
            ],
        ),
        (
            "channels.voice",
            &[
                ("dialect", "\"twiml\""),
                ("api_url", "\"https://api.example\""),
                ("account_sid", "\"AC123\""),
                ("auth_token", "\"token\""),
                ("from", "\"+4930123456\""),
                ("busy_retries", "2"),
            ],
        ),
        (
            "channels.voice.voice_id",
            &[("url", "\"https://id.example\"")],
        ),
    ];

    /// Every section and key: those of `config/default.toml` with their default values,
    /// then the channels' above.
    fn sections() -> Vec<(String, Vec<(String, String)>)> {
        let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in DEFAULT_TOML.lines().map(str::trim) {
            if let Some(section) = line
                .strip_prefix('[')
                .and_then(|line| line.strip_suffix(']'))
            {
                sections.push((section.to_string(), Vec::new()));
            } else if let (Some((key, value)), Some((_, keys))) =
                (line.split_once(" = "), sections.last_mut())
            {
                if !key.starts_with('#') {
                    let value = value.split(" #").next().unwrap_or(value).trim();
                    keys.push((key.trim().to_string(), value.to_string()));
                }
            }
        }
        for (section, keys) in CHANNEL_SECTIONS {
            let keys = keys
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            sections.push((section.to_string(), keys));
        }
        sections
    }

    /// A TOML basic string.
    fn quoted(text: &str) -> String {
        let mut quoted = String::from("\"");
        for character in text.chars() {
            match character {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                character if character.is_control() => {
                    quoted.push_str(&format!("\\u{:04X}", u32::from(character)))
                }
                character => quoted.push(character),
            }
        }
        quoted.push('"');
        quoted
    }

    /// One key set to a value of some shape, often the wrong one.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Override {
        section: u8,
        key: u8,
        shape: u8,
        number: i64,
        text: String,
    }

    impl Override {
        fn value(&self, default: &str) -> String {
            match self.shape % 10 {
                0 => self.number.to_string(),
                1 => (self.number % 1_000).to_string(),
                2 => quoted(&self.text),
                3 => (self.number % 2 == 0).to_string(),
                4 => format!("{:?}", self.number as f64 / 7.0),
                5 => quoted(&format!(
                    "{}.{:02}",
                    self.number,
                    self.number.rem_euclid(100)
                )),
                6 => format!("[{}]", quoted(&self.text)),
                7 => u64::MAX.to_string(),
                8 => format!("{{ {} = 1 }}", quoted(&self.text)),
                _ => default.to_string(),
            }
        }
    }

    /// A configuration file: the chosen channels' sections, then the overrides (a key that
    /// is in no section is an unknown key).
    fn document(channels: u8, overrides: &[Override]) -> String {
        let mut sections = sections();
        let defaults = sections.len() - CHANNEL_SECTIONS.len();
        for (index, (_, keys)) in sections.iter_mut().enumerate() {
            let left_out = index >= defaults && channels & (1 << (index - defaults)) == 0;
            if left_out {
                keys.clear();
            }
        }
        for change in overrides {
            let section = usize::from(change.section) % sections.len();
            let (_, keys) = &mut sections[section];
            let index = usize::from(change.key) % (keys.len() + 1);
            match keys.get_mut(index) {
                Some((_, value)) => *value = change.value(value),
                None => keys.push(("unknown_key".into(), change.value("1"))),
            }
        }
        let mut document = String::new();
        for (section, keys) in sections.iter().filter(|(_, keys)| !keys.is_empty()) {
            // The SMSCs are an array of tables.
            if section == "channels.sms.smsc" {
                document.push_str(&format!("[[{section}]]\n"));
            } else {
                document.push_str(&format!("[{section}]\n"));
            }
            for (key, value) in keys {
                document.push_str(&format!("{key} = {value}\n"));
            }
        }
        document
    }

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::load_layers(Some(config::File::from_str(text, config::FileFormat::Toml)))
    }

    /// Loaded settings are valid; a refusal says what is wrong, and where.
    fn check(text: &str) {
        match load(text) {
            Ok(settings) => assert!(settings.validate().is_ok()),
            Err(ConfigError::Source(error)) => assert!(!error.to_string().is_empty()),
            Err(ConfigError::Key { message, .. }) => assert!(!message.is_empty(), "{text}"),
            Err(ConfigError::Invalid(problems)) => {
                assert!(!problems.is_empty());
                for problem in problems {
                    assert!(
                        problem.starts_with('`') && problem.contains("`: "),
                        "{problem}"
                    );
                }
            }
        }
    }

    #[test]
    fn any_configuration_file_loads_or_is_refused_with_a_reason() {
        bolero::check!()
            .with_type::<(String, u8, Vec<Override>)>()
            .with_iterations(300)
            .for_each(|(raw, channels, overrides)| {
                check(raw);
                check(&document(*channels, overrides));
            });
    }

    #[test]
    fn the_defaults_and_every_channel_section_load() {
        // The documents the fuzz target starts from are valid, so that its overrides are
        // what makes a document fail.
        for channels in [0, 0b011111, 0b110000] {
            let settings = load(&document(channels, &[]));
            assert!(settings.is_ok(), "{channels:#b}: {:?}", settings.err());
        }
    }
}
