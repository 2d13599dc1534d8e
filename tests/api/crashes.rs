//! The kill harness: the real daemon killed with SIGKILL a hundred times at random moments
//! while clients open, confirm, charge and close at once (so that kills land while shared
//! write batches commit): afterwards every acknowledged step exists exactly once, every
//! unacknowledged one once or not at all, the same for opens, confirmations and closes,
//! the ledger holds, and every event has reached the retailer's webhook under one id.
//!
//! `PAYSTEP_KILLS=1000 cargo test --test api crashes::no_acknowledged` runs a longer one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::daemon::{free_port, start_daemon_on, Daemon};
use crate::helpers::{fresh_database_url, Db, ADMIN_TOKEN};
use crate::on_both_databases;
use crate::webhooks::{assert_delivered_exactly_once_in_order, WebhookReceiver};

/// Kills per run, unless `PAYSTEP_KILLS` says otherwise.
const KILLS_DEFAULT: usize = 100;
/// Clients charging steps on one shared process, so that their writes share batches.
const STEP_CLIENTS: usize = 5;
/// Clients that each open a process for their own customer, confirm it on the page,
/// charge two steps and close it, again and again.
const SESSION_CLIENTS: usize = 3;

on_both_databases!(no_acknowledged_operation_is_lost_or_doubled_across_a_hundred_sigkills);

fn kills() -> usize {
    std::env::var("PAYSTEP_KILLS")
        .ok()
        .and_then(|kills| kills.parse().ok())
        .unwrap_or(KILLS_DEFAULT)
}

/// Settings that make retries and lease expiry quick enough for a test.
const FAST: [(&str, &str); 5] = [
    ("PAYSTEP__OUTBOX__RETRY_BASE_MS", "50"),
    ("PAYSTEP__OUTBOX__RETRY_MAX_MS", "300"),
    ("PAYSTEP__OUTBOX__CLAIM_LEASE_MS", "800"),
    ("PAYSTEP__OUTBOX__POLL_INTERVAL_MS", "20"),
    ("PAYSTEP__CHANNELS__WEBHOOK__TIMEOUT_MS", "700"),
];

async fn feed(daemon: &Daemon, api_key: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = daemon
            .call(
                Method::GET,
                &format!("/v1/events?after={after}&limit=100"),
                api_key,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        after = page["next_after"].as_i64().unwrap();
        events.extend(batch);
    }
}

/// What the clients sent and what the daemon acknowledged, by the reference each request
/// carried (unique per request), shared by all clients.
#[derive(Default)]
struct Record {
    /// References of every step and open sent, acknowledged or not, with which it was.
    sent: HashMap<String, &'static str>,
    /// References the daemon acknowledged with a complete answer.
    acknowledged: HashSet<String>,
    /// Ids of acknowledged steps, whose `step.charged` events are counted.
    steps: Vec<String>,
    /// Processes whose confirmation, or whose close, was acknowledged.
    confirmed: Vec<String>,
    closed: Vec<String>,
}

/// What every client shares.
#[derive(Clone)]
struct Load {
    base: String,
    api_key: String,
    console: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    client: reqwest::Client,
}

