//! The SMS channel against a real SMPP server: the test SMSC in `tests/peers/smsc/smsc.js`
//! (node-smpp), driven over its HTTP control port and read back from its record file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paystep_channel_core::conformance::{self, AnswerCase, Class, Peer};
use paystep_channels::sms::{BindMode, SmsChannel, SmsSettings, SmscSettings};
use paystep_channels::{
    Channel, ChannelName, InboundError, InboundMessage, InboundSink, MessageKind, OutboundMessage,
    SendError,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const MSISDN: &str = "+491701234567";
const SOURCE_ADDR: &str = "12345";
/// Every wait in these tests ends; a hang is a failure with a message, not a stuck run.
const WAIT_MAX: Duration = Duration::from_secs(20);

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the channels crate sits in the repository")
        .to_path_buf()
}

/// The test SMSC as a child process with its own record file and log.
struct Smsc {
    child: Option<Child>,
    smpp_port: u16,
    http_port: u16,
    record: PathBuf,
    log: PathBuf,
    arguments: Vec<String>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Smsc {
    async fn start(arguments: &[&str]) -> Smsc {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut smsc = Smsc {
            child: None,
            smpp_port: 0,
            http_port: 0,
            record: dir.path().join("submits.jsonl"),
            log: dir.path().join("smsc.log"),
            arguments: arguments
                .iter()
                .map(|argument| argument.to_string())
                .collect(),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        smsc.spawn().await;
        smsc
    }

    /// Starts node on the remembered ports (0 the first time: node picks and reports them).
    async fn spawn(&mut self) {
        let root = repository_root();
        let script = root.join("tests/peers/smsc/smsc.js");
        let module = root.join("tests/peers/smsc/node_modules/smpp/package.json");
        assert!(
            module.exists(),
            "The test SMSC needs its npm packages: run scripts/test.sh, or \
             `npm ci --no-audit --no-fund` in tests/peers/smsc ({} is missing).",
            module.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the SMSC log file opens");
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--smpp-port", &self.smpp_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .arg("--record")
            .arg(&self.record)
            .args(&self.arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "node runs the test SMSC ({error}); scripts/test.sh installs Node.js and \
                     the SMSC's packages"
                )
            });
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT_MAX, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the test SMSC did not start; see {}", self.log.display()))
            .expect("the SMSC's stdout is readable")
            .unwrap_or_else(|| {
                panic!(
                    "the test SMSC exited before listening; see {}: {}",
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
        let listening: Value = serde_json::from_str(&line).expect("the SMSC announces as JSON");
        self.smpp_port = listening["smpp_port"].as_u64().unwrap() as u16;
        self.http_port = listening["http_port"].as_u64().unwrap() as u16;
        self.child = Some(child);
    }

    /// SIGKILL: no unbind, no goodbye, sockets reset by the kernel.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("the SMSC can be killed");
        }
    }

    async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the SMSC's HTTP port answers");
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("JSON")
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the SMSC's HTTP port answers");
        let status = response.status().as_u16();
        let body = serde_json::from_slice(&response.bytes().await.unwrap()).expect("JSON");
        (status, body)
    }

    async fn submits(&self) -> Vec<Value> {
        self.get("/submits").await.as_array().unwrap().clone()
    }

    /// The record file, which spans every process that used it.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str(line).expect("a record is JSON"))
            .collect()
    }

    fn settings(&self, adjust: impl FnOnce(&mut SmscSettings)) -> SmsSettings {
        let mut smsc = SmscSettings {
            name: "test-smsc".into(),
            host: "127.0.0.1".into(),
            port: self.smpp_port,
            tls: false,
            ca_file: None,
            system_id: "paystep".into(),
            password: "secret".into(),
            system_type: String::new(),
            bind: BindMode::Transceiver,
            window: 10,
            throughput_per_s: 200,
            enquire_link_interval_ms: 5_000,
            response_timeout_ms: 2_000,
            reconnect_backoff_min_ms: 100,
            reconnect_backoff_max_ms: 1_000,
        };
        adjust(&mut smsc);
        SmsSettings {
            source_addr: SOURCE_ADDR.into(),
            source_addr_ton: 3,
            source_addr_npi: 0,
            registered_delivery: true,
            smscs: vec![smsc],
        }
    }
}

