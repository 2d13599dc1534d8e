//! One SMSC link: its supervisor task (connect, bind, keep alive, receive, reconnect with
//! backoff, unbind at shutdown) and the flow control every submit passes (a window of
//! unacknowledged submits, a pace of submits per second, a pause when the SMSC throttles).
//!
//! rusmppc gives one SMPP session per TCP connection and nothing else: no reconnect, no
//! window, no throttle, no `deliver_sm_resp`. This module adds exactly those.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, SelectAll, Stream, StreamExt};
use rusmpp::pdus::{BindReceiver, BindTransceiver, BindTransmitter, DeliverSm, DeliverSmResp};
use rusmpp::pdus::{SubmitSm, SubmitSmResp};
use rusmpp::types::COctetString;
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandStatus, Pdu};
use rusmppc::error::Error as ClientError;
use rusmppc::{Client, ConnectionBuilder, Event};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::inbound::{read_deliver_sm, Received};
use super::status::{classify_submit, describe, SubmitStatus};
use super::{BindMode, SmscSettings};
use crate::{InboundMessage, InboundSink};

/// How long a link stops submitting after the SMSC answered ESME_RTHROTTLED or
/// ESME_RMSGQFUL.
pub const THROTTLE_PAUSE: Duration = Duration::from_secs(1);
/// How often one part is tried again after a throttling answer before the send gives up
/// (retriably: the outbox tries the message again later).
pub const THROTTLE_RETRIES_MAX: u32 = 5;
/// How long a submit waits for a free place in the window before it gives up (retriably).
const WINDOW_WAIT_MAX: Duration = Duration::from_secs(30);
/// The pace leaves this share of each second unused: SMSCs count submits as they arrive,
/// and a submit delayed on the way (scheduling, the network) must not make the SMSC count
/// one more than the configured rate in its second.
const PACE_MARGIN_PERCENT: u32 = 5;
/// Received messages being handed to the core at the same time, per link.
const INBOUND_IN_FLIGHT_MAX: usize = 32;
/// How long the core may take for one received message before the SMSC is told to deliver
/// it again later.
const INBOUND_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest PDU accepted from an SMSC (a deliver_sm with a long message_payload fits).
pub(super) const COMMAND_LENGTH_MAX: usize = 4096;

/// Why one submit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubmitFailure {
    Retriable(String),
    Permanent(String),
}

/// What a link is doing, for health checks and log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting,
    Bound,
    /// Waiting before the next connection attempt.
    Backoff,
    Stopped,
}

struct LinkState {
    phase: Phase,
    /// The session that submits: the transceiver, or the transmitter.
    submitter: Option<Client>,
    last_error: Option<String>,
}

pub(crate) struct Link {
    pub(crate) settings: SmscSettings,
    /// Present when the SMSC is reached over TLS.
    tls: Option<TlsConnector>,
    window: Arc<Semaphore>,
    pace: Pace,
    paused_until: Mutex<Option<Instant>>,
    state: Mutex<LinkState>,
}

