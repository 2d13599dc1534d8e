//! The suite every channel adapter passes (feature `conformance`, for tests only).
//!
//! An adapter's tests implement [`Peer`] around a running peer (the real one wherever the
//! adapter has one: an SMSC simulator, an SMTP server, Kannel's PPG) and call [`run`], which
//! checks, in order:
//! 1. the message id reaches the peer: a repeated send carries the same id, another message
//!    a different one, so a peer can recognise a repeat;
//! 2. every peer answer the adapter knows is classed retriable or permanent as expected (the
//!    classifying function itself is an exhaustive `match`, so a new answer cannot slip
//!    through unclassified);
//! 3. the health check against a peer that accepts connections and never answers returns an
//!    error within a bound;
//! 4. no `Debug` rendering of the settings or the channel shows a secret;
//! 5. sends dropped at any moment (more of them than the channel runs at once) leave the
//!    channel usable: the next send is delivered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::TcpListener;

use crate::{Channel, OutboundMessage, SendError};

/// How a peer answer is classed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Accepted,
    Retriable,
    Permanent,
}

impl Class {
    /// The class of a send's result.
    pub fn of<T>(result: &Result<T, SendError>) -> Class {
        match result {
            Ok(_) => Class::Accepted,
            Err(SendError::Retriable(_)) => Class::Retriable,
            Err(SendError::Permanent(_)) => Class::Permanent,
        }
    }
}

/// One peer answer, the class the adapter gave it, and the class it must have.
#[derive(Debug, Clone)]
pub struct AnswerCase {
    pub answer: String,
    pub classed: Class,
    pub expected: Class,
}

/// What the suite needs from an adapter's test.
#[async_trait]
pub trait Peer: Send + Sync {
    /// The adapter's channel, pointed at the running peer.
    fn channel(&self) -> Arc<dyn Channel>;

    /// A message with `id` that this peer takes (the right kind of address).
    fn message(&self, id: &str) -> OutboundMessage;

    /// The message ids the peer has received, as the peer saw them (a `webhook-id` header, a
    /// `Message-ID`, a PAP `push-id`), in arrival order: waits until at least `count` have
    /// arrived and returns the first `count`.
    async fn received_ids(&self, count: usize) -> Vec<String>;

    /// A channel of this adapter pointed at `silent` (a listener that accepts and never
    /// answers) with its timeouts at `timeout`; `None` for an adapter whose health does not
    /// depend on one peer (the console, webhooks to many retailers).
    fn channel_to_silent_peer(
        &self,
        silent: SocketAddr,
        timeout: Duration,
    ) -> Option<Arc<dyn Channel>>;

    /// The secrets in this adapter's settings.
    fn secrets(&self) -> Vec<String>;

    /// `Debug` renderings of the adapter's settings and channel.
    fn debug_renderings(&self) -> Vec<String>;

    /// Peer answers and how the adapter classed them: from the real peer made to give them
    /// where it can, and through the adapter's classifying function for the rest.
    async fn answers(&self) -> Vec<AnswerCase>;
}

/// Runs every check; panics with what failed.
pub async fn run(peer: &dyn Peer) {
    message_id_reaches_the_peer(peer).await;
    answers_are_classed(peer).await;
    health_check_is_bounded(peer).await;
    debug_shows_no_secret(peer);
    cancelled_sends_leave_the_channel_usable(peer).await;
}

const SEND_BOUND: Duration = Duration::from_secs(30);

async fn send_bounded(channel: &dyn Channel, message: &OutboundMessage) {
    match tokio::time::timeout(SEND_BOUND, channel.send(message)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => panic!("{}: sending {} failed: {error}", channel.name(), message.id),
        Err(_) => panic!(
            "{}: sending {} took over {SEND_BOUND:?}",
            channel.name(),
            message.id
        ),
    }
}

async fn message_id_reaches_the_peer(peer: &dyn Peer) {
    let channel = peer.channel();
    let first = peer.message("7d1c2a52-5b0e-4f43-9d1e-0c3f5a6b7001");
    let second = peer.message("7d1c2a52-5b0e-4f43-9d1e-0c3f5a6b7002");
    // The same message twice, as after a crash between the send and its record.
    send_bounded(channel.as_ref(), &first).await;
    send_bounded(channel.as_ref(), &first).await;
    send_bounded(channel.as_ref(), &second).await;
    let ids = peer.received_ids(3).await;
    assert_eq!(ids.len(), 3, "{}: the peer got {ids:?}", channel.name());
    assert!(
        !ids[0].is_empty(),
        "{}: no id reached the peer",
        channel.name()
    );
    assert_eq!(
        ids[0],
        ids[1],
        "{}: a repeated send must carry the same id",
        channel.name()
    );
    assert_ne!(
        ids[0],
        ids[2],
        "{}: two messages must carry different ids",
        channel.name()
    );
}

async fn answers_are_classed(peer: &dyn Peer) {
    let cases = peer.answers().await;
    let name = peer.channel().name();
    assert!(!cases.is_empty(), "{name}: no peer answers to check");
    assert!(
        cases.iter().any(|case| case.expected != Class::Accepted),
        "{name}: no failing answer to check"
    );
    for case in &cases {
        assert_eq!(
            case.classed, case.expected,
            "{name}: the answer {:?} is classed {:?}",
            case.answer, case.classed
        );
    }
}

async fn health_check_is_bounded(peer: &dyn Peer) {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let address = silent.local_addr().expect("a bound address");
    // Accept and hold every connection, answering nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let timeout = Duration::from_millis(500);
    if let Some(channel) = peer.channel_to_silent_peer(address, timeout) {
        let started = Instant::now();
        let bound = timeout * 4 + Duration::from_secs(2);
        let result = tokio::time::timeout(bound, channel.health_check()).await;
        let name = channel.name();
        match result {
            Ok(Err(_)) => {}
            Ok(Ok(())) => panic!("{name}: a silent peer was reported healthy"),
            Err(_) => panic!("{name}: the health check was still waiting after {bound:?}"),
        }
        assert!(started.elapsed() <= bound);
        channel.shutdown().await;
    }
    holder.abort();
}

fn debug_shows_no_secret(peer: &dyn Peer) {
    let secrets = peer.secrets();
    let renderings = peer.debug_renderings();
    assert!(!renderings.is_empty());
    for rendering in &renderings {
        for secret in &secrets {
            assert!(
                !rendering.contains(secret.as_str()),
                "a Debug rendering shows a secret: {rendering}"
            );
        }
    }
}

async fn cancelled_sends_leave_the_channel_usable(peer: &dyn Peer) {
    let channel = peer.channel();
    let cancelled = (channel.parallel_sends_max().unwrap_or(4).min(64) + 2).max(14);
    for index in 0..cancelled {
        let message = peer.message(&format!("7d1c2a52-5b0e-4f43-9d1e-0c3f5a6c{index:04}"));
        // Dropped before its first poll, just after it started, and at points all through
        // an exchange (an SMTP transaction cut after MAIL FROM once poisoned the pool).
        const AFTER_MS: [u64; 7] = [0, 1, 2, 4, 6, 9, 14];
        let after = Duration::from_millis(AFTER_MS[index % AFTER_MS.len()]);
        let _ = tokio::time::timeout(after, channel.send(&message)).await;
    }
    let last = peer.message("7d1c2a52-5b0e-4f43-9d1e-0c3f5a6bffff");
    send_bounded(channel.as_ref(), &last).await;
}
