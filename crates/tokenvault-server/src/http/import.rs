//! `PUT /v1/users/{user_id}/connections/{integration}`: stores a grant
//! obtained elsewhere (a legacy token store), idempotently. The body is the
//! wire format of `tokenvault import` (see `crate::import`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokenvault::domain::IntegrationKey;
use tokenvault::import::{ImportAction, ImportError, ImportOptions};

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::flows::{integration, user_id};
use crate::import::GrantBody;

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    force: Option<String>,
}

fn force(query: &ImportQuery) -> Result<bool, ApiError> {
    match query.force.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_force",
            format!("force must be true or false, got {other:?}"),
        )),
    }
}

fn import_error(err: ImportError, key: &str) -> ApiError {
    match err {
        ImportError::Invalid(invalid) => {
            ApiError::new(StatusCode::BAD_REQUEST, invalid.code(), invalid.to_string())
        }
        ImportError::UnknownIntegration(_) => ApiError::not_found(
            "unknown_integration",
            format!("no integration named {key:?} is configured; see GET /v1/integrations"),
        ),
        ImportError::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection_busy",
            "the connection is being refreshed or changed right now; try again",
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        ImportError::Vault(err) => ApiError::internal(err),
    }
}

/// `PUT /v1/users/{user_id}/connections/{integration}` with
/// `{access_token, refresh_token?, expires_at?, scopes?, metadata?}` →
/// `201` (created) or `200` (replaced, unchanged) with the connection's
/// status document plus `"import"`.
#[tracing::instrument(skip_all)]
pub async fn put_connection(
    State(state): State<AppState>,
    Path((user, key)): Path<(String, String)>,
    Query(query): Query<ImportQuery>,
    body: Result<ApiJson<GrantBody>, ApiError>,
) -> Result<Response, ApiError> {
    let user = user_id(&user)?;
    IntegrationKey::parse(key.as_str()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_integration",
            e.to_string(),
        )
    })?;
    let integration = integration(&state, &key)?.key().clone();
    let options = ImportOptions {
        dry_run: false,
        force: force(&query)?,
    };
    let ApiJson(body) = body?;
    let grant = body.into_grant().map_err(|invalid| {
        ApiError::new(StatusCode::BAD_REQUEST, invalid.code(), invalid.to_string())
    })?;
    let outcome = state
        .vault
        .import_with(&user, &integration, grant, options)
        .await
        .map_err(|err| import_error(err, &key))?;
    let connection = &outcome.connection;
    if outcome.action == ImportAction::KeptNewer {
        let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "never".into())
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stored_tokens_newer",
            format!(
                "tokenvault refreshed this connection at {} and its token expires at {}, no earlier than the imported one: the imported grant is older and was not stored; add ?force=true to replace it anyway",
                at(connection.last_refreshed_at),
                at(connection.expires_at)
            ),
        ));
    }
    tracing::info!(integration = %integration, action = outcome.action.as_str(), "connection imported");
    let status = match outcome.action {
        ImportAction::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut body = json!(connection);
    body["import"] = json!(outcome.action);
    Ok((status, Json(body)).into_response())
}
