//! Retention: old idempotency keys, resolved confirmation requests, PIN tries and delivered
//! messages are pruned by the sweeper; ledger transfers and events stay.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, eventually, spawn_app_with, Db, TestApp, PIN};
use crate::on_both_databases;

on_both_databases!(what_is_past_its_retention_goes_and_the_books_and_events_stay);

const DAY_S: i64 = 86_400;

async fn ids(app: &TestApp, table: &str) -> Vec<String> {
    let mut conn = app.engine.store.reader().acquire().await.unwrap();
    sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(&mut *conn)
        .await
        .unwrap()
}

async fn delivered(app: &TestApp) -> i64 {
    app.number(
        "SELECT COUNT(*) FROM outbox WHERE status = 'delivered'",
        &[],
    )
    .await
}

async fn what_is_past_its_retention_goes_and_the_books_and_events_stay(db: Db) {
    let app = spawn_app_with(db, |settings| {
        settings.retention.idempotency_keys_s = DAY_S;
        settings.retention.confirmations_s = 60;
        settings.retention.pin_attempts_s = 60;
        settings.retention.delivered_outbox_s = 60;
        settings.retention.batch_size = 2;
        settings.retention.interval_ms = 20;
    })
    .await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491763000001", "50.00").await;
    let body = eur_process("+491763000001", "10.00").to_string();
    let created = app
        .post_raw(&retailer, "/v1/processes", body, Some("order-1"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let process_id = created.body["id"].as_str().unwrap().to_string();
    let link = app.confirmation_link(&process_id, 1).await;
    app.answer_page(&link, "confirm", Some("0000")).await;
    assert_eq!(
        app.answer_page(&link, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.step(&retailer, &process_id, "2.00").await.status,
        StatusCode::CREATED
    );
    let closed = app
        .post(
            &retailer,
            &format!("/v1/processes/{process_id}/close"),
            json!({}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK);
    eventually(10, "every message was delivered", || async {
        app.count("outbox").await > 0 && delivered(&app).await == app.count("outbox").await
    })
    .await;
    assert_eq!(app.count("idempotency_keys").await, 1);
    assert_eq!(app.count("pin_attempts").await, 2);
    let (events, transfers) = (ids(&app, "events").await, ids(&app, "transfers").await);

    // A day and a moment later, in batches of two, everything past its age goes.
    app.advance_s(DAY_S + 1);
    eventually(20, "old rows were pruned", || async {
        app.count("idempotency_keys").await == 0
            && app.count("confirmations").await == 0
            && app.count("pin_attempts").await == 0
            && delivered(&app).await == 0
    })
    .await;
    assert_eq!(
        ids(&app, "events").await,
        events,
        "events are never deleted"
    );
    assert_eq!(ids(&app, "transfers").await, transfers, "nor is the ledger");
    assert_eq!(
        app.process(&retailer, &process_id).await["status"],
        "closed"
    );

    // What is new stays: a fresh key still replays, an open request is still answerable.
    let body = eur_process("+491763000001", "5.00").to_string();
    let first = app
        .post_raw(&retailer, "/v1/processes", body.clone(), Some("order-2"))
        .await;
    let replay = app
        .post_raw(&retailer, "/v1/processes", body, Some("order-2"))
        .await;
    assert_eq!(first.body["id"], replay.body["id"]);
    let open_id = first.body["id"].as_str().unwrap();
    let link = app.confirmation_link(open_id, 1).await;
    assert_eq!(
        app.answer_page(&link, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    app.assert_ledger_holds().await;
}
