//! The confirmation page and the PIN.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eur_process, spawn_app, Db, PIN};
use crate::on_both_databases;

on_both_databases!(
    three_wrong_pins_decline_the_request_and_nothing_is_held,
    five_wrong_pins_in_a_row_lock_the_customer_out_until_the_lockout_ends,
    a_missing_pin_is_asked_for_and_not_counted,
    the_page_shows_the_request_and_a_get_changes_nothing,
    the_page_speaks_german_to_a_german_customer,
    a_customer_without_a_pin_confirms_with_one_click,
);

async fn three_wrong_pins_decline_the_request_and_nothing_is_held(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491711000001", "50.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491711000001", "10.00"))
        .await;
    let process_id = process["id"].as_str().unwrap();
    let link = app.confirmation_link(process_id, 1).await;
    let (status, page) = app.answer_page(&link, "confirm", Some("0000")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("Wrong PIN. Tries left: 2"), "{page}");
    let (_, page) = app.answer_page(&link, "confirm", Some("1111")).await;
    assert!(page.contains("Tries left: 1"), "{page}");
    let (status, page) = app.answer_page(&link, "confirm", Some("2222")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Too many wrong PINs"), "{page}");
    let process = app.process(&retailer, process_id).await;
    assert_eq!(process["status"], "declined");
    assert_eq!(process["decline_reason"], "pin_tries_exceeded");
    // The right PIN now is too late: the request is answered.
    let (status, _) = app.answer_page(&link, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(app.credit(&customer_id).await, "50.00");
    assert_eq!(app.count("pin_attempts").await, 3, "every try is logged");
    app.assert_ledger_holds().await;
}

async fn five_wrong_pins_in_a_row_lock_the_customer_out_until_the_lockout_ends(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491711000002", "50.00").await;
    let first = app
        .open_process(&retailer, eur_process("+491711000002", "10.00"))
        .await;
    let first_link = app
        .confirmation_link(first["id"].as_str().unwrap(), 1)
        .await;
    for wrong in ["1000", "1001", "1002"] {
        app.answer_page(&first_link, "confirm", Some(wrong)).await;
    }
    let second = app
        .open_process(&retailer, eur_process("+491711000002", "10.00"))
        .await;
    let second_id = second["id"].as_str().unwrap();
    let second_link = app.confirmation_link(second_id, 1).await;
    let (status, _) = app.answer_page(&second_link, "confirm", Some("1003")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, page) = app.answer_page(&second_link, "confirm", Some("1004")).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the fifth wrong PIN in a row locks: {page}"
    );
    // Locked: even the right PIN is refused, and the request stays open.
    let (status, page) = app.answer_page(&second_link, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.contains("locked until"), "{page}");
    assert_eq!(
        app.process(&retailer, second_id).await["status"],
        "awaiting_confirmation"
    );

    app.advance_s(901);
    let third = app
        .open_process(&retailer, eur_process("+491711000002", "10.00"))
        .await;
    let third_id = third["id"].as_str().unwrap();
    let third_link = app.confirmation_link(third_id, 1).await;
    let (status, page) = app.answer_page(&third_link, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(app.process(&retailer, third_id).await["status"], "active");
    app.assert_ledger_holds().await;
}

async fn a_missing_pin_is_asked_for_and_not_counted(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491711000003", "50.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491711000003", "10.00"))
        .await;
    let process_id = process["id"].as_str().unwrap();
    let link = app.confirmation_link(process_id, 1).await;
    for _ in 0..4 {
        let (status, page) = app.answer_page(&link, "confirm", None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.contains("Please enter your PIN"), "{page}");
    }
    assert_eq!(
        app.answer_page(&link, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.process(&retailer, process_id).await["status"], "active");
    app.assert_ledger_holds().await;
}

async fn the_page_shows_the_request_and_a_get_changes_nothing(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491711000004", "50.00").await;
    let mut body = eur_process("+491711000004", "12.50");
    body["description"] = json!("Parking <Level 2> & more");
    let process = app.open_process(&retailer, body).await;
    let process_id = process["id"].as_str().unwrap();
    let link = app.confirmation_link(process_id, 1).await;
    for _ in 0..3 {
        let (status, html) = app.get_page(&link).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("Garage Nord"));
        assert!(html.contains("12.50 EUR"));
        assert!(html.contains(process["code"].as_str().unwrap()));
        assert!(
            html.contains("Parking &lt;Level 2&gt; &amp; more"),
            "text is escaped: {html}"
        );
        assert!(html.contains("name=\"pin\""));
        assert!(html.contains("width=device-width"));
        assert!(!html.contains("<script"), "the page needs no JavaScript");
    }
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );
    let unknown = app
        .client
        .get(app.url("/c/not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad_action = app.answer_page(&link, "maybe", Some(PIN)).await;
    assert_eq!(bad_action.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );
    app.assert_ledger_holds().await;
}

async fn the_page_speaks_german_to_a_german_customer(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Jonas", "msisdn": "+491711000005", "language": "de", "pin": PIN}),
        "50.00",
    )
    .await;
    let process = app
        .open_process(&retailer, eur_process("+491711000005", "10.00"))
        .await;
    let process_id = process["id"].as_str().unwrap();
    let request = app
        .wait_for_messages(1, |m| {
            m["kind"] == "confirmation_request" && m["process_id"] == process_id
        })
        .await
        .remove(0);
    assert!(
        request["text"]
            .as_str()
            .unwrap()
            .contains("bittet um Freigabe"),
        "{}",
        request["text"]
    );
    let (_, html) = app.get_page(request["url"].as_str().unwrap()).await;
    assert!(html.contains("lang=\"de\""));
    assert!(
        html.contains("Bestätigen") && html.contains("Ablehnen"),
        "{html}"
    );
    let (_, page) = app
        .answer_page(request["url"].as_str().unwrap(), "confirm", Some(PIN))
        .await;
    assert!(page.contains("Zahlung ist bestätigt"), "{page}");
    app.assert_ledger_holds().await;
}

async fn a_customer_without_a_pin_confirms_with_one_click(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(json!({"name": "Mia", "email": "mia@example.com"}), "50.00")
        .await;
    let body =
        json!({"customer": {"email": "mia@example.com"}, "currency": "EUR", "release": "5.00"});
    let process = app.open_process(&retailer, body).await;
    let process_id = process["id"].as_str().unwrap();
    assert_eq!(process["customer"], "m***@example.com");
    let link = app.confirmation_link(process_id, 1).await;
    let (_, html) = app.get_page(&link).await;
    assert!(
        !html.contains("name=\"pin\""),
        "no PIN field for a customer without a PIN"
    );
    assert_eq!(
        app.answer_page(&link, "confirm", None).await.0,
        StatusCode::OK
    );
    assert_eq!(app.process(&retailer, process_id).await["status"], "active");
    app.assert_ledger_holds().await;
}