impl Link {
    pub(crate) fn new(settings: SmscSettings, tls: Option<TlsConnector>) -> Link {
        let window = Arc::new(Semaphore::new(settings.window));
        let pace = Pace::new(settings.throughput_per_s);
        Link {
            settings,
            tls,
            window,
            pace,
            paused_until: Mutex::new(None),
            state: Mutex::new(LinkState {
                phase: Phase::Connecting,
                submitter: None,
                last_error: None,
            }),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.settings.name
    }

    pub(crate) fn is_bound(&self) -> bool {
        self.lock_state().submitter.is_some()
    }

    /// Free places in the window, to prefer the least loaded link.
    pub(crate) fn free_window(&self) -> usize {
        self.window.available_permits()
    }

    /// The link's phase and its last error, for a health check.
    pub(crate) fn status(&self) -> (Phase, Option<String>) {
        let state = self.lock_state();
        (state.phase, state.last_error.clone())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        // A panic while holding this lock cannot leave the state half-written: every writer
        // assigns whole fields. So a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.response_timeout_ms)
    }

    /// Submits one part and returns the SMSC's message id. Waits for a place in the window,
    /// the pace and any throttling pause; tries the part again after a throttling answer.
    pub(crate) async fn submit(&self, submit_sm: SubmitSm) -> Result<String, SubmitFailure> {
        let mut throttled = 0;
        loop {
            let permit = tokio::time::timeout(WINDOW_WAIT_MAX, self.window.acquire())
                .await
                .map_err(|_| {
                    SubmitFailure::Retriable(format!(
                        "the window of {} submits stayed full for {} s",
                        self.settings.window,
                        WINDOW_WAIT_MAX.as_secs()
                    ))
                })?
                .map_err(|_| SubmitFailure::Retriable("the link is shutting down".into()))?;
            self.wait_for_turn().await;
            let client = self
                .lock_state()
                .submitter
                .clone()
                .ok_or_else(|| SubmitFailure::Retriable("the SMSC link went down".into()))?;
            let answer = client.submit_sm(submit_sm.clone()).await;
            drop(permit);
            let status = match answer {
                Ok(response) => return Ok(message_id(&response)),
                Err(ClientError::UnexpectedResponse { response }) => response.status(),
                Err(error) => return Err(client_failure(error, self.response_timeout())),
            };
            match classify_submit(status) {
                // ESME_ROK with a PDU other than submit_sm_resp.
                SubmitStatus::Accepted => {
                    return Err(SubmitFailure::Retriable(
                        "the SMSC answered submit_sm with another PDU".into(),
                    ))
                }
                SubmitStatus::Throttled(status) => {
                    throttled += 1;
                    self.pause(THROTTLE_PAUSE);
                    tracing::info!(
                        smsc = %self.settings.name,
                        status = %status,
                        attempt = throttled,
                        pause_ms = THROTTLE_PAUSE.as_millis() as u64,
                        "The SMSC throttled a submit; the link pauses before trying again."
                    );
                    if throttled > THROTTLE_RETRIES_MAX {
                        return Err(SubmitFailure::Retriable(format!(
                            "the SMSC answered {status} {throttled} times in a row"
                        )));
                    }
                }
                SubmitStatus::Retriable(status) => {
                    return Err(SubmitFailure::Retriable(format!(
                        "the SMSC answered {status}"
                    )))
                }
                SubmitStatus::Permanent(status) => {
                    return Err(SubmitFailure::Permanent(format!(
                        "the SMSC answered {status}"
                    )))
                }
            }
        }
    }

    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut paused_until = self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *paused_until = Some(paused_until.map_or(until, |current| current.max(until)));
    }

    fn paused_until(&self) -> Option<Instant> {
        let paused_until = *self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        paused_until.filter(|until| *until > Instant::now())
    }

