//! The operator's side: customers, deposits, retailers.

use paystep_channel_core::ChannelName;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::effects::Effects;
use super::rows::{self, RetailerRow};
use super::views::ProcessView;
use super::{random_secret, secret_hash, webhook_secret, Engine, EngineError};
use crate::audit::{Change, Origin};
use crate::domain::{Currency, Email, Language, Minor, Msisdn, Pin};
use crate::ledger::{self, AccountKind, Transfer, TransferKind};
use crate::store::is_unique_violation;

#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub msisdn: Option<Msisdn>,
    pub email: Option<Email>,
    pub name: String,
    pub language: Language,
    pub preferred_channel: ChannelName,
    pub pin: Option<Pin>,
}

#[derive(Debug, Clone)]
pub struct NewRetailer {
    pub name: String,
    pub webhook_url: Option<String>,
    pub msisdn: Option<Msisdn>,
    pub email: Option<Email>,
    pub notify: Vec<ChannelName>,
    pub summary_receipts: bool,
}

/// Shown once: only hashes of the API key are kept.
#[derive(Clone, Serialize)]
pub struct RetailerCredentials {
    pub id: String,
    pub name: String,
    pub api_key: String,
    pub webhook_secret: String,
    pub notify: Vec<ChannelName>,
    pub receipt_policy: &'static str,
}

