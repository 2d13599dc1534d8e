//! What the database shows, against the model: after every operation for what it touched
//! (each such process with its steps, pending request, hold and transfers; each such
//! customer's credit and PIN count; each such retailer's receivable and its new events),
//! and now and then for everything (`audit`).

use std::collections::{BTreeMap, HashMap};

use futures::future::join_all;
use sqlx::{AnyPool, Row};

use super::harness::Registry;
use super::model::{Event, Model, StepStatus, Touched};

type Checked = Result<(), String>;

fn db(error: sqlx::Error) -> String {
    format!("database error while checking: {error}")
}

/// A process as the database has it.
#[derive(Debug, Clone)]
pub struct ProcessSeen {
    status: String,
    customer_id: Option<String>,
    release_requested: i64,
    released: i64,
    charged: i64,
    remaining: i64,
    returned: i64,
    step_count: i64,
    decline_reason: Option<String>,
    expires_at_ms: i64,
    pre_expiry_notified: i64,
    hold: Option<i64>,
    /// The sums of its release, step and return transfers.
    transfers: (i64, i64, i64),
    steps: Vec<(i64, i64, String, Option<String>)>,
    /// The pending request: first or top-up, amount, wrong PINs, expiry, its step's number.
    pending: Option<(String, i64, i64, i64, Option<i64>)>,
}

#[derive(Debug, Clone)]
pub struct CustomerSeen {
    credit: Option<i64>,
    pin_failures: i64,
    locked_until_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RetailerSeen {
    receivable: Option<i64>,
    /// Events after the last one checked: seq, type, process id.
    events: Vec<(i64, String, Option<String>)>,
}

/// What the database showed after an operation, read once and compared with every model
/// that could explain the answers.
#[derive(Default)]
pub struct Seen {
    processes: HashMap<usize, ProcessSeen>,
    customers: HashMap<usize, CustomerSeen>,
    retailers: HashMap<usize, RetailerSeen>,
}

/// A process with its hold, its transfers' sums and its pending request, in one statement
/// (each subquery runs on an index).
const PROCESS: &str = "SELECT p.status, p.customer_id, p.release_requested, p.released, p.charged, \
     p.remaining, p.returned, p.step_count, p.decline_reason, p.expires_at_ms, p.pre_expiry_notified, \
     (SELECT a.balance FROM accounts a WHERE a.kind = 'process_hold' AND a.owner_id = p.id \
        AND a.currency = p.currency) AS hold, \
     (SELECT CAST(COALESCE(SUM(t.amount), 0) AS BIGINT) FROM transfers t \
        WHERE t.process_id = p.id AND t.kind = 'release') AS released_by_transfers, \
     (SELECT CAST(COALESCE(SUM(t.amount), 0) AS BIGINT) FROM transfers t \
        WHERE t.process_id = p.id AND t.kind = 'step') AS charged_by_transfers, \
     (SELECT CAST(COALESCE(SUM(t.amount), 0) AS BIGINT) FROM transfers t \
        WHERE t.process_id = p.id AND t.kind = 'return') AS returned_by_transfers, \
     (SELECT c.kind FROM confirmations c WHERE c.process_id = p.id AND c.status = 'pending') \
        AS pending_kind, \
     (SELECT c.amount FROM confirmations c WHERE c.process_id = p.id AND c.status = 'pending') \
        AS pending_amount, \
     (SELECT c.pin_failures FROM confirmations c WHERE c.process_id = p.id \
        AND c.status = 'pending') AS pending_pin_failures, \
     (SELECT c.expires_at_ms FROM confirmations c WHERE c.process_id = p.id \
        AND c.status = 'pending') AS pending_expires_at_ms, \
     (SELECT s.number FROM confirmations c JOIN steps s ON s.id = c.step_id \
        WHERE c.process_id = p.id AND c.status = 'pending') AS pending_step \
     FROM processes p WHERE p.id = $1";

const STEPS: &str =
    "SELECT number, amount, status, decline_reason FROM steps WHERE process_id = $1 ORDER BY number";

const CUSTOMER: &str = "SELECT c.pin_failures, c.pin_locked_until_ms, \
     (SELECT a.balance FROM accounts a WHERE a.kind = 'customer_credit' AND a.owner_id = c.id \
        AND a.currency = 'EUR') AS credit \
     FROM customers c WHERE c.id = $1";

/// More new events than one operation can cause: the read is bounded all the same.
const EVENTS_READ_MAX: i64 = 10_000;

/// A retailer's receivable, and its events after the last one checked (a row with no
/// event when there are none).
const RETAILER: &str = "SELECT r.receivable, e.seq, e.type, e.process_id FROM \
     (SELECT (SELECT a.balance FROM accounts a WHERE a.kind = 'retailer_receivable' \
        AND a.owner_id = $1 AND a.currency = 'EUR') AS receivable) r \
     LEFT JOIN (SELECT seq, type, process_id FROM events WHERE retailer_id = $1 AND seq > $2 \
        ORDER BY seq LIMIT $3) e ON 1 = 1 ORDER BY e.seq";

impl Seen {
    /// Reads whatever of `touched` is not read yet, all at once.
    pub async fn read(
        &mut self,
        pool: &AnyPool,
        registry: &Registry,
        last_seq: &[i64],
        touched: &Touched,
    ) -> Checked {
        let processes: Vec<usize> = touched
            .processes
            .iter()
            .copied()
            .filter(|process| !self.processes.contains_key(process))
            .collect();
        let customers: Vec<usize> = touched
            .customers
            .iter()
            .copied()
            .filter(|customer| !self.customers.contains_key(customer))
            .collect();
        let retailers: Vec<usize> = touched
            .retailers
            .iter()
            .copied()
            .filter(|retailer| !self.retailers.contains_key(retailer))
            .collect();
        let (processes_seen, customers_seen, retailers_seen) = futures::join!(
            join_all(
                processes
                    .iter()
                    .map(|&process| read_process(pool, &registry.processes[process]))
            ),
            join_all(
                customers
                    .iter()
                    .map(|&customer| read_customer(pool, &registry.customers[customer]))
            ),
            join_all(retailers.iter().map(|&retailer| read_retailer(
                pool,
                &registry.retailers[retailer].0,
                last_seq[retailer]
            ))),
        );
        for (process, seen) in processes.into_iter().zip(processes_seen) {
            self.processes.insert(process, seen?);
        }
        for (customer, seen) in customers.into_iter().zip(customers_seen) {
            self.customers.insert(customer, seen?);
        }
        for (retailer, seen) in retailers.into_iter().zip(retailers_seen) {
            self.retailers.insert(retailer, seen?);
        }
        Ok(())
    }

