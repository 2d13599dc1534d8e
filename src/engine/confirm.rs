//! The customer's answer to a confirmation request: approve (with PIN where the customer has
//! one) or decline; and what becomes of a request nobody approved.

use paystep_channel_core::{ChannelName, MessageKind};
use sqlx::AnyConnection;

use super::effects::Effects;
use super::pin::{self, VerifiedPin};
use super::process::text_facts;
use super::rows::{self, ConfirmationRow, CustomerRow, ProcessRow, RetailerRow};
use super::step::reload_step;
use super::texts::{Ended, Text};
use super::txn::Txn;
use super::views::{ProcessView, StepView};
use super::{secret_hash, Engine, EngineError};
use crate::audit::Origin;
use crate::domain::{ConfirmationKind, ConfirmationStatus, Language, ProcessStatus};
use crate::ledger::{AccountKind, LedgerError, Transfer, TransferKind};

#[derive(Clone)]
pub struct Answer {
    pub approve: bool,
    pub pin: Option<String>,
    pub channel: ChannelName,
    /// The PIN's verdict, reached before the transaction (`Engine::verify_pin_ahead`).
    pub verified: Option<VerifiedPin>,
}

// The PIN is a secret: never print it.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("approve", &self.approve)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerOutcome {
    Approved,
    Declined,
    InsufficientCredit,
    PinRequired {
        tries_left: i64,
    },
    WrongPin {
        tries_left: i64,
    },
    PinTriesExceeded,
    LockedOut {
        until_ms: i64,
    },
    /// Already approved, declined or expired: tokens are single-use.
    NotPending {
        status: String,
    },
    Expired,
}

/// What the confirmation page shows.
#[derive(Debug, Clone)]
pub struct ConfirmationPage {
    pub retailer_name: String,
    pub context: String,
    pub description: Option<String>,
    pub amount: String,
    pub currency: String,
    pub code: String,
    pub kind: ConfirmationKind,
    pub status: ConfirmationStatus,
    pub pin_required: bool,
    pub language: Language,
    pub expires_at_ms: i64,
    pub step_amount: Option<String>,
}

/// How a request ends without approval.
#[derive(Debug, Clone, Copy)]
pub enum Resolution {
    Declined(&'static str),
    Expired,
}

/// A confirmation request settled without approval: which, how, and whether the process
/// ends with it (an unanswered initial request) or goes on (a top-up, a close).
pub struct Settles<'a> {
    pub confirmation: &'a ConfirmationRow,
    pub resolution: Resolution,
    pub ends_process: bool,
}

/// What becomes of an answer, decided before anything is written.
enum Decision {
    Refuse(AnswerOutcome),
    Resolve(Resolution, AnswerOutcome),
    Approve(CustomerRow),
}

enum PinCheck {
    Accepted,
    Refused(AnswerOutcome),
    TriesExceeded,
}

impl Engine {
    /// What the page for `token` shows; `None` for a token that was never issued. Reads only:
    /// mail scanners open links, so a GET must never change anything.
    pub async fn confirmation_page(
        &self,
        conn: &mut AnyConnection,
        token: &str,
    ) -> Result<Option<ConfirmationPage>, EngineError> {
        let Some(confirmation) =
            rows::confirmation_by_token_hash(conn, &secret_hash(token)).await?
        else {
            return Ok(None);
        };
        let process = rows::load_process(conn, &confirmation.process_id)
            .await?
            .ok_or(EngineError::NotFound("process"))?;
        let retailer = rows::load_retailer(conn, &process.retailer_id)
            .await?
            .ok_or(EngineError::NotFound("retailer"))?;
        let customer = self.process_customer(conn, &process).await?;
        let currency = process.currency();
        let mut status = confirmation.status();
        if status == ConfirmationStatus::Pending && confirmation.expires_at_ms <= self.now_ms() {
            status = ConfirmationStatus::Expired;
        }
        let step_amount = match (&confirmation.step_id, confirmation.kind()) {
            (Some(step_id), ConfirmationKind::TopUp) => rows::load_step(conn, step_id)
                .await?
                .map(|step| currency.format(step.amount)),
            _ => None,
        };
        Ok(Some(ConfirmationPage {
            retailer_name: retailer.name,
            context: process.context(),
            description: process.description.clone(),
            amount: currency.format(confirmation.amount),
            currency: process.currency.clone(),
            code: process.code.clone(),
            kind: confirmation.kind(),
            status,
            pin_required: customer.pin_hash.is_some(),
            language: customer.language(),
            expires_at_ms: confirmation.expires_at_ms,
            step_amount,
        }))
    }