/// The core's side of inbound messages: collects them, or refuses them on demand.
#[derive(Default)]
struct Collector {
    messages: Mutex<Vec<InboundMessage>>,
    refuse: AtomicBool,
    changed: Notify,
}

#[async_trait]
impl InboundSink for Collector {
    async fn receive(&self, message: InboundMessage) -> Result<(), InboundError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(InboundError("the test's core refuses for now".into()));
        }
        self.messages.lock().unwrap().push(message);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Collector {
    async fn wait_for(&self, matches: impl Fn(&InboundMessage) -> bool) -> InboundMessage {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let notified = self.changed.notified();
            if let Some(found) = self.messages.lock().unwrap().iter().find(|m| matches(m)) {
                return found.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no matching inbound message; got {:?}",
                    self.messages.lock().unwrap()
                );
            }
        }
    }

    fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

fn start_channel(settings: SmsSettings) -> (SmsChannel, Arc<Collector>) {
    // Log lines on demand: RUST_LOG=paystep_channels=debug cargo test --test smpp.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let collector = Arc::new(Collector::default());
    let channel = SmsChannel::start(settings, collector.clone()).expect("the channel starts");
    (channel, collector)
}

async fn wait_until_bound(channel: &SmsChannel) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match channel.health_check().await {
            Ok(()) => return,
            Err(error) if Instant::now() > deadline => panic!("the link never bound: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

static MESSAGE_NUMBER: AtomicUsize = AtomicUsize::new(0);

fn sms(text: &str) -> OutboundMessage {
    OutboundMessage {
        id: format!("msg-{}", MESSAGE_NUMBER.fetch_add(1, Ordering::Relaxed)),
        channel: ChannelName::Sms,
        intended_channel: ChannelName::Sms,
        kind: MessageKind::Notice,
        to: MSISDN.into(),
        retailer_id: None,
        process_id: None,
        code: None,
        description: None,
        reference: None,
        language: "en".into(),
        text: text.into(),
        url: None,
        expires_at_ms: None,
        payload: None,
        signing_secrets: Vec::new(),
    }
}

async fn send(channel: &SmsChannel, text: &str) -> String {
    channel
        .send(&sms(text))
        .await
        .unwrap_or_else(|error| panic!("sending {text:?} failed: {error}"))
        .remote_id
        .expect("the SMSC's message id")
}

/// Sends like the outbox does: a retriable failure is tried again after a short pause.
async fn send_until_accepted(channel: &SmsChannel, text: &str, deadline: Instant) -> String {
    loop {
        match channel.send(&sms(text)).await {
            Ok(delivery) => return delivery.remote_id.expect("the SMSC's message id"),
            Err(SendError::Retriable(reason)) if Instant::now() < deadline => {
                let _ = reason;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("sending {text:?} failed for good: {error}"),
        }
    }
}

fn texts_by_count(records: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in records {
        *counts
            .entry(record["text"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn a_submitted_text_arrives_as_sent_and_its_receipts_name_the_id_send_returned() {
    let smsc = Smsc::start(&["--id-format", "hex"]).await;
    let (channel, collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;

    let id = send(&channel, "Your code is 123456. Reply YES 123456 <PIN>").await;

    let submits = smsc.submits().await;
    assert_eq!(submits.len(), 1);
    let submit = &submits[0];
    assert_eq!(submit["message_id"], id.as_str());
    assert_eq!(
        submit["text"],
        "Your code is 123456. Reply YES 123456 <PIN>"
    );
    assert_eq!(submit["data_coding"], 0x00);
    assert_eq!(submit["esm_class"], 0x00);
    assert_eq!(submit["registered_delivery"], 0x01);
    assert_eq!(submit["destination_addr"], "491701234567");
    assert_eq!(submit["dest_addr_ton"], 1);
    assert_eq!(submit["dest_addr_npi"], 1);
    assert_eq!(submit["source_addr"], SOURCE_ADDR);
    assert_eq!(submit["source_addr_ton"], 3);
    assert_eq!(submit["source_addr_npi"], 0);
    assert_eq!(submit["udh_hex"], Value::Null);

    // The SMSC's automatic receipt carries the receipted_message_id and message_state TLVs.
    let receipt = collector
        .wait_for(|message| matches!(message, InboundMessage::DeliveryReceipt { .. }))
        .await;
    assert_eq!(
        receipt,
        InboundMessage::DeliveryReceipt {
            channel: ChannelName::Sms,
            remote_id: id.clone(),
            state: "DELIVERED".into(),
            error: None,
        }
    );

    // A receipt with only the text (no TLVs) is read from the text.
    let (status, answer) = smsc
        .post(
            "/dlr",
            json!({"message_id": id, "stat": "UNDELIV", "err": "034", "tlvs": false}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["command_status"], 0);
    let receipt = collector
        .wait_for(|message| {
            matches!(message, InboundMessage::DeliveryReceipt { state, .. }
                if state == "UNDELIVERABLE")
        })
        .await;
    assert_eq!(
        receipt,
        InboundMessage::DeliveryReceipt {
            channel: ChannelName::Sms,
            remote_id: id,
            state: "UNDELIVERABLE".into(),
            error: Some("034".into()),
        }
    );
    channel.shutdown().await;
}

#[tokio::test]
async fn unicode_text_goes_as_ucs2_and_round_trips() {
    let smsc = Smsc::start(&[]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;

    let texts = ["Zahlung bestätigt ✓ 你好", "Danke 😀 (outside the BMP)"];
    for text in texts {
        send(&channel, text).await;
    }

    let submits = smsc.submits().await;
    assert_eq!(submits.len(), 2);
    for (submit, text) in submits.iter().zip(texts) {
        assert_eq!(submit["data_coding"], 0x08);
        assert_eq!(submit["esm_class"], 0x00);
        assert_eq!(submit["text"], text);
    }
    channel.shutdown().await;
}

#[tokio::test]
async fn a_long_gsm_text_goes_as_two_concatenated_parts_that_reassemble() {
    let smsc = Smsc::start(&[]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;
    let text: String = (0..300)
        .map(|index| char::from(b'a' + (index % 26) as u8))
        .collect();

    let ids = send(&channel, &text).await;

    let submits = smsc.submits().await;
    assert_eq!(submits.len(), 2);
    let returned: Vec<&str> = ids.split(',').collect();
    let recorded: Vec<&str> = submits
        .iter()
        .map(|submit| submit["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(returned, recorded, "the ids come first part first");
    let reference = &submits[0]["concatenation"]["reference"];
    let mut reassembled = String::new();
    for (index, submit) in submits.iter().enumerate() {
        assert_eq!(submit["esm_class"], 0x40);
        assert_eq!(submit["data_coding"], 0x00);
        assert!(submit["udh_hex"].as_str().unwrap().starts_with("050003"));
        assert_eq!(&submit["concatenation"]["reference"], reference);
        assert_eq!(submit["concatenation"]["total"], 2);
        assert_eq!(submit["concatenation"]["sequence"], index + 1);
        reassembled.push_str(submit["text"].as_str().unwrap());
    }
    assert_eq!(submits[0]["text"].as_str().unwrap().len(), 153);
    assert_eq!(reassembled, text);
    channel.shutdown().await;
}

#[tokio::test]
async fn the_euro_sign_counts_two_septets() {
    let smsc = Smsc::start(&[]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;

    // 158 letters and a euro are 160 septets: one message. One letter more needs two.
    let fits = format!("{}€", "a".repeat(158));
    let overflows = format!("{}€", "a".repeat(159));
    send(&channel, &fits).await;
    let ids = send(&channel, &overflows).await;

    let submits = smsc.submits().await;
    assert_eq!(submits.len(), 3);
    assert_eq!(submits[0]["esm_class"], 0x00);
    assert_eq!(submits[0]["text"], fits.as_str());
    assert_eq!(ids.split(',').count(), 2);
    let reassembled = format!(
        "{}{}",
        submits[1]["text"].as_str().unwrap(),
        submits[2]["text"].as_str().unwrap()
    );
    assert_eq!(reassembled, overflows);
    channel.shutdown().await;
}

#[tokio::test]
async fn an_mo_text_reaches_the_core_and_is_acknowledged_only_after_the_core_took_it() {
    let smsc = Smsc::start(&[]).await;
    let (channel, collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;

    let (status, answer) = smsc
        .post(
            "/mo",
            json!({"from": MSISDN, "to": SOURCE_ADDR, "text": "YES 123456 4711"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["command_status"], 0,
        "ESME_ROK after the core took it"
    );
    assert_eq!(
        collector.messages.lock().unwrap().clone(),
        vec![InboundMessage::Approve {
            channel: ChannelName::Sms,
            from: MSISDN.into(),
            code: Some("123456".into()),
            pin: Some("4711".into()),
        }]
    );

    // The core cannot take it: the SMSC is told to deliver it again later.
    collector.refuse.store(true, Ordering::SeqCst);
    let (status, answer) = smsc
        .post("/mo", json!({"from": MSISDN, "text": "NO 123456"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["command_status"], 0x64, "ESME_RX_T_APPN");
    assert_eq!(collector.count(), 1);
    channel.shutdown().await;
}

#[tokio::test]
async fn mo_texts_are_decoded_by_their_data_coding() {
    let smsc = Smsc::start(&[]).await;
    let (channel, collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;

    // node-smpp sends data_coding 0 as unpacked GSM septets: '@' is 0x00, '€' is 1B 65.
    let cases = [
        ("hello @ home for 5 €", None),
        ("Grüße aus Köln", Some(0x03)),
        ("Danke ✓ 你好", None),
    ];
    for (text, data_coding) in cases {
        let mut body = json!({"from": MSISDN, "text": text});
        if let Some(data_coding) = data_coding {
            body["data_coding"] = json!(data_coding);
        }
        let (status, answer) = smsc.post("/mo", body).await;
        assert_eq!(
            (status, &answer["command_status"]),
            (200, &json!(0)),
            "{answer}"
        );
        let expected = InboundMessage::Unrecognized {
            channel: ChannelName::Sms,
            from: MSISDN.into(),
            text: text.into(),
        };
        collector.wait_for(|message| *message == expected).await;
    }
    channel.shutdown().await;
}

#[tokio::test]
async fn sixty_concurrent_sends_keep_the_window_and_the_rate() {
    let smsc = Smsc::start(&["--resp-delay-ms", "200", "--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|smsc| {
        smsc.window = 5;
        smsc.throughput_per_s = 20;
    }));
    wait_until_bound(&channel).await;
    let started = Instant::now();

    let texts: Vec<String> = (0..60).map(|index| format!("rate test {index}")).collect();
    let sends = texts.iter().map(|text| send(&channel, text));
    futures::future::join_all(sends).await;
    let elapsed = started.elapsed();

    let stats = smsc.get("/stats").await;
    println!("60 sends, window 5, 20 per second: {stats} in {elapsed:?}");
    assert_eq!(stats["submits"], 60);
    assert!(stats["max_in_flight"].as_u64().unwrap() <= 5, "{stats}");
    assert!(stats["max_per_second"].as_u64().unwrap() <= 20, "{stats}");
    // 60 submits at 20 per second take at least 59 intervals of 50 ms.
    assert!(elapsed >= Duration::from_millis(2_950), "{elapsed:?}");
    let counts = texts_by_count(&smsc.submits().await);
    assert!(
        texts.iter().all(|text| counts.get(text) == Some(&1)),
        "{counts:?}"
    );
    channel.shutdown().await;
}

#[tokio::test]
async fn the_window_caps_unacknowledged_submits_when_the_rate_does_not() {
    let smsc = Smsc::start(&["--resp-delay-ms", "200", "--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|smsc| {
        smsc.window = 5;
        smsc.throughput_per_s = 1_000;
    }));
    wait_until_bound(&channel).await;

    let texts: Vec<String> = (0..30)
        .map(|index| format!("window test {index}"))
        .collect();
    futures::future::join_all(texts.iter().map(|text| send(&channel, text))).await;

    let stats = smsc.get("/stats").await;
    assert_eq!(stats["submits"], 30);
    // Pipelined up to the window, and never beyond it.
    assert_eq!(stats["max_in_flight"], 5, "{stats}");
    channel.shutdown().await;
}

#[tokio::test]
async fn throttled_submits_are_retried_and_every_text_arrives_exactly_once() {
    let smsc = Smsc::start(&["--resp-delay-ms", "200", "--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|smsc| {
        smsc.window = 5;
        smsc.throughput_per_s = 20;
    }));
    wait_until_bound(&channel).await;
    let (status, _) = smsc.post("/throttle", json!({"count": 10})).await;
    assert_eq!(status, 200);

    let texts: Vec<String> = (0..60)
        .map(|index| format!("throttle test {index}"))
        .collect();
    futures::future::join_all(texts.iter().map(|text| send(&channel, text))).await;

    let stats = smsc.get("/stats").await;
    println!("60 sends, 10 throttled: {stats}");
    assert_eq!(stats["throttled"], 10, "{stats}");
    assert_eq!(stats["submits"], 60, "{stats}");
    assert!(stats["max_in_flight"].as_u64().unwrap() <= 5, "{stats}");
    assert!(stats["max_per_second"].as_u64().unwrap() <= 20, "{stats}");
    let counts = texts_by_count(&smsc.submits().await);
    assert!(
        texts.iter().all(|text| counts.get(text) == Some(&1)),
        "{counts:?}"
    );
    channel.shutdown().await;
}

#[tokio::test]
async fn a_throttle_that_does_not_end_makes_the_send_retriable() {
    let smsc = Smsc::start(&["--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;
    // ESME_RMSGQFUL (0x14) for longer than the channel retries one part.
    let (status, _) = smsc
        .post("/throttle", json!({"count": 100, "status": 0x14}))
        .await;
    assert_eq!(status, 200);

    let started = Instant::now();
    let error = channel.send(&sms("queue full")).await.unwrap_err();

    let SendError::Retriable(reason) = error else {
        panic!("expected a retriable error, got {error:?}");
    };
    assert!(reason.contains("ESME_RMSGQFUL"), "{reason}");
    let stats = smsc.get("/stats").await;
    assert_eq!(stats["throttled"], 6, "one try and five retries: {stats}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "a pause before each retry"
    );
    channel.shutdown().await;
}

#[tokio::test]
async fn a_permanent_refusal_is_a_permanent_error_naming_the_status() {
    let smsc = Smsc::start(&["--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;
    let (status, _) = smsc
        .post("/throttle", json!({"count": 1, "status": 0x0B}))
        .await;
    assert_eq!(status, 200);

    let error = channel.send(&sms("bad destination")).await.unwrap_err();

    assert!(
        matches!(&error, SendError::Permanent(reason) if reason.contains("ESME_RINVDSTADR")),
        "{error:?}"
    );
    channel.shutdown().await;
}

/// Sends 500 texts from 20 tasks that retry like the outbox, SIGKILLs the SMSC once 100
/// are recorded and starts it again on the same ports. Returns the records of both
/// processes and how many of them the first process made.
async fn burst_across_a_kill(smsc_arguments: &[&str]) -> (Vec<Value>, usize, Vec<String>) {
    let mut smsc = Smsc::start(smsc_arguments).await;
    let (channel, _collector) = start_channel(smsc.settings(|smsc| {
        smsc.window = 10;
        smsc.throughput_per_s = 200;
    }));
    let channel = Arc::new(channel);
    wait_until_bound(&channel).await;
    let deadline = Instant::now() + Duration::from_secs(60);

    let texts: Vec<String> = (0..500).map(|index| format!("burst {index:03}")).collect();
    let senders: Vec<_> = texts
        .chunks(25)
        .map(|chunk| {
            let channel = Arc::clone(&channel);
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for text in chunk {
                    send_until_accepted(&channel, &text, deadline).await;
                }
            })
        })
        .collect();
    while smsc.records().len() < 100 {
        assert!(Instant::now() < deadline, "the burst did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_pid = smsc.records()[0]["pid"].clone();
    smsc.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    smsc.restart().await;
    for sender in senders {
        sender.await.expect("a sender task finished");
    }
    channel.shutdown().await;

    let records = smsc.records();
    let before_kill = records.iter().filter(|r| r["pid"] == first_pid).count();
    assert!(
        before_kill < 500 && before_kill < records.len(),
        "the kill fell inside the burst: {before_kill} of {} before it",
        records.len()
    );
    (records, before_kill, texts)
}

/// Every text arrived; duplicates are counted, not hidden. A submit the SMSC recorded but
/// died before answering is sent again: the ESME cannot tell it from one the SMSC never
/// got. So at most a window's worth (10) can be duplicated, never lost.
fn check_burst(records: &[Value], before_kill: usize, texts: &[String]) -> usize {
    let counts = texts_by_count(records);
    let missing: Vec<&String> = texts
        .iter()
        .filter(|text| !counts.contains_key(*text))
        .collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
    let duplicates: usize = counts.values().map(|count| count - 1).sum();
    println!(
        "500 texts: {} records, {before_kill} before the kill, {duplicates} duplicates",
        records.len()
    );
    assert!(
        duplicates <= 10,
        "{duplicates} duplicates exceed the window"
    );
    duplicates
}

#[tokio::test]
async fn a_killed_and_restarted_smsc_loses_none_of_a_burst_of_500_messages() {
    let (records, before_kill, texts) = burst_across_a_kill(&["--auto-dlr", "off"]).await;
    check_burst(&records, before_kill, &texts);
}

#[tokio::test]
async fn submits_unanswered_at_the_kill_are_sent_again_and_at_most_a_window_is_duplicated() {
    // Answers 50 ms late, so the kill catches recorded submits whose answers never left.
    let (records, before_kill, texts) =
        burst_across_a_kill(&["--auto-dlr", "off", "--resp-delay-ms", "50"]).await;
    check_burst(&records, before_kill, &texts);
}

#[tokio::test]
async fn a_wrong_password_fails_the_bind_and_health_and_sends_say_so() {
    let smsc = Smsc::start(&[]).await;
    let (channel, _collector) = start_channel(smsc.settings(|smsc| {
        smsc.password = "wrong".into();
    }));

    let deadline = Instant::now() + WAIT_MAX;
    let reason = loop {
        let error = channel.health_check().await.unwrap_err();
        if error.reason.contains("ESME_RBINDFAIL") {
            break error.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the bind failure never showed: {error}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reason.contains("test-smsc"), "{reason}");

    let error = channel.send(&sms("nobody hears this")).await.unwrap_err();
    assert_eq!(error, SendError::Retriable("no SMSC link is bound".into()));
    assert_eq!(smsc.get("/binds").await, json!([]));
    assert!(smsc.submits().await.is_empty());
    channel.shutdown().await;
}

#[tokio::test]
async fn a_transmitter_and_a_receiver_session_send_and_receive() {
    let smsc = Smsc::start(&[]).await;
    let (channel, collector) = start_channel(smsc.settings(|smsc| {
        smsc.bind = BindMode::TransmitterReceiver;
    }));
    wait_until_bound(&channel).await;

    let mut binds: Vec<String> = smsc
        .get("/binds")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|bind| bind["bind_type"].as_str().unwrap().to_string())
        .collect();
    binds.sort();
    assert_eq!(binds, ["receiver", "transmitter"]);

    let id = send(&channel, "two sessions").await;
    collector
        .wait_for(|message| {
            matches!(message, InboundMessage::DeliveryReceipt { remote_id, .. }
                if *remote_id == id)
        })
        .await;
    let (status, answer) = smsc
        .post("/mo", json!({"from": MSISDN, "text": "BAL"}))
        .await;
    assert_eq!(
        (status, &answer["command_status"]),
        (200, &json!(0)),
        "{answer}"
    );
    collector
        .wait_for(|message| matches!(message, InboundMessage::Balance { .. }))
        .await;
    channel.shutdown().await;
}

#[tokio::test]
async fn the_link_binds_again_after_the_smsc_unbinds_it() {
    let smsc = Smsc::start(&["--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;

    let (status, answer) = smsc.post("/unbind", json!({})).await;
    assert_eq!((status, &answer["unbound"]), (200, &json!(1)));

    let deadline = Instant::now() + WAIT_MAX;
    send_until_accepted(&channel, "after the unbind", deadline).await;
    assert_eq!(smsc.submits().await.len(), 1);
    channel.shutdown().await;
}

#[tokio::test]
async fn shutdown_unbinds_and_later_sends_are_retriable() {
    let smsc = Smsc::start(&[]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;
    assert_eq!(smsc.get("/binds").await.as_array().unwrap().len(), 1);

    channel.shutdown().await;

    let deadline = Instant::now() + WAIT_MAX;
    while !smsc.get("/binds").await.as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the session stayed bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(&smsc.log).unwrap_or_default();
    assert!(
        log.contains("The ESME unbound."),
        "an unbind, not a dropped socket: {log}"
    );
    assert!(channel.health_check().await.is_err());
    assert!(matches!(
        channel.send(&sms("too late")).await,
        Err(SendError::Retriable(_))
    ));
}

/// A test CA and a server certificate it signed for localhost and 127.0.0.1, made with the
/// openssl command line. Returns the paths of the CA, the certificate and its key.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |arguments: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(arguments)
            .current_dir(dir)
            .output()
            .expect("the openssl command makes the test certificates (scripts/test.sh)");
        assert!(
            output.status.success(),
            "openssl {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let curve = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=paystep test CA"];
    ca.extend(curve);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut request = vec!["req", "-subj", "/CN=localhost"];
    request.extend(curve);
    request.extend(["-keyout", "smsc.key", "-out", "smsc.csr"]);
    run(&request);
    std::fs::write(
        dir.join("smsc.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "smsc.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "smsc.ext",
        "-out",
        "smsc.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("smsc.pem"),
        dir.join("smsc.key"),
    )
}

#[tokio::test]
async fn smpp_over_tls_binds_only_to_an_smsc_whose_certificate_is_trusted() {
    let certificates = tempfile::tempdir().unwrap();
    let (ca, certificate, key) = make_certificates(certificates.path());
    let smsc = Smsc::start(&[
        "--tls-cert",
        certificate.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let tls = |smsc: &mut SmscSettings| {
        smsc.tls = true;
        smsc.host = "localhost".into();
    };

    // With the system's roots only, the test CA is unknown: the handshake fails, no plain
    // TCP fallback. (A machine without any roots refuses TLS at start.)
    match SmsChannel::start(smsc.settings(tls), Arc::new(Collector::default())) {
        Ok(channel) => {
            let deadline = Instant::now() + WAIT_MAX;
            loop {
                let error = channel.health_check().await.unwrap_err();
                if error.reason.contains("TLS handshake") {
                    println!("Without the test CA: {error}");
                    break;
                }
                assert!(Instant::now() < deadline, "no TLS failure showed: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(smsc.submits().await.is_empty());
            channel.shutdown().await;
        }
        Err(error) => {
            println!("Without the test CA: {error}");
            assert!(error.to_string().contains("root certificate"), "{error}");
        }
    }

    // The operator's way to trust a private CA: the link's ca_file.
    let (channel, collector) = start_channel(smsc.settings(|settings| {
        tls(settings);
        settings.ca_file = Some(ca.clone());
    }));
    wait_until_bound(&channel).await;
    let id = send(&channel, "over TLS").await;
    assert_eq!(smsc.submits().await[0]["text"], "over TLS");
    collector
        .wait_for(|message| {
            matches!(message, InboundMessage::DeliveryReceipt { remote_id, .. }
                if *remote_id == id)
        })
        .await;
    channel.shutdown().await;
}

#[tokio::test]
async fn a_long_text_retried_after_a_failed_part_sends_only_the_missing_parts() {
    let smsc = Smsc::start(&["--auto-dlr", "off"]).await;
    let (channel, _collector) = start_channel(smsc.settings(|_| {}));
    wait_until_bound(&channel).await;
    // The first part is accepted, the second refused with ESME_RSYSERR (retriable).
    let (status, _) = smsc
        .post("/throttle", json!({"after": 1, "count": 1, "status": 0x08}))
        .await;
    assert_eq!(status, 200);
    let message = sms(&"x".repeat(400));

    let error = channel.send(&message).await.unwrap_err();
    assert!(
        matches!(&error, SendError::Retriable(reason) if reason.contains("part 2 of 3")),
        "{error:?}"
    );
    let retried = channel.send(&message).await.expect("the retry succeeds");

    let submits = smsc.submits().await;
    let ids: Vec<&str> = submits
        .iter()
        .map(|submit| submit["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(retried.remote_id, Some(ids.join(",")));
    let sequences: Vec<&Value> = submits
        .iter()
        .map(|submit| &submit["concatenation"]["sequence"])
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert!(submits
        .iter()
        .all(|submit| submit["concatenation"]["reference"]
            == submits[0]["concatenation"]["reference"]));
    channel.shutdown().await;
}

/// The SMS channel in the suite every adapter passes, against the test SMSC. A message's id
/// reaches the SMSC as `user_message_reference` (16 bits of it: SMPP has no field for more).
struct SmsPeer {
    smsc: Smsc,
    settings: SmsSettings,
    channel: Arc<SmsChannel>,
}

#[async_trait]
impl Peer for SmsPeer {
    fn channel(&self) -> Arc<dyn Channel> {
        self.channel.clone()
    }

    fn message(&self, id: &str) -> OutboundMessage {
        OutboundMessage {
            id: id.to_string(),
            ..sms("Garage Nord asks you to release 20.00 EUR. Code 123456.")
        }
    }

    async fn received_ids(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let submits = self.smsc.submits().await;
            if submits.len() >= count {
                return submits
                    .iter()
                    .take(count)
                    .map(|submit| submit["user_message_reference"].to_string())
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{count} submits did not arrive: {submits:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn channel_to_silent_peer(
        &self,
        silent: std::net::SocketAddr,
        timeout: Duration,
    ) -> Option<Arc<dyn Channel>> {
        let mut settings = self.settings.clone();
        settings.smscs[0].host = silent.ip().to_string();
        settings.smscs[0].port = silent.port();
        settings.smscs[0].response_timeout_ms = timeout.as_millis() as u64;
        Some(Arc::new(start_channel(settings).0))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.settings.smscs[0].password.expose().to_string()]
    }

    fn debug_renderings(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.settings),
            format!("{:?}", self.channel),
        ]
    }

    /// The SMSC made to answer submit_sm with each class of command_status.
    async fn answers(&self) -> Vec<AnswerCase> {
        let mut cases = Vec::new();
        for (status, answer, expected) in [
            (0x0B, "ESME_RINVDSTADR", Class::Permanent),
            (0x08, "ESME_RSYSERR", Class::Retriable),
            (0x45, "ESME_RSUBMITFAIL", Class::Permanent),
            (0x00, "ESME_ROK", Class::Accepted),
        ] {
            if status != 0 {
                let (code, body) = self
                    .smsc
                    .post("/throttle", json!({"count": 1, "status": status}))
                    .await;
                assert_eq!(code, 200, "{body}");
            }
            let result = self
                .channel
                .send(&self.message(&format!("answer-{status}")))
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
async fn the_sms_channel_passes_the_conformance_suite() {
    let smsc = Smsc::start(&[]).await;
    let settings = smsc.settings(|_| {});
    let (channel, _inbound) = start_channel(settings.clone());
    wait_until_bound(&channel).await;
    let peer = SmsPeer {
        smsc,
        settings,
        channel: Arc::new(channel),
    };
    conformance::run(&peer).await;
    peer.channel.shutdown().await;
}
