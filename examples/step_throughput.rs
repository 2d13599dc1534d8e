//! Step throughput: how many steps per second one daemon charges, and how long a step takes.
//!
//! Method (docs/benchmarks.md has the numbers): start the daemon binary given in
//! `PAYSTEP_BIN` on the database in `PAYSTEP_BENCH_DATABASE_URL` (default: a new SQLite file),
//! create a retailer, a customer and one process with a large release over HTTP, confirm it,
//! then send `STEPS` steps of 0.01 from `CONCURRENCY` concurrent clients and time each request
//! end to end (HTTP in, one transaction with the ledger, the step, the event and two outbox
//! rows, commit, HTTP out). The outbox delivers to a console file meanwhile, as in production
//! it delivers to real channels. Prints the throughput and latency percentiles.
//!
//!     cargo build --release && PAYSTEP_BIN=target/release/paystep \
//!         cargo run --release --example step_throughput

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const STEPS: usize = 4000;
const CONCURRENCY: usize = 16;
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

#[tokio::main]
async fn main() {
    let binary = std::env::var("PAYSTEP_BIN").unwrap_or_else(|_| "target/release/paystep".into());
    let dir = tempfile::tempdir().unwrap();
    let database_url = std::env::var("PAYSTEP_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let console = dir.path().join("console.jsonl");
    let mut daemon = tokio::process::Command::new(&binary)
        .arg("serve")
        .env("PAYSTEP__DATABASE__URL", &database_url)
        .env("PAYSTEP__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYSTEP__HTTP__PUBLIC_URL", &base)
        .env("PAYSTEP__ADMIN__TOKEN", ADMIN_TOKEN)
        .env("PAYSTEP__CHANNELS__CONSOLE__PATH", &console)
        .env("PAYSTEP__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
    let client = reqwest::Client::new();
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let post = {
        let (client, base) = (client.clone(), base.clone());
        move |path: String, token: String, body: Value| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let response = client
                    .post(format!("{base}{path}"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        }
    };
    let (_, retailer) = post(
        "/admin/v1/retailers".into(),
        ADMIN_TOKEN.into(),
        json!({"name": "Bench"}),
    )
    .await;
    let api_key = retailer["api_key"].as_str().unwrap().to_string();
    let (_, customer) = post(
        "/admin/v1/customers".into(),
        ADMIN_TOKEN.into(),
        json!({"name": "B", "msisdn": "+491700000001"}),
    )
    .await;
    let customer_id = customer["id"].as_str().unwrap();
    post(
        format!("/admin/v1/customers/{customer_id}/deposits"),
        ADMIN_TOKEN.into(),
        json!({"amount": "10000.00", "currency": "EUR"}),
    )
    .await;
    let (_, process) = post(
        "/v1/processes".into(),
        api_key.clone(),
        json!({"customer": {"msisdn": "+491700000001"}, "currency": "EUR", "release": "9000.00", "top_up": {"policy": "none"}}),
    )
    .await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let link = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if let Some(url) = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["kind"] == "confirmation_request")
            .and_then(|line| line["url"].as_str().map(str::to_string))
        {
            break url;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client
        .post(&link)
        .form(&[("action", "confirm")])
        .send()
        .await
        .unwrap();

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (post, next, api_key, process_id) = (
                post.clone(),
                next.clone(),
                api_key.clone(),
                process_id.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < STEPS {
                    let sent = Instant::now();
                    let (status, _) = post(
                        format!("/v1/processes/{process_id}/steps"),
                        api_key.clone(),
                        json!({"amount": "0.01"}),
                    )
                    .await;
                    assert_eq!(status, reqwest::StatusCode::CREATED);
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(STEPS);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let backend = database_url.split(':').next().unwrap_or("?");
    println!(
        "{backend}: {STEPS} steps from {CONCURRENCY} clients in {:.2} s = {:.0} steps/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        STEPS as f64 / elapsed.as_secs_f64(),
        percentile(0.50).as_secs_f64() * 1000.0,
        percentile(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0,
    );
    let (status, report) = {
        let response = client
            .get(format!("{base}/admin/v1/ledger/verify"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert!(status.is_success() && report["ok"] == true, "{report}");
    daemon.kill().await.unwrap();
}
