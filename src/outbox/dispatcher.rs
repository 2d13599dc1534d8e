//! Delivers queued outbox messages, one at a time per worker, with retries.
//!
//! A worker claims a message by pushing its next attempt time forward by a lease in one
//! guarded UPDATE; only the worker whose UPDATE matched owns it, so several daemons on one
//! database never deliver the same attempt twice. A worker that dies mid-delivery leaves the
//! lease to run out and another worker tries again: delivery is at least once, and each
//! message carries a stable id for peers to deduplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paystep_channels::{Channel, ChannelName, MessageKind, OutboundMessage, SendError};
use rand::Rng;
use sqlx::Row;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config::OutboxSettings;
use crate::store::{Store, StoreError};

/// Longest error text kept per message.
const ERROR_LENGTH_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionOutcome {
    NothingDue,
    Delivered,
    Retrying,
    DeadLettered,
}

pub struct Dispatcher {
    store: Store,
    channels: HashMap<ChannelName, Arc<dyn Channel>>,
    settings: OutboxSettings,
    clock: SharedClock,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        channels: HashMap<ChannelName, Arc<dyn Channel>>,
        settings: OutboxSettings,
        clock: SharedClock,
    ) -> Dispatcher {
        Dispatcher {
            store,
            channels,
            settings,
            clock,
        }
    }

    /// Claims the oldest due message and delivers it.
    pub async fn try_execute_one(&self) -> Result<ExecutionOutcome, StoreError> {
        let now_ms = self.clock.now_ms();
        // A message waits while an earlier one of the same process (or, for messages of no
        // process such as replies, an earlier one of no process) to the same address is still
        // queued, so each recipient sees them in order even when one needs retries: only the
        // head of each such queue is a candidate (found with the outbox_queued_order index).
        let candidates: Vec<i64> = sqlx::query_scalar(
            "SELECT o.position FROM outbox o JOIN \
               (SELECT MIN(position) AS position FROM outbox WHERE status = 'queued' \
                GROUP BY COALESCE(process_id, ''), channel, to_address) heads \
               ON heads.position = o.position \
             WHERE o.next_attempt_at_ms <= $1 \
             ORDER BY o.position LIMIT $2",
        )
        .bind(now_ms)
        .bind(self.settings.batch_size)
        .fetch_all(self.store.reader())
        .await?;
        for position in candidates {
            let mut tx = self.store.begin_write().await?;
            let claimed = sqlx::query(
                "UPDATE outbox SET next_attempt_at_ms = $1, attempts = attempts + 1 \
                 WHERE position = $2 AND status = 'queued' AND next_attempt_at_ms <= $3",
            )
            .bind(now_ms + self.settings.claim_lease_ms)
            .bind(position)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if claimed.rows_affected() == 1 {
                return self.deliver(position, now_ms).await;
            }
        }
        Ok(ExecutionOutcome::NothingDue)
    }

    async fn deliver(&self, position: i64, now_ms: i64) -> Result<ExecutionOutcome, StoreError> {
        let row = sqlx::query(
            "SELECT id, channel, intended_channel, kind, to_address, retailer_id, process_id, code, \
             description, reference, language, text, url, payload, attempts, queued_at_ms \
             FROM outbox WHERE position = $1",
        )
        .bind(position)
        .fetch_one(self.store.reader())
        .await?;
        let channel_name: String = row.try_get("channel")?;
        let attempts: i64 = row.try_get("attempts")?;
        let queued_at_ms: i64 = row.try_get("queued_at_ms")?;
        let message = OutboundMessage {
            id: row.try_get("id")?,
            channel: channel_name.parse().unwrap_or(ChannelName::Console),
            intended_channel: row
                .try_get::<String, _>("intended_channel")?
                .parse()
                .unwrap_or(ChannelName::Console),
            kind: row
                .try_get::<String, _>("kind")?
                .parse()
                .unwrap_or(MessageKind::Notice),
            to: row.try_get("to_address")?,
            retailer_id: row.try_get("retailer_id")?,
            process_id: row.try_get("process_id")?,
            code: row.try_get("code")?,
            description: row.try_get("description")?,
            reference: row.try_get("reference")?,
            language: row.try_get("language")?,
            text: row.try_get("text")?,
            url: row.try_get("url")?,
            payload: row
                .try_get::<Option<String>, _>("payload")?
                .and_then(|payload| serde_json::from_str(&payload).ok()),
            signing_secrets: Vec::new(),
        };
        let mut message = message;
        if message.channel == ChannelName::Webhook {
            message.signing_secrets = self
                .signing_secrets(message.retailer_id.as_deref(), now_ms)
                .await?;
        }
        let result = match self.channels.get(&message.channel) {
            Some(channel) => channel.send(&message).await,
            // Configuration may change between writing and delivering; wait for it.
            None => Err(SendError::Retriable(format!(
                "channel {channel_name} is not configured"
            ))),
        };
        let mut tx = self.store.begin_write().await?;
        let outcome = match result {
            Ok(delivery) => {
                // Each part's id, so that a delivery receipt finds its message.
                for remote_id in delivery.remote_id.iter().flat_map(|ids| ids.split(',')) {
                    sqlx::query(
                        "INSERT INTO outbox_remote_ids (remote_id, channel, outbox_id) VALUES ($1, $2, $3) \
                         ON CONFLICT (channel, remote_id) DO NOTHING",
                    )
                    .bind(remote_id)
                    .bind(&channel_name)
                    .bind(&message.id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "UPDATE outbox SET status = 'delivered', delivered_at_ms = $1, remote_id = $2, \
                     last_error = NULL WHERE position = $3",
                )
                .bind(now_ms)
                .bind(delivery.remote_id)
                .bind(position)
                .execute(&mut *tx)
                .await?;
                ExecutionOutcome::Delivered
            }
            Err(error) => {
                let text: String = error.to_string().chars().take(ERROR_LENGTH_MAX).collect();
                let too_old = now_ms - queued_at_ms > self.settings.retry_max_age_s * 1000;
                let dead = matches!(error, SendError::Permanent(_)) || too_old;
                if dead {
                    tracing::error!(message_id = %message.id, channel = %channel_name, error = %text, "Outbound message dead-lettered");
                    sqlx::query(
                        "UPDATE outbox SET status = 'dead', last_error = $1 WHERE position = $2",
                    )
                    .bind(&text)
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                    ExecutionOutcome::DeadLettered
                } else {
                    let delay_ms = self.backoff_ms(attempts);
                    tracing::warn!(message_id = %message.id, channel = %channel_name, error = %text, delay_ms, "Outbound message will be retried");
                    sqlx::query("UPDATE outbox SET next_attempt_at_ms = $1, last_error = $2 WHERE position = $3")
                        .bind(now_ms + delay_ms)
                        .bind(&text)
                        .bind(position)
                        .execute(&mut *tx)
                        .await?;
                    ExecutionOutcome::Retrying
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// The retailer's webhook secrets as they are now, so a rotation applies to retries too.
    async fn signing_secrets(
        &self,
        retailer_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let Some(retailer_id) = retailer_id else {
            return Ok(Vec::new());
        };
        let mut conn = self.store.reader().acquire().await?;
        let retailer = crate::engine::rows::load_retailer(&mut conn, retailer_id).await?;
        Ok(retailer
            .map(|retailer| retailer.signing_secrets(now_ms))
            .unwrap_or_default())
    }

    /// Exponential backoff with full jitter in its upper half, capped.
    fn backoff_ms(&self, attempts: i64) -> i64 {
        let exponent = u32::try_from(attempts.clamp(1, 32) - 1).unwrap_or(31);
        let ceiling = self
            .settings
            .retry_base_ms
            .saturating_mul(1_i64 << exponent.min(30))
            .min(self.settings.retry_max_ms);
        rand::thread_rng().gen_range(ceiling / 2..=ceiling.max(1))
    }

    /// Runs `outbox.workers` delivery loops until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let dispatcher = Arc::new(self);
        let workers: Vec<_> = (0..dispatcher.settings.workers)
            .map(|_| tokio::spawn(dispatcher.clone().run_worker(shutdown.clone())))
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    }

    /// Delivers until `shutdown` turns true, resting between polls when nothing is due.
    async fn run_worker(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let poll_interval = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let rest = match self.try_execute_one().await {
                Ok(ExecutionOutcome::NothingDue) => true,
                Ok(_) => false,
                Err(error) => {
                    tracing::error!(error = %error, "Outbox dispatcher cannot reach the database");
                    true
                }
            };
            if rest {
                tokio::select! {
                    _ = tokio::time::sleep(poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}
