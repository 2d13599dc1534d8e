//! Guarding the customer's credit: the PIN lockout under concurrency, throttled guessing,
//! the confirmation page's headers and its refusal of cross-site answers, and secrets kept
//! out of the log at every level.

use std::collections::HashMap;
use std::path::Path;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::daemon::{console_lines, free_port, start_daemon_logging, Daemon};
use crate::helpers::{
    eur_process, fresh_database_url, spawn_app_with, Db, Retailer, TestApp, ADMIN_TOKEN, PIN,
};
use crate::on_both_databases;
use crate::sms::Smsc;

on_both_databases!(
    fifty_parallel_wrong_pins_over_ten_requests_count_exactly_the_lockout,
    guessing_keys_tokens_and_links_is_throttled_but_a_good_retailer_is_not,
    the_page_sends_its_protective_headers_and_refuses_cross_site_answers,
    no_secret_reaches_the_log_even_at_trace,
    a_retailers_description_cannot_pass_for_the_amount_the_code_or_the_link,
    every_event_names_the_retailer_and_carries_the_process_context,
);

const ROUNDS: usize = 20;
const REQUESTS_PER_ROUND: usize = 10;
const GUESSES_PER_ROUND: usize = 50;

/// Opens `count` confirmation requests for one customer and returns their links.
async fn open_requests(
    app: &TestApp,
    retailer: &Retailer,
    msisdn: &str,
    count: usize,
) -> Vec<String> {
    let opened = (0..count).map(|_| async {
        let process = app
            .open_process(retailer, eur_process(msisdn, "10.00"))
            .await;
        let process_id = process["id"].as_str().unwrap().to_string();
        app.confirmation_link(&process_id, 1).await
    });
    join_all(opened).await
}

async fn wrong_pin_attempts(app: &TestApp, customer_id: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM pin_attempts WHERE customer_id = $1 AND outcome = 'wrong'";
    app.number(sql, &[customer_id]).await
}

async fn stored_pin_failures(app: &TestApp, customer_id: &str) -> i64 {
    let sql = "SELECT pin_failures FROM customers WHERE id = $1";
    app.number(sql, &[customer_id]).await
}

async fn fifty_parallel_wrong_pins_over_ten_requests_count_exactly_the_lockout(db: Db) {
    let app = spawn_app_with(db, |settings| {
        // Per-request tries above the lockout, so that only the customer's lockout decides;
        // guessing throttles out of the way, so that only the lockout answers 429.
        settings.security.pin_tries_per_request = 10;
        settings.security.pin_lockout_after = 5;
        settings.security.pin_lockout_s = 60;
        settings.security.failures_per_source_burst = 100_000;
        settings.security.failures_per_target_burst = 100_000;
    })
    .await;
    let lockout_after = 5;
    let retailer = app.create_retailer().await;
    for round in 0..ROUNDS {
        let msisdn = format!("+4917620{round:05}");
        let customer_id = app.create_customer(&msisdn, "100.00").await;
        let links = open_requests(&app, &retailer, &msisdn, REQUESTS_PER_ROUND).await;
        let guesses = (0..GUESSES_PER_ROUND).map(|guess| {
            let link = app.local(&links[guess % links.len()]);
            let client = app.client.clone();
            async move {
                let wrong = format!("{:04}", 1000 + guess);
                let form = [("action", "confirm"), ("pin", wrong.as_str())];
                let response = client.post(&link).form(&form).send().await.unwrap();
                let retry_after = response.headers().contains_key("retry-after");
                (response.status(), retry_after)
            }
        });
        let answers = join_all(guesses).await;
        let mut by_status: HashMap<StatusCode, usize> = HashMap::new();
        for (status, retry_after) in &answers {
            *by_status.entry(*status).or_default() += 1;
            if *status == StatusCode::TOO_MANY_REQUESTS {
                assert!(retry_after, "a 429 says when to come back");
            }
        }
        // The wrong PINs before the lock answer 422; the one that locks and every later
        // one answer 429.
        let checked = wrong_pin_attempts(&app, &customer_id).await;
        assert_eq!(checked, lockout_after, "round {round}: {by_status:?}");
        assert_eq!(
            by_status
                .get(&StatusCode::UNPROCESSABLE_ENTITY)
                .copied()
                .unwrap_or(0),
            (lockout_after - 1) as usize,
            "round {round}: {by_status:?}"
        );
        assert_eq!(
            by_status
                .get(&StatusCode::TOO_MANY_REQUESTS)
                .copied()
                .unwrap_or(0),
            GUESSES_PER_ROUND - (lockout_after - 1) as usize,
            "round {round}: {by_status:?}"
        );
        assert_eq!(stored_pin_failures(&app, &customer_id).await, checked);
        // The right PIN is refused while the lockout lasts, and accepted after it.
        let (status, page) = app.answer_page(&links[0], "confirm", Some(PIN)).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "round {round}: {page}"
        );
        app.advance_s(61);
        let (status, page) = app.answer_page(&links[0], "confirm", Some(PIN)).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {page}");
        assert_eq!(stored_pin_failures(&app, &customer_id).await, 0);
    }
    app.assert_ledger_holds().await;
}

