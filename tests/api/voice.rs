//! Voice calls end to end (`twiml` dialect) against a stand-in voice platform
//! (`tests/peers/voice_platform.py`) that signs every request with the official `twilio`
//! package: the call is placed, the platform fetches the script, keys go back, the request
//! is answered through the same path as the page's.

use std::time::Duration;

use paystep_channels::voice::{Dialect, VoiceIdSettings, VoiceSettings};
use quick_xml::events::Event;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app_with, Db, Retailer, TestApp, PIN, PUBLIC_URL};
use crate::on_both_databases;
use crate::sms::{sms_settings, Smsc};

#[path = "../peers/voice_platform.rs"]
mod voice_platform;
use voice_platform::{Platform, ACCOUNT_SID, AUTH_TOKEN, VXML_SECRET};

const CUSTOMER: &str = "+491701112233";

fn voice_settings(platform: &Platform) -> VoiceSettings {
    VoiceSettings {
        dialect: Dialect::Twiml,
        api_url: Some(platform.url("")),
        account_sid: Some(ACCOUNT_SID.to_string()),
        auth_token: Some(AUTH_TOKEN.into()),
        originate_url: None,
        secret: None,
        incoming_token: None,
        from: "+4930123456".to_string(),
        timeout_ms: 5_000,
        connect_timeout_ms: 1_000,
        busy_retries: 2,
        busy_retry_delay_s: 0,
        voice_id: None,
    }
}

async fn app_with_voice(db: Db, platform: &Platform) -> TestApp {
    let voice = voice_settings(platform);
    let app = spawn_app_with(db, move |settings| {
        settings.channels.voice = Some(voice);
    })
    .await;
    // The platform reaches the daemon behind the public URL, as through a reverse proxy.
    platform
        .control(
            "/_control/route",
            json!({"from": PUBLIC_URL, "to": app.address}),
        )
        .await;
    app
}

/// One TwiML verb: its name, attributes and text.
type Verb = (String, Vec<(String, String)>, String);

/// The TwiML verbs of a document, in order, with their attributes and text; the document
/// must be well-formed XML.
fn verbs(twiml: &str) -> Vec<Verb> {
    let mut reader = quick_xml::Reader::from_str(twiml);
    let mut found: Vec<Verb> = Vec::new();
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|error| panic!("not XML ({error}): {twiml}"))
        {
            Event::Start(element) | Event::Empty(element) => {
                let attributes = element
                    .attributes()
                    .map(|attribute| {
                        let attribute = attribute.unwrap();
                        (
                            String::from_utf8(attribute.key.as_ref().to_vec()).unwrap(),
                            attribute.unescape_value().unwrap().into_owned(),
                        )
                    })
                    .collect();
                let name = String::from_utf8(element.name().as_ref().to_vec()).unwrap();
                found.push((name, attributes, String::new()));
            }
            Event::Text(text) => {
                if let Some(last) = found.last_mut() {
                    last.2.push_str(&text.decode().unwrap());
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(last) = found.last_mut() {
                    last.2.push_str(match reference.decode().unwrap().as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        _ => "'",
                    });
                }
            }
            Event::Eof => return found,
            _ => {}
        }
    }
}

fn attribute<'a>(verb: &'a Verb, name: &str) -> &'a str {
    verb.1
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .unwrap_or_default()
}

