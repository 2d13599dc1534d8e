//! Kannel's Push Proxy Gateway (Debian `kannel`: bearerbox + wapbox) in front of an SMSC, as
//! a test peer. Shared by the channel tests and the daemon's tests (`#[path]`), so it uses
//! only std, tokio and tempfile.
//!
//! Each instance has its own ports (picked free), configuration and logs; it opens no UDP
//! port, so several run side by side. It is stopped with SIGKILL by PID, and a restart keeps
//! its ports. See `kannel.conf.template` for what the configuration does and why.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub const PPG_USERNAME: &str = "pi";
pub const PPG_PASSWORD: &str = "pisecret";
/// How long a box gets to open its port.
const START_WAIT: Duration = Duration::from_secs(20);

const TEMPLATE: &str = include_str!("kannel.conf.template");

pub struct Kannel {
    dir: tempfile::TempDir,
    pub ppg_port: u16,
    wapbox_port: u16,
    bearerbox: Option<Child>,
    wapbox: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Debian installs the boxes in /usr/sbin, which is not on every PATH.
fn program(name: &str) -> PathBuf {
    let installed = Path::new("/usr/sbin").join(name);
    if installed.exists() {
        installed
    } else {
        PathBuf::from(name)
    }
}

async fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + START_WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{what} did not open port {port} within {START_WAIT:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Kannel {
    /// Starts bearerbox, then wapbox with its PPG, connected to the SMSC on `smsc_port`.
    pub async fn start(smsc_port: u16) -> Kannel {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (ppg_port, wapbox_port) = (free_port(), free_port());
        let config = TEMPLATE
            .replace("{ADMIN_PORT}", &free_port().to_string())
            .replace("{SMSBOX_PORT}", &free_port().to_string())
            .replace("{WAPBOX_PORT}", &wapbox_port.to_string())
            .replace("{PPG_PORT}", &ppg_port.to_string())
            .replace("{SMSC_PORT}", &smsc_port.to_string())
            .replace("{PPG_USERNAME}", PPG_USERNAME)
            .replace("{PPG_PASSWORD}", PPG_PASSWORD)
            .replace("{LOG_DIR}", &dir.path().display().to_string());
        std::fs::write(dir.path().join("kannel.conf"), config).expect("the config is written");
        let mut kannel = Kannel {
            dir,
            ppg_port,
            wapbox_port,
            bearerbox: None,
            wapbox: None,
        };
        kannel.spawn().await;
        kannel
    }

    /// The PAP endpoint.
    pub fn ppg_url(&self) -> String {
        format!("http://127.0.0.1:{}/wappush", self.ppg_port)
    }

    fn box_command(&self, name: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.out")))
            .expect("the box's output file opens");
        Command::new(program(name))
            .arg(self.dir.path().join("kannel.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the output file clones"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{name} runs ({error}); scripts/test.sh installs Debian's kannel")
            })
    }

    /// wapbox must find bearerbox listening, or it exits at once.
    async fn spawn(&mut self) {
        self.bearerbox = Some(self.box_command("bearerbox"));
        let bearerbox_log = self.dir.path().join("bearerbox.out");
        wait_for_port(self.wapbox_port, "bearerbox", &bearerbox_log).await;
        self.wapbox = Some(self.box_command("wapbox"));
        let wapbox_log = self.dir.path().join("wapbox.out");
        wait_for_port(self.ppg_port, "wapbox's PPG", &wapbox_log).await;
    }

    /// SIGKILL to both boxes, waiting until they are gone (a second bearerbox on the same
    /// ports would panic). Pushes Kannel accepted and had not sent are lost with it.
    pub async fn stop(&mut self) {
        for child in [self.wapbox.take(), self.bearerbox.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// The boxes' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        ["bearerbox.log", "wapbox.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One WAP push as the SMSC received it, in one or more segments.
pub struct ReceivedPush {
    pub destination: String,
    pub segments_hex: Vec<String>,
}

/// Groups an SMSC's submits (its JSON records) into WAP pushes: data_coding 4 with a UDH
/// addressing port 2948 (WAP push), segments joined by their concatenation reference.
pub fn wap_pushes(submits: &[serde_json::Value]) -> Vec<ReceivedPush> {
    let mut pushes: Vec<(Option<i64>, ReceivedPush)> = Vec::new();
    for submit in submits {
        let udh = submit["udh_hex"].as_str().unwrap_or("");
        // IE 0x05 (16-bit ports) with destination 0x0B84 = 2948.
        if submit["data_coding"] != 4 || !udh.contains("05040b84") {
            continue;
        }
        let destination = submit["destination_addr"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let hex = submit["short_message_hex"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let reference = submit["concatenation"]["reference"].as_i64();
        let existing = pushes.iter_mut().find(|(known, push)| {
            reference.is_some()
                && *known == reference
                && push.destination == destination
                && push.segments_hex.len()
                    < submit["concatenation"]["total"].as_u64().unwrap_or(1) as usize
        });
        match existing {
            Some((_, push)) => push.segments_hex.push(hex),
            None => pushes.push((
                reference,
                ReceivedPush {
                    destination,
                    segments_hex: vec![hex],
                },
            )),
        }
    }
    pushes.into_iter().map(|(_, push)| push).collect()
}

/// Decodes a push with `decode_push.py`, which strips the UDH and the WSP header and hands the
/// WBXML to Debian's `wbxml2xml` (libwbxml2-utils), a decoder nobody here wrote.
pub async fn decode_push(push: &ReceivedPush) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/peers/kannel/decode_push.py"))
        .find(|path| path.exists())
        .expect("decode_push.py is in the repository");
    let output = Command::new("python3")
        .arg(script)
        .args(&push.segments_hex)
        .output()
        .await
        .expect("python3 runs the decoder");
    assert!(
        output.status.success(),
        "the push does not decode: {} (segments: {:?})",
        String::from_utf8_lossy(&output.stderr),
        push.segments_hex
    );
    String::from_utf8(output.stdout).expect("the SI is UTF-8")
}
