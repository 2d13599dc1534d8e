//! The SMS that stands in for a pushed confirmation request the handset will not get: the
//! PPG refused the push for good, reported it undeliverable, or the customer has not
//! answered it for `channels.wap_push.fallback_after_s`.

use paystep_channel_core::ChannelName;
use sqlx::AnyConnection;

use crate::store::StoreError;

/// A pushed request has its fallback SMS due while the request is pending and unexpired.
pub(crate) const REQUEST_STILL_OPEN: &str = "(o.expires_at_ms IS NULL OR o.expires_at_ms > $2) \
     AND EXISTS (SELECT 1 FROM confirmations c WHERE c.process_id = o.process_id \
     AND c.status = 'pending' AND c.created_at_ms = o.created_at_ms)";

/// Queues the SMS that stands in for a pushed confirmation request (refused for good, or
/// unanswered for `channels.wap_push.fallback_after_s`), once: the text is taken off the
/// push's row by a guarded UPDATE, so of two daemons racing only one gets it. A request
/// answered or expired meanwhile gets none (a PPG refuses a push past its
/// `deliver-before-timestamp`, and the customer could not answer it anyway).
pub(crate) async fn queue_fallback(
    conn: &mut AnyConnection,
    position: i64,
    channel: ChannelName,
    now_ms: i64,
) -> Result<(), StoreError> {
    let text: Option<Option<String>> = sqlx::query_scalar(&format!(
        "SELECT o.fallback_text FROM outbox o WHERE o.position = $1 \
         AND o.fallback_text IS NOT NULL AND {REQUEST_STILL_OPEN}"
    ))
    .bind(position)
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(text) = text.flatten() else {
        return Ok(());
    };
    let taken = sqlx::query(
        "UPDATE outbox SET fallback_text = NULL WHERE position = $1 AND fallback_text IS NOT NULL",
    )
    .bind(position)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if taken != 1 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (id, channel, intended_channel, kind, recipient, to_address, \
         retailer_id, process_id, code, language, text, url, description, reference, \
         fallback_for, status, attempts, next_attempt_at_ms, created_at_ms, queued_at_ms) \
         SELECT $1, $2, 'sms', kind, recipient, to_address, retailer_id, process_id, code, \
         language, $3, url, description, reference, id, 'queued', 0, $4, $4, $4 \
         FROM outbox WHERE position = $5",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(channel.as_str())
    .bind(text)
    .bind(now_ms)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    tracing::info!(position, channel = %channel.as_str(), "Queued the SMS that stands in for a push");
    Ok(())
}

/// The same, for the push a PPG reported on under `push_id` (its remote id).
pub(crate) async fn queue_fallback_for_push(
    conn: &mut AnyConnection,
    push_id: &str,
    channel: ChannelName,
    now_ms: i64,
) -> Result<(), StoreError> {
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT o.position FROM outbox_remote_ids i JOIN outbox o ON o.id = i.outbox_id \
         WHERE i.channel = 'wap_push' AND i.remote_id = $1",
    )
    .bind(push_id)
    .fetch_optional(&mut *conn)
    .await?;
    match position {
        Some(position) => queue_fallback(conn, position, channel, now_ms).await,
        None => Ok(()),
    }
}