fn said(twiml: &str) -> String {
    verbs(twiml)
        .into_iter()
        .filter(|verb| verb.0 == "Say")
        .map(|verb| verb.2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A step that fits the release, then one that does not: 202, and the top-up request goes
/// out as a call.
async fn step_until_a_top_up_is_asked(app: &TestApp, retailer: &Retailer, process_id: &str) {
    let fits = app.step(retailer, process_id, "10.00").await;
    assert_eq!(fits.status, StatusCode::CREATED, "{}", fits.body);
    let too_big = app.step(retailer, process_id, "5.00").await;
    assert_eq!(too_big.status, StatusCode::ACCEPTED, "{}", too_big.body);
}

/// After the top-up was confirmed: every step charged, the process closes, the ledger holds.
async fn close_after_the_top_up(app: &TestApp, retailer: &Retailer, process_id: &str) {
    let steps = app
        .get(retailer, &format!("/v1/processes/{process_id}/steps"))
        .await;
    let statuses: Vec<&Value> = steps.body["steps"]
        .as_array()
        .expect("a list of steps")
        .iter()
        .map(|step| &step["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!("charged"), &json!("charged")],
        "{}",
        steps.body
    );
    let closed = app
        .post(
            retailer,
            &format!("/v1/processes/{process_id}/close"),
            json!({}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
    assert_eq!(closed.body["status"], "closed");
    app.assert_ledger_holds().await;
}

async fn wait_for_call(platform: &Platform, to: &str, nth: usize) -> Value {
    let mut calls = Vec::new();
    for _ in 0..300 {
        calls = platform
            .calls()
            .await
            .into_iter()
            .filter(|call| call["to"] == to)
            .collect();
        if calls.len() >= nth {
            return calls[nth - 1].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no call {nth} to {to}: {calls:#?}");
}

async fn a_voice_request_is_confirmed_by_keying_the_pin(db: Db) {
    let platform = Platform::start().await;
    let app = app_with_voice(db, &platform).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": CUSTOMER, "pin": PIN, "preferred_channel": "voice"}),
        "100.00",
    )
    .await;
    let process = app
        .open_process(
            &retailer,
            json!({"customer": {"msisdn": CUSTOMER}, "currency": "EUR", "release": "12.50",
                   "description": "Parking, level 2"}),
        )
        .await;
    let process_id = process["id"].as_str().unwrap();
    let call = wait_for_call(&platform, CUSTOMER, 1).await;
    let sid = call["sid"].as_str().unwrap();
    assert_eq!(call["from"], "+4930123456");
    assert_eq!(call["method"], "POST");
    let script_url = call["url"].as_str().unwrap();
    assert!(
        script_url.starts_with(&format!("{PUBLIC_URL}/voice/twiml/calls/")),
        "{call}"
    );
    assert_eq!(call["status_callback"], format!("{script_url}/status"));

    // A request without a valid signature changes nothing: the call is not even bound.
    let (status, _) = platform
        .step("/_control/fetch", json!({"sid": sid, "tamper": true}))
        .await;
    assert_eq!(status, 403);

    let (status, script) = platform.step("/_control/fetch", json!({"sid": sid})).await;
    assert_eq!(status, 200, "{script}");
    let script_verbs = verbs(&script);
    let gather = script_verbs
        .iter()
        .find(|verb| verb.0 == "Gather")
        .expect("a Gather");
    assert_eq!(attribute(gather, "input"), "dtmf");
    assert_eq!(attribute(gather, "finishOnKey"), "#");
    assert_eq!(attribute(gather, "method"), "POST");
    assert_eq!(attribute(gather, "action"), format!("{script_url}/answer"));
    let say = script_verbs.iter().find(|verb| verb.0 == "Say").unwrap();
    assert_eq!(attribute(say, "language"), "en-GB");
    assert_eq!(
        say.2,
        "Garage Nord asks you to release twelve euros fifty for Parking, level 2. \
         Please enter your PIN, then press the hash key."
    );
    assert!(!script.contains(PIN));

    // Another call cannot use this call's URLs.
    let (status, _) = platform
        .step(
            "/_control/fetch",
            json!({"sid": sid, "call_sid": "CAffffffffffffffffffffffffffffffff"}),
        )
        .await;
    assert_eq!(status, 403);

    // A wrong PIN asks again.
    let (status, again) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": "0000"}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert!(
        said(&again).starts_with("That PIN is not right. Please try again."),
        "{again}"
    );
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );

    let (status, done) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": PIN}))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(said(&done), "Thank you. The amount is released. Goodbye.");
    assert!(verbs(&done).iter().any(|verb| verb.0 == "Hangup"));
    assert_eq!(app.process(&retailer, process_id).await["status"], "active");
    // The receipt is no call: it goes where SMS would (here the console stands in).
    let receipts = app
        .wait_for_messages(1, |message| {
            message["kind"] == "receipt" && message["process_id"] == process_id
        })
        .await;
    assert_eq!(receipts[0]["intended_channel"], "sms");

    // The same answer replayed is refused and changes nothing.
    let (status, _) = platform
        .step("/_control/gather", json!({"sid": sid, "replay": true}))
        .await;
    assert_eq!(status, 403);

    assert_eq!(platform.calls().await.len(), 1, "one call: the request");
    // The call's outcome is recorded on its message.
    let (status, _) = platform
        .step(
            "/_control/status",
            json!({"sid": sid, "status": "completed"}),
        )
        .await;
    assert_eq!(status, 204);
    eventually(10, "the call's state is on its message", || async {
        let listed = app.admin_get("/admin/v1/outbox?limit=100").await;
        listed.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|message| {
                message["channel"] == "voice" && message["delivery_state"] == "COMPLETED"
            })
    })
    .await;
    // Steps, a top-up confirmed by a second call, close.
    step_until_a_top_up_is_asked(&app, &retailer, process_id).await;
    let second = wait_for_call(&platform, CUSTOMER, 2).await;
    let sid = second["sid"].as_str().unwrap();
    let (_, script) = platform.step("/_control/fetch", json!({"sid": sid})).await;
    assert!(
        said(&script).starts_with("Garage Nord asks for twelve euros fifty more"),
        "{script}"
    );
    let (_, done) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": PIN}))
        .await;
    assert_eq!(said(&done), "Thank you. The amount is released. Goodbye.");
    close_after_the_top_up(&app, &retailer, process_id).await;
}

async fn without_a_pin_one_approves_and_two_declines_and_silence_ends_politely(db: Db) {
    let platform = Platform::start().await;
    let app = app_with_voice(db, &platform).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Jonas", "msisdn": CUSTOMER, "language": "de", "preferred_channel": "voice"}),
        "100.00",
    )
    .await;
    let open = |release: &str| {
        let (app, retailer) = (&app, &retailer);
        let body = json!({"customer": {"msisdn": CUSTOMER}, "currency": "EUR", "release": release,
                          "description": "Kaffee"});
        async move { app.open_process(retailer, body).await }
    };
    let declined = open("1.00").await;
    let call = wait_for_call(&platform, CUSTOMER, 1).await;
    let sid = call["sid"].as_str().unwrap().to_string();
    let (_, script) = platform.step("/_control/fetch", json!({"sid": sid})).await;
    let gather = verbs(&script)
        .into_iter()
        .find(|verb| verb.0 == "Gather")
        .unwrap();
    assert_eq!(attribute(&gather, "numDigits"), "1");
    assert_eq!(
        said(&script),
        "Garage Nord bittet um Freigabe von ein Euro für Kaffee. Zum Freigeben drücken Sie \
         die 1, zum Ablehnen die 2. Wir haben keine Taste gehört. Auf Wiederhören."
    );
    // Another key asks which one; 2 declines.
    let (_, which) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": "7"}))
        .await;
    assert!(
        said(&which).starts_with("Bitte drücken Sie die 1"),
        "{which}"
    );
    let (_, done) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": "2"}))
        .await;
    assert_eq!(said(&done), "Die Anfrage ist abgelehnt. Auf Wiederhören.");
    assert_eq!(
        app.process(&retailer, declined["id"].as_str().unwrap())
            .await["status"],
        "declined"
    );

    // Silence once asks again; twice ends the call and leaves the request open.
    let silent = open("2.00").await;
    let call = wait_for_call(&platform, CUSTOMER, 2).await;
    let sid = call["sid"].as_str().unwrap().to_string();
    platform.step("/_control/fetch", json!({"sid": sid})).await;
    let (_, again) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": ""}))
        .await;
    assert!(
        said(&again).starts_with("Wir haben keine Taste gehört. Garage Nord"),
        "{again}"
    );
    let (_, bye) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": ""}))
        .await;
    assert_eq!(said(&bye), "Wir haben keine Taste gehört. Auf Wiederhören.");
    assert_eq!(
        app.process(&retailer, silent["id"].as_str().unwrap()).await["status"],
        "awaiting_confirmation"
    );

    // 1 approves, on a third call.
    let approved = open("3.00").await;
    let call = wait_for_call(&platform, CUSTOMER, 3).await;
    let sid = call["sid"].as_str().unwrap().to_string();
    platform.step("/_control/fetch", json!({"sid": sid})).await;
    let (_, done) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": "1"}))
        .await;
    assert_eq!(
        said(&done),
        "Danke. Der Betrag ist freigegeben. Auf Wiederhören."
    );
    assert_eq!(
        app.process(&retailer, approved["id"].as_str().unwrap())
            .await["status"],
        "active"
    );
    // Hung up before any answer: the request stays open until it expires; no new call.
    let hung_up = open("4.00").await;
    let call = wait_for_call(&platform, CUSTOMER, 4).await;
    let sid = call["sid"].as_str().unwrap().to_string();
    platform.step("/_control/fetch", json!({"sid": sid})).await;
    let (status, _) = platform
        .step(
            "/_control/status",
            json!({"sid": sid, "status": "completed"}),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        app.process(&retailer, hung_up["id"].as_str().unwrap())
            .await["status"],
        "awaiting_confirmation"
    );
    assert_eq!(
        platform.calls().await.len(),
        4,
        "no call again after a hang-up"
    );
    app.assert_ledger_holds().await;
}

async fn a_number_the_platform_refuses_is_a_dead_letter(db: Db) {
    let platform = Platform::start().await;
    let app = app_with_voice(db, &platform).await;
    platform
        .control(
            "/_control/refuse",
            json!({"status": 400, "body": {"code": 21211, "message": "Invalid 'To' Phone Number"}}),
        )
        .await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": CUSTOMER, "pin": PIN, "preferred_channel": "voice"}),
        "100.00",
    )
    .await;
    app.open_process(
        &retailer,
        json!({"customer": {"msisdn": CUSTOMER}, "currency": "EUR", "release": "5.00"}),
    )
    .await;
    eventually(10, "the refused call is a dead letter", || async {
        let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
        dead.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|message| {
                message["channel"] == "voice"
                    && message["last_error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("21211")
            })
    })
    .await;
    assert_eq!(
        app.admin_get("/admin/v1/outbox?status=dead").await.status,
        StatusCode::OK
    );
}

/// Busy, then no answer, then busy again: the call is placed three times, then the request
/// goes by SMS, once; the outbox shows the call and the SMS that stands in for it.
async fn a_busy_line_is_called_again_then_the_request_goes_by_sms(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let smsc = Smsc::start(dir.path()).await;
    let platform = Platform::start().await;
    let voice = voice_settings(&platform);
    let smpp_port = smsc.smpp_port;
    let app = spawn_app_with(db, move |settings| {
        settings.channels.voice = Some(voice);
        settings.channels.sms = Some(sms_settings(smpp_port));
    })
    .await;
    platform
        .control(
            "/_control/route",
            json!({"from": PUBLIC_URL, "to": app.address}),
        )
        .await;
    smsc.wait_for_bind().await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": CUSTOMER, "pin": PIN, "preferred_channel": "voice"}),
        "100.00",
    )
    .await;
    let process = app
        .open_process(
            &retailer,
            json!({"customer": {"msisdn": CUSTOMER}, "currency": "EUR", "release": "12.50"}),
        )
        .await;
    let process_id = process["id"].as_str().unwrap().to_string();
    for (nth, outcome) in [(1, "busy"), (2, "no-answer"), (3, "busy")] {
        let call = wait_for_call(&platform, CUSTOMER, nth).await;
        let (status, _) = platform
            .step(
                "/_control/status",
                json!({"sid": call["sid"], "status": outcome}),
            )
            .await;
        assert_eq!(status, 204);
    }
    let code = process["code"].as_str().unwrap();
    let texts = smsc
        .wait_for_submits(CUSTOMER.trim_start_matches('+'), 1, |text| {
            text.contains(&format!("YES {code}"))
        })
        .await;
    assert_eq!(texts.len(), 1, "{texts:#?}");
    let listed = app.admin_get("/admin/v1/outbox?limit=100").await;
    let messages: Vec<Value> = listed.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|message| message["process_id"] == process_id.as_str())
        .cloned()
        .collect();
    let call = messages
        .iter()
        .find(|message| message["channel"] == "voice")
        .expect("the call's message");
    let sms: Vec<&Value> = messages
        .iter()
        .filter(|message| !message["fallback_for"].is_null())
        .collect();
    assert_eq!(sms.len(), 1, "{messages:#?}");
    assert_eq!(sms[0]["fallback_for"], call["id"]);
    assert_eq!(sms[0]["channel"], "sms");
    assert_eq!(platform.calls().await.len(), 3, "three calls, no fourth");
    assert_eq!(call["delivery_state"], "BUSY");
}

