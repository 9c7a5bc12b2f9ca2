//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use serde_json::json;

use super::AppState;

/// Alive: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers and a master key is loaded.
#[tracing::instrument(skip_all)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = match state.vault.store().ping().await {
        Ok(()) => json!({ "status": "ok" }),
        Err(err) => json!({ "status": "error", "message": err.to_string() }),
    };
    let state_store = match state.states.ping().await {
        Ok(()) => json!({ "status": "ok" }),
        Err(err) => json!({ "status": "error", "message": err.to_string() }),
    };
    let ready = database["status"] == "ok" && state_store["status"] == "ok";
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": database,
            "state_store": state_store,
            "master_key": { "status": "ok", "active": state.vault.envelope().keys().active_key_id().as_str() },
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
