//! Delivers queued outbox messages: claims many at once, sends them concurrently within each
//! channel's limits, and records the outcomes in batches.
//!
//! One claim loop per daemon takes the due heads of the recipients' queues in one write
//! transaction, pushing each one's next attempt time forward by a lease with a guarded
//! UPDATE; only the daemon whose UPDATE matched owns it, so several daemons on one database
//! never deliver the same attempt twice, and within a daemon nothing races for a row. Each
//! claimed message is sent in a task of its own, holding a permit of its channel's limit
//! (an SMPP link's window, the SMTP pool, `outbox.workers` for the rest). Outcomes go to one
//! recorder task that writes whatever has arrived in one transaction. The loop wakes when
//! a write commits, when an outcome is recorded (the next message of that queue may go),
//! or after `outbox.poll_interval_ms`.
//!
//! A daemon that dies mid-delivery leaves the lease to run out and a later claim tries
//! again: delivery is at least once, and each message carries a stable id for peers to
//! deduplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paystep_channel_core::{Channel, ChannelName, MessageKind, OutboundMessage, SendError};
use rand::Rng;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::fallback::{queue_fallback, REQUEST_STILL_OPEN};
use crate::clock::SharedClock;
use crate::config::OutboxSettings;
use crate::store::{Store, StoreError, WriteFuture};

/// Longest error text kept per message.
const ERROR_LENGTH_MAX: usize = 1000;
/// Outcomes recorded in one transaction at most.
const OUTCOMES_PER_RECORD_MAX: usize = 512;
/// How often unanswered pushes are looked for, and how many get their SMS per look.
const FALLBACK_SCAN_INTERVAL: Duration = Duration::from_secs(1);
const FALLBACKS_PER_SCAN_MAX: i64 = 64;

pub struct Dispatcher {
    store: Store,
    channels: HashMap<ChannelName, Arc<dyn Channel>>,
    settings: OutboxSettings,
    clock: SharedClock,
    /// After how long an unanswered pushed request goes out by SMS; `None`: only when the
    /// PPG refuses it.
    push_fallback_after_ms: Option<i64>,
}

/// Messages of one channel (or of the channels not configured here) and how many of them
/// may be in flight at once.
struct Lane {
    /// SQL naming the lane's channels; built from channel names only.
    filter: String,
    sends: Arc<Semaphore>,
}

/// A claimed message with what recording its outcome needs.
struct Claimed {
    position: i64,
    attempts: i64,
    queued_at_ms: i64,
    message: OutboundMessage,
}

/// What became of one attempt, to be written by the recorder.
struct Attempted {
    position: i64,
    channel: ChannelName,
    message_id: String,
    outcome: Outcome,
}

