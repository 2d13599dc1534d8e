//! The stand-in voice platform (`voice_platform.py`) as a child process, with its control
//! API. Shared by the channel tests and the daemon's tests (`#[path]`), so it uses only std,
//! tokio, reqwest without features, and serde_json.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "voice-auth-token-1234567890";
/// The Standard Webhooks secret of its VoiceXML side.
pub const VXML_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct Platform {
    port: u16,
    http: reqwest::Client,
    _child: Child,
}

impl Platform {
    pub async fn start() -> Platform {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|dir| dir.join("tests/peers/voice_platform.py"))
            .find(|path| path.exists())
            .expect("voice_platform.py is in the repository");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--account-sid", ACCOUNT_SID])
            .args(["--auth-token", AUTH_TOKEN, "--vxml-secret", VXML_SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the voice platform (scripts/test.sh installs twilio)");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("the voice platform starts; scripts/test.sh installs the twilio package")
            .expect("its stdout is readable");
        assert_eq!(line.as_deref(), Some("listening"));
        Platform {
            port,
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn json(response: reqwest::Response) -> Value {
        let body = response.bytes().await.expect("a body");
        serde_json::from_slice(&body).expect("a JSON body")
    }

    /// POSTs a control command; answers its JSON.
    pub async fn control(&self, path: &str, command: Value) -> Value {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(command.to_string())
            .send()
            .await
            .expect("the platform answers");
        assert!(response.status().is_success(), "{path}");
        Self::json(response).await
    }

    /// GETs a list the platform keeps (`/_calls`, `/_verifications`).
    pub async fn list(&self, path: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the platform answers");
        Self::json(response)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn calls(&self) -> Vec<Value> {
        self.list("/_calls").await
    }

    /// The platform's request during a call and paystep's answer: (status, body).
    pub async fn step(&self, path: &str, command: Value) -> (u16, String) {
        let answer = self.control(path, command).await;
        (
            answer["status"].as_u64().unwrap_or_default() as u16,
            answer["body"].as_str().unwrap_or_default().to_string(),
        )
    }
}