    /// Waits out a throttling pause, then for the next free slot of the pace. A pause that
    /// began while waiting for the slot is waited out too, and costs the slot.
    async fn wait_for_turn(&self) {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
            }
            self.pace.wait().await;
            if self.paused_until().is_none() {
                return;
            }
        }
    }

    /// The supervisor: runs until `shutdown` turns true, then unbinds.
    pub(crate) async fn run(
        self: Arc<Self>,
        inbound: Arc<dyn InboundSink>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let settings = &self.settings;
        let mut backoff = Backoff::new(
            Duration::from_millis(settings.reconnect_backoff_min_ms),
            Duration::from_millis(settings.reconnect_backoff_max_ms),
        );
        let inbound_slots = Arc::new(Semaphore::new(INBOUND_IN_FLIGHT_MAX));
        while !*shutdown.borrow() {
            self.set_phase(Phase::Connecting);
            tracing::info!(
                smsc = %settings.name,
                host = %settings.host,
                port = settings.port,
                tls = settings.tls,
                bind = ?settings.bind,
                "Connecting to the SMSC."
            );
            let opened = tokio::select! {
                opened = self.open_session() => opened,
                _ = shutdown.changed() => break,
            };
            let session = match opened {
                Ok(session) => session,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        smsc = %settings.name,
                        error = %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "Binding to the SMSC failed; trying again after a pause."
                    );
                    self.set_down(error, Phase::Backoff);
                    if wait_or_shutdown(delay, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let bound_at = Instant::now();
            {
                let mut state = self.lock_state();
                state.phase = Phase::Bound;
                state.submitter = Some(session.submitter.clone());
                state.last_error = None;
            }
            tracing::info!(
                smsc = %settings.name,
                system_id = %settings.system_id,
                bind = ?settings.bind,
                "Bound to the SMSC."
            );
            let ended = self
                .serve(session, &inbound, &inbound_slots, &mut shutdown)
                .await;
            match ended {
                Ended::Shutdown(session) => {
                    self.set_down("the channel is shutting down".into(), Phase::Stopped);
                    self.unbind(session).await;
                    break;
                }
                Ended::Lost(error) => {
                    // A link that stayed up for a while starts its backoff afresh; one that
                    // drops right after binding keeps backing off, so a flapping SMSC is not
                    // hammered.
                    if bound_at.elapsed() >= backoff.max {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        smsc = %settings.name,
                        error = %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "The SMSC link went down; reconnecting after a pause."
                    );
                    self.set_down(error, Phase::Backoff);
                    if wait_or_shutdown(delay, &mut shutdown).await {
                        break;
                    }
                }
            }
        }
        self.set_phase(Phase::Stopped);
        tracing::info!(smsc = %settings.name, "The SMSC link stopped.");
    }

    fn set_phase(&self, phase: Phase) {
        self.lock_state().phase = phase;
    }

    fn set_down(&self, error: String, phase: Phase) {
        let mut state = self.lock_state();
        state.phase = phase;
        state.submitter = None;
        state.last_error = Some(error);
    }

    /// Connects and binds: one transceiver session, or a transmitter and a receiver.
    async fn open_session(&self) -> Result<Session, String> {
        let binds: &[BindKind] = match self.settings.bind {
            BindMode::Transceiver => &[BindKind::Transceiver],
            BindMode::TransmitterReceiver => &[BindKind::Transmitter, BindKind::Receiver],
        };
        let mut clients = Vec::with_capacity(binds.len());
        let mut events = stream::select_all(Vec::<TaggedEvents>::new());
        for (index, &bind) in binds.iter().enumerate() {
            match self.connect_and_bind(bind).await {
                Ok((client, session_events)) => {
                    clients.push(client);
                    events.push(tag_events(index, session_events));
                }
                Err(error) => {
                    for client in &clients {
                        close(client).await;
                    }
                    return Err(error);
                }
            }
        }
        let submitter = clients[0].clone();
        Ok(Session {
            submitter,
            clients,
            events,
        })
    }

    async fn connect_and_bind(&self, bind: BindKind) -> Result<(Client, BoxedEvents), String> {
        let settings = &self.settings;
        let builder = ConnectionBuilder::new()
            .max_command_length(COMMAND_LENGTH_MAX)
            .enquire_link_interval(Duration::from_millis(settings.enquire_link_interval_ms))
            .enquire_link_response_timeout(self.response_timeout())
            .response_timeout(self.response_timeout())
            // rusmppc checks for SMPP 5.0 binds; paystep speaks SMPP 3.4.
            .disable_interface_version_check();
        let address = format!("{}:{}", settings.host, settings.port);
        // The channel connects itself (the system's resolver, every address it returns, a
        // bounded wait, TLS with its own trust) and hands the stream to rusmppc.
        let tcp = tokio::time::timeout(
            self.response_timeout(),
            TcpStream::connect((settings.host.as_str(), settings.port)),
        )
        .await
        .map_err(|_| {
            format!(
                "connecting to {address} took longer than {} ms",
                settings.response_timeout_ms
            )
        })?
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
        // SMPP PDUs are small and answered one by one: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let (client, events): (Client, BoxedEvents) = match &self.tls {
            None => {
                let (client, events) = builder.connected(tcp);
                (client, Box::pin(events))
            }
            Some(connector) => {
                let server_name = ServerName::try_from(settings.host.clone())
                    .map_err(|error| format!("{} is no TLS server name: {error}", settings.host))?;
                let tls = tokio::time::timeout(
                    self.response_timeout(),
                    connector.connect(server_name, tcp),
                )
                .await
                .map_err(|_| {
                    format!(
                        "the TLS handshake with {address} took longer than {} ms",
                        settings.response_timeout_ms
                    )
                })?
                .map_err(|error| format!("the TLS handshake with {address} failed: {error}"))?;
                let (client, events) = builder.connected(tls);
                (client, Box::pin(events))
            }
        };
        let credentials = Credentials::of(settings)?;
        // The three bind PDUs are different types with the same fields: one builder chain.
        macro_rules! bind_with {
            ($method:ident, $pdu:ident) => {
                client
                    .$method(
                        $pdu::builder()
                            .system_id(credentials.system_id)
                            .password(credentials.password)
                            .system_type(credentials.system_type)
                            .interface_version(InterfaceVersion::Smpp3_4)
                            .addr_ton(Ton::Unknown)
                            .addr_npi(Npi::Unknown)
                            .address_range(COctetString::empty())
                            .build(),
                    )
                    .await
                    .map(|_| ())
            };
        }
        let bound = match bind {
            BindKind::Transceiver => bind_with!(bind_transceiver, BindTransceiver),
            BindKind::Transmitter => bind_with!(bind_transmitter, BindTransmitter),
            BindKind::Receiver => bind_with!(bind_receiver, BindReceiver),
        };
        if let Err(error) = bound {
            close(&client).await;
            return Err(match error {
                ClientError::UnexpectedResponse { response } => format!(
                    "the SMSC refused the {} bind: {}",
                    bind.name(),
                    describe(response.status())
                ),
                error => format!("the {} bind failed: {error}", bind.name()),
            });
        }
        Ok((client, events))
    }

    /// Receives until the link drops or the channel shuts down.
    async fn serve(
        &self,
        mut session: Session,
        inbound: &Arc<dyn InboundSink>,
        inbound_slots: &Arc<Semaphore>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut last_error: Option<String> = None;
        loop {
            let next = tokio::select! {
                next = session.events.next() => next,
                _ = shutdown.changed() => return Ended::Shutdown(session),
            };
            let (index, event) = match next {
                Some((index, Some(event))) => (index, event),
                Some((_, None)) | None => {
                    // In transmitter + receiver mode the other session may still be open.
                    close_all(&session.clients).await;
                    return Ended::Lost(
                        last_error.unwrap_or_else(|| "the SMSC closed the connection".into()),
                    );
                }
            };
            match event {
                Event::Error(error) => {
                    // rusmppc reports a fatal error, then ends the session's events.
                    last_error = Some(error.to_string());
                }
                Event::Incoming(command) => {
                    let client = session.clients[index].clone();
                    if let Some(reason) = self
                        .handle_incoming(client, command, inbound, inbound_slots)
                        .await
                    {
                        close_all(&session.clients).await;
                        return Ended::Lost(reason);
                    }
                }
            }
        }
    }

    /// Answers one PDU from the SMSC. Returns why the link must end, if it must.
    async fn handle_incoming(
        &self,
        client: Client,
        command: Command,
        inbound: &Arc<dyn InboundSink>,
        inbound_slots: &Arc<Semaphore>,
    ) -> Option<String> {
        let smsc = &self.settings.name;
        let sequence_number = command.sequence_number();
        match command.pdu() {
            Some(Pdu::DeliverSm(deliver_sm)) => {
                // Bounded: when the core is slow, reading waits here, not memory.
                let slot = Arc::clone(inbound_slots)
                    .acquire_owned()
                    .await
                    .expect("the inbound semaphore is never closed");
                tokio::spawn(answer_deliver_sm(
                    smsc.clone(),
                    client,
                    sequence_number,
                    deliver_sm.clone(),
                    Arc::clone(inbound),
                    slot,
                ));
                None
            }
            Some(Pdu::Unbind) => {
                if let Err(error) = client.unbind_resp(sequence_number).await {
                    tracing::warn!(
                        smsc = %smsc,
                        error = %error,
                        "Could not answer the SMSC's unbind."
                    );
                }
                Some("the SMSC unbound the session".into())
            }
            Some(Pdu::DataSm(_)) => {
                // rusmppc 0.4 cannot send data_sm_resp. ESME_RINVCMDID tells the SMSC to use
                // deliver_sm instead, rather than leave it waiting for an answer.
                tracing::warn!(
                    smsc = %smsc,
                    "The SMSC sent a data_sm, which this channel does not take; it was refused."
                );
                nack(smsc, &client, sequence_number).await;
                None
            }
            Some(Pdu::SubmitSmResp(_)) => {
                tracing::debug!(
                    smsc = %smsc,
                    sequence_number,
                    "A submit_sm_resp arrived after its submit had timed out."
                );
                None
            }
            _ if command.id().is_response() => {
                tracing::debug!(
                    smsc = %smsc,
                    id = ?command.id(),
                    "Ignored an unexpected response."
                );
                None
            }
            Some(_) | None => {
                tracing::warn!(
                    smsc = %smsc,
                    id = ?command.id(),
                    "The SMSC sent an operation this channel does not take; it was refused."
                );
                nack(smsc, &client, sequence_number).await;
                None
            }
        }
    }

    async fn unbind(&self, session: Session) {
        for client in &session.clients {
            match tokio::time::timeout(self.response_timeout(), client.unbind()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(smsc = %self.settings.name, error = %error, "Unbinding failed.")
                }
                Err(_) => tracing::warn!(
                    smsc = %self.settings.name,
                    "The SMSC did not answer the unbind in time."
                ),
            }
        }
        close_all(&session.clients).await;
        tracing::info!(smsc = %self.settings.name, "Unbound from the SMSC.");
    }
}

