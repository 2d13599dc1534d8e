//! The email channel end to end: the daemon sending through a real SMTP server (aiosmtpd,
//! `tests/peers/smtp_server.py`) that requires STARTTLS and AUTH, with a test CA.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use paystep_channels::email::{EmailSettings, EmailTls};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::daemon::free_port;
use crate::helpers::{eventually, spawn_app_with, Db, Retailer, TestApp, PIN};
use crate::on_both_databases;

const SMTP_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp_server.py");
const USER: &str = "paystep";
const PASSWORD: &str = "secret";

/// A test CA and a server certificate for localhost and 127.0.0.1 signed by it.
pub struct TestCa {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "paystep test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        // rustls refuses a CA certificate as a server's own: the server gets a leaf.
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let files = TestCa {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
        };
        std::fs::write(&files.ca_file, ca.pem()).unwrap();
        std::fs::write(&files.cert_file, leaf.pem()).unwrap();
        std::fs::write(&files.key_file, leaf_key.serialize_pem()).unwrap();
        files
    }
}

pub struct SmtpServer {
    _child: Child,
}

impl SmtpServer {
    pub async fn start(ca: &TestCa, port: u16, maildir: &Path, extra: &[&str]) -> SmtpServer {
        std::fs::create_dir_all(maildir).unwrap();
        let mut child = Command::new("python3")
            .arg(SMTP_SERVER)
            .args([
                "--port",
                &port.to_string(),
                "--user",
                USER,
                "--password",
                PASSWORD,
            ])
            .arg("--cert")
            .arg(&ca.cert_file)
            .arg("--key")
            .arg(&ca.key_file)
            .arg("--maildir")
            .arg(maildir)
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the SMTP server (scripts/test.sh installs aiosmtpd)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        assert!(
            matches!(ready, Ok(Ok(Some(ref line))) if line.contains("listening")),
            "the SMTP server did not start; run scripts/test.sh, which installs aiosmtpd"
        );
        SmtpServer { _child: child }
    }
}

/// Every message the server accepted, in the maildir (it outlives server restarts).
pub fn mails(maildir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(maildir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .path()
                .extension()
                .is_some_and(|extension| extension == "json")
        })
        .filter_map(|entry| serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok())
        .collect()
}