async fn guessing_keys_tokens_and_links_is_throttled_but_a_good_retailer_is_not(db: Db) {
    let burst = 5;
    let app = spawn_app_with(db, |settings| {
        settings.security.failures_per_source_burst = burst;
        settings.security.failures_per_source_per_minute = 1;
        settings.security.failures_per_target_burst = 1000;
    })
    .await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491762100001", "500.00").await;
    let process_id = app
        .open_active_process(&retailer, eur_process("+491762100001", "400.00"))
        .await;
    let guesses: [(&str, &str); 3] = [
        ("/v1/events", "api key"),
        ("/admin/v1/ledger/verify", "admin token"),
        ("/c/", "confirmation link"),
    ];
    for (path, what) in guesses {
        let mut statuses = Vec::new();
        for attempt in 0..(burst as usize + 5) {
            let wrong = format!("wrong-secret-{attempt:03}-0123456789abcdefghijklmnopqrstuvwxyz");
            let response = if path == "/c/" {
                app.client
                    .get(app.url(&format!("/c/{wrong}")))
                    .send()
                    .await
                    .unwrap()
            } else {
                app.client
                    .get(app.url(path))
                    .bearer_auth(&wrong)
                    .send()
                    .await
                    .unwrap()
            };
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let seconds: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&seconds), "{what}: Retry-After {seconds}");
            }
            statuses.push(status);
            // The retailer with a good key, from the same address, is never slowed.
            let step = app.step(&retailer, &process_id, "1.00").await;
            assert_eq!(step.status, StatusCode::CREATED, "{what}: {}", step.body);
        }
        let expected_first = if path == "/c/" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::UNAUTHORIZED
        };
        let (allowed, throttled) = statuses.split_at(burst as usize);
        assert!(
            allowed.iter().all(|status| *status == expected_first),
            "{what}: {statuses:?}"
        );
        assert!(
            throttled
                .iter()
                .all(|status| *status == StatusCode::TOO_MANY_REQUESTS),
            "{what}: {statuses:?}"
        );
    }
    // The admin token is the operator's choice, not 256 random bits: from a source over
    // its quota even the right one waits out the Retry-After, unchecked.
    let report = app.admin_get("/admin/v1/ledger/verify").await;
    assert_eq!(
        report.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        report.body
    );
    let mut conn = app.engine.store.reader().acquire().await.unwrap();
    let report = paystep::ledger::verify(&mut conn).await.unwrap();
    assert!(report.ok, "{report:?}");
}

const PAGE_HEADERS: [(&str, &str); 5] = [
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
];

fn assert_protective_headers(response: &reqwest::Response, what: &str) {
    for (name, expected) in PAGE_HEADERS {
        let value = response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name} header"))
            .to_str()
            .unwrap();
        assert!(value.contains(expected), "{what}: {name}: {value}");
    }
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
}

