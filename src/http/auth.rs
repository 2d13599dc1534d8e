//! Bearer tokens: a retailer's API key, or the operator's admin token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::engine::rows::RetailerRow;

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The authenticated retailer.
pub struct Retailer(pub RetailerRow);

impl FromRequestParts<AppState> for Retailer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let retailer = state
            .engine
            .authenticate_retailer(key)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Retailer(retailer))
    }
}

/// Proof that the request carries the operator's token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if constant_time_equal(
            token.as_bytes(),
            state.engine.settings.admin.token.as_bytes(),
        ) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Compares without an early exit, so the time taken tells nothing about the token.
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}
