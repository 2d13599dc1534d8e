//! Where messages go (claim 20), what they carry (claims 7, 11), receipts (claim 15) and the
//! notice before an idle release expires.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, spawn_app, spawn_app_with, Db, Retailer, PIN};
use crate::on_both_databases;

on_both_databases!(
    customer_messages_go_to_the_stored_address_unless_the_retailer_asks_for_another_channel,
    every_message_names_the_retailer_and_the_goods,
    a_summary_receipt_policy_sends_one_receipt_on_release_and_one_on_close,
    the_retailer_is_told_before_an_idle_release_expires,
    a_request_meant_for_a_call_says_the_amount_in_words,
);

/// Without a voice channel configured, the console shows what a call would say.
async fn a_request_meant_for_a_call_says_the_amount_in_words(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": "+491801000009", "pin": PIN, "language": "de",
               "preferred_channel": "voice"}),
        "5000.00",
    )
    .await;
    let process = app
        .open_process(&retailer, eur_process("+491801000009", "1234.56"))
        .await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let request = app
        .wait_for_messages(1, |m| {
            m["kind"] == "confirmation_request" && m["process_id"] == process_id.as_str()
        })
        .await
        .remove(0);
    assert_eq!(request["intended_channel"], "voice");
    assert_eq!(
        request["text"],
        "Garage Nord bittet um Freigabe von eintausendzweihundertvierunddreißig Euro \
         sechsundfünfzig für Parking, level 2. Bitte geben Sie Ihre PIN ein und drücken Sie \
         dann die Rautetaste."
    );
}

async fn customer_messages_go_to_the_stored_address_unless_the_retailer_asks_for_another_channel(
    db: Db,
) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": "+491801000001", "email": "anna@example.com", "pin": PIN}),
        "50.00",
    )
    .await;
    let preferred = app
        .open_process(&retailer, eur_process("+491801000001", "1.00"))
        .await;
    let mut by_email = eur_process("+491801000001", "2.00");
    by_email["channel"] = json!("email");
    let asked = app.open_process(&retailer, by_email).await;

    let request = |process_id: String| {
        let app = &app;
        async move {
            app.wait_for_messages(1, |m| {
                m["kind"] == "confirmation_request" && m["process_id"] == process_id.as_str()
            })
            .await
            .remove(0)
        }
    };
    let stored = request(preferred["id"].as_str().unwrap().to_string()).await;
    assert_eq!(
        stored["intended_channel"], "sms",
        "the customer's stored preference"
    );
    assert_eq!(stored["to"], "+491801000001");
    let requested = request(asked["id"].as_str().unwrap().to_string()).await;
    assert_eq!(
        requested["intended_channel"], "email",
        "the retailer's choice wins"
    );
    assert_eq!(requested["to"], "anna@example.com");
    // The console stands in for channels this server has not configured yet.
    assert_eq!(requested["channel"], "console");

    let unreachable = app
        .post(&retailer, "/v1/processes", {
            let mut body = eur_process("+491801000001", "1.00");
            body["channel"] = json!("webhook");
            body
        })
        .await;
    assert_eq!(unreachable.status, StatusCode::UNPROCESSABLE_ENTITY);
    app.assert_ledger_holds().await;
}

async fn every_message_names_the_retailer_and_the_goods(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491801000002", "50.00").await;
    let mut body = eur_process("+491801000002", "5.00");
    body["charge"] = json!("1.00");
    let process_id = app.open_active_process(&retailer, body).await;
    assert_eq!(
        app.step(&retailer, &process_id, "1.50").await.status,
        StatusCode::CREATED
    );
    app.post(
        &retailer,
        &format!("/v1/processes/{process_id}/close"),
        json!({}),
    )
    .await;
    let messages = app
        .wait_for_messages(8, |m| m["process_id"] == process_id.as_str())
        .await;
    for kind in [
        "identifier_notification",
        "confirmation_request",
        "execution_message",
        "receipt",
        "notice",
    ] {
        assert!(
            messages.iter().any(|m| m["kind"] == kind),
            "a {kind} was sent"
        );
    }
    for message in &messages {
        assert_eq!(message["retailer_id"], retailer.id.as_str(), "{message}");
        let text = message["text"].as_str().unwrap();
        assert!(text.contains("Garage Nord"), "retailer name in {text:?}");
        assert!(
            text.contains("Parking, level 2"),
            "goods or service in {text:?}"
        );
        assert!(
            text.contains(message["code"].as_str().unwrap()),
            "code in {text:?}"
        );
    }
    app.assert_ledger_holds().await;
}

