//! Opening and closing processes.

use paystep_channel_core::{ChannelName, MessageKind};
use rust_decimal::Decimal;
use sqlx::AnyConnection;

use super::effects::{Effects, Link};
use super::rows::{self, CustomerKey, CustomerRow, ProcessRow, RetailerRow};
use super::texts::{Ended, Text, TextFacts};
use super::txn::Txn;
use super::views::ProcessView;
use super::{random_secret, secret_hash, Engine, EngineError};
use crate::audit::Origin;
use crate::domain::{
    ConfirmationKind, Currency, Email, Minor, Msisdn, ProcessCode, ProcessStatus, TopUpPolicyKind,
};
use crate::ledger::{AccountKind, Transfer, TransferKind};

/// How the retailer names the customer.
#[derive(Debug, Clone)]
pub enum CustomerRef {
    Id(String),
    Msisdn(Msisdn),
    Email(Email),
}

#[derive(Debug, Clone)]
pub struct TopUpPolicy {
    pub kind: TopUpPolicyKind,
    pub factor: Decimal,
}

/// A validated request to open a process.
#[derive(Debug, Clone)]
pub struct NewProcess {
    pub customer: Option<CustomerRef>,
    pub currency: Currency,
    pub release: Minor,
    pub charge: Option<Minor>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub channel: Option<ChannelName>,
    pub top_up: TopUpPolicy,
    pub inactivity_s: i64,
}

/// The number of random codes tried before giving up; with a million codes and far fewer
/// open processes, needing more than a few means the code space is nearly full.
const CODE_ATTEMPTS_MAX: usize = 20;

pub fn text_facts<'a>(retailer: &'a RetailerRow, process: &'a ProcessRow) -> TextFacts<'a> {
    TextFacts {
        retailer: &retailer.name,
        context: process.context(),
        code: &process.code,
        currency: &process.currency,
        description: process.description.as_deref(),
        reference: process.reference.as_deref(),
    }
}

/// How a new step starts.
#[derive(Clone, Copy)]
pub(super) enum StepStart<'a> {
    /// Waiting for a top-up (or for the process's first release).
    Waiting,
    Declined(&'a str),
    /// Fits the remaining amount: `charge` follows in the same transaction.
    Charged,
}

/// What a confirmation request asks of the customer: to release `amount`, first or as a
/// top-up, for the step it waits on (if any).
pub(super) struct Question<'a> {
    pub kind: ConfirmationKind,
    pub amount: Minor,
    pub step_id: Option<&'a str>,
}