    /// Answers the confirmation request behind `token`.
    pub async fn answer_by_token(
        &self,
        conn: &mut AnyConnection,
        token: &str,
        answer: Answer,
    ) -> Result<AnswerOutcome, EngineError> {
        let confirmation = rows::confirmation_by_token_hash(conn, &secret_hash(token))
            .await?
            .ok_or(EngineError::NotFound("confirmation request"))?;
        self.answer(conn, &confirmation.id, answer).await
    }

    /// Answers a confirmation request by its id, whatever channel the answer came on.
    pub async fn answer(
        &self,
        conn: &mut AnyConnection,
        confirmation_id: &str,
        answer: Answer,
    ) -> Result<AnswerOutcome, EngineError> {
        let now_ms = self.now_ms();
        let (mut process, confirmation) = lock_confirmation(conn, confirmation_id)
            .await?
            .ok_or(EngineError::NotFound("confirmation request"))?;
        let origin = match &process.customer_id {
            Some(customer_id) => Origin::customer(customer_id, answer.channel.as_str()),
            None => Origin::sender("unknown", answer.channel.as_str()),
        };
        let mut effects = Effects::new(origin);
        let mut txn = Txn {
            conn: &mut *conn,
            now_ms,
            effects: &mut effects,
        };
        let outcome = self
            .answer_locked(&mut txn, (&mut process, &confirmation), &answer)
            .await?;
        effects.flush(conn, &self.channels, now_ms).await?;
        Ok(outcome)
    }

    /// `answer`, once the request and its process are locked.
    async fn answer_locked(
        &self,
        txn: &mut Txn<'_>,
        (process, confirmation): (&mut ProcessRow, &ConfirmationRow),
        answer: &Answer,
    ) -> Result<AnswerOutcome, EngineError> {
        let now_ms = txn.now_ms;
        // A locked-out customer learns nothing, not even whether the request is still open.
        if answer.approve {
            if let Some(outcome) = self
                .refuse_if_locked_out(txn, process, confirmation, answer)
                .await?
            {
                return Ok(outcome);
            }
        }
        if !rows::is_pending(confirmation) {
            return Ok(AnswerOutcome::NotPending {
                status: confirmation.status.clone(),
            });
        }
        let retailer = rows::load_retailer(txn.conn, &process.retailer_id)
            .await?
            .ok_or(EngineError::NotFound("retailer"))?;
        let decision = if confirmation.expires_at_ms <= now_ms {
            Decision::Resolve(Resolution::Expired, AnswerOutcome::Expired)
        } else if !answer.approve {
            Decision::Resolve(
                Resolution::Declined("customer_declined"),
                AnswerOutcome::Declined,
            )
        } else {
            let customer = self.process_customer(txn.conn, process).await?;
            match self.check_pin(txn, &customer, confirmation, answer).await? {
                PinCheck::Refused(outcome) => Decision::Refuse(outcome),
                PinCheck::TriesExceeded => Decision::Resolve(
                    Resolution::Declined("pin_tries_exceeded"),
                    AnswerOutcome::PinTriesExceeded,
                ),
                PinCheck::Accepted => Decision::Approve(customer),
            }
        };
        let outcome = match decision {
            Decision::Refuse(outcome) => outcome,
            Decision::Resolve(resolution, outcome) => {
                let settles = Settles {
                    confirmation,
                    resolution,
                    ends_process: true,
                };
                self.resolve_unapproved(txn, process, &retailer, settles)
                    .await?;
                outcome
            }
            Decision::Approve(customer) => {
                self.approve(txn, process, (&retailer, &customer), confirmation)
                    .await?
            }
        };
        Ok(outcome)
    }