/// Hands one received message to the core and answers the SMSC: ESME_ROK only after the
/// core took it, a temporary error otherwise so the SMSC delivers it again.
async fn answer_deliver_sm(
    smsc: String,
    client: Client,
    sequence_number: u32,
    deliver_sm: DeliverSm,
    inbound: Arc<dyn InboundSink>,
    _slot: OwnedSemaphorePermit,
) {
    let status = match read_deliver_sm(&deliver_sm) {
        Received::Unusable(reason) => {
            tracing::warn!(
                smsc = %smsc,
                reason = %reason,
                "A received deliver_sm cannot be used; the SMSC is told not to deliver it again."
            );
            CommandStatus::EsmeRxPAppn
        }
        Received::Message(message) => {
            // Never log an MO's text: it may carry a PIN.
            let kind = match &message {
                InboundMessage::DeliveryReceipt { .. } => "delivery receipt",
                _ => "message",
            };
            match tokio::time::timeout(INBOUND_TIMEOUT, inbound.receive(message)).await {
                Ok(Ok(())) => CommandStatus::EsmeRok,
                Ok(Err(error)) => {
                    tracing::warn!(
                        smsc = %smsc,
                        kind,
                        error = %error,
                        "The core could not take a received SMS; the SMSC will deliver it again."
                    );
                    CommandStatus::EsmeRxTAppn
                }
                Err(_) => {
                    tracing::warn!(
                        smsc = %smsc,
                        kind,
                        timeout_s = INBOUND_TIMEOUT.as_secs(),
                        "The core took too long for a received SMS; the SMSC will deliver it again."
                    );
                    CommandStatus::EsmeRxTAppn
                }
            }
        }
    };
    let answered = client
        .status(status)
        .deliver_sm_resp(sequence_number, DeliverSmResp::default())
        .await;
    if let Err(error) = answered {
        tracing::warn!(
            smsc = %smsc,
            error = %error,
            "Could not answer a deliver_sm; the SMSC will deliver it again."
        );
    }
}

