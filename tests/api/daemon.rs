//! The real binary as a child process, for tests that kill it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::{ADMIN_TOKEN, PIN};

pub struct Daemon {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn paystep(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paystep"));
    command
        .env("PAYSTEP__DATABASE__URL", database_url)
        .env("PAYSTEP__ADMIN__TOKEN", ADMIN_TOKEN)
        .env("PAYSTEP__LOG__LEVEL", "warn");
    command
}

pub async fn start_daemon(database_url: &str, console_path: &Path) -> Daemon {
    start_daemon_on(database_url, console_path, free_port(), &[]).await
}

/// Starts the daemon on `port` with extra `PAYSTEP__...` settings, and waits until ready.
pub async fn start_daemon_on(
    database_url: &str,
    console_path: &Path,
    port: u16,
    settings: &[(&str, &str)],
) -> Daemon {
    start_daemon_with(
        database_url,
        console_path,
        port,
        settings,
        Launch::default(),
    )
    .await
}

/// How the daemon is started beyond its settings: extra arguments, where its log goes.
#[derive(Default)]
struct Launch<'a> {
    args: &'a [&'a std::ffi::OsStr],
    log: Option<std::fs::File>,
}

/// Starts the daemon with a configuration file laid over the defaults and its log
/// (stderr) written to `log_path`.
pub async fn start_daemon_logging(
    database_url: &str,
    console_path: &Path,
    (config_path, log_path): (&Path, &Path),
    settings: &[(&str, &str)],
) -> Daemon {
    let log = std::fs::File::create(log_path).expect("the log file can be created");
    let args = ["--config".as_ref(), config_path.as_os_str()];
    let launch = Launch {
        args: &args,
        log: Some(log),
    };
    start_daemon_with(database_url, console_path, free_port(), settings, launch).await
}

async fn start_daemon_with(
    database_url: &str,
    console_path: &Path,
    port: u16,
    settings: &[(&str, &str)],
    launch: Launch<'_>,
) -> Daemon {
    let log = launch.log.map_or_else(Stdio::inherit, Stdio::from);
    let base = format!("http://127.0.0.1:{port}");
    let child = paystep(database_url)
        .arg("serve")
        .args(launch.args)
        .env("PAYSTEP__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYSTEP__HTTP__PUBLIC_URL", &base)
        .env("PAYSTEP__CHANNELS__CONSOLE__PATH", console_path)
        .env("PAYSTEP__OUTBOX__POLL_INTERVAL_MS", "20")
        // A message the killed daemon had claimed waits out this lease before the new one
        // delivers it.
        .env("PAYSTEP__OUTBOX__CLAIM_LEASE_MS", "500")
        .env("PAYSTEP__CHANNELS__WEBHOOK__TIMEOUT_MS", "400")
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the paystep binary starts");
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == StatusCode::OK {
                return Daemon {
                    child,
                    base,
                    client,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the daemon did not become ready");
}

impl Daemon {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn sigkill(mut self) {
        // tokio's kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().await.unwrap();
    }
}

pub fn console_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A retailer as created: `api_key` and `webhook_secret` among its fields.
pub struct DaemonRetailer {
    pub api_key: String,
    pub webhook_secret: String,
}

impl Daemon {
    /// Creates a customer from `body` with `credit` EUR; returns its id.
    pub async fn create_customer(&self, body: Value, credit: &str) -> String {
        use reqwest::Method;
        let (status, customer) = self
            .call(Method::POST, "/admin/v1/customers", ADMIN_TOKEN, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{customer}");
        let id = customer["id"].as_str().unwrap().to_string();
        let deposit_path = format!("/admin/v1/customers/{id}/deposits");
        let deposit = json!({"amount": credit, "currency": "EUR"});
        let (status, _) = self
            .call(Method::POST, &deposit_path, ADMIN_TOKEN, Some(deposit))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        id
    }

    /// Creates a retailer; with `webhook_port`, one whose events go to that receiver.
    pub async fn create_retailer(&self, webhook_port: Option<u16>) -> DaemonRetailer {
        let body = match webhook_port {
            Some(port) => json!({
                "name": "Kiosk",
                "webhook_url": format!("http://127.0.0.1:{port}/hook"),
                "notify": ["webhook"],
            }),
            None => json!({"name": "Kiosk"}),
        };
        let (status, retailer) = self
            .call(
                reqwest::Method::POST,
                "/admin/v1/retailers",
                ADMIN_TOKEN,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{retailer}");
        DaemonRetailer {
            api_key: retailer["api_key"].as_str().unwrap().to_string(),
            webhook_secret: retailer["webhook_secret"].as_str().unwrap().to_string(),
        }
    }

    /// A customer with `credit` EUR and the test PIN, billed for `release` EUR and confirmed
    /// on the page whose link the console shows. Returns the process id.
    pub async fn open_confirmed_process(
        &self,
        console_path: &Path,
        api_key: &str,
        msisdn: &str,
        (credit, release): (&str, &str),
    ) -> String {
        use reqwest::Method;
        let customer = json!({"name": "Ben", "msisdn": msisdn, "pin": PIN});
        self.create_customer(customer, credit).await;
        let body = json!({"customer": {"msisdn": msisdn}, "currency": "EUR", "release": release, "description": "Snacks"});
        let (status, process) = self
            .call(Method::POST, "/v1/processes", api_key, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{process}");
        let process_id = process["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let link = loop {
            let request = console_lines(console_path).into_iter().find(|m| {
                m["kind"] == "confirmation_request" && m["process_id"] == process_id.as_str()
            });
            if let Some(request) = request {
                break request["url"].as_str().unwrap().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no confirmation request reached the console"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let confirmed = self
            .client
            .post(&link)
            .form(&[("action", "confirm"), ("pin", PIN)])
            .send()
            .await
            .unwrap();
        assert_eq!(confirmed.status(), StatusCode::OK);
        process_id
    }
}
