//! The device authorization grant (RFC 8628) over HTTP. The app starts a
//! session and shows the user code; tokenvault polls the provider itself (see
//! `tokenvault::device::DevicePoller`) and the app reads the outcome.

use crate::http::error::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvault::device::{DeviceFlowError, DeviceSessionStatus};
use tokenvault::domain::{ConnectionStatus, DeviceSessionId, IntegrationKey, UserId};
use tokenvault::store::LastError;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::flows::{ScopeList, integration, parse_scopes, user_id};

/// Starts the device authorization grant for one user and integration.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSessionRequest {
    // A string, checked by the handler so a bad id answers `invalid_user_id`.
    #[schema(value_type = UserId)]
    user_id: String,
    #[schema(value_type = IntegrationKey)]
    integration: String,
    /// Scopes to request instead of the integration's defaults: an array
    /// (each non-empty and without whitespace) or one space-separated
    /// string.
    #[serde(default)]
    #[schema(schema_with = tokenvault::import::scopes_schema)]
    scopes: Option<ScopeList>,
}

/// A started device session: what to show the user.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSessionCreated {
    #[schema(format = Uuid)]
    pub id: String,
    /// The code the user enters at `verification_uri`.
    pub user_code: String,
    pub verification_uri: String,
    /// `verification_uri` with the code filled in, when the provider gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// Seconds between tokenvault's polls of the provider.
    pub interval: u64,
    /// A page to show the user instead (a TV, a kiosk, a second screen):
    /// the code in large type, the address as a link and a QR code, and
    /// the outcome as soon as it is known. No API key needed: the id is
    /// the secret.
    #[schema(value_type = String, format = "uri")]
    pub page_url: url::Url,
}

/// Where a device session stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSessionView {
    #[schema(format = Uuid)]
    pub id: String,
    pub status: DeviceSessionStatus,
    pub integration: IntegrationKey,
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
    /// Once `connected`: the connection it created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<DeviceSessionConnection>,
    /// When `error`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<LastError>,
}

/// The connection a device session created.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSessionConnection {
    pub integration: IntegrationKey,
    pub status: ConnectionStatus,
}

