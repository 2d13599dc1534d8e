//! The retailer API, v1.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paystep_channel_core::ChannelName;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::auth::Retailer;
use super::error::{money_error, parse_json, ApiError};
use super::idempotency::{self, OperationFuture};
use super::ids::ResourceId;
use super::AppState;
use crate::domain::{
    free_text, Currency, Email, FieldError, Msisdn, ProcessStatus, TopUpPolicyKind,
};
use crate::engine::event_json;
use crate::engine::rows;
use crate::engine::views::{ProcessView, StepView};
use crate::engine::{CustomerRef, NewProcess, NewStep, StepOutcome, TopUpPolicy};

const DESCRIPTION_LENGTH_MAX: usize = 200;
const REFERENCE_LENGTH_MAX: usize = 100;
const PAGE_SIZE_DEFAULT: i64 = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProcessBody {
    customer: Option<CustomerBody>,
    currency: String,
    release: String,
    charge: Option<String>,
    description: Option<String>,
    reference: Option<String>,
    channel: Option<String>,
    top_up: Option<TopUpBody>,
    expires_in_s: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerBody {
    msisdn: Option<String>,
    email: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUpBody {
    policy: TopUpPolicyKind,
    factor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStepBody {
    amount: String,
    description: Option<String>,
    reference: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {}

impl CreateProcessBody {
    fn into_domain(self, state: &AppState) -> Result<NewProcess, ApiError> {
        let settings = &state.engine.settings;
        let currency =
            Currency::parse(&self.currency).map_err(|error| money_error("currency", error))?;
        let max_amount = settings.limits.max_amount;
        let release = currency
            .parse_amount(&self.release, max_amount)
            .map_err(|error| money_error("release", error))?;
        let charge = self
            .charge
            .map(|charge| currency.parse_amount(&charge, max_amount))
            .transpose()
            .map_err(|error| money_error("charge", error))?;
        if charge.is_some_and(|charge| charge > release) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "charge_exceeds_release",
                "charge must not be more than release",
            ));
        }
        let customer = self.customer.map(CustomerBody::into_domain).transpose()?;
        let channel = self
            .channel
            .map(|channel| match channel.parse::<ChannelName>() {
                Ok(ChannelName::Webhook) | Err(_) => Err(FieldError::new(
                    "channel",
                    "must be one of sms, email, wap_push, voice, console",
                )),
                Ok(channel) => Ok(channel),
            })
            .transpose()?;
        let top_up = match self.top_up {
            None => TopUpPolicy {
                kind: settings.engine.top_up_policy,
                factor: settings.engine.top_up_factor,
            },
            Some(body) => {
                let factor = match body.factor {
                    None => settings.engine.top_up_factor,
                    Some(text) => {
                        let factor: Decimal = text.trim().parse().map_err(|_| {
                            FieldError::new(
                                "top_up.factor",
                                "must be a decimal string such as \"5\"",
                            )
                        })?;
                        if factor <= Decimal::ONE
                            || factor > Decimal::from(1000)
                            || factor.scale() > 4
                        {
                            return Err(FieldError::new(
                                "top_up.factor",
                                "must be more than 1 and at most 1000, with at most 4 decimals",
                            )
                            .into());
                        }
                        factor
                    }
                };
                TopUpPolicy {
                    kind: body.policy,
                    factor,
                }
            }
        };
        let inactivity_s = match self.expires_in_s {
            None => settings.engine.process_inactivity_s,
            Some(seconds) if (1..=settings.engine.process_inactivity_max_s).contains(&seconds) => {
                seconds
            }
            Some(_) => {
                return Err(FieldError::new(
                    "expires_in_s",
                    format!(
                        "must be between 1 and {}",
                        settings.engine.process_inactivity_max_s
                    ),
                )
                .into())
            }
        };
        Ok(NewProcess {
            customer,
            currency,
            release,
            charge,
            description: free_text(
                "description",
                self.description.as_deref(),
                DESCRIPTION_LENGTH_MAX,
            )?,
            reference: free_text("reference", self.reference.as_deref(), REFERENCE_LENGTH_MAX)?,
            channel,
            top_up,
            inactivity_s,
        })
    }
}

impl CustomerBody {
    fn into_domain(self) -> Result<CustomerRef, ApiError> {
        match (self.msisdn, self.email, self.id) {
            (Some(msisdn), None, None) => Ok(CustomerRef::Msisdn(Msisdn::parse(&msisdn)?)),
            (None, Some(email), None) => Ok(CustomerRef::Email(Email::parse(&email)?)),
            (None, None, Some(id)) => {
                ResourceId::parse(&id).map(CustomerRef::Id).ok_or_else(|| {
                    FieldError::new("customer.id", "must be a customer id (a UUID)").into()
                })
            }
            _ => Err(
                FieldError::new("customer", "must have exactly one of msisdn, email or id").into(),
            ),
        }
    }
}

fn created(value: impl serde::Serialize) -> Result<(StatusCode, Value), ApiError> {
    Ok((StatusCode::CREATED, json!(value)))
}

/// Runs a retailer's POST under its `Idempotency-Key`, scoped to the retailer.
async fn idempotent<F>(
    state: &AppState,
    retailer_id: String,
    key: Option<idempotency::IdempotencyKey>,
    request_line: String,
    body: &[u8],
    operation: F,
) -> Result<Response, ApiError>
where
    F: for<'c> FnOnce(&'c mut sqlx::AnyConnection) -> OperationFuture<'c> + Send + 'static,
{
    let engine = &state.engine;
    let scope = format!("retailer:{retailer_id}");
    let fingerprint = idempotency::fingerprint(&request_line, body);
    idempotency::run(
        &engine.store,
        engine.now_ms(),
        &scope,
        key,
        fingerprint,
        operation,
    )
    .await
}

