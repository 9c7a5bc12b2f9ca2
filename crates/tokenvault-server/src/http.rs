//! The HTTP surface.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokenvault::crypto::Envelope;
use tokenvault::store::ConnectionStore;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn ConnectionStore>,
    pub envelope: Envelope,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Alive: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers and a master key is loaded.
#[tracing::instrument(skip_all)]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = match state.store.ping().await {
        Ok(()) => json!({ "status": "ok" }),
        Err(err) => json!({ "status": "error", "message": err.to_string() }),
    };
    let ready = database["status"] == "ok";
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": database,
            "master_key": { "status": "ok", "active": state.envelope.keys().active_key_id().as_str() },
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
