//! WAP push end to end: the daemon pushes confirmation requests as Service Indications
//! through Kannel's PPG (Debian `kannel`), which sends them as WAP push SMS to the test SMSC;
//! the tests decode what the SMSC got with Debian's `wbxml2xml`.

use std::path::Path;
use std::time::Duration;

use paystep_channels::wap_push::WapPushSettings;
use quick_xml::events::Event;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app_with, Db, Retailer, TestApp, PIN, PUBLIC_URL};
use crate::on_both_databases;
use crate::sms::{sms_settings, Smsc};

#[path = "../peers/kannel/kannel.rs"]
#[allow(dead_code)]
mod kannel;
use kannel::{decode_push, wap_pushes, Kannel, ReceivedPush};

/// Inside Kannel's allowed prefix (+4917...).
const PUSHABLE: &str = "+491701234567";
/// Outside it: Kannel refuses pushes to it with PAP 2001.
const REFUSED: &str = "+493012345678";
/// The token in the URL the PPG posts its result notifications to.
const NOTIFY_TOKEN: &str = "n0t1fy-t0ken-0123456789abcdefghijklmn";

pub fn wap_push_settings(ppg_url: &str) -> WapPushSettings {
    WapPushSettings {
        ppg_url: ppg_url.to_string(),
        username: Some(kannel::PPG_USERNAME.to_string()),
        password: Some(kannel::PPG_PASSWORD.into()),
        address_domain: Some("ppg.example".to_string()),
        application_id: "x-wap-application:wml.ua".to_string(),
        timeout_ms: 5_000,
        connect_timeout_ms: 1_000,
        fallback_after_s: 0,
        notify_url: None,
    }
}

/// The daemon with SMS (for receipts and fallbacks) and WAP push.
async fn app_with_push(db: Db, smsc: &Smsc, ppg_url: &str) -> TestApp {
    app_with_push_fallback_after(db, smsc, ppg_url, 0).await
}

async fn app_with_push_fallback_after(
    db: Db,
    smsc: &Smsc,
    ppg_url: &str,
    fallback_after_s: u64,
) -> TestApp {
    let smpp_port = smsc.smpp_port;
    let ppg_url = ppg_url.to_string();
    let app = spawn_app_with(db, move |settings| {
        settings.channels.sms = Some(sms_settings(smpp_port));
        settings.channels.wap_push = Some(WapPushSettings {
            fallback_after_s,
            notify_url: Some(format!("{PUBLIC_URL}/peers/wap_push/{NOTIFY_TOKEN}").into()),
            ..wap_push_settings(&ppg_url)
        });
        settings.outbox.retry_base_ms = 100;
        settings.outbox.retry_max_ms = 300;
    })
    .await;
    smsc.wait_for_bind().await;
    app
}

async fn push_customer(app: &TestApp, msisdn: &str) -> String {
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": msisdn, "pin": PIN, "preferred_channel": "wap_push"}),
        "100.00",
    )
    .await
}

async fn open(app: &TestApp, retailer: &Retailer, msisdn: &str) -> Value {
    app.open_process(
        retailer,
        json!({"customer": {"msisdn": msisdn}, "currency": "EUR", "release": "20.00",
               "description": "Parking, level 2"}),
    )
    .await
}

/// The outbox messages of a process on one channel.
async fn outbox_of(app: &TestApp, process_id: &str, channel: &str) -> Vec<Value> {
    let listed = app.admin_get("/admin/v1/outbox?limit=100").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    listed.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|message| message["process_id"] == process_id && message["channel"] == channel)
        .cloned()
        .collect()
}

