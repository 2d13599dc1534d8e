//! What the operator sees of the outbox, and how a dead letter goes back in the queue.

use serde::Serialize;
use sqlx::AnyConnection;

use crate::clock::format_ms;

#[derive(Debug, Clone, sqlx::FromRow)]
struct OutboxRow {
    position: i64,
    id: String,
    channel: String,
    intended_channel: String,
    kind: String,
    to_address: String,
    retailer_id: Option<String>,
    process_id: Option<String>,
    event_id: Option<String>,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    created_at_ms: i64,
    queued_at_ms: i64,
    next_attempt_at_ms: i64,
    delivered_at_ms: Option<i64>,
    delivery_state: Option<String>,
    fallback_for: Option<String>,
}

/// One outbox message as the operator API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    pub position: i64,
    pub id: String,
    pub channel: String,
    /// The channel the message was meant for, where another stands in (the console for an
    /// unconfigured channel).
    pub intended_channel: String,
    pub kind: String,
    pub to: String,
    pub retailer_id: Option<String>,
    pub process_id: Option<String>,
    pub event_id: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: String,
    pub queued_at: String,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    /// What the peer last reported of the message after accepting it (an SMS delivery
    /// receipt: DELIVERED, UNDELIVERABLE, EXPIRED, ...).
    pub delivery_state: Option<String>,
    /// On an SMS sent instead of a refused WAP push: the push's id.
    pub fallback_for: Option<String>,
}

impl From<OutboxRow> for OutboxView {
    fn from(row: OutboxRow) -> Self {
        let queued = row.status == "queued";
        OutboxView {
            position: row.position,
            id: row.id,
            channel: row.channel,
            intended_channel: row.intended_channel,
            kind: row.kind,
            to: row.to_address,
            retailer_id: row.retailer_id,
            process_id: row.process_id,
            event_id: row.event_id,
            status: row.status,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: format_ms(row.created_at_ms),
            queued_at: format_ms(row.queued_at_ms),
            next_attempt_at: queued.then(|| format_ms(row.next_attempt_at_ms)),
            delivered_at: row.delivered_at_ms.map(format_ms),
            delivery_state: row.delivery_state,
            fallback_for: row.fallback_for,
        }
    }
}

const COLUMNS: &str = "o.position, o.id, o.channel, o.intended_channel, o.kind, o.to_address, o.retailer_id, \
     o.process_id, o.event_id, o.status, o.attempts, o.last_error, o.created_at_ms, o.queued_at_ms, \
     o.next_attempt_at_ms, o.delivered_at_ms, o.fallback_for, \
     (SELECT r.state FROM outbox_remote_ids i JOIN delivery_receipts r \
        ON r.channel = i.channel AND r.remote_id = i.remote_id \
      WHERE i.outbox_id = o.id ORDER BY r.received_at_ms DESC LIMIT 1) AS delivery_state";

pub const STATUSES: [&str; 3] = ["queued", "delivered", "dead"];

/// A page of outbox messages in queue order, optionally of one status.
pub async fn list(
    conn: &mut AnyConnection,
    status: Option<&str>,
    after_position: i64,
    limit: i64,
) -> Result<Vec<OutboxView>, sqlx::Error> {
    let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox o WHERE ($1 = '' OR o.status = $1) AND o.position > $2 \
         ORDER BY o.position LIMIT $3"
    ))
    .bind(status.unwrap_or(""))
    .bind(after_position)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(OutboxView::from).collect())
}

#[derive(Debug, PartialEq, Eq)]
pub enum RequeueOutcome {
    Requeued(Box<OutboxView>),
    NotFound,
    NotDead(String),
}

/// Puts a dead letter back in the queue, due now, with a fresh retry period.
pub async fn requeue(
    conn: &mut AnyConnection,
    origin: &crate::audit::Origin,
    id: &str,
    now_ms: i64,
) -> Result<RequeueOutcome, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE outbox SET status = 'queued', next_attempt_at_ms = $1, queued_at_ms = $1 \
         WHERE id = $2 AND status = 'dead'",
    )
    .bind(now_ms)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let row: Option<OutboxRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM outbox o WHERE o.id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match (updated.rows_affected(), row) {
        (_, None) => RequeueOutcome::NotFound,
        (1, Some(row)) => {
            tracing::info!(message_id = id, "Dead letter requeued");
            let change = crate::audit::Change {
                action: "outbox.requeued".into(),
                subject_kind: "outbox".into(),
                subject_id: id.into(),
                before: serde_json::json!({"status": "dead"}),
                after: serde_json::json!({"status": "queued"}),
            };
            crate::audit::append(conn, (origin, id), now_ms, &[change]).await?;
            RequeueOutcome::Requeued(Box::new(row.into()))
        }
        (_, Some(row)) => RequeueOutcome::NotDead(row.status),
    })
}

impl PartialEq for OutboxView {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.status == other.status
    }
}

impl Eq for OutboxView {}