/// Claim 9 by phone: a caller keys a till code and the PIN; an unknown caller hears that the
/// number is not registered, and nothing changes.
async fn a_caller_pays_a_till_code_by_phone(db: Db) {
    let platform = Platform::start().await;
    let app = app_with_voice(db, &platform).await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": CUSTOMER, "pin": PIN}),
        "100.00",
    )
    .await;
    let till = app
        .open_process(
            &retailer,
            json!({"currency": "EUR", "release": "7.50", "description": "Kiosk"}),
        )
        .await;
    let till_id = till["id"].as_str().unwrap();
    let code = till["code"].as_str().unwrap();
    let incoming = format!("{PUBLIC_URL}/voice/twiml/incoming");

    let stranger = platform
        .control(
            "/_control/incoming",
            json!({"from": "+4915100000000", "to": "+4930123456", "url": incoming}),
        )
        .await;
    assert_eq!(stranger["status"], 200);
    assert_eq!(
        said(stranger["body"].as_str().unwrap()),
        "This number is not registered for payments. Goodbye."
    );

    let call = platform
        .control(
            "/_control/incoming",
            json!({"from": CUSTOMER, "to": "+4930123456", "url": incoming}),
        )
        .await;
    assert_eq!(
        said(call["body"].as_str().unwrap()),
        "Please key the code shown at the till, then press the hash key. \
         We did not hear a key. Goodbye."
    );
    let sid = call["sid"].as_str().unwrap();
    let (status, pin_prompt) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": code}))
        .await;
    assert_eq!(status, 200, "{pin_prompt}");
    assert!(
        said(&pin_prompt).starts_with("Please enter your PIN"),
        "{pin_prompt}"
    );
    let (_, wrong) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": "0000"}))
        .await;
    assert!(
        said(&wrong).starts_with("That PIN is not right."),
        "{wrong}"
    );
    assert_eq!(
        app.process(&retailer, till_id).await["status"],
        "awaiting_confirmation"
    );
    let (_, done) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": PIN}))
        .await;
    assert_eq!(said(&done), "Thank you. The amount is released. Goodbye.");
    let process = app.process(&retailer, till_id).await;
    assert_eq!(process["status"], "active", "{process}");
    app.assert_ledger_holds().await;
}