impl Load {
    /// POSTs `body`; the answer only when it came whole with `expected` (a kill can cut it
    /// off: that is no acknowledgement). `reference` (and what it names) is noted as sent
    /// before sending.
    async fn post(
        &self,
        path: &str,
        body: Value,
        reference: Option<(&str, &'static str)>,
        expected: StatusCode,
    ) -> Option<Value> {
        if let Some((reference, what)) = reference {
            let mut record = self.record.lock().unwrap();
            record.sent.insert(reference.to_string(), what);
        }
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .ok()
            .filter(|response| response.status() == expected)?;
        let answer = response.json::<Value>().await.ok()?;
        if let Some((reference, _)) = reference {
            self.record
                .lock()
                .unwrap()
                .acknowledged
                .insert(reference.to_string());
        }
        Some(answer)
    }

    async fn step(&self, process_id: &str, amount: &str, reference: &str) -> bool {
        let body = json!({"amount": amount, "reference": reference});
        let path = format!("/v1/processes/{process_id}/steps");
        let reference = Some((reference, "step"));
        match self.post(&path, body, reference, StatusCode::CREATED).await {
            Some(step) => {
                let id = step["id"].as_str().unwrap().to_string();
                self.record.lock().unwrap().steps.push(id);
                true
            }
            None => false,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn pause(&self) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Steps of one cent on the shared process, as fast as the daemon takes them.
async fn charge_steps(load: Load, client: usize, process_id: String) {
    let mut round = 0u64;
    while !load.stopped() {
        round += 1;
        let reference = format!("s{client}-{round}");
        if !load.step(&process_id, "0.01", &reference).await {
            load.pause().await;
        }
    }
}

/// Open, confirm on the page, two steps, close; again and again, moving on from whatever
/// a kill interrupts.
async fn sessions(load: Load, client: usize, msisdn: String) {
    let mut round = 0u64;
    while !load.stopped() {
        round += 1;
        let reference = format!("o{client}-{round}");
        let body = json!({"customer": {"msisdn": msisdn}, "currency": "EUR", "release": "1.00", "reference": reference});
        let Some(process) = load
            .post(
                "/v1/processes",
                body,
                Some((&reference, "open")),
                StatusCode::CREATED,
            )
            .await
        else {
            load.pause().await;
            continue;
        };
        let process_id = process["id"].as_str().unwrap().to_string();
        if !confirm(&load, &process_id).await {
            continue;
        }
        for step in 1..=2 {
            load.step(&process_id, "0.10", &format!("{reference}-{step}"))
                .await;
        }
        let close = format!("/v1/processes/{process_id}/close");
        if load
            .post(&close, json!({}), None, StatusCode::OK)
            .await
            .is_some()
        {
            load.record.lock().unwrap().closed.push(process_id);
        }
    }
}

/// Answers the process's confirmation request on the page with the PIN, once its link
/// reaches the console (the dispatcher may be down for a while).
async fn confirm(load: &Load, process_id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let link = loop {
        let request = crate::daemon::console_lines(&load.console)
            .into_iter()
            .find(|m| m["kind"] == "confirmation_request" && m["process_id"] == process_id);
        if let Some(request) = request {
            break request["url"].as_str().unwrap().to_string();
        }
        if load.stopped() || Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let answered = load
        .client
        .post(&link)
        .form(&[("action", "confirm"), ("pin", crate::helpers::PIN)])
        .send()
        .await;
    let acknowledged = match answered {
        Ok(response) if response.status() == StatusCode::OK => response.text().await.is_ok(),
        _ => false,
    };
    if acknowledged {
        load.record
            .lock()
            .unwrap()
            .confirmed
            .push(process_id.to_string());
    }
    acknowledged
}

/// How many rows of `table` carry each reference, straight from the database.
async fn rows_by_reference(db: Db, url: &str, table: &str) -> HashMap<String, i64> {
    use sqlx::Connection;
    let sql = format!(
        "SELECT reference, COUNT(*) FROM {table} WHERE reference IS NOT NULL GROUP BY reference"
    );
    let rows: Vec<(String, i64)> = match db {
        Db::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_as(&sql).fetch_all(&mut conn).await.unwrap()
        }
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_as(&sql).fetch_all(&mut conn).await.unwrap()
        }
    };
    rows.into_iter().collect()
}

/// Every acknowledged reference exists exactly once, every other one at most once; the
/// number of unacknowledged ones that made it.
fn assert_once_or_never(record: &Record, counts: &HashMap<String, i64>, what: &str) -> usize {
    let mut unacknowledged_kept = 0;
    let sent = record
        .sent
        .iter()
        .filter(|(_, sent_what)| **sent_what == what)
        .map(|(reference, _)| reference);
    for reference in sent {
        let count = counts.get(reference).copied().unwrap_or(0);
        if record.acknowledged.contains(reference) {
            assert_eq!(
                count, 1,
                "acknowledged {what} {reference} exists {count} times"
            );
        } else {
            assert!(
                count <= 1,
                "unacknowledged {what} {reference} exists {count} times"
            );
            unacknowledged_kept += count as usize;
        }
    }
    unacknowledged_kept
}

async fn no_acknowledged_operation_is_lost_or_doubled_across_a_hundred_sigkills(db: Db) {
    let kills = kills();
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(db, dir.path()).await;
    let console = dir.path().join("console.jsonl");
    let port = free_port();
    let receiver_port = free_port();
    let mut daemon = start_daemon_on(&database_url, &console, port, &FAST).await;

    let retailer = daemon.create_retailer(Some(receiver_port)).await;
    let api_key = retailer.api_key;
    let receiver = WebhookReceiver::start(receiver_port, &[&retailer.webhook_secret], "ok").await;
    let process_id = daemon
        .open_confirmed_process(&console, &api_key, "+491791000009", ("1000.00", "900.00"))
        .await;
    let load = Load {
        base: daemon.base.clone(),
        api_key: api_key.clone(),
        console: console.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        record: Arc::new(Mutex::new(Record::default())),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    };
    let mut clients = Vec::new();
    for client in 0..STEP_CLIENTS {
        clients.push(tokio::spawn(charge_steps(
            load.clone(),
            client,
            process_id.clone(),
        )));
    }
    for client in 0..SESSION_CLIENTS {
        let msisdn = format!("+4917920000{client:02}");
        let customer = json!({"name": "Kim", "msisdn": msisdn, "pin": crate::helpers::PIN});
        daemon.create_customer(customer, "10000.00").await;
        clients.push(tokio::spawn(sessions(load.clone(), client, msisdn)));
    }
    let started = Instant::now();
    for _ in 0..kills {
        let pause_ms = rand::thread_rng().gen_range(200..700);
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        daemon.sigkill().await;
        daemon = start_daemon_on(&database_url, &console, port, &FAST).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let record = std::mem::take(&mut *load.record.lock().unwrap());
    assert!(
        record.acknowledged.len() >= kills,
        "the load ran between the kills"
    );

    let steps = rows_by_reference(db, &database_url, "steps").await;
    let opens = rows_by_reference(db, &database_url, "processes").await;
    let kept_steps = assert_once_or_never(&record, &steps, "step");
    let kept_opens = assert_once_or_never(&record, &opens, "open");
    for (acknowledged, not_status) in [
        (&record.confirmed, "awaiting_confirmation"),
        (&record.closed, "active"),
    ] {
        for process_id in acknowledged {
            let (status, process) = daemon
                .call(
                    Method::GET,
                    &format!("/v1/processes/{process_id}"),
                    &api_key,
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            assert_ne!(process["status"], not_status, "{process:#}");
            if not_status == "active" {
                assert_eq!(process["status"], "closed", "{process:#}");
            }
        }
    }

    let events = feed(&daemon, &api_key).await;
    // Every acknowledged step was charged exactly once: one step.charged event each.
    for step_id in &record.steps {
        let charged = events
            .iter()
            .filter(|event| event["type"] == "step.charged" && event["data"]["id"] == *step_id)
            .count();
        assert_eq!(
            charged, 1,
            "acknowledged step {step_id} charged {charged} times"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = receiver.received().await;
        let arrived: HashSet<&str> = received
            .deliveries
            .iter()
            .map(|(_, payload)| payload["id"].as_str().unwrap())
            .collect();
        if events
            .iter()
            .all(|event| arrived.contains(event["id"].as_str().unwrap()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events arrived",
            arrived.len(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received().await;
    crate::helpers::report_figures(&format!(
        "kill harness {db:?}: {kills} kills in {:.0} s, {} clients: {} requests sent, {} acknowledged \
         ({} steps each charged once; {} unacknowledged steps and {} unacknowledged opens kept, once), \
         {} confirmations and {} closes acknowledged, {} events, {} deliveries ({} repeated under their webhook-id)",
        started.elapsed().as_secs_f64(),
        STEP_CLIENTS + SESSION_CLIENTS,
        record.sent.len(),
        record.acknowledged.len(),
        record.steps.len(),
        kept_steps,
        kept_opens,
        record.confirmed.len(),
        record.closed.len(),
        events.len(),
        received.deliveries.len(),
        received.deliveries.len() - events.len(),
    ));
    assert_eq!(received.rejected, 0);
    assert_delivered_exactly_once_in_order(&events, &received);
    let (status, report) = daemon
        .call(Method::GET, "/admin/v1/ledger/verify", ADMIN_TOKEN, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report:#}");
    daemon.sigkill().await;
}

/// Two daemons share one PostgreSQL database, as a scaled-out deployment does: both take
/// requests and both deliver, and still every event arrives under one webhook-id, once
/// counted by id, in order per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgres_deliver_each_event_under_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(Db::Postgres, dir.path()).await;
    let console = dir.path().join("console.jsonl");
    let receiver_port = free_port();
    let first = start_daemon_on(&database_url, &console, free_port(), &FAST).await;
    let second = start_daemon_on(&database_url, &console, free_port(), &FAST).await;
    let retailer = first.create_retailer(Some(receiver_port)).await;
    let api_key = retailer.api_key;
    let receiver = WebhookReceiver::start(receiver_port, &[&retailer.webhook_secret], "ok").await;

    // Point-of-sale processes opened alternately on both daemons, then closed on the other.
    let mut opened = Vec::new();
    for round in 0..40 {
        let (daemon, other) = if round % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let (status, process) = daemon
            .call(
                Method::POST,
                "/v1/processes",
                &api_key,
                Some(json!({"currency": "EUR", "release": "2.00"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let process_id = process["id"].as_str().unwrap().to_string();
        let (status, _) = other
            .call(
                Method::POST,
                &format!("/v1/processes/{process_id}/close"),
                &api_key,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        opened.push(process_id);
    }
    let events = feed(&first, &api_key).await;
    assert_eq!(events.len(), 80, "created and closed for each process");
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.received().await.deliveries.len() < events.len() {
        assert!(Instant::now() < deadline, "not every event arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = receiver.received().await;
    assert_delivered_exactly_once_in_order(&events, &received);
    // With healthy peers, no event is delivered twice: each claim is one daemon's alone.
    assert_eq!(
        received.deliveries.len(),
        events.len(),
        "no double delivery by two daemons"
    );
    first.sigkill().await;
    second.sigkill().await;
}

/// A daemon that only takes requests (`outbox.deliver = false`) and one that only delivers,
/// polling once an hour: the second delivers what the first queued at once, because the
/// outbox's trigger NOTIFYs every dispatcher that LISTENs on the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_by_one_daemon_wakes_another_daemons_dispatcher_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(Db::Postgres, dir.path()).await;
    let delivering_console = dir.path().join("delivering.jsonl");
    let delivering = start_daemon_on(
        &database_url,
        &delivering_console,
        free_port(),
        &[("PAYSTEP__OUTBOX__POLL_INTERVAL_MS", "3600000")],
    )
    .await;
    let taking = start_daemon_on(
        &database_url,
        &dir.path().join("taking.jsonl"),
        free_port(),
        &[("PAYSTEP__OUTBOX__DELIVER", "false")],
    )
    .await;
    let retailer = taking.create_retailer(None).await;
    taking
        .create_customer(json!({"name": "Ben", "msisdn": "+491791000077"}), "10.00")
        .await;
    let body =
        json!({"customer": {"msisdn": "+491791000077"}, "currency": "EUR", "release": "5.00"});
    let (status, process) = taking
        .call(Method::POST, "/v1/processes", &retailer.api_key, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{process}");
    let process_id = process["id"].as_str().unwrap();

    // Far less than the hour the delivering daemon would otherwise sleep between polls.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = crate::daemon::console_lines(&delivering_console)
            .into_iter()
            .any(|line| line["kind"] == "confirmation_request" && line["process_id"] == process_id);
        if delivered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delivering daemon was not woken by the other daemon's commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        crate::daemon::console_lines(&dir.path().join("taking.jsonl")).is_empty(),
        "the daemon with outbox.deliver = false delivered"
    );
    taking.sigkill().await;
    delivering.sigkill().await;
}
