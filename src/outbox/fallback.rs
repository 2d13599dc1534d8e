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

/// The outbox message a peer reported on under `remote_id` (a PAP push-id, a CallSid): its
/// position, and how many times it was sent under an id of this channel.
pub(crate) async fn message_of_remote(
    conn: &mut AnyConnection,
    channel: ChannelName,
    remote_id: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT o.position FROM outbox_remote_ids i JOIN outbox o ON o.id = i.outbox_id \
         WHERE i.channel = $1 AND i.remote_id = $2",
    )
    .bind(channel.as_str())
    .bind(remote_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(position) = position else {
        return Ok(None);
    };
    let sent: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox_remote_ids i JOIN outbox o ON o.id = i.outbox_id \
         WHERE o.position = $1 AND i.channel = $2",
    )
    .bind(position)
    .bind(channel.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some((position, sent)))
}

/// Sends a delivered message again after `delay_ms` (a call that was busy), while its
/// request is still open. Returns whether it was queued.
pub(crate) async fn send_again(
    conn: &mut AnyConnection,
    position: i64,
    now_ms: i64,
    delay_ms: i64,
    why: &str,
) -> Result<bool, StoreError> {
    let queued = sqlx::query(&format!(
        "UPDATE outbox SET status = 'queued', next_attempt_at_ms = $3, queued_at_ms = $2, \
         last_error = $4 WHERE position = $1 AND status = 'delivered' AND EXISTS \
         (SELECT 1 FROM outbox o WHERE o.position = $1 AND {REQUEST_STILL_OPEN})"
    ))
    .bind(position)
    .bind(now_ms)
    .bind(now_ms + delay_ms)
    .bind(why)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(queued == 1)
}
