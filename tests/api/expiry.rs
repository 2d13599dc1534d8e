//! Confirmation requests and processes that nobody finishes.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, spawn_app, Db, PIN};
use crate::on_both_databases;

on_both_databases!(
    an_unanswered_confirmation_request_expires_and_its_link_stops_working,
    an_idle_process_expires_and_returns_the_unused_release,
    an_unanswered_top_up_expires_the_waiting_step_only,
);

async fn an_unanswered_confirmation_request_expires_and_its_link_stops_working(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491721000001", "50.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491721000001", "10.00"))
        .await;
    let process_id = process["id"].as_str().unwrap();
    let link = app.confirmation_link(process_id, 1).await;

    app.advance_s(599);
    app.engine.expire_due().await.unwrap();
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );

    app.advance_s(2);
    assert!(app.engine.expire_due().await.unwrap() >= 1);
    let process = app.process(&retailer, process_id).await;
    assert_eq!(process["status"], "expired");
    assert_eq!(process["expires_at"], serde_json::Value::Null);
    let (_, html) = app.get_page(&link).await;
    assert!(html.contains("expired"), "{html}");
    let (status, _) = app.answer_page(&link, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(app.credit(&customer_id).await, "50.00");
    assert_eq!(
        app.events(&retailer).await.last().unwrap()["type"],
        "process.expired"
    );
    app.assert_ledger_holds().await;
}

async fn an_idle_process_expires_and_returns_the_unused_release(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491721000002", "50.00").await;
    let mut body = eur_process("+491721000002", "20.00");
    body["expires_in_s"] = json!(60);
    let process_id = app.open_active_process(&retailer, body).await;
    app.advance_s(45);
    assert_eq!(
        app.step(&retailer, &process_id, "5.00").await.status,
        StatusCode::CREATED
    );
    // The step was activity: 45 s after it the process is still open.
    app.advance_s(45);
    app.engine.expire_due().await.unwrap();
    assert_eq!(
        app.process(&retailer, &process_id).await["status"],
        "active"
    );

    app.advance_s(16);
    app.engine.expire_due().await.unwrap();
    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["status"], "expired");
    assert_eq!(process["returned"], "15.00");
    assert_eq!(process["remaining"], "0.00");
    assert_eq!(app.credit(&customer_id).await, "45.00");
    let customer_notice = app
        .wait_for_messages(1, |m| {
            m["kind"] == "notice" && m["process_id"] == process_id && m["to"] == "+491721000002"
        })
        .await
        .remove(0);
    assert!(customer_notice["text"]
        .as_str()
        .unwrap()
        .contains("returned 15.00 EUR"));
    let events = app.events(&retailer).await;
    assert!(
        events.iter().all(|e| e["type"] != "process.expiring"),
        "no notice for a 60 s period"
    );
    let step = app.step(&retailer, &process_id, "1.00").await;
    assert_eq!(step.body["error"]["code"], "process_not_active");
    app.assert_ledger_holds().await;
}

async fn an_unanswered_top_up_expires_the_waiting_step_only(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491721000003", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491721000003", "5.00"))
        .await;
    assert_eq!(
        app.step(&retailer, &process_id, "8.00").await.status,
        StatusCode::ACCEPTED
    );
    app.advance_s(601);
    app.engine.expire_due().await.unwrap();
    let steps = app
        .get(&retailer, &format!("/v1/processes/{process_id}/steps"))
        .await;
    assert_eq!(steps.body["steps"][0]["status"], "expired");
    let process = app.process(&retailer, &process_id).await;
    assert_eq!(process["status"], "active");
    assert_eq!(process["remaining"], "5.00");
    // With the question gone, a new step that does not fit asks again.
    assert_eq!(
        app.step(&retailer, &process_id, "8.00").await.status,
        StatusCode::ACCEPTED
    );
    let types: Vec<String> = app
        .events(&retailer)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.contains(&"step.expired".to_string()), "{types:?}");
    app.assert_ledger_holds().await;
}
