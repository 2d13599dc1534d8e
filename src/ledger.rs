//! The double-entry ledger: accounts and append-only transfers between them.
//!
//! Every movement of money is a transfer of a positive amount from a debit account to a
//! credit account of the same currency, written in the same transaction as the balance
//! updates. Balances are credits minus debits, so all balances of a currency sum to zero.
//! The debit side is a guarded UPDATE (`balance >= amount`), so a check and a charge are one
//! statement: two concurrent transfers can never overdraw an account, on either database.
//! Account ids are cached, so a transfer is three statements: debit, credit, entry.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::domain::{Currency, Minor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// Where deposited money comes from; the only account allowed to go negative.
    OperatorFunding,
    CustomerCredit,
    /// One per process: the released amount that is not yet charged (the escrow).
    ProcessHold,
    RetailerReceivable,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::OperatorFunding => "operator_funding",
            AccountKind::CustomerCredit => "customer_credit",
            AccountKind::ProcessHold => "process_hold",
            AccountKind::RetailerReceivable => "retailer_receivable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Deposit,
    Release,
    Step,
    Return,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Deposit => "deposit",
            TransferKind::Release => "release",
            TransferKind::Step => "step",
            TransferKind::Return => "return",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the debit account has less than the amount")]
    InsufficientFunds,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One transfer to post.
