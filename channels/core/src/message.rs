use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The channels a message can travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelName {
    Sms,
    Email,
    WapPush,
    Voice,
    Webhook,
    Console,
}

impl ChannelName {
    pub const ALL: [ChannelName; 6] = [
        ChannelName::Sms,
        ChannelName::Email,
        ChannelName::WapPush,
        ChannelName::Voice,
        ChannelName::Webhook,
        ChannelName::Console,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelName::Sms => "sms",
            ChannelName::Email => "email",
            ChannelName::WapPush => "wap_push",
            ChannelName::Voice => "voice",
            ChannelName::Webhook => "webhook",
            ChannelName::Console => "console",
        }
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ChannelName::ALL
            .into_iter()
            .find(|name| name.as_str() == text)
            .ok_or_else(|| {
                format!("unknown channel {text:?}; expected one of sms, email, wap_push, voice, webhook, console")
            })
    }
}

/// What an outbound message is, in the words of the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    ConfirmationRequest,
    ExecutionMessage,
    Receipt,
    IdentifierNotification,
    Notice,
    /// A retailer event (`process.created`, `step.charged`, ...) as JSON, for webhooks.
    Event,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::ConfirmationRequest => "confirmation_request",
            MessageKind::ExecutionMessage => "execution_message",
            MessageKind::Receipt => "receipt",
            MessageKind::IdentifierNotification => "identifier_notification",
            MessageKind::Notice => "notice",
            MessageKind::Event => "event",
        }
    }
}

impl FromStr for MessageKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            MessageKind::ConfirmationRequest,
            MessageKind::ExecutionMessage,
            MessageKind::Receipt,
            MessageKind::IdentifierNotification,
            MessageKind::Notice,
            MessageKind::Event,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| format!("unknown message kind {text:?}"))
    }
}

/// One message the core has committed to its outbox, ready for a channel to deliver.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// Stable across delivery attempts, so peers can deduplicate.
    pub id: String,
    /// The channel that delivers the message.
    pub channel: ChannelName,
    /// The channel the message was meant for (the customer's preference or the retailer's
    /// request); differs from `channel` when that one is not configured and the console
    /// stands in for it.
    pub intended_channel: ChannelName,
    pub kind: MessageKind,
    /// The address on that channel: an MSISDN, an email address, a URL, a retailer id.
    pub to: String,
    pub retailer_id: Option<String>,
    pub process_id: Option<String>,
    pub code: Option<String>,
    /// The process's context as the retailer gave it: what the goods or service are.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
    /// Two-letter language of the recipient, `en` or `de`.
    pub language: String,
    /// The human-readable text, already in the recipient's language.
    pub text: String,
    /// The link the message carries, such as the confirmation page.
    pub url: Option<String>,
    /// When that link stops working (Unix ms): a Service Indication's `si-expires`.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// Structured content for machine recipients (webhook events), as JSON.
    pub payload: Option<serde_json::Value>,
    /// Secrets to sign with (a webhook's current and, during a rotation, previous secret).
    /// Looked up at delivery time, never stored with the message.
    #[serde(skip)]
    pub signing_secrets: Vec<String>,
}

// Secrets never reach a log line.
impl std::fmt::Debug for OutboundMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundMessage")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("intended_channel", &self.intended_channel)
            .field("kind", &self.kind)
            .field("to", &self.to)
            .field("retailer_id", &self.retailer_id)
            .field("process_id", &self.process_id)
            .field("code", &self.code)
            .field("language", &self.language)
            // The text and the link carry confirmation tokens: capabilities, not data.
            .field(
                "text",
                &format_args!("<{} chars>", self.text.chars().count()),
            )
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("expires_at_ms", &self.expires_at_ms)
            .field("payload", &self.payload)
            .field(
                "signing_secrets",
                &format_args!("<{} redacted>", self.signing_secrets.len()),
            )
            .finish()
    }
}

/// A message from a terminal, already parsed out of its wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundMessage {
    /// A customer approves a pending confirmation request (`YES`/`OK`/`JA [code] [PIN]`).
    Approve {
        channel: ChannelName,
        from: String,
        code: Option<String>,
        pin: Option<String>,
    },
    /// A customer declines a pending confirmation request (`NO`/`NEIN [code]`).
    Decline {
        channel: ChannelName,
        from: String,
        code: Option<String>,
    },
    /// A customer claims a point-of-sale process (`PAY <code> [amount] [PIN]`); `amount` is
    /// the decimal text as typed, validated by the core against the process's currency.
    Pay {
        channel: ChannelName,
        from: String,
        code: String,
        amount: Option<String>,
        pin: Option<String>,
    },
    /// A customer asks for the balance (`BAL`).
    Balance { channel: ChannelName, from: String },
    /// Anything else: the customer gets a short help reply and nothing changes.
    Unrecognized {
        channel: ChannelName,
        from: String,
        text: String,
    },
    /// The peer reports the fate of an outbound message it accepted under `remote_id`.
    DeliveryReceipt {
        channel: ChannelName,
        remote_id: String,
        /// The final state as the peer names it: `DELIVERED`, `UNDELIVERABLE`, `EXPIRED`, ...
        state: String,
        error: Option<String>,
    },
}

/// Why the core could not take an inbound message now; the adapter answers its peer so that
/// the peer delivers the message again later (for SMPP, a temporary `deliver_sm_resp` error).
#[derive(Debug, thiserror::Error)]
#[error("the core cannot take the message now: {0}")]
pub struct InboundError(pub String);

/// Where channels hand inbound messages; implemented by the core. An adapter acknowledges a
/// message to its peer only after `receive` returned `Ok`: then the message's effects are
/// committed, so an acknowledged message is never lost. Receiving the same message twice
/// is harmless.
#[async_trait]
pub trait InboundSink: Send + Sync {
    async fn receive(&self, message: InboundMessage) -> Result<(), InboundError>;
}
