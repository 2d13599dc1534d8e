//! The audit log: every state change, chained by hashes, so that no entry can be changed,
//! removed or slipped in unnoticed.
//!
//! The log is `CHAINS` chains, so that writers on PostgreSQL need not all wait for one lock
//! (see below). In each chain, entry `n` stores the hash of entry `n - 1`, and its own
//! hash is SHA-256 over its fields and that previous hash (`Entry::computed_hash`). The database refuses UPDATE, DELETE and TRUNCATE
//! on the table (migration 0011); someone who gets past that, by dropping the triggers,
//! must rewrite every later hash, and the head hash an operator exported to a notary
//! (`paystep ledger export`) then no longer matches. `verify_chain` recomputes the chain
//! and names the first broken link.
//!
//! Appending takes the lock of the chain's `audit_head` row until commit: it must be the
//! last lock an operation takes, so `engine::effects` appends after everything else. All
//! of an operation's entries go to one chain, the one its key (its process, or the subject
//! of its first change) hashes to: one head per operation, so no two writers wait for each
//! other in opposite orders, and every entry about a process or its steps is in the
//! process's chain, in order.
//! Storage only: which changes are worth an entry is the engine's business.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many chains the log has (the rows of `audit_head`, migration 0011).
pub const CHAINS: i64 = 16;

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
    pub chain: i64,
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
            self.chain,
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

/// A chain's last entry's seq and hash (seq 0 and the genesis hash for an empty chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub chain: i64,
    pub seq: i64,
    pub hash: String,
}

/// The chain an operation keyed by `key` appends to.
pub fn chain_for(key: &str) -> i64 {
    let digest = Sha256::digest(key.as_bytes());
    i64::from(digest[0]) % CHAINS
}

/// What an operator gives a notary: every chain's head seq, and one digest of all heads,
/// as `SEQ,SEQ,...:DIGEST` (one seq per chain, in chain order).
pub fn notarize(heads: &[Head]) -> String {
    let seqs: Vec<String> = heads.iter().map(|head| head.seq.to_string()).collect();
    format!("{}:{}", seqs.join(","), heads_digest(heads))
}

/// SHA-256 of `chain:seq:hash` lines, one per chain.
pub fn heads_digest(heads: &[Head]) -> String {
    let mut hasher = Sha256::new();
    for head in heads {
        hasher.update(format!("{}:{}:{}\n", head.chain, head.seq, head.hash).as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// Appends `changes` after the head of the chain `key` hashes to, in the caller's
/// transaction.
pub async fn append(
    conn: &mut AnyConnection,
    (origin, key): (&Origin, &str),
    now_ms: i64,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let chain = chain_for(key);
    // Moving the head first locks it until commit: concurrent writers append one after
    // another, each after the hash the last one left.
    let count = i64::try_from(changes.len()).expect("a few changes per operation");
    let row =
        sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE chain = $2 RETURNING seq, hash")
            .bind(count)
            .bind(chain)
            .fetch_one(&mut *conn)
            .await?;
    let last_seq: i64 = row.try_get(0)?;
    let mut prev_hash: String = row.try_get(1)?;
    let mut entries = Vec::with_capacity(changes.len());
    for (offset, change) in (1..).zip(changes) {
        let mut entry = Entry {
            chain,
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
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE chain = $2")
        .bind(&prev_hash)
        .bind(chain)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert(conn: &mut AnyConnection, entries: &[Entry]) -> Result<(), sqlx::Error> {
    const COLUMNS: usize = 12;
    let mut sql = String::from(
        "INSERT INTO audit_log (chain, seq, created_at_ms, actor, channel, action, subject_kind, \
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
            .bind(entry.chain)
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

/// Every chain's head, in chain order.
pub async fn heads(conn: &mut AnyConnection) -> Result<Vec<Head>, sqlx::Error> {
    let rows = sqlx::query("SELECT chain, seq, hash FROM audit_head ORDER BY chain")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Head {
                chain: row.try_get(0)?,
                seq: row.try_get(1)?,
                hash: row.try_get(2)?,
            })
        })
        .collect()
}

/// Up to `PAGE_ENTRIES` entries of `chain` after `after_seq` and up to `up_to_seq`, in
/// order.
pub async fn entries_between(
    conn: &mut AnyConnection,
    chain: i64,
    after_seq: i64,
    up_to_seq: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT chain, seq, created_at_ms, actor, channel, action, subject_kind, subject_id, \
         state_before, state_after, prev_hash, hash FROM audit_log WHERE chain = $1 \
         AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
    )
    .bind(chain)
    .bind(after_seq)
    .bind(up_to_seq)
    .bind(PAGE_ENTRIES)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Entry {
                chain: row.try_get(0)?,
                seq: row.try_get(1)?,
                created_at_ms: row.try_get(2)?,
                actor: row.try_get(3)?,
                channel: row.try_get(4)?,
                action: row.try_get(5)?,
                subject_kind: row.try_get(6)?,
                subject_id: row.try_get(7)?,
                state_before: row.try_get(8)?,
                state_after: row.try_get(9)?,
                prev_hash: row.try_get(10)?,
                hash: row.try_get(11)?,
            })
        })
        .collect()
}

/// What recomputing the chains found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub entries: i64,
    pub heads: Vec<Head>,
    /// The first broken link, in words naming the entry; `None` when every chain holds.
    pub first_broken_link: Option<String>,
}

