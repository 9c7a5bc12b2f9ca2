//! The HTTP surface: routes, middleware, shared state.

mod auth;
pub mod error;
mod health;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tokenvault::crypto::Envelope;
use tokenvault::store::ConnectionStore;

pub use auth::ApiKeys;
use error::REQUEST_ID;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn ConnectionStore>,
    pub envelope: Envelope,
    pub api_keys: ApiKeys,
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/ping",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route_layer(middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .nest("/v1", v1)
        .fallback(|| async { error::ApiError::not_found("not_found", "no such endpoint") })
        .with_state(state)
        .layer(middleware::from_fn(request_id))
}

/// Gives every request an id (the caller's `X-Request-Id` if sane, else a
/// new UUID), echoes it in the response, and makes it available to logs and
/// error bodies.
async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span),
        )
        .await;
    if let Ok(value) = id.parse() {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