    /// Holds the released amount (claim 1's comparison of credit and release is the guarded
    /// debit) and charges the step that waited for it, if any.
    async fn approve(
        &self,
        txn: &mut Txn<'_>,
        process: &mut ProcessRow,
        (retailer, customer): (&RetailerRow, &CustomerRow),
        confirmation: &ConfirmationRow,
    ) -> Result<AnswerOutcome, EngineError> {
        let (conn, now_ms, effects) = (&mut *txn.conn, txn.now_ms, &mut *txn.effects);
        let held = self
            .post(
                conn,
                effects,
                Transfer {
                    kind: TransferKind::Release,
                    currency: process.currency(),
                    debit: (AccountKind::CustomerCredit, &customer.id),
                    credit: (AccountKind::ProcessHold, &process.id),
                    amount: confirmation.amount,
                    process_id: Some(&process.id),
                    step_id: None,
                    reference: None,
                    now_ms,
                },
            )
            .await;
        match held {
            Ok(()) => {}
            Err(LedgerError::InsufficientFunds) => {
                let resolution = Resolution::Declined("insufficient_credit");
                let mut txn = Txn {
                    conn,
                    now_ms,
                    effects,
                };
                let settles = Settles {
                    confirmation,
                    resolution,
                    ends_process: true,
                };
                self.resolve_unapproved(&mut txn, process, retailer, settles)
                    .await?;
                return Ok(AnswerOutcome::InsufficientCredit);
            }
            Err(other) => return Err(other.into()),
        }
        sqlx::query(
            "UPDATE processes SET released = released + $1, remaining = remaining + $1, \
             status = 'active', updated_at_ms = $2 WHERE id = $3",
        )
        .bind(confirmation.amount)
        .bind(now_ms)
        .bind(&process.id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE confirmations SET status = 'approved', resolved_at_ms = $1 WHERE id = $2",
        )
        .bind(now_ms)
        .bind(&confirmation.id)
        .execute(&mut *conn)
        .await?;
        *process = reload_process(conn, &process.id).await?;
        // Steps that fitted may have been charged while the top-up was asked, so the
        // waiting step may no longer fit even with it: the release stands (the customer
        // agreed to it) and the step is declined, as it would be without a top-up.
        let step = match &confirmation.step_id {
            Some(step_id) => Some(reload_step(conn, step_id).await?),
            None => None,
        };
        let charges_step = step
            .as_ref()
            .is_some_and(|step| step.amount <= process.remaining);
        let facts = text_facts(retailer, process);
        let amount = process.currency().format(confirmation.amount);
        if confirmation.kind() == ConfirmationKind::Initial {
            effects.event(
                retailer,
                &process.id,
                "process.confirmed",
                ProcessView::from_row(process),
            );
            effects.message_retailer(
                retailer,
                MessageKind::ExecutionMessage,
                (&facts, &process.id),
                Text::Released { amount: &amount },
            );
        }
        // A release is receipted by the step it paid for, unless that step's receipt is
        // left to the summary.
        if !charges_step || retailer.summary_receipts() {
            effects.message_customer(
                customer,
                process.requested_channel(),
                MessageKind::Receipt,
                (&facts, &retailer.id, &process.id),
                Text::ReleaseReceipt { amount: &amount },
                None,
            );
        }
        match step {
            Some(step) if charges_step => {
                let mut txn = Txn {
                    conn: &mut *conn,
                    now_ms,
                    effects: &mut *effects,
                };
                self.charge(&mut txn, process, (retailer, customer), &step)
                    .await?;
            }
            Some(step) => {
                let resolution = Resolution::Declined("insufficient_release");
                end_waiting_step(
                    conn,
                    effects,
                    (retailer, process),
                    &step.id,
                    resolution,
                    now_ms,
                )
                .await?
            }
            None => {}
        }
        self.touch(conn, process, now_ms).await?;
        Ok(AnswerOutcome::Approved)
    }

