//! The SMS channel end to end: the daemon bound to a real SMPP server (npm `smpp`, in
//! `tests/peers/smsc`), customers answering by SMS, retailers notified by SMS.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use paystep_channels::sms::{BindMode, SmsSettings, SmscSettings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{eur_process, get_json, spawn_app_with, Db, Retailer, TestApp, PIN};
use crate::on_both_databases;

const SMSC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smsc/smsc.js");

pub struct Smsc {
    child: Child,
    pub smpp_port: u16,
    http_port: u16,
    client: reqwest::Client,
}

impl Smsc {
    pub async fn start(dir: &Path) -> Smsc {
        Smsc::start_on(dir, 0, 0).await
    }

    /// Starts on the given ports (0 picks free ones), recording submits in `dir`, where a
    /// restarted SMSC keeps appending.
    pub async fn start_on(dir: &Path, smpp_port: u16, http_port: u16) -> Smsc {
        Smsc::start_with(dir, smpp_port, http_port, &[]).await
    }

    pub async fn start_with(dir: &Path, smpp_port: u16, http_port: u16, extra: &[&str]) -> Smsc {
        let mut child = Command::new("node")
            .arg(SMSC)
            .args(extra)
            .args([
                "--smpp-port",
                &smpp_port.to_string(),
                "--http-port",
                &http_port.to_string(),
            ])
            .arg("--record")
            .arg(dir.join("submits.jsonl"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the test SMSC (scripts/test.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the test SMSC starts within 10 s; run scripts/test.sh to install it")
            .unwrap()
            .expect("the test SMSC says where it listens");
        let listening: Value = serde_json::from_str(&first).unwrap();
        Smsc {
            child,
            smpp_port: listening["smpp_port"].as_u64().unwrap() as u16,
            http_port: listening["http_port"].as_u64().unwrap() as u16,
            client: reqwest::Client::new(),
        }
    }

    pub async fn control(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    pub async fn stats(&self) -> Value {
        get_json(&self.client, &self.url("/stats")).await
    }

    pub async fn sigkill(mut self) {
        self.child.kill().await.unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub async fn submits(&self) -> Vec<Value> {
        let submits: Value = get_json(&self.client, &self.url("/submits")).await;
        submits
            .as_array()
            .cloned()
            .unwrap_or_else(|| submits["submits"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `count` submits to `destination` (E.164 without `+`) match.
    pub async fn wait_for_submits(
        &self,
        destination: &str,
        count: usize,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<Value> = self
                .submits()
                .await
                .into_iter()
                .filter(|s| {
                    s["destination_addr"] == destination
                        && matches(s["text"].as_str().unwrap_or(""))
                })
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} submits to {destination}; have {:#?}",
                self.submits().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends an MO and returns the ESME's deliver_sm_resp status.
    pub async fn mo(&self, from: &str, text: &str) -> i64 {
        let answer: Value = self
            .client
            .post(self.url("/mo"))
            .json(&json!({"from": from, "to": "12345", "text": text}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["command_status"].as_i64().unwrap()
    }

    pub async fn wait_for_bind(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let binds: Value = get_json(&self.client, &self.url("/binds")).await;
            let bound = binds.as_array().map(|b| !b.is_empty()).unwrap_or(false)
                || binds["binds"]
                    .as_array()
                    .map(|b| !b.is_empty())
                    .unwrap_or(false);
            if bound {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not bind to the SMSC"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn sms_settings(smpp_port: u16) -> SmsSettings {
    SmsSettings {
        source_addr: "12345".into(),
        source_addr_ton: 3,
        source_addr_npi: 0,
        registered_delivery: true,
        smscs: vec![SmscSettings {
            name: "test-smsc".into(),
            host: "127.0.0.1".into(),
            port: smpp_port,
            tls: false,
            ca_file: None,
            system_id: "paystep".into(),
            password: "secret".into(),
            system_type: String::new(),
            bind: BindMode::Transceiver,
            window: 10,
            throughput_per_s: 200,
            enquire_link_interval_ms: 30_000,
            response_timeout_ms: 2_000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 500,
        }],
    }
}

async fn spawn_sms_app(db: Db, dir: &Path) -> (TestApp, Smsc) {
    let smsc = Smsc::start(dir).await;
    let port = smsc.smpp_port;
    let app = spawn_app_with(db, |settings| {
        settings.channels.sms = Some(sms_settings(port))
    })
    .await;
    smsc.wait_for_bind().await;
    (app, smsc)
}

async fn sms_retailer(app: &TestApp) -> Retailer {
    let created = app
        .admin_post(
            "/admin/v1/retailers",
            json!({"name": "Garage Nord", "msisdn": "+491821000099", "notify": ["sms"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    Retailer {
        id: created.body["id"].as_str().unwrap().into(),
        api_key: created.body["api_key"].as_str().unwrap().into(),
    }
}

on_both_databases!(
    a_whole_process_runs_by_sms_with_delivery_receipts,
    pay_at_the_till_by_sms_works_from_a_known_number_only,
    five_hundred_messages_survive_an_smsc_killed_mid_burst,
    throttled_submits_still_all_go_out_within_the_window_and_the_rate,
);

async fn a_whole_process_runs_by_sms_with_delivery_receipts(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (app, smsc) = spawn_sms_app(db, dir.path()).await;
    let retailer = sms_retailer(&app).await;
    let customer_id = app.create_customer("+491821000001", "100.00").await;
    let mut body = eur_process("+491821000001", "10.00");
    body["charge"] = json!("1.00");
    let process = app.open_process(&retailer, body).await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let code = process["code"].as_str().unwrap().to_string();

    // The retailer's identifier notification and the customer's request go out by SMS.
    let notification = smsc
        .wait_for_submits("491821000099", 1, |text| text.contains(&code))
        .await
        .remove(0);
    assert!(notification["text"].as_str().unwrap().contains(&process_id));
    let request = smsc
        .wait_for_submits("491821000001", 1, |text| text.contains("Reply YES"))
        .await
        .remove(0);
    let text = request["text"].as_str().unwrap();
    for expected in [
        "Garage Nord",
        "Parking, level 2",
        "10.00 EUR",
        code.as_str(),
    ] {
        assert!(text.contains(expected), "{text:?} lacks {expected:?}");
    }
    assert!(
        text.chars().count() <= 160,
        "the request fits one SMS: {text:?}"
    );
    assert_eq!(request["source_addr"], "12345");

    assert_eq!(
        smsc.mo("+491821000001", &format!("yes {code} {PIN}")).await,
        0
    );
    let active = app.process(&retailer, &process_id).await;
    assert_eq!(active["status"], "active");
    assert_eq!(active["charged"], "1.00");

    assert_eq!(
        app.step(&retailer, &process_id, "2.00").await.status,
        StatusCode::CREATED
    );
    // A top-up by SMS: the step waits for the customer's second YES.
    assert_eq!(
        app.step(&retailer, &process_id, "9.00").await.status,
        StatusCode::ACCEPTED
    );
    smsc.wait_for_submits("491821000001", 2, |text| text.contains("Reply YES"))
        .await;
    assert_eq!(
        smsc.mo("+491821000001", &format!("JA {code} {PIN}")).await,
        0
    );
    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["charged"], "12.00");
    assert_eq!(process["released"], "20.00");
    assert_eq!(app.credit(&customer_id).await, "80.00");

    // Execution messages to the retailer (the release and three charges), receipts to the
    // customer (three charges), all by SMS.
    smsc.wait_for_submits("491821000099", 4, |text| {
        text.contains("charged") || text.contains("released")
    })
    .await;
    smsc.wait_for_submits("491821000001", 3, |text| text.starts_with("Receipt"))
        .await;

    // The SMSC's delivery receipts are recorded on the messages they are about.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let delivered = app
            .admin_get("/admin/v1/outbox?status=delivered&limit=100")
            .await;
        let sms: Vec<Value> = delivered.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["channel"] == "sms")
            .cloned()
            .collect();
        if sms.len() >= 9 && sms.iter().all(|m| m["delivery_state"] == "DELIVERED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivery receipts not all recorded: {sms:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.assert_ledger_holds().await;
}

async fn pay_at_the_till_by_sms_works_from_a_known_number_only(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (app, smsc) = spawn_sms_app(db, dir.path()).await;
    let retailer = sms_retailer(&app).await;
    let customer_id = app.create_customer("+491821000002", "50.00").await;
    let till = app
        .open_process(
            &retailer,
            json!({"currency": "EUR", "release": "5.00", "description": "Till 3"}),
        )
        .await;
    let code = till["code"].as_str().unwrap().to_string();

    // From a number nobody registered: a help reply, and nothing else.
    assert_eq!(
        smsc.mo("+491829999999", &format!("PAY {code} 20.00 {PIN}"))
            .await,
        0
    );
    let help = smsc
        .wait_for_submits("491829999999", 1, |_| true)
        .await
        .remove(0);
    assert!(
        help["text"].as_str().unwrap().contains("reply YES"),
        "{help}"
    );
    let untouched = app.process(&retailer, till["id"].as_str().unwrap()).await;
    assert_eq!(untouched["status"], "awaiting_confirmation");
    assert_eq!(untouched["customer"], Value::Null);

    assert_eq!(
        smsc.mo("+491821000002", &format!("PAY {code} 20.00 {PIN}"))
            .await,
        0
    );
    let bound = app.process(&retailer, till["id"].as_str().unwrap()).await;
    assert_eq!(bound["status"], "active");
    assert_eq!(bound["released"], "20.00");
    assert_eq!(app.credit(&customer_id).await, "30.00");
    assert_eq!(
        app.step(&retailer, till["id"].as_str().unwrap(), "7.50")
            .await
            .status,
        StatusCode::CREATED
    );
    smsc.wait_for_submits("491821000002", 1, |text| text.contains("7.50 EUR"))
        .await;
    let to_stranger = smsc
        .submits()
        .await
        .into_iter()
        .filter(|s| s["destination_addr"] == "491829999999")
        .count();
    assert_eq!(
        to_stranger, 1,
        "the stranger got the help text and nothing else"
    );
    app.assert_ledger_holds().await;
}

/// Every line the SMSC recorded, across its restarts.
fn recorded(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("submits.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

async fn five_hundred_messages_survive_an_smsc_killed_mid_burst(db: Db) {
    const PROCESSES: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let (smpp_port, http_port) = (crate::daemon::free_port(), crate::daemon::free_port());
    let smsc = Smsc::start_on(dir.path(), smpp_port, http_port).await;
    let app = spawn_app_with(db, |settings| {
        settings.channels.sms = Some(sms_settings(smpp_port));
        settings.outbox.retry_base_ms = 50;
        settings.outbox.retry_max_ms = 500;
    })
    .await;
    smsc.wait_for_bind().await;
    let retailer = sms_retailer(&app).await;
    app.create_customer("+491821000003", "1000.00").await;
    // An MO before the kill is taken: its effects are committed before it is acknowledged.
    let first = app
        .open_process(&retailer, eur_process("+491821000003", "1.00"))
        .await;
    let first_code = first["code"].as_str().unwrap().to_string();
    assert_eq!(
        smsc.mo("+491821000003", &format!("YES {first_code} {PIN}"))
            .await,
        0
    );

    // Each process sends two SMS: the retailer's identifier notification and the customer's
    // request. The SMSC dies a third of the way in and comes back a second later.
    let mut codes = vec![];
    let mut smsc = Some(smsc);
    for index in 0..PROCESSES {
        if index == PROCESSES / 3 {
            smsc.take().unwrap().sigkill().await;
        }
        if index == PROCESSES / 3 + 40 {
            smsc = Some(Smsc::start_on(dir.path(), smpp_port, http_port).await);
        }
        let process = app
            .open_process(&retailer, eur_process("+491821000003", "1.00"))
            .await;
        codes.push(process["code"].as_str().unwrap().to_string());
    }
    let smsc = smsc.unwrap();
    let expected = 2 * PROCESSES;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = recorded(dir.path());
        let arrived = codes
            .iter()
            .filter(|code| {
                let to = |destination: &str| {
                    lines.iter().any(|s| {
                        s["destination_addr"] == destination
                            && s["text"].as_str().unwrap_or("").contains(code.as_str())
                    })
                };
                to("491821000099") && to("491821000003")
            })
            .count();
        if arrived == PROCESSES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{arrived} of {PROCESSES} processes' messages were submitted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SMPP 3.4 has no idempotent submit: when the SMSC records a submit and dies before its
    // answer leaves, the ESME cannot tell that from a submit that never arrived, and sends it
    // again. So at most one window of messages can be duplicated by a kill; none may be lost.
    let lines = recorded(dir.path());
    let mut duplicates = 0;
    for code in &codes {
        for destination in ["491821000099", "491821000003"] {
            let copies = lines
                .iter()
                .filter(|s| {
                    s["destination_addr"] == destination
                        && s["text"].as_str().unwrap_or("").contains(code.as_str())
                })
                .count();
            assert!(
                copies >= 1,
                "the message with code {code} to {destination} was lost"
            );
            duplicates += copies - 1;
        }
    }
    eprintln!("{expected} messages across an SMSC kill: {duplicates} submitted twice");
    assert!(
        duplicates <= 10,
        "more duplicates ({duplicates}) than the window (10) allows"
    );
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|s| s["message_id"].as_str())
        .collect();
    assert_eq!(
        ids.len(),
        lines.len(),
        "the SMSC gave every submit its own id"
    );
    assert!(lines.len() >= expected);
    assert_eq!(
        app.process(&retailer, first["id"].as_str().unwrap()).await["status"],
        "active"
    );
    // After the restart, MOs flow again.
    let last = codes.last().unwrap();
    assert_eq!(smsc.mo("+491821000003", &format!("NO {last}")).await, 0);
    app.assert_ledger_holds().await;
}

async fn throttled_submits_still_all_go_out_within_the_window_and_the_rate(db: Db) {
    const PROCESSES: usize = 30;
    const WINDOW: usize = 3;
    const RATE_PER_S: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    // Slow answers make the window matter: up to WINDOW submits wait at once.
    let smsc = Smsc::start_with(dir.path(), 0, 0, &["--resp-delay-ms", "150"]).await;
    let port = smsc.smpp_port;
    let app = spawn_app_with(db, |settings| {
        let mut sms = sms_settings(port);
        sms.smscs[0].window = WINDOW;
        sms.smscs[0].throughput_per_s = RATE_PER_S;
        settings.channels.sms = Some(sms);
        settings.outbox.retry_base_ms = 50;
        settings.outbox.retry_max_ms = 500;
    })
    .await;
    smsc.wait_for_bind().await;
    let retailer = sms_retailer(&app).await;
    app.create_customer("+491821000004", "1000.00").await;
    smsc.control("/throttle", json!({"count": 10})).await;
    let mut codes = vec![];
    for _ in 0..PROCESSES {
        let process = app
            .open_process(&retailer, eur_process("+491821000004", "1.00"))
            .await;
        codes.push(process["code"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(dir.path()).len() < 2 * PROCESSES {
        assert!(
            Instant::now() < deadline,
            "{} of {} submitted",
            recorded(dir.path()).len(),
            2 * PROCESSES
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = recorded(dir.path());
    for code in &codes {
        let copies = lines
            .iter()
            .filter(|s| s["text"].as_str().unwrap_or("").contains(code.as_str()))
            .count();
        assert_eq!(
            copies, 2,
            "code {code}: one SMS to the retailer and one to the customer, once each"
        );
    }
    let stats = smsc.stats().await;
    assert_eq!(stats["throttled"], 10, "{stats}");
    assert!(
        stats["max_in_flight"].as_u64().unwrap() <= WINDOW as u64,
        "{stats}"
    );
    assert!(
        stats["max_per_second"].as_u64().unwrap() <= u64::from(RATE_PER_S),
        "{stats}"
    );
    app.assert_ledger_holds().await;
}
