//! The channel conformance suite (`paystep_channel_core::conformance`) for the adapters
//! whose peers are simple: the console (a file) and webhooks (a retailer's endpoint, here the
//! Python receiver that verifies signatures with the `standardwebhooks` package). The SMS,
//! email and WAP push adapters run the same suite in their own test files, on their peers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paystep_channel_core::conformance::{self, AnswerCase, Class, Peer};
use paystep_channels::console::{ConsoleChannel, ConsoleSettings};
use paystep_channels::webhook::{WebhookChannel, WebhookSettings};
use paystep_channels::{Channel, ChannelName, MessageKind, OutboundMessage};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const WAIT_MAX: Duration = Duration::from_secs(20);

fn message(channel: ChannelName, id: &str, to: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.to_string(),
        channel,
        intended_channel: channel,
        kind: MessageKind::ConfirmationRequest,
        to: to.to_string(),
        retailer_id: Some("r1".into()),
        process_id: Some("p1".into()),
        code: Some("123456".into()),
        description: Some("Parking".into()),
        reference: None,
        language: "en".into(),
        text: "Garage Nord asks you to release 20.00 EUR. Code 123456.".into(),
        url: Some("https://pay.example/c/token".into()),
        expires_at_ms: None,
        payload: None,
        signing_secrets: Vec::new(),
    }
}

struct ConsolePeer {
    path: PathBuf,
    settings: ConsoleSettings,
    channel: Arc<ConsoleChannel>,
    _dir: tempfile::TempDir,
}

impl ConsolePeer {
    fn new() -> ConsolePeer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.jsonl");
        let settings = ConsoleSettings {
            enabled: true,
            path: path.display().to_string(),
        };
        let channel = Arc::new(settings.build().expect("enabled"));
        ConsolePeer {
            path,
            settings,
            channel,
            _dir: dir,
        }
    }
}

#[async_trait]
impl Peer for ConsolePeer {
    fn channel(&self) -> Arc<dyn Channel> {
        self.channel.clone()
    }

    fn message(&self, id: &str) -> OutboundMessage {
        message(ChannelName::Console, id, "+491701234567")
    }

    /// The console's reader is whoever reads the file: each line names its message.
    async fn received_ids(&self, count: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .take(count)
            .map(|line| {
                let line: Value = serde_json::from_str(line).expect("whole JSON lines");
                line["message_id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn channel_to_silent_peer(&self, _: SocketAddr, _: Duration) -> Option<Arc<dyn Channel>> {
        None
    }

    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }

    fn debug_renderings(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.settings),
            format!("{:?}", self.channel),
        ]
    }

    /// A file that cannot be written (its directory is missing) may be fixed: retriable.
    /// Nothing makes the console refuse a line for good.
    async fn answers(&self) -> Vec<AnswerCase> {
        let broken = ConsoleSettings {
            enabled: true,
            path: self
                .path
                .join("not-a-directory/console.jsonl")
                .display()
                .to_string(),
        }
        .build()
        .expect("enabled");
        let result = broken.send(&self.message("answer-1")).await;
        let written = self.channel.send(&self.message("answer-2")).await;
        vec![
            AnswerCase {
                answer: "the file cannot be opened".into(),
                classed: Class::of(&result),
                expected: Class::Retriable,
            },
            AnswerCase {
                answer: "the line is written".into(),
                classed: Class::of(&written),
                expected: Class::Accepted,
            },
        ]
    }
}

#[tokio::test]
async fn the_console_channel_passes_the_conformance_suite() {
    conformance::run(&ConsolePeer::new()).await;
}

/// The Python receiver: verifies each delivery with `standardwebhooks` and records it.
struct Receiver {
    port: u16,
    http: reqwest::Client,
    _child: Child,
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

impl Receiver {
    async fn start() -> Receiver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/webhook_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", WEBHOOK_SECRET])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "python3 runs the webhook receiver (scripts/test.sh installs standardwebhooks)",
            );
        let receiver = Receiver {
            port,
            http: reqwest::Client::new(),
            _child: child,
        };
        let deadline = Instant::now() + WAIT_MAX;
        while receiver
            .http
            .get(receiver.url("/_received"))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the webhook receiver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn set_mode(&self, mode: &str) {
        let response = self
            .http
            .post(self.url("/_control/mode"))
            .header("content-type", "application/json")
            .body(json!({ "mode": mode }).to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    async fn received(&self) -> Value {
        self.http
            .get(self.url("/_received"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).expect("JSON"))
            .unwrap()
    }
}

struct WebhookPeer {
    receiver: Receiver,
    settings: WebhookSettings,
    channel: Arc<WebhookChannel>,
}

#[async_trait]
impl Peer for WebhookPeer {
    fn channel(&self) -> Arc<dyn Channel> {
        self.channel.clone()
    }

    fn message(&self, id: &str) -> OutboundMessage {
        let mut message = message(ChannelName::Webhook, id, &self.receiver.url("/hook"));
        message.kind = MessageKind::Event;
        message.payload = Some(json!({"type": "process.created", "id": id}));
        message.signing_secrets = vec![WEBHOOK_SECRET.to_string()];
        message
    }

    async fn received_ids(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let received = self.receiver.received().await;
            let ids: Vec<String> = received["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|delivery| delivery["webhook_id"].as_str().unwrap().to_string())
                .collect();
            if ids.len() >= count {
                return ids.into_iter().take(count).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{count} webhooks did not arrive: {received}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each retailer has its own endpoint: there is no one peer whose health to check.
    fn channel_to_silent_peer(&self, _: SocketAddr, _: Duration) -> Option<Arc<dyn Channel>> {
        None
    }

    fn secrets(&self) -> Vec<String> {
        vec![WEBHOOK_SECRET.to_string()]
    }

    fn debug_renderings(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.settings),
            format!("{:?}", self.channel),
            format!("{:?}", self.message("debug")),
        ]
    }

    /// The receiver made to answer each way a real endpoint does.
    async fn answers(&self) -> Vec<AnswerCase> {
        let mut cases = Vec::new();
        for (mode, answer, expected) in [
            ("fail", "500 Internal Server Error", Class::Retriable),
            ("gone", "410 Gone", Class::Permanent),
            ("redirect", "302 Found (not followed)", Class::Permanent),
            ("ok", "204 No Content", Class::Accepted),
        ] {
            self.receiver.set_mode(mode).await;
            let result = self
                .channel
                .send(&self.message(&format!("answer-{mode}")))
                .await;
            cases.push(AnswerCase {
                answer: answer.into(),
                classed: Class::of(&result),
                expected,
            });
        }
        cases
    }
}

#[tokio::test]
async fn the_webhook_channel_passes_the_conformance_suite() {
    let settings = WebhookSettings {
        enabled: true,
        timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        response_body_max_bytes: 4096,
        previous_secret_valid_s: 0,
    };
    let channel = Arc::new(WebhookChannel::new(&settings).unwrap());
    let peer = WebhookPeer {
        receiver: Receiver::start().await,
        settings,
        channel,
    };
    conformance::run(&peer).await;
}