    /// Checks the PIN of a customer who has one, counting wrong tries per request and in a
    /// row per customer, and logging every try. A verdict reached before the transaction
    /// is used when it is for this PIN and this hash; otherwise the PIN is verified here.
    async fn check_pin(
        &self,
        txn: &mut Txn<'_>,
        customer: &CustomerRow,
        confirmation: &ConfirmationRow,
        answer: &Answer,
    ) -> Result<PinCheck, EngineError> {
        let now_ms = txn.now_ms;
        let Some(pin_hash) = &customer.pin_hash else {
            return Ok(PinCheck::Accepted);
        };
        let security = &self.settings.security;
        let tries_left = security.pin_tries_per_request - confirmation.pin_failures;
        let Some(pin_text) = answer
            .pin
            .as_deref()
            .map(str::trim)
            .filter(|pin| !pin.is_empty())
        else {
            return Ok(PinCheck::Refused(AnswerOutcome::PinRequired { tries_left }));
        };
        let verdict = answer
            .verified
            .as_ref()
            .and_then(|verified| verified.verdict_for(pin_text, pin_hash));
        // Without a verdict (the lockout ended since, or the PIN changed) the hash runs
        // here, in the transaction: rare, and still off the async workers.
        let correct = match verdict {
            Some(correct) => correct,
            None => pin::verify(&self.pin_hashing, pin_text, pin_hash)
                .await?
                .correct(),
        };
        if correct {
            if let Some(until_ms) = pin::accept_pin(&mut *txn.conn, &customer.id, now_ms).await? {
                let outcome = self
                    .refuse_locked_out(txn, customer, Some(confirmation), answer, until_ms)
                    .await?;
                return Ok(PinCheck::Refused(outcome));
            }
            pin::log_attempt(
                txn,
                customer,
                Some(confirmation),
                answer.channel,
                "accepted",
            )
            .await?;
            return Ok(PinCheck::Accepted);
        }
        let counted = pin::count_wrong_pin(
            &mut *txn.conn,
            &customer.id,
            security.pin_lockout_after,
            security.pin_lockout_s * 1000,
            now_ms,
        )
        .await?;
        let locked_until_ms = match counted {
            pin::WrongPinCount::LockedOut { until_ms } => {
                let outcome = self
                    .refuse_locked_out(txn, customer, Some(confirmation), answer, until_ms)
                    .await?;
                return Ok(PinCheck::Refused(outcome));
            }
            pin::WrongPinCount::Counted {
                locked_until_ms,
                failures_in_row,
            } => {
                tracing::warn!(customer_id = %customer.id, confirmation_id = %confirmation.id, channel = %answer.channel, failures_in_row, "Wrong PIN");
                locked_until_ms
            }
        };
        pin::log_attempt(txn, customer, Some(confirmation), answer.channel, "wrong").await?;
        sqlx::query("UPDATE confirmations SET pin_failures = pin_failures + 1 WHERE id = $1")
            .bind(&confirmation.id)
            .execute(&mut *txn.conn)
            .await?;
        if tries_left <= 1 {
            return Ok(PinCheck::TriesExceeded);
        }
        Ok(PinCheck::Refused(match locked_until_ms {
            Some(until_ms) => AnswerOutcome::LockedOut { until_ms },
            None => AnswerOutcome::WrongPin {
                tries_left: tries_left - 1,
            },
        }))
    }

    /// Verifies the PIN of an answer to come, before its write transaction, so that the
    /// slow hash holds no lock. `None` when there is nothing to verify.
    pub async fn verify_pin_ahead(
        &self,
        customer: &CustomerRow,
        pin: Option<&str>,
    ) -> Result<Option<VerifiedPin>, EngineError> {
        let pin = pin.map(str::trim).filter(|pin| !pin.is_empty());
        let (Some(pin), Some(pin_hash)) = (pin, &customer.pin_hash) else {
            return Ok(None);
        };
        if pin::lockout_end(customer, self.now_ms()).is_some() {
            return Ok(None);
        }
        Ok(Some(pin::verify(&self.pin_hashing, pin, pin_hash).await?))
    }

