//! A user's connections: valid tokens on demand, forced refresh, status and
//! revocation.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokenvault::domain::IntegrationKey;
use tokenvault::refresh::{IssuedToken, TokenError};

use super::AppState;
use super::error::ApiError;
use super::flows::{integration, user_id};

/// The default `min_ttl`: a token handed out is good for at least a minute.
const DEFAULT_MIN_TTL_SECS: u64 = 60;
/// Longer than any provider's access-token lifetime we know of; a bigger
/// value would force a refresh on every call.
const MAX_MIN_TTL_SECS: u64 = 24 * 3600;

pub(super) fn token_error(err: TokenError, integration: &str) -> ApiError {
    match err {
        TokenError::NotConnected => ApiError::not_found(
            "connection_not_found",
            format!(
                "this user has no {integration} connection; start one with POST /v1/connect-sessions"
            ),
        ),
        TokenError::NeedsReauth { status, last_error } => ApiError::new(
            StatusCode::CONFLICT,
            "needs_reauth",
            format!(
                "the {integration} connection is {status}{}; the user must connect again: POST /v1/connect-sessions with {{\"user_id\", \"integration\": \"{integration}\"}} and send them to the returned connect_url",
                last_error
                    .map(|e| format!(" (provider said {})", e.code))
                    .unwrap_or_default()
            ),
        ),
        TokenError::UnknownIntegration(key) => ApiError::not_found(
            "unknown_integration",
            format!("no integration named {key:?} is configured; see GET /v1/integrations"),
        ),
        TokenError::IntegrationMisconfigured { error } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "integration_misconfigured",
            format!(
                "the provider rejected the {integration} client credentials ({}); fix the integration's configuration, then POST /v1/integrations/{integration}/reset",
                error.code
            ),
        ),
        TokenError::ProviderUnavailable {
            reason,
            retry_after,
        } => {
            let error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                format!("the token has expired and could not be refreshed: {reason}"),
            );
            match retry_after {
                Some(delay) => error.with_retry_after(delay),
                None => error,
            }
        }
        TokenError::Vault(err) => ApiError::internal(err),
    }
}

fn key_of(raw: &str) -> Result<IntegrationKey, ApiError> {
    IntegrationKey::parse(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_integration",
            e.to_string(),
        )
    })
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    min_ttl: Option<String>,
}

fn min_ttl(query: &TokenQuery) -> Result<Duration, ApiError> {
    let Some(raw) = &query.min_ttl else {
        return Ok(Duration::from_secs(DEFAULT_MIN_TTL_SECS));
    };
    raw.parse::<u64>()
        .ok()
        .filter(|secs| *secs <= MAX_MIN_TTL_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_min_ttl",
                format!("min_ttl must be a whole number of seconds from 0 to {MAX_MIN_TTL_SECS}, got {raw:?}"),
            )
        })
}

fn token_body(issued: &IssuedToken) -> Value {
    let tokens = &issued.tokens;
    json!({
        "access_token": tokens.access_token.expose(),
        "token_type": tokens.token_type.as_str(),
        "expires_at": tokens.expires_at,
        "scopes": tokens.scopes.to_vec(),
    })
}

/// `GET /v1/users/{user_id}/connections/{integration}/token?min_ttl=60`
#[tracing::instrument(skip_all)]
pub async fn token(
    State(state): State<AppState>,
    Path((user, key)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
) -> Result<Json<Value>, ApiError> {
    let user = user_id(&user)?;
    let integration = integration(&state, &key)?.key().clone();
    let min_ttl = min_ttl(&query)?;
    let issued = state
        .vault
        .valid_token(&user, &integration, min_ttl)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(token_body(&issued)))
}

/// `POST /v1/users/{user_id}/connections/{integration}/refresh`
#[tracing::instrument(skip_all)]
pub async fn force_refresh(
    State(state): State<AppState>,
    Path((user, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user = user_id(&user)?;
    let integration = integration(&state, &key)?.key().clone();
    let issued = state
        .vault
        .force_refresh(&user, &integration)
        .await
        .map_err(|err| token_error(err, &key))?;
    let mut body = json!(tokenvault::vault::ConnectionView::from(&issued.connection));
    body["refreshed"] = json!(issued.outcome == tokenvault::refresh::TokenOutcome::Refreshed);
    Ok(Json(body))
}

/// `GET /v1/users/{user_id}/connections`
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = user_id(&user)?;
    let connections = state
        .vault
        .connections(&user)
        .await
        .map_err(ApiError::internal)?;
    let any_connected = connections
        .iter()
        .any(|c| c.status == tokenvault::domain::ConnectionStatus::Connected);
    Ok(Json(json!({
        "connections": connections,
        "any_connected": any_connected,
    })))
}

/// `GET /v1/users/{user_id}/connections/{integration}`
#[tracing::instrument(skip_all)]
pub async fn show(
    State(state): State<AppState>,
    Path((user, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user = user_id(&user)?;
    let integration = key_of(&key)?;
    match state
        .vault
        .connection(&user, &integration)
        .await
        .map_err(ApiError::internal)?
    {
        Some(view) => Ok(Json(json!(view))),
        None => Err(token_error(TokenError::NotConnected, &key)),
    }
}

/// `DELETE /v1/users/{user_id}/connections/{integration}`
#[tracing::instrument(skip_all)]
pub async fn revoke(
    State(state): State<AppState>,
    Path((user, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user = user_id(&user)?;
    // No configuration needed: a connection of a removed integration can
    // still be erased (it is just not revoked at the provider).
    let integration = key_of(&key)?;
    let revocation = state
        .vault
        .disconnect(&user, &integration)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(json!(revocation)))
}

/// `POST /v1/integrations/{key}/reset`: clears a misconfigured verdict and
/// closes the circuit breaker after the operator fixed the credentials.
#[tracing::instrument(skip_all)]
pub async fn reset_integration(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let integration = integration(&state, &key)?.key().clone();
    state
        .vault
        .reset_integration(&integration)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(json!({
        "integration": integration,
        "health": state.vault.integration_health(&integration),
    })))
}