pub async fn create_process(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let request = parse_json::<CreateProcessBody>(&body)?.into_domain(&state)?;
    let engine = state.engine.clone();
    let request_line = "POST /v1/processes".to_string();
    idempotent(
        &state,
        retailer.id.clone(),
        key,
        request_line,
        &body,
        move |conn| -> OperationFuture<'_> {
            Box::pin(async move { created(engine.create_process(conn, &retailer, request).await?) })
        },
    )
    .await
}

pub async fn create_step(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    ResourceId(process_id): ResourceId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let request: CreateStepBody = parse_json(&body)?;
    let engine = state.engine.clone();
    // The amount is parsed in the process's currency inside the operation, which loads the
    // process anyway: an unknown process is 404, a bad amount 422, and nothing is written.
    let step = NewStep {
        amount: request.amount,
        description: free_text(
            "description",
            request.description.as_deref(),
            DESCRIPTION_LENGTH_MAX,
        )?,
        reference: free_text(
            "reference",
            request.reference.as_deref(),
            REFERENCE_LENGTH_MAX,
        )?,
    };
    let request_line = format!("POST /v1/processes/{process_id}/steps");
    idempotent(&state, retailer.id.clone(), key, request_line, &body, move |conn| -> OperationFuture<'_> {
        Box::pin(async move {
            match engine.charge_step(conn, &retailer, &process_id, step).await? {
                    StepOutcome::Charged(step) => created(step),
                    StepOutcome::AwaitingConfirmation(step) => Ok((StatusCode::ACCEPTED, json!(step))),
                    StepOutcome::Declined(step) => Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "insufficient_release",
                        "the step exceeds the remaining amount and the process's top-up policy is none",
                    )
                .with_details(json!({"step": step}))),
            }
        })
    })
    .await
}

pub async fn close_process(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    ResourceId(process_id): ResourceId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let _: CloseBody = parse_json(&body)?;
    }
    let engine = state.engine.clone();
    let request_line = format!("POST /v1/processes/{process_id}/close");
    idempotent(
        &state,
        retailer.id.clone(),
        key,
        request_line,
        &body,
        move |conn| -> OperationFuture<'_> {
            Box::pin(async move {
                let process = engine.close_process(conn, &retailer, &process_id).await?;
                Ok((StatusCode::OK, json!(process)))
            })
        },
    )
    .await
}

