//! Messages from terminals other than the web page: SMS replies (approve, decline, PAY,
//! BAL, anything else) and delivery receipts. Each is handled in one transaction together
//! with the replies it causes, so a channel acknowledges its peer only once all of that is
//! committed; handling the same message twice changes nothing more.

use std::sync::Arc;

use async_trait::async_trait;
use paystep_channel_core::{ChannelName, InboundError, InboundMessage, InboundSink, MessageKind};
use sqlx::{AnyConnection, Row};

use super::confirm::{Answer, AnswerOutcome};
use super::effects::{Effects, ReplyAbout};
use super::pin::VerifiedPin;
use super::rows::{self, CustomerKey, CustomerRow};
use super::texts::Reply;
use super::{random_secret, Engine, EngineError};
use crate::clock::format_ms;
use crate::domain::{ConfirmationKind, Language, Msisdn, ProcessCode};
use crate::outbox::fallback;

/// The core as channels see it.
pub struct CoreInbound(pub Arc<Engine>);

#[async_trait]
impl InboundSink for CoreInbound {
    async fn receive(&self, message: InboundMessage) -> Result<(), InboundError> {
        self.0.receive(message).await.map_err(|error| {
            tracing::error!(error = %error, "Inbound message not taken; the peer will deliver it again");
            InboundError(error.to_string())
        })
    }
}

/// The PIN of a reply, and its verdict if it was verified before the transaction.
#[derive(Default)]
struct PinAnswer {
    pin: Option<String>,
    verified: Option<VerifiedPin>,
}

/// A pending confirmation request of a customer, with its process's code.
struct OpenRequest {
    confirmation_id: String,
    code: String,
    retailer_id: String,
}

impl OpenRequest {
    fn about(&self) -> ReplyAbout<'_> {
        ReplyAbout {
            retailer_id: &self.retailer_id,
            code: &self.code,
        }
    }
}

/// Where an inbound message came from: the channel and the sender's address on it, which
/// is where its replies go.
/// What claiming a till code came to.
#[derive(Debug)]
pub enum TillClaim {
    /// The sender is no registered customer: nothing changes.
    UnknownSender,
    NoSuchCode,
    BadAmount(String),
    Answered {
        retailer_id: String,
        code: String,
        outcome: AnswerOutcome,
    },
}

#[derive(Clone, Copy)]
struct Origin<'a> {
    channel: ChannelName,
    from: &'a str,
}

/// Who an inbound message comes from, for the audit log: its sender's address (whose
/// customer, if any, the answer it causes names), or the channel's peer for a receipt.
fn audit_origin(message: &InboundMessage) -> crate::audit::Origin {
    match message {
        InboundMessage::Approve { channel, from, .. }
        | InboundMessage::Decline { channel, from, .. }
        | InboundMessage::Pay { channel, from, .. }
        | InboundMessage::Balance { channel, from }
        | InboundMessage::Unrecognized { channel, from, .. } => {
            crate::audit::Origin::sender(from, channel.as_str())
        }
        InboundMessage::DeliveryReceipt { channel, .. } => {
            crate::audit::Origin::system(channel.as_str())
        }
    }
}

