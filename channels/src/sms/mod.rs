//! The SMS channel: an SMPP 3.4 ESME on rusmpp/rusmppc that binds to one or more SMSCs,
//! submits outbound messages, and turns `deliver_sm` into domain messages (MO texts parsed
//! with `grammar`, delivery receipts).
//!
//! Code map: `link` runs one SMSC link (connect, bind, enquire_link, reconnect with backoff,
//! window, pace, throttling pauses, `deliver_sm_resp`); `encoding` chooses GSM 03.38 or
//! UCS-2 and splits long texts; `inbound` reads receipts and MO texts; `status` classifies
//! `command_status` values. Wire types stay inside this folder.

mod encoding;
pub mod grammar;
mod inbound;
mod link;
mod settings;
mod status;

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusmpp::pdus::SubmitSm;
use rusmpp::tlvs::MessageSubmissionRequestTlvValue;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{
    DataCoding, EsmClass, Npi, RegisteredDelivery, ReplaceIfPresentFlag, ServiceType, Ton,
    UserMessageReference,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Channel, ChannelName, Delivery, HealthError, InboundSink, OutboundMessage, SendError};
use link::{Link, Phase, SubmitFailure};

pub use link::{THROTTLE_PAUSE, THROTTLE_RETRIES_MAX};
use settings::ADDRESS_LENGTH_MAX;
pub use settings::{BindMode, SmsSettings, SmscSettings};

/// TON and NPI of every destination: international, ISDN (E.164).
const DESTINATION_TON: u8 = 0x01;
const DESTINATION_NPI: u8 = 0x01;
/// registered_delivery asking for a receipt on final delivery, success or failure.
const REGISTERED_DELIVERY_FINAL: u8 = 0x01;
/// Long messages remembered with their accepted parts, at most.
const PARTIAL_SENDS_MAX: usize = 256;
/// Handsets give up joining a concatenated message after a while; a retry later than this
/// sends the whole text again under a new reference.
const PARTIAL_SEND_AGE_MAX: Duration = Duration::from_secs(600);
/// How long `shutdown` waits for each link to unbind and close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Why the SMS channel cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SmsSetupError {
    #[error("invalid SMS settings:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("SMSC {smsc:?}: {reason}")]
    Smsc { smsc: String, reason: String },
    #[error("the SMS channel must be started inside a Tokio runtime")]
    NoRuntime,
}

/// The SMS channel: one supervised SMPP link per SMSC, submits spread over the bound ones.
pub struct SmsChannel {
    settings: SmsSettings,
    links: Vec<Arc<Link>>,
    next_link: AtomicUsize,
    next_reference: AtomicU8,
    partial_sends: PartialSends,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

// The settings' Debug redacts every SMSC password.
impl std::fmt::Debug for SmsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsChannel")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SmsChannel {
    /// Starts one task per SMSC that connects, binds and stays bound until
    /// [`SmsChannel::shutdown`]. Returns at once: links bind in the background, and sends
    /// fail retriably until one is bound. Received messages go to `inbound`.
    pub fn start(
        settings: SmsSettings,
        inbound: Arc<dyn InboundSink>,
    ) -> Result<SmsChannel, SmsSetupError> {
        validate(&settings)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SmsSetupError::NoRuntime)?;
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let mut links = Vec::with_capacity(settings.smscs.len());
        for smsc in &settings.smscs {
            let tls = if smsc.tls {
                let connector = link::tls_connector(smsc.ca_file.as_deref()).map_err(|reason| {
                    SmsSetupError::Smsc {
                        smsc: smsc.name.clone(),
                        reason,
                    }
                })?;
                Some(connector)
            } else {
                None
            };
            links.push(Arc::new(Link::new(smsc.clone(), tls)));
        }
        let tasks = links
            .iter()
            .map(|link| {
                runtime.spawn(Arc::clone(link).run(Arc::clone(&inbound), shutdown_receiver.clone()))
            })
            .collect();
        Ok(SmsChannel {
            settings,
            links,
            next_link: AtomicUsize::new(0),
            // Concatenation references only need to differ between a handset's recent
            // messages; a process-specific start keeps a restart from reusing the last ones.
            next_reference: AtomicU8::new(std::process::id() as u8),
            partial_sends: PartialSends::default(),
            shutdown,
            tasks: Mutex::new(tasks),
        })
    }

    /// Unbinds every link and waits (bounded) for them to close. Sends fail retriably after.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for task in tasks {
            if tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err() {
                tracing::warn!(
                    wait_s = SHUTDOWN_WAIT.as_secs(),
                    "An SMSC link did not stop in time; it is left to the runtime."
                );
            }
        }
    }

    /// The bound link with the most free room in its window; ties go round robin.
    fn pick_link(&self) -> Option<&Arc<Link>> {
        let count = self.links.len();
        let start = self.next_link.fetch_add(1, Ordering::Relaxed) % count;
        let mut best: Option<(&Arc<Link>, usize)> = None;
        for offset in 0..count {
            let link = &self.links[(start + offset) % count];
            if !link.is_bound() {
                continue;
            }
            let free = link.free_window();
            if best.is_none_or(|(_, best_free)| free > best_free) {
                best = Some((link, free));
            }
        }
        best.map(|(link, _)| link)
    }

    fn submit_sm(
        &self,
        destination: &COctetString<1, 21>,
        data_coding: u8,
        message_id: &str,
    ) -> SubmitSm {
        let settings = &self.settings;
        let registered_delivery = if settings.registered_delivery {
            REGISTERED_DELIVERY_FINAL
        } else {
            0
        };
        SubmitSm::builder()
            .service_type(ServiceType::default())
            .source_addr_ton(Ton::from(settings.source_addr_ton))
            .source_addr_npi(Npi::from(settings.source_addr_npi))
            .source_addr(
                COctetString::from_str(&settings.source_addr).expect("start() checked source_addr"),
            )
            .dest_addr_ton(Ton::from(DESTINATION_TON))
            .dest_addr_npi(Npi::from(DESTINATION_NPI))
            .destination_addr(destination.clone())
            .registered_delivery(RegisteredDelivery::from(registered_delivery))
            .replace_if_present_flag(ReplaceIfPresentFlag::default())
            .data_coding(DataCoding::from(data_coding))
            .push_tlv(MessageSubmissionRequestTlvValue::UserMessageReference(
                UserMessageReference::new(user_message_reference(message_id)),
            ))
            .build()
    }
}

