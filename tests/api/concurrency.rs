//! Concurrent steps never overdraw a release.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, spawn_app, Db, TestApp};
use crate::on_both_databases;

const CONCURRENT_STEPS: usize = 200;

on_both_databases!(
    two_hundred_concurrent_steps_against_fifty_charge_exactly_fifty_without_top_up,
    two_hundred_concurrent_steps_against_fifty_ask_one_top_up_and_refuse_the_rest,
);

/// Fires the steps all at once and counts the answers by status.
async fn fire(
    app: &TestApp,
    retailer: &crate::helpers::Retailer,
    process_id: &str,
) -> Vec<(StatusCode, String)> {
    let requests = (0..CONCURRENT_STEPS).map(|_| async {
        let answer = app.step(retailer, process_id, "1.00").await;
        let code = answer.body["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (answer.status, code)
    });
    join_all(requests).await
}

fn count(answers: &[(StatusCode, String)], status: StatusCode, code: &str) -> usize {
    answers
        .iter()
        .filter(|(s, c)| *s == status && c == code)
        .count()
}

async fn two_hundred_concurrent_steps_against_fifty_charge_exactly_fifty_without_top_up(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491751000001", "100.00").await;
    let mut body = eur_process("+491751000001", "50.00");
    body["top_up"] = json!({"policy": "none"});
    let process_id = app.open_active_process(&retailer, body).await;

    let answers = fire(&app, &retailer, &process_id).await;
    assert_eq!(count(&answers, StatusCode::CREATED, ""), 50, "{answers:?}");
    assert_eq!(
        count(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_release"
        ),
        150,
        "{answers:?}"
    );
    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["charged"], "50.00");
    assert_eq!(process["remaining"], "0.00");
    assert_eq!(app.credit(&customer_id).await, "50.00");
    let steps = app
        .get(&retailer, &format!("/v1/processes/{process_id}/steps"))
        .await;
    let charged = steps.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "charged")
        .count();
    assert_eq!(charged, 50);
    app.assert_ledger_holds().await;
}

async fn two_hundred_concurrent_steps_against_fifty_ask_one_top_up_and_refuse_the_rest(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491751000002", "100.00").await;
    let mut body = eur_process("+491751000002", "50.00");
    body["top_up"] = json!({"policy": "difference"});
    let process_id = app.open_active_process(&retailer, body).await;

    let answers = fire(&app, &retailer, &process_id).await;
    assert_eq!(count(&answers, StatusCode::CREATED, ""), 50, "{answers:?}");
    assert_eq!(count(&answers, StatusCode::ACCEPTED, ""), 1, "{answers:?}");
    assert_eq!(
        count(&answers, StatusCode::CONFLICT, "top_up_pending"),
        149,
        "{answers:?}"
    );
    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["charged"], "50.00");
    assert_eq!(
        app.count("confirmations").await,
        2,
        "the first request and exactly one top-up"
    );
    app.assert_ledger_holds().await;
}
