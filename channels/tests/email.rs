//! The email channel against a real SMTP server: aiosmtpd (`tests/peers/smtp_server.py`) with
//! STARTTLS and AUTH required, its certificate issued by a test CA made here with rcgen.
//! Every test starts its own server on a free port, with its own maildir of JSON records.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paystep_channel_core::conformance::{self, AnswerCase, Class, Peer};
use paystep_channels::email::{EmailChannel, EmailSettings, EmailSetupError, EmailTls};
use paystep_channels::{Channel, ChannelName, MessageKind, OutboundMessage, SendError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const USER: &str = "paystep";
const PASSWORD: &str = "relay-secret";
const FROM: &str = "Paystep <noreply@paystep.example>";
const REPLY_TO: &str = "support@paystep.example";
const SERVER_START_MAX: Duration = Duration::from_secs(15);
const ARRIVAL_MAX: Duration = Duration::from_secs(5);

/// How the test server secures its sessions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServerTls {
    /// STARTTLS required, as on a submission port.
    StartTls,
    /// TLS from the first byte, as on port 465.
    Implicit,
    /// Plain SMTP, no STARTTLS offered (AUTH still required, and allowed in plain text).
    Plain,
}

#[derive(Clone, Copy)]
struct ServerOptions {
    tls: ServerTls,
    reject: &'static [&'static str],
    tempfail: &'static [&'static str],
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: ServerTls::StartTls,
            reject: &[],
            tempfail: &[],
        }
    }
}