/// Claim 13: with a speaker-verification service, a call records a phrase first; a match
/// lets the PIN count, a rejection or no verdict in time declines and says so.
async fn the_voice_id_hook_accepts_rejects_and_times_out(db: Db) {
    let platform = Platform::start().await;
    let mut voice = voice_settings(&platform);
    voice.voice_id = Some(VoiceIdSettings {
        url: platform.url("/verify"),
        timeout_ms: 1_000,
        max_length_s: 5,
    });
    let app = spawn_app_with(db, move |settings| {
        settings.channels.voice = Some(voice);
    })
    .await;
    platform
        .control(
            "/_control/route",
            json!({"from": PUBLIC_URL, "to": app.address}),
        )
        .await;
    let retailer = app.create_retailer().await;
    let customer = app
        .create_customer_with(
            json!({"name": "Anna", "msisdn": CUSTOMER, "pin": PIN, "preferred_channel": "voice"}),
            "100.00",
        )
        .await;
    let open = || {
        let (app, retailer) = (&app, &retailer);
        async move {
            let process = app
                .open_process(
                    retailer,
                    json!({"customer": {"msisdn": CUSTOMER}, "currency": "EUR", "release": "4.00"}),
                )
                .await;
            process["id"].as_str().unwrap().to_string()
        }
    };

    // A match: the phrase, then the PIN.
    let accepted = open().await;
    let call = wait_for_call(&platform, CUSTOMER, 1).await;
    let sid = call["sid"].as_str().unwrap().to_string();
    let (_, script) = platform.step("/_control/fetch", json!({"sid": sid})).await;
    let record = verbs(&script)
        .into_iter()
        .find(|verb| verb.0 == "Record")
        .expect("a Record");
    assert_eq!(
        attribute(&record, "action"),
        format!("{}/recording", call["url"].as_str().unwrap())
    );
    assert!(
        said(&script).starts_with("After the tone, please say"),
        "{script}"
    );
    let (status, prompt) = platform.step("/_control/record", json!({"sid": sid})).await;
    assert_eq!(status, 200, "{prompt}");
    assert!(
        verbs(&prompt).iter().any(|verb| verb.0 == "Gather"),
        "{prompt}"
    );
    let (_, done) = platform
        .step("/_control/gather", json!({"sid": sid, "digits": PIN}))
        .await;
    assert_eq!(said(&done), "Thank you. The amount is released. Goodbye.");
    assert_eq!(app.process(&retailer, &accepted).await["status"], "active");
    let asked = platform.list("/_verifications").await;
    assert_eq!(asked[0]["customer_id"], customer.as_str());
    assert!(asked[0]["recording_url"]
        .as_str()
        .unwrap()
        .ends_with(".wav"));

    // A rejection, and no verdict in time: declined, and the call says so.
    for (nth, mode, words) in [
        (
            2,
            "reject",
            "Your voice could not be confirmed. The request is declined. Goodbye.",
        ),
        (
            3,
            "slow",
            "Your voice could not be checked in time. The request is declined. Goodbye.",
        ),
    ] {
        platform
            .control("/_control/verifier", json!({"mode": mode}))
            .await;
        let process_id = open().await;
        let call = wait_for_call(&platform, CUSTOMER, nth).await;
        let sid = call["sid"].as_str().unwrap().to_string();
        platform.step("/_control/fetch", json!({"sid": sid})).await;
        let (status, end) = platform.step("/_control/record", json!({"sid": sid})).await;
        assert_eq!(status, 200, "{end}");
        assert_eq!(said(&end), words, "{mode}");
        assert_eq!(
            app.process(&retailer, &process_id).await["status"],
            "declined",
            "{mode}"
        );
    }
    app.assert_ledger_holds().await;
}

