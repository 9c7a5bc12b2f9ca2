//! A user's connections: valid tokens on demand, forced refresh, status and
//! revocation.

use crate::http::error::ErrorCode;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvault::domain::{IntegrationKey, TokenSet, UserId};
use tokenvault::refresh::{IntegrationHealthView, Revocation, TokenError};
use tokenvault::vault::ConnectionView;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::flows::{configured_key, integration, user_id};

/// The default `min_ttl`: a token handed out is good for at least a minute.
const DEFAULT_MIN_TTL_SECS: u64 = 60;
/// Longer than any provider's access-token lifetime we know of; a bigger
/// value would force a refresh on every call.
const MAX_MIN_TTL_SECS: u64 = 24 * 3600;

pub(super) fn token_error(err: TokenError, integration: &str) -> ApiError {
    match err {
        TokenError::NotConnected => ApiError::new(
            ErrorCode::ConnectionNotFound,
            format!(
                "this user has no {integration} connection; start one with POST /v1/connect-sessions"
            ),
        ),
        TokenError::NeedsReauth { status, last_error } => ApiError::new(
            ErrorCode::NeedsReauth,
            format!(
                "the {integration} connection is {status}{}; the user must connect again: POST /v1/connect-sessions with {{\"user_id\", \"integration\": \"{integration}\"}} and send them to the returned connect_url",
                last_error
                    .map(|e| format!(" (provider said {})", e.code))
                    .unwrap_or_default()
            ),
        ),
        TokenError::UnknownIntegration(key) => ApiError::new(
            ErrorCode::UnknownIntegration,
            format!("no integration named {key:?} is configured; see GET /v1/integrations"),
        ),
        TokenError::IntegrationMisconfigured { error } => ApiError::new(
            ErrorCode::IntegrationMisconfigured,
            format!(
                "the provider rejected the {integration} client credentials ({}); fix the integration's configuration, then POST /v1/integrations/{integration}/reset",
                error.code
            ),
        ),
        TokenError::ProviderUnavailable { cause, retry_after } => {
            let error = ApiError::new(
                ErrorCode::ProviderUnavailable,
                format!("no usable token: the refresh it needs failed: {cause}"),
            );
            match retry_after {
                Some(delay) => error.with_retry_after(delay),
                None => error,
            }
        }
        TokenError::Vault(err) => ApiError::internal(err),
    }
}

pub(super) fn key_of(raw: &str) -> Result<IntegrationKey, ApiError> {
    IntegrationKey::parse(raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidIntegration, e.to_string()))
}

/// Kept a string so a malformed value answers our `invalid_min_ttl`, not
/// the extractor's plain-text rejection.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The token must stay valid at least this many seconds; a token that
    /// would not is refreshed first (unless the provider's tokens live
    /// shorter than this: then the freshest one is returned, see the
    /// operation's description).
    #[param(value_type = u64, required = false, minimum = 0, maximum = 86400, default = 60)]
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
                ErrorCode::InvalidMinTtl,
                format!("min_ttl must be a whole number of seconds from 0 to {MAX_MIN_TTL_SECS}, got {raw:?}"),
            )
        })
}

/// A usable access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessTokenBody {
    /// The access token in the clear, for the provider's API.
    pub access_token: String,
    /// How to present it: `Bearer` or `MAC`.
    #[schema(examples("Bearer"))]
    pub token_type: &'static str,
    /// When it expires; null when the provider did not say (valid until revoked).
    pub expires_at: Option<DateTime<Utc>>,
    /// The granted scopes.
    pub scopes: Vec<String>,
}

impl From<&TokenSet> for AccessTokenBody {
    fn from(tokens: &TokenSet) -> Self {
        Self {
            access_token: tokens.access_token.expose().to_owned(),
            token_type: tokens.token_type.as_str(),
            expires_at: tokens.expires_at,
            scopes: tokens.scopes.to_vec(),
        }
    }
}

/// A connection's status after a forced refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefreshedConnection {
    #[serde(flatten)]
    pub connection: ConnectionView,
    /// Whether this call refreshed the tokens (false: another refresh, here
    /// or on another instance, had just done it).
    pub refreshed: bool,
}

/// A user's connections.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
    /// Whether any of them is `connected`.
    pub any_connected: bool,
}

/// An integration after a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationReset {
    pub integration: IntegrationKey,
    pub health: Option<IntegrationHealthView>,
}

