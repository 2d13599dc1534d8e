//! Rows as stored, and the statements that load and lock them.

use paystep_channel_core::ChannelName;
use sqlx::AnyConnection;

use crate::domain::{
    ConfirmationKind, ConfirmationStatus, Currency, Language, ProcessStatus, StepStatus,
    TopUpPolicyKind,
};

#[derive(Clone, sqlx::FromRow)]
pub struct RetailerRow {
    pub id: String,
    pub name: String,
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    pub msisdn: Option<String>,
    pub email: Option<String>,
    pub notify: String,
    pub webhook_secret_previous: Option<String>,
    pub webhook_secret_previous_until_ms: Option<i64>,
    pub receipt_policy: String,
}

// The signing secrets are secrets: never print them.
impl std::fmt::Debug for RetailerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetailerRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("notify", &self.notify)
            .field("webhook_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl RetailerRow {
    /// The channels the retailer asked to be notified on.
    pub fn notify_channels(&self) -> Vec<ChannelName> {
        let names: Vec<String> = serde_json::from_str(&self.notify).unwrap_or_default();
        names.iter().filter_map(|name| name.parse().ok()).collect()
    }

    /// The URL events go to, when the retailer asked for webhooks.
    pub fn webhook_target(&self) -> Option<&str> {
        self.notify_channels()
            .contains(&ChannelName::Webhook)
            .then_some(self.webhook_url.as_deref())
            .flatten()
    }

    /// The secrets that sign a delivery now: the current one, and the previous one until
    /// its grace period after a rotation ends.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<String> {
        let mut secrets = vec![self.webhook_secret.clone()];
        if let (Some(previous), Some(until_ms)) = (
            &self.webhook_secret_previous,
            self.webhook_secret_previous_until_ms,
        ) {
            if until_ms > now_ms {
                secrets.push(previous.clone());
            }
        }
        secrets
    }

    /// One summary receipt per release and close, instead of one per step.
    pub fn summary_receipts(&self) -> bool {
        self.receipt_policy == "summary"
    }
}

#[derive(Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: String,
    pub msisdn: Option<String>,
    pub email: Option<String>,
    pub name: String,
    pub language: String,
    pub preferred_channel: String,
    pub pin_hash: Option<String>,
    pub pin_failures: i64,
    pub pin_locked_until_ms: Option<i64>,
}

// A PIN's hash can be attacked offline (PINs are short): never print it.
impl std::fmt::Debug for CustomerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerRow")
            .field("id", &self.id)
            .field("language", &self.language)
            .field("pin_set", &self.pin_hash.is_some())
            .field("pin_failures", &self.pin_failures)
            .field("pin_locked_until_ms", &self.pin_locked_until_ms)
            .finish_non_exhaustive()
    }
}

impl CustomerRow {
    pub fn language(&self) -> Language {
        Language::parse(&self.language).unwrap_or_default()
    }

    pub fn preferred_channel(&self) -> ChannelName {
        self.preferred_channel
            .parse()
            .unwrap_or(ChannelName::Console)
    }
}

#[derive(Clone, sqlx::FromRow)]
pub struct ProcessRow {
    pub id: String,
    pub code: String,
    pub retailer_id: String,
    pub customer_id: Option<String>,
    pub status: String,
    pub currency: String,
    pub release_requested: i64,
    pub released: i64,
    pub charged: i64,
    pub remaining: i64,
    pub returned: i64,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub channel: Option<String>,
    pub top_up_policy: String,
    pub top_up_factor: String,
    pub inactivity_s: i64,
    pub step_count: i64,
    pub decline_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: i64,
    pub pre_expiry_notified: i64,
    pub customer_msisdn: Option<String>,
    pub customer_email: Option<String>,
    /// The rest of the customer's row, read in the same statement (see `joined_customer`).
    pub customer_name: Option<String>,
    pub customer_language: Option<String>,
    pub customer_preferred_channel: Option<String>,
    pub customer_pin_hash: Option<String>,
    pub customer_pin_failures: Option<i64>,
    pub customer_pin_locked_until_ms: Option<i64>,
}

// The joined customer carries a PIN's hash: never print it (nor the customer's addresses).
impl std::fmt::Debug for ProcessRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRow")
            .field("id", &self.id)
            .field("code", &self.code)
            .field("retailer_id", &self.retailer_id)
            .field("customer_id", &self.customer_id)
            .field("status", &self.status)
            .field("currency", &self.currency)
            .field("released", &self.released)
            .field("charged", &self.charged)
            .field("remaining", &self.remaining)
            .field("returned", &self.returned)
            .field("step_count", &self.step_count)
            .finish_non_exhaustive()
    }
}

