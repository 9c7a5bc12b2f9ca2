//! The browser flows over HTTP: connect sessions here, the browser's side
//! in [`browser`], the callback and confirm mode in [`callback`].

use crate::http::error::ErrorCode;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvault::connect::{ConnectError, NewSession};
use tokenvault::domain::{IntegrationKey, Scopes, UserId};
use tokenvault::integrations::Integration;
use tokenvault::oauth_state::StateError;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ErrorBody};

pub mod browser;
pub mod callback;

/// Why a browser flow ended without a connection; sent to `redirect_to` as
/// `error=<code>` when the app gave one, else as a JSON error.
struct FlowFailure {
    /// A provider's own `error` arrives as `access_denied` or `provider_error`.
    code: ErrorCode,
    /// The provider's own `error` value (sanitized), passed on to `redirect_to`.
    provider_code: Option<String>,
    status: StatusCode,
    message: String,
}

impl FlowFailure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            provider_code: None,
            status: code.status(),
            message: message.into(),
        }
    }

    /// The `error` sent to `redirect_to`: the provider's own code, else ours.
    fn redirect_code(&self) -> &str {
        self.provider_code.as_deref().unwrap_or(self.code.as_str())
    }

    fn into_api_error(self) -> ApiError {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let err = ApiError::new(self.code, self.message).with_status(self.status);
        if retry {
            err.with_retry_after(std::time::Duration::from_secs(1))
        } else {
            err
        }
    }
}

/// A flow step's failure as the API answers it.
impl From<ConnectError> for FlowFailure {
    fn from(err: ConnectError) -> Self {
        let message = err.to_string();
        let code = match err {
            ConnectError::StateStore(err) => return state_store_error(err).into(),
            ConnectError::Save(err) => return save_failure(&err),
            ConnectError::Provider {
                denied,
                provider_code,
                ..
            } => {
                return Self {
                    code: if denied {
                        ErrorCode::AccessDenied
                    } else {
                        ErrorCode::ProviderError
                    },
                    provider_code: Some(provider_code),
                    status: StatusCode::BAD_REQUEST,
                    message,
                };
            }
            ConnectError::InvalidState(_) => ErrorCode::InvalidState,
            ConnectError::StateMismatch { .. } => ErrorCode::StateMismatch,
            ConnectError::UnknownIntegration(_) => ErrorCode::UnknownIntegration,
            ConnectError::NotOffered(_) => ErrorCode::InvalidIntegration,
            ConnectError::IntegrationUnavailable { .. } => ErrorCode::IntegrationUnavailable,
            ConnectError::IssuerMismatch(_) => ErrorCode::IssuerMismatch,
            ConnectError::MissingCode => ErrorCode::MissingCode,
            ConnectError::Exchange(_) => ErrorCode::TokenExchangeFailed,
            ConnectError::ConfirmWithoutRedirect => ErrorCode::InvalidRedirectTo,
            ConnectError::ConfirmationNotFound => ErrorCode::ConfirmationNotFound,
            ConnectError::UserMismatch => ErrorCode::UserMismatch,
            ConnectError::NothingToReconnect(_) => ErrorCode::ConnectionNotFound,
            ConnectError::ReconnectPicker => ErrorCode::InvalidIntegration,
            ConnectError::SessionParams(_) => ErrorCode::InvalidConnectionParams,
            ConnectError::ProviderParams(_) => ErrorCode::ProviderError,
        };
        Self::new(code, message)
    }
}

/// A grant the database did not take: 503 when it is unreachable (the user
/// can start again shortly), else an internal error.
fn save_failure(err: &tokenvault::vault::VaultError) -> FlowFailure {
    if crate::http::error::Failure::database_unavailable(err) {
        tracing::warn!(error = %err, "storing the grant failed: the database is unavailable");
        FlowFailure::new(
            ErrorCode::DatabaseUnavailable,
            "storing the connection failed: the database is unavailable; start again shortly",
        )
    } else {
        tracing::error!(error = %err, "storing the grant failed");
        FlowFailure::new(ErrorCode::Internal, "storing the connection failed")
    }
}

impl From<ConnectError> for ApiError {
    fn from(err: ConnectError) -> Self {
        FlowFailure::from(err).into_api_error()
    }
}

impl From<ApiError> for FlowFailure {
    fn from(err: ApiError) -> Self {
        Self {
            code: err.code,
            provider_code: None,
            status: err.status,
            message: err.message,
        }
    }
}

fn state_store_error(err: StateError) -> ApiError {
    match err {
        StateError::Unavailable(reason) => {
            tracing::error!(%reason, "state store unavailable");
            ApiError::new(
                ErrorCode::StateStoreUnavailable,
                "the OAuth state store is unavailable; try again shortly",
            )
        }
        other => ApiError::internal(other),
    }
}