enum Outcome {
    Delivered {
        remote_id: Option<String>,
    },
    Retry {
        next_attempt_at_ms: i64,
        error: String,
    },
    Dead {
        error: String,
    },
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
            push_fallback_after_ms: None,
        }
    }

    /// Sends an unanswered pushed request by SMS after `after_s` (0: never on time alone).
    pub fn with_push_fallback_after_s(mut self, after_s: u64) -> Dispatcher {
        self.push_fallback_after_ms =
            (after_s > 0).then(|| i64::try_from(after_s.saturating_mul(1000)).unwrap_or(i64::MAX));
        self
    }

    /// Looks for unanswered pushed requests whose time is up, until shutdown.
    async fn send_overdue_fallbacks(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (Some(after_ms), Some(channel)) =
            (self.push_fallback_after_ms, self.fallback_channel())
        else {
            return;
        };
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(FALLBACK_SCAN_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let now_ms = self.clock.now_ms();
            let written = self
                .store
                .write_silently(move |conn| -> WriteFuture<'_, Result<(), StoreError>> {
                    Box::pin(queue_overdue_fallbacks(conn, after_ms, channel, now_ms))
                })
                .await;
            if let Err(error) = written {
                tracing::error!(error = %error, "Cannot queue the SMS for unanswered pushes; will try again");
            }
        }
    }

    /// Where the SMS that stands in for a refused push goes: SMS, or the console standing
    /// in for it; `None` when neither is configured.
    fn fallback_channel(&self) -> Option<ChannelName> {
        [ChannelName::Sms, ChannelName::Console]
            .into_iter()
            .find(|name| self.channels.contains_key(name))
    }

    /// Delivers until `shutdown` turns true, then lets the sends in flight finish and
    /// records their outcomes.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let dispatcher = Arc::new(self);
        let lanes = dispatcher.lanes();
        let sends_max: usize = lanes
            .iter()
            .map(|lane| lane.sends.available_permits())
            .sum();
        let recorded = Arc::new(Notify::new());
        let (outcomes, receiver) = mpsc::channel(sends_max.max(1) * 2);
        let recorder = tokio::spawn(dispatcher.clone().record(receiver, recorded.clone()));
        let fallbacks = tokio::spawn(dispatcher.clone().send_overdue_fallbacks(shutdown.clone()));
        let committed = dispatcher.store.committed();
        let listener = dispatcher.store.listen_for_other_daemons();
        let poll_interval = Duration::from_millis(dispatcher.settings.poll_interval_ms);
        let mut sends = JoinSet::new();
        while !*shutdown.borrow() {
            while sends.try_join_next().is_some() {}
            let mut more_at_once = false;
            for lane in &lanes {
                let room = lane.sends.available_permits();
                if room == 0 {
                    continue;
                }
                let claimed = match dispatcher.claim(&lane.filter, room).await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::error!(error = %error, "Outbox dispatcher cannot reach the database");
                        break;
                    }
                };
                more_at_once |=
                    !claimed.is_empty() && lane.sends.available_permits() > claimed.len();
                for claimed in claimed {
                    // Only this loop takes permits, so the room counted above is still there:
                    // every claimed message starts at once, well inside its lease.
                    let Ok(permit) = lane.sends.clone().try_acquire_owned() else {
                        break;
                    };
                    let (dispatcher, outcomes) = (dispatcher.clone(), outcomes.clone());
                    sends.spawn(async move {
                        let attempted = dispatcher.attempt(claimed).await;
                        drop(permit);
                        let _ = outcomes.send(attempted).await;
                    });
                }
            }
            if more_at_once {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll_interval) => {}
                _ = committed.notified() => {}
                _ = recorded.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        while sends.join_next().await.is_some() {}
        drop(outcomes);
        let _ = recorder.await;
        let _ = fallbacks.await;
    }

    /// A lane per configured channel, holding that channel's limit on sends in flight
    /// (`Channel::parallel_sends_max`, else `outbox.workers`), and one for messages of
    /// channels not configured here, which are tried (and fail retriably, until they are
    /// dead letters) as before. Lanes are claimed separately, so a backlog on a slow channel
    /// never holds back another channel's messages.
    fn lanes(&self) -> Vec<Lane> {
        let mut names: Vec<ChannelName> = self.channels.keys().copied().collect();
        names.sort_by_key(|name| name.as_str());
        let mut lanes: Vec<Lane> = names
            .iter()
            .map(|name| {
                let limit = self.channels[name]
                    .parallel_sends_max()
                    .unwrap_or(self.settings.workers)
                    .max(1);
                Lane {
                    filter: format!("channel = '{}'", name.as_str()),
                    sends: Arc::new(Semaphore::new(limit)),
                }
            })
            .collect();
        let configured: Vec<String> = names
            .iter()
            .map(|name| format!("'{}'", name.as_str()))
            .collect();
        lanes.push(Lane {
            filter: if configured.is_empty() {
                "1 = 1".to_string()
            } else {
                format!("channel NOT IN ({})", configured.join(", "))
            },
            sends: Arc::new(Semaphore::new(self.settings.workers.max(1))),
        });
        lanes
    }

    /// Claims up to `room` due messages (at most `outbox.batch_size`) in one transaction.
    async fn claim(&self, lane_filter: &str, room: usize) -> Result<Vec<Claimed>, StoreError> {
        let now_ms = self.clock.now_ms();
        let limit = self.settings.batch_size.min(room as i64);
        // The candidates come from a reader, outside the write transaction: on SQLite the
        // scan of the queue heads would otherwise hold the one writer. The claims re-check
        // each candidate, so one that changed meanwhile is just skipped.
        let mut reader = self.store.reader().acquire().await?;
        let candidates = due_heads(&mut reader, lane_filter, now_ms, limit).await?;
        drop(reader);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let lease_until_ms = now_ms + self.settings.claim_lease_ms;
        self.store
            .write_silently(
                move |conn| -> WriteFuture<'_, Result<Vec<Claimed>, StoreError>> {
                    Box::pin(claim(conn, candidates, now_ms, lease_until_ms))
                },
            )
            .await
    }

    /// Sends one claimed message and says what became of it.
    async fn attempt(&self, claimed: Claimed) -> Attempted {
        let Claimed {
            position,
            attempts,
            queued_at_ms,
            mut message,
        } = claimed;
        let now_ms = self.clock.now_ms();
        let channel_name = message.channel;
        let result = match self.channels.get(&channel_name) {
            Some(channel) => {
                let secrets = if channel_name == ChannelName::Webhook {
                    self.signing_secrets(message.retailer_id.as_deref(), now_ms)
                        .await
                        .map_err(|error| {
                            SendError::Retriable(format!(
                                "cannot read the signing secrets: {error}"
                            ))
                        })
                } else {
                    Ok(Vec::new())
                };
                match secrets {
                    Ok(secrets) => {
                        message.signing_secrets = secrets;
                        channel.send(&message).await
                    }
                    Err(error) => Err(error),
                }
            }
            // Configuration may change between writing and delivering; wait for it.
            None => Err(SendError::Retriable(format!(
                "channel {} is not configured",
                channel_name.as_str()
            ))),
        };
        let outcome = match result {
            Ok(delivery) => Outcome::Delivered {
                remote_id: delivery.remote_id,
            },
            Err(error) => {
                let text: String = error.to_string().chars().take(ERROR_LENGTH_MAX).collect();
                let too_old = now_ms - queued_at_ms > self.settings.retry_max_age_s * 1000;
                if matches!(error, SendError::Permanent(_)) || too_old {
                    tracing::error!(message_id = %message.id, channel = %channel_name.as_str(), error = %text, "Outbound message dead-lettered");
                    Outcome::Dead { error: text }
                } else {
                    let delay_ms = self.backoff_ms(attempts);
                    tracing::warn!(message_id = %message.id, channel = %channel_name.as_str(), error = %text, delay_ms, "Outbound message will be retried");
                    Outcome::Retry {
                        next_attempt_at_ms: now_ms + delay_ms,
                        error: text,
                    }
                }
            }
        };
        Attempted {
            position,
            channel: channel_name,
            message_id: message.id,
            outcome,
        }
    }

    /// Writes outcomes as they arrive, all that have arrived in one transaction.
    async fn record(
        self: Arc<Self>,
        mut outcomes: mpsc::Receiver<Attempted>,
        recorded: Arc<Notify>,
    ) {
        while let Some(first) = outcomes.recv().await {
            let mut batch = vec![first];
            while batch.len() < OUTCOMES_PER_RECORD_MAX {
                match outcomes.try_recv() {
                    Ok(attempted) => batch.push(attempted),
                    Err(_) => break,
                }
            }
            let now_ms = self.clock.now_ms();
            let fallback = self.fallback_channel();
            let written = self
                .store
                .write_silently(move |conn| -> WriteFuture<'_, Result<(), StoreError>> {
                    Box::pin(record_outcomes(conn, batch, now_ms, fallback))
                })
                .await;
            if let Err(error) = written {
                // The leases run out and the messages are tried again: at least once.
                tracing::error!(error = %error, "Cannot record delivery outcomes; they will be retried");
            }
            recorded.notify_one();
        }
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
}