    /// `verify_pin_ahead` for the customer of the request behind `token`, while that
    /// request can still be approved: an answered or expired one is never hashed for.
    pub async fn verify_pin_for_token(
        &self,
        token: &str,
        pin: Option<&str>,
    ) -> Result<Option<VerifiedPin>, EngineError> {
        if pin.is_none() {
            return Ok(None);
        }
        let customer = {
            let mut conn = self.store.reader().acquire().await?;
            let confirmation = rows::confirmation_by_token_hash(&mut conn, &secret_hash(token))
                .await?
                .filter(|confirmation| {
                    rows::is_pending(confirmation) && confirmation.expires_at_ms > self.now_ms()
                });
            let Some(confirmation) = confirmation else {
                return Ok(None);
            };
            let process = rows::load_process(&mut conn, &confirmation.process_id)
                .await?
                .ok_or(EngineError::NotFound("process"))?;
            self.process_customer(&mut conn, &process).await?
        };
        self.verify_pin_ahead(&customer, pin).await
    }

    async fn refuse_if_locked_out(
        &self,
        txn: &mut Txn<'_>,
        process: &ProcessRow,
        confirmation: &ConfirmationRow,
        answer: &Answer,
    ) -> Result<Option<AnswerOutcome>, EngineError> {
        let now_ms = txn.now_ms;
        let Some(customer_id) = &process.customer_id else {
            return Ok(None);
        };
        let customer = rows::load_customer(txn.conn, customer_id)
            .await?
            .ok_or(EngineError::NotFound("customer"))?;
        let Some(until_ms) = pin::lockout_end(&customer, now_ms) else {
            return Ok(None);
        };
        if customer.pin_hash.is_none() {
            return Ok(None);
        }
        // A request no longer pending may be pruned at any moment: the try is logged
        // without it.
        let pending = rows::is_pending(confirmation).then_some(confirmation);
        let outcome = self
            .refuse_locked_out(txn, &customer, pending, answer, until_ms)
            .await?;
        Ok(Some(outcome))
    }

    /// A locked-out customer's answer is refused unchecked, and logged.
    async fn refuse_locked_out(
        &self,
        txn: &mut Txn<'_>,
        customer: &CustomerRow,
        confirmation: Option<&ConfirmationRow>,
        answer: &Answer,
        until_ms: i64,
    ) -> Result<AnswerOutcome, EngineError> {
        pin::log_attempt(txn, customer, confirmation, answer.channel, "locked_out").await?;
        Ok(AnswerOutcome::LockedOut { until_ms })
    }

