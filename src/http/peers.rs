//! `POST /peers/{channel}/{token}`: requests a channel's peer makes to the daemon (a PPG's
//! result notification). The adapter checks the token and reads the request; the core hands
//! what it read to the engine and answers the peer in the adapter's words once that is
//! committed. A wrong token counts as a guess, like a wrong API key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paystep_channel_core::{Channel, ChannelName, PeerAnswer, PeerRequest, PeerRequestOutcome};

use super::error::ApiError;
use super::throttle::{ClientAddress, Guess};
use super::AppState;

/// The running adapters, by channel, for their peers' requests.
pub type PeerChannels = Arc<HashMap<ChannelName, Arc<dyn Channel>>>;

pub async fn receive(
    State(state): State<AppState>,
    ClientAddress(source): ClientAddress,
    Path((channel, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(retry_after) = state.throttle.blocked(Guess::PeerToken, source) {
        return ApiError::too_many_requests(retry_after).into_response();
    }
    let adapter = channel
        .parse::<ChannelName>()
        .ok()
        .and_then(|name| state.peer_channels.get(&name).cloned());
    let outcome = adapter.and_then(|adapter| {
        adapter.receive_from_peer(PeerRequest {
            token: &token,
            body: &body,
        })
    });
    match outcome {
        None => ApiError::not_found("peer endpoint").into_response(),
        Some(PeerRequestOutcome::Refused) => {
            if let Err(retry_after) = state.throttle.failure(Guess::PeerToken, source, &token) {
                return ApiError::too_many_requests(retry_after).into_response();
            }
            tracing::warn!(source = %source, channel, "A peer request with a wrong token");
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", "wrong token").into_response()
        }
        Some(PeerRequestOutcome::Invalid(answer)) => peer_answer(answer),
        Some(PeerRequestOutcome::Received { message, answer }) => {
            match state.engine.receive(message).await {
                Ok(()) => peer_answer(answer),
                // Not acknowledged: the peer sends it again.
                Err(error) => {
                    tracing::error!(error = %error, channel, "A peer request not taken; the peer will send it again");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "try again later",
                    )
                    .into_response()
                }
            }
        }
    }
}

fn peer_answer(answer: PeerAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (status, [(CONTENT_TYPE, answer.content_type)], answer.body).into_response()
}
