//! Steps: charged at once when they fit, or waiting for a top-up when they do not.

use paystep_channel_core::MessageKind;
use rust_decimal::Decimal;
use sqlx::AnyConnection;

use super::effects::Effects;
use super::process::{text_facts, Question, StepStart};
use super::rows::{self, CustomerRow, ProcessRow, RetailerRow, StepRow};
use super::texts::Text;
use super::txn::Txn;
use super::views::StepView;
use super::{Engine, EngineError};
use crate::audit::Origin;
use crate::domain::{ConfirmationKind, Minor, ProcessStatus, TopUpPolicyKind};
use crate::ledger::{AccountKind, Transfer, TransferKind};

#[derive(Debug, Clone)]
pub struct NewStep {
    /// As the retailer wrote it: it is parsed in the process's currency, which the
    /// operation reads anyway (one query fewer than looking the currency up first).
    pub amount: String,
    pub description: Option<String>,
    pub reference: Option<String>,
}

#[derive(Debug, Clone)]
pub enum StepOutcome {
    Charged(StepView),
    /// A top-up was asked of the customer; the step is charged when it is approved.
    AwaitingConfirmation(StepView),
    /// The step does not fit and the policy asks for no top-up.
    Declined(StepView),
}

impl Engine {
    pub async fn charge_step(
        &self,
        conn: &mut AnyConnection,
        retailer: &RetailerRow,
        process_id: &str,
        request: NewStep,
    ) -> Result<StepOutcome, EngineError> {
        let now_ms = self.now_ms();
        let mut process = rows::lock_process(conn, process_id)
            .await?
            .filter(|process| process.retailer_id == retailer.id)
            .ok_or(EngineError::NotFound("process"))?;
        let amount = process
            .currency()
            .parse_amount(&request.amount, self.settings.limits.max_amount)
            .map_err(|error| EngineError::InvalidAmount {
                field: "amount",
                error,
            })?;
        if process.status() != ProcessStatus::Active {
            return Err(EngineError::ProcessNotActive {
                status: process.status.clone(),
            });
        }
        let steps_max = self.settings.limits.steps_per_process_max;
        if process.step_count >= steps_max {
            return Err(EngineError::StepLimitReached(steps_max));
        }
        // Read with the process: nothing in a step changes the customer before its messages.
        let customer = match process.joined_customer() {
            Some(customer) => customer,
            None => self.process_customer(conn, &process).await?,
        };
        let mut effects = Effects::new(Origin::retailer(&retailer.id));
        let description = request.description.as_deref();
        let reference = request.reference.as_deref();
        let fits = amount <= process.remaining;
        if !fits
            && rows::pending_confirmation(conn, &process.id)
                .await?
                .is_some()
        {
            return Err(EngineError::TopUpPending);
        }
        let declined = !fits && process.top_up_policy() == TopUpPolicyKind::None;
        let start = match (fits, declined) {
            (true, _) => StepStart::Charged,
            (false, true) => StepStart::Declined("insufficient_release"),
            (false, false) => StepStart::Waiting,
        };
        let step = self
            .insert_step(
                conn,
                &mut process,
                (amount, start),
                (description, reference),
                now_ms,
            )
            .await?;
        let outcome = if fits {
            let mut txn = Txn {
                conn: &mut *conn,
                now_ms,
                effects: &mut effects,
            };
            let step = self
                .charge(&mut txn, &mut process, (retailer, &customer), &step)
                .await?;
            StepOutcome::Charged(StepView::from_row(&step, &process))
        } else if declined {
            let view = StepView::from_row(&step, &process);
            effects.event(retailer, &process.id, "step.declined", &view);
            StepOutcome::Declined(view)
        } else {
            let top_up = self.top_up_amount(&process, amount);
            let currency = process.currency();
            let (amount, step_amount, remaining) = (
                currency.format(top_up),
                currency.format(amount),
                currency.format(process.remaining),
            );
            let facts = text_facts(retailer, &process);
            let (token, url) = self.new_link();
            let text = Text::TopUpRequest {
                amount: &amount,
                step: &step_amount,
                remaining: &remaining,
                url: &url,
            };
            let question = Question {
                kind: ConfirmationKind::TopUp,
                amount: top_up,
                step_id: Some(&step.id),
            };
            let mut txn = Txn {
                conn: &mut *conn,
                now_ms,
                effects: &mut effects,
            };
            self.ask_customer(
                &mut txn,
                (&process, &customer),
                question,
                (&token, &url, text),
                &facts,
            )
            .await?;
            let view = StepView::from_row(&step, &process);
            effects.event(retailer, &process.id, "step.awaiting_confirmation", &view);
            StepOutcome::AwaitingConfirmation(view)
        };
        // A charge moved the expiry already.
        if !matches!(outcome, StepOutcome::Charged(_)) {
            self.touch(conn, &process, now_ms).await?;
        }
        effects.flush(conn, &self.channels, now_ms).await?;
        Ok(outcome)
    }

