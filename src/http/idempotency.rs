//! `Idempotency-Key`: the same key with the same request replays the first answer; the same
//! key with a different request is refused.
//!
//! The operation and the saved answer commit in one transaction, so a crash can never leave
//! an operation done without its answer saved. A concurrent duplicate blocks on the key's
//! row (PostgreSQL) or on the single writer (SQLite), finds the saved answer, and replays it.
//! Client errors are saved too (the operation undone in its savepoint, the answer kept);
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
use crate::store::{Store, WriteFuture};

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

/// What one idempotent operation came to inside its write transaction.
enum Written {
    Answer(StatusCode, Value),
    /// A client error, saved under the key with the operation itself undone.
    Refused(ApiError),
    /// The key was saved earlier: replay that answer.
    Replay(Saved),
    /// A concurrent request saved the key first: ours is undone; replay theirs.
    SavedElsewhere,
}

/// Runs `operation` in a write transaction, honouring the idempotency key if there is one.
/// The operation shares its transaction and commit with concurrent writes (see
/// `Store::write`); nothing is answered before that commit.
pub async fn run<F>(
    store: &Store,
    now_ms: i64,
    scope: &str,
    key: Option<IdempotencyKey>,
    request_hash: String,
    operation: F,
) -> Result<Response, ApiError>
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> OperationFuture<'c> + Send + 'static,
{
    let key_text = key.as_ref().map(|key| key.0.clone());
    let attempt = Attempt {
        now_ms,
        scope: scope.to_string(),
        key,
        request_hash: request_hash.clone(),
    };
    let written = store
        .write(move |conn| -> WriteFuture<'_, Result<Written, ApiError>> {
            Box::pin(attempt.run(conn, operation))
        })
        .await?;
    match written {
        Written::Answer(status, body) => Ok((status, Json(body)).into_response()),
        Written::Refused(error) => Err(error),
        Written::Replay(saved) => replay(saved, &request_hash),
        Written::SavedElsewhere => {
            let key = key_text.ok_or_else(ApiError::internal)?;
            replay_current(store, scope, &key, &request_hash).await
        }
    }
}

/// One idempotent request, run inside its write transaction.
struct Attempt {
    now_ms: i64,
    scope: String,
    key: Option<IdempotencyKey>,
    request_hash: String,
}

impl Attempt {
    async fn run<F>(self, conn: &mut AnyConnection, operation: F) -> Result<Written, ApiError>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> OperationFuture<'c>,
    {
        let Some(key) = &self.key else {
            // An error undoes everything the operation wrote (Store::write rolls it back).
            let (status, body) = operation(conn).await?;
            return Ok(Written::Answer(status, body));
        };
        if let Some(saved) = find(conn, &self.scope, &key.0).await? {
            return Ok(Written::Replay(saved));
        }
        // The operation runs in a savepoint of its own, so that a client error can be
        // undone while its answer is saved under the key.
        let mut savepoint = sqlx::Connection::begin(&mut *conn).await?;
        match operation(&mut savepoint).await {
            Ok((status, body)) => {
                if !self.save(&mut savepoint, status, &body).await? {
                    savepoint.rollback().await?;
                    return Ok(Written::SavedElsewhere);
                }
                savepoint.commit().await?;
                Ok(Written::Answer(status, body))
            }
            Err(error) if error.status.is_client_error() => {
                savepoint.rollback().await?;
                if !self.save(conn, error.status, &error.body()).await? {
                    return Ok(Written::SavedElsewhere);
                }
                Ok(Written::Refused(error))
            }
            // Server errors are not saved, so the client may retry them.
            Err(error) => Err(error),
        }
    }

    /// Saves the answer under the key; false when someone else saved it first.
    async fn save(
        &self,
        conn: &mut AnyConnection,
        status: StatusCode,
        body: &Value,
    ) -> Result<bool, ApiError> {
        let key = self.key.as_ref().map(|key| key.0.as_str()).unwrap_or("");
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response_body, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(&self.scope)
        .bind(key)
        .bind(&self.request_hash)
        .bind(i64::from(status.as_u16()))
        .bind(body.to_string())
        .bind(self.now_ms)
        .execute(conn)
        .await?;
        Ok(inserted.rows_affected() == 1)
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
