//! The device authorization grant (RFC 8628) over HTTP. The app starts a
//! session and shows the user code; tokenvault polls the provider itself (see
//! `tokenvault::device::DevicePoller`) and the app reads the outcome.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenvault::device::{DeviceFlowError, DeviceSessionStatus};
use tokenvault::domain::DeviceSessionId;

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::flows::{integration, parse_scopes, user_id};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSessionRequest {
    user_id: String,
    integration: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// `POST /v1/device-sessions`: runs the provider's device authorization
/// request and stores the pending session; the answer carries what to show
/// the user. The device code never leaves tokenvault.
#[tracing::instrument(skip_all)]
pub async fn create_device_session(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DeviceSessionRequest>,
) -> Result<Response, ApiError> {
    let user_id = user_id(&request.user_id)?;
    let integration = integration(&state, &request.integration)?;
    let scopes = parse_scopes(request.scopes.as_deref().unwrap_or_default())?;
    let started = state
        .device
        .start(user_id, integration, Some(&scopes))
        .await
        .map_err(|err| match err {
            DeviceFlowError::Unsupported(provider) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "device_flow_unsupported",
                format!(
                    "integration `{}` (provider `{provider}`) has no device authorization endpoint; use POST /v1/connect-sessions",
                    integration.key()
                ),
            ),
            DeviceFlowError::Provider(err) => {
                tracing::warn!(integration = %integration.key(), error = %err, "device authorization failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_error",
                    format!("the device authorization request failed: {err}"),
                )
            }
            other => ApiError::internal(other),
        })?;
    let session = &started.session;
    let mut body = json!({
        "id": session.id.to_string(),
        "user_code": started.user_code,
        "verification_uri": started.verification_uri,
        "expires_at": session.expires_at,
        "interval": session.interval_secs,
    });
    if let Some(complete) = &started.verification_uri_complete {
        body["verification_uri_complete"] = json!(complete);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/device-sessions/{id}`: where the session stands; once connected,
/// the (user, integration) connection's status.
#[tracing::instrument(skip_all)]
pub async fn get_device_session(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let unknown = || {
        ApiError::not_found(
            "unknown_device_session",
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
    let mut body = json!({
        "id": session.id.to_string(),
        "status": status,
        "integration": session.integration,
        "user_id": session.user_id,
        "expires_at": session.expires_at,
    });
    match status {
        DeviceSessionStatus::Connected => {
            let connection = state
                .vault
                .store()
                .get(&session.user_id, &session.integration)
                .await
                .map_err(ApiError::internal)?;
            if let Some(connection) = connection {
                body["connection"] = json!({
                    "integration": connection.integration,
                    "status": connection.status,
                });
            }
        }
        DeviceSessionStatus::Error => {
            if let Some(error) = &session.last_error {
                body["error"] = json!({ "code": error.code, "message": error.message });
            }
        }
        _ => {}
    }
    Ok(Json(body))
}
