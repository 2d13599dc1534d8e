//! PINs: argon2id hashing and verification off the async workers, and the customer's count
//! of wrong tries, kept by guarded statements so that concurrent guesses never get more tries.
//!
//! Verification is slow by design (tens of milliseconds). It runs on the blocking pool, and
//! callers run it before they open the write transaction (`Engine::verify_pin_ahead`), so a
//! guess never holds SQLite's only writer or a PostgreSQL row lock for the hash time. The
//! verdict is only a hint: what counts is decided in the transaction by
//! `count_wrong_pin` and `accept_pin`, whose `WHERE` refuses a customer who is locked out,
//! so a lock once set can never be cleared or skipped by a racing answer.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use paystep_channel_core::ChannelName;
use sqlx::AnyConnection;
use tokio::sync::Semaphore;

use super::rows::{ConfirmationRow, CustomerRow};
use super::txn::Txn;
use super::EngineError;
use crate::audit::Change;
use crate::domain::Pin;

/// A PIN checked against a customer's stored hash before the transaction began.
#[derive(Clone)]
pub struct VerifiedPin {
    pin: String,
    pin_hash: String,
    correct: bool,
}

// The PIN is a secret: never print it.
impl std::fmt::Debug for VerifiedPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPin")
            .field("pin", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl VerifiedPin {
    /// The verdict for `pin` against `pin_hash`, if this is what was verified.
    pub fn verdict_for(&self, pin: &str, pin_hash: &str) -> Option<bool> {
        (self.pin == pin && self.pin_hash == pin_hash).then_some(self.correct)
    }

    pub fn correct(&self) -> bool {
        self.correct
    }
}

/// How many argon2id hashes may run at once: one per core. More would only queue on the
/// cores and multiply the memory; fewer would leave a core idle.
#[derive(Clone)]
pub struct HashingSlots(Arc<Semaphore>);

impl HashingSlots {
    pub fn for_this_machine() -> HashingSlots {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        HashingSlots(Arc::new(Semaphore::new(cores)))
    }

    async fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, EngineError> {
        self.0
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EngineError::Invariant("the PIN hashing slots were closed".into()))
    }
}

/// Checks `pin` against `pin_hash` on the blocking pool, in one of the hashing slots.
pub async fn verify(
    slots: &HashingSlots,
    pin: &str,
    pin_hash: &str,
) -> Result<VerifiedPin, EngineError> {
    let (pin, pin_hash) = (pin.to_string(), pin_hash.to_string());
    let slot = slots.take().await?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let correct = Pin::parse(&pin).is_ok_and(|parsed| verify_blocking(&parsed, &pin_hash));
        VerifiedPin {
            pin,
            pin_hash,
            correct,
        }
    })
    .await
    .map_err(|error| EngineError::Invariant(format!("PIN verification panicked: {error}")))
}

fn verify_blocking(pin: &Pin, pin_hash: &str) -> bool {
    match PasswordHash::new(pin_hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(pin.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(error) => {
            tracing::error!(error = %error, "Stored PIN hash cannot be parsed");
            false
        }
    }
}

/// Hashes a new PIN with argon2id on the blocking pool, in one of the hashing slots.
pub async fn hash(slots: &HashingSlots, pin: &Pin) -> Result<String, EngineError> {
    let pin = pin.clone();
    let slot = slots.take().await?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(pin.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| EngineError::Invariant(format!("cannot hash a PIN: {error}")))
    })
    .await
    .map_err(|error| EngineError::Invariant(format!("PIN hashing panicked: {error}")))?
}

/// A wrong PIN as the database counted it.
pub enum WrongPinCount {
    /// Counted: the customer's failures in a row now, and the lock it set, if it did.
    Counted {
        failures_in_row: i64,
        locked_until_ms: Option<i64>,
    },
    /// Not counted: the customer was locked out (by a concurrent answer, perhaps).
    LockedOut { until_ms: i64 },
}