    /// Ends a pending request that was not approved: the waiting step with it, and for the
    /// first request the process too (unless the caller ends the process itself).
    pub(super) async fn resolve_unapproved(
        &self,
        txn: &mut Txn<'_>,
        process: &mut ProcessRow,
        retailer: &RetailerRow,
        settles: Settles<'_>,
    ) -> Result<(), EngineError> {
        let (conn, now_ms, effects) = (&mut *txn.conn, txn.now_ms, &mut *txn.effects);
        let Settles {
            confirmation,
            resolution,
            ends_process: end_process,
        } = settles;
        let (status, reason) = match resolution {
            Resolution::Declined(reason) => ("declined", Some(reason)),
            Resolution::Expired => ("expired", None),
        };
        sqlx::query(
            "UPDATE confirmations SET status = $1, decline_reason = $2, resolved_at_ms = $3 \
             WHERE id = $4 AND status = 'pending'",
        )
        .bind(status)
        .bind(reason)
        .bind(now_ms)
        .bind(&confirmation.id)
        .execute(&mut *conn)
        .await?;
        if let Some(step_id) = &confirmation.step_id {
            end_waiting_step(
                conn,
                effects,
                (retailer, process),
                step_id,
                resolution,
                now_ms,
            )
            .await?;
        }
        let initial = confirmation.kind() == ConfirmationKind::Initial;
        if initial && end_process {
            sqlx::query(
                "UPDATE processes SET status = $1, decline_reason = $2, updated_at_ms = $3 WHERE id = $4",
            )
            .bind(status)
            .bind(reason)
            .bind(now_ms)
            .bind(&process.id)
            .execute(&mut *conn)
            .await?;
            *process = reload_process(conn, &process.id).await?;
            let facts = text_facts(retailer, process);
            let view = ProcessView::from_row(process);
            match resolution {
                Resolution::Declined(reason) => {
                    effects.event(retailer, &process.id, "process.declined", &view);
                    effects.message_retailer(
                        retailer,
                        MessageKind::Notice,
                        (&facts, &process.id),
                        Text::Declined { reason },
                    );
                }
                Resolution::Expired => {
                    effects.event(retailer, &process.id, "process.expired", &view);
                    let zero = process.currency().format(0);
                    effects.message_retailer(
                        retailer,
                        MessageKind::Notice,
                        (&facts, &process.id),
                        Text::Ended {
                            ended: Ended::Expired,
                            charged: &zero,
                            returned: &zero,
                        },
                    );
                }
            }
        }
        // The customer is told why, when the reason is not the customer's own choice.
        if let Resolution::Declined(reason @ ("insufficient_credit" | "pin_tries_exceeded")) =
            resolution
        {
            let customer = self.process_customer(conn, process).await?;
            let facts = text_facts(retailer, process);
            effects.message_customer(
                &customer,
                process.requested_channel(),
                MessageKind::Notice,
                (&facts, &retailer.id, &process.id),
                Text::Declined { reason },
                None,
            );
        }
        if !initial && process.status() == ProcessStatus::Active {
            self.touch(conn, process, now_ms).await?;
        }
        Ok(())
    }
}

/// Ends a step that waited for a top-up: declined or expired with its request, or declined
/// when the approved top-up no longer covers it. Tells the retailer.
async fn end_waiting_step(
    conn: &mut AnyConnection,
    effects: &mut Effects,
    (retailer, process): (&RetailerRow, &ProcessRow),
    step_id: &str,
    resolution: Resolution,
    now_ms: i64,
) -> Result<(), EngineError> {
    let (status, reason, event) = match resolution {
        Resolution::Declined(reason) => ("declined", Some(reason), "step.declined"),
        Resolution::Expired => ("expired", None, "step.expired"),
    };
    sqlx::query(
        "UPDATE steps SET status = $1, decline_reason = $2, updated_at_ms = $3 \
         WHERE id = $4 AND status = 'awaiting_confirmation'",
    )
    .bind(status)
    .bind(reason)
    .bind(now_ms)
    .bind(step_id)
    .execute(&mut *conn)
    .await?;
    let step = reload_step(conn, step_id).await?;
    effects.event(
        retailer,
        &process.id,
        event,
        StepView::from_row(&step, process),
    );
    Ok(())
}

/// Locks the process of a confirmation request and reads the request again under that lock,
/// since a concurrent answer or expiry may have resolved it in the meantime.
pub(super) async fn lock_confirmation(
    conn: &mut AnyConnection,
    confirmation_id: &str,
) -> Result<Option<(ProcessRow, ConfirmationRow)>, EngineError> {
    let Some(unlocked) = rows::load_confirmation(conn, confirmation_id).await? else {
        return Ok(None);
    };
    let Some(process) = rows::lock_process(conn, &unlocked.process_id).await? else {
        return Ok(None);
    };
    let confirmation = rows::load_confirmation(conn, confirmation_id)
        .await?
        .ok_or(EngineError::Invariant(
            "a confirmation request vanished under its lock".into(),
        ))?;
    Ok(Some((process, confirmation)))
}

async fn reload_process(
    conn: &mut AnyConnection,
    process_id: &str,
) -> Result<ProcessRow, EngineError> {
    rows::load_process(conn, process_id)
        .await?
        .ok_or(EngineError::Invariant(
            "a process vanished in its own transaction".into(),
        ))
}
