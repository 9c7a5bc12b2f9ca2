//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use serde_json::json;

use super::AppState;

/// The answer of `GET /v1/ping`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Pong {
    /// Always `ok`.
    #[schema(examples("ok"))]
    pub status: &'static str,
}

/// `GET /v1/ping`: checks an API key without touching anything else.
#[utoipa::path(
    get,
    operation_id = "ping",
    path = "/v1/ping",
    tag = "meta",
    summary = "Check an API key",
    responses((status = 200, description = "The key is valid", body = Pong)),
)]
pub async fn ping() -> Json<Pong> {
    Json(Pong { status: "ok" })
}

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
    // Integration trouble is reported but does not make the instance
    // unready: another instance would not fare better, and the still-valid
    // tokens it serves are worth serving.
    let mut integrations: serde_json::Map<String, serde_json::Value> = state
        .integrations
        .all()
        .iter()
        .filter_map(|integration| {
            let key = integration.key();
            let health = state.vault.integration_health(key)?;
            let status = if health.misconfigured.is_some() {
                "misconfigured"
            } else if health.circuit != "closed" {
                "degraded"
            } else {
                "ok"
            };
            let mut entry = json!(health);
            entry["status"] = json!(status);
            Some((key.to_string(), entry))
        })
        .collect();
    for pending in state.integrations.unavailable() {
        integrations.insert(
            pending.key.to_string(),
            json!({"status": "unavailable", "error": pending.error, "since": pending.since, "attempts": pending.attempts}),
        );
    }
    // Only the database decides readiness: without it nothing works, and
    // every instance shares it. A state-store (Redis) outage stops new
    // connect flows but not token reads, refreshes or the proxy, and it
    // hits every instance alike: taking them all out of the load balancer
    // would turn a partial outage into a total one. It is reported as
    // `degraded` instead.
    let ready = database["status"] == "ok";
    let degraded = ready && state_store["status"] != "ok";
    for (dependency, check) in [("database", &database), ("state_store", &state_store)] {
        let up = if check["status"] == "ok" { 1.0 } else { 0.0 };
        metrics::gauge!("tokenvault_dependency_up", "dependency" => dependency).set(up);
    }
    let body = json!({
        "status": if degraded { "degraded" } else if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": database,
            "state_store": state_store,
            "master_key": { "status": "ok", "active": state.vault.envelope().keys().active_key_id().as_str() },
            "integrations": integrations,
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
