//! Webhook delivery against an independent Standard Webhooks receiver
//! (`tests/peers/webhook_receiver.py`, verifying with the `standardwebhooks` package).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::daemon::free_port;
use crate::helpers::{
    eur_process, eventually, get_json, spawn_app_with, Db, Retailer, TestApp, PIN,
};
use crate::on_both_databases;

const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/webhook_receiver.py"
);

pub struct WebhookReceiver {
    child: Child,
    port: u16,
    client: reqwest::Client,
}

#[derive(Debug)]
pub struct Received {
    /// (webhook-id, payload) of every verified delivery, in arrival order.
    pub deliveries: Vec<(String, Value)>,
    pub attempts: u64,
    pub rejected: u64,
}

impl WebhookReceiver {
    pub async fn start(port: u16, secrets: &[&str], mode: &str) -> WebhookReceiver {
        let mut command = Command::new("python3");
        command
            .arg(RECEIVER)
            .arg("--port")
            .arg(port.to_string())
            .arg("--mode")
            .arg(mode);
        for secret in secrets {
            command.arg("--secret").arg(secret);
        }
        let child = command
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the webhook receiver (scripts/test.sh installs its package)");
        let receiver = WebhookReceiver {
            child,
            port,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if receiver
                .client
                .get(receiver.control("/_received"))
                .send()
                .await
                .is_ok()
            {
                return receiver;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the webhook receiver did not start; run scripts/test.sh, which installs standardwebhooks");
    }

    pub fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/hook")
    }

    fn control(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn set_mode(&self, mode: &str) {
        let response = self
            .client
            .post(self.control("/_control/mode"))
            .json(&json!({ "mode": mode }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn received(&self) -> Received {
        let state: Value = get_json(&self.client, &self.control("/_received")).await;
        Received {
            deliveries: state["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|delivery| {
                    (
                        delivery["webhook_id"].as_str().unwrap().to_string(),
                        delivery["payload"].clone(),
                    )
                })
                .collect(),
            attempts: state["attempts"].as_u64().unwrap(),
            rejected: state["rejected"].as_u64().unwrap(),
        }
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A test app whose retries come quickly and whose webhook timeout is short.
async fn spawn_fast_retry_app(db: Db, retry_max_age_s: i64) -> TestApp {
    spawn_app_with(db, |settings| {
        settings.outbox.retry_base_ms = 50;
        settings.outbox.retry_max_ms = 300;
        settings.outbox.retry_max_age_s = retry_max_age_s;
        settings.channels.webhook.timeout_ms = 500;
    })
    .await
}

pub struct WebhookRetailer {
    pub retailer: Retailer,
    pub secret: String,
}

pub async fn create_webhook_retailer(app: &TestApp, port: u16) -> WebhookRetailer {
    let created = app
        .admin_post(
            "/admin/v1/retailers",
            json!({"name": "Garage Nord", "webhook_url": WebhookReceiver::url(port), "notify": ["webhook"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    WebhookRetailer {
        retailer: Retailer {
            id: created.body["id"].as_str().unwrap().to_string(),
            api_key: created.body["api_key"].as_str().unwrap().to_string(),
        },
        secret: created.body["webhook_secret"].as_str().unwrap().to_string(),
    }
}

/// Bill, confirm, steps, a top-up, close: every kind of event a process has.
async fn full_scenario(app: &TestApp, retailer: &Retailer, msisdn: &str) -> String {
    app.create_customer(msisdn, "100.00").await;
    let mut body = eur_process(msisdn, "10.00");
    body["charge"] = json!("1.00");
    let process = app.open_process(retailer, body).await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let link = app.confirmation_link(&process_id, 1).await;
    assert_eq!(
        app.answer_page(&link, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    for amount in ["2.00", "3.00"] {
        assert_eq!(
            app.step(retailer, &process_id, amount).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        app.step(retailer, &process_id, "9.00").await.status,
        StatusCode::ACCEPTED
    );
    let link = app.confirmation_link(&process_id, 2).await;
    assert_eq!(
        app.answer_page(&link, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    let closed = app
        .post(
            retailer,
            &format!("/v1/processes/{process_id}/close"),
            json!({}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK);
    process_id
}

async fn feed(app: &TestApp, retailer: &Retailer) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(retailer, &format!("/v1/events?after={after}&limit=100"))
            .await;
        let batch = page.body["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        after = page.body["next_after"].as_i64().unwrap();
        events.extend(batch);
    }
}

/// Every event of the feed arrived, verified, under exactly one webhook-id, and in `seq`
/// order per process once duplicates (same webhook-id) are dropped.
pub fn assert_delivered_exactly_once_in_order(events: &[Value], received: &Received) {
    let mut first_seen: HashSet<&str> = HashSet::new();
    let mut webhook_ids_by_event: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut last_seq_by_process: HashMap<String, i64> = HashMap::new();
    for (webhook_id, payload) in &received.deliveries {
        let event_id = payload["id"].as_str().unwrap();
        webhook_ids_by_event
            .entry(event_id)
            .or_default()
            .insert(webhook_id);
        if !first_seen.insert(webhook_id) {
            continue;
        }
        let process_id = payload["process_id"].as_str().unwrap().to_string();
        let seq = payload["seq"].as_i64().unwrap();
        let last = last_seq_by_process.insert(process_id, seq).unwrap_or(0);
        assert!(
            seq > last,
            "event {seq} arrived after {last} of the same process"
        );
    }
    for event in events {
        let event_id = event["id"].as_str().unwrap();
        let ids = webhook_ids_by_event
            .get(event_id)
            .unwrap_or_else(|| panic!("event {event} never arrived"));
        assert_eq!(
            ids.len(),
            1,
            "event {event_id} was delivered under two webhook ids: {ids:?}"
        );
        let payload = &received
            .deliveries
            .iter()
            .find(|(_, payload)| payload["id"] == event_id)
            .unwrap()
            .1;
        assert_eq!(
            payload, event,
            "the webhook carries the event as the feed shows it"
        );
    }
    assert_eq!(
        webhook_ids_by_event.len(),
        events.len(),
        "no event arrived that the feed lacks"
    );
}

async fn all_events_arrived(
    app: &TestApp,
    retailer: &Retailer,
    receiver: &WebhookReceiver,
) -> bool {
    let expected: HashSet<String> = feed(app, retailer)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let received = receiver.received().await;
    let arrived: HashSet<String> = received
        .deliveries
        .iter()
        .map(|(_, payload)| payload["id"].as_str().unwrap().to_string())
        .collect();
    expected.is_subset(&arrived)
}

on_both_databases!(
    every_event_of_a_full_scenario_arrives_signed_once_and_in_order,
    events_still_arrive_after_an_outage_errors_and_timeouts,
    a_permanently_failing_endpoint_ends_in_the_dead_letters_and_requeueing_delivers,
    a_rotated_secret_and_the_previous_one_both_verify_during_the_grace_period,
    redirects_are_not_followed_and_error_bodies_are_cut_short,
);

async fn every_event_of_a_full_scenario_arrives_signed_once_and_in_order(db: Db) {
    let app = spawn_fast_retry_app(db, 3600).await;
    let port = free_port();
    let WebhookRetailer { retailer, secret } = create_webhook_retailer(&app, port).await;
    let receiver = WebhookReceiver::start(port, &[&secret], "ok").await;
    let process_id = full_scenario(&app, &retailer, "+491791000001").await;
    eventually(20, "every event arrived", || {
        all_events_arrived(&app, &retailer, &receiver)
    })
    .await;
    let events = feed(&app, &retailer).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "process.created",
            "step.awaiting_confirmation",
            "process.confirmed",
            "step.charged",
            "step.charged",
            "step.charged",
            "step.awaiting_confirmation",
            "step.charged",
            "process.closed",
        ]
    );
    assert!(events
        .iter()
        .all(|e| e["process_id"] == process_id.as_str()));
    let received = receiver.received().await;
    assert_eq!(received.rejected, 0, "every signature verified");
    assert_delivered_exactly_once_in_order(&events, &received);
    // A webhook-only retailer's execution messages travel as events, not console lines.
    assert!(app
        .console_messages()
        .iter()
        .all(|m| m["to"] != format!("retailer:{}", retailer.id)));
    app.assert_ledger_holds().await;
}

async fn events_still_arrive_after_an_outage_errors_and_timeouts(db: Db) {
    let app = spawn_fast_retry_app(db, 3600).await;
    let port = free_port();
    let WebhookRetailer { retailer, secret } = create_webhook_retailer(&app, port).await;

    // Down: nothing listens on the port while the scenario runs.
    full_scenario(&app, &retailer, "+491791000002").await;
    eventually(10, "deliveries were attempted and failed", || async {
        let queued = app.admin_get("/admin/v1/outbox?status=queued").await;
        queued.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["attempts"].as_i64().unwrap() >= 2)
    })
    .await;
    let queued = app.admin_get("/admin/v1/outbox?status=queued").await;
    let refused = &queued.body["messages"][0];
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("webhook request failed"),
        "{refused}"
    );

    // Then errors: the endpoint answers 500.
    let receiver = WebhookReceiver::start(port, &[&secret], "fail").await;
    eventually(10, "the failing endpoint was tried", || async {
        receiver.received().await.attempts >= 3
    })
    .await;
    // Then timeouts: it answers later than the daemon waits.
    receiver.set_mode("slow").await;
    let attempts = receiver.received().await.attempts;
    eventually(10, "the slow endpoint was tried", || async {
        receiver.received().await.attempts >= attempts + 2
    })
    .await;
    // The receiver may finish a slow request after the daemon gave up on it: that delivery
    // is repeated under the same webhook-id, which is what receivers deduplicate by.

    receiver.set_mode("ok").await;
    eventually(30, "every event arrived after recovery", || {
        all_events_arrived(&app, &retailer, &receiver)
    })
    .await;
    let events = feed(&app, &retailer).await;
    assert_delivered_exactly_once_in_order(&events, &receiver.received().await);
    let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
    assert_eq!(dead.body["messages"], json!([]));
    app.assert_ledger_holds().await;
}

async fn a_permanently_failing_endpoint_ends_in_the_dead_letters_and_requeueing_delivers(db: Db) {
    let app = spawn_fast_retry_app(db, 1).await;
    let port = free_port();
    let WebhookRetailer { retailer, secret } = create_webhook_retailer(&app, port).await;
    let receiver = WebhookReceiver::start(port, &[&secret], "fail").await;
    app.create_customer("+491791000003", "10.00").await;
    app.open_process(&retailer, eur_process("+491791000003", "5.00"))
        .await;

    eventually(15, "the message was dead-lettered", || async {
        let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
        !dead.body["messages"].as_array().unwrap().is_empty()
    })
    .await;
    let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
    let letter = dead.body["messages"][0].clone();
    assert_eq!(letter["channel"], "webhook");
    assert!(
        letter["last_error"].as_str().unwrap().contains("500"),
        "{letter}"
    );
    assert!(
        letter["attempts"].as_i64().unwrap() >= 2,
        "retried before giving up: {letter}"
    );
    assert!(receiver.received().await.deliveries.is_empty());

    // A 410 is permanent at once: no retries.
    receiver.set_mode("gone").await;
    let second = app
        .open_process(&retailer, eur_process("+491791000003", "1.00"))
        .await;
    eventually(10, "the 410 was dead-lettered", || async {
        let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
        dead.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["process_id"] == second["id"])
    })
    .await;
    let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
    let gone = dead.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["process_id"] == second["id"])
        .unwrap()
        .clone();
    assert_eq!(gone["attempts"], 1, "{gone}");
    assert!(gone["last_error"].as_str().unwrap().contains("410"));

    // The retailer fixes its endpoint; the operator requeues every dead letter.
    receiver.set_mode("ok").await;
    for letter in dead.body["messages"].as_array().unwrap() {
        let requeued = app
            .admin_post(
                &format!(
                    "/admin/v1/outbox/{}/requeue",
                    letter["id"].as_str().unwrap()
                ),
                json!({}),
            )
            .await;
        assert_eq!(requeued.status, StatusCode::OK, "{}", requeued.body);
        assert_eq!(requeued.body["status"], "queued");
    }
    eventually(15, "requeued letters arrived", || {
        all_events_arrived(&app, &retailer, &receiver)
    })
    .await;
    let events = feed(&app, &retailer).await;
    assert_delivered_exactly_once_in_order(&events, &receiver.received().await);
    let again = app
        .admin_post(
            &format!(
                "/admin/v1/outbox/{}/requeue",
                letter["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "only dead letters are requeued"
    );
    let unknown = app
        .admin_post("/admin/v1/outbox/nope/requeue", json!({}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    app.assert_ledger_holds().await;
}

async fn a_rotated_secret_and_the_previous_one_both_verify_during_the_grace_period(db: Db) {
    let app = spawn_fast_retry_app(db, 3600).await;
    let port = free_port();
    let WebhookRetailer {
        retailer,
        secret: old_secret,
    } = create_webhook_retailer(&app, port).await;
    let rotated = app
        .admin_post(
            &format!("/admin/v1/retailers/{}/webhook-secret/rotate", retailer.id),
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["webhook_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, old_secret);

    // A receiver that still only knows the old secret keeps verifying...
    let receiver = WebhookReceiver::start(port, &[&old_secret], "ok").await;
    app.create_customer("+491791000004", "10.00").await;
    app.open_process(&retailer, eur_process("+491791000004", "1.00"))
        .await;
    eventually(10, "the old secret verified", || {
        all_events_arrived(&app, &retailer, &receiver)
    })
    .await;
    receiver.stop().await;
    // ...and so does one that switched to the new secret.
    let receiver = WebhookReceiver::start(port, &[&new_secret], "ok").await;
    app.open_process(&retailer, eur_process("+491791000004", "2.00"))
        .await;
    eventually(10, "the new secret verified", || async {
        receiver.received().await.deliveries.len() == 1
    })
    .await;
    assert_eq!(receiver.received().await.rejected, 0);
    // After the grace period only the new secret signs.
    app.advance_s(86_401);
    receiver.stop().await;
    let receiver = WebhookReceiver::start(port, &[&old_secret], "ok").await;
    app.open_process(&retailer, eur_process("+491791000004", "3.00"))
        .await;
    eventually(10, "the old secret was refused", || async {
        receiver.received().await.rejected >= 1
    })
    .await;
    assert!(receiver.received().await.deliveries.is_empty());
}

async fn redirects_are_not_followed_and_error_bodies_are_cut_short(db: Db) {
    let app = spawn_fast_retry_app(db, 3600).await;
    let port = free_port();
    let WebhookRetailer { retailer, secret } = create_webhook_retailer(&app, port).await;
    let receiver = WebhookReceiver::start(port, &[&secret], "redirect").await;
    app.create_customer("+491791000005", "10.00").await;
    let first = app
        .open_process(&retailer, eur_process("+491791000005", "1.00"))
        .await;
    let dead_letter_of = |process: &Value| {
        let app = &app;
        let process_id = process["id"].as_str().unwrap().to_string();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
                let found = dead.body["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["process_id"] == process_id.as_str())
                    .cloned();
                if let Some(letter) = found {
                    return letter;
                }
                assert!(Instant::now() < deadline, "no dead letter for {process_id}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // A redirect is permanent at once: following it could send events where the retailer
    // did not say, and the target (which would accept) never sees a delivery.
    let redirected = dead_letter_of(&first).await;
    assert_eq!(redirected["attempts"], 1, "{redirected}");
    assert!(
        redirected["last_error"]
            .as_str()
            .unwrap()
            .contains("not followed"),
        "{redirected}"
    );
    assert!(receiver.received().await.deliveries.is_empty());

    // A failing endpoint's 1 MiB error body is read only up to a bound, and the error kept
    // in the outbox is short.
    receiver.set_mode("huge").await;
    let attempts = receiver.received().await.attempts;
    app.open_process(&retailer, eur_process("+491791000005", "2.00"))
        .await;
    eventually(10, "the endpoint answered with its huge body", || async {
        receiver.received().await.attempts > attempts
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = app.admin_get("/admin/v1/outbox?status=queued").await;
        let errors: Vec<String> = queued.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["last_error"].as_str().map(str::to_string))
            .collect();
        if let Some(error) = errors.iter().find(|error| error.contains("500")) {
            assert!(
                error.len() <= 1000,
                "the recorded error is bounded: {} bytes",
                error.len()
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