/// A running test SMTP server; killed when dropped.
struct SmtpServer {
    port: u16,
    maildir: PathBuf,
    ca_file: PathBuf,
    stderr_file: PathBuf,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start(options: ServerOptions) -> SmtpServer {
        require_aiosmtpd();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pki = TestPki::write_to(dir.path());
        let maildir = dir.path().join("mail");
        let stderr_file = dir.path().join("server.stderr");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/smtp_server.py");
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(&pki.leaf_cert)
            .arg("--key")
            .arg(&pki.leaf_key)
            .args(["--user", USER, "--password", PASSWORD])
            .arg("--maildir")
            .arg(&maildir);
        for address in options.reject {
            command.args(["--reject", address]);
        }
        for address in options.tempfail {
            command.args(["--tempfail", address]);
        }
        match options.tls {
            ServerTls::StartTls => {}
            ServerTls::Implicit => {
                command.arg("--implicit-tls");
            }
            ServerTls::Plain => {
                command.arg("--no-tls");
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).expect("a stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first_line = tokio::time::timeout(SERVER_START_MAX, lines.next_line()).await;
        match first_line {
            Ok(Ok(Some(line))) if line.trim() == "listening" => {}
            outcome => panic!(
                "the SMTP test server did not say `listening` within {SERVER_START_MAX:?} \
                 (got {outcome:?}); its stderr:\n{}",
                std::fs::read_to_string(&stderr_file).unwrap_or_default()
            ),
        }
        SmtpServer {
            port,
            maildir,
            ca_file: pki.ca_cert,
            stderr_file,
            _child: child,
            _dir: dir,
        }
    }

    /// Settings for this server: trusting the test CA, with the right login.
    fn settings(&self, tls: EmailTls) -> EmailSettings {
        EmailSettings {
            host: "127.0.0.1".to_string(),
            port: self.port,
            tls,
            ca_file: Some(self.ca_file.clone()),
            username: Some(USER.to_string()),
            password: Some(PASSWORD.into()),
            from: FROM.to_string(),
            reply_to: Some(REPLY_TO.to_string()),
            pool_size: 2,
            timeout_ms: 5_000,
        }
    }

    /// The messages the server has accepted so far, oldest first.
    fn received_now(&self) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(&self.maildir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|entry| entry.expect("a maildir entry").path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "json")
            })
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("a readable record");
                serde_json::from_str(&text).expect("a JSON record")
            })
            .collect()
    }

    /// Waits, boundedly, until the server has accepted `count` messages.
    async fn received(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL_MAX;
        loop {
            let messages = self.received_now();
            if messages.len() >= count {
                return messages;
            }
            if Instant::now() > deadline {
                panic!(
                    "the SMTP test server accepted {} of {count} messages within {ARRIVAL_MAX:?}; \
                     its stderr:\n{}",
                    messages.len(),
                    std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A test CA and a leaf for localhost and 127.0.0.1 signed by it: rustls refuses a
/// self-signed CA certificate as the server's own (`CaUsedAsEndEntity`).
struct TestPki {
    ca_cert: PathBuf,
    leaf_cert: PathBuf,
    leaf_key: PathBuf,
}

impl TestPki {
    fn write_to(dir: &Path) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "paystep email test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");

        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf parameters");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().expect("a leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("a leaf certificate");

        let pki = TestPki {
            ca_cert: dir.join("ca.pem"),
            leaf_cert: dir.join("server.pem"),
            leaf_key: dir.join("server.key"),
        };
        std::fs::write(&pki.ca_cert, ca.pem()).expect("the CA written");
        std::fs::write(&pki.leaf_cert, leaf.pem()).expect("the leaf written");
        std::fs::write(&pki.leaf_key, leaf_key.serialize_pem()).expect("the key written");
        pki
    }
}

/// The tests need a real SMTP server: missing tools are a failure, never a skip.
fn require_aiosmtpd() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = CHECKED.get_or_init(|| {
        match std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output()
        {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
            Err(error) => Err(format!("cannot run python3: {error}")),
        }
    });
    if let Err(reason) = outcome {
        panic!(
            "the email tests need python3 with aiosmtpd 1.4.6: run scripts/test.sh, which \
             installs it (or `pip install aiosmtpd==1.4.6`). {reason}"
        );
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address").port()
}

fn confirmation_request(id: &str, to: &str, language: &str) -> OutboundMessage {
    let text = match language {
        "de" => "Eckladen bittet um 12,50 € für 1 Kaffee. Code 123456.",
        _ => "Corner Shop asks for 12.50 € for 1 coffee. Code 123456.",
    };
    OutboundMessage {
        id: id.to_string(),
        channel: ChannelName::Email,
        intended_channel: ChannelName::Email,
        kind: MessageKind::ConfirmationRequest,
        to: to.to_string(),
        retailer_id: Some("corner-shop".to_string()),
        process_id: Some("p-1".to_string()),
        code: Some("123456".to_string()),
        description: None,
        reference: None,
        language: language.to_string(),
        text: text.to_string(),
        url: Some("https://pay.example/confirm/abc?step=1&lang=en".to_string()),
        expires_at_ms: None,
        payload: None,
        signing_secrets: Vec::new(),
    }
}

fn text_of(record: &Value, field: &str) -> String {
    record[field]
        .as_str()
        .unwrap_or_else(|| panic!("the record has no {field}: {record:#}"))
        .to_string()
}

#[tokio::test]
async fn a_confirmation_request_arrives_with_text_and_html_parts_and_its_message_id() {
    let server = SmtpServer::start(ServerOptions::default()).await;
    let channel = EmailChannel::new(&server.settings(EmailTls::StartTls)).expect("a channel");
    let message = confirmation_request("0b6f1c2e-9a4d-4f7e", "customer@example.com", "en");

    let delivery = channel.send(&message).await.expect("the relay accepts it");

    assert_eq!(
        delivery.remote_id.as_deref(),
        Some("<0b6f1c2e-9a4d-4f7e@paystep>")
    );
    let records = server.received(1).await;
    let record = &records[0];
    assert_eq!(text_of(record, "content_type"), "multipart/alternative");
    assert_eq!(text_of(record, "subject"), "Payment request 123456");
    assert_eq!(
        Some(text_of(record, "message_id")),
        delivery.remote_id,
        "the Message-ID on the wire is the one send returned"
    );
    assert_eq!(text_of(record, "from"), FROM);
    assert_eq!(text_of(record, "reply_to"), REPLY_TO);
    assert_eq!(text_of(record, "mail_from"), "noreply@paystep.example");
    assert_eq!(
        record["rcpt_tos"],
        serde_json::json!(["customer@example.com"])
    );
    assert_eq!(record["tls"], Value::Bool(true), "STARTTLS was used");

    let url = message.url.as_deref().unwrap();
    let text = text_of(record, "text");
    assert!(text.starts_with(&message.text), "the text part: {text}");
    assert!(
        text.lines().any(|line| line == url),
        "the link stands on its own line: {text}"
    );
    let html = text_of(record, "html");
    assert!(
        html.contains("12.50 € for 1 coffee"),
        "the HTML part: {html}"
    );
    assert!(
        html.contains("href=\"https://pay.example/confirm/abc?step=1&amp;lang=en\""),
        "the HTML part links the page: {html}"
    );
    assert!(html.contains("Open the payment page"), "{html}");
    assert!(html.contains("asks you before anything is paid"), "{html}");
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "{html}"
    );
}

#[tokio::test]
async fn a_german_recipient_gets_a_german_subject_and_button() {
    let server = SmtpServer::start(ServerOptions::default()).await;
    let mut settings = server.settings(EmailTls::StartTls);
    // The leaf names localhost too; lettre tries each address localhost resolves to.
    settings.host = "localhost".to_string();
    let channel = EmailChannel::new(&settings).expect("a channel");
    let message = confirmation_request("msg-de-1", "kundin@example.de", "de");

    channel.send(&message).await.expect("the relay accepts it");

    let records = server.received(1).await;
    assert_eq!(text_of(&records[0], "subject"), "Zahlungsanfrage 123456");
    let html = text_of(&records[0], "html");
    assert!(html.contains("Zahlungsseite öffnen"), "{html}");
    assert!(html.contains("12,50 € für 1 Kaffee"), "{html}");
    assert!(text_of(&records[0], "text").contains("https://pay.example/confirm/abc"));
}

#[tokio::test]
async fn concurrent_messages_share_the_bounded_pool_and_all_arrive() {
    let server = SmtpServer::start(ServerOptions::default()).await;
    let channel = EmailChannel::new(&server.settings(EmailTls::StartTls)).expect("a channel");
    let messages: Vec<OutboundMessage> = (0..6)
        .map(|index| confirmation_request(&format!("bulk-{index}"), "customer@example.com", "en"))
        .collect();

    let outcomes =
        futures::future::join_all(messages.iter().map(|message| channel.send(message))).await;

    for outcome in outcomes {
        outcome.expect("the relay accepts every message");
    }
    let mut ids: Vec<String> = server
        .received(6)
        .await
        .iter()
        .map(|record| text_of(record, "message_id"))
        .collect();
    ids.sort();
    let expected: Vec<String> = (0..6)
        .map(|index| format!("<bulk-{index}@paystep>"))
        .collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_rejected_recipient_is_a_permanent_failure_with_the_relays_reply() {
    let server = SmtpServer::start(ServerOptions {
        reject: &["gone@example.com"],
        ..ServerOptions::default()
    })
    .await;
    let channel = EmailChannel::new(&server.settings(EmailTls::StartTls)).expect("a channel");

    let outcome = channel
        .send(&confirmation_request(
            "rejected-1",
            "gone@example.com",
            "en",
        ))
        .await;

    match outcome {
        Err(SendError::Permanent(reason)) => {
            assert!(reason.contains("550"), "{reason}");
            assert!(reason.contains("mailbox unavailable"), "{reason}");
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    // The pool recovers: the next message goes through.
    channel
        .send(&confirmation_request(
            "after-1",
            "customer@example.com",
            "en",
        ))
        .await
        .expect("the relay accepts the next message");
}

#[tokio::test]
async fn a_temporarily_failing_recipient_is_retriable() {
    let server = SmtpServer::start(ServerOptions {
        tempfail: &["busy@example.com"],
        ..ServerOptions::default()
    })
    .await;
    let channel = EmailChannel::new(&server.settings(EmailTls::StartTls)).expect("a channel");

    let outcome = channel
        .send(&confirmation_request(
            "deferred-1",
            "busy@example.com",
            "en",
        ))
        .await;

    match outcome {
        Err(SendError::Retriable(reason)) => assert!(reason.contains("451"), "{reason}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_that_is_not_running_is_retriable() {
    let settings = EmailSettings {
        host: "127.0.0.1".to_string(),
        port: free_port(),
        tls: EmailTls::StartTls,
        ca_file: None,
        username: None,
        password: None,
        from: FROM.to_string(),
        reply_to: None,
        pool_size: 1,
        timeout_ms: 2_000,
    };
    let channel = EmailChannel::new(&settings).expect("a channel");

    let outcome = channel
        .send(&confirmation_request(
            "nobody-1",
            "customer@example.com",
            "en",
        ))
        .await;

    match outcome {
        Err(SendError::Retriable(reason)) => {
            assert!(
                reason.contains(&format!("127.0.0.1:{}", settings.port)),
                "{reason}"
            )
        }
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    let health = channel.health_check().await.expect_err("nobody answers");
    assert!(health.reason.contains("127.0.0.1"), "{}", health.reason);
}

#[tokio::test]
async fn a_relay_that_never_answers_is_retriable_after_the_timeout() {
    // The kernel accepts the connection into the backlog; nobody ever speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let settings = EmailSettings {
        host: "127.0.0.1".to_string(),
        port: silent.local_addr().unwrap().port(),
        tls: EmailTls::StartTls,
        ca_file: None,
        username: None,
        password: None,
        from: FROM.to_string(),
        reply_to: None,
        pool_size: 1,
        timeout_ms: 300,
    };
    let channel = EmailChannel::new(&settings).expect("a channel");
    let started = Instant::now();

    let outcome = channel
        .send(&confirmation_request(
            "silent-1",
            "customer@example.com",
            "en",
        ))
        .await;

    match outcome {
        Err(SendError::Retriable(reason)) => {
            assert!(reason.contains("did not answer within 300 ms"), "{reason}")
        }
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_invalid_recipient_address_is_a_permanent_failure() {
    let settings = EmailSettings {
        host: "127.0.0.1".to_string(),
        port: free_port(),
        tls: EmailTls::None,
        ca_file: None,
        username: None,
        password: None,
        from: FROM.to_string(),
        reply_to: None,
        pool_size: 1,
        timeout_ms: 1_000,
    };
    let channel = EmailChannel::new(&settings).expect("a channel");

    for address in ["not an address", "a@b.example, c@d.example", ""] {
        match channel
            .send(&confirmation_request("bad-address", address, "en"))
            .await
        {
            Err(SendError::Permanent(reason)) => {
                assert!(reason.contains("invalid recipient address"), "{reason}")
            }
            other => panic!("expected a permanent failure for {address:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_health_check_passes_when_the_relays_ca_is_trusted() {
    let server = SmtpServer::start(ServerOptions::default()).await;
    let channel = EmailChannel::new(&server.settings(EmailTls::StartTls)).expect("a channel");

    channel.health_check().await.expect("the relay is healthy");
}

#[tokio::test]
async fn the_health_check_names_the_certificate_problem_when_the_relays_ca_is_not_trusted() {
    let server = SmtpServer::start(ServerOptions::default()).await;
    let mut settings = server.settings(EmailTls::StartTls);
    settings.ca_file = None;
    let channel = EmailChannel::new(&settings).expect("a channel");

    let error = channel.health_check().await.expect_err("the CA is unknown");

    let expected = format!(
        "TLS handshake with 127.0.0.1:{} failed: invalid peer certificate: UnknownIssuer \
         (set channels.email.ca_file to the relay's CA)",
        server.port
    );
    assert_eq!(error.channel, ChannelName::Email);
    assert_eq!(error.reason, expected);
    match channel
        .send(&confirmation_request(
            "untrusted-1",
            "customer@example.com",
            "en",
        ))
        .await
    {
        Err(SendError::Retriable(reason)) => assert_eq!(reason, expected),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    assert!(server.received_now().is_empty());
}

#[tokio::test]
async fn the_health_check_fails_clearly_with_a_wrong_password() {
    let server = SmtpServer::start(ServerOptions::default()).await;
    let mut settings = server.settings(EmailTls::StartTls);
    settings.password = Some("not-the-password".into());
    let channel = EmailChannel::new(&settings).expect("a channel");

    let error = channel
        .health_check()
        .await
        .expect_err("the login is wrong");

    assert!(
        error.reason.contains("refused the login of \"paystep\""),
        "{}",
        error.reason
    );
    assert!(error.reason.contains("535"), "{}", error.reason);
    assert!(
        error.reason.contains("channels.email.password"),
        "{}",
        error.reason
    );
    assert!(
        !error.reason.contains("not-the-password"),
        "{}",
        error.reason
    );
    // The message is fine; the configuration is not: the outbox tries again once it is fixed.
    match channel
        .send(&confirmation_request(
            "login-1",
            "customer@example.com",
            "en",
        ))
        .await
    {
        Err(SendError::Retriable(reason)) => assert!(reason.contains("535"), "{reason}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn starttls_never_falls_back_to_plain_text_when_the_relay_offers_none() {
    let server = SmtpServer::start(ServerOptions {
        tls: ServerTls::Plain,
        ..ServerOptions::default()
    })
    .await;
    let channel = EmailChannel::new(&server.settings(EmailTls::StartTls)).expect("a channel");

    let outcome = channel
        .send(&confirmation_request(
            "plain-1",
            "customer@example.com",
            "en",
        ))
        .await;

    match outcome {
        Err(SendError::Retriable(reason)) => {
            assert!(reason.contains("STARTTLS"), "{reason}");
            assert!(reason.contains("never falls back"), "{reason}");
        }
        other => panic!("expected a failure instead of plain text, got {other:?}"),
    }
    let health = channel.health_check().await.expect_err("no STARTTLS");
    assert!(health.reason.contains("STARTTLS"), "{}", health.reason);
    assert!(
        server.received_now().is_empty(),
        "nothing may travel in plain text"
    );
}

#[tokio::test]
async fn plain_smtp_delivers_to_a_relay_without_tls() {
    let server = SmtpServer::start(ServerOptions {
        tls: ServerTls::Plain,
        ..ServerOptions::default()
    })
    .await;
    let channel = EmailChannel::new(&server.settings(EmailTls::None)).expect("a channel");

    channel
        .send(&confirmation_request(
            "plain-ok-1",
            "customer@example.com",
            "en",
        ))
        .await
        .expect("the relay accepts it");

    let records = server.received(1).await;
    assert_eq!(records[0]["tls"], Value::Bool(false));
}

#[tokio::test]
async fn implicit_tls_delivers_to_a_relay_that_speaks_tls_from_the_first_byte() {
    let server = SmtpServer::start(ServerOptions {
        tls: ServerTls::Implicit,
        ..ServerOptions::default()
    })
    .await;
    let channel = EmailChannel::new(&server.settings(EmailTls::Tls)).expect("a channel");

    channel.health_check().await.expect("the relay is healthy");
    channel
        .send(&confirmation_request(
            "wrapped-1",
            "customer@example.com",
            "en",
        ))
        .await
        .expect("the relay accepts it");

    let records = server.received(1).await;
    assert_eq!(records[0]["tls"], Value::Bool(true));
    assert_eq!(text_of(&records[0], "message_id"), "<wrapped-1@paystep>");
}

#[tokio::test]
async fn setup_errors_name_the_setting_to_fix() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let not_a_certificate = dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_a_certificate, "hello\n").unwrap();
    let base = EmailSettings {
        host: "127.0.0.1".to_string(),
        port: 2525,
        tls: EmailTls::StartTls,
        ca_file: None,
        username: None,
        password: None,
        from: FROM.to_string(),
        reply_to: None,
        pool_size: 1,
        timeout_ms: 1_000,
    };
    let setup_error = |settings: EmailSettings| match EmailChannel::new(&settings) {
        Ok(_) => panic!("expected a setup error for {settings:?}"),
        Err(error) => error,
    };

    let missing = setup_error(EmailSettings {
        ca_file: Some(dir.path().join("missing.pem")),
        ..base.clone()
    });
    assert!(matches!(missing, EmailSetupError::Invalid(_)));
    assert!(
        missing.to_string().contains("channels.email.ca_file"),
        "{missing}"
    );

    let invalid = setup_error(EmailSettings {
        ca_file: Some(not_a_certificate),
        ..base.clone()
    });
    assert!(
        matches!(invalid, EmailSetupError::CaFileInvalid { .. }),
        "{invalid}"
    );

    let from = setup_error(EmailSettings {
        from: "Paystep <not an address>".to_string(),
        ..base.clone()
    });
    assert!(from.to_string().contains("channels.email.from"), "{from}");

    let reply_to = setup_error(EmailSettings {
        reply_to: Some("@@".to_string()),
        ..base.clone()
    });
    assert!(
        reply_to.to_string().contains("channels.email.reply_to"),
        "{reply_to}"
    );

    let half_login = setup_error(EmailSettings {
        username: Some(USER.to_string()),
        ..base.clone()
    });
    assert!(
        half_login
            .to_string()
            .contains("`channels.email.username`: needs channels.email.password"),
        "{half_login}"
    );

    let no_pool = setup_error(EmailSettings {
        pool_size: 0,
        ..base.clone()
    });
    assert!(
        no_pool
            .to_string()
            .contains("`channels.email.pool_size`: must be between 1 and 64"),
        "{no_pool}"
    );
}

/// The email channel in the suite every adapter passes, against the real SMTP server: the
/// message id reaches it as the `Message-ID`.
struct EmailPeer {
    server: SmtpServer,
    settings: EmailSettings,
    channel: Arc<EmailChannel>,
}

#[async_trait]
impl Peer for EmailPeer {
    fn channel(&self) -> Arc<dyn Channel> {
        self.channel.clone()
    }

    fn message(&self, id: &str) -> OutboundMessage {
        confirmation_request(id, "anna@example.com", "en")
    }

    async fn received_ids(&self, count: usize) -> Vec<String> {
        self.server
            .received(count)
            .await
            .iter()
            .take(count)
            .map(|record| text_of(record, "message_id"))
            .collect()
    }

    fn channel_to_silent_peer(
        &self,
        silent: std::net::SocketAddr,
        timeout: Duration,
    ) -> Option<Arc<dyn Channel>> {
        let settings = EmailSettings {
            host: silent.ip().to_string(),
            port: silent.port(),
            timeout_ms: timeout.as_millis() as u64,
            ..self.settings.clone()
        };
        Some(Arc::new(
            EmailChannel::new(&settings).expect("valid settings"),
        ))
    }

    fn secrets(&self) -> Vec<String> {
        vec![PASSWORD.to_string()]
    }

    fn debug_renderings(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.settings),
            format!("{:?}", self.channel),
        ]
    }

    /// The relay made to answer each way: it rejects one recipient for good (550) and
    /// fails another for now (451).
    async fn answers(&self) -> Vec<AnswerCase> {
        let mut cases = Vec::new();
        for (to, answer, expected) in [
            (
                "gone@example.com",
                "550 5.1.1 mailbox unavailable",
                Class::Permanent,
            ),
            (
                "busy@example.com",
                "451 4.3.0 try again later",
                Class::Retriable,
            ),
            ("anna@example.com", "250 OK", Class::Accepted),
        ] {
            let result = self
                .channel
                .send(&confirmation_request(&format!("answer-{to}"), to, "en"))
                .await;
            cases.push(AnswerCase {
                answer: answer.into(),
                classed: Class::of(&result),
                expected,
            });
        }
        cases
    }
}

#[tokio::test]
async fn the_email_channel_passes_the_conformance_suite() {
    let server = SmtpServer::start(ServerOptions {
        reject: &["gone@example.com"],
        tempfail: &["busy@example.com"],
        ..ServerOptions::default()
    })
    .await;
    let settings = server.settings(EmailTls::StartTls);
    let channel = Arc::new(EmailChannel::new(&settings).expect("the channel builds"));
    let peer = EmailPeer {
        server,
        settings,
        channel,
    };
    conformance::run(&peer).await;
}