impl Drop for SmsChannel {
    fn drop(&mut self) {
        // Links notice and unbind on their own; nobody is left to wait for them.
        self.shutdown.send_replace(true);
    }
}

/// Long messages whose first parts the SMSC accepted before a later part failed retriably.
#[derive(Default)]
struct PartialSends {
    entries: Mutex<VecDeque<PartialSend>>,
}

struct PartialSend {
    message_id: String,
    to: String,
    text: String,
    reference: u8,
    /// The SMSC's ids of the accepted parts, first part first.
    ids: Vec<String>,
    kept_at: Instant,
}

impl PartialSends {
    fn keep(&self, message: &OutboundMessage, reference: u8, ids: Vec<String>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|entry| entry.message_id != message.id);
        if entries.len() == PARTIAL_SENDS_MAX {
            entries.pop_front();
        }
        entries.push_back(PartialSend {
            message_id: message.id.clone(),
            to: message.to.clone(),
            text: message.text.clone(),
            reference,
            ids,
            kept_at: Instant::now(),
        });
    }

    /// The accepted parts of this very message (same id, recipient and text), if recent.
    fn take(&self, message: &OutboundMessage) -> Option<PartialSend> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|entry| entry.kept_at.elapsed() < PARTIAL_SEND_AGE_MAX);
        let index = entries
            .iter()
            .position(|entry| entry.message_id == message.id)?;
        let entry = entries.remove(index)?;
        (entry.to == message.to && entry.text == message.text).then_some(entry)
    }
}

