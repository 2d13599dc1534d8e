//! The daemon killed with SIGKILL again and again while a scenario runs from several
//! clients at once (so that kills land while shared write batches commit): afterwards every
//! acknowledged step is charged exactly once, and every event has reached the retailer's
//! webhook, under one webhook-id each.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::daemon::{free_port, start_daemon_on, Daemon};
use crate::helpers::{fresh_database_url, Db, ADMIN_TOKEN};
use crate::on_both_databases;
use crate::webhooks::{assert_delivered_exactly_once_in_order, WebhookReceiver};

const KILLS: usize = 10;
/// Clients sending at once, so that their writes share batches.
const CLIENTS: usize = 8;

on_both_databases!(no_webhook_is_lost_or_renamed_across_ten_sigkills_under_load);

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

/// Steps and new processes, as fast as the daemon takes them, ignoring the refusals of a
/// daemon that is down.
async fn load(
    base: String,
    api_key: String,
    process_id: String,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    acknowledged_steps: Arc<Mutex<Vec<String>>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let (path, body) = if round.is_multiple_of(5) {
            (
                "/v1/processes".to_string(),
                json!({"currency": "EUR", "release": "1.00", "description": "Till 3"}),
            )
        } else {
            (
                format!("/v1/processes/{process_id}/steps"),
                json!({"amount": "0.01"}),
            )
        };
        let sent = client
            .post(format!("{base}{path}"))
            .bearer_auth(&api_key)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::CREATED => {
                let is_step = path.ends_with("/steps");
                // An answer cut off by a kill is not an acknowledgement.
                let Ok(answer) = response.json::<Value>().await else {
                    continue;
                };
                acknowledged.fetch_add(1, Ordering::SeqCst);
                if is_step {
                    let step_id = answer["id"].as_str().unwrap().to_string();
                    acknowledged_steps.lock().unwrap().push(step_id);
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn no_webhook_is_lost_or_renamed_across_ten_sigkills_under_load(db: Db) {
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

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let acknowledged_steps = Arc::new(Mutex::new(Vec::new()));
    let load_tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(load(
                daemon.base.clone(),
                api_key.clone(),
                process_id.clone(),
                stop.clone(),
                acknowledged.clone(),
                acknowledged_steps.clone(),
            ))
        })
        .collect();
    for _ in 0..KILLS {
        let pause_ms = rand::thread_rng().gen_range(150..450);
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        daemon.sigkill().await;
        daemon = start_daemon_on(&database_url, &console, port, &FAST).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for load_task in load_tasks {
        load_task.await.unwrap();
    }
    assert!(
        acknowledged.load(Ordering::SeqCst) >= KILLS,
        "the load ran between the kills"
    );

    let events = feed(&daemon, &api_key).await;
    // Every acknowledged step was charged exactly once: one step.charged event each.
    let acknowledged_steps = acknowledged_steps.lock().unwrap().clone();
    for step_id in &acknowledged_steps {
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
        let arrived: std::collections::HashSet<&str> = received
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
    eprintln!(
        "{KILLS} kills, {CLIENTS} clients: {} acknowledged requests ({} steps, each charged once), {} events, {} deliveries ({} repeated under their webhook-id)",
        acknowledged.load(Ordering::SeqCst),
        acknowledged_steps.len(),
        events.len(),
        received.deliveries.len(),
        received.deliveries.len() - events.len(),
    );
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