// The key and the secret are secrets: never print them.
impl std::fmt::Debug for RetailerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetailerCredentials")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("api_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerSummary {
    pub id: String,
    pub name: String,
    pub msisdn: Option<String>,
    pub email: Option<String>,
    pub language: String,
    pub preferred_channel: String,
    pub pin_set: bool,
    pub balances: Vec<BalanceView>,
    pub open_processes: Vec<ProcessView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BalanceView {
    pub currency: String,
    /// Available to release.
    pub credit: String,
    /// Released to open processes and not yet charged.
    pub held: String,
}

/// The most open processes a customer summary lists.
const SUMMARY_PROCESSES_MAX: i64 = 100;

impl Engine {
    pub async fn create_customer(
        &self,
        conn: &mut AnyConnection,
        origin: &Origin,
        customer: NewCustomer,
    ) -> Result<String, EngineError> {
        let id = uuid::Uuid::new_v4().to_string();
        let pin_hash = match &customer.pin {
            Some(pin) => Some(super::pin::hash(&self.pin_hashing, pin).await?),
            None => None,
        };
        let inserted = sqlx::query(
            "INSERT INTO customers (id, msisdn, email, name, language, preferred_channel, pin_hash, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(customer.msisdn.as_ref().map(Msisdn::as_str))
        .bind(customer.email.as_ref().map(Email::as_str))
        .bind(&customer.name)
        .bind(customer.language.as_str())
        .bind(customer.preferred_channel.as_str())
        .bind(pin_hash)
        .bind(self.now_ms())
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {
                let after = serde_json::json!({
                    "msisdn": customer.msisdn.as_ref().map(Msisdn::as_str),
                    "email": customer.email.as_ref().map(Email::as_str),
                    "name": customer.name,
                    "language": customer.language.as_str(),
                    "preferred_channel": customer.preferred_channel.as_str(),
                    "pin_set": customer.pin.is_some(),
                });
                self.audit_now(
                    conn,
                    origin,
                    change("customer.created", "customer", &id, after),
                )
                .await?;
                Ok(id)
            }
            Err(error) if is_unique_violation(&error) => Err(EngineError::Conflict(
                "a customer with this msisdn or email exists".into(),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// Adds credit from the operator's funding account; returns the new credit.
    pub async fn deposit(
        &self,
        conn: &mut AnyConnection,
        origin: &Origin,
        customer_id: &str,
        currency: Currency,
        amount: Minor,
        reference: Option<&str>,
    ) -> Result<Minor, EngineError> {
        rows::load_customer(conn, customer_id)
            .await?
            .ok_or(EngineError::NotFound("customer"))?;
        let now_ms = self.now_ms();
        let transfer = Transfer {
            kind: TransferKind::Deposit,
            currency,
            debit: (AccountKind::OperatorFunding, "operator"),
            credit: (AccountKind::CustomerCredit, customer_id),
            amount,
            process_id: None,
            step_id: None,
            reference,
            now_ms,
        };
        let posted = self.ledger.post(conn, transfer).await?;
        let mut effects = Effects::new(origin.clone());
        effects.audit_transfer(&transfer, posted);
        effects.flush(conn, &self.channels, now_ms).await?;
        Ok(ledger::balance(conn, AccountKind::CustomerCredit, customer_id, currency).await?)
    }

    pub async fn customer_summary(
        &self,
        conn: &mut AnyConnection,
        customer_id: &str,
    ) -> Result<CustomerSummary, EngineError> {
        let customer = rows::load_customer(conn, customer_id)
            .await?
            .ok_or(EngineError::NotFound("customer"))?;
        let balance_rows = sqlx::query(
            "SELECT a.currency, a.balance, COALESCE((SELECT CAST(SUM(h.balance) AS BIGINT) FROM accounts h \
               JOIN processes p ON p.id = h.owner_id \
               WHERE h.kind = 'process_hold' AND h.currency = a.currency AND p.customer_id = a.owner_id), 0) AS held \
             FROM accounts a WHERE a.kind = 'customer_credit' AND a.owner_id = $1 ORDER BY a.currency",
        )
        .bind(customer_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut balances = Vec::with_capacity(balance_rows.len());
        for row in balance_rows {
            let code: String = row.try_get("currency")?;
            let currency = Currency::parse(&code)
                .map_err(|error| EngineError::Invariant(error.to_string()))?;
            balances.push(BalanceView {
                currency: code,
                credit: currency.format(row.try_get("balance")?),
                held: currency.format(row.try_get("held")?),
            });
        }
        let process_ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM processes WHERE customer_id = $1 \
             AND status IN ('awaiting_confirmation', 'active') ORDER BY created_at_ms LIMIT $2",
        )
        .bind(customer_id)
        .bind(SUMMARY_PROCESSES_MAX)
        .fetch_all(&mut *conn)
        .await?;
        let mut open_processes = Vec::with_capacity(process_ids.len());
        for process_id in process_ids {
            if let Some(process) = rows::load_process(conn, &process_id).await? {
                open_processes.push(ProcessView::from_row(&process));
            }
        }
        Ok(CustomerSummary {
            id: customer.id.clone(),
            name: customer.name.clone(),
            msisdn: customer.msisdn.clone(),
            email: customer.email.clone(),
            language: customer.language.clone(),
            preferred_channel: customer.preferred_channel.clone(),
            pin_set: customer.pin_hash.is_some(),
            balances,
            open_processes,
        })
    }

    pub async fn create_retailer(
        &self,
        conn: &mut AnyConnection,
        origin: &Origin,
        retailer: NewRetailer,
    ) -> Result<RetailerCredentials, EngineError> {
        let id = uuid::Uuid::new_v4().to_string();
        let receipt_policy = if retailer.summary_receipts {
            "summary"
        } else {
            "every_step"
        };
        let api_key = format!("psk_{}", random_secret());
        let webhook_secret = webhook_secret();
        let notify: Vec<&str> = retailer
            .notify
            .iter()
            .map(|channel| channel.as_str())
            .collect();
        sqlx::query(
            "INSERT INTO retailers (id, name, api_key_hash, webhook_url, webhook_secret, msisdn, email, \
             notify, receipt_policy, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(&retailer.name)
        .bind(secret_hash(&api_key))
        .bind(retailer.webhook_url.as_deref())
        .bind(&webhook_secret)
        .bind(retailer.msisdn.as_ref().map(Msisdn::as_str))
        .bind(retailer.email.as_ref().map(Email::as_str))
        .bind(serde_json::to_string(&notify).expect("a list of names serialises"))
        .bind(receipt_policy)
        .bind(self.now_ms())
        .execute(&mut *conn)
        .await?;
        // The key and the secret stay out of the log, as out of every other record.
        let after = serde_json::json!({
            "name": retailer.name,
            "webhook_url": retailer.webhook_url,
            "notify": notify,
            "receipt_policy": receipt_policy,
        });
        self.audit_now(
            conn,
            origin,
            change("retailer.created", "retailer", &id, after),
        )
        .await?;
        Ok(RetailerCredentials {
            id,
            name: retailer.name,
            api_key,
            webhook_secret,
            notify: retailer.notify,
            receipt_policy,
        })
    }

    /// Replaces a retailer's API key, for a lost or leaked one: the old key stops working at
    /// once. The new key is shown only in the answer.
    pub async fn rotate_api_key(
        &self,
        conn: &mut AnyConnection,
        origin: &Origin,
        retailer_id: &str,
    ) -> Result<serde_json::Value, EngineError> {
        let api_key = format!("psk_{}", random_secret());
        let updated = sqlx::query("UPDATE retailers SET api_key_hash = $1 WHERE id = $2")
            .bind(secret_hash(&api_key))
            .bind(retailer_id)
            .execute(&mut *conn)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(EngineError::NotFound("retailer"));
        }
        tracing::info!(retailer_id, "Retailer API key replaced");
        let after = serde_json::json!({ "api_key": "replaced" });
        self.audit_now(
            conn,
            origin,
            change("retailer.api_key_rotated", "retailer", retailer_id, after),
        )
        .await?;
        Ok(serde_json::json!({ "id": retailer_id, "api_key": api_key }))
    }

    /// Starts using a new webhook secret; the old one keeps signing for the configured grace
    /// period, so the retailer can switch its verification over without missing a delivery.
    pub async fn rotate_webhook_secret(
        &self,
        conn: &mut AnyConnection,
        origin: &Origin,
        retailer_id: &str,
    ) -> Result<serde_json::Value, EngineError> {
        let now_ms = self.now_ms();
        let retailer = rows::load_retailer(conn, retailer_id)
            .await?
            .ok_or(EngineError::NotFound("retailer"))?;
        let secret = webhook_secret();
        let previous_until_ms =
            now_ms + self.settings.channels.webhook.previous_secret_valid_s * 1000;
        sqlx::query(
            "UPDATE retailers SET webhook_secret = $1, webhook_secret_previous = $2, \
             webhook_secret_previous_until_ms = $3 WHERE id = $4",
        )
        .bind(&secret)
        .bind(&retailer.webhook_secret)
        .bind(previous_until_ms)
        .bind(retailer_id)
        .execute(&mut *conn)
        .await?;
        let after = serde_json::json!({
            "webhook_secret": "replaced",
            "previous_secret_valid_until_ms": previous_until_ms,
        });
        self.audit_now(
            conn,
            origin,
            change(
                "retailer.webhook_secret_rotated",
                "retailer",
                retailer_id,
                after,
            ),
        )
        .await?;
        Ok(serde_json::json!({
            "id": retailer_id,
            "webhook_secret": secret,
            "previous_secret_valid_until": crate::clock::format_ms(previous_until_ms),
        }))
    }

    /// The retailer an API key belongs to.
    pub async fn authenticate_retailer(
        &self,
        api_key: &str,
    ) -> Result<Option<RetailerRow>, EngineError> {
        let mut conn = self.store.reader().acquire().await?;
        Ok(rows::retailer_by_key_hash(&mut conn, &secret_hash(api_key)).await?)
    }
}

/// A change to a subject that did not exist before or whose before the log already has.
fn change(action: &str, subject_kind: &str, subject_id: &str, after: serde_json::Value) -> Change {
    Change {
        action: action.into(),
        subject_kind: subject_kind.into(),
        subject_id: subject_id.into(),
        before: serde_json::Value::Null,
        after,
    }
}

impl Engine {
    /// Records one operator action as the last write of its transaction.
    async fn audit_now(
        &self,
        conn: &mut AnyConnection,
        origin: &Origin,
        change: Change,
    ) -> Result<(), EngineError> {
        let key = change.subject_id.clone();
        crate::audit::append(conn, (origin, &key), self.now_ms(), &[change]).await?;
        Ok(())
    }
}
