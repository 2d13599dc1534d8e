//! The HTTP surface: retailer API, operator API, confirmation pages, health and metrics.

pub mod admin;
mod auth;
pub mod error;
mod health;
mod idempotency;
mod page;
mod retailer;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::engine::Engine;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
}

const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Builds the whole router, so that tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    let body_limit_bytes = state.engine.settings.http.body_limit_bytes;
    let request_timeout = Duration::from_millis(state.engine.settings.http.request_timeout_ms);
    Router::new()
        .route(
            "/v1/processes",
            post(retailer::create_process).get(retailer::list_processes),
        )
        .route("/v1/processes/{id}", get(retailer::get_process))
        .route(
            "/v1/processes/{id}/steps",
            post(retailer::create_step).get(retailer::list_steps),
        )
        .route("/v1/processes/{id}/close", post(retailer::close_process))
        .route("/v1/events", get(retailer::list_events))
        .route("/admin/v1/customers", post(admin::create_customer))
        .route("/admin/v1/customers/{id}", get(admin::get_customer))
        .route(
            "/admin/v1/customers/{id}/deposits",
            post(admin::create_deposit),
        )
        .route("/admin/v1/retailers", post(admin::create_retailer))
        .route("/admin/v1/ledger/verify", get(admin::verify_ledger))
        .route("/admin/v1/outbox", get(admin::list_outbox))
        .route("/admin/v1/outbox/{id}/requeue", post(admin::requeue_outbox))
        .route(
            "/admin/v1/retailers/{id}/api-key/rotate",
            post(admin::rotate_api_key),
        )
        .route(
            "/admin/v1/retailers/{id}/webhook-secret/rotate",
            post(admin::rotate_webhook_secret),
        )
        .route("/c/{token}", get(page::show).post(page::answer))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(body_limit_bytes))
        // Outside the limit layer, which answers by itself when Content-Length is too big.
        .layer(axum::middleware::from_fn(map_body_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI_JSON)
}

/// The body limit layer answers with a bare 413; give it the API's error shape.
async fn map_body_limit(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        )
        .into_response();
    }
    response
}