impl ProcessRow {
    pub fn status(&self) -> ProcessStatus {
        ProcessStatus::parse(&self.status).expect("the database only holds valid process statuses")
    }

    pub fn currency(&self) -> Currency {
        Currency::parse(&self.currency).expect("the database only holds valid currencies")
    }

    pub fn top_up_policy(&self) -> TopUpPolicyKind {
        TopUpPolicyKind::parse(&self.top_up_policy).expect("the database only holds valid policies")
    }

    pub fn pre_expiry_notified(&self) -> bool {
        self.pre_expiry_notified != 0
    }

    /// The customer's row as it was read with the process, when the process has one: a
    /// step's messages need it, and reading it with the process saves a statement. Stale
    /// once the transaction changes the customer or binds the process (then load it).
    pub fn joined_customer(&self) -> Option<CustomerRow> {
        Some(CustomerRow {
            id: self.customer_id.clone()?,
            msisdn: self.customer_msisdn.clone(),
            email: self.customer_email.clone(),
            name: self.customer_name.clone()?,
            language: self.customer_language.clone()?,
            preferred_channel: self.customer_preferred_channel.clone()?,
            pin_hash: self.customer_pin_hash.clone(),
            pin_failures: self.customer_pin_failures?,
            pin_locked_until_ms: self.customer_pin_locked_until_ms,
        })
    }

    pub fn requested_channel(&self) -> Option<ChannelName> {
        self.channel.as_deref().and_then(|name| name.parse().ok())
    }

    /// What the customer's goods or service are, for every message (claims 7 and 11): the
    /// retailer's words, with anything that looks like a link taken out.
    pub fn context(&self) -> String {
        let text = self
            .description
            .as_deref()
            .or(self.reference.as_deref())
            .unwrap_or("-");
        crate::domain::without_links(text)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub id: String,
    pub process_id: String,
    pub number: i64,
    pub amount: i64,
    pub status: String,
    pub remaining_after: Option<i64>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub decline_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl StepRow {
    pub fn status(&self) -> StepStatus {
        StepStatus::parse(&self.status).expect("the database only holds valid step statuses")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConfirmationRow {
    pub id: String,
    pub process_id: String,
    pub step_id: Option<String>,
    pub kind: String,
    pub amount: i64,
    pub status: String,
    pub pin_failures: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl ConfirmationRow {
    pub fn kind(&self) -> ConfirmationKind {
        ConfirmationKind::parse(&self.kind).expect("the database only holds valid kinds")
    }

    pub fn status(&self) -> ConfirmationStatus {
        ConfirmationStatus::parse(&self.status).expect("the database only holds valid statuses")
    }
}

const PROCESS_SELECT: &str =
    "SELECT p.id, p.code, p.retailer_id, p.customer_id, p.status, p.currency, \
     p.release_requested, p.released, p.charged, p.remaining, p.returned, p.description, \
     p.reference, p.channel, p.top_up_policy, p.top_up_factor, p.inactivity_s, p.step_count, \
     p.decline_reason, p.created_at_ms, p.updated_at_ms, p.expires_at_ms, p.pre_expiry_notified, \
     c.msisdn AS customer_msisdn, c.email AS customer_email, c.name AS customer_name, \
     c.language AS customer_language, c.preferred_channel AS customer_preferred_channel, \
     c.pin_hash AS customer_pin_hash, c.pin_failures AS customer_pin_failures, \
     c.pin_locked_until_ms AS customer_pin_locked_until_ms \
     FROM processes p LEFT JOIN customers c ON c.id = p.customer_id";

const STEP_COLUMNS: &str = "id, process_id, number, amount, status, remaining_after, description, \
     reference, decline_reason, created_at_ms, updated_at_ms";

const CONFIRMATION_COLUMNS: &str =
    "id, process_id, step_id, kind, amount, status, pin_failures, created_at_ms, expires_at_ms";

const CUSTOMER_COLUMNS: &str = "id, msisdn, email, name, language, preferred_channel, pin_hash, \
     pin_failures, pin_locked_until_ms";

const RETAILER_COLUMNS: &str = "id, name, webhook_url, webhook_secret, msisdn, email, notify, \
     webhook_secret_previous, webhook_secret_previous_until_ms, receipt_policy";

/// What sqlx's Any driver calls SQLite.
const SQLITE_BACKEND: &str = "SQLite";

pub async fn load_process(
    conn: &mut AnyConnection,
    process_id: &str,
) -> Result<Option<ProcessRow>, sqlx::Error> {
    sqlx::query_as(&format!("{PROCESS_SELECT} WHERE p.id = $1"))
        .bind(process_id)
        .fetch_optional(conn)
        .await
}

/// Locks the process row for the rest of the transaction and loads it. Every change to a
/// process starts here, which serialises all changes to one process on PostgreSQL; on
/// SQLite the single writer connection already does, so there it only loads.
pub async fn lock_process(
    conn: &mut AnyConnection,
    process_id: &str,
) -> Result<Option<ProcessRow>, sqlx::Error> {
    if conn.backend_name() == SQLITE_BACKEND {
        return load_process(conn, process_id).await;
    }
    let locked = sqlx::query("UPDATE processes SET lock_version = lock_version + 1 WHERE id = $1")
        .bind(process_id)
        .execute(&mut *conn)
        .await?;
    if locked.rows_affected() == 0 {
        return Ok(None);
    }
    load_process(conn, process_id).await
}

pub async fn list_processes(
    conn: &mut AnyConnection,
    retailer_id: &str,
    status: Option<ProcessStatus>,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<ProcessRow>, sqlx::Error> {
    let (after_ms, after_id) = after.unwrap_or((i64::MIN, String::new()));
    sqlx::query_as(&format!(
        "{PROCESS_SELECT} WHERE p.retailer_id = $1 AND ($2 = '' OR p.status = $2) \
         AND (p.created_at_ms > $3 OR (p.created_at_ms = $3 AND p.id > $4)) \
         ORDER BY p.created_at_ms, p.id LIMIT $5"
    ))
    .bind(retailer_id)
    .bind(status.map(|status| status.as_str()).unwrap_or(""))
    .bind(after_ms)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn load_step(
    conn: &mut AnyConnection,
    step_id: &str,
) -> Result<Option<StepRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE id = $1"))
        .bind(step_id)
        .fetch_optional(conn)
        .await
}

pub async fn list_steps(
    conn: &mut AnyConnection,
    process_id: &str,
) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STEP_COLUMNS} FROM steps WHERE process_id = $1 ORDER BY number"
    ))
    .bind(process_id)
    .fetch_all(conn)
    .await
}

pub async fn pending_confirmation(
    conn: &mut AnyConnection,
    process_id: &str,
) -> Result<Option<ConfirmationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CONFIRMATION_COLUMNS} FROM confirmations WHERE process_id = $1 AND status = 'pending'"
    ))
    .bind(process_id)
    .fetch_optional(conn)
    .await
}

