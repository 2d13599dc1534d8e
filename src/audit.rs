//! The audit log: every state change, chained by hashes, so that no entry can be changed,
//! removed or slipped in unnoticed.
//!
//! Entry `n` stores the hash of entry `n - 1`, and its own hash is SHA-256 over its fields
//! and that previous hash (`entry_hash`). The database refuses UPDATE, DELETE and TRUNCATE
//! on the table (migration 0011); someone who gets past that, by dropping the triggers,
//! must rewrite every later hash, and the head hash an operator exported to a notary
//! (`paystep ledger export`) then no longer matches. `verify_chain` recomputes the chain
//! and names the first broken link.
//!
//! Appending takes the one `audit_head` row's lock, which every writer shares: it must be
//! the last lock an operation takes, so `engine::effects` appends after everything else.
//! Storage only: which changes are worth an entry is the engine's business.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries read per query while verifying or exporting: bounded memory on any log size.
const PAGE_ENTRIES: i64 = 1_000;

/// Entries written per INSERT.
const ROWS_PER_INSERT: usize = 50;

/// Who made a change, and on which channel it reached us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `retailer:{id}`, `customer:{id}`, `sender:{address}`, `operator` or `system`.
    pub actor: String,
    /// `api`, `admin_api`, `cli`, `page`, `sms`, `voice`, `sweeper`, `dispatcher`, ...
    pub channel: String,
}

impl Origin {
    pub fn retailer(retailer_id: &str) -> Origin {
        Origin {
            actor: format!("retailer:{retailer_id}"),
            channel: "api".into(),
        }
    }

    pub fn customer(customer_id: &str, channel: &str) -> Origin {
        Origin {
            actor: format!("customer:{customer_id}"),
            channel: channel.into(),
        }
    }

    /// Someone who wrote to us from an address that may belong to no customer.
    pub fn sender(address: &str, channel: &str) -> Origin {
        Origin {
            actor: format!("sender:{address}"),
            channel: channel.into(),
        }
    }

    pub fn operator(channel: &str) -> Origin {
        Origin {
            actor: "operator".into(),
            channel: channel.into(),
        }
    }

    /// The daemon itself: expiry, fallbacks.
    pub fn system(worker: &str) -> Origin {
        Origin {
            actor: "system".into(),
            channel: worker.into(),
        }
    }
}

/// One change to record: what happened to which subject, its state before and after.
#[derive(Debug, Clone)]
pub struct Change {
    pub action: String,
    pub subject_kind: String,
    pub subject_id: String,
    /// `Value::Null` when the subject did not exist before.
    pub before: Value,
    pub after: Value,
}

