//! What a state change causes: events for the retailer's feed and messages for the outbox.
//! They are collected while a transaction runs and written at its end, in the same
//! transaction (the transactional outbox), so nothing is sent before its cause commits and
//! nothing committed is left unsent. Writing them last also keeps the lock order fixed:
//! process, then accounts, then the retailer's event counter.

use paystep_channel_core::{ChannelName, MessageKind};
use serde_json::Value;
use sqlx::AnyConnection;

use super::rows::{CustomerRow, RetailerRow};
use super::texts::{
    render, render_push, render_reply, render_sms, render_voice, Reply, Text, TextFacts,
};
use super::EngineError;
use crate::audit::{Change, Origin};
use crate::domain::Language;
use crate::ledger::{AccountKind, Posted, Transfer};

pub struct PendingEvent {
    pub retailer: RetailerRow,
    pub process_id: Option<String>,
    pub kind: &'static str,
    pub data: Value,
}

pub enum Recipient {
    Customer {
        customer: CustomerRow,
        requested: Option<ChannelName>,
    },
    Retailer(RetailerRow),
    /// Whoever sent us a message on `channel` from `to`, customer or not.
    Sender {
        channel: ChannelName,
        to: String,
    },
}

pub struct PendingMessage {
    pub recipient: Recipient,
    pub kind: MessageKind,
    pub retailer_id: Option<String>,
    pub process_id: Option<String>,
    pub code: Option<String>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub text: String,
    /// The text for an SMS, where it differs (no link; how to reply instead).
    pub sms_text: Option<String>,
    /// The text of a Service Indication, where it differs (short: it shares one SMS with
    /// its link).
    pub push_text: Option<String>,
    /// What a voice call says, where it differs (amounts in words, which keys to press).
    pub voice_text: Option<String>,
    pub language: Language,
    pub link: Option<Link>,
}

/// A link a message carries, and when it stops working.
pub struct Link {
    pub url: String,
    pub expires_at_ms: i64,
}

/// The process a reply is about: its retailer and code.
#[derive(Clone, Copy)]
pub struct ReplyAbout<'a> {
    pub retailer_id: &'a str,
    pub code: &'a str,
}

/// A message routed to one channel and address.
struct Route {
    channel: ChannelName,
    intended: ChannelName,
    to: String,
}

pub struct Effects {
    /// Who caused the operation, for its audit entries.
    origin: Origin,
    events: Vec<PendingEvent>,
    messages: Vec<PendingMessage>,
    /// Changes for the audit log besides the events (which are recorded too): transfers,
    /// PIN tries, operator actions.
    changes: Vec<Change>,
}