#[derive(Clone, Copy)]
pub struct Transfer<'a> {
    pub kind: TransferKind,
    pub currency: Currency,
    pub debit: (AccountKind, &'a str),
    pub credit: (AccountKind, &'a str),
    pub amount: Minor,
    pub process_id: Option<&'a str>,
    pub step_id: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub now_ms: i64,
}

/// The balances a posted transfer left on its two accounts.
#[derive(Debug, Clone, Copy)]
pub struct Posted {
    pub debit_balance: Minor,
    pub credit_balance: Minor,
}

/// The ledger's entry point: posts transfers, remembering account ids between them.
#[derive(Default)]
pub struct Ledger {
    accounts: AccountCache,
}

/// Account ids by (kind, owner, currency). Accounts are never deleted or renamed, so an id
/// once seen stays right, except one seen in a transaction that later rolled back. Every use
/// is therefore checked: the UPDATE by id must match one row, and a miss re-resolves.
#[derive(Default)]
struct AccountCache {
    ids: Mutex<HashMap<AccountKey, String>>,
}

type AccountKey = (AccountKind, String, &'static str);

/// Past this many ids the cache starts again: one hold per process would grow it forever.
const ACCOUNT_CACHE_ENTRIES_MAX: usize = 65_536;

impl AccountCache {
    fn get(&self, key: &AccountKey) -> Option<String> {
        self.lock().get(key).cloned()
    }

    fn remember(&self, key: AccountKey, id: String) {
        let mut ids = self.lock();
        if ids.len() >= ACCOUNT_CACHE_ENTRIES_MAX {
            ids.clear();
        }
        ids.insert(key, id);
    }

    fn forget(&self, key: &AccountKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountKey, String>> {
        // A panic while holding this lock cannot leave a wrong id behind (inserts are whole).
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Which side of a transfer an account is on.
#[derive(Clone, Copy)]
enum Side {
    Debit,
    Credit,
}

impl Ledger {
    /// Posts a transfer: debit (guarded against going negative), credit, and the entry.
    /// Must run inside the caller's transaction; on error the caller rolls back.
    pub async fn post(
        &self,
        conn: &mut AnyConnection,
        transfer: Transfer<'_>,
    ) -> Result<Posted, LedgerError> {
        assert!(transfer.amount > 0, "a transfer moves a positive amount");
        #[cfg(feature = "fault-injection")]
        let transfer = crate::faults::tamper(transfer);
        let (debit_id, debit_balance) = self.apply(conn, &transfer, Side::Debit).await?;
        let (credit_id, credit_balance) = self.apply(conn, &transfer, Side::Credit).await?;
        sqlx::query(
            "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, currency, \
             process_id, step_id, reference, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(transfer.kind.as_str())
        .bind(&debit_id)
        .bind(&credit_id)
        .bind(transfer.amount)
        .bind(transfer.currency.code())
        .bind(transfer.process_id)
        .bind(transfer.step_id)
        .bind(transfer.reference)
        .bind(transfer.now_ms)
        .execute(&mut *conn)
        .await?;
        Ok(Posted {
            debit_balance,
            credit_balance,
        })
    }

    /// Moves one side's balance and returns the account's id. A cached id that matches no
    /// row is forgotten and the account resolved again, once.
    async fn apply(
        &self,
        conn: &mut AnyConnection,
        transfer: &Transfer<'_>,
        side: Side,
    ) -> Result<(String, Minor), LedgerError> {
        let (kind, owner_id) = match side {
            Side::Debit => transfer.debit,
            Side::Credit => transfer.credit,
        };
        let key = (kind, owner_id.to_string(), transfer.currency.code());
        if let Some(id) = self.accounts.get(&key) {
            if let Some(balance) = update_balance(conn, &id, transfer.amount, side).await? {
                return Ok((id, balance));
            }
            self.accounts.forget(&key);
        }
        let id = account_id(conn, kind, owner_id, transfer.currency, transfer.now_ms).await?;
        let Some(balance) = update_balance(conn, &id, transfer.amount, side).await? else {
            return Err(match side {
                Side::Debit => LedgerError::InsufficientFunds,
                Side::Credit => LedgerError::Database(sqlx::Error::RowNotFound),
            });
        };
        self.accounts.remember(key, id.clone());
        Ok((id, balance))
    }
}

/// One guarded statement per side: a debit only where the balance covers it (but for the
/// operator's funding account). The balance after it; `None` when no row matched.
async fn update_balance(
    conn: &mut AnyConnection,
    account_id: &str,
    amount: Minor,
    side: Side,
) -> Result<Option<Minor>, sqlx::Error> {
    let statement = match side {
        Side::Debit => {
            "UPDATE accounts SET balance = balance - $1 \
             WHERE id = $2 AND (kind = 'operator_funding' OR balance >= $1) RETURNING balance"
        }
        Side::Credit => {
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance"
        }
    };
    sqlx::query_scalar(statement)
        .bind(amount)
        .bind(account_id)
        .fetch_optional(&mut *conn)
        .await
}

/// The id of the account, created on first use.
pub async fn account_id(
    conn: &mut AnyConnection,
    kind: AccountKind,
    owner_id: &str,
    currency: Currency,
    now_ms: i64,
) -> Result<String, sqlx::Error> {
    let select = "SELECT id FROM accounts WHERE kind = $1 AND owner_id = $2 AND currency = $3";
    let existing: Option<String> = sqlx::query_scalar(select)
        .bind(kind.as_str())
        .bind(owner_id)
        .bind(currency.code())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    sqlx::query(
        "INSERT INTO accounts (id, kind, owner_id, currency, balance, created_at_ms) \
         VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (kind, owner_id, currency) DO NOTHING",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(kind.as_str())
    .bind(owner_id)
    .bind(currency.code())
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(select)
        .bind(kind.as_str())
        .bind(owner_id)
        .bind(currency.code())
        .fetch_one(&mut *conn)
        .await
}

/// The balance of an account, zero when it does not exist yet.
pub async fn balance(
    conn: &mut AnyConnection,
    kind: AccountKind,
    owner_id: &str,
    currency: Currency,
) -> Result<Minor, sqlx::Error> {
    let balance: Option<i64> = sqlx::query_scalar(
        "SELECT balance FROM accounts WHERE kind = $1 AND owner_id = $2 AND currency = $3",
    )
    .bind(kind.as_str())
    .bind(owner_id)
    .bind(currency.code())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(balance.unwrap_or(0))
}

/// The result of checking every ledger invariant.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checks: Vec<CheckResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    /// At most a few examples of what is wrong.
    pub violations: Vec<String>,
}

const VIOLATIONS_SHOWN_MAX: i64 = 20;

/// Each check is a query that returns one text row per violation.
const CHECKS: [(&str, &str); 8] = [
    (
        "balances_sum_to_zero_per_currency",
        "SELECT currency || ': ' || CAST(SUM(balance) AS TEXT) FROM accounts \
         GROUP BY currency HAVING SUM(balance) <> 0",
    ),
    (
        "balances_equal_their_transfers",
        // One pass over the transfers per side, grouped: a subquery per account would
        // scan every transfer for every account (no index on the account columns).
        "SELECT a.id || ' balance ' || CAST(a.balance AS TEXT) FROM accounts a \
         LEFT JOIN (SELECT credit_account_id AS account_id, SUM(amount) AS total \
           FROM transfers GROUP BY credit_account_id) c ON c.account_id = a.id \
         LEFT JOIN (SELECT debit_account_id AS account_id, SUM(amount) AS total \
           FROM transfers GROUP BY debit_account_id) d ON d.account_id = a.id \
         WHERE a.balance <> COALESCE(c.total, 0) - COALESCE(d.total, 0)",
    ),
    (
        "transfers_stay_in_one_currency",
        "SELECT t.id FROM transfers t JOIN accounts d ON d.id = t.debit_account_id \
         JOIN accounts c ON c.id = t.credit_account_id \
         WHERE d.currency <> t.currency OR c.currency <> t.currency",
    ),
    (
        "no_credit_or_hold_is_negative",
        "SELECT kind || ' ' || id || ' ' || CAST(balance AS TEXT) FROM accounts \
         WHERE kind <> 'operator_funding' AND balance < 0",
    ),
    (
        "every_hold_equals_its_remaining_amount",
        "SELECT p.id || ' remaining ' || CAST(p.remaining AS TEXT) FROM processes p \
         WHERE p.remaining <> COALESCE((SELECT a.balance FROM accounts a \
           WHERE a.kind = 'process_hold' AND a.owner_id = p.id AND a.currency = p.currency), 0) \
         UNION ALL \
         SELECT a.owner_id || ' hold without a process' FROM accounts a \
         WHERE a.kind = 'process_hold' AND NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = a.owner_id)",
    ),
    (
        "every_charged_step_is_charged_exactly_once",
        "SELECT s.id FROM steps s WHERE s.status = 'charged' AND \
           (SELECT COUNT(*) FROM transfers t WHERE t.step_id = s.id AND t.kind = 'step' \
            AND t.amount = s.amount) <> 1 \
         UNION ALL \
         SELECT t.id FROM transfers t WHERE t.kind = 'step' AND NOT EXISTS \
           (SELECT 1 FROM steps s WHERE s.id = t.step_id AND s.status = 'charged')",
    ),
    (
        "process_totals_equal_their_transfers",
        "SELECT p.id FROM processes p WHERE \
           p.charged <> COALESCE((SELECT SUM(t.amount) FROM transfers t \
             WHERE t.process_id = p.id AND t.kind = 'step'), 0) \
        OR p.released <> COALESCE((SELECT SUM(t.amount) FROM transfers t \
             WHERE t.process_id = p.id AND t.kind = 'release'), 0) \
        OR p.returned <> COALESCE((SELECT SUM(t.amount) FROM transfers t \
             WHERE t.process_id = p.id AND t.kind = 'return'), 0)",
    ),
    (
        "ended_processes_hold_nothing",
        "SELECT id || ' ' || status FROM processes \
         WHERE status IN ('closed', 'declined', 'expired') AND remaining <> 0",
    ),
];

/// Checks every invariant, and that the audit log is an unbroken chain. Reads only; safe
/// to run beside a live daemon.
pub async fn verify(conn: &mut AnyConnection) -> Result<VerifyReport, sqlx::Error> {
    verify_with(conn, None).await
}

/// `verify`, also checking that the chain still holds a head exported to a notary.
pub async fn verify_with(
    conn: &mut AnyConnection,
    notarized: Option<&crate::audit::Notarized>,
) -> Result<VerifyReport, sqlx::Error> {
    let mut checks = Vec::with_capacity(CHECKS.len() + 1);
    for (name, query) in CHECKS {
        let rows = sqlx::query(&format!("{query} LIMIT {VIOLATIONS_SHOWN_MAX}"))
            .fetch_all(&mut *conn)
            .await?;
        let violations: Vec<String> = rows
            .iter()
            .map(|row| {
                row.try_get::<String, _>(0)
                    .unwrap_or_else(|_| "?".to_string())
            })
            .collect();
        checks.push(CheckResult {
            name,
            ok: violations.is_empty(),
            violations,
        });
    }
    let chain = crate::audit::verify_chain(conn, notarized).await?;
    checks.push(CheckResult {
        name: "audit_log_is_an_unbroken_chain",
        ok: chain.first_broken_link.is_none(),
        violations: chain.first_broken_link.into_iter().collect(),
    });
    Ok(VerifyReport {
        ok: checks.iter().all(|check| check.ok),
        checks,
    })
}