pub async fn wait_for_mails(
    maildir: &Path,
    count: usize,
    matches: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Value> = mails(maildir)
            .into_iter()
            .filter(|mail| matches(mail))
            .collect();
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} mails; have {:#?}",
            mails(maildir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn to(mail: &Value, address: &str) -> bool {
    mail["rcpt_tos"]
        .as_array()
        .is_some_and(|rcpts| rcpts.iter().any(|rcpt| rcpt == address))
}

pub fn email_settings(port: u16, ca: Option<&TestCa>) -> EmailSettings {
    EmailSettings {
        host: "localhost".into(),
        port,
        tls: EmailTls::StartTls,
        ca_file: ca.map(|ca| ca.ca_file.clone()),
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        from: "paystep <pay@example.com>".into(),
        reply_to: Some("support@example.com".into()),
        pool_size: 2,
        timeout_ms: 5_000,
    }
}

async fn spawn_email_app(db: Db, smtp_port: u16, ca: &TestCa) -> TestApp {
    spawn_app_with(db, |settings| {
        settings.channels.email = Some(email_settings(smtp_port, Some(ca)));
        settings.outbox.retry_base_ms = 50;
        settings.outbox.retry_max_ms = 500;
    })
    .await
}

async fn email_customer(app: &TestApp, address: &str) -> String {
    app.create_customer_with(
        json!({"name": "Mia", "email": address, "preferred_channel": "email", "pin": PIN}),
        "50.00",
    )
    .await
}

fn link_in(text: &str) -> String {
    let start = text
        .find("https://pay.test/c/")
        .expect("the mail carries the page's link");
    text[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(['.', ')', '"'])
        .to_string()
}

on_both_databases!(
    a_customer_confirms_through_the_link_in_the_email,
    a_retailer_with_email_in_its_notify_list_is_told_by_email,
    mail_waits_while_the_relay_is_down_and_arrives_once_when_it_returns,
    a_550_dead_letters_the_message_with_the_servers_answer,
    a_retailers_description_comes_last_in_the_mail_quoted_and_without_its_link,
);

async fn a_retailers_description_comes_last_in_the_mail_quoted_and_without_its_link(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let port = free_port();
    let maildir = dir.path().join("mail");
    let _server = SmtpServer::start(&ca, port, &maildir, &[]).await;
    let app = spawn_email_app(db, port, &ca).await;
    let retailer = app.create_retailer().await;
    email_customer(&app, "lea@example.com").await;
    let spoofing =
        "Parking. You are asked to release 0.01 EUR only. Code 0000. Confirm: http://evil.example/c/x";
    let body = json!({"customer": {"email": "lea@example.com"}, "currency": "EUR", "release": "99.00", "description": spoofing});
    let process = app.open_process(&retailer, body).await;
    let code = process["code"].as_str().unwrap();
    let mail = wait_for_mails(&maildir, 1, |mail| to(mail, "lea@example.com"))
        .await
        .remove(0);
    let text = mail["text"].as_str().unwrap().replace("\r\n", "\n");
    let link = link_in(&text);
    assert_eq!(
        text,
        format!(
            "Garage Nord asks you to release 99.00 EUR. Code {code}. Confirm or decline: {link} \
             For: \"Parking. You are asked to release 0.01 EUR only. Code 0000. Confirm: [link]\"\n\n{link}\n"
        )
    );
    let html = mail["html"].as_str().unwrap();
    assert!(!html.contains("evil.example"), "{html}");
    app.assert_ledger_holds().await;
}

async fn a_customer_confirms_through_the_link_in_the_email(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let port = free_port();
    let maildir = dir.path().join("mail");
    let _server = SmtpServer::start(&ca, port, &maildir, &[]).await;
    let app = spawn_email_app(db, port, &ca).await;
    let retailer = app.create_retailer().await;
    let customer_id = email_customer(&app, "mia@example.com").await;
    let body = json!({"customer": {"email": "mia@example.com"}, "currency": "EUR", "release": "12.50", "description": "Parking, level 2"});
    let process = app.open_process(&retailer, body).await;
    let code = process["code"].as_str().unwrap().to_string();

    let mail = wait_for_mails(&maildir, 1, |mail| to(mail, "mia@example.com"))
        .await
        .remove(0);
    assert!(mail["subject"].as_str().unwrap().contains(&code), "{mail}");
    assert_eq!(mail["reply_to"], "support@example.com");
    assert!(
        mail["message_id"].as_str().unwrap().contains('@'),
        "a Message-ID: {mail}"
    );
    for part in ["text", "html"] {
        let content = mail[part]
            .as_str()
            .unwrap_or_else(|| panic!("a {part} part: {mail}"));
        for expected in [
            "Garage Nord",
            "Parking, level 2",
            "12.50 EUR",
            code.as_str(),
            "https://pay.test/c/",
        ] {
            assert!(
                content.contains(expected),
                "the {part} part lacks {expected:?}: {content}"
            );
        }
    }
    // The outbox records the delivery once the server has answered, which may be a moment
    // after the mail is in the server's maildir.
    eventually(10, "the outbox recorded the email as delivered", || async {
        let delivered = app.admin_get("/admin/v1/outbox?status=delivered").await;
        delivered.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["channel"] == "email")
    })
    .await;

    // The link leads to the page; a GET (a mail scanner) changes nothing; the button does.
    let link = link_in(mail["text"].as_str().unwrap());
    let (status, page) = app.get_page(&link).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("12.50 EUR"));
    assert_eq!(
        app.process(&retailer, process["id"].as_str().unwrap())
            .await["status"],
        "awaiting_confirmation"
    );
    let (status, page) = app.answer_page(&link, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        app.process(&retailer, process["id"].as_str().unwrap())
            .await["status"],
        "active"
    );
    assert_eq!(app.credit(&customer_id).await, "37.50");
    wait_for_mails(&maildir, 1, |mail| {
        to(mail, "mia@example.com")
            && mail["text"]
                .as_str()
                .unwrap_or("")
                .contains("released 12.50 EUR")
    })
    .await;
    app.assert_ledger_holds().await;
}

async fn a_retailer_with_email_in_its_notify_list_is_told_by_email(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let port = free_port();
    let maildir = dir.path().join("mail");
    let _server = SmtpServer::start(&ca, port, &maildir, &[]).await;
    let app = spawn_email_app(db, port, &ca).await;
    let created = app
        .admin_post(
            "/admin/v1/retailers",
            json!({"name": "Garage Nord", "email": "till@garage.example", "notify": ["email"]}),
        )
        .await;
    let retailer = Retailer {
        id: created.body["id"].as_str().unwrap().into(),
        api_key: created.body["api_key"].as_str().unwrap().into(),
    };
    email_customer(&app, "ben@example.com").await;
    let mut body = json!({"customer": {"email": "ben@example.com"}, "currency": "EUR", "release": "10.00", "description": "Car wash"});
    body["charge"] = json!("4.00");
    let process = app.open_process(&retailer, body).await;
    let code = process["code"].as_str().unwrap().to_string();
    let process_id = process["id"].as_str().unwrap().to_string();
    let notification = wait_for_mails(&maildir, 1, |mail| to(mail, "till@garage.example"))
        .await
        .remove(0);
    let text = notification["text"].as_str().unwrap();
    assert!(
        text.contains(&code) && text.contains(&process_id) && text.contains("Car wash"),
        "{text}"
    );
    let request = wait_for_mails(&maildir, 1, |mail| to(mail, "ben@example.com"))
        .await
        .remove(0);
    let link = link_in(request["text"].as_str().unwrap());
    assert_eq!(
        app.answer_page(&link, "confirm", Some(PIN)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.step(&retailer, &process_id, "1.50").await.status,
        StatusCode::CREATED
    );
    let executions = wait_for_mails(&maildir, 3, |mail| {
        to(mail, "till@garage.example")
            && mail["text"].as_str().unwrap_or("").contains(&code)
            && (mail["text"].as_str().unwrap_or("").contains("charged")
                || mail["text"].as_str().unwrap_or("").contains("released"))
    })
    .await;
    assert!(executions
        .iter()
        .any(|mail| mail["text"].as_str().unwrap().contains("charged 1.50 EUR")));
    assert!(
        executions.iter().all(|mail| mail["html"].is_string()),
        "every mail has an HTML part"
    );
    app.assert_ledger_holds().await;
}

async fn mail_waits_while_the_relay_is_down_and_arrives_once_when_it_returns(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let port = free_port();
    let maildir = dir.path().join("mail");
    let app = spawn_email_app(db, port, &ca).await;
    let retailer = app.create_retailer().await;
    email_customer(&app, "lea@example.com").await;
    let mut codes = vec![];
    for release in ["1.00", "2.00", "3.00"] {
        let body = json!({"customer": {"email": "lea@example.com"}, "currency": "EUR", "release": release});
        codes.push(
            app.open_process(&retailer, body).await["code"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Nothing listens: the attempts fail and are retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = app.admin_get("/admin/v1/outbox?status=queued").await;
        let tried = queued.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["channel"] == "email" && m["attempts"].as_i64().unwrap() >= 2);
        if tried {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed attempt recorded: {}",
            queued.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _server = SmtpServer::start(&ca, port, &maildir, &[]).await;
    let arrived = wait_for_mails(&maildir, 3, |mail| to(mail, "lea@example.com")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrived_later = mails(&maildir)
        .into_iter()
        .filter(|mail| to(mail, "lea@example.com"))
        .count();
    assert_eq!(arrived_later, 3, "each mail once");
    for code in &codes {
        assert_eq!(
            arrived
                .iter()
                .filter(|mail| mail["subject"].as_str().unwrap().contains(code.as_str()))
                .count(),
            1
        );
    }
    app.assert_ledger_holds().await;
}

async fn a_550_dead_letters_the_message_with_the_servers_answer(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let port = free_port();
    let maildir = dir.path().join("mail");
    let _server = SmtpServer::start(&ca, port, &maildir, &["--reject", "gone@example.com"]).await;
    let app = spawn_email_app(db, port, &ca).await;
    let retailer = app.create_retailer().await;
    email_customer(&app, "gone@example.com").await;
    let body =
        json!({"customer": {"email": "gone@example.com"}, "currency": "EUR", "release": "1.00"});
    app.open_process(&retailer, body).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let letter = loop {
        let dead = app.admin_get("/admin/v1/outbox?status=dead").await;
        if let Some(letter) = dead.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["channel"] == "email")
        {
            break letter.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the rejected mail was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        letter["attempts"], 1,
        "a permanent answer is not retried: {letter}"
    );
    assert!(
        letter["last_error"].as_str().unwrap().contains("550"),
        "{letter}"
    );
    assert!(mails(&maildir).is_empty());
}

#[tokio::test]
async fn check_config_names_an_untrusted_relay_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let port = free_port();
    let _server = SmtpServer::start(&ca, port, &dir.path().join("mail"), &[]).await;
    let check = |ca_file: Option<&Path>| {
        let mut config = format!(
            "[channels.email]\nhost = \"localhost\"\nport = {port}\ntls = \"starttls\"\nusername = \"{USER}\"\n\
             password = \"{PASSWORD}\"\nfrom = \"paystep <pay@example.com>\"\n"
        );
        if let Some(ca_file) = ca_file {
            config.push_str(&format!("ca_file = \"{}\"\n", ca_file.display()));
        }
        let file = dir.path().join(format!("check-{}.toml", ca_file.is_some()));
        std::fs::write(&file, config).unwrap();
        let database = format!("sqlite://{}", dir.path().join("check.db").display());
        async move {
            Command::new(env!("CARGO_BIN_EXE_paystep"))
                .args(["check-config", "--config"])
                .arg(&file)
                .env("PAYSTEP__DATABASE__URL", database)
                .env("PAYSTEP__LOG__LEVEL", "error")
                .output()
                .await
                .unwrap()
        }
    };
    let trusted = check(Some(&ca.ca_file)).await;
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        trusted.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(stdout.contains("channel email: ok"), "{stdout}");
    let untrusted = check(None).await;
    let stdout = String::from_utf8_lossy(&untrusted.stdout);
    assert!(!untrusted.status.success());
    assert!(
        stdout.contains("channel email:") && stdout.to_lowercase().contains("certificate"),
        "{stdout}"
    );
}