/// The VoiceXML 2.1 structure a browser needs: the root and its version, a form, and in it
/// either a field that gathers digits and submits them (its `next` absolute, so resolvable
/// wherever the document came from) or a block that speaks and exits. Returns the prompts.
fn check_vxml(document: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(document);
    let mut path: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut prompts = Vec::new();
    loop {
        let event = reader
            .read_event()
            .unwrap_or_else(|error| panic!("not XML ({error}): {document}"));
        let (element, empty) = match &event {
            Event::Start(element) => (element.clone(), false),
            Event::Empty(element) => (element.clone(), true),
            Event::End(_) => {
                path.pop();
                continue;
            }
            Event::Text(text) => {
                if path.last().is_some_and(|name| name == "prompt") {
                    prompts.push(text.decode().unwrap().into_owned());
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8(element.name().as_ref().to_vec()).unwrap();
        let attribute = |key: &str| {
            element
                .try_get_attribute(key)
                .unwrap()
                .map(|value| value.unescape_value().unwrap().into_owned())
        };
        if path.is_empty() {
            assert_eq!(name, "vxml", "{document}");
            assert_eq!(attribute("version").as_deref(), Some("2.1"), "{document}");
        }
        if name == "submit" {
            let next = attribute("next").expect("a submit has a next");
            assert!(
                next.starts_with(&format!("{PUBLIC_URL}/voice/vxml/")),
                "{next}"
            );
            assert!(attribute("namelist").is_some(), "{document}");
        }
        seen.push(
            format!("{}/{name}", path.join("/"))
                .trim_start_matches('/')
                .to_string(),
        );
        if !empty {
            path.push(name);
        }
    }
    assert!(seen.iter().any(|item| item == "vxml/form"), "{seen:?}");
    let asks = seen
        .iter()
        .any(|item| item == "vxml/form/field/filled/submit");
    let ends = seen.iter().any(|item| item == "vxml/form/block/exit");
    assert!(
        asks || ends,
        "neither a field that submits nor a block that exits: {seen:?}"
    );
    if asks {
        for handler in ["noinput", "nomatch"] {
            assert!(
                seen.iter()
                    .any(|item| item == &format!("vxml/form/field/{handler}/submit")),
                "no {handler} handler: {seen:?}"
            );
        }
        assert!(
            seen.iter().any(|item| item == "vxml/form/field/prompt"),
            "{seen:?}"
        );
    }
    prompts
}

async fn a_voicexml_call_is_confirmed_by_keying_the_pin(db: Db) {
    let platform = Platform::start().await;
    let voice = VoiceSettings {
        dialect: Dialect::Voicexml,
        api_url: None,
        account_sid: None,
        auth_token: None,
        originate_url: Some(platform.url("/originate")),
        secret: Some(VXML_SECRET.into()),
        ..voice_settings(&platform)
    };
    let app = spawn_app_with(db, move |settings| {
        settings.channels.voice = Some(voice);
    })
    .await;
    platform
        .control(
            "/_control/route",
            json!({"from": PUBLIC_URL, "to": app.address}),
        )
        .await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Jonas", "msisdn": CUSTOMER, "pin": PIN, "language": "de",
               "preferred_channel": "voice"}),
        "100.00",
    )
    .await;
    let process = app
        .open_process(
            &retailer,
            json!({"customer": {"msisdn": CUSTOMER}, "currency": "EUR", "release": "12.50",
                   "description": "Parken"}),
        )
        .await;
    let process_id = process["id"].as_str().unwrap();
    // The platform took the originate request only with a valid Standard Webhooks signature.
    let call = wait_for_call(&platform, CUSTOMER, 1).await;
    let call_id = call["sid"].as_str().unwrap().to_string();
    let script_url = call["url"].as_str().unwrap();
    assert!(script_url.starts_with(&format!("{PUBLIC_URL}/voice/vxml/calls/{call_id}/")));

    let (status, document) = platform
        .step("/_control/vxml/fetch", json!({"call_id": call_id}))
        .await;
    assert_eq!(status, 200, "{document}");
    let prompts = check_vxml(&document);
    assert_eq!(
        prompts,
        [
            "Garage Nord bittet um Freigabe von zwölf Euro fünfzig für Parken. \
          Bitte geben Sie Ihre PIN ein und drücken Sie dann die Rautetaste."
        ]
    );
    assert!(!document.contains(PIN));
    // The script URL serves one fetch.
    let (status, _) = platform
        .step("/_control/vxml/fetch", json!({"call_id": call_id}))
        .await;
    assert_eq!(status, 403);

    let (status, again) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "digits": "0000"}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert!(
        check_vxml(&again)[0].starts_with("Diese PIN stimmt nicht."),
        "{again}"
    );
    // The token of an answered document is used up.
    let (status, _) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "replay": true}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        app.process(&retailer, process_id).await["status"],
        "awaiting_confirmation"
    );

    let (status, done) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "digits": PIN}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        check_vxml(&done),
        ["Danke. Der Betrag ist freigegeben. Auf Wiederhören."]
    );
    assert_eq!(app.process(&retailer, process_id).await["status"], "active");

    let (status, _) = platform
        .step(
            "/_control/vxml/status",
            json!({"call_id": call_id, "status": "completed"}),
        )
        .await;
    assert_eq!(status, 204);
    eventually(10, "the call's state is on its message", || async {
        let listed = app.admin_get("/admin/v1/outbox?limit=100").await;
        listed.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|message| {
                message["channel"] == "voice" && message["delivery_state"] == "COMPLETED"
            })
    })
    .await;
    // Steps, a top-up confirmed by a second call, close.
    step_until_a_top_up_is_asked(&app, &retailer, process_id).await;
    let second = wait_for_call(&platform, CUSTOMER, 2).await;
    let call_id = second["sid"].as_str().unwrap();
    let (_, document) = platform
        .step("/_control/vxml/fetch", json!({"call_id": call_id}))
        .await;
    assert!(
        check_vxml(&document)[0].starts_with("Garage Nord bittet um weitere zwölf Euro fünfzig"),
        "{document}"
    );
    let (_, done) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "digits": PIN}),
        )
        .await;
    assert_eq!(
        check_vxml(&done),
        ["Danke. Der Betrag ist freigegeben. Auf Wiederhören."]
    );
    close_after_the_top_up(&app, &retailer, process_id).await;
}

