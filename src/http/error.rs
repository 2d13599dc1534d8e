//! The API's error shape, and the one place where errors of every layer become responses.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::throttle::RetryAfter;
use crate::domain::{FieldError, MoneyError};
use crate::engine::EngineError;
use crate::store::{StoreError, Unavailable};

/// When to try again after the database was unreachable: a restart or failover takes
/// seconds.
pub(crate) const UNREACHABLE_RETRY_AFTER_S: u64 = 1;
/// When to try again after the database could not write to its storage: someone has to
/// free space or fix the disk, which takes longer.
const STORAGE_RETRY_AFTER_S: u64 = 30;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Sent as `Retry-After` (seconds) with a 429 or 503.
    pub retry_after: Option<RetryAfter>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn too_many_requests(retry_after: RetryAfter) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "too many failed attempts; try again in {} s",
                retry_after.seconds
            ),
        );
        error.retry_after = Some(retry_after);
        error
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        )
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    /// A 503 with `Retry-After`: the request may be sent again unchanged.
    pub fn retriable(code: &'static str, message: impl Into<String>, seconds: u64) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        error.retry_after = Some(RetryAfter { seconds });
        error
    }

    /// The database is unavailable and nothing of the request was done.
    pub fn database_unavailable(unavailable: Unavailable) -> ApiError {
        match unavailable {
            Unavailable::Unreachable => ApiError::retriable(
                "database_unavailable",
                "the database is unavailable; nothing was changed; try again shortly",
                UNREACHABLE_RETRY_AFTER_S,
            ),
            Unavailable::Storage => ApiError::retriable(
                "storage_unavailable",
                "the database cannot write to its storage (full or failing); nothing was changed; try again later",
                STORAGE_RETRY_AFTER_S,
            ),
        }
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = &self.details {
            error["details"] = details.clone();
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(retry_after) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after.seconds));
        }
        response
    }
}

/// PostgreSQL refuses text with a NUL byte ("invalid byte sequence for encoding UTF8"),
/// which SQLite stores. That is the client's input, never ours: a 400, not a 500.
fn is_text_the_database_refuses(error: &sqlx::Error) -> bool {
    const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    const UNTRANSLATABLE_CHARACTER: &str = "22P05";
    match error {
        sqlx::Error::Database(database_error) => matches!(
            database_error.code().as_deref(),
            Some(CHARACTER_NOT_IN_REPERTOIRE | UNTRANSLATABLE_CHARACTER)
        ),
        _ => false,
    }
}

fn database_error(error: &sqlx::Error) -> ApiError {
    if is_text_the_database_refuses(error) {
        return ApiError::bad_request("the request contains a character that is not allowed");
    }
    if let Some(unavailable) = crate::store::unavailable(error) {
        tracing::warn!(error = %error, ?unavailable, "Database unavailable; answered 503");
        return ApiError::database_unavailable(unavailable);
    }
    tracing::error!(error = %error, "Database error");
    ApiError::internal()
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            error.to_string(),
        )
        .with_details(json!({"field": error.field}))
    }
}

