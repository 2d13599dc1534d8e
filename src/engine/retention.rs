//! Retention: what is no longer needed is deleted after its configured age, by the sweeper,
//! in bounded batches, each in a short transaction of its own. Ledger transfers and events
//! are never deleted: they are the books and the retailers' feed.

use sqlx::AnyConnection;

use super::{Engine, EngineError};

/// One kind of row that ages out: the statements that delete one batch of it, in order, in
/// one transaction. Each statement binds `$1` (the cut-off time) and `$2` (the batch size)
/// and selects the same batch (the order has a unique tie-break, and rows past the cut-off
/// never change), so dependent rows go first.
struct Prune {
    what: &'static str,
    statements: &'static [&'static str],
}

/// Saved answers to Idempotency-Keys.
const IDEMPOTENCY_KEYS: Prune = Prune {
    what: "idempotency keys",
    statements: &["DELETE FROM idempotency_keys WHERE (scope, key) IN \
         (SELECT scope, key FROM idempotency_keys WHERE created_at_ms < $1 \
          ORDER BY created_at_ms, scope, key LIMIT $2)"],
};

/// The batch of delivered messages every statement of `DELIVERED_MESSAGES` selects.
macro_rules! delivered_batch {
    () => {
        "SELECT id FROM outbox WHERE status = 'delivered' \
         AND delivered_at_ms < $1 ORDER BY delivered_at_ms, id LIMIT $2"
    };
}

/// Delivered messages, with the peers' ids and delivery receipts that point at them.
const DELIVERED_MESSAGES: Prune = Prune {
    what: "delivered messages",
    statements: &[
        concat!(
            "DELETE FROM delivery_receipts WHERE (channel, remote_id) IN \
             (SELECT channel, remote_id FROM outbox_remote_ids WHERE outbox_id IN (",
            delivered_batch!(),
            "))"
        ),
        concat!(
            "DELETE FROM outbox_remote_ids WHERE outbox_id IN (",
            delivered_batch!(),
            ")"
        ),
        concat!("DELETE FROM outbox WHERE id IN (", delivered_batch!(), ")"),
    ],
};

/// Answered or expired confirmation requests. Their PIN tries stay until their own age,
/// no longer pointing at the request.
const RESOLVED_CONFIRMATIONS: Prune = Prune {
    what: "resolved confirmation requests",
    statements: &[
        "UPDATE pin_attempts SET confirmation_id = NULL WHERE confirmation_id IN \
         (SELECT id FROM confirmations WHERE status <> 'pending' AND resolved_at_ms < $1 \
          ORDER BY resolved_at_ms, id LIMIT $2)",
        "DELETE FROM confirmations WHERE id IN \
         (SELECT id FROM confirmations WHERE status <> 'pending' AND resolved_at_ms < $1 \
          ORDER BY resolved_at_ms, id LIMIT $2)",
    ],
};

/// The log of PIN tries.
const PIN_ATTEMPTS: Prune = Prune {
    what: "PIN attempts",
    statements: &["DELETE FROM pin_attempts WHERE id IN \
         (SELECT id FROM pin_attempts WHERE created_at_ms < $1 \
          ORDER BY created_at_ms, id LIMIT $2)"],
};

/// Delivery receipts that never found their message (the rest go with it).
const UNMATCHED_RECEIPTS: Prune = Prune {
    what: "delivery receipts",
    statements: &[
        "DELETE FROM delivery_receipts WHERE (channel, remote_id) IN \
         (SELECT channel, remote_id FROM delivery_receipts WHERE received_at_ms < $1 \
          ORDER BY received_at_ms, channel, remote_id LIMIT $2)",
    ],
};

impl Engine {
    /// Deletes one batch of each kind of row past its retention. Returns how many rows
    /// went; the sweeper comes again at once while that is non-zero.
    pub async fn prune_due(&self) -> Result<u64, EngineError> {
        let retention = &self.settings.retention;
        let now_ms = self.now_ms();
        let ages_s = [
            (&IDEMPOTENCY_KEYS, retention.idempotency_keys_s),
            (&DELIVERED_MESSAGES, retention.delivered_outbox_s),
            (&RESOLVED_CONFIRMATIONS, retention.confirmations_s),
            (&PIN_ATTEMPTS, retention.pin_attempts_s),
            (&UNMATCHED_RECEIPTS, retention.delivered_outbox_s),
        ];
        let mut pruned = 0;
        for (prune, age_s) in ages_s {
            let cutoff_ms = now_ms - age_s * 1000;
            let mut tx = self.store.begin_write().await?;
            let deleted = run(&mut tx, prune, cutoff_ms, retention.batch_size).await?;
            tx.commit().await?;
            if deleted > 0 {
                tracing::info!(
                    what = prune.what,
                    deleted,
                    "Pruned rows past their retention"
                );
            }
            pruned += deleted;
        }
        Ok(pruned)
    }
}

/// Runs a prune's statements; what the last one deleted is the batch's size.
async fn run(
    conn: &mut AnyConnection,
    prune: &Prune,
    cutoff_ms: i64,
    batch_size: i64,
) -> Result<u64, EngineError> {
    let mut deleted = 0;
    for statement in prune.statements {
        deleted = sqlx::query(statement)
            .bind(cutoff_ms)
            .bind(batch_size)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(deleted)
}
