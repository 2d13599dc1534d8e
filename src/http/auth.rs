//! Bearer tokens: a retailer's API key, or the operator's admin token. Failures are
//! throttled per client address and per target, and logged with the source, never with
//! what was presented.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use paystep_channel_core::constant_time_equal;

use super::error::ApiError;
use super::throttle::Guess;
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

/// A failed authentication: 401, or 429 once the source or the target failed too often.
fn refused(state: &AppState, parts: &Parts, guess: Guess, target: &str) -> ApiError {
    let source = state.throttle.client_of(parts);
    let throttled = state.throttle.failure(guess, source, target);
    tracing::warn!(source = %source, guess = guess.as_str(), throttled = throttled.is_err(), "Failed authentication");
    match throttled {
        Ok(()) => ApiError::unauthorized(),
        Err(retry_after) => ApiError::too_many_requests(retry_after),
    }
}

/// The authenticated retailer.
pub struct Retailer(pub RetailerRow);

impl FromRequestParts<AppState> for Retailer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).unwrap_or_default();
        let retailer = match key {
            "" => None,
            key => state.engine.authenticate_retailer(key).await?,
        };
        match retailer {
            Some(retailer) => Ok(Retailer(retailer)),
            None => Err(refused(state, parts, Guess::ApiKey, key)),
        }
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
        let token = bearer(parts).unwrap_or_default();
        // The operator chose this token: a source over its quota is refused unchecked.
        let source = state.throttle.client_of(parts);
        if let Some(retry_after) = state.throttle.blocked(Guess::AdminToken, source) {
            return Err(ApiError::too_many_requests(retry_after));
        }
        if constant_time_equal(
            token.as_bytes(),
            state.engine.settings.admin.token.as_bytes(),
        ) {
            Ok(Admin)
        } else {
            // One target: whoever guesses, it is the one admin token being guessed.
            Err(refused(state, parts, Guess::AdminToken, "admin"))
        }
    }
}