/// `GET /v1/users/{user_id}/connections/{integration}/token?min_ttl=60`
#[utoipa::path(
    get,
    operation_id = "getToken",
    path = "/v1/users/{user_id}/connections/{integration}/token",
    tag = "connections",
    summary = "A valid access token for the user's connection",
    description = "Refreshed first when it would expire within `min_ttl` (once across all instances), and only when a refresh can improve the answer: a `min_ttl` longer than the lifetime the provider gives its tokens (measured at the last refresh) is not met by refreshing on every call — the fresh token is returned with its true `expires_at`, and refreshed again once less than half a lifetime is left. While the provider is down or the circuit is open, a still-valid token is returned.",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "A configured integration"),
        TokenQuery,
    ),
    responses(
        (status = 200, description = "A token valid for at least `min_ttl` seconds, or the freshest the provider issues when its tokens live shorter (see `expires_at`)", body = AccessTokenBody),
        (status = 400, description = "`invalid_user_id`, `invalid_min_ttl`, `invalid_query` (e.g. a repeated parameter), `invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`unknown_integration`, `connection_not_found`", body = ErrorBody),
        (status = 409, description = "`needs_reauth`: the grant was revoked or expired; send the user through a connect session again", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` (with `Retry-After`), `integration_misconfigured`: the token has expired and cannot be refreshed now", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds until a retry may succeed (`provider_unavailable` only)"))),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn token(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Json<AccessTokenBody>, ApiError> {
    let user = user_id(&user)?;
    let integration = configured_key(&state, &key)?;
    let min_ttl = min_ttl(&query)?;
    let issued = state
        .vault
        .valid_token(&user, &integration, min_ttl)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(AccessTokenBody::from(&*issued.tokens)))
}

/// `POST /v1/users/{user_id}/connections/{integration}/refresh`
#[utoipa::path(
    post,
    operation_id = "refreshConnection",
    path = "/v1/users/{user_id}/connections/{integration}/refresh",
    tag = "connections",
    summary = "Refresh the user's tokens now",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "A configured integration"),
    ),
    responses(
        (status = 200, description = "The connection's status document", body = RefreshedConnection),
        (status = 400, description = "`invalid_user_id`, `invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`unknown_integration`, `connection_not_found`", body = ErrorBody),
        (status = 409, description = "`needs_reauth`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` (with `Retry-After`), `integration_misconfigured`", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds until a retry may succeed (`provider_unavailable` only)"))),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn force_refresh(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
) -> Result<Json<RefreshedConnection>, ApiError> {
    let user = user_id(&user)?;
    let integration = configured_key(&state, &key)?;
    let issued = state
        .vault
        .force_refresh(&user, &integration)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(RefreshedConnection {
        connection: ConnectionView::from(&*issued.connection),
        refreshed: issued.outcome == tokenvault::refresh::TokenOutcome::Refreshed,
    }))
}

/// `GET /v1/users/{user_id}/connections`
#[utoipa::path(
    get,
    operation_id = "listUserConnections",
    path = "/v1/users/{user_id}/connections",
    tag = "connections",
    summary = "The user's connections",
    params(("user_id" = UserId, Path, description = "The application's id for its user")),
    responses(
        (status = 200, description = "Every connection of the user, disconnected ones included", body = ConnectionList),
        (status = 400, description = "`invalid_user_id`, `invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<ConnectionList>, ApiError> {
    let user = user_id(&user)?;
    let connections = state
        .vault
        .connections(&user)
        .await
        .map_err(ApiError::internal)?;
    let any_connected = connections
        .iter()
        .any(|c| c.status == tokenvault::domain::ConnectionStatus::Connected);
    Ok(Json(ConnectionList {
        connections,
        any_connected,
    }))
}

/// `GET /v1/users/{user_id}/connections/{integration}`
#[utoipa::path(
    get,
    operation_id = "getConnection",
    path = "/v1/users/{user_id}/connections/{integration}",
    tag = "connections",
    summary = "One connection's status document",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "An integration key (configured or not: connections of removed integrations stay visible)"),
    ),
    responses(
        (status = 200, description = "The connection, without token material; a revoked one has `status: disconnected` until `retention_days` removes it", body = ConnectionView),
        (status = 400, description = "`invalid_user_id`, `invalid_integration`, `invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`connection_not_found`: the user has no connection to this integration", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
) -> Result<Json<ConnectionView>, ApiError> {
    let user = user_id(&user)?;
    let integration = key_of(&key)?;
    match state
        .vault
        .connection(&user, &integration)
        .await
        .map_err(ApiError::internal)?
    {
        Some(view) => Ok(Json(view)),
        None => Err(token_error(TokenError::NotConnected, &key)),
    }
}

/// `DELETE /v1/users/{user_id}/connections/{integration}`
#[utoipa::path(
    delete,
    operation_id = "revokeConnection",
    path = "/v1/users/{user_id}/connections/{integration}",
    tag = "connections",
    summary = "Revoke the connection and erase its tokens",
    description = "Revokes at the provider (RFC 7009), marks the connection `disconnected` and erases the sealed tokens. A provider failure never blocks the local erase.",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "An integration key (configured or not: a connection of a removed integration is erased without revocation)"),
    ),
    responses(
        (status = 200, description = "What the revocation did", body = Revocation),
        (status = 400, description = "`invalid_user_id`, `invalid_integration`, `invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`connection_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn revoke(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
) -> Result<Json<Revocation>, ApiError> {
    let user = user_id(&user)?;
    // No configuration needed: a connection of a removed integration can
    // still be erased (it is just not revoked at the provider).
    let integration = key_of(&key)?;
    let revocation = state
        .vault
        .disconnect(&user, &integration)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(revocation))
}

/// `POST /v1/integrations/{key}/reset`: clears a misconfigured verdict and
/// closes the circuit breaker after the operator fixed the credentials.
#[utoipa::path(
    post,
    operation_id = "resetIntegration",
    path = "/v1/integrations/{key}/reset",
    tag = "integrations",
    summary = "Clear a misconfigured verdict and close the circuit",
    params(("key" = IntegrationKey, Path, description = "A configured integration")),
    responses(
        (status = 200, description = "The integration's health after the reset", body = IntegrationReset),
        (status = 400, description = "`invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`unknown_integration`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn reset_integration(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<IntegrationReset>, ApiError> {
    let integration = integration(&state, &key)?.key().clone();
    state
        .vault
        .reset_integration(&integration)
        .await
        .map_err(|err| token_error(err, &key))?;
    Ok(Json(IntegrationReset {
        health: state.vault.integration_health(&integration),
        integration,
    }))
}
