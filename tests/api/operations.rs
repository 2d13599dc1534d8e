//! What an operator runs: the CLI, configuration errors, health, metrics and the API spec.

use std::process::Output;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::helpers::{eur_process, fresh_database_url, get_json, spawn_app, Db, ADMIN_TOKEN, PIN};
use crate::on_both_databases;

on_both_databases!(
    the_cli_adds_customers_deposits_and_retailers_and_verifies_the_ledger,
    health_metrics_and_the_openapi_document_are_served,
    metrics_can_move_to_a_listener_of_their_own,
);

async fn metrics_can_move_to_a_listener_of_their_own(db: Db) {
    let port = crate::daemon::free_port();
    let app = crate::helpers::spawn_app_with(db, |settings| {
        settings.http.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await;
    let public = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        public.status(),
        StatusCode::NOT_FOUND,
        "not on the public listener"
    );
    let scraped = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    let text = scraped.text().await.unwrap();
    assert!(text.contains("# TYPE paystep_processes gauge"), "{text}");
    let other = app
        .client
        .get(format!("http://127.0.0.1:{port}/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND, "only metrics there");
}

async fn paystep(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paystep"))
        .args(args)
        .env("PAYSTEP__DATABASE__URL", database_url)
        .env("PAYSTEP__LOG__LEVEL", "warn")
        .output()
        .await
        .expect("the paystep binary runs")
}

fn json_output(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the CLI prints JSON")
}

async fn the_cli_adds_customers_deposits_and_retailers_and_verifies_the_ledger(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(db, dir.path()).await;
    let migrated = paystep(&url, &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let customer = json_output(
        &paystep(
            &url,
            &[
                "customer",
                "add",
                "--name",
                "Anna",
                "--msisdn",
                "+491781000001",
                "--pin",
                PIN,
            ],
        )
        .await,
    );
    let customer_id = customer["id"].as_str().unwrap();
    let deposit = json_output(
        &paystep(
            &url,
            &[
                "deposit",
                "--customer",
                customer_id,
                "--amount",
                "25.50",
                "--currency",
                "EUR",
            ],
        )
        .await,
    );
    assert_eq!(deposit["credit"], "25.50");
    let retailer = json_output(
        &paystep(
            &url,
            &["retailer", "add", "--name", "Taxi", "--notify", "console"],
        )
        .await,
    );
    assert!(retailer["api_key"].as_str().unwrap().starts_with("psk_"));
    assert!(retailer["webhook_secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    let shown = json_output(&paystep(&url, &["customer", "show", customer_id]).await);
    assert_eq!(shown["balances"][0]["credit"], "25.50");
    assert_eq!(shown["pin_set"], true);

    let bad_amount = paystep(
        &url,
        &[
            "deposit",
            "--customer",
            customer_id,
            "--amount",
            "1.001",
            "--currency",
            "EUR",
        ],
    )
    .await;
    assert!(!bad_amount.status.success());
    assert!(String::from_utf8_lossy(&bad_amount.stderr).contains("decimals"));
    let unknown = paystep(
        &url,
        &[
            "deposit",
            "--customer",
            "nobody",
            "--amount",
            "1",
            "--currency",
            "EUR",
        ],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("customer not found"));

    let verified = json_output(&paystep(&url, &["ledger", "verify"]).await);
    assert_eq!(verified["ok"], true);
    assert!(verified["checks"].as_array().unwrap().len() >= 6);
}

async fn health_metrics_and_the_openapi_document_are_served(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491781000002", "10.00").await;
    app.open_process(&retailer, eur_process("+491781000002", "5.00"))
        .await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // The gauges are the operator's: without the admin token, nothing.
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("paystep_processes{status=\"awaiting_confirmation\"} 1"),
        "{metrics}"
    );
    let spec: Value = get_json(&app.client, &app.url("/openapi.json")).await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/processes",
        "/v1/processes/{id}/steps",
        "/v1/processes/{id}/close",
        "/v1/events",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    let missing = app.client.get(app.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[http]\nlisten_port = 8080\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_paystep"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http.listen_port"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_paystep"))
        .arg("migrate")
        .env("PAYSTEP__LIMITS__MAX_AMOUNT", "-1")
        .env("PAYSTEP__ENGINE__CONFIRMATION_TTL_S", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("limits.max_amount") && stderr.contains("engine.confirmation_ttl_s"),
        "all errors at once: {stderr}"
    );

    // A list from the environment is comma-separated; each entry is checked.
    let output = Command::new(env!("CARGO_BIN_EXE_paystep"))
        .arg("migrate")
        .env(
            "PAYSTEP__SECURITY__TRUSTED_PROXIES",
            "10.0.0.0/8, not-a-proxy",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("security.trusted_proxies[1]"), "{stderr}");
    assert!(!stderr.contains("trusted_proxies[0]"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_paystep"))
        .arg("migrate")
        .env("PAYSTEP__HTTP__LISTEN", "not-an-address")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("http.listen"));

    // A claim that ends before a webhook attempt may could deliver it twice.
    let output = Command::new(env!("CARGO_BIN_EXE_paystep"))
        .arg("migrate")
        .env("PAYSTEP__OUTBOX__CLAIM_LEASE_MS", "5000")
        .env("PAYSTEP__CHANNELS__WEBHOOK__TIMEOUT_MS", "10000")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("outbox.claim_lease_ms"));
}

on_both_databases!(
    a_point_of_sale_process_has_a_code_and_no_customer_yet,
    processes_and_events_are_listed_in_pages,
);

async fn a_point_of_sale_process_has_a_code_and_no_customer_yet(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let process = app
        .open_process(
            &retailer,
            json!({"currency": "EUR", "release": "20.00", "description": "Till 3"}),
        )
        .await;
    assert_eq!(process["status"], "awaiting_confirmation");
    assert_eq!(process["customer"], Value::Null);
    assert_eq!(process["code"].as_str().unwrap().len(), 6);
    let process_id = process["id"].as_str().unwrap();
    app.wait_for_messages(1, |m| {
        m["kind"] == "identifier_notification" && m["process_id"] == process_id
    })
    .await;
    assert_eq!(app.count("confirmations").await, 0, "nobody to ask yet");
    app.advance_s(601);
    app.engine.expire_due().await.unwrap();
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "expired"
    );
    app.assert_ledger_holds().await;
}

async fn processes_and_events_are_listed_in_pages(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491781000003", "10.00").await;
    let mut created = Vec::new();
    for _ in 0..5 {
        let process = app
            .open_process(&retailer, eur_process("+491781000003", "1.00"))
            .await;
        created.push(process["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = app
            .get(&retailer, &format!("/v1/processes?limit=2&after={after}"))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for process in page.body["processes"].as_array().unwrap() {
            seen.push(process["id"].as_str().unwrap().to_string());
        }
        match page.body["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    let mut expected = created.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
    let active = app.get(&retailer, "/v1/processes?status=active").await;
    assert_eq!(active.body["processes"], json!([]));
    let bad = app.get(&retailer, "/v1/processes?status=happy").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad_limit = app.get(&retailer, "/v1/processes?limit=0").await;
    assert_eq!(bad_limit.status, StatusCode::UNPROCESSABLE_ENTITY);

    let first = app.get(&retailer, "/v1/events?limit=3").await;
    let seqs: Vec<i64> = first.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(first.body["next_after"], 3);
    let rest = app.get(&retailer, "/v1/events?after=3&limit=100").await;
    let seqs: Vec<i64> = rest.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(rest.body["events"][0]["type"], "process.created");
    assert_eq!(rest.body["events"][0]["data"]["id"], created[3]);
    let empty = app.get(&retailer, "/v1/events?after=5").await;
    assert_eq!(empty.body["next_after"], 5);
}

#[tokio::test]
async fn the_example_configuration_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let settings = paystep::config::Settings::load(Some(std::path::Path::new(example)))
        .expect("config/example.toml is valid");
    let sms = settings.channels.sms.expect("the example configures SMS");
    assert_eq!(sms.smscs.len(), 2);
    assert_eq!(
        sms.smscs[1].bind,
        paystep_channels::sms::BindMode::TransmitterReceiver
    );
    assert_eq!(
        sms.smscs[1].window, 10,
        "defaults fill what the file leaves out"
    );
    let email = settings
        .channels
        .email
        .expect("the example configures email");
    assert_eq!(email.tls, paystep_channels::email::EmailTls::StartTls);
}

#[tokio::test]
async fn bad_sms_settings_fail_at_start_naming_the_key() {
    let smsc = "[channels.sms]\nsource_addr = \"12345\"\n[[channels.sms.smsc]]\nname = \"a\"\n\
                host = \"x\"\nport = 2775\nsystem_id = \"paystep\"\n";
    // A value of the wrong shape stops the reading at once, naming its key and what fits.
    let stderr = migrate_fails(&format!(
        "{smsc}password = \"secret\"\nbind = \"sideways\"\n"
    ))
    .await;
    assert!(
        stderr.contains("channels.sms.smsc[0].bind")
            && stderr.contains("\"transceiver\" or \"transmitter_receiver\""),
        "{stderr}"
    );
    // Values of the right shape are checked together, each problem with its key.
    let stderr = migrate_fails(&format!("{smsc}password = \"much-too-long\"\nwindow = 0\n")).await;
    assert!(stderr.contains("channels.sms.smsc[0].password"), "{stderr}");
    assert!(stderr.contains("channels.sms.smsc[0].window"), "{stderr}");
    assert!(
        !stderr.contains("much-too-long"),
        "a secret in an error: {stderr}"
    );
}

/// Runs `paystep migrate` with `toml` as its configuration; it must refuse (exit 2).
async fn migrate_fails(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paystep.toml");
    std::fs::write(&file, toml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_paystep"))
        .args(["migrate", "--config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
}