/// Counts a wrong PIN, unless the customer is locked out, in one guarded statement: N
/// concurrent wrong PINs count N, and the one that reaches `lockout_after` sets the lock.
/// The count is kept until a right PIN, so after a lockout ends every further wrong PIN
/// locks again at once.
pub async fn count_wrong_pin(
    conn: &mut AnyConnection,
    customer_id: &str,
    lockout_after: i64,
    lockout_ms: i64,
    now_ms: i64,
) -> Result<WrongPinCount, EngineError> {
    let counted: Option<(i64, Option<i64>)> = sqlx::query_as(
        "UPDATE customers SET pin_failures = pin_failures + 1, \
         pin_locked_until_ms = CASE WHEN pin_failures + 1 >= $2 THEN $3 ELSE NULL END \
         WHERE id = $1 AND (pin_locked_until_ms IS NULL OR pin_locked_until_ms <= $4) \
         RETURNING pin_failures, pin_locked_until_ms",
    )
    .bind(customer_id)
    .bind(lockout_after)
    .bind(now_ms + lockout_ms)
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await?;
    match counted {
        Some((failures_in_row, locked_until_ms)) => Ok(WrongPinCount::Counted {
            failures_in_row,
            locked_until_ms,
        }),
        None => Ok(WrongPinCount::LockedOut {
            until_ms: locked_until(conn, customer_id).await?.unwrap_or(now_ms),
        }),
    }
}

/// Takes a right PIN, unless the customer is locked out: `Ok(None)` when accepted, the end
/// of the lockout otherwise. A right PIN ends the series of wrong ones.
pub async fn accept_pin(
    conn: &mut AnyConnection,
    customer_id: &str,
    now_ms: i64,
) -> Result<Option<i64>, EngineError> {
    let accepted = sqlx::query(
        "UPDATE customers SET pin_failures = 0, pin_locked_until_ms = NULL \
         WHERE id = $1 AND (pin_locked_until_ms IS NULL OR pin_locked_until_ms <= $2)",
    )
    .bind(customer_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    if accepted.rows_affected() == 1 {
        return Ok(None);
    }
    Ok(Some(
        locked_until(conn, customer_id).await?.unwrap_or(now_ms),
    ))
}

async fn locked_until(
    conn: &mut AnyConnection,
    customer_id: &str,
) -> Result<Option<i64>, EngineError> {
    Ok(
        sqlx::query_scalar("SELECT pin_locked_until_ms FROM customers WHERE id = $1")
            .bind(customer_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The end of the customer's lockout, when it is locked out now.
pub fn lockout_end(customer: &CustomerRow, now_ms: i64) -> Option<i64> {
    customer
        .pin_locked_until_ms
        .filter(|until_ms| *until_ms > now_ms)
}

/// Every try is logged, accepted or not; with the request it answered while that is
/// pending (a resolved request may be pruned at any time).
pub(super) async fn log_attempt(
    txn: &mut Txn<'_>,
    customer: &CustomerRow,
    confirmation: Option<&ConfirmationRow>,
    channel: ChannelName,
    outcome: &str,
) -> Result<(), EngineError> {
    let (conn, now_ms) = (&mut *txn.conn, txn.now_ms);
    sqlx::query(
        "INSERT INTO pin_attempts (id, customer_id, confirmation_id, channel, outcome, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(&customer.id)
    .bind(confirmation.map(|confirmation| confirmation.id.as_str()))
    .bind(channel.as_str())
    .bind(outcome)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    // The count of wrong tries before and after this one; never the PIN.
    let failures_before = confirmation.map_or(0, |confirmation| confirmation.pin_failures);
    let failures_after = failures_before + i64::from(outcome == "wrong");
    txn.effects.audit(Change {
        action: format!("pin.{outcome}"),
        subject_kind: "customer".into(),
        subject_id: customer.id.clone(),
        before: serde_json::json!({
            "pin_failures": failures_before,
            "locked_until_ms": customer.pin_locked_until_ms,
        }),
        after: serde_json::json!({
            "outcome": outcome,
            "channel": channel.as_str(),
            "confirmation_id": confirmation.map(|confirmation| confirmation.id.as_str()),
            "pin_failures": failures_after,
        }),
    });
    Ok(())
}