impl Effects {
    pub fn new(origin: Origin) -> Effects {
        Effects {
            origin,
            events: Vec::new(),
            messages: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// An event for the retailer's feed; also recorded in the audit log, after the state
    /// the subject was last recorded in.
    pub fn event(
        &mut self,
        retailer: &RetailerRow,
        process_id: &str,
        kind: &'static str,
        data: impl serde::Serialize,
    ) {
        self.events.push(PendingEvent {
            retailer: retailer.clone(),
            process_id: Some(process_id.to_string()),
            kind,
            data: serde_json::to_value(data).expect("views always serialise"),
        });
    }

    /// A change for the audit log that is no event.
    pub fn audit(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// Records a posted transfer: both accounts' balances before and after.
    pub fn audit_transfer(&mut self, transfer: &Transfer<'_>, posted: Posted) {
        // Named after the account whose owner it is about (a process's hold, a customer's
        // credit), so that a process's or customer's own entries keep their shape.
        let (subject_kind, subject_id) = match (transfer.process_id, transfer.credit) {
            (Some(process_id), _) => (AccountKind::ProcessHold.as_str(), process_id),
            (None, (kind, owner_id)) => (kind.as_str(), owner_id),
        };
        let side = |(kind, owner): (AccountKind, &str), balance: i64| serde_json::json!({"account": kind.as_str(), "owner": owner, "balance": balance});
        let amount = transfer.amount;
        self.changes.push(Change {
            action: format!("transfer.{}", transfer.kind.as_str()),
            subject_kind: subject_kind.into(),
            subject_id: subject_id.into(),
            before: serde_json::json!({
                "debit": side(transfer.debit, posted.debit_balance + amount),
                "credit": side(transfer.credit, posted.credit_balance - amount),
            }),
            after: serde_json::json!({
                "debit": side(transfer.debit, posted.debit_balance),
                "credit": side(transfer.credit, posted.credit_balance),
                "amount": amount,
                "currency": transfer.currency.code(),
                "step_id": transfer.step_id,
                "reference": transfer.reference,
            }),
        });
    }

    /// Queues a message to the customer in the customer's language.
    pub fn message_customer(
        &mut self,
        customer: &CustomerRow,
        requested: Option<ChannelName>,
        kind: MessageKind,
        facts: (&TextFacts<'_>, &str, &str),
        text: Text<'_>,
        link: Option<Link>,
    ) {
        let (facts, retailer_id, process_id) = facts;
        let language = customer.language();
        let sms_text = render_sms(language, facts, &text, customer.pin_hash.is_some());
        let push_text = render_push(language, facts, &text);
        let voice_text = render_voice(language, facts, &text, customer.pin_hash.is_some());
        self.messages.push(PendingMessage {
            recipient: Recipient::Customer {
                customer: customer.clone(),
                requested,
            },
            kind,
            retailer_id: Some(retailer_id.to_string()),
            process_id: Some(process_id.to_string()),
            code: Some(facts.code.to_string()),
            description: facts.description.map(str::to_string),
            reference: facts.reference.map(str::to_string),
            text: render(language, facts, &text),
            sms_text,
            push_text,
            voice_text,
            language,
            link,
        });
    }

    /// Queues a reply to whoever sent a message, on the channel it came on; `about` the
    /// process it answers, when there is one.
    pub fn reply(
        &mut self,
        channel: ChannelName,
        to: &str,
        language: Language,
        about: Option<ReplyAbout<'_>>,
        reply: Reply<'_>,
    ) {
        self.messages.push(PendingMessage {
            recipient: Recipient::Sender {
                channel,
                to: to.to_string(),
            },
            kind: super::inbound::REPLY_KIND,
            retailer_id: about.map(|about| about.retailer_id.to_string()),
            // No process: the dispatcher keeps order per process and address, and replies to
            // one number must stay in the order its messages came, whatever they were about.
            process_id: None,
            code: about.map(|about| about.code.to_string()),
            description: None,
            reference: None,
            text: render_reply(language, &reply),
            sms_text: None,
            push_text: None,
            voice_text: None,
            language,
            link: None,
        });
    }

    /// Queues a message to the retailer on each of its notify channels.
    pub fn message_retailer(
        &mut self,
        retailer: &RetailerRow,
        kind: MessageKind,
        facts: (&TextFacts<'_>, &str),
        text: Text<'_>,
    ) {
        let (facts, process_id) = facts;
        self.messages.push(PendingMessage {
            recipient: Recipient::Retailer(retailer.clone()),
            kind,
            retailer_id: Some(retailer.id.clone()),
            process_id: Some(process_id.to_string()),
            code: Some(facts.code.to_string()),
            description: facts.description.map(str::to_string),
            reference: facts.reference.map(str::to_string),
            text: render(Language::En, facts, &text),
            sms_text: None,
            push_text: None,
            voice_text: None,
            language: Language::En,
            link: None,
        });
    }
}

/// Which channels this daemon can deliver on.
#[derive(Debug, Clone)]
pub struct ChannelAvailability {
    available: Vec<ChannelName>,
}

impl ChannelAvailability {
    pub fn new(available: Vec<ChannelName>) -> ChannelAvailability {
        ChannelAvailability { available }
    }

    pub fn has(&self, channel: ChannelName) -> bool {
        self.available.contains(&channel)
    }

    /// The channel a wanted channel is delivered on: itself, or the console when the wanted
    /// one is not configured here (the embedded default shows everything on the console).
    pub fn deliver_on(&self, wanted: ChannelName) -> Option<ChannelName> {
        if self.has(wanted) {
            Some(wanted)
        } else if self.has(ChannelName::Console) {
            Some(ChannelName::Console)
        } else {
            None
        }
    }

    /// Checks before any write that a customer can be reached, so that a request that cannot
    /// be delivered is refused with a clear error instead of being accepted and stuck.
    pub fn check_customer(
        &self,
        customer: &CustomerRow,
        requested: Option<ChannelName>,
    ) -> Result<(), EngineError> {
        customer_route(self, customer, requested, MessageKind::ConfirmationRequest).map(|_| ())
    }
}

fn customer_route(
    channels: &ChannelAvailability,
    customer: &CustomerRow,
    requested: Option<ChannelName>,
    kind: MessageKind,
) -> Result<Route, EngineError> {
    let mut wanted = requested.unwrap_or_else(|| customer.preferred_channel());
    // A Service Indication is a link and a call is a question, not a receipt: only
    // confirmation requests are pushed or called; the rest goes by SMS where it can (or the
    // console standing in for it).
    if matches!(wanted, ChannelName::WapPush | ChannelName::Voice)
        && kind != MessageKind::ConfirmationRequest
        && (channels.has(ChannelName::Sms) || channels.has(ChannelName::Console))
    {
        wanted = ChannelName::Sms;
    }
    let address = match wanted {
        ChannelName::Sms | ChannelName::WapPush | ChannelName::Voice => customer.msisdn.clone(),
        ChannelName::Email => customer.email.clone(),
        ChannelName::Console => customer.msisdn.clone().or_else(|| customer.email.clone()),
        ChannelName::Webhook => None,
    };
    let to = address.ok_or(EngineError::ChannelUnavailable {
        channel: wanted,
        reason: "the customer has no address on it",
    })?;
    let channel = channels
        .deliver_on(wanted)
        .ok_or(EngineError::ChannelUnavailable {
            channel: wanted,
            reason: "it is not configured on this server",
        })?;
    Ok(Route {
        channel,
        intended: wanted,
        to,
    })
}

fn retailer_routes(channels: &ChannelAvailability, retailer: &RetailerRow) -> Vec<Route> {
    let mut routes = Vec::new();
    let notify = retailer.notify_channels();
    for &wanted in &notify {
        let address = match wanted {
            // Webhooks carry events, written beside these texts (see `flush`).
            ChannelName::Webhook => None,
            ChannelName::Sms => retailer.msisdn.clone(),
            ChannelName::Email => retailer.email.clone(),
            ChannelName::Console => Some(format!("retailer:{}", retailer.id)),
            ChannelName::WapPush | ChannelName::Voice => None,
        };
        let (Some(to), Some(channel)) = (address, channels.deliver_on(wanted)) else {
            continue;
        };
        if routes
            .iter()
            .any(|route: &Route| route.channel == channel && route.to == to)
        {
            continue;
        }
        routes.push(Route {
            channel,
            intended: wanted,
            to,
        });
    }
    // A retailer that asked for nothing still gets its messages on the console, when there
    // is one; its event feed has everything in any case.
    if notify.is_empty() && channels.has(ChannelName::Console) {
        routes.push(Route {
            channel: ChannelName::Console,
            intended: ChannelName::Console,
            to: format!("retailer:{}", retailer.id),
        });
    }
    routes
}

impl Effects {
    /// Writes the collected events and messages in the caller's transaction.
    pub async fn flush(
        mut self,
        conn: &mut AnyConnection,
        channels: &ChannelAvailability,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        // The audit entries' before states are read first, outside the sections that hold
        // the retailers' counters and the audit head (the subjects are this operation's,
        // locked already, so nobody else records them meanwhile).
        let others = std::mem::take(&mut self.changes);
        let changes = audit_changes(conn, &self.events, others).await?;
        // Written together at the end, a few rows per statement.
        let mut outbox: Vec<OutboxRow<'_>> = Vec::new();
        for event in &self.events {
            // Taking the next number locks the retailer row until commit, so a retailer's
            // events are numbered without gaps in commit order: a feed reader that saw
            // seq N has seen every event before it.
            let seq: i64 = sqlx::query_scalar(
                "UPDATE retailers SET last_event_seq = last_event_seq + 1 WHERE id = $1 RETURNING last_event_seq",
            )
            .bind(&event.retailer.id)
            .fetch_one(&mut *conn)
            .await?;
            let event_id = uuid::Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO events (id, retailer_id, seq, process_id, type, data, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&event_id)
            .bind(&event.retailer.id)
            .bind(seq)
            .bind(event.process_id.as_deref())
            .bind(event.kind)
            .bind(event.data.to_string())
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            if let (Some(url), true) = (
                event.retailer.webhook_target(),
                channels.has(ChannelName::Webhook),
            ) {
                let payload = event_json(
                    &event_id,
                    seq,
                    event.kind,
                    event.process_id.as_deref(),
                    now_ms,
                    &event.data,
                );
                outbox.push(OutboxRow {
                    route: Route {
                        channel: ChannelName::Webhook,
                        intended: ChannelName::Webhook,
                        to: url.to_string(),
                    },
                    kind: MessageKind::Event,
                    recipient: "retailer",
                    retailer_id: Some(&event.retailer.id),
                    process_id: event.process_id.as_deref(),
                    code: None,
                    context: (None, None),
                    language: Language::En,
                    text: event.kind,
                    link: None,
                    fallback_text: None,
                    payload: Some(payload.to_string()),
                    event_id: Some(event_id.clone()),
                });
            }
        }
        for message in &self.messages {
            let (routes, recipient) = match &message.recipient {
                Recipient::Customer {
                    customer,
                    requested,
                } => (
                    vec![customer_route(
                        channels,
                        customer,
                        *requested,
                        message.kind,
                    )?],
                    "customer",
                ),
                Recipient::Retailer(retailer) => (retailer_routes(channels, retailer), "retailer"),
                Recipient::Sender { channel, to } => {
                    let delivering =
                        channels
                            .deliver_on(*channel)
                            .ok_or(EngineError::ChannelUnavailable {
                                channel: *channel,
                                reason: "it is not configured on this server",
                            })?;
                    let route = Route {
                        channel: delivering,
                        intended: *channel,
                        to: to.clone(),
                    };
                    (vec![route], "customer")
                }
            };
            for route in routes {
                let own_text = match route.intended {
                    ChannelName::Sms => &message.sms_text,
                    ChannelName::WapPush => &message.push_text,
                    ChannelName::Voice => &message.voice_text,
                    ChannelName::Email | ChannelName::Webhook | ChannelName::Console => &None,
                };
                let text = own_text.as_deref().unwrap_or(&message.text);
                // A pushed or called request keeps the SMS that stands in for it if the push
                // or the call fails for good.
                let fallback_text = match (route.channel, channels.has(ChannelName::Sms)) {
                    (ChannelName::WapPush | ChannelName::Voice, true) => {
                        message.sms_text.as_deref()
                    }
                    _ => None,
                };
                outbox.push(OutboxRow {
                    route,
                    kind: message.kind,
                    recipient,
                    retailer_id: message.retailer_id.as_deref(),
                    process_id: message.process_id.as_deref(),
                    code: message.code.as_deref(),
                    context: (message.description.as_deref(), message.reference.as_deref()),
                    language: message.language,
                    text,
                    link: message.link.as_ref(),
                    fallback_text,
                    payload: None,
                    event_id: None,
                });
            }
        }
        for rows in outbox.chunks(OUTBOX_ROWS_PER_INSERT) {
            insert_outbox(conn, rows, now_ms).await?;
        }
        // Last: appending locks the audit head, which every writer shares.
        // The chain: the process of the first event, else the first change's subject.
        let key = self
            .events
            .iter()
            .find_map(|event| event.process_id.as_deref())
            .or_else(|| changes.first().map(|change| change.subject_id.as_str()))
            .unwrap_or_default();
        crate::audit::append(conn, (&self.origin, key), now_ms, &changes).await?;
        Ok(())
    }
}

/// The events as audit changes, each after the state its subject (the process or step
/// the event's data describes) was last recorded in, then the other changes.
async fn audit_changes(
    conn: &mut AnyConnection,
    events: &[PendingEvent],
    others: Vec<Change>,
) -> Result<Vec<Change>, EngineError> {
    let mut changes: Vec<Change> = Vec::with_capacity(events.len() + others.len());
    for event in events {
        let subject_kind = event.kind.split('.').next().unwrap_or(event.kind);
        let subject_id = event.data["id"].as_str().unwrap_or_default().to_string();
        // An earlier event of this operation is the latest state; otherwise the log's.
        let earlier = changes
            .iter()
            .rev()
            .find(|change| change.subject_kind == subject_kind && change.subject_id == subject_id);
        let before = match earlier {
            Some(change) => change.after.clone(),
            None => match crate::audit::last_state(conn, subject_kind, &subject_id).await? {
                Some(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
                None => Value::Null,
            },
        };
        changes.push(Change {
            action: event.kind.to_string(),
            subject_kind: subject_kind.to_string(),
            subject_id,
            before,
            after: event.data.clone(),
        });
    }
    changes.extend(others);
    Ok(changes)
}

/// An event as the feed shows it and webhooks carry it.
pub fn event_json(
    id: &str,
    seq: i64,
    kind: &str,
    process_id: Option<&str>,
    created_at_ms: i64,
    data: &Value,
) -> Value {
    serde_json::json!({
        "id": id,
        "seq": seq,
        "type": kind,
        "process_id": process_id,
        "created_at": crate::clock::format_ms(created_at_ms),
        "data": data,
    })
}

struct OutboxRow<'a> {
    route: Route,
    kind: MessageKind,
    recipient: &'static str,
    retailer_id: Option<&'a str>,
    process_id: Option<&'a str>,
    code: Option<&'a str>,
    /// The process's description and reference.
    context: (Option<&'a str>, Option<&'a str>),
    language: Language,
    text: &'a str,
    link: Option<&'a Link>,
    /// The SMS text to send instead if the message is refused for good.
    fallback_text: Option<&'a str>,
    payload: Option<String>,
    event_id: Option<String>,
}

/// Outbox rows per INSERT: 18 values each stays far below either database's limit on
/// bound parameters.
const OUTBOX_ROWS_PER_INSERT: usize = 32;

async fn insert_outbox(
    conn: &mut AnyConnection,
    rows: &[OutboxRow<'_>],
    now_ms: i64,
) -> Result<(), EngineError> {
    const COLUMNS: usize = 18;
    let values: Vec<String> = (0..rows.len())
        .map(|row| {
            let first = row * COLUMNS + 1;
            let placeholders: Vec<String> =
                (first..first + COLUMNS).map(|n| format!("${n}")).collect();
            let now = rows.len() * COLUMNS + 1;
            format!(
                "({}, 'queued', 0, ${now}, ${now}, ${now})",
                placeholders.join(", ")
            )
        })
        .collect();
    let statement = format!(
        "INSERT INTO outbox (id, channel, intended_channel, kind, recipient, to_address, retailer_id, \
         process_id, code, language, text, url, payload, event_id, description, reference, \
         expires_at_ms, fallback_text, status, attempts, next_attempt_at_ms, created_at_ms, queued_at_ms) VALUES {}",
        values.join(", ")
    );
    let mut query = sqlx::query(&statement);
    for row in rows {
        query = query
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(row.route.channel.as_str())
            .bind(row.route.intended.as_str())
            .bind(row.kind.as_str())
            .bind(row.recipient)
            .bind(row.route.to.clone())
            .bind(row.retailer_id)
            .bind(row.process_id)
            .bind(row.code)
            .bind(row.language.as_str())
            .bind(row.text)
            .bind(row.link.map(|link| link.url.as_str()))
            .bind(row.payload.clone())
            .bind(row.event_id.clone())
            .bind(row.context.0)
            .bind(row.context.1)
            .bind(row.link.map(|link| link.expires_at_ms))
            .bind(row.fallback_text);
    }
    query.bind(now_ms).execute(&mut *conn).await?;
    Ok(())
}
