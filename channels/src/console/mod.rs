//! The console channel: every outbound message as one JSON object per line, to stdout or a
//! file. It is the embedded default's channel and the one tests read links from.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::{Channel, ChannelName, Delivery, OutboundMessage, SendError};

/// Where the console channel writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTarget {
    Stdout,
    File(PathBuf),
}

impl ConsoleTarget {
    /// `-` means standard output; anything else is a file path, appended to.
    pub fn parse(path: &str) -> ConsoleTarget {
        if path == "-" {
            ConsoleTarget::Stdout
        } else {
            ConsoleTarget::File(PathBuf::from(path))
        }
    }
}

/// `[channels.console]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    pub enabled: bool,
    /// `-` for standard output, or a file appended to.
    pub path: String,
}

impl ConsoleSettings {
    /// Every problem, with keys relative to `channels.console`.
    pub fn validate(&self, problems: &mut crate::Problems) {
        problems.require(!self.path.is_empty(), "path", "must be `-` or a file path");
    }

    /// The channel, when enabled.
    pub fn build(&self) -> Option<ConsoleChannel> {
        self.enabled
            .then(|| ConsoleChannel::new(ConsoleTarget::parse(&self.path)))
    }
}

#[derive(Debug)]
pub struct ConsoleChannel {
    target: ConsoleTarget,
    // Serialises writers so that concurrent deliveries never interleave within a line.
    write_lock: Mutex<()>,
}

/// The line format: fields named in the design are the contract; the rest are extras.
#[derive(Serialize)]
struct ConsoleLine<'a> {
    channel: &'static str,
    kind: &'static str,
    to: &'a str,
    process_id: Option<&'a str>,
    code: Option<&'a str>,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    message_id: &'a str,
    intended_channel: &'static str,
    retailer_id: Option<&'a str>,
    description: Option<&'a str>,
    reference: Option<&'a str>,
    language: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::Value>,
}

impl ConsoleChannel {
    pub fn new(target: ConsoleTarget) -> ConsoleChannel {
        ConsoleChannel {
            target,
            write_lock: Mutex::new(()),
        }
    }

    /// Renders one message as its console line, without the trailing newline.
    pub fn render_line(message: &OutboundMessage) -> String {
        let line = ConsoleLine {
            channel: ChannelName::Console.as_str(),
            kind: message.kind.as_str(),
            to: &message.to,
            process_id: message.process_id.as_deref(),
            code: message.code.as_deref(),
            text: &message.text,
            url: message.url.as_deref(),
            message_id: &message.id,
            intended_channel: message.intended_channel.as_str(),
            retailer_id: message.retailer_id.as_deref(),
            description: message.description.as_deref(),
            reference: message.reference.as_deref(),
            language: &message.language,
            payload: message.payload.as_ref(),
        };
        serde_json::to_string(&line).expect("a console line always serialises")
    }

    async fn write_line(&self, line: &str) -> std::io::Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        match &self.target {
            ConsoleTarget::Stdout => {
                let mut stdout = tokio::io::stdout();
                stdout.write_all(&bytes).await?;
                stdout.flush().await
            }
            ConsoleTarget::File(path) => {
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                file.write_all(&bytes).await?;
                file.flush().await
            }
        }
    }
}

/// Console sends the dispatcher may have in flight (they queue on the write lock).
const CONSOLE_SENDS_IN_FLIGHT_MAX: usize = 64;

#[async_trait]
impl Channel for ConsoleChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Console
    }

    /// Lines are written one at a time under a lock, so sends in flight cost nothing but
    /// let the dispatcher claim a backlog in large batches.
    fn parallel_sends_max(&self) -> Option<usize> {
        Some(CONSOLE_SENDS_IN_FLIGHT_MAX)
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        let line = Self::render_line(message);
        // A full disk or a closed pipe may pass; the outbox tries again.
        self.write_line(&line)
            .await
            .map_err(|error| SendError::Retriable(format!("cannot write console line: {error}")))?;
        Ok(Delivery::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageKind;

    fn message() -> OutboundMessage {
        OutboundMessage {
            id: "m1".into(),
            channel: ChannelName::Console,
            intended_channel: ChannelName::Sms,
            kind: MessageKind::ConfirmationRequest,
            to: "+491701234567".into(),
            retailer_id: Some("r1".into()),
            process_id: Some("p1".into()),
            code: Some("123456".into()),
            description: None,
            reference: None,
            language: "en".into(),
            text: "Pay 5.00 EUR".into(),
            url: Some("http://x/c/t".into()),
            expires_at_ms: None,
            payload: None,
            signing_secrets: Vec::new(),
        }
    }

    #[test]
    fn a_console_line_has_every_field_of_the_contract() {
        let line: serde_json::Value =
            serde_json::from_str(&ConsoleChannel::render_line(&message())).unwrap();
        assert_eq!(line["channel"], "console");
        assert_eq!(line["kind"], "confirmation_request");
        assert_eq!(line["to"], "+491701234567");
        assert_eq!(line["process_id"], "p1");
        assert_eq!(line["code"], "123456");
        assert_eq!(line["text"], "Pay 5.00 EUR");
        assert_eq!(line["url"], "http://x/c/t");
    }

    #[tokio::test]
    async fn lines_are_appended_to_the_configured_file() {
        let dir = std::env::temp_dir().join(format!("paystep-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let _ = std::fs::remove_file(&path);
        let channel = ConsoleChannel::new(ConsoleTarget::File(path.clone()));
        channel.send(&message()).await.unwrap();
        channel.send(&message()).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