async fn summary_retailer(app: &crate::helpers::TestApp) -> Retailer {
    let created = app
        .admin_post(
            "/admin/v1/retailers",
            json!({"name": "Garage Nord", "receipt_policy": "summary"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["receipt_policy"], "summary");
    Retailer {
        id: created.body["id"].as_str().unwrap().to_string(),
        api_key: created.body["api_key"].as_str().unwrap().to_string(),
    }
}

async fn a_summary_receipt_policy_sends_one_receipt_on_release_and_one_on_close(db: Db) {
    let app = spawn_app(db).await;
    let retailer = summary_retailer(&app).await;
    app.create_customer("+491801000003", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491801000003", "5.00"))
        .await;
    for _ in 0..10 {
        assert_eq!(
            app.step(&retailer, &process_id, "0.10").await.status,
            StatusCode::CREATED
        );
    }
    app.post(
        &retailer,
        &format!("/v1/processes/{process_id}/close"),
        json!({}),
    )
    .await;
    let receipts = app
        .wait_for_messages(2, |m| {
            m["kind"] == "receipt" && m["process_id"] == process_id.as_str()
        })
        .await;
    // Let the outbox drain, then count: ten steps made no receipts of their own.
    app.wait_for_messages(11, |m| {
        m["kind"] == "execution_message" && m["process_id"] == process_id.as_str()
    })
    .await;
    let receipts_now = app
        .console_messages()
        .into_iter()
        .filter(|m| m["kind"] == "receipt" && m["process_id"] == process_id.as_str())
        .count();
    assert_eq!(receipts_now, 2, "{receipts:#?}");
    assert!(receipts[0]["text"]
        .as_str()
        .unwrap()
        .contains("released 5.00 EUR"));
    let closing = receipts[1]["text"].as_str().unwrap();
    assert!(
        closing.contains("Charged 1.00 EUR") && closing.contains("returned 4.00 EUR"),
        "{closing}"
    );
    app.assert_ledger_holds().await;
}

async fn expiring_notices(app: &crate::helpers::TestApp, retailer: &Retailer) -> usize {
    let events = app.events(retailer).await;
    events
        .iter()
        .filter(|event| event["type"] == "process.expiring")
        .count()
}

async fn the_retailer_is_told_before_an_idle_release_expires(db: Db) {
    let app = spawn_app_with(db, |settings| settings.engine.pre_expiry_notice_s = 300).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491801000004", "50.00").await;
    let mut body = eur_process("+491801000004", "5.00");
    body["expires_in_s"] = json!(900);
    let process_id = app.open_active_process(&retailer, body).await;
    app.advance_s(599);
    app.engine.expire_due().await.unwrap();
    assert_eq!(
        expiring_notices(&app, &retailer).await,
        0,
        "not yet within the notice period"
    );
    app.advance_s(2);
    app.engine.expire_due().await.unwrap();
    app.engine.expire_due().await.unwrap();
    assert_eq!(expiring_notices(&app, &retailer).await, 1, "told once");
    let notice = app
        .wait_for_messages(1, |m| {
            m["kind"] == "notice" && m["text"].as_str().unwrap().contains("expires at")
        })
        .await
        .remove(0);
    assert_eq!(notice["to"], format!("retailer:{}", retailer.id));
    // A step is activity: the period starts again, and so does the notice.
    assert_eq!(
        app.step(&retailer, &process_id, "1.00").await.status,
        StatusCode::CREATED
    );
    app.advance_s(601);
    app.engine.expire_due().await.unwrap();
    assert_eq!(expiring_notices(&app, &retailer).await, 2);
    assert_eq!(
        app.process(&retailer, &process_id).await["status"],
        "active"
    );
    app.advance_s(300);
    app.engine.expire_due().await.unwrap();
    assert_eq!(
        app.process(&retailer, &process_id).await["status"],
        "expired"
    );
    app.assert_ledger_holds().await;
}
