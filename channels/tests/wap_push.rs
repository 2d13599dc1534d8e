//! The WAP push channel against Kannel's PPG (Debian `kannel`) in front of the test SMSC:
//! the suite every adapter passes, with what reached the SMSC decoded by `wbxml2xml`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paystep_channel_core::conformance::{self, AnswerCase, Class, Peer};
use paystep_channels::wap_push::{classify, Verdict, WapPushChannel, WapPushSettings};
use paystep_channels::{Channel, ChannelName, MessageKind, OutboundMessage};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[path = "../../tests/peers/kannel/kannel.rs"]
#[allow(dead_code)]
mod kannel;
use kannel::{decode_push, wap_pushes, Kannel};

const WAIT_MAX: Duration = Duration::from_secs(20);
/// Inside Kannel's allowed prefix (+4917...); outside it, Kannel answers PAP 2001.
const PUSHABLE: &str = "+491701234567";
const REFUSED: &str = "+493012345678";

/// The test SMSC (`tests/peers/smsc/smsc.js`), just enough to read what Kannel submits.
struct Smsc {
    smpp_port: u16,
    http_port: u16,
    http: reqwest::Client,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Smsc {
    async fn start() -> Smsc {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/smsc/smsc.js");
        let mut child = Command::new("node")
            .arg(script)
            .args(["--smpp-port", "0", "--http-port", "0", "--record"])
            .arg(dir.path().join("submits.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the test SMSC (scripts/test.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT_MAX, lines.next_line())
            .await
            .expect("the test SMSC starts")
            .unwrap()
            .expect("the test SMSC says where it listens");
        let listening: Value = serde_json::from_str(&line).unwrap();
        Smsc {
            smpp_port: listening["smpp_port"].as_u64().unwrap() as u16,
            http_port: listening["http_port"].as_u64().unwrap() as u16,
            http: reqwest::Client::new(),
            _child: child,
            _dir: dir,
        }
    }

    async fn submits(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/submits", self.http_port);
        let submits: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).expect("JSON"))
            .unwrap();
        submits.as_array().cloned().unwrap_or_default()
    }
}

fn settings(ppg_url: &str) -> WapPushSettings {
    WapPushSettings {
        ppg_url: ppg_url.to_string(),
        username: Some(kannel::PPG_USERNAME.to_string()),
        password: Some(kannel::PPG_PASSWORD.into()),
        address_domain: Some("ppg.example".to_string()),
        application_id: "x-wap-application:wml.ua".to_string(),
        timeout_ms: 5_000,
        connect_timeout_ms: 1_000,
        fallback_after_s: 0,
        notify_url: None,
    }
}

fn push(id: &str, to: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.to_string(),
        channel: ChannelName::WapPush,
        intended_channel: ChannelName::WapPush,
        kind: MessageKind::ConfirmationRequest,
        to: to.to_string(),
        retailer_id: Some("r1".into()),
        process_id: Some("p1".into()),
        code: Some("123456".into()),
        description: Some("Parking".into()),
        reference: None,
        language: "en".into(),
        text: "Garage Nord: release 20.00 EUR? Code 123456".into(),
        url: Some("https://pay.example/c/token".into()),
        expires_at_ms: None,
        payload: None,
        signing_secrets: Vec::new(),
    }
}

struct WapPushPeer {
    smsc: Smsc,
    kannel: Kannel,
    settings: WapPushSettings,
    channel: Arc<WapPushChannel>,
}

#[async_trait]
impl Peer for WapPushPeer {
    fn channel(&self) -> Arc<dyn Channel> {
        self.channel.clone()
    }

    fn message(&self, id: &str) -> OutboundMessage {
        push(id, PUSHABLE)
    }

