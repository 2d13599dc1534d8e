//! `Idempotency-Key`: the same key with the same request replays the first answer; the same
//! key with a different request is refused.
//!
//! The operation and the saved answer commit in one transaction, so a crash can never leave
//! an operation done without its answer saved. A concurrent duplicate blocks on the key's
//! row (PostgreSQL) or on the single writer (SQLite), finds the saved answer, and replays it.
//! Client errors are saved too (in their own transaction, since the operation rolled back);
//! server errors are not, so the client may retry them.

use std::future::Future;
use std::pin::Pin;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use super::error::ApiError;
use crate::store::Store;

const KEY_LENGTH_MAX: usize = 255;

pub struct IdempotencyKey(String);

pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {KEY_LENGTH_MAX} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > KEY_LENGTH_MAX || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(IdempotencyKey(key.to_string())))
}

/// A fingerprint of the request: method, path and body.
pub fn fingerprint(method_and_path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method_and_path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    format!("{:x}", hasher.finalize())
}

pub type OperationFuture<'c> =
    Pin<Box<dyn Future<Output = Result<(StatusCode, Value), ApiError>> + Send + 'c>>;

struct Saved {
    request_hash: String,
    status_code: i64,
    response_body: String,
}

/// Runs `operation` in a write transaction, honouring the idempotency key if there is one.
pub async fn run<F>(
    store: &Store,
    now_ms: i64,
    scope: &str,
    key: Option<IdempotencyKey>,
    request_hash: String,
    operation: F,
) -> Result<Response, ApiError>
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> OperationFuture<'c>,
{
    let mut tx = store.begin_write().await?;
    if let Some(key) = &key {
        if let Some(saved) = find(&mut tx, scope, &key.0).await? {
            tx.rollback().await?;
            return replay(saved, &request_hash);
        }
    }
    let result = operation(&mut tx).await;
    let Some(key) = key else {
        return match result {
            Ok((status, body)) => {
                tx.commit().await?;
                Ok((status, Json(body)).into_response())
            }
            Err(error) => Err(error),
        };
    };
    match result {
        Ok((status, body)) => {
            if !save(&mut tx, scope, &key.0, &request_hash, status, &body, now_ms).await? {
                // A concurrent request with the same key committed first: undo ours.
                tx.rollback().await?;
                return replay_current(store, scope, &key.0, &request_hash).await;
            }
            tx.commit().await?;
            Ok((status, Json(body)).into_response())
        }
        Err(error) if error.status.is_client_error() => {
            tx.rollback().await?;
            let mut tx = store.begin_write().await?;
            if !save(
                &mut tx,
                scope,
                &key.0,
                &request_hash,
                error.status,
                &error.body(),
                now_ms,
            )
            .await?
            {
                tx.rollback().await?;
                return replay_current(store, scope, &key.0, &request_hash).await;
            }
            tx.commit().await?;
            Err(error)
        }
        Err(error) => Err(error),
    }
}

async fn find(conn: &mut AnyConnection, scope: &str, key: &str) -> Result<Option<Saved>, ApiError> {
    let row = sqlx::query(
        "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Saved {
            request_hash: row.try_get("request_hash")?,
            status_code: row.try_get("status_code")?,
            response_body: row.try_get("response_body")?,
        })
    })
    .transpose()
    .map_err(|error: sqlx::Error| error.into())
}

/// Saves the answer; false when the key was saved by someone else first.
#[allow(clippy::too_many_arguments)]
async fn save(
    conn: &mut AnyConnection,
    scope: &str,
    key: &str,
    request_hash: &str,
    status: StatusCode,
    body: &Value,
    now_ms: i64,
) -> Result<bool, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response_body, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .bind(i64::from(status.as_u16()))
    .bind(body.to_string())
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

async fn replay_current(
    store: &Store,
    scope: &str,
    key: &str,
    request_hash: &str,
) -> Result<Response, ApiError> {
    let mut conn = store.reader().acquire().await?;
    let saved = find(&mut conn, scope, key)
        .await?
        .ok_or_else(ApiError::internal)?;
    replay(saved, request_hash)
}

fn replay(saved: Saved, request_hash: &str) -> Result<Response, ApiError> {
    if saved.request_hash != request_hash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ));
    }
    let status = u16::try_from(saved.status_code)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(ApiError::internal)?;
    let body: Value =
        serde_json::from_str(&saved.response_body).map_err(|_| ApiError::internal())?;
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    Ok(response)
}