fn validate(settings: &SmsSettings) -> Result<(), SmsSetupError> {
    let mut problems = crate::Problems::new();
    settings.validate(&mut problems);
    if !problems.is_empty() {
        return Err(SmsSetupError::Invalid(problems.into_vec()));
    }
    for smsc in &settings.smscs {
        link::check_credentials(smsc).map_err(|reason| SmsSetupError::Smsc {
            smsc: smsc.name.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// SMPP's `user_message_reference` for a message: 16 bits of the outbox id (FNV-1a), the
/// same on every attempt, so that an SMSC or a handset that keeps it can recognise a repeat
/// of the same message to the same number. SMPP has no field for the whole id.
fn user_message_reference(message_id: &str) -> u16 {
    let hash = message_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    (hash ^ (hash >> 16)) as u16
}

/// The destination as SMPP wants it: the E.164 digits without `+`.
fn destination_address(to: &str) -> Result<COctetString<1, 21>, String> {
    let digits = to.strip_prefix('+').unwrap_or(to);
    let valid = !digits.is_empty()
        && digits.len() <= ADDRESS_LENGTH_MAX
        && digits.bytes().all(|byte| byte.is_ascii_digit());
    if !valid {
        return Err(format!("{to:?} is not an international MSISDN"));
    }
    COctetString::from_str(digits).map_err(|error| format!("{to:?}: {error}"))
}

#[async_trait]
impl Channel for SmsChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Sms
    }

    async fn shutdown(&self) {
        SmsChannel::shutdown(self).await;
    }

    /// Every link's window: the links hold each submit until their window and pace allow,
    /// so this many sends in flight keep every window full and never overfill one.
    fn parallel_sends_max(&self) -> Option<usize> {
        Some(self.settings.smscs.iter().map(|smsc| smsc.window).sum())
    }

    /// Submits every part of the text over one bound link and returns the SMSC's ids of
    /// the parts, first part first, joined by commas.
    ///
    /// When a later part of a long text fails retriably, the parts the SMSC accepted are
    /// remembered for a while: the outbox's next attempt sends only the rest, under the same
    /// concatenation reference, so the handset can still join them.
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, SendError> {
        let destination = destination_address(&message.to).map_err(SendError::Permanent)?;
        let link = self
            .pick_link()
            .ok_or_else(|| SendError::Retriable("no SMSC link is bound".into()))?;
        let resumed = self.partial_sends.take(message);
        let (reference, mut ids) = match resumed {
            Some(partial) => {
                tracing::info!(
                    message_id = %message.id,
                    parts_accepted = partial.ids.len(),
                    "Resuming a long SMS after the parts the SMSC already accepted."
                );
                (partial.reference, partial.ids)
            }
            None => (
                self.next_reference.fetch_add(1, Ordering::Relaxed),
                Vec::new(),
            ),
        };
        let segmented = encoding::segment(&message.text, reference)
            .map_err(|error| SendError::Permanent(error.to_string()))?;
        let template = self.submit_sm(&destination, segmented.data_coding, &message.id);
        let parts = segmented.segments.len();
        let already_accepted = ids.len();
        for (index, segment) in segmented
            .segments
            .into_iter()
            .enumerate()
            .skip(already_accepted)
        {
            let short_message = OctetString::from_vec(segment.short_message)
                .map_err(|error| SendError::Permanent(format!("short_message: {error}")))?;
            let mut submit_sm = template.clone().with_short_message(short_message);
            // Explicit: EsmClass::default() is 0x08 in rusmpp 0.4.0.
            submit_sm.esm_class = EsmClass::from(segment.esm_class);
            match link.submit(submit_sm).await {
                Ok(id) => ids.push(id),
                Err(failure) => {
                    let part = if parts > 1 {
                        format!(" (part {} of {parts})", index + 1)
                    } else {
                        String::new()
                    };
                    return Err(match failure {
                        SubmitFailure::Retriable(reason) => {
                            if !ids.is_empty() {
                                self.partial_sends.keep(message, reference, ids);
                            }
                            SendError::Retriable(format!("SMSC {}{part}: {reason}", link.name()))
                        }
                        SubmitFailure::Permanent(reason) => {
                            SendError::Permanent(format!("SMSC {}{part}: {reason}", link.name()))
                        }
                    });
                }
            }
        }
        tracing::debug!(
            message_id = %message.id,
            smsc = %link.name(),
            parts,
            remote_ids = %ids.join(","),
            "Submitted an SMS."
        );
        Ok(Delivery {
            remote_id: Some(ids.join(",")),
        })
    }

    /// Healthy while at least one link is bound.
    async fn health_check(&self) -> Result<(), HealthError> {
        if self.links.iter().any(|link| link.is_bound()) {
            return Ok(());
        }
        let links: Vec<String> = self
            .links
            .iter()
            .map(|link| {
                let (phase, last_error) = link.status();
                let phase = match phase {
                    Phase::Connecting => "connecting",
                    Phase::Bound => "bound",
                    Phase::Backoff => "waiting to reconnect",
                    Phase::Stopped => "stopped",
                };
                match last_error {
                    Some(error) => format!("{}: {phase}, last error: {error}", link.name()),
                    None => format!("{}: {phase}", link.name()),
                }
            })
            .collect();
        Err(HealthError {
            channel: ChannelName::Sms,
            reason: format!("no SMSC link is bound ({})", links.join("; ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esm_class_and_registered_delivery_encode_as_given() {
        for value in [0x00, 0x40, 0x04] {
            assert_eq!(u8::from(EsmClass::from(value)), value);
        }
        assert_eq!(u8::from(RegisteredDelivery::from(0x01)), 0x01);
        assert_eq!(u8::from(DataCoding::from(0x08)), 0x08);
    }

    #[test]
    fn destinations_are_msisdns_without_the_plus() {
        assert_eq!(
            destination_address("+491701234567").unwrap().as_str(),
            "491701234567"
        );
        assert!(destination_address("+49 170").is_err());
        assert!(destination_address("+").is_err());
        assert!(destination_address(&format!("+{}", "1".repeat(21))).is_err());
    }
}