/// A notarized state: each chain's seq then, and the digest of all heads then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notarized {
    pub seqs: Vec<i64>,
    pub digest: String,
}

/// Recomputes every chain from its first entry up to its head, checking that each entry
/// follows the one before it, that no seq is missing, and that the chain ends at its head.
/// A `notarized` state (exported earlier) must still be what the chains hold at its seqs.
/// Entries appended while it runs (after the heads it read first) are left for the next
/// run: a head and its entries commit together, so every entry up to it is there to read.
pub async fn verify_chain(
    conn: &mut AnyConnection,
    notarized: Option<&Notarized>,
) -> Result<ChainReport, sqlx::Error> {
    let heads = heads(conn).await?;
    let mut entries = 0;
    let mut then = Vec::with_capacity(heads.len());
    for head in &heads {
        let seq_then = notarized
            .and_then(|notarized| notarized.seqs.get(usize::try_from(head.chain).ok()?))
            .copied();
        let walked = walk(conn, head, seq_then).await?;
        entries += walked.entries;
        if walked.problem.is_some() {
            return Ok(ChainReport {
                entries,
                heads,
                first_broken_link: walked.problem,
            });
        }
        then.push(walked.at_notarized_seq);
    }
    let first_broken_link = notarized.and_then(|notarized| notarized_problem(notarized, &then));
    Ok(ChainReport {
        entries,
        heads,
        first_broken_link,
    })
}

/// One chain walked.
struct Walked {
    entries: i64,
    problem: Option<String>,
    /// The chain's head as of the notarized seq, when one was given and reached.
    at_notarized_seq: Option<Head>,
}

async fn walk(
    conn: &mut AnyConnection,
    head: &Head,
    notarized_seq: Option<i64>,
) -> Result<Walked, sqlx::Error> {
    let mut last = Head {
        chain: head.chain,
        seq: 0,
        hash: GENESIS_HASH.to_string(),
    };
    let mut walked = Walked {
        entries: 0,
        problem: None,
        at_notarized_seq: (notarized_seq == Some(0)).then(|| last.clone()),
    };
    loop {
        let page = entries_between(conn, head.chain, last.seq, head.seq).await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            if let Some(problem) = link_problem(&last, &entry) {
                walked.problem = Some(problem);
                return Ok(walked);
            }
            walked.entries += 1;
            last = Head {
                chain: entry.chain,
                seq: entry.seq,
                hash: entry.hash,
            };
            if notarized_seq == Some(last.seq) {
                walked.at_notarized_seq = Some(last.clone());
            }
        }
    }
    if &last != head {
        walked.problem = Some(format!(
            "audit chain {}: its head says entry {} with hash {}, but the chain ends at entry {} with hash {}",
            head.chain, head.seq, head.hash, last.seq, last.hash
        ));
    }
    Ok(walked)
}

/// Why `entry` does not follow `last`, if it does not.
fn link_problem(last: &Head, entry: &Entry) -> Option<String> {
    let name = format!(
        "audit entry {}/{} ({} on {} {})",
        entry.chain, entry.seq, entry.action, entry.subject_kind, entry.subject_id
    );
    if entry.seq != last.seq + 1 {
        return Some(format!(
            "{name}: entries {} to {} of its chain are missing",
            last.seq + 1,
            entry.seq - 1
        ));
    }
    if entry.prev_hash != last.hash {
        return Some(format!(
            "{name}: its prev_hash is not the hash of entry {}/{}; one of the two was changed",
            last.chain, last.seq
        ));
    }
    if entry.computed_hash() != entry.hash {
        return Some(format!("{name}: its contents do not match its hash"));
    }
    None
}

/// Whether the chains still hold the notarized heads.
fn notarized_problem(notarized: &Notarized, then: &[Option<Head>]) -> Option<String> {
    if notarized.seqs.len() != then.len() {
        return Some(format!(
            "the notarized head names {} chains; the log has {}",
            notarized.seqs.len(),
            then.len()
        ));
    }
    let Some(heads_then) = then.iter().cloned().collect::<Option<Vec<Head>>>() else {
        return Some("the notarized head is past the end of a chain; entries were removed".into());
    };
    if heads_digest(&heads_then) != notarized.digest {
        return Some(
            "the chains' hashes at the notarized seqs differ from the notarized head; the log was rewritten"
                .into(),
        );
    }
    None
}