/// Waits until the SMSC has received `count` WAP pushes to `msisdn`.
async fn wait_for_pushes(
    smsc: &Smsc,
    kannel: &Kannel,
    msisdn: &str,
    count: usize,
) -> Vec<ReceivedPush> {
    let destination = msisdn.trim_start_matches('+');
    for _ in 0..400 {
        let pushes: Vec<ReceivedPush> = wap_pushes(&smsc.submits().await)
            .into_iter()
            .filter(|push| push.destination == destination)
            .collect();
        if pushes.len() >= count {
            return pushes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {count} WAP pushes to {msisdn}; the SMSC has {:#?}\n{}",
        smsc.submits().await,
        kannel.logs()
    );
}

/// The attributes and text of the SI's `<indication>`.
#[derive(Debug, Default)]
struct Indication {
    href: String,
    si_id: String,
    created: String,
    si_expires: String,
    text: String,
}

fn indication(xml: &str) -> Indication {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut found = Indication::default();
    let mut inside = false;
    loop {
        match reader.read_event().expect("the decoded SI is XML") {
            Event::Start(element) if element.name().as_ref() == b"indication" => {
                inside = true;
                for attribute in element.attributes() {
                    let attribute = attribute.unwrap();
                    let value = attribute.unescape_value().unwrap().into_owned();
                    match attribute.key.as_ref() {
                        b"href" => found.href = value,
                        b"si-id" => found.si_id = value,
                        b"created" => found.created = value,
                        b"si-expires" => found.si_expires = value,
                        _ => {}
                    }
                }
            }
            Event::Text(text) if inside => found.text.push_str(&text.decode().unwrap()),
            // quick-xml hands entities over apart from the text around them.
            Event::GeneralRef(reference) if inside => {
                let name = reference.decode().unwrap().into_owned();
                let character = match reference.resolve_char_ref().unwrap() {
                    Some(character) => character,
                    None => match name.as_str() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => panic!("an unknown entity &{other}; in the SI"),
                    },
                };
                found.text.push(character);
            }
            Event::End(element) if element.name().as_ref() == b"indication" => inside = false,
            Event::Eof => return found,
            _ => {}
        }
    }
}

fn wap_date(rfc3339: &str, plus_s: i64) -> String {
    let at =
        chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap() + chrono::Duration::seconds(plus_s);
    at.with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn a_confirmation_request_is_pushed_through_kannel_and_confirmed(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let app = app_with_push(db, &smsc, &kannel.ppg_url()).await;
    let retailer = app.create_retailer().await;
    push_customer(&app, PUSHABLE).await;
    let process = open(&app, &retailer, PUSHABLE).await;
    let process_id = process["id"].as_str().unwrap();

    let pushes = wait_for_pushes(&smsc, &kannel, PUSHABLE, 1).await;
    let submits = smsc.submits().await;
    let first = submits
        .iter()
        .find(|submit| submit["data_coding"] == 4)
        .expect("a WAP push submit");
    // WAP push over SMS: 8-bit data, a UDH addressing port 2948 (the push port) from 9200.
    assert_eq!(first["data_coding"], 4);
    assert!(
        first["udh_hex"].as_str().unwrap().contains("05040b8423f0"),
        "{first}"
    );
    let xml = decode_push(&pushes[0]).await;
    let si = indication(&xml);

    let messages = outbox_of(&app, process_id, "wap_push").await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert_eq!(message["kind"], "confirmation_request");
    assert_eq!(si.si_id, message["id"].as_str().unwrap(), "{xml}");
    let ttl_s = app.engine.settings.engine.confirmation_ttl_s;
    // The request's expiry, or a second before it (see wap_push::wap_date).
    let created_at = message["created_at"].as_str().unwrap();
    assert!(
        [wap_date(created_at, ttl_s), wap_date(created_at, ttl_s - 1)].contains(&si.si_expires),
        "{xml}"
    );
    // Same format, so the strings order as the times do: made when it was sent.
    assert!(
        si.created >= wap_date(message["created_at"].as_str().unwrap(), -1),
        "{xml}"
    );
    let code = process["code"].as_str().unwrap();
    assert!(
        si.text.contains("Garage Nord") && si.text.contains("20.00 EUR") && si.text.contains(code),
        "the SI says retailer, amount and code: {xml}"
    );
    assert!(si.href.starts_with(PUBLIC_URL), "{xml}");

    // Following the link shows the request and changes nothing.
    let (status, page) = app.get_page(&si.href).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("20.00"), "{page}");
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );
    let (status, page) = app.get_page(&si.href).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );

    let (status, page) = app.answer_page(&si.href, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(app.process(&retailer, process_id).await["status"], "active");
    // The receipt of the release goes by SMS: an SI is a link, not a receipt.
    let receipts: Vec<Value> = outbox_of(&app, process_id, "sms").await;
    assert!(!receipts.is_empty(), "a receipt by SMS");
    assert_eq!(outbox_of(&app, process_id, "wap_push").await.len(), 1);
    app.assert_ledger_holds().await;
}