/// An entry as stored and exported.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub created_at_ms: i64,
    pub actor: String,
    pub channel: String,
    pub action: String,
    pub subject_kind: String,
    pub subject_id: String,
    /// JSON text, hashed as stored.
    pub state_before: String,
    pub state_after: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    /// The hash this entry's fields and `prev_hash` give.
    pub fn computed_hash(&self) -> String {
        // A JSON array of the fields: unambiguous (every string quoted and escaped) and the
        // same in any language that has JSON and SHA-256, for an external checker.
        let canonical = serde_json::json!([
            self.seq,
            self.prev_hash,
            self.created_at_ms,
            self.actor,
            self.channel,
            self.action,
            self.subject_kind,
            self.subject_id,
            self.state_before,
            self.state_after,
        ]);
        format!("{:x}", Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// The last entry's seq and hash (seq 0 and the genesis hash for an empty log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Appends `changes` after the current head, in the caller's transaction.
pub async fn append(
    conn: &mut AnyConnection,
    origin: &Origin,
    now_ms: i64,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    // Moving the head first locks it until commit: concurrent writers append one after
    // another, each after the hash the last one left.
    let count = i64::try_from(changes.len()).expect("a few changes per operation");
    let row = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(count)
        .fetch_one(&mut *conn)
        .await?;
    let last_seq: i64 = row.try_get(0)?;
    let mut prev_hash: String = row.try_get(1)?;
    let mut entries = Vec::with_capacity(changes.len());
    for (offset, change) in (1..).zip(changes) {
        let mut entry = Entry {
            seq: last_seq - count + offset,
            created_at_ms: now_ms,
            actor: origin.actor.clone(),
            channel: origin.channel.clone(),
            action: change.action.clone(),
            subject_kind: change.subject_kind.clone(),
            subject_id: change.subject_id.clone(),
            state_before: change.before.to_string(),
            state_after: change.after.to_string(),
            prev_hash,
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        prev_hash = entry.hash.clone();
        entries.push(entry);
    }
    for rows in entries.chunks(ROWS_PER_INSERT) {
        insert(conn, rows).await?;
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&prev_hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert(conn: &mut AnyConnection, entries: &[Entry]) -> Result<(), sqlx::Error> {
    const COLUMNS: usize = 11;
    let mut sql = String::from(
        "INSERT INTO audit_log (seq, created_at_ms, actor, channel, action, subject_kind, \
         subject_id, state_before, state_after, prev_hash, hash) VALUES ",
    );
    for index in 0..entries.len() {
        let placeholders: Vec<String> = (1..=COLUMNS)
            .map(|column| format!("${}", index * COLUMNS + column))
            .collect();
        if index > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&placeholders.join(", "));
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for entry in entries {
        query = query
            .bind(entry.seq)
            .bind(entry.created_at_ms)
            .bind(&entry.actor)
            .bind(&entry.channel)
            .bind(&entry.action)
            .bind(&entry.subject_kind)
            .bind(&entry.subject_id)
            .bind(&entry.state_before)
            .bind(&entry.state_after)
            .bind(&entry.prev_hash)
            .bind(&entry.hash);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// The state the last entry about a subject left it in, as JSON text.
pub async fn last_state(
    conn: &mut AnyConnection,
    subject_kind: &str,
    subject_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT state_after FROM audit_log WHERE subject_kind = $1 AND subject_id = $2 \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(subject_kind)
    .bind(subject_id)
    .fetch_optional(&mut *conn)
    .await
}

pub async fn head(conn: &mut AnyConnection) -> Result<Head, sqlx::Error> {
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Head {
        seq: row.try_get(0)?,
        hash: row.try_get(1)?,
    })
}

/// Up to `PAGE_ENTRIES` entries after `after_seq` and up to `up_to_seq`, in order.
pub async fn entries_between(
    conn: &mut AnyConnection,
    after_seq: i64,
    up_to_seq: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, created_at_ms, actor, channel, action, subject_kind, subject_id, \
         state_before, state_after, prev_hash, hash FROM audit_log WHERE seq > $1 \
         AND seq <= $2 ORDER BY seq LIMIT $3",
    )
    .bind(after_seq)
    .bind(up_to_seq)
    .bind(PAGE_ENTRIES)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Entry {
                seq: row.try_get(0)?,
                created_at_ms: row.try_get(1)?,
                actor: row.try_get(2)?,
                channel: row.try_get(3)?,
                action: row.try_get(4)?,
                subject_kind: row.try_get(5)?,
                subject_id: row.try_get(6)?,
                state_before: row.try_get(7)?,
                state_after: row.try_get(8)?,
                prev_hash: row.try_get(9)?,
                hash: row.try_get(10)?,
            })
        })
        .collect()
}

/// What recomputing the chain found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub entries: i64,
    pub head: Head,
    /// The first broken link, in words naming the entry; `None` when the chain holds.
    pub first_broken_link: Option<String>,
}

/// Recomputes every hash from the first entry up to the head, and checks that each entry
/// follows the one before it, that no seq is missing, and that the chain ends at the head.
/// A `notarized` head (exported earlier) must still be in the chain. Entries appended
/// while it runs (after the head it read first) are left for the next run: the head and
/// its entries commit together, so every entry up to the head is there to read.
pub async fn verify_chain(
    conn: &mut AnyConnection,
    notarized: Option<&Head>,
) -> Result<ChainReport, sqlx::Error> {
    let head = head(conn).await?;
    let mut last = Head {
        seq: 0,
        hash: GENESIS_HASH.to_string(),
    };
    let mut entries = 0;
    let mut broken = None;
    'pages: loop {
        let page = entries_between(conn, last.seq, head.seq).await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            if let Some(problem) = link_problem(&last, &entry, notarized) {
                broken = Some(problem);
                break 'pages;
            }
            entries += 1;
            last = Head {
                seq: entry.seq,
                hash: entry.hash,
            };
        }
    }
    if broken.is_none() {
        broken = end_problem(&last, &head, notarized);
    }
    Ok(ChainReport {
        entries,
        head,
        first_broken_link: broken,
    })
}

/// Why `entry` does not follow `last`, if it does not.
fn link_problem(last: &Head, entry: &Entry, notarized: Option<&Head>) -> Option<String> {
    let name = format!(
        "audit entry {} ({} on {} {})",
        entry.seq, entry.action, entry.subject_kind, entry.subject_id
    );
    if entry.seq != last.seq + 1 {
        return Some(format!(
            "{name}: entries {} to {} are missing",
            last.seq + 1,
            entry.seq - 1
        ));
    }
    if entry.prev_hash != last.hash {
        return Some(format!(
            "{name}: its prev_hash is not the hash of entry {}; one of the two was changed",
            last.seq
        ));
    }
    if entry.computed_hash() != entry.hash {
        return Some(format!("{name}: its contents do not match its hash"));
    }
    if let Some(notarized) = notarized.filter(|notarized| notarized.seq == entry.seq) {
        if notarized.hash != entry.hash {
            return Some(format!(
                "{name}: its hash differs from the notarized head; the chain was rewritten"
            ));
        }
    }
    None
}

/// Problems only the end of the chain shows: a head that does not name the last entry (an
/// entry removed from the end), a notarized head past it.
fn end_problem(last: &Head, head: &Head, notarized: Option<&Head>) -> Option<String> {
    if last != head {
        return Some(format!(
            "the audit head says entry {} with hash {}, but the chain ends at entry {} with hash {}",
            head.seq, head.hash, last.seq, last.hash
        ));
    }
    match notarized {
        Some(notarized) if notarized.seq > last.seq => Some(format!(
            "the notarized head is entry {}, but the chain ends at entry {}",
            notarized.seq, last.seq
        )),
        _ => None,
    }
}
