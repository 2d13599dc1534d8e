//! Bad input gets a clear 4xx and changes nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eur_process, spawn_app, Db, TestApp};
use crate::on_both_databases;

on_both_databases!(
    bad_amounts_are_refused_with_a_clear_error_and_change_nothing,
    unknown_fields_and_malformed_json_are_refused_and_change_nothing,
    requests_without_a_valid_key_or_for_another_retailers_process_are_refused,
    nul_bytes_and_malformed_ids_are_not_found_on_both_databases,
    bodies_that_are_not_json_are_unsupported_media_types_and_change_nothing,
    extra_decimals_and_null_fields_are_refused_as_the_contract_says,
);

/// Everything a refused request could have touched.
async fn footprint(app: &TestApp) -> [i64; 6] {
    [
        app.count("processes").await,
        app.count("steps").await,
        app.count("transfers").await,
        app.count("events").await,
        app.count("outbox").await,
        app.count("confirmations").await,
    ]
}

async fn assert_refused(
    app: &TestApp,
    answer: crate::helpers::Answer,
    status: StatusCode,
    code: &str,
) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
    assert!(!answer.body["error"]["message"].as_str().unwrap().is_empty());
    let _ = app;
}

async fn bad_amounts_are_refused_with_a_clear_error_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491741000001", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491741000001", "10.00"))
        .await;
    let before = footprint(&app).await;

    let with_release = |release: Value| {
        let mut body = eur_process("+491741000001", "1.00");
        body["release"] = release;
        body
    };
    for (release, status, code) in [
        (
            json!("1.001"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("-5.00"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("0"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("0.00"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("10000.01"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("99999999999999999999999"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("1e2"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!("ten"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (json!(12.5), StatusCode::BAD_REQUEST, "invalid_request"),
    ] {
        let answer = app
            .post(&retailer, "/v1/processes", with_release(release.clone()))
            .await;
        assert_refused(&app, answer, status, code).await;
    }
    let answer = app
        .post(&retailer, "/v1/processes", {
            let mut body = eur_process("+491741000001", "1.00");
            body["currency"] = json!("JPY");
            body["release"] = json!("1.5");
            body
        })
        .await;
    assert_refused(
        &app,
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_amount",
    )
    .await;
    let answer = app
        .post(&retailer, "/v1/processes", {
            let mut body = eur_process("+491741000001", "1.00");
            body["currency"] = json!("EURO");
            body
        })
        .await;
    assert_refused(
        &app,
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported_currency",
    )
    .await;
    let answer = app
        .post(&retailer, "/v1/processes", {
            let mut body = eur_process("+491741000001", "1.00");
            body["charge"] = json!("2.00");
            body
        })
        .await;
    assert_refused(
        &app,
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "charge_exceeds_release",
    )
    .await;

    for amount in ["0.005", "-1", "0", "10000.01"] {
        let answer = app.step(&retailer, &process_id, amount).await;
        assert_refused(
            &app,
            answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        )
        .await;
    }
    let too_many_decimals = app.step(&retailer, &process_id, "1.005").await;
    assert!(too_many_decimals.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("decimals"));
    assert_eq!(
        footprint(&app).await,
        before,
        "refused requests changed nothing"
    );
    app.assert_ledger_holds().await;
}

async fn unknown_fields_and_malformed_json_are_refused_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491741000002", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491741000002", "10.00"))
        .await;
    let before = footprint(&app).await;

    let mut unknown = eur_process("+491741000002", "1.00");
    unknown["colour"] = json!("blue");
    let answer = app.post(&retailer, "/v1/processes", unknown).await;
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{}",
        answer.body
    );
    assert_refused(&app, answer, StatusCode::BAD_REQUEST, "invalid_request").await;
    let answer = app
        .post(
            &retailer,
            &format!("/v1/processes/{process_id}/steps"),
            json!({"amount": "1.00", "tip": "1"}),
        )
        .await;
    assert_refused(&app, answer, StatusCode::BAD_REQUEST, "invalid_request").await;
    for broken in ["{", "{\"amount\": }", "not json", "", "[1, 2]"] {
        let answer = app
            .post_raw(
                &retailer,
                &format!("/v1/processes/{process_id}/steps"),
                broken.to_string(),
                None,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{broken:?}: {}",
            answer.body
        );
        assert!(
            answer.body["error"]["code"] == "malformed_json"
                || answer.body["error"]["code"] == "invalid_request"
        );
    }
    let missing = app
        .post(&retailer, "/v1/processes", json!({"currency": "EUR"}))
        .await;
    assert_refused(&app, missing, StatusCode::BAD_REQUEST, "invalid_request").await;
    let two_customers = app
        .post(&retailer, "/v1/processes", json!({"customer": {"msisdn": "+491741000002", "email": "a@b.de"}, "currency": "EUR", "release": "1.00"}))
        .await;
    assert_refused(
        &app,
        two_customers,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    let huge = format!(
        "{{\"amount\": \"1.00\", \"description\": \"{}\"}}",
        "x".repeat(100_000)
    );
    // The server answers 413 from Content-Length alone and closes the connection, which can
    // cut the client off while it still sends the body; the answer shows on a later try. A
    // client of its own keeps the closed connection out of the shared client's pool.
    let oversize_client = reqwest::Client::new();
    let mut answer = None;
    for _ in 0..5 {
        let sent = oversize_client
            .post(app.url(&format!("/v1/processes/{process_id}/steps")))
            .bearer_auth(&retailer.api_key)
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            answer = Some(crate::helpers::Answer { status, body });
            break;
        }
    }
    let answer = answer.expect("the oversized request got an answer");
    assert_refused(
        &app,
        answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;
    let long_description = app
        .post(
            &retailer,
            &format!("/v1/processes/{process_id}/steps"),
            json!({"amount": "1.00", "description": "x".repeat(201)}),
        )
        .await;
    assert_refused(
        &app,
        long_description,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    assert_eq!(
        footprint(&app).await,
        before,
        "refused requests changed nothing"
    );
    app.assert_ledger_holds().await;
}

async fn requests_without_a_valid_key_or_for_another_retailers_process_are_refused(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let other = app.create_retailer().await;
    app.create_customer("+491741000003", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491741000003", "10.00"))
        .await;
    let before = footprint(&app).await;
    let anonymous = app
        .client
        .post(app.url("/v1/processes"))
        .json(&eur_process("+491741000003", "1.00"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let forged = crate::helpers::Retailer {
        id: retailer.id.clone(),
        api_key: "psk_forged".into(),
    };
    assert_eq!(
        app.step(&forged, &process_id, "1.00").await.status,
        StatusCode::UNAUTHORIZED
    );
    let foreign_step = app.step(&other, &process_id, "1.00").await;
    assert_refused(&app, foreign_step, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        app.get(&other, &format!("/v1/processes/{process_id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let admin_with_retailer_key = app
        .client
        .post(app.url("/admin/v1/retailers"))
        .bearer_auth(&retailer.api_key)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin_with_retailer_key.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(footprint(&app).await, before);
    assert_eq!(
        app.get(&other, "/v1/events").await.body["events"],
        json!([]),
        "events are per retailer"
    );

    // A replaced key stops working at once; the new one works.
    let rotate_path = format!("/admin/v1/retailers/{}/api-key/rotate", retailer.id);
    let rotated = app.admin_post(&rotate_path, json!({})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let process_path = format!("/v1/processes/{process_id}");
    assert_eq!(
        app.get(&retailer, &process_path).await.status,
        StatusCode::UNAUTHORIZED
    );
    let renewed = crate::helpers::Retailer {
        id: retailer.id.clone(),
        api_key: rotated.body["api_key"].as_str().unwrap().into(),
    };
    assert_eq!(
        app.get(&renewed, &process_path).await.status,
        StatusCode::OK
    );
    app.assert_ledger_holds().await;
}

async fn nul_bytes_and_malformed_ids_are_not_found_on_both_databases(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491741000010", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491741000010", "10.00"))
        .await;
    let before = footprint(&app).await;
    for path in [
        format!("/v1/processes/{process_id}%00"),
        "/v1/processes/%00".to_string(),
        format!("/v1/processes/{process_id}%00/steps"),
        "/v1/processes/not-a-uuid".to_string(),
    ] {
        let got = app.get(&retailer, &path).await;
        assert_refused(&app, got, StatusCode::NOT_FOUND, "not_found").await;
    }
    let step = app
        .post(
            &retailer,
            &format!("/v1/processes/{process_id}%00/steps"),
            json!({"amount": "1.00"}),
        )
        .await;
    assert_refused(&app, step, StatusCode::NOT_FOUND, "not_found").await;
    for path in [
        "/admin/v1/customers/%00",
        &format!("/admin/v1/customers/{customer_id}%00"),
    ] {
        let got = app.admin_get(path).await;
        assert_refused(&app, got, StatusCode::NOT_FOUND, "not_found").await;
    }
    let page = app.get(&retailer, "/v1/processes?after=%00").await;
    assert_refused(&app, page, StatusCode::BAD_REQUEST, "invalid_request").await;
    let mut by_id = eur_process("+491741000010", "1.00");
    by_id["customer"] = json!({"id": "\u{0}"});
    let created = app.post(&retailer, "/v1/processes", by_id).await;
    assert_refused(
        &app,
        created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    let mut described = eur_process("+491741000010", "1.00");
    described["description"] = json!("Parking\u{0}");
    let created = app.post(&retailer, "/v1/processes", described).await;
    assert_refused(
        &app,
        created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    let named = app
        .admin_post(
            "/admin/v1/customers",
            json!({"name": "A\u{0}", "msisdn": "+491741000011"}),
        )
        .await;
    assert_refused(
        &app,
        named,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    assert_eq!(footprint(&app).await, before);
    app.assert_ledger_holds().await;
}

async fn bodies_that_are_not_json_are_unsupported_media_types_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491741000020", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491741000020", "10.00"))
        .await;
    let before = footprint(&app).await;
    let credit = app.credit(&customer_id).await;
    let process_body = eur_process("+491741000020", "1.00").to_string();
    let step_body = json!({"amount": "1.00"}).to_string();
    let targets = [
        (
            "/v1/processes".to_string(),
            process_body,
            retailer.api_key.clone(),
        ),
        (
            format!("/v1/processes/{process_id}/steps"),
            step_body,
            retailer.api_key.clone(),
        ),
        (
            format!("/admin/v1/customers/{customer_id}/deposits"),
            json!({"amount": "1.00", "currency": "EUR"}).to_string(),
            crate::helpers::ADMIN_TOKEN.to_string(),
        ),
    ];
    for (path, body, token) in &targets {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let mut request = app
                .client
                .post(app.url(path))
                .bearer_auth(token)
                .body(body.clone());
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let answer: Value = response.json().await.unwrap();
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} {content_type:?}: {answer}"
            );
            assert_eq!(answer["error"]["code"], "unsupported_media_type");
        }
    }
    assert_eq!(footprint(&app).await, before);
    assert_eq!(app.credit(&customer_id).await, credit);
    // JSON with a charset parameter is JSON; a close needs no body at all.
    let step = app
        .client
        .post(app.url(&format!("/v1/processes/{process_id}/steps")))
        .bearer_auth(&retailer.api_key)
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"amount": "1.00"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(step.status(), StatusCode::CREATED);
    let close = app
        .client
        .post(app.url(&format!("/v1/processes/{process_id}/close")))
        .bearer_auth(&retailer.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), StatusCode::OK);
    app.assert_ledger_holds().await;
}

async fn extra_decimals_and_null_fields_are_refused_as_the_contract_says(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491741000030", "50.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491741000030", "10.00"))
        .await;
    let before = footprint(&app).await;
    let mut release = eur_process("+491741000030", "1.000");
    let created = app.post(&retailer, "/v1/processes", release.clone()).await;
    assert_refused(
        &app,
        created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_amount",
    )
    .await;
    let step = app.step(&retailer, &process_id, "1.000").await;
    assert_refused(
        &app,
        step,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_amount",
    )
    .await;
    let deposit = app
        .admin_post(
            &format!("/admin/v1/customers/{customer_id}/deposits"),
            json!({"amount": "1.000", "currency": "EUR"}),
        )
        .await;
    assert_refused(
        &app,
        deposit,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_amount",
    )
    .await;
    release["release"] = json!("1.00");
    for field in ["channel", "expires_in_s", "description", "charge", "top_up"] {
        let mut body = release.clone();
        body[field] = Value::Null;
        let created = app.post(&retailer, "/v1/processes", body).await;
        assert!(
            created.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "the message names {field}: {}",
            created.body
        );
        assert_refused(&app, created, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let step = app
        .post(
            &retailer,
            &format!("/v1/processes/{process_id}/steps"),
            json!({"amount": "1.00", "reference": null}),
        )
        .await;
    assert_refused(&app, step, StatusCode::BAD_REQUEST, "invalid_request").await;
    // A field given twice is read one way here and maybe another by a proxy: refused.
    let twice = r#"{"amount": "1.00", "amount": "9.00"}"#.to_string();
    let step = app
        .post_raw(
            &retailer,
            &format!("/v1/processes/{process_id}/steps"),
            twice,
            None,
        )
        .await;
    assert_refused(&app, step, StatusCode::BAD_REQUEST, "invalid_request").await;
    for query in [
        "/v1/events?limit=101",
        "/v1/events?limit=0",
        "/v1/processes?status=AAA",
    ] {
        let page = app.get(&retailer, query).await;
        assert_refused(
            &app,
            page,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        )
        .await;
    }
    assert_eq!(footprint(&app).await, before);
    app.assert_ledger_holds().await;
}