/// Money errors name the field they came from.
pub fn money_error(field: &'static str, error: MoneyError) -> ApiError {
    let code = match error {
        MoneyError::UnknownCurrency(_) | MoneyError::CurrencyWithoutExponent(_) => {
            "unsupported_currency"
        }
        MoneyError::NotADecimal(_)
        | MoneyError::TooManyDecimals { .. }
        | MoneyError::NotPositive
        | MoneyError::OverMaximum(_) => "invalid_amount",
    };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        format!("{field}: {error}"),
    )
    .with_details(json!({"field": field}))
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        use StatusCode as S;
        match error {
            EngineError::NotFound(what) => ApiError::not_found(what),
            EngineError::CustomerNotFound => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "customer_not_found",
                error.to_string(),
            ),
            EngineError::ProcessNotActive { ref status } => {
                let status = status.clone();
                ApiError::new(S::CONFLICT, "process_not_active", error.to_string())
                    .with_details(json!({"status": status}))
            }
            EngineError::TopUpPending => {
                ApiError::new(S::CONFLICT, "top_up_pending", error.to_string())
            }
            EngineError::StepLimitReached(_) => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "step_limit_reached",
                error.to_string(),
            ),
            EngineError::ChannelUnavailable { .. } => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "channel_unavailable",
                error.to_string(),
            ),
            EngineError::CodeSpaceExhausted => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", error.to_string())
            }
            EngineError::Conflict(message) => ApiError::new(S::CONFLICT, "conflict", message),
            EngineError::Invalid(field_error) => field_error.into(),
            EngineError::InvalidAmount { field, error } => money_error(field, error),
            EngineError::Database(ref cause) => {
                // Two daemons racing for the same new process code lose at the unique index;
                // the client may simply try again.
                if crate::store::is_unique_violation(cause) {
                    tracing::warn!(error = %cause, "Unique conflict, answered as retriable");
                    return ApiError::new(
                        S::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "a concurrent change won; try again",
                    );
                }
                database_error(cause)
            }
            EngineError::Store(store) => store.into(),
            EngineError::Invariant(ref message) => {
                tracing::error!(invariant = %message, "Invariant broken");
                ApiError::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Database(database) => return database_error(database),
            // Nothing was done: the client may send the same request again.
            StoreError::Busy => {
                return ApiError::retriable(
                    "unavailable",
                    format!("{error}; nothing was changed"),
                    UNREACHABLE_RETRY_AFTER_S,
                );
            }
            StoreError::CommitFailed {
                unavailable: Some(unavailable),
                ..
            } => {
                tracing::warn!(error = %error, "Write not committed: the database is unavailable");
                return ApiError::database_unavailable(*unavailable);
            }
            StoreError::WriterStopped | StoreError::CommitFailed { .. } => {
                tracing::error!(error = %error, "Write not committed");
                return ApiError::retriable(
                    "unavailable",
                    "the write could not be committed; nothing was changed",
                    UNREACHABLE_RETRY_AFTER_S,
                );
            }
            // Unlike every other failure, this one may have changed something: the client
            // has to find out before repeating a write that is not idempotent.
            StoreError::CommitOutcomeUnknown(_) => {
                tracing::error!(error = %error, "Commit outcome unknown");
                return ApiError::retriable(
                    "commit_outcome_unknown",
                    "the connection to the database broke during the commit, so the change may or may not have been made; send the request again with the same Idempotency-Key, or look before repeating it",
                    UNREACHABLE_RETRY_AFTER_S,
                );
            }
            StoreError::Migration(_) | StoreError::Directory { .. } => {}
        }
        tracing::error!(error = %error, "Store error");
        ApiError::internal()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        database_error(&error)
    }
}

/// Parses a JSON body strictly: malformed JSON, unknown fields and wrong types are 400s that
/// say what is wrong, before anything is changed.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(json_error)?;
    if let Some(path) = first_null(&value, String::new()) {
        return Err(ApiError::bad_request(format!(
            "the body does not match the request schema: `{path}` is null; leave the field out instead"
        )));
    }
    // From the bytes again, not from `value`: a map keeps only the last of two equal keys,
    // and a body that says `amount` twice must be refused, not read one way here and
    // another by a proxy in front.
    serde_json::from_slice(body).map_err(json_error)
}

/// The path of the first `null` in a request body. No field of any request is nullable:
/// an optional field is left out, so a null is always a mistake worth naming.
fn first_null(value: &Value, path: String) -> Option<String> {
    match value {
        Value::Null => Some(if path.is_empty() { "body".into() } else { path }),
        Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            let path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            first_null(field, path)
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| first_null(item, format!("{path}[{index}]"))),
        _ => None,
    }
}

fn json_error(error: serde_json::Error) -> ApiError {
    match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {error}"),
        ),
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            ApiError::bad_request(format!(
                "the body does not match the request schema: {error}"
            ))
        }
    }
}

#[cfg(test)]
mod store_error_tests {
    use super::*;

    #[test]
    fn a_full_write_queue_is_a_503_with_retry_after_that_says_nothing_changed() {
        let response = ApiError::from(StoreError::Busy).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let failed = ApiError::from(StoreError::CommitFailed {
            message: "disk I/O error".into(),
            unavailable: None,
        });
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(failed.body()["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("nothing was changed"));
    }
}

#[cfg(test)]
mod unavailable_database_tests {
    use super::*;

    fn assert_retriable(error: ApiError, code: &str) {
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", error);
        assert_eq!(error.code, code);
        let response = error.into_response();
        assert!(response.headers().contains_key(RETRY_AFTER));
    }

    #[test]
    fn an_unreachable_database_is_a_503_that_says_nothing_changed() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            let answer = ApiError::from(error);
            assert!(answer.message.contains("nothing was changed"));
            assert_retriable(answer, "database_unavailable");
        }
    }

    #[test]
    fn a_batch_that_failed_on_a_full_disk_is_a_503_naming_the_storage() {
        let failed = StoreError::CommitFailed {
            message: "database or disk is full".into(),
            unavailable: Some(Unavailable::Storage),
        };
        assert_retriable(ApiError::from(failed), "storage_unavailable");
    }

    #[test]
    fn a_commit_whose_connection_broke_does_not_claim_nothing_changed() {
        let broken = StoreError::CommitOutcomeUnknown(sqlx::Error::Io(
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
        let answer = ApiError::from(broken);
        assert!(!answer.message.contains("nothing was changed"));
        assert_retriable(answer, "commit_outcome_unknown");
    }

    #[test]
    fn other_database_errors_stay_internal() {
        let answer = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