impl Engine {
    pub async fn create_process(
        &self,
        conn: &mut AnyConnection,
        retailer: &RetailerRow,
        request: NewProcess,
    ) -> Result<ProcessView, EngineError> {
        let now_ms = self.now_ms();
        let customer = match &request.customer {
            None => None,
            Some(reference) => {
                let (key, value) = match reference {
                    CustomerRef::Id(id) => (CustomerKey::Id, id.as_str()),
                    CustomerRef::Msisdn(msisdn) => (CustomerKey::Msisdn, msisdn.as_str()),
                    CustomerRef::Email(email) => (CustomerKey::Email, email.as_str()),
                };
                let customer = rows::find_customer(conn, key, value)
                    .await?
                    .ok_or(EngineError::CustomerNotFound)?;
                self.channels.check_customer(&customer, request.channel)?;
                Some(customer)
            }
        };
        let process_id = uuid::Uuid::new_v4().to_string();
        let expires_at_ms = now_ms + self.settings.engine.confirmation_ttl_s * 1000;
        // A code free when looked at may be taken by a concurrent open that commits first
        // (PostgreSQL): the insert then does nothing, and another code is tried.
        let mut inserted = false;
        for _ in 0..CODE_ATTEMPTS_MAX {
            let code = self.free_code(conn).await?;
            inserted = sqlx::query(
                "INSERT INTO processes (id, code, retailer_id, customer_id, status, currency, \
                 release_requested, description, reference, channel, top_up_policy, top_up_factor, \
                 inactivity_s, created_at_ms, updated_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, 'awaiting_confirmation', $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14) \
                 ON CONFLICT (code) WHERE status IN ('awaiting_confirmation', 'active') DO NOTHING",
            )
            .bind(&process_id)
            .bind(code.as_str())
            .bind(&retailer.id)
            .bind(customer.as_ref().map(|customer| customer.id.as_str()))
            .bind(request.currency.code())
            .bind(request.release)
            .bind(request.description.as_deref())
            .bind(request.reference.as_deref())
            .bind(request.channel.map(|channel| channel.as_str()))
            .bind(request.top_up.kind.as_str())
            .bind(request.top_up.factor.normalize().to_string())
            .bind(request.inactivity_s)
            .bind(now_ms)
            .bind(expires_at_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                break;
            }
        }
        if !inserted {
            return Err(EngineError::CodeSpaceExhausted);
        }
        let mut process =
            rows::load_process(conn, &process_id)
                .await?
                .ok_or(EngineError::Invariant(
                    "a process vanished in its own transaction".into(),
                ))?;
        let first_step = match request.charge {
            Some(amount) => Some(
                self.insert_step(
                    conn,
                    &mut process,
                    (amount, StepStart::Waiting),
                    (None, None),
                    now_ms,
                )
                .await?,
            ),
            None => None,
        };
        let mut effects = Effects::new(Origin::retailer(&retailer.id));
        let view = ProcessView::from_row(&process);
        effects.event(retailer, &process.id, "process.created", &view);
        if let Some(step) = &first_step {
            effects.event(
                retailer,
                &process.id,
                "step.awaiting_confirmation",
                super::views::StepView::from_row(step, &process),
            );
        }
        let facts = text_facts(retailer, &process);
        let amount = request.currency.format(request.release);
        effects.message_retailer(
            retailer,
            MessageKind::IdentifierNotification,
            (&facts, &process.id),
            Text::IdentifierNotification {
                process_id: &process.id,
                amount: &amount,
            },
        );
        if let Some(customer) = &customer {
            let (token, url) = self.new_link();
            let question = Question {
                kind: ConfirmationKind::Initial,
                amount: request.release,
                step_id: first_step.as_ref().map(|step| step.id.as_str()),
            };
            let mut txn = Txn {
                conn: &mut *conn,
                now_ms,
                effects: &mut effects,
            };
            self.ask_customer(
                &mut txn,
                (&process, customer),
                question,
                (
                    &token,
                    &url,
                    Text::ConfirmationRequest {
                        amount: &amount,
                        url: &url,
                    },
                ),
                &facts,
            )
            .await?;
        }
        effects.flush(conn, &self.channels, now_ms).await?;
        Ok(view)
    }

    /// Picks a random code that no open process has.
    async fn free_code(&self, conn: &mut AnyConnection) -> Result<ProcessCode, EngineError> {
        for _ in 0..CODE_ATTEMPTS_MAX {
            let code = ProcessCode::random();
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT id FROM processes WHERE code = $1 AND status IN ('awaiting_confirmation', 'active')",
            )
            .bind(code.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            if taken.is_none() {
                return Ok(code);
            }
        }
        Err(EngineError::CodeSpaceExhausted)
    }