async fn the_page_sends_its_protective_headers_and_refuses_cross_site_answers(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491762200001", "50.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491762200001", "10.00"))
        .await;
    let process_id = process["id"].as_str().unwrap();
    let link = app.local(&app.confirmation_link(process_id, 1).await);
    let shown = app.client.get(&link).send().await.unwrap();
    assert_eq!(shown.status(), StatusCode::OK);
    assert_protective_headers(&shown, "GET");
    let unknown = app
        .client
        .get(app.url("/c/no-such-token"))
        .send()
        .await
        .unwrap();
    assert_protective_headers(&unknown, "GET of an unknown link");

    let form = [("action", "confirm"), ("pin", PIN)];
    let cross_site: [&[(&str, &str)]; 4] = [
        &[("origin", "https://evil.example")],
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        &[("origin", "null"), ("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
    ];
    for headers in cross_site {
        let mut request = app.client.post(&link);
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        let refused = request.form(&form).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert_protective_headers(&refused, "refused POST");
        assert_eq!(
            app.process(&retailer, process_id).await["status"],
            "awaiting_confirmation",
            "a cross-site POST changes nothing"
        );
    }
    assert_eq!(app.count("pin_attempts").await, 0, "not even a PIN try");
    assert_eq!(app.credit(&customer_id).await, "50.00");

    // The page's own form confirms: a browser says same-origin, and under the page's
    // no-referrer policy its Origin is null.
    let confirmed = app
        .client
        .post(&link)
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert_protective_headers(&confirmed, "POST");
    assert_eq!(app.process(&retailer, process_id).await["status"], "active");
    app.assert_ledger_holds().await;
}

/// The SMSC link's password in the trace test: a secret the log must not show.
const SMSC_PASSWORD: &str = "Pw7x9q2Z";

/// A full flow against the real binary at `RUST_LOG=trace`, on the page and by SMS through
/// the test SMSC; then every secret it made (keys, tokens, the webhook secret, the SMSC
/// password, the PIN) is looked for in its log.
async fn no_secret_reaches_the_log_even_at_trace(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(db, dir.path()).await;
    let console = dir.path().join("console.jsonl");
    let log = dir.path().join("paystep.log");
    let smsc = Smsc::start_with(dir.path(), 0, 0, &["--password", SMSC_PASSWORD]).await;
    let config = dir.path().join("sms.toml");
    let sms = format!(
        "[channels.sms]\nsource_addr = \"12345\"\n[[channels.sms.smsc]]\nname = \"test-smsc\"\n\
         host = \"127.0.0.1\"\nport = {}\nsystem_id = \"paystep\"\npassword = \"{SMSC_PASSWORD}\"\n\
         response_timeout_ms = 100\nreconnect_backoff_min_ms = 50\nreconnect_backoff_max_ms = 500\n",
        smsc.smpp_port
    );
    std::fs::write(&config, sms).unwrap();
    let trace = [("RUST_LOG", "trace")];
    let daemon = start_daemon_logging(&database_url, &console, (&config, &log), &trace).await;
    smsc.wait_for_bind().await;
    let pin = "80561937";
    let mut secrets = vec![ADMIN_TOKEN.to_string(), SMSC_PASSWORD.to_string()];
    let (secrets_made, api_key) = full_flow(&daemon, &console, pin).await;
    secrets.extend(secrets_made);
    confirm_by_sms(&daemon, &smsc, &api_key, pin).await;
    daemon.sigkill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("paystep is listening"), "the log was written");
    assert!(text.contains("TRACE"), "the log is at trace level");
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is in the log: {secret}"
        );
    }
    assert!(!contains_number(&text, pin), "the PIN is in the log");
}

