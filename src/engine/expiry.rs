//! Expiry: confirmation requests nobody answered, and processes nobody used.

use super::confirm::{lock_confirmation, Resolution, Settles};
use super::effects::Effects;
use super::process::text_facts;
use super::rows;
use super::texts::{Ended, Text};
use super::txn::Txn;
use super::views::ProcessView;
use super::{Engine, EngineError};
use crate::audit::Origin;
use paystep_channel_core::MessageKind;

impl Engine {
    /// Expires what is due, at most `engine.sweep_batch_size` of each kind, each in its own
    /// transaction. Returns how many it expired; the sweeper loops while that is non-zero.
    pub async fn expire_due(&self) -> Result<usize, EngineError> {
        let now_ms = self.now_ms();
        let batch = self.settings.engine.sweep_batch_size;
        let confirmation_ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM confirmations WHERE status = 'pending' AND expires_at_ms <= $1 \
             ORDER BY expires_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(batch)
        .fetch_all(self.store.reader())
        .await?;
        let mut expired = 0;
        for confirmation_id in confirmation_ids {
            if self.expire_confirmation(&confirmation_id, now_ms).await? {
                expired += 1;
            }
        }
        let process_ids: Vec<String> = sqlx::query_scalar(
            "SELECT p.id FROM processes p WHERE p.status IN ('awaiting_confirmation', 'active') \
             AND p.expires_at_ms <= $1 AND NOT EXISTS \
             (SELECT 1 FROM confirmations c WHERE c.process_id = p.id AND c.status = 'pending') \
             ORDER BY p.expires_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(batch)
        .fetch_all(self.store.reader())
        .await?;
        for process_id in process_ids {
            if self.expire_process(&process_id, now_ms).await? {
                expired += 1;
            }
        }
        Ok(expired + self.announce_expiry(now_ms, batch).await?)
    }

    /// Tells retailers which releases will expire within `engine.pre_expiry_notice_s` if no
    /// step comes, once per quiet period (any activity clears the mark). Processes whose
    /// inactivity period is not more than twice the notice get none: for them a notice would
    /// follow every step and say nothing.
    async fn announce_expiry(&self, now_ms: i64, batch: i64) -> Result<usize, EngineError> {
        let notice_ms = self.settings.engine.pre_expiry_notice_s * 1000;
        if notice_ms == 0 {
            return Ok(0);
        }
        let process_ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM processes WHERE status = 'active' AND pre_expiry_notified = 0 \
             AND expires_at_ms > $1 AND expires_at_ms <= $2 AND inactivity_s * 1000 > 2 * $4 \
             ORDER BY expires_at_ms LIMIT $3",
        )
        .bind(now_ms)
        .bind(now_ms + notice_ms)
        .bind(batch)
        .bind(notice_ms)
        .fetch_all(self.store.reader())
        .await?;
        let mut announced = 0;
        for process_id in process_ids {
            let mut tx = self.store.begin_write().await?;
            let Some(process) = rows::lock_process(&mut tx, &process_id).await? else {
                continue;
            };
            let due = process.status() == crate::domain::ProcessStatus::Active
                && process.expires_at_ms > now_ms
                && process.expires_at_ms <= now_ms + notice_ms
                && !process.pre_expiry_notified();
            if !due {
                continue;
            }
            let retailer = rows::load_retailer(&mut tx, &process.retailer_id)
                .await?
                .ok_or(EngineError::NotFound("retailer"))?;
            sqlx::query("UPDATE processes SET pre_expiry_notified = 1 WHERE id = $1")
                .bind(&process.id)
                .execute(&mut *tx)
                .await?;
            let mut effects = Effects::new(Origin::system("sweeper"));
            effects.event(
                &retailer,
                &process.id,
                "process.expiring",
                ProcessView::from_row(&process),
            );
            let remaining = process.currency().format(process.remaining);
            let expires_at = crate::clock::format_ms(process.expires_at_ms);
            effects.message_retailer(
                &retailer,
                MessageKind::Notice,
                (&text_facts(&retailer, &process), &process.id),
                Text::ExpiringSoon {
                    remaining: &remaining,
                    expires_at: &expires_at,
                },
            );
            effects.flush(&mut tx, &self.channels, now_ms).await?;
            tx.commit().await?;
            announced += 1;
        }
        Ok(announced)
    }

    async fn expire_confirmation(
        &self,
        confirmation_id: &str,
        now_ms: i64,
    ) -> Result<bool, EngineError> {
        let mut tx = self.store.begin_write().await?;
        let Some((mut process, confirmation)) = lock_confirmation(&mut tx, confirmation_id).await?
        else {
            return Ok(false);
        };
        if !rows::is_pending(&confirmation) || confirmation.expires_at_ms > now_ms {
            return Ok(false);
        }
        let retailer = rows::load_retailer(&mut tx, &process.retailer_id)
            .await?
            .ok_or(EngineError::NotFound("retailer"))?;
        let mut effects = Effects::new(Origin::system("sweeper"));
        let mut txn = Txn {
            conn: &mut tx,
            now_ms,
            effects: &mut effects,
        };
        let settles = Settles {
            confirmation: &confirmation,
            resolution: Resolution::Expired,
            ends_process: true,
        };
        self.resolve_unapproved(&mut txn, &mut process, &retailer, settles)
            .await?;
        effects.flush(&mut tx, &self.channels, now_ms).await?;
        tx.commit().await?;
        tracing::info!(confirmation_id, process_id = %process.id, "Confirmation request expired");
        Ok(true)
    }

    async fn expire_process(&self, process_id: &str, now_ms: i64) -> Result<bool, EngineError> {
        let mut tx = self.store.begin_write().await?;
        let Some(mut process) = rows::lock_process(&mut tx, process_id).await? else {
            return Ok(false);
        };
        let due = rows::is_open(process.status())
            && process.expires_at_ms <= now_ms
            && rows::pending_confirmation(&mut tx, process_id)
                .await?
                .is_none();
        if !due {
            return Ok(false);
        }
        let retailer = rows::load_retailer(&mut tx, &process.retailer_id)
            .await?
            .ok_or(EngineError::NotFound("retailer"))?;
        let mut effects = Effects::new(Origin::system("sweeper"));
        self.end_process(
            &mut tx,
            &mut process,
            &retailer,
            Ended::Expired,
            now_ms,
            &mut effects,
        )
        .await?;
        effects.flush(&mut tx, &self.channels, now_ms).await?;
        tx.commit().await?;
        tracing::info!(process_id, "Process expired after inactivity");
        Ok(true)
    }
}