    /// Inserts the next step of a locked process as `start` says. A waiting or declined step
    /// counts itself in the process row; a charged one leaves that to `charge`, whose one
    /// UPDATE of the process sets the count with the amounts.
    pub(super) async fn insert_step(
        &self,
        conn: &mut AnyConnection,
        process: &mut ProcessRow,
        (amount, start): (Minor, StepStart<'_>),
        (description, reference): (Option<&str>, Option<&str>),
        now_ms: i64,
    ) -> Result<rows::StepRow, EngineError> {
        let (status, decline_reason, remaining_after) = match start {
            StepStart::Waiting => ("awaiting_confirmation", None, process.remaining),
            StepStart::Declined(reason) => ("declined", Some(reason), process.remaining),
            StepStart::Charged => ("charged", None, process.remaining - amount),
        };
        let step_id = uuid::Uuid::new_v4().to_string();
        let number = process.step_count + 1;
        sqlx::query(
            "INSERT INTO steps (id, process_id, number, amount, status, remaining_after, description, \
             reference, decline_reason, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(&step_id)
        .bind(&process.id)
        .bind(number)
        .bind(amount)
        .bind(status)
        .bind(remaining_after)
        .bind(description)
        .bind(reference)
        .bind(decline_reason)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        if !matches!(start, StepStart::Charged) {
            sqlx::query(
                "UPDATE processes SET step_count = step_count + 1, updated_at_ms = $1 WHERE id = $2",
            )
            .bind(now_ms)
            .bind(&process.id)
            .execute(&mut *conn)
            .await?;
        }
        process.step_count = number;
        process.updated_at_ms = now_ms;
        // The row as written: reading it back would be one more statement on every step.
        Ok(rows::StepRow {
            id: step_id,
            process_id: process.id.clone(),
            number,
            amount,
            status: status.to_string(),
            remaining_after: Some(remaining_after),
            description: description.map(str::to_string),
            reference: reference.map(str::to_string),
            decline_reason: decline_reason.map(str::to_string),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        })
    }

    /// A new confirmation token and the link to its page.
    pub(super) fn new_link(&self) -> (String, String) {
        let token = random_secret();
        let url = format!("{}/c/{token}", self.settings.http.public_url);
        (token, url)
    }

    /// Creates a confirmation request and queues its message with the link to its page.
    pub(super) async fn ask_customer(
        &self,
        txn: &mut Txn<'_>,
        (process, customer): (&ProcessRow, &CustomerRow),
        question: Question<'_>,
        (token, url, text): (&str, &str, Text<'_>),
        facts: &TextFacts<'_>,
    ) -> Result<(), EngineError> {
        let Question {
            kind,
            amount,
            step_id,
        } = question;
        let (_, expires_at_ms) = self
            .insert_confirmation(
                txn.conn,
                &process.id,
                (kind, amount),
                step_id,
                token,
                txn.now_ms,
            )
            .await?;
        txn.effects.message_customer(
            customer,
            process.requested_channel(),
            MessageKind::ConfirmationRequest,
            (facts, &process.retailer_id, &process.id),
            text,
            Some(Link {
                url: url.to_string(),
                expires_at_ms,
            }),
        );
        Ok(())
    }

    /// Inserts a pending confirmation request behind `token`; returns its id.
    pub(super) async fn insert_confirmation(
        &self,
        conn: &mut AnyConnection,
        process_id: &str,
        (kind, amount): (ConfirmationKind, Minor),
        step_id: Option<&str>,
        token: &str,
        now_ms: i64,
    ) -> Result<(String, i64), EngineError> {
        let id = uuid::Uuid::new_v4().to_string();
        let expires_at_ms = now_ms + self.settings.engine.confirmation_ttl_s * 1000;
        sqlx::query(
            "INSERT INTO confirmations (id, process_id, step_id, kind, amount, token_hash, status, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
        )
        .bind(&id)
        .bind(process_id)
        .bind(step_id)
        .bind(kind.as_str())
        .bind(amount)
        .bind(secret_hash(token))
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&mut *conn)
        .await?;
        Ok((id, expires_at_ms))
    }

    /// Closes an open process for its retailer, returning the unused release.
    pub async fn close_process(
        &self,
        conn: &mut AnyConnection,
        retailer: &RetailerRow,
        process_id: &str,
    ) -> Result<ProcessView, EngineError> {
        let now_ms = self.now_ms();
        let mut process = rows::lock_process(conn, process_id)
            .await?
            .filter(|process| process.retailer_id == retailer.id)
            .ok_or(EngineError::NotFound("process"))?;
        if !rows::is_open(process.status()) {
            return Err(EngineError::ProcessNotActive {
                status: process.status.clone(),
            });
        }
        let mut effects = Effects::new(Origin::retailer(&retailer.id));
        self.end_process(
            conn,
            &mut process,
            retailer,
            Ended::Closed,
            now_ms,
            &mut effects,
        )
        .await?;
        effects.flush(conn, &self.channels, now_ms).await?;
        Ok(ProcessView::from_row(&process))
    }

    /// Ends an open process: answers a pending question, returns the rest of the hold to
    /// the customer, and tells both sides.
    pub(super) async fn end_process(
        &self,
        conn: &mut AnyConnection,
        process: &mut ProcessRow,
        retailer: &RetailerRow,
        ended: Ended,
        now_ms: i64,
        effects: &mut Effects,
    ) -> Result<(), EngineError> {
        if let Some(pending) = rows::pending_confirmation(conn, &process.id).await? {
            let resolution = match ended {
                Ended::Closed => super::confirm::Resolution::Declined("process_closed"),
                Ended::Expired => super::confirm::Resolution::Expired,
            };
            let mut txn = Txn {
                conn: &mut *conn,
                now_ms,
                effects: &mut *effects,
            };
            let settles = super::confirm::Settles {
                confirmation: &pending,
                resolution,
                ends_process: false,
            };
            self.resolve_unapproved(&mut txn, process, retailer, settles)
                .await?;
        }
        let returned = process.remaining;
        if returned > 0 {
            let customer_id = process
                .customer_id
                .clone()
                .ok_or(EngineError::Invariant("a hold without a customer".into()))?;
            self.post(
                conn,
                effects,
                Transfer {
                    kind: TransferKind::Return,
                    currency: process.currency(),
                    debit: (AccountKind::ProcessHold, &process.id),
                    credit: (AccountKind::CustomerCredit, &customer_id),
                    amount: returned,
                    process_id: Some(&process.id),
                    step_id: None,
                    reference: None,
                    now_ms,
                },
            )
            .await?;
        }
        let status = match ended {
            Ended::Closed => ProcessStatus::Closed,
            Ended::Expired => ProcessStatus::Expired,
        };
        sqlx::query(
            "UPDATE processes SET status = $1, remaining = remaining - $2, returned = returned + $2, \
             updated_at_ms = $3 WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(returned)
        .bind(now_ms)
        .bind(&process.id)
        .execute(&mut *conn)
        .await?;
        *process = rows::load_process(conn, &process.id)
            .await?
            .ok_or(EngineError::Invariant(
                "a process vanished in its own transaction".into(),
            ))?;
        let view = ProcessView::from_row(process);
        let event = match ended {
            Ended::Closed => "process.closed",
            Ended::Expired => "process.expired",
        };
        effects.event(retailer, &process.id, event, &view);
        let currency = process.currency();
        let charged = currency.format(process.charged);
        let returned = currency.format(returned);
        let facts = text_facts(retailer, process);
        effects.message_retailer(
            retailer,
            MessageKind::Notice,
            (&facts, &process.id),
            Text::Ended {
                ended,
                charged: &charged,
                returned: &returned,
            },
        );
        if let Some(customer_id) = &process.customer_id {
            if let Some(customer) = rows::load_customer(conn, customer_id).await? {
                // For summary receipts, the closing message is the receipt of the whole process.
                let kind = if retailer.summary_receipts() {
                    MessageKind::Receipt
                } else {
                    MessageKind::Notice
                };
                effects.message_customer(
                    &customer,
                    process.requested_channel(),
                    kind,
                    (&facts, &retailer.id, &process.id),
                    Text::Ended {
                        ended,
                        charged: &charged,
                        returned: &returned,
                    },
                    None,
                );
            }
        }
        Ok(())
    }
}
