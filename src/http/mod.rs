//! The HTTP surface: retailer API, operator API, confirmation pages, health and metrics.

pub mod admin;
mod auth;
pub mod error;
mod health;
mod idempotency;
mod ids;
mod page;
mod peers;
mod retailer;
pub mod throttle;
mod voice;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::engine::Engine;
use error::ApiError;
use throttle::Throttle;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub throttle: Arc<Throttle>,
    /// The adapters whose peers may call the daemon (`/peers/{channel}/{token}`).
    pub peer_channels: peers::PeerChannels,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> AppState {
        let throttle = Arc::new(Throttle::new(&engine.settings.security));
        AppState {
            engine,
            throttle,
            peer_channels: Arc::default(),
        }
    }

    /// Routes peers' requests to these adapters.
    pub fn with_peer_channels(mut self, channels: peers::PeerChannels) -> AppState {
        self.peer_channels = channels;
        self
    }
}

const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Builds the whole router, so that tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    let body_limit_bytes = state.engine.settings.http.body_limit_bytes;
    let request_timeout = Duration::from_millis(state.engine.settings.http.request_timeout_ms);
    let metrics_here = state.engine.settings.http.metrics_listen.is_none();
    let mut router = Router::new()
        .merge(api_routes())
        .route(
            "/c/{token}",
            get(page::show)
                .post(page::answer)
                .layer(axum::middleware::map_response(page::protective_headers)),
        )
        .route("/peers/{channel}/{token}", post(peers::receive))
        .route("/voice/twiml/calls/{message_id}", post(voice::script))
        .route(
            "/voice/twiml/calls/{message_id}/answer",
            post(voice::answer),
        )
        .route(
            "/voice/twiml/calls/{message_id}/status",
            post(voice::status),
        )
        .route(
            "/voice/twiml/calls/{message_id}/recording",
            post(voice::recording),
        )
        .route(
            "/voice/vxml/calls/{message_id}/{token}",
            get(voice::vxml_script).post(voice::vxml_script),
        )
        .route(
            "/voice/vxml/calls/{message_id}/answer/{token}",
            post(voice::vxml_answer),
        )
        .route(
            "/voice/vxml/calls/{message_id}/status/{token}",
            post(voice::vxml_status),
        )
        .route(
            "/voice/vxml/incoming/{token}",
            get(voice::vxml_incoming).post(voice::vxml_incoming),
        )
        .route(
            "/voice/vxml/incoming/{token}/code",
            post(voice::vxml_incoming_code),
        )
        .route(
            "/voice/vxml/incoming/{token}/pin",
            post(voice::vxml_incoming_pin),
        )
        .route("/voice/twiml/incoming", post(voice::incoming))
        .route("/voice/twiml/incoming/code", post(voice::incoming_code))
        .route("/voice/twiml/incoming/pin", post(voice::incoming_pin))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi));
    if metrics_here {
        router = router.route("/metrics", get(health::metrics_for_admin));
    }
    router
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(body_limit_bytes))
        // Outside the limit layer, which answers by itself when Content-Length is too big.
        .layer(axum::middleware::from_fn(map_body_limit))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            answer_within,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// `/metrics` alone, for `http.metrics_listen`: no token there, so bind it where only the
/// monitoring system reaches.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

/// The retailer and operator APIs: JSON in and out.
fn api_routes() -> Router<AppState> {
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
        .route_layer(axum::middleware::from_fn(require_json))
}

/// The request's span names the route's template, never its path: the path of a
/// confirmation page is a capability token, and whoever reads a log must not get it.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!("request", method = %request.method(), route)
}

/// A POST to the API carries JSON or nothing: a body with any other Content-Type, or
/// without one, is 415 before anything is read. An empty body may say what it likes
/// (`curl -X POST -d ''` says it is a form).
async fn require_json(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() == axum::http::Method::POST && !json_or_empty(request.headers()) {
        return ApiError::unsupported_media_type().into_response();
    }
    next.run(request).await
}

fn json_or_empty(headers: &HeaderMap) -> bool {
    let declared_empty = headers
        .get(CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() == b"0");
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || (headers.contains_key(CONTENT_LENGTH) && !declared_empty);
    match headers.get(CONTENT_TYPE) {
        _ if !has_body => true,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json")),
        None => false,
    }
}

async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI_JSON)
}

/// Answers 503 `timeout`, in the API's error shape, when a request runs longer than
/// `http.request_timeout_ms` (a database that stopped answering must not hold clients).
/// The handler is dropped at its next await, but a write it queued for group commit still
/// commits, so the answer does not claim that nothing changed.
async fn answer_within(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(timeout_ms, "Request timed out");
            ApiError::retriable(
                "timeout",
                format!("the request did not finish within {timeout_ms} ms; a write may still be made: repeat it with the same Idempotency-Key to learn its outcome"),
                1,
            )
            .into_response()
        }
    }
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