/// The due heads of the recipients' queues, oldest first. A message waits while an earlier
/// one of the same process (or, for messages of no process such as replies, an earlier one
/// of no process) to the same address is still queued, so each recipient sees them in order
/// even when one needs retries: only the head of each such queue is a candidate.
async fn due_heads(
    conn: &mut AnyConnection,
    lane_filter: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    // The filter is built from channel names (fixed identifiers), never from input.
    sqlx::query_scalar(&format!(
        "SELECT o.position FROM outbox o JOIN \
           (SELECT MIN(position) AS position FROM outbox WHERE status = 'queued' AND {lane_filter} \
            GROUP BY COALESCE(process_id, ''), channel, to_address) heads \
           ON heads.position = o.position \
         WHERE o.next_attempt_at_ms <= $1 \
         ORDER BY o.position LIMIT $2"
    ))
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Claims the candidates that are still queued and due, each with a guarded UPDATE that
/// pushes its next attempt out by the lease and returns the message.
async fn claim(
    conn: &mut AnyConnection,
    candidates: Vec<i64>,
    now_ms: i64,
    lease_until_ms: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let mut claimed = Vec::with_capacity(candidates.len());
    for position in candidates {
        let row = sqlx::query(
            "UPDATE outbox SET next_attempt_at_ms = $1, attempts = attempts + 1 \
             WHERE position = $2 AND status = 'queued' AND next_attempt_at_ms <= $3 \
             RETURNING position, id, channel, intended_channel, kind, to_address, retailer_id, \
             process_id, code, description, reference, language, text, url, payload, attempts, \
             queued_at_ms, expires_at_ms",
        )
        .bind(lease_until_ms)
        .bind(position)
        .bind(now_ms)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            claimed.push(claimed_from_row(&row)?);
        }
    }
    Ok(claimed)
}

