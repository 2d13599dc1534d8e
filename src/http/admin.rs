//! The operator API.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paystep_channel_core::ChannelName;
use serde::Deserialize;
use serde_json::json;

use super::auth::Admin;
use super::error::{money_error, parse_json, ApiError};
use super::idempotency::{self, OperationFuture};
use super::ids::ResourceId;
use super::AppState;
use crate::audit::Origin;
use crate::domain::{Currency, Email, FieldError, Language, Msisdn, Pin};
use crate::engine::{NewCustomer, NewRetailer};
use crate::outbox::dead_letters::{self, RequeueOutcome};

const NAME_LENGTH_MAX: usize = 100;
const URL_LENGTH_MAX: usize = 2000;
const DEPOSIT_REFERENCE_LENGTH_MAX: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerBody {
    pub msisdn: Option<String>,
    pub email: Option<String>,
    pub name: String,
    pub language: Option<String>,
    pub preferred_channel: Option<String>,
    pub pin: Option<String>,
}

impl CreateCustomerBody {
    pub fn into_domain(self) -> Result<NewCustomer, FieldError> {
        let msisdn = self.msisdn.as_deref().map(Msisdn::parse).transpose()?;
        let email = self.email.as_deref().map(Email::parse).transpose()?;
        if msisdn.is_none() && email.is_none() {
            return Err(FieldError::new(
                "msisdn",
                "a customer needs an msisdn, an email, or both",
            ));
        }
        let name = bounded_name(&self.name)?;
        let language = self
            .language
            .as_deref()
            .map(Language::parse)
            .transpose()?
            .unwrap_or_default();
        let preferred_channel = match self.preferred_channel.as_deref() {
            Some(text) => match text.parse::<ChannelName>() {
                Ok(ChannelName::Webhook) | Err(_) => {
                    return Err(FieldError::new(
                        "preferred_channel",
                        "must be one of sms, email, wap_push, voice, console",
                    ))
                }
                Ok(channel) => channel,
            },
            None if msisdn.is_some() => ChannelName::Sms,
            None => ChannelName::Email,
        };
        let needs_msisdn = matches!(
            preferred_channel,
            ChannelName::Sms | ChannelName::WapPush | ChannelName::Voice
        );
        if (needs_msisdn && msisdn.is_none())
            || (preferred_channel == ChannelName::Email && email.is_none())
        {
            return Err(FieldError::new(
                "preferred_channel",
                "the customer has no address on that channel",
            ));
        }
        let pin = self.pin.as_deref().map(Pin::parse).transpose()?;
        Ok(NewCustomer {
            msisdn,
            email,
            name,
            language,
            preferred_channel,
            pin,
        })
    }
}