async fn nack(smsc: &str, client: &Client, sequence_number: u32) {
    if let Err(error) = client
        .status(CommandStatus::EsmeRinvcmdid)
        .generic_nack(sequence_number)
        .await
    {
        tracing::warn!(smsc = %smsc, error = %error, "Could not send generic_nack.");
    }
}

/// Closes a session's connection. After an unbind the SMSC closes the socket first, so
/// `ConnectionClosed` means the same as success here.
async fn close(client: &Client) {
    match client.close().await {
        Ok(()) | Err(ClientError::ConnectionClosed) => {}
        Err(error) => tracing::debug!(error = %error, "Closing an SMPP connection failed."),
    }
    // The connection task flushes and ends promptly; do not wait on a stuck socket forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.closed()).await;
}

async fn close_all(clients: &[Client]) {
    for client in clients {
        close(client).await;
    }
}

fn message_id(response: &SubmitSmResp) -> String {
    response.message_id().as_str().to_string()
}

/// A client error on a submit: all of them mean the link's state is unknown or gone, so
/// the message may be tried again, except an encoding error, which is our message's fault.
fn client_failure(error: ClientError, response_timeout: Duration) -> SubmitFailure {
    match error {
        ClientError::ResponseTimeout { .. } => SubmitFailure::Retriable(format!(
            "no submit_sm_resp within {} ms",
            response_timeout.as_millis()
        )),
        ClientError::ConnectionClosed | ClientError::ConnectionClosedByPeer => {
            SubmitFailure::Retriable("the SMSC link dropped before the submit was answered".into())
        }
        ClientError::Encode(error) => {
            SubmitFailure::Permanent(format!("the submit_sm cannot be encoded: {error}"))
        }
        ClientError::Connect(error) | ClientError::Io(error) => {
            SubmitFailure::Retriable(format!("the SMSC link failed: {error}"))
        }
        ClientError::Decode(error) => {
            SubmitFailure::Retriable(format!("the SMSC sent a PDU that cannot be read: {error}"))
        }
        ClientError::EnquireLinkTimeout { .. } => {
            SubmitFailure::Retriable("the SMSC stopped answering enquire_link".into())
        }
        ClientError::UnexpectedResponse { response } => {
            SubmitFailure::Retriable(format!("the SMSC answered {}", describe(response.status())))
        }
        ClientError::UnsupportedInterfaceVersion { .. } => {
            SubmitFailure::Permanent("rusmppc refused the interface version".into())
        }
        // rusmppc's error is non_exhaustive; a future error is most likely about the link.
        error => SubmitFailure::Retriable(format!("the SMPP client failed: {error}")),
    }
}

