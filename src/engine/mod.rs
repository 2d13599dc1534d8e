//! The engine: every state change of processes, steps, confirmation requests and money.
//!
//! Each operation runs inside one database transaction that the caller owns, locks the
//! process row first, moves money only through the ledger, and writes its events and
//! outbound messages in the same transaction (see `effects`).

mod confirm;
mod effects;
mod expiry;
mod inbound;
mod operator;
mod pin;
mod process;
mod retention;
pub mod rows;
mod step;
pub mod texts;
mod txn;
pub mod views;
mod voice;

use std::sync::Arc;

use paystep_channel_core::ChannelName;
use sha2::{Digest, Sha256};

pub use confirm::{Answer, AnswerOutcome, ConfirmationPage};
pub use effects::{event_json, ChannelAvailability};
pub use inbound::{CoreInbound, TillClaim};
pub use operator::{CustomerSummary, NewCustomer, NewRetailer, RetailerCredentials};
pub use pin::VerifiedPin;
pub use process::{CustomerRef, NewProcess, TopUpPolicy};
pub use step::{NewStep, StepOutcome};
pub use voice::{CallBinding, VoiceCall};

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::domain::FieldError;
use crate::ledger::LedgerError;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no customer matches the given identifier")]
    CustomerNotFound,
    #[error("the process is {status}, not active")]
    ProcessNotActive { status: String },
    #[error("a top-up is being asked of the customer; only steps that fit the remaining amount are charged until it is answered")]
    TopUpPending,
    #[error("the process has reached its maximum of {0} steps")]
    StepLimitReached(i64),
    #[error("cannot reach the customer on {channel}: {reason}")]
    ChannelUnavailable {
        channel: ChannelName,
        reason: &'static str,
    },
    #[error("no free process code; try again")]
    CodeSpaceExhausted,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{field}: {error}")]
    InvalidAmount {
        field: &'static str,
        error: crate::domain::MoneyError,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The store refused or lost the write (queue full, batch not committed, outcome
    /// unknown): the API answers each as the store's own error, retriable or not.
    #[error("{0}")]
    Store(crate::store::StoreError),
    #[error("internal invariant broken: {0}")]
    Invariant(String),
}

impl From<LedgerError> for EngineError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Database(error) => EngineError::Database(error),
            // Callers that expect a shortfall handle it before converting; anywhere else a
            // shortfall means the books disagree with the process state.
            LedgerError::InsufficientFunds => {
                EngineError::Invariant("an account had less than the process state says".into())
            }
        }
    }
}

impl From<crate::store::StoreError> for EngineError {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::Database(error) => EngineError::Database(error),
            other => EngineError::Store(other),
        }
    }
}

pub struct Engine {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub clock: SharedClock,
    pub channels: ChannelAvailability,
    /// Bounds the argon2id hashes running at once: each takes tens of milliseconds and
    /// 19 MiB, and guesses must not be able to take the machine.
    pub(crate) pin_hashing: pin::HashingSlots,
    /// Every transfer is posted here (it remembers account ids).
    pub(crate) ledger: crate::ledger::Ledger,
}

impl Engine {
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        clock: SharedClock,
        channels: ChannelAvailability,
    ) -> Engine {
        Engine {
            store,
            settings,
            clock,
            channels,
            pin_hashing: pin::HashingSlots::for_this_machine(),
            ledger: crate::ledger::Ledger::default(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Posts a transfer and records it, with both balances, for the audit log.
    pub(crate) async fn post(
        &self,
        conn: &mut sqlx::AnyConnection,
        effects: &mut effects::Effects,
        transfer: crate::ledger::Transfer<'_>,
    ) -> Result<(), LedgerError> {
        let posted = self.ledger.post(conn, transfer).await?;
        effects.audit_transfer(&transfer, posted);
        Ok(())
    }
}

/// A random secret for URLs and API keys: 32 bytes, URL-safe base64.
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A webhook signing secret as Standard Webhooks has it: `whsec_` and standard base64
/// (receivers' libraries decode it with the standard alphabet).
pub fn webhook_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Secrets with 256 bits of entropy are stored as their SHA-256: a slow hash would add
/// nothing but latency to every request.
pub fn secret_hash(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}