fn bounded_name(name: &str) -> Result<String, FieldError> {
    crate::domain::free_text("name", Some(name), NAME_LENGTH_MAX)?
        .ok_or_else(|| FieldError::new("name", "must not be empty"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRetailerBody {
    pub name: String,
    pub webhook_url: Option<String>,
    pub msisdn: Option<String>,
    pub email: Option<String>,
    pub notify: Option<Vec<String>>,
    /// `every_step` (default) or `summary`.
    pub receipt_policy: Option<String>,
}

impl CreateRetailerBody {
    pub fn into_domain(self) -> Result<NewRetailer, FieldError> {
        let name = bounded_name(&self.name)?;
        let webhook_url = match self.webhook_url {
            None => None,
            Some(url) => {
                let url = url.trim().to_string();
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || url.len() > URL_LENGTH_MAX
                {
                    return Err(FieldError::new("webhook_url", "must be an http(s) URL"));
                }
                Some(url)
            }
        };
        let msisdn = self.msisdn.as_deref().map(Msisdn::parse).transpose()?;
        let email = self.email.as_deref().map(Email::parse).transpose()?;
        let mut notify = Vec::new();
        for name in self.notify.unwrap_or_default() {
            let channel = match name.parse::<ChannelName>() {
                Ok(
                    channel @ (ChannelName::Webhook
                    | ChannelName::Sms
                    | ChannelName::Email
                    | ChannelName::Console),
                ) => channel,
                _ => {
                    return Err(FieldError::new(
                        "notify",
                        "channels must be webhook, sms, email or console",
                    ))
                }
            };
            let has_address = match channel {
                ChannelName::Webhook => webhook_url.is_some(),
                ChannelName::Sms => msisdn.is_some(),
                ChannelName::Email => email.is_some(),
                _ => true,
            };
            if !has_address {
                return Err(FieldError::new(
                    "notify",
                    format!("{channel} needs the retailer's address for it"),
                ));
            }
            if !notify.contains(&channel) {
                notify.push(channel);
            }
        }
        let summary_receipts = match self.receipt_policy.as_deref() {
            None | Some("every_step") => false,
            Some("summary") => true,
            Some(_) => {
                return Err(FieldError::new(
                    "receipt_policy",
                    "must be every_step or summary",
                ))
            }
        };
        Ok(NewRetailer {
            name,
            webhook_url,
            msisdn,
            email,
            notify,
            summary_receipts,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepositBody {
    amount: String,
    currency: String,
    reference: Option<String>,
}

/// Runs an operator's POST under its `Idempotency-Key`, so that a retried deposit never
/// credits twice. (Retailer creation takes none: its answer holds the API key, which is never
/// stored in the clear.)
async fn idempotent<F>(
    state: &AppState,
    headers: &HeaderMap,
    request_line: String,
    body: &[u8],
    operation: F,
) -> Result<Response, ApiError>
where
    F: for<'c> FnOnce(&'c mut sqlx::AnyConnection) -> OperationFuture<'c> + Send + 'static,
{
    let key = idempotency::key_from_headers(headers)?;
    let fingerprint = idempotency::fingerprint(&request_line, body);
    let engine = &state.engine;
    idempotency::run(
        &engine.store,
        engine.now_ms(),
        "admin",
        key,
        fingerprint,
        operation,
    )
    .await
}

pub async fn create_customer(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let customer = parse_json::<CreateCustomerBody>(&body)?.into_domain()?;
    let engine = state.engine.clone();
    let request_line = "POST /admin/v1/customers".to_string();
    idempotent(
        &state,
        &headers,
        request_line,
        &body,
        move |conn| -> OperationFuture<'_> {
            Box::pin(async move {
                let id = engine
                    .create_customer(conn, &Origin::operator("admin_api"), customer)
                    .await?;
                Ok((StatusCode::CREATED, json!({ "id": id })))
            })
        },
    )
    .await
}

pub async fn create_deposit(
    State(state): State<AppState>,
    _admin: Admin,
    ResourceId(customer_id): ResourceId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: DepositBody = parse_json(&body)?;
    let currency =
        Currency::parse(&request.currency).map_err(|error| money_error("currency", error))?;
    let amount = currency
        .parse_amount(&request.amount, state.engine.settings.limits.max_amount)
        .map_err(|error| money_error("amount", error))?;
    let reference = crate::domain::free_text(
        "reference",
        request.reference.as_deref(),
        DEPOSIT_REFERENCE_LENGTH_MAX,
    )?;
    let engine = state.engine.clone();
    let request_line = format!("POST /admin/v1/customers/{customer_id}/deposits");
    idempotent(
        &state,
        &headers,
        request_line,
        &body,
        move |conn| -> OperationFuture<'_> {
            Box::pin(async move {
                let credit = engine
                    .deposit(
                        conn,
                        &Origin::operator("admin_api"),
                        &customer_id,
                        currency,
                        amount,
                        reference.as_deref(),
                    )
                    .await?;
                let answer = json!({
                    "customer_id": customer_id,
                    "currency": currency.code(),
                    "credit": currency.format(credit),
                });
                Ok((StatusCode::CREATED, answer))
            })
        },
    )
    .await
}

pub async fn get_customer(
    State(state): State<AppState>,
    _admin: Admin,
    ResourceId(customer_id): ResourceId,
) -> Result<Response, ApiError> {
    let mut conn = state.engine.store.reader().acquire().await?;
    let summary = state
        .engine
        .customer_summary(&mut conn, &customer_id)
        .await?;
    Ok(Json(summary).into_response())
}

pub async fn create_retailer(
    State(state): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let retailer = parse_json::<CreateRetailerBody>(&body)?.into_domain()?;
    let mut tx = state.engine.store.begin_write().await?;
    let credentials = state
        .engine
        .create_retailer(&mut tx, &Origin::operator("admin_api"), retailer)
        .await?;
    tx.commit().await.map_err(crate::store::commit_error)?;
    Ok((StatusCode::CREATED, Json(credentials)).into_response())
}

pub async fn verify_ledger(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let mut conn = state.engine.store.reader().acquire().await?;
    let report = crate::ledger::verify(&mut conn).await?;
    let status = if report.ok {
        StatusCode::OK
    } else {
        tracing::error!(report = ?report, "Ledger invariants do not hold");
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Ok((status, Json(report)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOutboxQuery {
    status: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /admin/v1/outbox?status=dead`: the dead letters (or any status), in queue order.
pub async fn list_outbox(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<ListOutboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|error| ApiError::bad_request(error.body_text()))?;
    let status = query.status.as_deref().filter(|status| !status.is_empty());
    if status.is_some_and(|status| !dead_letters::STATUSES.contains(&status)) {
        return Err(FieldError::new("status", "must be queued, delivered or dead").into());
    }
    let page_size_max = state.engine.settings.limits.page_size_max;
    let limit = query.limit.unwrap_or(50.min(page_size_max));
    if !(1..=page_size_max).contains(&limit) {
        return Err(
            FieldError::new("limit", format!("must be between 1 and {page_size_max}")).into(),
        );
    }
    let after = query.after.unwrap_or(0);
    let mut conn = state.engine.store.reader().acquire().await?;
    let messages = dead_letters::list(&mut conn, status, after, limit).await?;
    let next_after = messages.last().map_or(after, |message| message.position);
    Ok(Json(json!({"messages": messages, "next_after": next_after})).into_response())
}

/// `POST /admin/v1/outbox/{id}/requeue`: a dead letter goes back in the queue.
pub async fn requeue_outbox(
    State(state): State<AppState>,
    _admin: Admin,
    ResourceId(message_id): ResourceId,
) -> Result<Response, ApiError> {
    let mut tx = state.engine.store.begin_write().await?;
    let outcome = dead_letters::requeue(
        &mut tx,
        &Origin::operator("admin_api"),
        &message_id,
        state.engine.now_ms(),
    )
    .await?;
    tx.commit().await.map_err(crate::store::commit_error)?;
    match outcome {
        RequeueOutcome::Requeued(message) => Ok(Json(message).into_response()),
        RequeueOutcome::NotFound => Err(ApiError::not_found("outbox message")),
        RequeueOutcome::NotDead(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_dead",
            format!("only dead letters can be requeued; this message is {status}"),
        )),
    }
}

/// `POST /admin/v1/retailers/{id}/api-key/rotate`: a new API key; the old one stops working.
pub async fn rotate_api_key(
    State(state): State<AppState>,
    _admin: Admin,
    ResourceId(retailer_id): ResourceId,
) -> Result<Response, ApiError> {
    let mut tx = state.engine.store.begin_write().await?;
    let rotated = state
        .engine
        .rotate_api_key(&mut tx, &Origin::operator("admin_api"), &retailer_id)
        .await?;
    tx.commit().await.map_err(crate::store::commit_error)?;
    Ok(Json(rotated).into_response())
}

/// `POST /admin/v1/retailers/{id}/webhook-secret/rotate`: a new signing secret; the previous
/// one keeps signing for `channels.webhook.previous_secret_valid_s`.
pub async fn rotate_webhook_secret(
    State(state): State<AppState>,
    _admin: Admin,
    ResourceId(retailer_id): ResourceId,
) -> Result<Response, ApiError> {
    let mut tx = state.engine.store.begin_write().await?;
    let rotated = state
        .engine
        .rotate_webhook_secret(&mut tx, &Origin::operator("admin_api"), &retailer_id)
        .await?;
    tx.commit().await.map_err(crate::store::commit_error)?;
    Ok(Json(rotated).into_response())
}