#[derive(Debug, Clone, Copy)]
enum BindKind {
    Transceiver,
    Transmitter,
    Receiver,
}

impl BindKind {
    fn name(self) -> &'static str {
        match self {
            BindKind::Transceiver => "transceiver",
            BindKind::Transmitter => "transmitter",
            BindKind::Receiver => "receiver",
        }
    }
}

/// The bind's credentials in their wire types.
struct Credentials {
    system_id: COctetString<1, 16>,
    password: COctetString<1, 9>,
    system_type: COctetString<1, 13>,
}

impl Credentials {
    pub(crate) fn of(settings: &SmscSettings) -> Result<Credentials, String> {
        Ok(Credentials {
            system_id: COctetString::from_str(&settings.system_id)
                .map_err(|_| "system_id must be at most 15 ASCII characters".to_string())?,
            password: COctetString::from_str(settings.password.expose())
                .map_err(|_| "password must be at most 8 ASCII characters".to_string())?,
            system_type: COctetString::from_str(&settings.system_type)
                .map_err(|_| "system_type must be at most 12 ASCII characters".to_string())?,
        })
    }
}

/// The TLS client for SMSCs: the system's trusted roots, plus `ca_file` (PEM) for a
/// carrier with a private CA; rustls with ring, TLS 1.2 or 1.3.
pub(crate) fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<TlsConnector, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (mut added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
    if let Some(ca_file) = ca_file {
        let certificates = CertificateDer::pem_file_iter(ca_file)
            .map_err(|error| format!("cannot read ca_file {}: {error}", ca_file.display()))?;
        for certificate in certificates {
            let certificate = certificate
                .map_err(|error| format!("ca_file {} is not PEM: {error}", ca_file.display()))?;
            roots
                .add(certificate)
                .map_err(|error| format!("ca_file {}: {error}", ca_file.display()))?;
            added += 1;
        }
    }
    if added == 0 {
        return Err(format!(
            "TLS is on, but no trusted root certificate was found (errors: {:?})",
            loaded.errors
        ));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS cannot be set up: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Checks the settings a bind needs, without connecting.
pub(crate) fn check_credentials(settings: &SmscSettings) -> Result<(), String> {
    Credentials::of(settings).map(|_| ())
}

type BoxedEvents = Pin<Box<dyn Stream<Item = Event> + Send>>;
/// A session's events tagged with the session's index; `None` marks the end of them.
type TaggedEvents = Pin<Box<dyn Stream<Item = (usize, Option<Event>)> + Send>>;

fn tag_events(index: usize, events: BoxedEvents) -> TaggedEvents {
    Box::pin(
        events
            .map(move |event| (index, Some(event)))
            .chain(stream::once(async move { (index, None) })),
    )
}

struct Session {
    submitter: Client,
    /// Every session of the link (one transceiver, or a transmitter and a receiver); an
    /// event's tag is its session's index here.
    clients: Vec<Client>,
    events: SelectAll<TaggedEvents>,
}

enum Ended {
    Shutdown(Session),
    Lost(String),
}

/// Waits `delay`; returns true when the channel shuts down meanwhile.
async fn wait_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Evenly spaced submit slots, at most `throughput_per_s` in any second.
struct Pace {
    interval: Duration,
    next_slot: Mutex<Option<Instant>>,
}

impl Pace {
    fn new(throughput_per_s: u32) -> Pace {
        let throughput_per_s = throughput_per_s.max(1);
        let second_ms = 1000 * (100 + PACE_MARGIN_PERCENT);
        Pace {
            interval: Duration::from_micros(u64::from(second_ms * 10 / throughput_per_s)),
            next_slot: Mutex::new(None),
        }
    }

    /// Takes the next free slot and sleeps until it. A slot taken by a caller that is then
    /// cancelled stays used: the pace can only get slower, never faster.
    async fn wait(&self) {
        tokio::time::sleep_until(self.take_slot()).await;
    }

    fn take_slot(&self) -> Instant {
        let mut next_slot = self
            .next_slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let slot = next_slot.map_or(now, |next| next.max(now));
        *next_slot = Some(slot + self.interval);
        slot
    }
}

/// Exponential backoff with jitter between a minimum and a maximum delay.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    random: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        // Seeded per link from the process's hash keys: links of many paystep instances
        // must not reconnect in step.
        let random = RandomState::new().build_hasher().finish() | 1;
        Backoff {
            min,
            max,
            next: min,
            random,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// A delay between half the current step and the whole step, never below the minimum;
    /// the step doubles up to the maximum.
    fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        // xorshift64: enough randomness for jitter, without a dependency.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let half_ms = step.as_millis() as u64 / 2;
        let jitter_ms = if half_ms == 0 {
            0
        } else {
            self.random % (half_ms + 1)
        };
        Duration::from_millis(half_ms + jitter_ms).max(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_maximum_and_stays_within_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|delay| *delay >= min && *delay <= max));
        assert!(delays[6..].iter().all(|delay| *delay >= max / 2));
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn the_pace_never_allows_more_than_the_rate_in_any_second() {
        let pace = Pace::new(20);
        let slots: Vec<Instant> = (0..61).map(|_| pace.take_slot()).collect();
        for (index, slot) in slots.iter().enumerate().skip(20) {
            assert!(*slot - slots[index - 20] >= Duration::from_secs(1));
        }
        assert_eq!(pace.interval, Duration::from_micros(52_500));
    }
}