async fn a_push_while_kannel_is_down_arrives_once_after_it_is_back(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let mut kannel = Kannel::start(smsc.smpp_port).await;
    let app = app_with_push(db, &smsc, &kannel.ppg_url()).await;
    let retailer = app.create_retailer().await;
    push_customer(&app, PUSHABLE).await;
    kannel.stop().await;

    let process = open(&app, &retailer, PUSHABLE).await;
    let process_id = process["id"].as_str().unwrap().to_string();
    eventually(20, "the push has been tried and refused twice", || async {
        let messages = outbox_of(&app, &process_id, "wap_push").await;
        messages.len() == 1
            && messages[0]["status"] == "queued"
            && messages[0]["attempts"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    let waiting = &outbox_of(&app, &process_id, "wap_push").await[0];
    assert!(
        waiting["last_error"]
            .as_str()
            .unwrap()
            .contains("the PPG did not answer"),
        "{waiting}"
    );

    kannel.restart().await;
    eventually(20, "the push is delivered", || async {
        outbox_of(&app, &process_id, "wap_push").await[0]["status"] == "delivered"
    })
    .await;
    // The first push reaches the SMSC; a second one follows it. Once both are there, the
    // SMSC holds exactly two pushes, one of each: the retries before Kannel came back sent
    // nothing, and the delivered push is never sent again. (Kannel may pass pushes on out of
    // order right after a restart, so the order is not checked.)
    wait_for_pushes(&smsc, &kannel, PUSHABLE, 1).await;
    let second = open(&app, &retailer, PUSHABLE).await;
    let second_id = second["id"].as_str().unwrap().to_string();
    let pushes = wait_for_pushes(&smsc, &kannel, PUSHABLE, 2).await;
    let mut si_ids = Vec::new();
    for push in &pushes {
        si_ids.push(indication(&decode_push(push).await).si_id);
    }
    let first_id = outbox_of(&app, &process_id, "wap_push").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second_message = outbox_of(&app, &second_id, "wap_push").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    si_ids.sort();
    let mut expected = vec![first_id, second_message];
    expected.sort();
    assert_eq!(si_ids, expected, "each push exactly once");
}

async fn a_push_refused_for_good_is_dead_lettered_and_goes_by_sms_once(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let app = app_with_push(db, &smsc, &kannel.ppg_url()).await;
    let retailer = app.create_retailer().await;
    push_customer(&app, REFUSED).await;
    let process = open(&app, &retailer, REFUSED).await;
    let process_id = process["id"].as_str().unwrap().to_string();

    eventually(
        20,
        "the refused push is dead and its SMS delivered",
        || async {
            let pushes = outbox_of(&app, &process_id, "wap_push").await;
            let sms = outbox_of(&app, &process_id, "sms").await;
            pushes.len() == 1
                && pushes[0]["status"] == "dead"
                && sms.iter().any(|message| message["status"] == "delivered")
        },
    )
    .await;
    let push = &outbox_of(&app, &process_id, "wap_push").await[0];
    assert!(
        push["last_error"].as_str().unwrap().contains("PAP 2001"),
        "the dead letter names the PAP code: {push}"
    );
    let sms = outbox_of(&app, &process_id, "sms").await;
    assert_eq!(sms.len(), 1, "one SMS stands in for the push: {sms:#?}");
    assert_eq!(sms[0]["fallback_for"], push["id"]);
    assert_eq!(sms[0]["kind"], "confirmation_request");
    let code = process["code"].as_str().unwrap();
    let texts = smsc
        .wait_for_submits(REFUSED.trim_start_matches('+'), 1, |text| {
            text.contains(code)
        })
        .await;
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert!(
        texts[0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("YES {code}")),
        "{}",
        texts[0]
    );
}

async fn an_unanswered_push_goes_by_sms_once_after_the_fallback_time(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let app = app_with_push_fallback_after(db, &smsc, &kannel.ppg_url(), 60).await;
    let retailer = app.create_retailer().await;
    push_customer(&app, PUSHABLE).await;
    let unanswered = open(&app, &retailer, PUSHABLE).await;
    let unanswered_id = unanswered["id"].as_str().unwrap().to_string();
    let answered = open(&app, &retailer, PUSHABLE).await;
    let answered_id = answered["id"].as_str().unwrap().to_string();
    let pushes = wait_for_pushes(&smsc, &kannel, PUSHABLE, 2).await;
    // The customer answers the second push and ignores the first.
    let answered_push = &outbox_of(&app, &answered_id, "wap_push").await[0];
    let mut answered_link = None;
    for push in &pushes {
        let si = indication(&decode_push(push).await);
        if si.si_id == answered_push["id"].as_str().unwrap() {
            answered_link = Some(si.href);
        }
    }
    let (status, page) = app
        .answer_page(
            &answered_link.expect("its push arrived"),
            "confirm",
            Some(PIN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");

    let fallbacks = |process_id: String| {
        let app = &app;
        async move {
            outbox_of(app, &process_id, "sms")
                .await
                .into_iter()
                .filter(|message| !message["fallback_for"].is_null())
                .collect::<Vec<Value>>()
        }
    };
    app.advance_s(61);
    eventually(20, "the unanswered request goes by SMS", || async {
        fallbacks(unanswered_id.clone())
            .await
            .iter()
            .any(|message| message["status"] == "delivered")
    })
    .await;
    let sent = fallbacks(unanswered_id.clone()).await;
    assert_eq!(sent.len(), 1, "{sent:#?}");
    let unanswered_push = &outbox_of(&app, &unanswered_id, "wap_push").await[0];
    assert_eq!(sent[0]["fallback_for"], unanswered_push["id"]);
    assert_eq!(
        unanswered_push["status"], "delivered",
        "the push stays as it was"
    );
    // The scan that found the unanswered one passed the answered one by: it gets none.
    assert!(fallbacks(answered_id.clone()).await.is_empty());
    let code = unanswered["code"].as_str().unwrap();
    smsc.wait_for_submits(PUSHABLE.trim_start_matches('+'), 1, |text| {
        text.contains(&format!("YES {code}"))
    })
    .await;
}

/// A PAP result notification as a PPG posts it.
fn notification(push_id: &str, state: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 2.0//EN" "http://www.wapforum.org/DTD/pap_2.0.dtd">
<pap><resultnotification-message push-id="{push_id}" message-state="{state}" code="4000" desc="Service failure">
<address address-value="WAPPUSH={PUSHABLE}/TYPE=PLMN@ppg.example"/></resultnotification-message></pap>"#
    )
}

async fn notify(app: &TestApp, token: &str, body: String) -> (StatusCode, String) {
    let response = app
        .client
        .post(app.url(&format!("/peers/wap_push/{token}")))
        .header("content-type", "application/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// Kannel sends no result notifications for unconfirmed pushes (and confirmed ones it does
/// not send at all), so the test posts them as a PPG would.
async fn a_result_notification_records_the_state_and_an_undeliverable_push_goes_by_sms(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let app = app_with_push(db, &smsc, &kannel.ppg_url()).await;
    let retailer = app.create_retailer().await;
    push_customer(&app, PUSHABLE).await;
    let process = open(&app, &retailer, PUSHABLE).await;
    let process_id = process["id"].as_str().unwrap().to_string();
    eventually(20, "the push is accepted", || async {
        outbox_of(&app, &process_id, "wap_push").await[0]["status"] == "delivered"
    })
    .await;
    let push = outbox_of(&app, &process_id, "wap_push").await.remove(0);
    let push_id = format!("{}@paystep", push["id"].as_str().unwrap());

    // A wrong token or a body that is no notification changes nothing.
    let (status, _) = notify(
        &app,
        "wrong-token-0123456789abcdefghijklmnop",
        notification(&push_id, "undeliverable"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = notify(&app, NOTIFY_TOKEN, "<pap><push-message/></pap>".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(outbox_of(&app, &process_id, "sms")
        .await
        .iter()
        .all(|m| m["fallback_for"].is_null()));

    let (status, answer) =
        notify(&app, NOTIFY_TOKEN, notification(&push_id, "undeliverable")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer.contains(&format!(
            r#"<resultnotification-response push-id="{push_id}" code="1000""#
        )),
        "{answer}"
    );
    // The same notification again (a PPG retrying) is harmless.
    let (status, _) = notify(&app, NOTIFY_TOKEN, notification(&push_id, "undeliverable")).await;
    assert_eq!(status, StatusCode::OK);
    eventually(
        20,
        "the SMS that stands in for the push is delivered",
        || async {
            outbox_of(&app, &process_id, "sms")
                .await
                .iter()
                .any(|message| {
                    !message["fallback_for"].is_null() && message["status"] == "delivered"
                })
        },
    )
    .await;
    let pushed = &outbox_of(&app, &process_id, "wap_push").await[0];
    assert_eq!(pushed["delivery_state"], "UNDELIVERABLE", "{pushed}");
    let fallbacks: Vec<Value> = outbox_of(&app, &process_id, "sms")
        .await
        .into_iter()
        .filter(|message| !message["fallback_for"].is_null())
        .collect();
    assert_eq!(fallbacks.len(), 1, "{fallbacks:#?}");
    assert_eq!(fallbacks[0]["fallback_for"], pushed["id"]);
}

on_both_databases!(
    a_result_notification_records_the_state_and_an_undeliverable_push_goes_by_sms,
    an_unanswered_push_goes_by_sms_once_after_the_fallback_time,
    a_confirmation_request_is_pushed_through_kannel_and_confirmed,
    a_push_while_kannel_is_down_arrives_once_after_it_is_back,
    a_push_refused_for_good_is_dead_lettered_and_goes_by_sms_once,
);

/// `paystep check-config` asks the PPG.
#[tokio::test]
async fn check_config_reports_the_ppg() {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let kannel = Kannel::start(smsc.smpp_port).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = check_config(dir.path(), &kannel.ppg_url()).await;
    assert!(running.0.contains("channel wap_push: ok"), "{running:?}");
    let refused = check_config(dir.path(), &format!("http://127.0.0.1:{closed}/wappush")).await;
    assert!(
        refused
            .0
            .contains("channel wap_push: wap_push is unhealthy: the PPG at")
            && refused.0.contains("does not answer"),
        "{refused:?}"
    );
    assert_eq!(refused.1, Some(1));
}

async fn check_config(dir: &Path, ppg_url: &str) -> (String, Option<i32>) {
    let file = dir.join("check.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"sqlite://{}/check.db\"\n[channels.wap_push]\nppg_url = \"{ppg_url}\"\n\
             username = \"{}\"\npassword = \"{}\"\n",
            dir.display(),
            kannel::PPG_USERNAME,
            kannel::PPG_PASSWORD
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystep"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !text.contains(kannel::PPG_PASSWORD),
        "a secret in the output: {text}"
    );
    (text, output.status.code())
}