impl Engine {
    pub async fn receive(&self, message: InboundMessage) -> Result<(), EngineError> {
        let verified = self.verify_sender_pin_ahead(&message).await?;
        let mut tx = self.store.begin_write().await?;
        let mut replies = Effects::new(audit_origin(&message));
        match message {
            InboundMessage::Approve {
                channel,
                from,
                code,
                pin,
            } => {
                let pin = PinAnswer { pin, verified };
                let origin = Origin {
                    channel,
                    from: &from,
                };
                self.answer_by_reply(&mut tx, origin, code, pin, true, &mut replies)
                    .await?
            }
            InboundMessage::Decline {
                channel,
                from,
                code,
            } => {
                let pin = PinAnswer::default();
                let origin = Origin {
                    channel,
                    from: &from,
                };
                self.answer_by_reply(&mut tx, origin, code, pin, false, &mut replies)
                    .await?
            }
            InboundMessage::Pay {
                channel,
                from,
                code,
                amount,
                pin,
            } => {
                let pin = PinAnswer { pin, verified };
                let origin = Origin {
                    channel,
                    from: &from,
                };
                self.pay(&mut tx, origin, &code, amount.as_deref(), pin, &mut replies)
                    .await?
            }
            InboundMessage::Balance { channel, from } => {
                self.balance(&mut tx, channel, &from, &mut replies).await?
            }
            InboundMessage::Unrecognized { channel, from, .. } => {
                let language = self.sender_language(&mut tx, &from).await?;
                replies.reply(channel, &from, language, None, Reply::Help);
            }
            InboundMessage::DeliveryReceipt {
                channel,
                remote_id,
                state,
                error,
            } => {
                self.record_receipt(&mut tx, channel, &remote_id, &state, error.as_deref())
                    .await?
            }
        }
        replies
            .flush(&mut tx, &self.channels, self.now_ms())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Verifies the PIN a reply carries before its transaction begins, when there is a
    /// request it could answer. A lone word after YES that is no open request's code may
    /// be the PIN of the one open request, so that word is verified when no PIN is given.
    async fn verify_sender_pin_ahead(
        &self,
        message: &InboundMessage,
    ) -> Result<Option<VerifiedPin>, EngineError> {
        let mut conn = self.store.reader().acquire().await?;
        let (customer, candidate) = match message {
            InboundMessage::Approve {
                from, code, pin, ..
            } => {
                let Some(customer) = self.sender(&mut conn, from).await? else {
                    return Ok(None);
                };
                let open = self.open_requests(&mut conn, &customer.id).await?;
                let code_is_open = |code: &String| open.iter().any(|request| &request.code == code);
                let candidate = match (pin, code) {
                    _ if open.is_empty() => None,
                    (Some(pin), _) => Some(pin),
                    (None, Some(word)) if !code_is_open(word) => Some(word),
                    (None, _) => None,
                };
                (customer, candidate)
            }
            InboundMessage::Pay {
                from, code, pin, ..
            } => {
                let Some(customer) = self.sender(&mut conn, from).await? else {
                    return Ok(None);
                };
                // Only a code of a till process waiting for its customer is worth a hash.
                let claimable: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM processes WHERE code = $1 \
                     AND status = 'awaiting_confirmation' AND (customer_id IS NULL OR customer_id = $2)",
                )
                .bind(code)
                .bind(&customer.id)
                .fetch_one(&mut *conn)
                .await?;
                (customer, pin.as_ref().filter(|_| claimable > 0))
            }
            _ => return Ok(None),
        };
        drop(conn);
        match candidate {
            Some(candidate) => self.verify_pin_ahead(&customer, Some(candidate)).await,
            None => Ok(None),
        }
    }

    async fn sender(
        &self,
        conn: &mut AnyConnection,
        from: &str,
    ) -> Result<Option<CustomerRow>, EngineError> {
        let Ok(msisdn) = Msisdn::parse(from) else {
            return Ok(None);
        };
        Ok(rows::find_customer(conn, CustomerKey::Msisdn, msisdn.as_str()).await?)
    }

    async fn sender_language(
        &self,
        conn: &mut AnyConnection,
        from: &str,
    ) -> Result<Language, EngineError> {
        Ok(self
            .sender(conn, from)
            .await?
            .map(|customer| customer.language())
            .unwrap_or_default())
    }

