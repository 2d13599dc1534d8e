//! The API's error shape, and the one place where errors of every layer become responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::domain::{FieldError, MoneyError};
use crate::engine::EngineError;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
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
        (self.status, Json(self.body())).into_response()
    }
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
            EngineError::Database(ref database_error) => {
                // Two daemons racing for the same new process code lose at the unique index;
                // the client may simply try again.
                if crate::store::is_unique_violation(database_error) {
                    tracing::warn!(error = %database_error, "Unique conflict, answered as retriable");
                    return ApiError::new(
                        S::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "a concurrent change won; try again",
                    );
                }
                tracing::error!(error = %error, "Database error");
                ApiError::internal()
            }
            EngineError::Invariant(ref message) => {
                tracing::error!(invariant = %message, "Invariant broken");
                ApiError::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "Store error");
        ApiError::internal()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(error = %error, "Database error");
        ApiError::internal()
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
    serde_json::from_slice(body).map_err(|error| match error.classify() {
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
    })
}
