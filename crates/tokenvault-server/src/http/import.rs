//! `PUT /v1/users/{user_id}/connections/{integration}`: stores a grant
//! obtained elsewhere (a legacy token store), idempotently. The body is the
//! wire format of `tokenvault import` (see `crate::import`).

use crate::http::error::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::import::{ImportAction, ImportError, ImportOptions, InvalidGrant};
use tokenvault::vault::ConnectionView;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::connections::key_of;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::flows::{integration, user_id};
use tokenvault::import::GrantBody;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Replace the connection even when tokenvault holds newer, refreshed tokens.
    #[param(value_type = bool, required = false, default = false)]
    force: Option<String>,
}

/// The connection's status document plus what the import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedConnection {
    #[serde(flatten)]
    pub connection: ConnectionView,
    pub import: ImportAction,
}

fn force(query: &ImportQuery) -> Result<bool, ApiError> {
    match query.force.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidForce,
            format!("force must be true or false, got {other:?}"),
        )),
    }
}

/// The library names the code ([`InvalidGrant::code`], also what the
/// import command's rejects file says); the API's enum gives its status.
fn invalid_grant(invalid: &InvalidGrant) -> ApiError {
    let code = ErrorCode::parse(invalid.code()).unwrap_or(ErrorCode::InvalidJson);
    ApiError::new(code, invalid.to_string())
}

fn import_error(err: ImportError, key: &str) -> ApiError {
    match err {
        ImportError::Invalid(invalid) => invalid_grant(&invalid),
        ImportError::UnknownIntegration(_) => ApiError::new(
            ErrorCode::UnknownIntegration,
            format!("no integration named {key:?} is configured; see GET /v1/integrations"),
        ),
        ImportError::Busy => ApiError::new(
            ErrorCode::ConnectionBusy,
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
#[utoipa::path(
    put,
    operation_id = "importConnection",
    path = "/v1/users/{user_id}/connections/{integration}",
    tag = "connections",
    summary = "Import a grant obtained elsewhere (admin scope)",
    description = "Stores tokens from a legacy store as the user's connection, idempotently: the same tokens again change nothing (`unchanged`). Tokens tokenvault refreshed itself since are kept (`409 stored_tokens_newer`) unless `force=true`. The tokens are refreshed before they expire like any other connection's.",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "A configured integration"),
        ImportQuery,
    ),
    request_body = GrantBody,
    responses(
        (status = 200, description = "`replaced` or `unchanged`", body = ImportedConnection),
        (status = 201, description = "`created`", body = ImportedConnection),
        (status = 400, description = "`invalid_json` (naming the field), `invalid_user_id`, `invalid_integration`, `invalid_token`, `invalid_expires_at`, `token_expired` (expired and no refresh token), `invalid_scopes`, `invalid_metadata`, `invalid_force`, `invalid_query`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`unknown_integration`", body = ErrorBody),
        (status = 409, description = "`stored_tokens_newer`: nothing written", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`connection_busy` (with `Retry-After`): a refresh of this connection is in flight", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds until a retry may succeed"))),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn put_connection(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: Result<ApiJson<GrantBody>, ApiError>,
) -> Result<Response, ApiError> {
    let user = user_id(&user)?;
    key_of(&key)?;
    let integration = integration(&state, &key)?.key().clone();
    let options = ImportOptions {
        dry_run: false,
        force: force(&query)?,
    };
    let ApiJson(body) = body?;
    let grant = body
        .into_grant()
        .map_err(|invalid| invalid_grant(&invalid))?;
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
            ErrorCode::StoredTokensNewer,
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
    let body = ImportedConnection {
        connection: connection.clone(),
        import: outcome.action,
    };
    Ok((status, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_grant_maps_to_its_own_api_code() {
        let cases = [
            (
                InvalidGrant::Token {
                    field: "access_token",
                    problem: "must not be empty".into(),
                },
                ErrorCode::InvalidToken,
            ),
            (
                InvalidGrant::ExpiresAt("x".into()),
                ErrorCode::InvalidExpiresAt,
            ),
            (
                InvalidGrant::Expired {
                    expires_at: chrono::DateTime::UNIX_EPOCH,
                },
                ErrorCode::TokenExpired,
            ),
            (InvalidGrant::Scopes("x".into()), ErrorCode::InvalidScopes),
            (
                InvalidGrant::Metadata("x".into()),
                ErrorCode::InvalidMetadata,
            ),
        ];
        for (invalid, code) in cases {
            let answer = invalid_grant(&invalid);
            assert_eq!(answer.code, code, "{invalid}");
            assert_eq!(answer.status, code.status());
        }
    }
}