/// Claim 9 by phone on a VoiceXML platform: the service number's URL carries the operator's
/// token and the caller id; a caller keys the till code and the PIN.
async fn a_caller_pays_a_till_code_by_phone_on_voicexml(db: Db) {
    const INCOMING_TOKEN: &str = "incoming-token-0123456789abcdefghijkl";
    let platform = Platform::start().await;
    let voice = VoiceSettings {
        dialect: Dialect::Voicexml,
        api_url: None,
        account_sid: None,
        auth_token: None,
        originate_url: Some(platform.url("/originate")),
        secret: Some(VXML_SECRET.into()),
        incoming_token: Some(INCOMING_TOKEN.into()),
        ..voice_settings(&platform)
    };
    let app = spawn_app_with(db, move |settings| {
        settings.channels.voice = Some(voice);
    })
    .await;
    platform
        .control(
            "/_control/route",
            json!({"from": PUBLIC_URL, "to": app.address}),
        )
        .await;
    let retailer = app.create_retailer().await;
    app.create_customer_with(
        json!({"name": "Anna", "msisdn": CUSTOMER, "pin": PIN}),
        "100.00",
    )
    .await;
    let till = app
        .open_process(
            &retailer,
            json!({"currency": "EUR", "release": "7.50", "description": "Kiosk"}),
        )
        .await;
    let till_id = till["id"].as_str().unwrap();
    let code = till["code"].as_str().unwrap();
    let incoming = format!("{PUBLIC_URL}/voice/vxml/incoming/{INCOMING_TOKEN}");

    let forged = platform
        .control(
            "/_control/vxml/incoming",
            json!({"from": CUSTOMER, "url": format!("{PUBLIC_URL}/voice/vxml/incoming/not-the-token-0123456789abcdefghijk")}),
        )
        .await;
    assert_eq!(forged["status"], 403);
    let stranger = platform
        .control(
            "/_control/vxml/incoming",
            json!({"from": "+4915100000000", "url": incoming}),
        )
        .await;
    assert_eq!(
        check_vxml(stranger["body"].as_str().unwrap()),
        ["This number is not registered for payments. Goodbye."]
    );
    let call = platform
        .control(
            "/_control/vxml/incoming",
            json!({"from": CUSTOMER, "url": incoming}),
        )
        .await;
    assert_eq!(
        check_vxml(call["body"].as_str().unwrap()),
        ["Please key the code shown at the till, then press the hash key."]
    );
    let call_id = call["call_id"].as_str().unwrap();
    let (_, pin_prompt) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "digits": code}),
        )
        .await;
    assert_eq!(
        check_vxml(&pin_prompt),
        ["Please enter your PIN, then press the hash key."]
    );
    let (_, wrong) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "digits": "0000"}),
        )
        .await;
    assert!(
        check_vxml(&wrong)[0].starts_with("That PIN is not right."),
        "{wrong}"
    );
    let (_, done) = platform
        .step(
            "/_control/vxml/submit",
            json!({"call_id": call_id, "digits": PIN}),
        )
        .await;
    assert_eq!(
        check_vxml(&done),
        ["Thank you. The amount is released. Goodbye."]
    );
    assert_eq!(app.process(&retailer, till_id).await["status"], "active");
    app.assert_ledger_holds().await;
}

on_both_databases!(
    a_caller_pays_a_till_code_by_phone_on_voicexml,
    a_voicexml_call_is_confirmed_by_keying_the_pin,
    the_voice_id_hook_accepts_rejects_and_times_out,
    a_caller_pays_a_till_code_by_phone,
    a_busy_line_is_called_again_then_the_request_goes_by_sms,
    a_voice_request_is_confirmed_by_keying_the_pin,
    without_a_pin_one_approves_and_two_declines_and_silence_ends_politely,
    a_number_the_platform_refuses_is_a_dead_letter,
);