/// `POST /v1/device-sessions`: runs the provider's device authorization
/// request and stores the pending session; the answer carries what to show
/// the user. The device code never leaves tokenvault.
#[utoipa::path(
    post,
    operation_id = "createDeviceSession",
    path = "/v1/device-sessions",
    tag = "flows",
    summary = "Start a device authorization grant (RFC 8628)",
    description = "Runs the provider's device authorization request; tokenvault then polls the provider itself. Show the user the code and URI, and read the outcome with `GET /v1/device-sessions/{id}`.",
    request_body = DeviceSessionRequest,
    responses(
        (status = 201, description = "The session and what to show the user", body = DeviceSessionCreated),
        (status = 400, description = "`invalid_json`, `invalid_user_id`, `invalid_scopes`, `device_flow_unsupported`", body = ErrorBody),
        (status = 404, description = "`unknown_integration`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 502, description = "`provider_error`: the device authorization request failed", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn create_device_session(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DeviceSessionRequest>,
) -> Result<Response, ApiError> {
    let user_id = user_id(&request.user_id)?;
    let integration = integration(&state, &request.integration)?;
    let scopes = parse_scopes(request.scopes.as_ref().map_or(&[], ScopeList::as_slice))?;
    let started = state
        .device
        .start(user_id, &integration, Some(&scopes))
        .await
        .map_err(|err| match err {
            DeviceFlowError::Unsupported(provider) => ApiError::new(
                ErrorCode::DeviceFlowUnsupported,
                format!(
                    "integration `{}` (provider `{provider}`) has no device authorization endpoint; use POST /v1/connect-sessions",
                    integration.key()
                ),
            ),
            DeviceFlowError::Provider(err) => {
                tracing::warn!(integration = %integration.key(), error = %err, "device authorization failed");
                ApiError::new(
                    ErrorCode::ProviderError,
                    format!("the device authorization request failed: {err}"),
                )
            }
            other => ApiError::internal(other),
        })?;
    let session = &started.session;
    let body = DeviceSessionCreated {
        id: session.id.to_string(),
        user_code: started.user_code,
        verification_uri: started.verification_uri,
        verification_uri_complete: started.verification_uri_complete,
        expires_at: session.expires_at,
        interval: session.interval_secs,
        page_url: state
            .settings
            .public_url
            .join(&format!("device/{}", session.id))
            .map_err(ApiError::internal)?,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/device-sessions/{id}`: where the session stands; once connected,
/// the (user, integration) connection's status.
#[utoipa::path(
    get,
    operation_id = "getDeviceSession",
    path = "/v1/device-sessions/{id}",
    tag = "flows",
    summary = "Where a device session stands",
    params(("id" = String, Path, format = Uuid, description = "The id `POST /v1/device-sessions` returned")),
    responses(
        (status = 200, description = "The session; once `connected`, the connection's status; in `error`, why", body = DeviceSessionView),
        (status = 400, description = "`invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`unknown_device_session` (also for an id that is not a UUID)", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn get_device_session(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<DeviceSessionView>, ApiError> {
    let unknown = || {
        ApiError::new(
            ErrorCode::UnknownDeviceSession,
            format!("no device session {raw:?}; it may have been purged"),
        )
    };
    let id = DeviceSessionId::parse(&raw).map_err(|_| unknown())?;
    let session = state
        .device
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(unknown)?;
    let status = session.status_at(state.vault.clock().now());
    let mut body = DeviceSessionView {
        id: session.id.to_string(),
        status,
        integration: session.integration.clone(),
        user_id: session.user_id.clone(),
        expires_at: session.expires_at,
        connection: None,
        error: None,
    };
    match status {
        DeviceSessionStatus::Connected => {
            let connection = state
                .vault
                .store()
                .get(&session.user_id, &session.integration)
                .await
                .map_err(ApiError::internal)?;
            body.connection = connection.map(|connection| DeviceSessionConnection {
                integration: connection.integration,
                status: connection.status,
            });
        }
        DeviceSessionStatus::Error => body.error = session.last_error.clone(),
        _ => {}
    }
    Ok(Json(body))
}

/// A device session's status for its page (no user id, no token).
#[derive(Debug, Serialize)]
pub struct PageStatus {
    pub status: DeviceSessionStatus,
    pub integration: IntegrationKey,
    pub expires_at: DateTime<Utc>,
    /// In `error`: the error code.
    pub error: Option<String>,
    /// A sentence for the user.
    pub message: String,
}

async fn page_session(
    state: &AppState,
    raw: &str,
) -> Result<tokenvault::device::DeviceSession, ApiError> {
    let unknown = || {
        ApiError::new(
            ErrorCode::UnknownDeviceSession,
            "this device link is unknown or was purged; start again from the application",
        )
    };
    let id = DeviceSessionId::parse(raw).map_err(|_| unknown())?;
    state
        .device
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(unknown)
}

fn page_status_of(state: &AppState, session: &tokenvault::device::DeviceSession) -> PageStatus {
    let status = session.status_at(state.vault.clock().now());
    let name = state.integrations.get(&session.integration).map_or_else(
        || session.integration.to_string(),
        |i| i.spec().display_name.clone(),
    );
    let app = &state.theme.app_name;
    let message = match status {
        DeviceSessionStatus::Pending => format!("Waiting for you to approve on {name}…"),
        DeviceSessionStatus::Connected => {
            format!("Your {name} account is now connected to {app}. You can close this page.")
        }
        DeviceSessionStatus::Denied => {
            format!("You declined access on {name}, so nothing was connected.")
        }
        DeviceSessionStatus::Expired => {
            format!("This code has expired. Start again from {app} to get a new one.")
        }
        DeviceSessionStatus::Error => {
            format!("{name} could not be connected. Start again from {app} to get a new code.")
        }
    };
    PageStatus {
        status,
        integration: session.integration.clone(),
        expires_at: session.expires_at,
        error: (status == DeviceSessionStatus::Error)
            .then(|| session.last_error.as_ref().map(|e| e.code.clone()))
            .flatten(),
        message,
    }
}

/// `GET /device/{id}/status`: what the device page polls.
pub async fn page_status(State(state): State<AppState>, ApiPath(raw): ApiPath<String>) -> Response {
    let mut response = match page_session(&state, &raw).await {
        Ok(session) => Json(page_status_of(&state, &session)).into_response(),
        Err(err) => err.into_response(),
    };
    super::pages::harden(&mut response);
    response
}

/// `GET /device/{id}`: the device flow's page: the user code in large
/// type, where to enter it (a link and a QR code, drawn here as SVG), and
/// the live status. Programs get the status as JSON.
pub async fn page(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiPath(raw): ApiPath<String>,
) -> Response {
    let wants_html = super::flows::browser::wants_html(&headers);
    let mut response = match page_session(&state, &raw).await {
        Ok(session) if wants_html => {
            super::pages::device_page(&state, &session, &page_status_of(&state, &session))
        }
        Ok(session) => Json(page_status_of(&state, &session)).into_response(),
        Err(err) if wants_html => super::pages::error_page(&state, &err),
        Err(err) => err.into_response(),
    };
    super::pages::harden(&mut response);
    response
}