pub async fn confirmation_by_token_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<ConfirmationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CONFIRMATION_COLUMNS} FROM confirmations WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn load_confirmation(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<ConfirmationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CONFIRMATION_COLUMNS} FROM confirmations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn load_customer(
    conn: &mut AnyConnection,
    customer_id: &str,
) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1"
    ))
    .bind(customer_id)
    .fetch_optional(conn)
    .await
}

/// Finds a customer by one of its identifiers: `column` is `id`, `msisdn` or `email`.
pub async fn find_customer(
    conn: &mut AnyConnection,
    column: CustomerKey,
    value: &str,
) -> Result<Option<CustomerRow>, sqlx::Error> {
    let column = match column {
        CustomerKey::Id => "id",
        CustomerKey::Msisdn => "msisdn",
        CustomerKey::Email => "email",
    };
    sqlx::query_as(&format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, Copy)]
pub enum CustomerKey {
    Id,
    Msisdn,
    Email,
}

pub async fn load_retailer(
    conn: &mut AnyConnection,
    retailer_id: &str,
) -> Result<Option<RetailerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RETAILER_COLUMNS} FROM retailers WHERE id = $1"
    ))
    .bind(retailer_id)
    .fetch_optional(conn)
    .await
}

pub async fn retailer_by_key_hash(
    conn: &mut AnyConnection,
    api_key_hash: &str,
) -> Result<Option<RetailerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RETAILER_COLUMNS} FROM retailers WHERE api_key_hash = $1"
    ))
    .bind(api_key_hash)
    .fetch_optional(conn)
    .await
}

pub fn is_open(status: ProcessStatus) -> bool {
    matches!(
        status,
        ProcessStatus::AwaitingConfirmation | ProcessStatus::Active
    )
}

pub fn is_pending(confirmation: &ConfirmationRow) -> bool {
    confirmation.status() == ConfirmationStatus::Pending
}