pub async fn get_process(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    ResourceId(process_id): ResourceId,
) -> Result<Response, ApiError> {
    let mut conn = state.engine.store.reader().acquire().await?;
    let process = rows::load_process(&mut conn, &process_id)
        .await?
        .filter(|process| process.retailer_id == retailer.id)
        .ok_or_else(|| ApiError::not_found("process"))?;
    Ok(Json(ProcessView::from_row(&process)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListProcessesQuery {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

fn page_size(limit: Option<i64>, state: &AppState) -> Result<i64, ApiError> {
    let page_size_max = state.engine.settings.limits.page_size_max;
    match limit {
        None => Ok(PAGE_SIZE_DEFAULT.min(page_size_max)),
        Some(limit) if (1..=page_size_max).contains(&limit) => Ok(limit),
        Some(_) => {
            Err(FieldError::new("limit", format!("must be between 1 and {page_size_max}")).into())
        }
    }
}

pub async fn list_processes(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    query: Result<Query<ListProcessesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|error| ApiError::bad_request(error.body_text()))?;
    let limit = page_size(query.limit, &state)?;
    let status = match query.status.as_deref().filter(|status| !status.is_empty()) {
        None => None,
        Some(text) => Some(ProcessStatus::parse(text).ok_or_else(|| {
            FieldError::new(
                "status",
                "must be one of awaiting_confirmation, active, closed, declined, expired",
            )
        })?),
    };
    let mut conn = state.engine.store.reader().acquire().await?;
    let after = match query.after.as_deref().filter(|after| !after.is_empty()) {
        None => None,
        Some(after_id) => {
            let after_id = ResourceId::parse(after_id)
                .ok_or_else(|| ApiError::bad_request("after: must be a process id (a UUID)"))?;
            let after_id = after_id.as_str();
            let cursor = rows::load_process(&mut conn, after_id)
                .await?
                .filter(|process| process.retailer_id == retailer.id)
                .ok_or_else(|| {
                    FieldError::new("after", "must be the id of one of your processes")
                })?;
            Some((cursor.created_at_ms, cursor.id))
        }
    };
    let processes = rows::list_processes(&mut conn, &retailer.id, status, after, limit).await?;
    let next_after = (processes.len() as i64 == limit)
        .then(|| processes.last().map(|process| process.id.clone()))
        .flatten();
    let views: Vec<ProcessView> = processes.iter().map(ProcessView::from_row).collect();
    Ok(Json(json!({"processes": views, "next_after": next_after})).into_response())
}

pub async fn list_steps(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    ResourceId(process_id): ResourceId,
) -> Result<Response, ApiError> {
    let mut conn = state.engine.store.reader().acquire().await?;
    let process = rows::load_process(&mut conn, &process_id)
        .await?
        .filter(|process| process.retailer_id == retailer.id)
        .ok_or_else(|| ApiError::not_found("process"))?;
    let steps = rows::list_steps(&mut conn, &process_id).await?;
    let views: Vec<StepView> = steps
        .iter()
        .map(|step| StepView::from_row(step, &process))
        .collect();
    Ok(Json(json!({"steps": views})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn list_events(
    State(state): State<AppState>,
    Retailer(retailer): Retailer,
    query: Result<Query<ListEventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|error| ApiError::bad_request(error.body_text()))?;
    let limit = page_size(query.limit, &state)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(FieldError::new("after", "must not be negative").into());
    }
    let rows = sqlx::query(
        "SELECT id, seq, type, process_id, data, created_at_ms FROM events \
         WHERE retailer_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(&retailer.id)
    .bind(after)
    .bind(limit)
    .fetch_all(state.engine.store.reader())
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut next_after = after;
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        let data: String = row.try_get("data")?;
        next_after = seq;
        events.push(event_json(
            &row.try_get::<String, _>("id")?,
            seq,
            &row.try_get::<String, _>("type")?,
            row.try_get::<Option<String>, _>("process_id")?.as_deref(),
            row.try_get("created_at_ms")?,
            &serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
        ));
    }
    Ok(Json(json!({"events": events, "next_after": next_after})).into_response())
}
