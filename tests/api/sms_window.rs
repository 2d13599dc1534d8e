//! The SMPP window is filled: with the SMSC answering each submit after 20 ms, as many submits
//! wait on the link as its window allows, and never more, whatever `outbox.workers` is.
//!
//! The SMSC holds its answers while the requests are opened, so that a backlog exists
//! however fast the database takes them (on PostgreSQL opening is slower than a window of
//! 10 at 20 ms drains, and without a backlog nothing needs the whole window).

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, spawn_app_with, Db};
use crate::on_both_databases;
use crate::sms::{sms_settings, Smsc};

const WINDOW: usize = 10;
const REQUESTS: usize = 200;
/// Customers the requests are spread over, so that no per-recipient order holds them back.
const CUSTOMERS: usize = 50;

on_both_databases!(the_sms_window_is_filled_whatever_the_worker_count);

async fn the_sms_window_is_filled_whatever_the_worker_count(db: Db) {
    for workers in [1, 4] {
        fill_the_window(db, workers).await;
    }
}

async fn fill_the_window(db: Db, workers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start_with(dir.path(), 0, 0, &["--resp-delay-ms", "20"]).await;
    let port = smsc.smpp_port;
    let app = spawn_app_with(db, |settings| {
        let mut sms = sms_settings(port);
        sms.smscs[0].window = WINDOW;
        // A pace far above what the window allows at 20 ms a submit (500/s): only the
        // window limits what is in flight.
        sms.smscs[0].throughput_per_s = 10_000;
        // The held submits must not time out while the test waits: a submit that timed out
        // gives its place in the window back (its outcome is unknown, and the link cannot
        // wait forever for an answer that may never come), and the next one would be sent
        // while the SMSC still holds the first. Opening the processes can take seconds on
        // a loaded machine.
        sms.smscs[0].response_timeout_ms = 60_000;
        settings.channels.sms = Some(sms);
        settings.outbox.workers = workers;
    })
    .await;
    smsc.wait_for_bind().await;
    let retailer = app.create_retailer().await;
    let msisdns: Vec<String> = (0..CUSTOMERS)
        .map(|index| format!("+4918230{index:05}"))
        .collect();
    // Their preferred channel is SMS: they have an msisdn and chose nothing else.
    join_all(msisdns.iter().map(|msisdn| {
        app.create_customer_with(json!({"name": "Lena", "msisdn": msisdn}), "10.00")
    }))
    .await;
    let before = smsc.stats().await;
    assert_eq!(before["submits"], 0, "{before}");
    smsc.control("/hold", json!({"on": true})).await;

    // All at once, so that the requests queue faster than the link can take them.
    let opened = join_all((0..REQUESTS).map(|index| {
        app.post(
            &retailer,
            "/v1/processes",
            eur_process(&msisdns[index % CUSTOMERS], "1.00"),
        )
    }))
    .await;
    for answer in &opened {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    // Held, the window fills and stays full: the link must not send an eleventh.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = smsc.stats().await;
        if stats["in_flight"].as_u64().unwrap() >= WINDOW as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{workers} workers: the window never filled while the SMSC held its answers: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    smsc.control("/hold", json!({"on": false})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = smsc.stats().await;
        if stats["submits"].as_u64().unwrap() >= REQUESTS as u64 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "{workers} workers: {} of {REQUESTS} confirmation requests submitted: {stats}",
            stats["submits"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let max_in_flight = stats["max_in_flight"].as_u64().unwrap();
    assert!(
        max_in_flight <= WINDOW as u64,
        "{workers} workers: {max_in_flight} submits in flight on a link with a window of {WINDOW}: {stats}"
    );
    assert_eq!(
        max_in_flight, WINDOW as u64,
        "{workers} workers: never more than {max_in_flight} submits in flight on a link with a window of {WINDOW}: {stats}"
    );
    app.assert_ledger_holds().await;
}