fn claimed_from_row(row: &AnyRow) -> Result<Claimed, sqlx::Error> {
    let parsed_or = |column: &str, fallback: ChannelName| -> Result<ChannelName, sqlx::Error> {
        Ok(row
            .try_get::<String, _>(column)?
            .parse()
            .unwrap_or(fallback))
    };
    let message = OutboundMessage {
        id: row.try_get("id")?,
        channel: parsed_or("channel", ChannelName::Console)?,
        intended_channel: parsed_or("intended_channel", ChannelName::Console)?,
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
        expires_at_ms: row.try_get("expires_at_ms")?,
        payload: row
            .try_get::<Option<String>, _>("payload")?
            .and_then(|payload| serde_json::from_str(&payload).ok()),
        signing_secrets: Vec::new(),
    };
    Ok(Claimed {
        position: row.try_get("position")?,
        attempts: row.try_get("attempts")?,
        queued_at_ms: row.try_get("queued_at_ms")?,
        message,
    })
}

async fn record_outcomes(
    conn: &mut AnyConnection,
    batch: Vec<Attempted>,
    now_ms: i64,
    fallback: Option<ChannelName>,
) -> Result<(), StoreError> {
    for attempted in batch {
        match attempted.outcome {
            Outcome::Delivered { remote_id } => {
                // Each part's id, so that a delivery receipt finds its message.
                for part_id in remote_id.iter().flat_map(|ids| ids.split(',')) {
                    sqlx::query(
                        "INSERT INTO outbox_remote_ids (remote_id, channel, outbox_id) VALUES ($1, $2, $3) \
                         ON CONFLICT (channel, remote_id) DO NOTHING",
                    )
                    .bind(part_id)
                    .bind(attempted.channel.as_str())
                    .bind(&attempted.message_id)
                    .execute(&mut *conn)
                    .await?;
                }
                sqlx::query(
                    "UPDATE outbox SET status = 'delivered', delivered_at_ms = $1, remote_id = $2, \
                     last_error = NULL WHERE position = $3",
                )
                .bind(now_ms)
                .bind(remote_id)
                .bind(attempted.position)
                .execute(&mut *conn)
                .await?;
            }
            Outcome::Retry {
                next_attempt_at_ms,
                error,
            } => {
                sqlx::query(
                    "UPDATE outbox SET next_attempt_at_ms = $1, last_error = $2 WHERE position = $3",
                )
                .bind(next_attempt_at_ms)
                .bind(error)
                .bind(attempted.position)
                .execute(&mut *conn)
                .await?;
            }
            Outcome::Dead { error } => {
                // Guarded, so that of two workers racing on one message only one buries it
                // and queues its fallback.
                let buried = sqlx::query(
                    "UPDATE outbox SET status = 'dead', last_error = $1 \
                     WHERE position = $2 AND status = 'queued'",
                )
                .bind(error)
                .bind(attempted.position)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if let (1, Some(channel)) = (buried, fallback) {
                    queue_fallback(conn, attempted.position, channel, now_ms).await?;
                }
            }
        }
    }
    Ok(())
}

/// Pushed requests still unanswered `after_ms` after they were written get their SMS, a
/// batch at a time.
async fn queue_overdue_fallbacks(
    conn: &mut AnyConnection,
    after_ms: i64,
    channel: ChannelName,
    now_ms: i64,
) -> Result<(), StoreError> {
    let due: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT o.position FROM outbox o WHERE o.fallback_text IS NOT NULL \
         AND o.channel = 'wap_push' AND o.created_at_ms <= $1 AND {REQUEST_STILL_OPEN} ORDER BY o.created_at_ms LIMIT $3"
    ))
    .bind(now_ms - after_ms)
    .bind(now_ms)
    .bind(FALLBACKS_PER_SCAN_MAX)
    .fetch_all(&mut *conn)
    .await?;
    for position in due {
        queue_fallback(conn, position, channel, now_ms).await?;
    }
    Ok(())
}