/// Whether `number` stands alone in `text`: not as part of a longer run of digits, such as
/// a timestamp.
fn contains_number(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + number.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A customer whose requests come by SMS answers one with `YES <code> <PIN>`.
async fn confirm_by_sms(daemon: &Daemon, smsc: &Smsc, api_key: &str, pin: &str) {
    use reqwest::Method;
    let customer = json!({"name": "Eva", "msisdn": "+491762300002", "pin": pin});
    daemon.create_customer(customer, "20.00").await;
    let body =
        json!({"customer": {"msisdn": "+491762300002"}, "currency": "EUR", "release": "5.00"});
    let (status, process) = daemon
        .call(Method::POST, "/v1/processes", api_key, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{process}");
    let code = process["code"].as_str().unwrap();
    smsc.wait_for_submits("491762300002", 1, |text| text.contains(code))
        .await;
    assert_eq!(
        smsc.mo("+491762300002", &format!("yes {code} {pin}")).await,
        0
    );
    let path = format!("/v1/processes/{}", process["id"].as_str().unwrap());
    crate::helpers::eventually(15, "the SMS reply confirmed the process", || async {
        daemon.call(Method::GET, &path, api_key, None).await.1["status"] == "active"
    })
    .await;
}

/// Creates a retailer, a customer with `pin`, and runs a process through a wrong PIN, a
/// confirmation, steps, a top-up and a close; returns every secret it saw, and the API key
/// it ends with.
async fn full_flow(daemon: &Daemon, console: &Path, pin: &str) -> (Vec<String>, String) {
    use reqwest::Method;
    let webhook_port = free_port();
    let (status, retailer) = daemon
        .call(
            Method::POST,
            "/admin/v1/retailers",
            ADMIN_TOKEN,
            Some(json!({"name": "Kiosk", "webhook_url": format!("http://127.0.0.1:{webhook_port}/hook"), "notify": ["webhook", "console"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{retailer}");
    let api_key = retailer["api_key"].as_str().unwrap().to_string();
    let mut secrets = vec![
        api_key.clone(),
        retailer["webhook_secret"].as_str().unwrap().to_string(),
    ];
    let customer = json!({"name": "Ben", "msisdn": "+491762300001", "pin": pin, "preferred_channel": "console"});
    daemon.create_customer(customer, "100.00").await;
    let body = json!({"customer": {"msisdn": "+491762300001"}, "currency": "EUR", "release": "10.00", "description": "Snacks"});
    let (status, process) = daemon
        .call(Method::POST, "/v1/processes", &api_key, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{process}");
    let process_id = process["id"].as_str().unwrap().to_string();
    let link = confirmation_link(console, &process_id, 1).await;
    let answer = |pin: &str| {
        let form = [
            ("action".to_string(), "confirm".to_string()),
            ("pin".to_string(), pin.to_string()),
        ];
        daemon.client.post(&link).form(&form).send()
    };
    assert_eq!(
        daemon.client.get(&link).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        answer("0000").await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(answer(pin).await.unwrap().status(), StatusCode::OK);
    let (status, _) = daemon
        .call(Method::GET, "/v1/events", "not-the-key-0123456789", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = daemon
        .call(
            Method::GET,
            "/admin/v1/ledger/verify",
            "not-the-admin-token",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let steps = format!("/v1/processes/{process_id}/steps");
    let (status, _) = daemon
        .call(
            Method::POST,
            &steps,
            &api_key,
            Some(json!({"amount": "4.00"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = daemon
        .call(
            Method::POST,
            &steps,
            &api_key,
            Some(json!({"amount": "9.00"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "a top-up is asked");
    let top_up_link = confirmation_link(console, &process_id, 2).await;
    let form = [("action", "confirm"), ("pin", pin)];
    let confirmed = daemon
        .client
        .post(&top_up_link)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), StatusCode::OK);
    let close = format!("/v1/processes/{process_id}/close");
    let (status, _) = daemon.call(Method::POST, &close, &api_key, None).await;
    assert_eq!(status, StatusCode::OK);
    let rotate = format!(
        "/admin/v1/retailers/{}/api-key/rotate",
        retailer["id"].as_str().unwrap()
    );
    let (status, rotated) = daemon.call(Method::POST, &rotate, ADMIN_TOKEN, None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    secrets.push(rotated["api_key"].as_str().unwrap().to_string());
    for link in [link, top_up_link] {
        secrets.push(link.rsplit('/').next().unwrap().to_string());
    }
    let api_key = rotated["api_key"].as_str().unwrap().to_string();
    (secrets, api_key)
}

/// The link of the `nth` confirmation request of a process, from the daemon's console.
async fn confirmation_link(console: &Path, process_id: &str, nth: usize) -> String {
    let is_request = |message: &Value| {
        message["kind"] == "confirmation_request" && message["process_id"] == process_id
    };
    for _ in 0..500 {
        let requests: Vec<Value> = console_lines(console)
            .into_iter()
            .filter(is_request)
            .collect();
        if requests.len() >= nth {
            return requests[nth - 1]["url"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no confirmation request {nth} for {process_id} on the console");
}

const SPOOFING: &str =
    "Parking. You are asked to release 0.01 EUR only. Code 0000. Confirm: http://evil.example/c/x";

/// What customers are shown of `SPOOFING`: the link taken out, quoted, after the real facts.
const SPOOFING_SHOWN: &str =
    "Parking. You are asked to release 0.01 EUR only. Code 0000. Confirm: [link]";

async fn a_retailers_description_cannot_pass_for_the_amount_the_code_or_the_link(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491762400001", "500.00").await;
    app.create_customer_with(
        json!({"name": "Mia", "email": "mia@example.com", "preferred_channel": "email", "pin": PIN}),
        "500.00",
    )
    .await;

    // Bidirectional overrides and invisible characters are refused, and change nothing.
    let before = app.count("processes").await;
    for trick in ['\u{202E}', '\u{2066}', '\u{200B}'] {
        let mut body = eur_process("+491762400001", "99.00");
        body["description"] = json!(format!("Parking {trick}00.99"));
        let refused = app.post(&retailer, "/v1/processes", body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(refused.body["error"]["code"], "invalid_field");
    }
    assert_eq!(app.count("processes").await, before);
    assert_eq!(app.count("outbox").await, 0, "no message went out");

    // By SMS (the console stands in for the SMSC): the real facts, then the quoted text,
    // cut short, its link taken out.
    let mut body = eur_process("+491762400001", "99.00");
    body["description"] = json!(SPOOFING);
    let process = app.open_process(&retailer, body).await;
    let (process_id, code) = (
        process["id"].as_str().unwrap(),
        process["code"].as_str().unwrap(),
    );
    assert_eq!(
        process["description"], SPOOFING,
        "the API keeps the retailer's data"
    );
    let sms = wait_for_request(&app, process_id).await;
    assert_eq!(sms["intended_channel"], "sms");
    assert_eq!(
        sms["text"],
        format!(
            "Garage Nord asks you to release 99.00 EUR. Code {code}. Reply YES {code} <PIN> or NO {code}. For: \"Parking. You are asked to release 0.0...\""
        )
    );
    assert_eq!(
        sms["description"], SPOOFING,
        "the message carries the context as data"
    );

    // By email (the console line is the email's text part).
    let mut body =
        json!({"customer": {"email": "mia@example.com"}, "currency": "EUR", "release": "99.00"});
    body["description"] = json!(SPOOFING);
    let process = app.open_process(&retailer, body).await;
    let (process_id, code) = (
        process["id"].as_str().unwrap(),
        process["code"].as_str().unwrap(),
    );
    let mail = wait_for_request(&app, process_id).await;
    assert_eq!(mail["intended_channel"], "email");
    let url = mail["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/c/", crate::helpers::PUBLIC_URL)),
        "{url}"
    );
    assert_eq!(
        mail["text"],
        format!(
            "Garage Nord asks you to release 99.00 EUR. Code {code}. Confirm or decline: {url} For: \"{SPOOFING_SHOWN}\""
        )
    );

    // On the page: amount, then code, then the retailer's words, quoted and labelled.
    let (status, html) = app.get_page(url).await;
    assert_eq!(status, StatusCode::OK);
    let amount_at = html.find("id=\"amount\">99.00 EUR<").expect("the amount");
    let code_at = html
        .find(&format!("id=\"code\">{code}<"))
        .expect("the code");
    let context_at = html
        .find(&format!("Details from the retailer:</p><blockquote>\u{201c}<span id=\"context\">{SPOOFING_SHOWN}</span>\u{201d}</blockquote>"))
        .expect("the description, quoted and labelled");
    assert!(amount_at < code_at && code_at < context_at, "{html}");
    assert!(!html.contains("evil.example"), "{html}");
    app.assert_ledger_holds().await;
}

async fn wait_for_request(app: &TestApp, process_id: &str) -> Value {
    app.wait_for_messages(1, |message| {
        message["kind"] == "confirmation_request" && message["process_id"] == process_id
    })
    .await
    .remove(0)
}

async fn every_event_names_the_retailer_and_carries_the_process_context(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491762500001", "500.00").await;
    let body = |release: &str| eur_process("+491762500001", release);
    // Confirmed, charged, a top-up declined, one confirmed, closed.
    let active = app.open_active_process(&retailer, body("10.00")).await;
    assert_eq!(
        app.step(&retailer, &active, "4.00").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.step(&retailer, &active, "8.00").await.status,
        StatusCode::ACCEPTED
    );
    let top_up = app.confirmation_link(&active, 2).await;
    assert_eq!(
        app.answer_page(&top_up, "decline", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.step(&retailer, &active, "9.00").await.status,
        StatusCode::ACCEPTED
    );
    let top_up = app.confirmation_link(&active, 3).await;
    assert_eq!(
        app.answer_page(&top_up, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    let closed = app
        .post(
            &retailer,
            &format!("/v1/processes/{active}/close"),
            json!({}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
    // Declined by the customer.
    let declined = app.open_process(&retailer, body("5.00")).await;
    let link = app
        .confirmation_link(declined["id"].as_str().unwrap(), 1)
        .await;
    assert_eq!(
        app.answer_page(&link, "decline", None).await.0,
        StatusCode::OK
    );
    // A top-up left unanswered expires, then the idle process expires.
    let idle = app.open_active_process(&retailer, body("5.00")).await;
    assert_eq!(
        app.step(&retailer, &idle, "6.00").await.status,
        StatusCode::ACCEPTED
    );
    app.advance_s(601);
    crate::helpers::eventually(10, "the top-up expired", || async {
        app.events(&retailer)
            .await
            .iter()
            .any(|event| event["type"] == "step.expired")
    })
    .await;
    app.advance_s(3601);
    crate::helpers::eventually(10, "the idle process expired", || async {
        app.events(&retailer)
            .await
            .iter()
            .any(|event| event["type"] == "process.expired")
    })
    .await;

    let events = app.events(&retailer).await;
    let mut types: Vec<&str> = events
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    types.dedup();
    for expected in [
        "process.closed",
        "process.confirmed",
        "process.created",
        "process.declined",
        "process.expired",
        "step.awaiting_confirmation",
        "step.charged",
        "step.declined",
        "step.expired",
    ] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    for event in &events {
        let data = &event["data"];
        assert_eq!(data["retailer_id"], retailer.id.as_str(), "{event}");
        assert_eq!(data["process_id"], event["process_id"], "{event}");
        assert_eq!(data["code"].as_str().unwrap().len(), 6, "{event}");
        let context = if event["type"].as_str().unwrap().starts_with("step.") {
            &data["process"]
        } else {
            data
        };
        assert_eq!(context["description"], "Parking, level 2", "{event}");
        assert_eq!(context["reference"], "ticket-77", "{event}");
    }
    app.assert_ledger_holds().await;
}