    /// Compares what was read with `model` (for what `model.touched` names), and on success
    /// returns each retailer's last event seq now checked.
    pub fn compare(
        &self,
        model: &Model,
        registry: &Registry,
        last_seq: &[i64],
    ) -> Result<Vec<(usize, i64)>, String> {
        for &process in &model.touched.processes {
            let seen = self
                .processes
                .get(&process)
                .ok_or("a touched process was not read")?;
            compare_process(model, registry, process, seen).map_err(|error| {
                format!(
                    "process {process} ({}): {error}",
                    registry.processes[process]
                )
            })?;
        }
        for &customer in &model.touched.customers {
            let seen = self
                .customers
                .get(&customer)
                .ok_or("a touched customer was not read")?;
            let row = &model.customers[customer];
            let got = (
                seen.credit.unwrap_or(0),
                seen.pin_failures,
                seen.locked_until_ms,
            );
            let expected = (row.credit, row.pin_failures, row.locked_until_ms);
            if got != expected {
                return Err(format!(
                    "customer {customer}: (credit, wrong PINs in a row, locked until) is {got:?}, \
                     the model has {expected:?}"
                ));
            }
        }
        let mut expected_events: BTreeMap<usize, Vec<Event>> = BTreeMap::new();
        for event in &model.events {
            expected_events
                .entry(event.retailer)
                .or_default()
                .push(event.clone());
        }
        let mut seqs = Vec::new();
        for (&retailer, events) in &expected_events {
            if !model.touched.retailers.contains(&retailer) {
                return Err(format!(
                    "retailer {retailer} has events but was not touched: {events:?}"
                ));
            }
        }
        for &retailer in &model.touched.retailers {
            let seen = self
                .retailers
                .get(&retailer)
                .ok_or("a touched retailer was not read")?;
            let receivable = seen.receivable.unwrap_or(0);
            if receivable != model.retailers[retailer].receivable {
                return Err(format!(
                    "retailer {retailer}: receivable {receivable}, the model has {}",
                    model.retailers[retailer].receivable
                ));
            }
            let mut next = last_seq[retailer];
            let mut got = Vec::new();
            for (seq, kind, process_id) in &seen.events {
                if *seq != next + 1 {
                    return Err(format!(
                        "retailer {retailer}'s events jump from seq {next} to {seq}"
                    ));
                }
                next = *seq;
                let process = process_id
                    .as_ref()
                    .and_then(|id| registry.process_index.get(id))
                    .copied()
                    .unwrap_or(usize::MAX);
                got.push((process, kind.clone()));
            }
            let mut expected: Vec<(usize, String)> = expected_events
                .get(&retailer)
                .map(|events| {
                    events
                        .iter()
                        .map(|event| (event.process, event.kind.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            expected.sort();
            if got != expected {
                return Err(format!(
                    "retailer {retailer}'s new events (process, type) are {got:?}, the model \
                     expects {expected:?}"
                ));
            }
            seqs.push((retailer, next));
        }
        Ok(seqs)
    }
}

async fn read_customer(pool: &AnyPool, id: &str) -> Result<CustomerSeen, String> {
    let row = sqlx::query(CUSTOMER)
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok(CustomerSeen {
        pin_failures: row.try_get(0).map_err(db)?,
        locked_until_ms: row.try_get(1).map_err(db)?,
        credit: row.try_get(2).map_err(db)?,
    })
}

async fn read_retailer(pool: &AnyPool, id: &str, after: i64) -> Result<RetailerSeen, String> {
    let rows = sqlx::query(RETAILER)
        .bind(id)
        .bind(after)
        .bind(EVENTS_READ_MAX)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let mut receivable = None;
    let mut events = Vec::new();
    for row in &rows {
        receivable = row.try_get(0).map_err(db)?;
        let seq: Option<i64> = row.try_get(1).map_err(db)?;
        if let Some(seq) = seq {
            events.push((
                seq,
                row.try_get(2).map_err(db)?,
                row.try_get(3).map_err(db)?,
            ));
        }
    }
    Ok(RetailerSeen { receivable, events })
}

async fn read_process(pool: &AnyPool, id: &str) -> Result<ProcessSeen, String> {
    let row = sqlx::query(PROCESS)
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let step_count: i64 = row.try_get(7).map_err(db)?;
    let steps = if step_count == 0 {
        Vec::new()
    } else {
        sqlx::query(STEPS)
            .bind(id)
            .fetch_all(pool)
            .await
            .map_err(db)?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db)?
    };
    let pending_kind: Option<String> = row.try_get(15).map_err(db)?;
    let pending = match pending_kind {
        None => None,
        Some(kind) => Some((
            kind,
            row.try_get::<Option<i64>, _>(16).map_err(db)?.unwrap_or(-1),
            row.try_get::<Option<i64>, _>(17).map_err(db)?.unwrap_or(-1),
            row.try_get::<Option<i64>, _>(18).map_err(db)?.unwrap_or(-1),
            row.try_get(19).map_err(db)?,
        )),
    };
    Ok(ProcessSeen {
        status: row.try_get(0).map_err(db)?,
        customer_id: row.try_get(1).map_err(db)?,
        release_requested: row.try_get(2).map_err(db)?,
        released: row.try_get(3).map_err(db)?,
        charged: row.try_get(4).map_err(db)?,
        remaining: row.try_get(5).map_err(db)?,
        returned: row.try_get(6).map_err(db)?,
        step_count,
        decline_reason: row.try_get(8).map_err(db)?,
        expires_at_ms: row.try_get(9).map_err(db)?,
        pre_expiry_notified: row.try_get(10).map_err(db)?,
        hold: row.try_get(11).map_err(db)?,
        transfers: (
            row.try_get(12).map_err(db)?,
            row.try_get(13).map_err(db)?,
            row.try_get(14).map_err(db)?,
        ),
        steps,
        pending,
    })
}

fn compare_process(
    model: &Model,
    registry: &Registry,
    process: usize,
    seen: &ProcessSeen,
) -> Checked {
    let row = &model.processes[process];
    let customer = row
        .customer
        .map(|customer| registry.customers[customer].clone());
    let mismatch = |what: &str, got: String, expected: String| -> Checked {
        if got == expected {
            Ok(())
        } else {
            Err(format!("{what} is {got}, the model has {expected}"))
        }
    };
    mismatch("status", seen.status.clone(), row.status.as_str().into())?;
    mismatch(
        "customer",
        format!("{:?}", seen.customer_id),
        format!("{customer:?}"),
    )?;
    let amounts = (
        seen.release_requested,
        seen.released,
        seen.charged,
        seen.returned,
        seen.remaining,
    );
    let expected = (
        row.release_requested,
        row.released,
        row.charged,
        row.returned,
        row.remaining(),
    );
    mismatch(
        "(release requested, released, charged, returned, remaining)",
        format!("{amounts:?}"),
        format!("{expected:?}"),
    )?;
    // The ledger: the hold equals the remaining amount, and the process's transfers add up
    // to its totals.
    mismatch(
        "the hold",
        seen.hold.unwrap_or(0).to_string(),
        row.remaining().to_string(),
    )?;
    mismatch(
        "the (release, step, return) transfers",
        format!("{:?}", seen.transfers),
        format!("{:?}", (row.released, row.charged, row.returned)),
    )?;
    mismatch(
        "the step count",
        seen.step_count.to_string(),
        row.steps.len().to_string(),
    )?;
    mismatch(
        "the decline reason",
        format!("{:?}", seen.decline_reason),
        format!("{:?}", row.decline_reason),
    )?;
    if row.status.is_open() {
        mismatch(
            "the expiry",
            seen.expires_at_ms.to_string(),
            row.expires_at_ms.to_string(),
        )?;
        mismatch(
            "the expiry notice sent",
            (seen.pre_expiry_notified != 0).to_string(),
            row.expiry_announced.to_string(),
        )?;
    }
    let steps: Vec<(i64, String, Option<String>)> = seen
        .steps
        .iter()
        .map(|(_, amount, status, reason)| (*amount, status.clone(), reason.clone()))
        .collect();
    let expected_steps: Vec<(i64, String, Option<String>)> = row
        .steps
        .iter()
        .map(|step| {
            (
                step.amount,
                step.status.as_str().to_string(),
                step.reason.map(Into::into),
            )
        })
        .collect();
    mismatch(
        "the steps",
        format!("{steps:?}"),
        format!("{expected_steps:?}"),
    )?;
    let numbers_in_order = seen
        .steps
        .iter()
        .enumerate()
        .all(|(index, step)| step.0 == index as i64 + 1);
    if !numbers_in_order {
        return Err(format!(
            "the steps are not numbered 1, 2, ...: {:?}",
            seen.steps
        ));
    }
    let expected_pending = row.pending().map(|request| {
        let request = &row.requests[request];
        (
            if request.initial { "initial" } else { "top_up" }.to_string(),
            request.amount,
            request.pin_failures,
            request.expires_at_ms,
            request.step.map(|step| step as i64 + 1),
        )
    });
    mismatch(
        "the pending request (kind, amount, wrong PINs, expiry, step)",
        format!("{:?}", seen.pending),
        format!("{expected_pending:?}"),
    )?;
    // A charged step was charged by one transfer of its amount (checked in bulk by the
    // audit); here: the charged steps add up to the process's charged total.
    let charged: i64 = row
        .steps
        .iter()
        .filter(|step| step.status == StepStatus::Charged)
        .map(|step| step.amount)
        .sum();
    if charged != row.charged {
        return Err(format!(
            "the model's own steps add up to {charged} charged, its total says {}",
            row.charged
        ));
    }
    Ok(())
}

/// Everything the database holds, against the model, with one scan per table (so the cost
/// grows with the data, not with its square): every process, account and customer, every
/// transfer summed per account and per process, the charged steps against the step
/// transfers, and each retailer's events.
pub async fn audit(
    pool: &AnyPool,
    model: &Model,
    registry: &Registry,
    last_seq: &[i64],
) -> Checked {
    let rows = sqlx::query(
        "SELECT id, status, release_requested, released, charged, remaining, returned, step_count \
         FROM processes",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    if rows.len() != model.processes.len() {
        return Err(format!(
            "the database has {} processes, the model {}",
            rows.len(),
            model.processes.len()
        ));
    }
    let mut remaining_by_id: HashMap<String, i64> = HashMap::new();
    for row in &rows {
        let id: String = row.try_get(0).map_err(db)?;
        let process = *registry
            .process_index
            .get(&id)
            .ok_or_else(|| format!("process {id} is not one the simulation opened"))?;
        let expected = &model.processes[process];
        let got: (String, i64, i64, i64, i64, i64, i64) = (
            row.try_get(1).map_err(db)?,
            row.try_get(2).map_err(db)?,
            row.try_get(3).map_err(db)?,
            row.try_get(4).map_err(db)?,
            row.try_get(5).map_err(db)?,
            row.try_get(6).map_err(db)?,
            row.try_get(7).map_err(db)?,
        );
        let want = (
            expected.status.as_str().to_string(),
            expected.release_requested,
            expected.released,
            expected.charged,
            expected.remaining(),
            expected.returned,
            expected.steps.len() as i64,
        );
        if got != want {
            return Err(format!(
                "audit: process {process} ({id}) is (status, release requested, released, charged, \
                 remaining, returned, steps) {got:?}, the model has {want:?}"
            ));
        }
        if !expected.status.is_open() && expected.remaining() != 0 {
            return Err(format!("the model's ended process {process} holds money"));
        }
        remaining_by_id.insert(id, got.4);
    }

    let accounts = sqlx::query("SELECT id, kind, owner_id, currency, balance FROM accounts")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let sums = |side: &'static str| {
        let pool = pool.clone();
        async move {
            let rows = sqlx::query(&format!(
                "SELECT {side}_account_id, CAST(SUM(amount) AS BIGINT) FROM transfers GROUP BY {side}_account_id"
            ))
            .fetch_all(&pool)
            .await
            .map_err(db)?;
            rows.iter()
                .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
                .collect::<Result<HashMap<String, i64>, sqlx::Error>>()
                .map_err(db)
        }
    };
    let debits = sums("debit").await?;
    let credits = sums("credit").await?;
    let mut total = 0_i64;
    let mut credits_seen: HashMap<usize, i64> = HashMap::new();
    let mut receivables_seen: HashMap<usize, i64> = HashMap::new();
    let mut funding = 0;
    for account in &accounts {
        let id: String = account.try_get(0).map_err(db)?;
        let kind: String = account.try_get(1).map_err(db)?;
        let owner: String = account.try_get(2).map_err(db)?;
        let currency: String = account.try_get(3).map_err(db)?;
        let balance: i64 = account.try_get(4).map_err(db)?;
        if currency != "EUR" {
            return Err(format!(
                "account {id} is in {currency}; the simulation uses EUR"
            ));
        }
        total += balance;
        let by_transfers = credits.get(&id).unwrap_or(&0) - debits.get(&id).unwrap_or(&0);
        if balance != by_transfers {
            return Err(format!(
                "audit: account {id} ({kind}) has balance {balance}, its transfers add up to {by_transfers}"
            ));
        }
        if kind != "operator_funding" && balance < 0 {
            return Err(format!(
                "audit: account {id} ({kind}) is negative: {balance}"
            ));
        }
        match kind.as_str() {
            "process_hold" => {
                let remaining = remaining_by_id
                    .get(&owner)
                    .ok_or_else(|| format!("audit: a hold without a process: {owner}"))?;
                if *remaining != balance {
                    return Err(format!(
                        "audit: the hold of {owner} is {balance}, its remaining amount {remaining}"
                    ));
                }
            }
            "customer_credit" => {
                let customer = *registry
                    .customer_index
                    .get(&owner)
                    .ok_or_else(|| format!("audit: credit of an unknown customer {owner}"))?;
                credits_seen.insert(customer, balance);
            }
            "retailer_receivable" => {
                let retailer = *registry
                    .retailer_index
                    .get(&owner)
                    .ok_or_else(|| format!("audit: receivable of an unknown retailer {owner}"))?;
                receivables_seen.insert(retailer, balance);
            }
            "operator_funding" => funding += balance,
            other => return Err(format!("audit: an account of kind {other}")),
        }
    }
    if total != 0 {
        return Err(format!("audit: the balances add up to {total}, not zero"));
    }
    if funding != model.funding {
        return Err(format!(
            "audit: the operator's funding is {funding}, the model has {}",
            model.funding
        ));
    }
    for (customer, expected) in model.customers.iter().enumerate() {
        let got = credits_seen.get(&customer).copied().unwrap_or(0);
        if got != expected.credit {
            return Err(format!(
                "audit: customer {customer}'s credit is {got}, the model has {}",
                expected.credit
            ));
        }
    }
    for (retailer, expected) in model.retailers.iter().enumerate() {
        let got = receivables_seen.get(&retailer).copied().unwrap_or(0);
        if got != expected.receivable {
            return Err(format!(
                "audit: retailer {retailer}'s receivable is {got}, the model has {}",
                expected.receivable
            ));
        }
    }

    let by_process = sqlx::query(
        "SELECT process_id, kind, CAST(SUM(amount) AS BIGINT) FROM transfers \
         WHERE process_id IS NOT NULL GROUP BY process_id, kind",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut totals: HashMap<usize, (i64, i64, i64)> = HashMap::new();
    for row in &by_process {
        let id: String = row.try_get(0).map_err(db)?;
        let kind: String = row.try_get(1).map_err(db)?;
        let sum: i64 = row.try_get(2).map_err(db)?;
        let process = *registry
            .process_index
            .get(&id)
            .ok_or_else(|| format!("audit: transfers of an unknown process {id}"))?;
        let entry = totals.entry(process).or_default();
        match kind.as_str() {
            "release" => entry.0 = sum,
            "step" => entry.1 = sum,
            "return" => entry.2 = sum,
            other => return Err(format!("audit: a {other} transfer names process {id}")),
        }
    }
    for (process, expected) in model.processes.iter().enumerate() {
        let got = totals.get(&process).copied().unwrap_or_default();
        let want = (expected.released, expected.charged, expected.returned);
        if got != want {
            return Err(format!(
                "audit: process {process}'s (release, step, return) transfers add up to {got:?}, \
                 the model has {want:?}"
            ));
        }
    }

    // Every charged step has exactly one step transfer of its amount, and every step
    // transfer is a charged step's.
    let charged_steps: i64 = model
        .processes
        .iter()
        .flat_map(|process| &process.steps)
        .filter(|step| step.status == StepStatus::Charged)
        .count() as i64;
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM steps WHERE status = 'charged'), \
                (SELECT COUNT(*) FROM transfers WHERE kind = 'step'), \
                (SELECT COUNT(*) FROM transfers t JOIN steps s ON s.id = t.step_id \
                   WHERE t.kind = 'step' AND s.status = 'charged' AND s.amount = t.amount)",
    )
    .fetch_one(pool)
    .await
    .map_err(db)?;
    if counts != (charged_steps, charged_steps, charged_steps) {
        return Err(format!(
            "audit: (charged steps, step transfers, step transfers matching a charged step) are \
             {counts:?}, the model has {charged_steps} charged steps"
        ));
    }

    let events =
        sqlx::query("SELECT retailer_id, COUNT(*), MAX(seq) FROM events GROUP BY retailer_id")
            .fetch_all(pool)
            .await
            .map_err(db)?;
    let mut seen_retailers = 0;
    for row in &events {
        let id: String = row.try_get(0).map_err(db)?;
        let count: i64 = row.try_get(1).map_err(db)?;
        let max: i64 = row.try_get(2).map_err(db)?;
        let retailer = *registry
            .retailer_index
            .get(&id)
            .ok_or_else(|| format!("audit: events of an unknown retailer {id}"))?;
        seen_retailers += 1;
        if (count, max) != (last_seq[retailer], last_seq[retailer]) {
            return Err(format!(
                "audit: retailer {retailer} has {count} events up to seq {max}; {} were checked",
                last_seq[retailer]
            ));
        }
    }
    let with_events = last_seq.iter().filter(|&&seq| seq > 0).count();
    if seen_retailers != with_events {
        return Err(format!(
            "audit: {seen_retailers} retailers have events, {with_events} should"
        ));
    }

    let customers = sqlx::query("SELECT id, pin_failures, pin_locked_until_ms FROM customers")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    if customers.len() != model.customers.len() {
        return Err(format!(
            "audit: {} customers, the model has {}",
            customers.len(),
            model.customers.len()
        ));
    }
    for row in &customers {
        let id: String = row.try_get(0).map_err(db)?;
        let customer = *registry
            .customer_index
            .get(&id)
            .ok_or_else(|| format!("audit: unknown customer {id}"))?;
        let got: (i64, Option<i64>) = (row.try_get(1).map_err(db)?, row.try_get(2).map_err(db)?);
        let expected = &model.customers[customer];
        if got != (expected.pin_failures, expected.locked_until_ms) {
            return Err(format!(
                "audit: customer {customer}'s (wrong PINs, locked until) is {got:?}, the model has \
                 {:?}",
                (expected.pin_failures, expected.locked_until_ms)
            ));
        }
    }
    Ok(())
}