/// The configured integration named `raw` (the connect flow's lookup, so
/// every handler refuses an unknown one the same way).
pub(super) fn integration(state: &AppState, raw: &str) -> Result<Arc<Integration>, ApiError> {
    state.connect.integration(raw).map_err(ApiError::from)
}

/// The key of a configured integration, resolved or still unavailable: a
/// stored, still-valid token is served without asking the provider.
pub(super) fn configured_key(state: &AppState, raw: &str) -> Result<IntegrationKey, ApiError> {
    match state.connect.integration(raw) {
        Ok(integration) => Ok(integration.key().clone()),
        Err(ConnectError::IntegrationUnavailable { integration, .. }) => Ok(integration),
        Err(err) => Err(err.into()),
    }
}

pub(super) fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidUserId, e.to_string()))
}

/// Scopes as a request gives them: an array of strings, or one
/// space-separated string (as import takes them). Each is then checked by
/// [`parse_scopes`].
#[derive(Debug, Default)]
pub(super) struct ScopeList(Vec<String>);

impl ScopeList {
    pub(super) fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ScopeList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            List(Vec<String>),
            Text(String),
        }
        match Given::deserialize(deserializer) {
            Ok(Given::List(list)) => Ok(Self(list)),
            Ok(Given::Text(text)) => Ok(Self(text.split_whitespace().map(str::to_owned).collect())),
            Err(_) => Err(serde::de::Error::custom(
                "scopes must be an array of strings or one space-separated string",
            )),
        }
    }
}

pub(super) fn parse_scopes(scopes: &[String]) -> Result<Scopes, ApiError> {
    Scopes::try_from_list(scopes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidScopes, e.to_string()))
}

/// Starts a browser flow for one user and integration.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectSessionRequest {
    // A string, checked by the handler so a bad id answers `invalid_user_id`.
    #[schema(value_type = UserId)]
    user_id: String,
    /// The integration to connect. Give this or `integrations`.
    #[serde(default)]
    #[schema(value_type = Option<IntegrationKey>)]
    integration: Option<String>,
    /// Instead of `integration`: 1 to 20 configured integrations; with
    /// more than one, the link shows a page where the user picks one.
    #[serde(default)]
    #[schema(value_type = Option<Vec<IntegrationKey>>)]
    integrations: Option<Vec<String>>,
    /// What the link shows first: `direct` (straight to the provider) or
    /// `page` (the Connect UI page); default the `connect_ui` setting. A
    /// picker always shows the page.
    #[serde(default)]
    connect_ui: Option<crate::config::ConnectUi>,
    /// Scopes to request instead of the integration's defaults: an array
    /// (each non-empty and without whitespace) or one space-separated
    /// string.
    #[serde(default)]
    #[schema(schema_with = tokenvault::import::scopes_schema)]
    scopes: Option<ScopeList>,
    /// Where the browser goes afterwards (an absolute URL on an origin in
    /// `TOKENVAULT_ALLOWED_REDIRECT_ORIGINS`), with `connection`, `status`
    /// and, on failure, `error` added to the query.
    #[serde(default)]
    #[schema(format = "uri")]
    redirect_to: Option<String>,
    /// Provider-specific authorization parameters; only those the provider
    /// defines (Wix: the installer `token` Wix sent to the app URL).
    #[serde(default)]
    provider_params: std::collections::BTreeMap<String, String>,
    /// Values of the provider's connection parameters that come from the
    /// application (see `GET /v1/providers/{key}`: those with source
    /// `session`), e.g. `{"shop": "acme"}` for Shopify. Each is checked
    /// against the entry's pattern before anything is stored. A reconnect
    /// without them keeps the connection's own.
    #[serde(default)]
    connection_params: std::collections::BTreeMap<String, String>,
    /// Confirm mode, for flows that may finish on another device: the
    /// callback stores nothing and sends the browser to `redirect_to`
    /// (required) with `status=confirmation_required`, `connect_session`
    /// and a one-time `confirm_code`; the connection is stored when the
    /// app's backend calls `POST /v1/connect-sessions/{id}/confirm` for
    /// its logged-in user. Without it, the flow must finish in the browser
    /// that opened `connect_url`.
    #[serde(default)]
    confirm: bool,
    /// Renew the user's existing connection to `integration` (after
    /// `needs_reauth`, or for more scopes): the link shows a "reconnect"
    /// page, and the flow updates that connection in place (same id,
    /// `connection.reconnected`). `404 connection_not_found` when there is
    /// none.
    #[serde(default)]
    reconnect: bool,
}

/// A created connect session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectSessionCreated {
    /// The session's id (also the last segment of `connect_url`).
    pub id: String,
    /// Single-use link to send the user's browser to; it starts the
    /// provider's consent screen.
    #[schema(value_type = String, format = "uri")]
    pub connect_url: url::Url,
    pub expires_at: DateTime<Utc>,
}

