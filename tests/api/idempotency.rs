//! `Idempotency-Key`: retries are safe, reuse with another body is refused.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, spawn_app, Db};
use crate::on_both_databases;

on_both_databases!(
    a_replayed_process_creation_answers_the_same_and_creates_one_process,
    a_replayed_step_is_charged_once,
    a_key_reused_with_another_body_is_refused,
    a_replayed_client_error_answers_the_same_error,
    concurrent_duplicates_under_one_key_create_one_process,
    a_retried_deposit_credits_once,
);

async fn a_replayed_process_creation_answers_the_same_and_creates_one_process(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491731000001", "50.00").await;
    let body = eur_process("+491731000001", "10.00").to_string();
    let first = app
        .post_raw(&retailer, "/v1/processes", body.clone(), Some("order-1"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = app
        .post_raw(&retailer, "/v1/processes", body, Some("order-1"))
        .await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(first.body, second.body);
    assert_eq!(app.count("processes").await, 1);
    assert_eq!(
        app.count("confirmations").await,
        1,
        "one confirmation request, not two"
    );
    app.assert_ledger_holds().await;
}

async fn a_replayed_step_is_charged_once(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491731000002", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491731000002", "10.00"))
        .await;
    let path = format!("/v1/processes/{process_id}/steps");
    let body = json!({"amount": "2.00"}).to_string();
    let first = app
        .post_raw(&retailer, &path, body.clone(), Some("step-1"))
        .await;
    let second = app
        .post_raw(&retailer, &path, body.clone(), Some("step-1"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, second.body);
    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["charged"], "2.00");
    assert_eq!(process["steps"], 1);
    // The same body under a new key is a new step.
    let third = app.post_raw(&retailer, &path, body, Some("step-2")).await;
    assert_eq!(third.status, StatusCode::CREATED);
    assert_ne!(third.body["id"], first.body["id"]);
    assert_eq!(app.credit(&customer_id).await, "40.00");
    assert_eq!(app.process(&retailer, &process_id).await["charged"], "4.00");
    app.assert_ledger_holds().await;
}

async fn a_key_reused_with_another_body_is_refused(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491731000003", "50.00").await;
    let first = app
        .post_raw(
            &retailer,
            "/v1/processes",
            eur_process("+491731000003", "10.00").to_string(),
            Some("k"),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let reused = app
        .post_raw(
            &retailer,
            "/v1/processes",
            eur_process("+491731000003", "11.00").to_string(),
            Some("k"),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT);
    assert_eq!(reused.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.count("processes").await, 1);
    // Keys are per retailer: another retailer may use the same key.
    let other = app.create_retailer().await;
    let theirs = app
        .post_raw(
            &other,
            "/v1/processes",
            eur_process("+491731000003", "11.00").to_string(),
            Some("k"),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    let invalid_key = app
        .post_raw(
            &retailer,
            "/v1/processes",
            eur_process("+491731000003", "1.00").to_string(),
            Some("bad key"),
        )
        .await;
    assert_eq!(invalid_key.body["error"]["code"], "invalid_idempotency_key");
    app.assert_ledger_holds().await;
}

async fn a_replayed_client_error_answers_the_same_error(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491731000004", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491731000004", "10.00"))
        .await;
    let close_path = format!("/v1/processes/{process_id}/close");
    assert_eq!(
        app.post(&retailer, &close_path, json!({})).await.status,
        StatusCode::OK
    );
    let path = format!("/v1/processes/{process_id}/steps");
    let body = json!({"amount": "1.00"}).to_string();
    let first = app
        .post_raw(&retailer, &path, body.clone(), Some("late-step"))
        .await;
    assert_eq!(first.status, StatusCode::CONFLICT);
    let second = app
        .post_raw(&retailer, &path, body, Some("late-step"))
        .await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_eq!(first.body, second.body);
    app.assert_ledger_holds().await;
}

async fn concurrent_duplicates_under_one_key_create_one_process(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491731000005", "50.00").await;
    let body = eur_process("+491731000005", "10.00").to_string();
    let requests =
        (0..10).map(|_| app.post_raw(&retailer, "/v1/processes", body.clone(), Some("burst")));
    let answers = join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(answer.body["id"], answers[0].body["id"]);
    }
    assert_eq!(app.count("processes").await, 1);
    assert_eq!(app.count("events").await, 1);
    app.assert_ledger_holds().await;
}

async fn a_retried_deposit_credits_once(db: Db) {
    let app = spawn_app(db).await;
    let customer_id = app.create_customer("+491731000006", "1.00").await;
    let deposit = |key: &'static str| {
        app.client
            .post(app.url(&format!("/admin/v1/customers/{customer_id}/deposits")))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .header("Idempotency-Key", key)
            .json(&json!({"amount": "20.00", "currency": "EUR", "reference": "bank-991"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            deposit("dep-1").await.unwrap().status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(app.credit(&customer_id).await, "21.00");
    app.assert_ledger_holds().await;
}
