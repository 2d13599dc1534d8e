//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sqlx::Row;

use super::auth::Admin;
use super::AppState;

pub async fn healthz() -> impl IntoResponse {
    "ok"
}

/// How long readiness waits for the database. A probe must be answered before its prober
/// gives up (Kubernetes waits one second by default), whatever `database.acquire_timeout_ms`
/// says; a database that takes longer to answer `SELECT 1` is not ready for requests either.
const READINESS_PING_TIMEOUT_MS: u64 = 1000;

/// Ready when the database answers. On SQLite a full disk keeps the daemon ready: reads
/// still work, writes are refused one by one with 503 `storage_unavailable`, and there is
/// no other daemon a balancer could send them to.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let timeout = std::time::Duration::from_millis(READINESS_PING_TIMEOUT_MS);
    match tokio::time::timeout(timeout, state.engine.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready"),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "Not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READINESS_PING_TIMEOUT_MS,
                "Not ready: the database did not answer in time"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

/// `/metrics` on the public listener: the admin token is required.
pub async fn metrics_for_admin(_admin: Admin, state: State<AppState>) -> impl IntoResponse {
    metrics(state).await
}

/// Gauges read from the database, so every daemon sharing it reports the same truth.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = String::new();
    let pool = state.engine.store.reader();
    let processes = sqlx::query("SELECT status, COUNT(*) AS n FROM processes GROUP BY status")
        .fetch_all(pool)
        .await;
    let outbox =
        sqlx::query("SELECT status, channel, COUNT(*) AS n FROM outbox GROUP BY status, channel")
            .fetch_all(pool)
            .await;
    let (Ok(processes), Ok(outbox)) = (processes, outbox) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".to_string(),
        );
    };
    text.push_str(
        "# HELP paystep_processes Processes by status.\n# TYPE paystep_processes gauge\n",
    );
    for row in processes {
        let status: String = row.try_get("status").unwrap_or_default();
        let count: i64 = row.try_get("n").unwrap_or_default();
        text.push_str(&format!(
            "paystep_processes{{status=\"{status}\"}} {count}\n"
        ));
    }
    text.push_str("# HELP paystep_outbox_messages Outbound messages by status and channel.\n# TYPE paystep_outbox_messages gauge\n");
    for row in outbox {
        let status: String = row.try_get("status").unwrap_or_default();
        let channel: String = row.try_get("channel").unwrap_or_default();
        let count: i64 = row.try_get("n").unwrap_or_default();
        text.push_str(&format!(
            "paystep_outbox_messages{{status=\"{status}\",channel=\"{channel}\"}} {count}\n"
        ));
    }
    (StatusCode::OK, text)
}