    /// The top-up to ask for a step that exceeds the remaining amount: at least the
    /// difference, more by policy (claims 5 and 6), and never over the configured maximum
    /// unless the difference itself is.
    fn top_up_amount(&self, process: &ProcessRow, step_amount: Minor) -> Minor {
        let difference = step_amount - process.remaining;
        let currency = process.currency();
        let by_policy = match process.top_up_policy() {
            TopUpPolicyKind::Difference | TopUpPolicyKind::None => difference,
            TopUpPolicyKind::Original => process.release_requested,
            TopUpPolicyKind::Multiple => {
                let factor: Decimal = process.top_up_factor.parse().unwrap_or(Decimal::ONE);
                // A fractional factor can land between minor units; asking for the next
                // whole unit up keeps "at least" true without inventing precision.
                let product = (Decimal::from(step_amount) * factor).ceil();
                i64::try_from(product).unwrap_or(Minor::MAX)
            }
        };
        let max_minor = (self.settings.limits.max_amount
            * Decimal::from(10_i64.pow(currency.exponent())))
        .trunc();
        let max_minor = i64::try_from(max_minor).unwrap_or(Minor::MAX);
        by_policy.min(max_minor).max(difference)
    }

    /// Charges an inserted step of a locked process that fits its remaining amount: hold to
    /// retailer in the ledger, the process's remaining amount down, an execution message to
    /// the retailer (claims 1, 4) and a receipt to the customer (claim 15).
    pub(super) async fn charge(
        &self,
        txn: &mut Txn<'_>,
        process: &mut ProcessRow,
        (retailer, customer): (&RetailerRow, &CustomerRow),
        step: &StepRow,
    ) -> Result<StepRow, EngineError> {
        let now_ms = txn.now_ms;
        self.post(
            txn.conn,
            txn.effects,
            Transfer {
                kind: TransferKind::Step,
                currency: process.currency(),
                debit: (AccountKind::ProcessHold, &process.id),
                credit: (AccountKind::RetailerReceivable, &retailer.id),
                amount: step.amount,
                process_id: Some(&process.id),
                step_id: Some(&step.id),
                reference: step.reference.as_deref(),
                now_ms,
            },
        )
        .await?;
        // The guard repeats the ledger's: the remaining amount is never negative, and the
        // database's CHECK says so a third time. A charge is activity, so the same statement
        // moves the inactivity expiry (what `touch` does).
        // The count is set, not added to: a step inserted as charged left it to this UPDATE,
        // and the process row is locked, so the count in hand is the count.
        let updated = sqlx::query(
            "UPDATE processes SET charged = charged + $1, remaining = remaining - $1, updated_at_ms = $2, \
             expires_at_ms = $3, pre_expiry_notified = 0, step_count = $4 WHERE id = $5 AND remaining >= $1",
        )
        .bind(step.amount)
        .bind(now_ms)
        .bind(now_ms + process.inactivity_s * 1000)
        .bind(process.step_count)
        .bind(&process.id)
        .execute(&mut *txn.conn)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(EngineError::Invariant(
                "a charge exceeded the remaining amount".into(),
            ));
        }
        process.charged += step.amount;
        process.remaining -= step.amount;
        // A step inserted as charged is written already; one that waited is charged now.
        if step.status != "charged" {
            sqlx::query(
                "UPDATE steps SET status = 'charged', remaining_after = $1, updated_at_ms = $2 \
                 WHERE id = $3 AND status = 'awaiting_confirmation'",
            )
            .bind(process.remaining)
            .bind(now_ms)
            .bind(&step.id)
            .execute(&mut *txn.conn)
            .await?;
        }
        let step = StepRow {
            status: "charged".to_string(),
            remaining_after: Some(process.remaining),
            updated_at_ms: now_ms,
            ..step.clone()
        };
        let effects = &mut *txn.effects;
        effects.event(
            retailer,
            &process.id,
            "step.charged",
            StepView::from_row(&step, process),
        );
        let currency = process.currency();
        let (amount, remaining) = (
            currency.format(step.amount),
            currency.format(process.remaining),
        );
        let facts = text_facts(retailer, process);
        effects.message_retailer(
            retailer,
            MessageKind::ExecutionMessage,
            (&facts, &process.id),
            Text::Charged {
                amount: &amount,
                remaining: &remaining,
            },
        );
        // Services that charge many tiny steps send one summary receipt instead (claim 15).
        if !retailer.summary_receipts() {
            effects.message_customer(
                customer,
                process.requested_channel(),
                MessageKind::Receipt,
                (&facts, &retailer.id, &process.id),
                Text::StepReceipt {
                    amount: &amount,
                    remaining: &remaining,
                },
                None,
            );
        }
        Ok(step)
    }

    /// Marks activity: an active process expires after its inactivity period from now.
    pub(super) async fn touch(
        &self,
        conn: &mut AnyConnection,
        process: &ProcessRow,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let expires_at_ms = now_ms + process.inactivity_s * 1000;
        sqlx::query(
            "UPDATE processes SET updated_at_ms = $1, expires_at_ms = $2, pre_expiry_notified = 0 \
             WHERE id = $3",
        )
        .bind(now_ms)
        .bind(expires_at_ms)
        .bind(&process.id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub(super) async fn process_customer(
        &self,
        conn: &mut AnyConnection,
        process: &ProcessRow,
    ) -> Result<CustomerRow, EngineError> {
        let customer_id = process
            .customer_id
            .as_deref()
            .ok_or(EngineError::Invariant(
                "an active process without a customer".into(),
            ))?;
        rows::load_customer(conn, customer_id)
            .await?
            .ok_or(EngineError::Invariant(
                "a process's customer vanished".into(),
            ))
    }
}

pub(super) async fn reload_step(
    conn: &mut AnyConnection,
    step_id: &str,
) -> Result<StepRow, EngineError> {
    rows::load_step(conn, step_id)
        .await?
        .ok_or(EngineError::Invariant(
            "a step vanished in its own transaction".into(),
        ))
}
