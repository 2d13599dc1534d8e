//! The objects the API shows and events carry.

use serde::Serialize;

use super::rows::{ProcessRow, StepRow};
use crate::clock::format_ms;
use crate::domain::{Email, Msisdn};

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub id: String,
    /// The same as `id`, under the name every event's `data` carries it.
    pub process_id: String,
    pub code: String,
    pub status: String,
    pub retailer_id: String,
    pub currency: String,
    pub release_requested: String,
    pub released: String,
    pub charged: String,
    pub remaining: String,
    pub returned: String,
    pub description: Option<String>,
    pub reference: Option<String>,
    /// Masked, so that a retailer learns no more than it already knew.
    pub customer: Option<String>,
    pub channel: Option<String>,
    pub top_up: TopUpView,
    pub steps: i64,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopUpView {
    pub policy: String,
    pub factor: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessContextView {
    pub description: Option<String>,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub id: String,
    pub process_id: String,
    pub retailer_id: String,
    /// The process's code.
    pub code: String,
    /// The process's context (claim 7); the step's own description and reference follow.
    pub process: ProcessContextView,
    pub number: i64,
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub remaining: Option<String>,
    pub description: Option<String>,
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl ProcessView {
    pub fn from_row(row: &ProcessRow) -> ProcessView {
        let currency = row.currency();
        let customer = row
            .customer_msisdn
            .as_deref()
            .and_then(|msisdn| Msisdn::parse(msisdn).ok())
            .map(|msisdn| msisdn.masked())
            .or_else(|| {
                row.customer_email
                    .as_deref()
                    .and_then(|email| Email::parse(email).ok())
                    .map(|email| email.masked())
            });
        let open = super::rows::is_open(row.status());
        ProcessView {
            id: row.id.clone(),
            process_id: row.id.clone(),
            code: row.code.clone(),
            status: row.status.clone(),
            retailer_id: row.retailer_id.clone(),
            currency: row.currency.clone(),
            release_requested: currency.format(row.release_requested),
            released: currency.format(row.released),
            charged: currency.format(row.charged),
            remaining: currency.format(row.remaining),
            returned: currency.format(row.returned),
            description: row.description.clone(),
            reference: row.reference.clone(),
            customer,
            channel: row.channel.clone(),
            top_up: TopUpView {
                policy: row.top_up_policy.clone(),
                factor: row.top_up_factor.clone(),
            },
            steps: row.step_count,
            created_at: format_ms(row.created_at_ms),
            updated_at: format_ms(row.updated_at_ms),
            expires_at: open.then(|| format_ms(row.expires_at_ms)),
            decline_reason: row.decline_reason.clone(),
        }
    }
}

impl StepView {
    pub fn from_row(row: &StepRow, process: &ProcessRow) -> StepView {
        let currency = process.currency();
        StepView {
            id: row.id.clone(),
            process_id: row.process_id.clone(),
            retailer_id: process.retailer_id.clone(),
            code: process.code.clone(),
            process: ProcessContextView {
                description: process.description.clone(),
                reference: process.reference.clone(),
            },
            number: row.number,
            amount: currency.format(row.amount),
            currency: process.currency.clone(),
            status: row.status.clone(),
            remaining: row
                .remaining_after
                .map(|remaining| currency.format(remaining)),
            description: row.description.clone(),
            reference: row.reference.clone(),
            decline_reason: row.decline_reason.clone(),
            created_at: format_ms(row.created_at_ms),
            updated_at: format_ms(row.updated_at_ms),
        }
    }
}