    /// The si-id of each push as the handset would read it: decoded from the SMS.
    async fn received_ids(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let pushes = wap_pushes(&self.smsc.submits().await);
            if pushes.len() >= count {
                let mut ids = Vec::new();
                for push in pushes.iter().take(count) {
                    let xml = decode_push(push).await;
                    let start = xml.find("si-id=\"").expect("an si-id") + "si-id=\"".len();
                    let end = start + xml[start..].find('"').unwrap();
                    ids.push(xml[start..end].to_string());
                }
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "{count} pushes did not arrive; {}",
                self.kannel.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn channel_to_silent_peer(
        &self,
        silent: SocketAddr,
        timeout: Duration,
    ) -> Option<Arc<dyn Channel>> {
        let settings = WapPushSettings {
            timeout_ms: timeout.as_millis() as u64,
            connect_timeout_ms: timeout.as_millis() as u64,
            ..settings(&format!("http://{silent}/wappush"))
        };
        Some(Arc::new(
            WapPushChannel::new(&settings).expect("valid settings"),
        ))
    }

    fn secrets(&self) -> Vec<String> {
        vec![kannel::PPG_PASSWORD.to_string()]
    }

    fn debug_renderings(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.settings),
            format!("{:?}", self.channel),
        ]
    }

    /// Kannel made to answer each way it can, and the PAP codes it never gives through the
    /// classifying function.
    async fn answers(&self) -> Vec<AnswerCase> {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let unreachable =
            WapPushChannel::new(&settings(&format!("http://{closed}/wappush"))).unwrap();
        let mut cases = vec![
            AnswerCase {
                answer: "PAP 1001 accepted for processing (Kannel)".into(),
                classed: Class::of(&self.channel.send(&push("answer-ok", PUSHABLE)).await),
                expected: Class::Accepted,
            },
            AnswerCase {
                answer: "PAP 2001 request refused (Kannel, number outside the allowed prefix)"
                    .into(),
                classed: Class::of(&self.channel.send(&push("answer-refused", REFUSED)).await),
                expected: Class::Permanent,
            },
            AnswerCase {
                answer: "connection refused (no PPG)".into(),
                classed: Class::of(&unreachable.send(&push("answer-down", PUSHABLE)).await),
                expected: Class::Retriable,
            },
        ];
        for (code, expected) in [
            (1000, Class::Accepted),
            (2000, Class::Permanent),
            (2002, Class::Permanent),
            (2007, Class::Accepted),
            (3000, Class::Retriable),
            (3009, Class::Retriable),
            (4001, Class::Retriable),
            (9999, Class::Retriable),
        ] {
            cases.push(AnswerCase {
                answer: format!("PAP {code}"),
                classed: match classify(code) {
                    Verdict::Accepted => Class::Accepted,
                    Verdict::Retriable => Class::Retriable,
                    Verdict::Permanent => Class::Permanent,
                },
                expected,
            });
        }
        cases
    }
}

#[tokio::test]
async fn the_wap_push_channel_passes_the_conformance_suite_through_kannel() {
    let smsc = Smsc::start().await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let settings = settings(&kannel.ppg_url());
    let channel = Arc::new(WapPushChannel::new(&settings).expect("the channel builds"));
    channel.health_check().await.expect("Kannel's PPG answers");
    let peer = WapPushPeer {
        smsc,
        kannel,
        settings,
        channel,
    };
    conformance::run(&peer).await;
}

/// Regression: Kannel drops trailing zero digits of SI dates one at a time, so "...:10"
/// left half an octet and the SI did not decode ("Bad Opaque Length", seen in a full run).
/// Such dates go out a second earlier, and decode.
#[tokio::test]
async fn an_expiry_at_ten_seconds_past_decodes_through_kannel() {
    let smsc = Smsc::start().await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let channel = WapPushChannel::new(&settings(&kannel.ppg_url())).unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // An hour ahead, at ten seconds past a minute.
    let expires_s = (now_s + 3600) / 60 * 60 + 10;
    let mut message = push("7d1c2a52-5b0e-4f43-9d1e-0c3f5a6b7010", PUSHABLE);
    message.expires_at_ms = Some(expires_s * 1000);
    channel.send(&message).await.expect("Kannel takes the push");
    let deadline = Instant::now() + WAIT_MAX;
    let pushes = loop {
        let pushes = wap_pushes(&smsc.submits().await);
        if !pushes.is_empty() {
            break pushes;
        }
        assert!(
            Instant::now() < deadline,
            "the push did not arrive; {}",
            kannel.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let xml = decode_push(&pushes[0]).await;
    assert!(xml.contains(":09Z\""), "a second early: {xml}");
}