/// `POST /v1/connect-sessions`: the backend names the user; the browser gets
/// a single-use link that starts the provider's consent screen.
#[utoipa::path(
    post,
    operation_id = "createConnectSession",
    path = "/v1/connect-sessions",
    tag = "flows",
    summary = "Create a connect session (a single-use link to the provider's consent screen)",
    request_body = ConnectSessionRequest,
    responses(
        (status = 201, description = "The session; send the user's browser to `connect_url`", body = ConnectSessionCreated),
        (status = 400, description = "`invalid_json`, `invalid_user_id`, `invalid_integration`, `invalid_scopes`, `invalid_redirect_to`, `invalid_provider_params`, `invalid_connection_params`", body = ErrorBody),
        (status = 404, description = "`unknown_integration`; `connection_not_found` (a reconnect with nothing to renew)", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`state_store_unavailable`, `database_unavailable`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn create_connect_session(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ConnectSessionRequest>,
) -> Result<Response, ApiError> {
    let user_id = user_id(&request.user_id)?;
    let (integration, offered) = chosen_integrations(&state, &request)?;
    let scopes = parse_scopes(request.scopes.as_ref().map_or(&[], ScopeList::as_slice))?;
    let redirect_to = request
        .redirect_to
        .as_deref()
        .map(|raw| allowed_redirect(&state, raw))
        .transpose()?;
    if request.integrations.is_some() && !request.provider_params.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidProviderParams,
            "provider_params need one integration, not a picker",
        ));
    }
    check_provider_params(&integration, &request.provider_params)?;

    let session = state
        .connect
        .create_session(NewSession {
            user_id,
            integration: integration.key().clone(),
            offered,
            show_page: request.connect_ui.unwrap_or(state.settings.connect_ui)
                == crate::config::ConnectUi::Page,
            scopes,
            redirect_to,
            provider_params: request.provider_params.clone(),
            connection_params: request.connection_params.clone(),
            confirm: request.confirm,
            reconnect: request.reconnect,
        })
        .await?;
    let id = session.id;
    let connect_url = state
        .settings
        .public_url
        .join(&format!("connect/{}", id.as_str()))
        .map_err(ApiError::internal)?;
    tracing::info!(integration = %integration.key(), session = %id, "connect session created");
    let body = ConnectSessionCreated {
        id: id.as_str().to_owned(),
        connect_url,
        expires_at: session.expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The integration of a new session, and the ones its page offers (empty
/// unless it is a picker).
fn chosen_integrations(
    state: &AppState,
    request: &ConnectSessionRequest,
) -> Result<(Arc<Integration>, Vec<IntegrationKey>), ApiError> {
    let invalid = |message: &str| ApiError::new(ErrorCode::InvalidIntegration, message.to_owned());
    match (&request.integration, &request.integrations) {
        (Some(key), None) => Ok((integration(state, key)?, Vec::new())),
        (None, Some(keys)) => {
            if keys.is_empty() || keys.len() > 20 {
                return Err(invalid("integrations: give 1 to 20 integration keys"));
            }
            let mut offered: Vec<IntegrationKey> = Vec::with_capacity(keys.len());
            for key in keys {
                let found = integration(state, key)?;
                if offered.contains(found.key()) {
                    return Err(invalid(&format!("integrations: {key:?} is listed twice")));
                }
                offered.push(found.key().clone());
            }
            let first = integration(state, offered[0].as_str())?;
            Ok((
                first,
                if offered.len() > 1 {
                    offered
                } else {
                    Vec::new()
                },
            ))
        }
        (Some(_), Some(_)) => Err(invalid("give integration or integrations, not both")),
        (None, None) => Err(invalid(
            "integration is required (or integrations, for a picker)",
        )),
    }
}

/// The parameters a provider's authorization step takes from the app.
fn check_provider_params(
    integration: &Integration,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let allowed: &[&str] = match integration.spec().authorize_style {
        tokenvault::providers::AuthorizeStyle::WixInstaller => &["token"],
        tokenvault::providers::AuthorizeStyle::Oauth2 => &[],
    };
    for (name, value) in params {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::new(
                ErrorCode::InvalidProviderParams,
                format!(
                    "provider `{}` takes no parameter {name:?} (allowed: {allowed:?})",
                    integration.spec().key
                ),
            ));
        }
        if value.is_empty() || value.len() > 4096 || value.chars().any(char::is_control) {
            return Err(ApiError::new(
                ErrorCode::InvalidProviderParams,
                format!("parameter {name:?} is empty, too long or has control characters"),
            ));
        }
    }
    Ok(())
}

fn allowed_redirect(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let url = url::Url::parse(raw).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRedirectTo,
            format!("redirect_to is not an absolute URL: {e}"),
        )
    })?;
    if state.settings.allowed_origin(&url).is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidRedirectTo,
            format!(
                "redirect_to origin {} is not in TOKENVAULT_ALLOWED_REDIRECT_ORIGINS",
                url.origin().ascii_serialization()
            ),
        ));
    }
    Ok(url.to_string())
}
