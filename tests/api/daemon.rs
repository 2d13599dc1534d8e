//! The real binary as a child process, for tests that kill it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::helpers::ADMIN_TOKEN;

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
    let base = format!("http://127.0.0.1:{port}");
    let child = paystep(database_url)
        .arg("serve")
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
