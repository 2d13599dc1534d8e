//! The vocabulary paystep's core and its channel adapters share.
//!
//! A channel turns domain messages into wire messages and back. Channels never touch the
//! ledger: outbound, they receive an [`OutboundMessage`] that the core has already committed
//! to its outbox; inbound, they hand an [`InboundMessage`] to the core through an
//! [`InboundSink`]. This crate holds only what both sides must agree on, so that the core
//! compiles without any adapter's wire library.

#[cfg(feature = "conformance")]
pub mod conformance;
mod message;
mod settings;

pub use message::{
    ChannelName, InboundError, InboundMessage, InboundSink, MessageKind, OutboundMessage,
};
pub use settings::{Problems, Secret};

use async_trait::async_trait;

/// What a delivery attempt produced when it succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The identifier the peer gave the message (SMSC message id, SMTP Message-ID, PAP
    /// push-id), if any.
    pub remote_id: Option<String>,
}

/// Why a delivery attempt failed, classified so the outbox knows whether to try again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The peer may accept the message later: a timeout, a refused connection, a throttle.
    #[error("retriable: {0}")]
    Retriable(String),
    /// The peer will never accept this message: a bad address, a rejected content.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Why a channel is not healthy.
#[derive(Debug, thiserror::Error)]
#[error("{channel} is unhealthy: {reason}")]
pub struct HealthError {
    pub channel: ChannelName,
    pub reason: String,
}

/// A channel adapter.
///
/// Required: [`Channel::name`] and [`Channel::send`]. Every adapter passes the conformance
/// suite (feature `conformance`): the message id reaches the peer, peer answers are classed
/// by an exhaustive match, the health check is bounded in time, `Debug` shows no secret, and
/// a cancelled send leaves the channel usable.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The channel this adapter implements.
    fn name(&self) -> ChannelName;

    /// Delivers one message. Called by the outbox dispatcher, possibly more than once for the
    /// same message after a crash, so peers that can deduplicate get `message.id`. The
    /// future may be dropped at any await point (a shutdown, a lease running out): dropping
    /// it must release whatever it held.
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError>;

    /// How many sends the dispatcher may have in flight on this channel at once; `None`
    /// when the adapter sets no bound of its own (the dispatcher then uses
    /// `outbox.workers`). An adapter with its own flow control (an SMPP window, an SMTP
    /// pool) names it, so that the dispatcher keeps that flow control full.
    fn parallel_sends_max(&self) -> Option<usize> {
        None
    }

    /// Checks that the peer is reachable and accepts us, within the adapter's own timeout.
    async fn health_check(&self) -> Result<(), HealthError> {
        Ok(())
    }

    /// Says goodbye to the peer (an SMPP unbind) on the way out; most adapters have nothing
    /// to say.
    async fn shutdown(&self) {}

    /// Reads a request the peer made to the daemon over HTTP (a PPG's result notification),
    /// which the core routes at `POST /peers/{channel}/{token}`; `None` for adapters whose
    /// peers make none.
    fn receive_from_peer(&self, _request: PeerRequest<'_>) -> Option<PeerRequestOutcome> {
        None
    }

    /// Whether a voice platform's request is genuine (its signature over the URL it was sent
    /// to and its form fields); `false` for adapters that place no calls.
    fn authenticate_call_request(&self, _request: &CallRequest<'_>) -> bool {
        false
    }

    /// The next step of a call, written in the platform's dialect (TwiML, VoiceXML); `None`
    /// for adapters that place no calls.
    fn render_call_step(&self, _step: &CallStep) -> Option<PeerAnswer> {
        None
    }

    /// The secret token the URL of a call's `purpose` ("script", "status") carries, for
    /// platforms that do not sign their requests (VoiceXML); `None` otherwise.
    fn call_url_token(&self, _message_id: &str, _purpose: &str) -> Option<String> {
        None
    }

    /// Asks the speaker-verification service whether a recorded phrase is the customer's
    /// voice (claim 13); `None` for adapters without one.
    async fn verify_speaker(&self, _sample: &SpeakerSample<'_>) -> Option<SpeakerVerdict> {
        None
    }
}

/// A phrase recorded in a call, to be checked against the customer's voice.
#[derive(Debug, Clone, Copy)]
pub struct SpeakerSample<'a> {
    pub recording_url: &'a str,
    pub customer_id: &'a str,
    pub call_sid: &'a str,
}

/// The speaker-verification service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeakerVerdict {
    Match,
    NoMatch,
    /// No verdict in time, or an answer that is none: the confirmation does not count.
    Unavailable(String),
}

/// A request a voice platform made while a call runs: the full URL as the platform saw it,
/// its form fields, and its signature header.
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    pub url: &'a str,
    pub fields: &'a [(String, String)],
    pub signature: Option<&'a str>,
}

/// What a call does next, in words; the voice adapter writes it in its platform's dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallStep {
    /// Says `text`, then gathers keys (up to `#`, or one key when `one_key`) and posts them
    /// to `answer_url`; says `no_input` and ends when nothing is keyed.
    Ask {
        text: String,
        language: String,
        answer_url: String,
        one_key: bool,
        no_input: String,
    },
    /// Says `text`, then records up to `max_length_s` seconds and posts the recording's URL
    /// to `recording_url`.
    Record {
        text: String,
        language: String,
        recording_url: String,
        max_length_s: u32,
    },
    /// Says `text` and hangs up.
    End { text: String, language: String },
}

/// A request a channel's peer made to the daemon.
#[derive(Debug, Clone, Copy)]
pub struct PeerRequest<'a> {
    /// The last segment of the path: the secret the peer was given in its URL.
    pub token: &'a str,
    pub body: &'a [u8],
}

/// An HTTP answer the adapter writes for its peer, in the peer's own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// What the adapter made of a peer's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRequestOutcome {
    /// The token is wrong: the core answers 403 and counts a guess.
    Refused,
    /// Not a request the adapter understands: answered as it is, and nothing changes.
    Invalid(PeerAnswer),
    /// A message for the core; `answer` goes back once the core has committed it.
    Received {
        message: InboundMessage,
        answer: PeerAnswer,
    },
}

/// Compares without an early exit, so that the time taken tells nothing about a secret.
pub fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}