    /// The sender's pending requests. Only open processes have one (ending a process
    /// resolves its request), and saying so lets the index on (customer, status) skip the
    /// customer's whole history: without it every reply read all the customer's processes.
    async fn open_requests(
        &self,
        conn: &mut AnyConnection,
        customer_id: &str,
    ) -> Result<Vec<OpenRequest>, EngineError> {
        let rows = sqlx::query(
            "SELECT c.id, p.code, p.retailer_id FROM confirmations c \
             JOIN processes p ON p.id = c.process_id \
             WHERE p.customer_id = $1 AND p.status IN ('awaiting_confirmation', 'active') \
             AND c.status = 'pending' ORDER BY c.created_at_ms",
        )
        .bind(customer_id)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OpenRequest {
                    confirmation_id: row.try_get("id")?,
                    code: row.try_get("code")?,
                    retailer_id: row.try_get("retailer_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(EngineError::from)
    }

    /// `YES [code] [PIN]` and `NO [code]`: only the sender's own requests are answered.
    async fn answer_by_reply(
        &self,
        conn: &mut AnyConnection,
        origin: Origin<'_>,
        code: Option<String>,
        pin: PinAnswer,
        approve: bool,
        replies: &mut Effects,
    ) -> Result<(), EngineError> {
        let Origin { channel, from } = origin;
        let PinAnswer { pin, verified } = pin;
        let Some(customer) = self.sender(conn, from).await? else {
            replies.reply(channel, from, Language::En, None, Reply::Help);
            return Ok(());
        };
        let language = customer.language();
        let open = self.open_requests(conn, &customer.id).await?;
        let (request, pin) = match code {
            Some(code) => match open.iter().find(|request| request.code == code) {
                Some(request) => (request, pin),
                // A lone word matching no open code is the PIN of the one open request, for
                // a customer who has a PIN, unless it is the code of one of the customer's
                // own processes: an answer to a request that closed in the meantime is
                // told so, never taken as the PIN of another request (found by the
                // simulation: a PIN-less customer's `YES <code>` approved another release).
                None if pin.is_none()
                    && open.len() == 1
                    && approve
                    && customer.pin_hash.is_some()
                    && !is_own_code(conn, &customer.id, &code).await? =>
                {
                    (&open[0], Some(code))
                }
                None => {
                    replies.reply(
                        channel,
                        from,
                        language,
                        None,
                        Reply::NoSuchCode { code: &code },
                    );
                    return Ok(());
                }
            },
            None => match open.as_slice() {
                [] => {
                    replies.reply(channel, from, language, None, Reply::NothingOpen);
                    return Ok(());
                }
                [only] => (only, pin),
                _ => {
                    replies.reply(channel, from, language, None, Reply::SeveralOpen);
                    return Ok(());
                }
            },
        };
        let outcome = self
            .answer(
                conn,
                &request.confirmation_id,
                Answer {
                    approve,
                    pin,
                    channel,
                    verified,
                },
            )
            .await?;
        self.reply_to_outcome(channel, from, language, request.about(), &outcome, replies);
        Ok(())
    }

    /// The reply to an answer names the retailer and the process it was about (claim 7).
    fn reply_to_outcome(
        &self,
        channel: ChannelName,
        from: &str,
        language: Language,
        about: ReplyAbout<'_>,
        outcome: &AnswerOutcome,
        replies: &mut Effects,
    ) {
        let code = about.code;
        let reply = match outcome {
            // The receipt and the retailer's messages say all there is to say.
            AnswerOutcome::Approved
            | AnswerOutcome::InsufficientCredit
            | AnswerOutcome::PinTriesExceeded => None,
            AnswerOutcome::Declined => Some(Reply::Declined { code }),
            AnswerOutcome::PinRequired { .. } => Some(Reply::PinRequired { code }),
            AnswerOutcome::WrongPin { tries_left } => Some(Reply::WrongPin {
                code,
                tries_left: *tries_left,
            }),
            AnswerOutcome::LockedOut { until_ms } => Some(Reply::LockedOut {
                until: format_ms(*until_ms),
            }),
            AnswerOutcome::NotPending { .. } => Some(Reply::AlreadyAnswered { code }),
            AnswerOutcome::Expired => Some(Reply::Expired { code }),
        };
        if let Some(reply) = reply {
            replies.reply(channel, from, language, Some(about), reply);
        }
    }

    /// `PAY <code> [amount] [PIN]`: binds a point-of-sale process to the sender and releases.
    async fn pay(
        &self,
        conn: &mut AnyConnection,
        origin: Origin<'_>,
        code: &str,
        amount: Option<&str>,
        pin: PinAnswer,
        replies: &mut Effects,
    ) -> Result<(), EngineError> {
        let Origin { channel, from } = origin;
        let (claim, language) = self.claim_till(conn, origin, code, amount, pin).await?;
        match claim {
            TillClaim::UnknownSender => {
                replies.reply(channel, from, Language::En, None, Reply::Help);
            }
            TillClaim::NoSuchCode => {
                replies.reply(channel, from, language, None, Reply::NoSuchCode { code });
            }
            TillClaim::BadAmount(reason) => replies.reply(
                channel,
                from,
                language,
                None,
                Reply::BadAmount { reason: &reason },
            ),
            TillClaim::Answered {
                retailer_id,
                code,
                outcome,
            } => {
                let about = ReplyAbout {
                    retailer_id: &retailer_id,
                    code: &code,
                };
                self.reply_to_outcome(channel, from, language, about, &outcome, replies);
            }
        }
        Ok(())
    }

    /// A till code claimed by phone (claim 9 by phone): the same as `PAY <code> <PIN>` by
    /// SMS, with the outcome returned for the call to say instead of a reply.
    pub async fn pay_by_phone(
        &self,
        from: &str,
        code: &str,
        pin: Option<String>,
    ) -> Result<(TillClaim, Language), EngineError> {
        let message = InboundMessage::Pay {
            channel: ChannelName::Voice,
            from: from.to_string(),
            code: code.to_string(),
            amount: None,
            pin: pin.clone(),
        };
        let verified = self.verify_sender_pin_ahead(&message).await?;
        let mut tx = self.store.begin_write().await?;
        let origin = Origin {
            channel: ChannelName::Voice,
            from,
        };
        let claimed = self
            .claim_till(&mut tx, origin, code, None, PinAnswer { pin, verified })
            .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// The customer behind a calling number, if registered: their language and whether
    /// their answers need a PIN.
    pub async fn phone_customer(
        &self,
        from: &str,
    ) -> Result<Option<(Language, bool)>, EngineError> {
        let mut conn = self.store.reader().acquire().await?;
        Ok(self
            .sender(&mut conn, from)
            .await?
            .map(|customer| (customer.language(), customer.pin_hash.is_some())))
    }

    /// Binds the till process with `code` to the sender and answers its request; a sender
    /// who already claimed it and still owes the answer (a wrong PIN) answers it again.
    async fn claim_till(
        &self,
        conn: &mut AnyConnection,
        origin: Origin<'_>,
        code: &str,
        amount: Option<&str>,
        pin: PinAnswer,
    ) -> Result<(TillClaim, Language), EngineError> {
        let Origin { channel, from } = origin;
        let PinAnswer { pin, verified } = pin;
        let Some(customer) = self.sender(conn, from).await? else {
            return Ok((TillClaim::UnknownSender, Language::En));
        };
        let language = customer.language();
        let Ok(code) = ProcessCode::parse(code) else {
            return Ok((TillClaim::NoSuchCode, language));
        };
        let process_id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM processes WHERE code = $1 AND status = 'awaiting_confirmation' \
             AND (customer_id IS NULL OR customer_id = $2)",
        )
        .bind(code.as_str())
        .bind(&customer.id)
        .fetch_optional(&mut *conn)
        .await?;
        let process = match process_id {
            Some(process_id) => rows::lock_process(conn, &process_id).await?,
            None => None,
        };
        let Some(process) = process.filter(|process| {
            process.customer_id.is_none() || process.customer_id.as_deref() == Some(&customer.id)
        }) else {
            return Ok((TillClaim::NoSuchCode, language));
        };
        let now_ms = self.now_ms();
        let confirmation_id = if process.customer_id.is_some() {
            // Claimed before by this sender: answer the request that claim left open.
            match rows::pending_confirmation(conn, &process.id).await? {
                Some(confirmation) => confirmation.id,
                None => return Ok((TillClaim::NoSuchCode, language)),
            }
        } else {
            let currency = process.currency();
            let release = match amount {
                None => process.release_requested,
                Some(text) => match currency.parse_amount(text, self.settings.limits.max_amount) {
                    Ok(release) => release,
                    Err(error) => return Ok((TillClaim::BadAmount(error.to_string()), language)),
                },
            };
            sqlx::query(
                "UPDATE processes SET customer_id = $1, release_requested = $2, channel = $3, updated_at_ms = $4 \
                 WHERE id = $5 AND customer_id IS NULL",
            )
            .bind(&customer.id)
            .bind(release)
            .bind(channel.as_str())
            .bind(now_ms)
            .bind(&process.id)
            .execute(&mut *conn)
            .await?;
            // The PAY message is both the request and its answer: a request is recorded, so
            // a wrong PIN can be retried, and answered at once.
            let (confirmation_id, _) = self
                .insert_confirmation(
                    conn,
                    &process.id,
                    (ConfirmationKind::Initial, release),
                    None,
                    &random_secret(),
                    now_ms,
                )
                .await?;
            confirmation_id
        };
        let outcome = self
            .answer(
                conn,
                &confirmation_id,
                Answer {
                    approve: true,
                    pin,
                    channel,
                    verified,
                },
            )
            .await?;
        let claim = TillClaim::Answered {
            retailer_id: process.retailer_id.clone(),
            code: code.as_str().to_string(),
            outcome,
        };
        Ok((claim, language))
    }

    /// `BAL`: the sender's credit and holds per currency.
    async fn balance(
        &self,
        conn: &mut AnyConnection,
        channel: ChannelName,
        from: &str,
        replies: &mut Effects,
    ) -> Result<(), EngineError> {
        let Some(customer) = self.sender(conn, from).await? else {
            replies.reply(channel, from, Language::En, None, Reply::Help);
            return Ok(());
        };
        let summary = self.customer_summary(conn, &customer.id).await?;
        let balances: Vec<String> = summary
            .balances
            .iter()
            .map(|balance| {
                format!(
                    "{} {} ({} {})",
                    balance.credit, balance.currency, balance.held, balance.currency
                )
            })
            .collect();
        let balances = if balances.is_empty() {
            "0".to_string()
        } else {
            balances.join(", ")
        };
        replies.reply(
            channel,
            from,
            customer.language(),
            None,
            Reply::Balance {
                balances: &balances,
            },
        );
        Ok(())
    }

    /// Keeps a delivery receipt; the outbox's view joins it to the message by its ids.
    async fn record_receipt(
        &self,
        conn: &mut AnyConnection,
        channel: ChannelName,
        remote_id: &str,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        sqlx::query(
            "INSERT INTO delivery_receipts (channel, remote_id, state, error, received_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, remote_id) DO UPDATE \
             SET state = excluded.state, error = excluded.error, received_at_ms = excluded.received_at_ms",
        )
        .bind(channel.as_str())
        .bind(remote_id)
        .bind(state)
        .bind(error)
        .bind(self.now_ms())
        .execute(&mut *conn)
        .await?;
        tracing::info!(channel = %channel, remote_id, state, "Delivery receipt");
        self.after_receipt(conn, channel, remote_id, state).await
    }

    /// What a report on a push or a call sets off: a busy or unanswered call is placed again
    /// (`channels.voice.busy_retries`, `busy_retry_delay_s`); a push that will not arrive, a
    /// call that failed or was never taken, goes by SMS instead, once.
    async fn after_receipt(
        &self,
        conn: &mut AnyConnection,
        channel: ChannelName,
        remote_id: &str,
        state: &str,
    ) -> Result<(), EngineError> {
        let failed = match channel {
            ChannelName::WapPush => matches!(
                state,
                "UNDELIVERABLE" | "EXPIRED" | "REJECTED" | "ABORTED" | "TIMEOUT" | "CANCELLED"
            ),
            ChannelName::Voice => matches!(state, "BUSY" | "NO-ANSWER" | "FAILED"),
            _ => false,
        };
        if !failed {
            return Ok(());
        }
        let Some((position, sent)) = fallback::message_of_remote(conn, channel, remote_id).await?
        else {
            return Ok(());
        };
        let now_ms = self.now_ms();
        if let (ChannelName::Voice, "BUSY" | "NO-ANSWER", Some(voice)) =
            (channel, state, &self.settings.channels.voice)
        {
            if sent <= i64::from(voice.busy_retries) {
                let delay_ms = i64::try_from(voice.busy_retry_delay_s.saturating_mul(1000))
                    .unwrap_or(i64::MAX);
                let why = format!("the call was {}; calling again", state.to_ascii_lowercase());
                if fallback::send_again(conn, position, now_ms, delay_ms, &why).await? {
                    return Ok(());
                }
            }
        }
        if let Some(sms) = self.channels.deliver_on(ChannelName::Sms) {
            fallback::queue_fallback(conn, position, sms, now_ms).await?;
        }
        Ok(())
    }
}

// Keeps the message kind of replies in one place.
pub(super) const REPLY_KIND: MessageKind = MessageKind::Notice;

/// Whether `code` is the code of one of the customer's processes, open or not.
async fn is_own_code(
    conn: &mut AnyConnection,
    customer_id: &str,
    code: &str,
) -> Result<bool, EngineError> {
    let found: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM processes WHERE customer_id = $1 AND code = $2")
            .bind(customer_id)
            .bind(code)
            .fetch_one(&mut *conn)
            .await?;
    Ok(found > 0)
}
