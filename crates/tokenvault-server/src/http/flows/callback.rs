//! The callback: the state is consumed, checked against the browser, and
//! the code exchanged and stored (or, in confirm mode, kept for the
//! application's confirmation).

use crate::http::error::ErrorCode;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenvault::domain::{IntegrationKey, Scopes, UserId};
use tokenvault::integrations::Integration;
use tokenvault::state::{StateKey, StateRecord};
use utoipa::ToSchema;

use super::browser::{
    binding_cookie, binding_cookie_name, binding_digest, cookie, finished, for_browser,
    harden_browser_response,
};
use super::{FlowFailure, integration, invalid_state, state_store_error, user_id};
use crate::http::AppState;

use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};

#[derive(Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
    /// Wix names the installed site instance on its callback.
    #[serde(rename = "instanceId")]
    instance_id: Option<String>,
}

/// `GET /oauth/callback`: one callback for every integration; the state says which.
#[tracing::instrument(skip_all)]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<ApiQuery<CallbackParams>, ApiError>,
) -> Response {
    let mut response = match params {
        Ok(ApiQuery(params)) => finish(state, &headers, None, params).await,
        Err(err) => for_browser(&headers, err),
    };
    harden_browser_response(&mut response);
    response
}

/// `GET /oauth/{integration}/callback`: rejects a state issued for another integration.
#[tracing::instrument(skip_all)]
pub async fn integration_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
    params: Result<ApiQuery<CallbackParams>, ApiError>,
) -> Response {
    let mut response = match (path, params) {
        (Ok(ApiPath(integration)), Ok(ApiQuery(params))) => {
            finish(state, &headers, Some(integration), params).await
        }
        (Err(err), _) | (_, Err(err)) => for_browser(&headers, err),
    };
    harden_browser_response(&mut response);
    response
}

pub(super) async fn finish(
    state: AppState,
    headers: &HeaderMap,
    expected: Option<String>,
    params: CallbackParams,
) -> Response {
    let Some(key) = params.state.as_deref() else {
        return for_browser(
            headers,
            invalid_state("the callback has no state parameter"),
        );
    };
    let (record, integration) = match consume_state(&state, key, expected).await {
        Ok(found) => found,
        Err(err) => return for_browser(headers, err),
    };
    let bound_here = record.browser_binding.as_deref().is_none_or(|expected| {
        cookie(headers, &binding_cookie_name(key))
            .is_some_and(|nonce| binding_digest(nonce) == expected)
    });
    let outcome = if !bound_here {
        tracing::warn!(integration = %integration.key(), "callback from a browser that did not open the connect link; refused");
        metrics::counter!("tokenvault_flow_browser_mismatch_total", "integration" => integration.key().to_string()).increment(1);
        Err(FlowFailure::new(
            ErrorCode::BrowserMismatch,
            "finish the connection in the browser that started it: this browser did not open the connect link (or does not keep cookies); start again from the application",
        ))
    } else if record.confirm {
        await_confirmation(&state, integration, &record, &params).await
    } else {
        complete(&state, integration, &record, &params)
            .await
            .map(|()| None)
    };
    let mut response = match outcome {
        Ok(Some(confirmation)) => confirmation,
        Ok(None) => {
            tracing::info!(integration = %integration.key(), "connection created");
            finished(&record, None, integration)
        }
        Err(failure) => {
            tracing::warn!(integration = %integration.key(), code = %failure.redirect_code(), "flow failed");
            match &record.redirect_to {
                Some(_) => finished(&record, Some(failure.redirect_code()), integration),
                None => for_browser(headers, failure.into_api_error()),
            }
        }
    };
    if record.browser_binding.is_some() {
        let cleared = binding_cookie(&state, integration, key, "", 0);
        response.headers_mut().append(header::SET_COOKIE, cleared);
    }
    response
}

/// Takes the callback's state (whatever happens next, it cannot be
/// replayed) and finds its integration.
pub(super) async fn consume_state<'a>(
    state: &'a AppState,
    key: &str,
    expected: Option<String>,
) -> Result<(StateRecord, &'a Arc<Integration>), ApiError> {
    let unknown = "unknown, expired or already used state; start the connection again";
    let record = state
        .states
        .take(key)
        .await
        .map_err(state_store_error)?
        .ok_or_else(|| invalid_state(unknown))?;
    // A connect session, or a confirm-mode record waiting for the app, is
    // not a flow's state.
    if record.connect_session.is_none() || record.authorization_code.is_some() {
        return Err(invalid_state(unknown));
    }
    if let Some(expected) = expected
        && expected != record.integration.as_str()
    {
        return Err(ApiError::new(
            ErrorCode::StateMismatch,
            format!(
                "this state was issued for integration `{}`, not `{expected}`",
                record.integration
            ),
        ));
    }
    let integration = integration(state, record.integration.as_str())?;
    Ok((record, integration))
}

/// Confirm mode: keeps the authorization code (not yet exchanged) under a
/// one-time confirmation code and sends the browser to the app with it.
pub(super) async fn await_confirmation(
    state: &AppState,
    integration: &Integration,
    record: &StateRecord,
    params: &CallbackParams,
) -> Result<Option<Response>, FlowFailure> {
    let code = authorization_code(integration, params)?;
    let confirmation = StateKey::generate();
    let pending = StateRecord {
        authorization_code: Some(code.to_owned().into()),
        instance_id: params.instance_id.clone(),
        created_at: Utc::now(),
        ..record.clone()
    };
    state
        .states
        .put(&confirmation, &pending, state.settings.state_ttl)
        .await
        .map_err(|err| FlowFailure::from(state_store_error(err)))?;
    let Some(mut target) = record
        .redirect_to
        .as_deref()
        .and_then(|raw| url::Url::parse(raw).ok())
    else {
        return Err(FlowFailure::new(
            ErrorCode::Internal,
            "a confirm-mode session without redirect_to",
        ));
    };
    target
        .query_pairs_mut()
        .append_pair("connection", integration.key().as_str())
        .append_pair("status", "confirmation_required")
        .append_pair(
            "connect_session",
            record.connect_session.as_deref().unwrap_or_default(),
        )
        .append_pair("confirm_code", confirmation.as_str());
    tracing::info!(integration = %integration.key(), "flow waits for the application's confirmation");
    Ok(Some(
        (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response(),
    ))
}

/// The callback's authorization code, or why there is none (the provider's
/// error, an issuer mismatch).
pub(super) fn authorization_code<'a>(
    integration: &Integration,
    params: &'a CallbackParams,
) -> Result<&'a str, FlowFailure> {
    if let Some(error) = &params.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let description = params
            .error_description
            .as_deref()
            .unwrap_or("no description");
        let ours = if code == "access_denied" {
            ErrorCode::AccessDenied
        } else {
            ErrorCode::ProviderError
        };
        return Err(FlowFailure {
            code: ours,
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the provider answered {code}: {}",
                description.chars().take(200).collect::<String>()
            ),
            provider_code: Some(code),
        });
    }
    integration
        .check_callback_issuer(params.iss.as_deref())
        .map_err(|e| {
            FlowFailure::new(
                ErrorCode::IssuerMismatch,
                format!("the callback's iss parameter does not match the provider: {e}"),
            )
        })?;
    params
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            FlowFailure::new(
                ErrorCode::MissingCode,
                "the callback has neither code nor error",
            )
        })
}

pub(super) async fn complete(
    state: &AppState,
    integration: &Integration,
    record: &StateRecord,
    params: &CallbackParams,
) -> Result<(), FlowFailure> {
    let code = authorization_code(integration, params)?;
    exchange_and_save(
        state,
        integration,
        record,
        code,
        params.instance_id.as_deref(),
    )
    .await
}

/// Exchanges the code and stores the connection. A grant whose save fails
/// is revoked at the provider: nobody holds it, and it would otherwise stay
/// valid there until it expires.
pub(super) async fn exchange_and_save(
    state: &AppState,
    integration: &Integration,
    record: &StateRecord,
    code: &str,
    instance_id: Option<&str>,
) -> Result<(), FlowFailure> {
    let requested: Option<Scopes> =
        (!record.scopes.is_empty()).then(|| record.scopes.iter().cloned().collect());
    let grant = integration
        .exchange_code(
            code,
            record.code_verifier.as_ref(),
            requested.as_ref(),
            Utc::now(),
        )
        .await
        .map_err(|err| {
            FlowFailure::new(
                ErrorCode::TokenExchangeFailed,
                format!("exchanging the authorization code failed: {err}"),
            )
        })?;
    let mut metadata = grant.metadata;
    if let (Some(instance_id), Some(fields)) = (instance_id, metadata.as_object_mut()) {
        fields.insert("instance_id".into(), json!(instance_id));
    }
    let saved = state
        .vault
        .save_grant(
            &record.user_id,
            integration.key(),
            &grant.tokens,
            metadata,
            chrono::Duration::from_std(integration.refresh_buffer()).unwrap_or_default(),
        )
        .await
        .map_err(|err| {
            if crate::http::error::Failure::database_unavailable(&err) {
                tracing::warn!(error = %err, "storing the grant failed: the database is unavailable");
                FlowFailure::new(ErrorCode::DatabaseUnavailable, "storing the connection failed: the database is unavailable; start again shortly")
            } else {
                tracing::error!(error = %err, "storing the grant failed");
                FlowFailure::new(ErrorCode::Internal, "storing the connection failed")
            }
        });
    if saved.is_err() {
        match integration.revoke(&grant.tokens).await {
            Ok(true) => {
                tracing::info!(integration = %integration.key(), "revoked the grant whose save failed")
            }
            Ok(false) => {
                tracing::warn!(integration = %integration.key(), "the grant whose save failed cannot be revoked: the provider has no revocation endpoint")
            }
            Err(err) => {
                tracing::warn!(integration = %integration.key(), error = %err, "revoking the grant whose save failed did not succeed")
            }
        }
        metrics::counter!("tokenvault_flow_orphaned_grants_total", "integration" => integration.key().to_string()).increment(1);
    }
    saved.map(|_| ())
}

/// Confirms a confirm-mode flow for the application's logged-in user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The `confirm_code` the browser brought to `redirect_to` (also
    /// accepted as `code`).
    #[serde(alias = "code")]
    confirm_code: String,
    /// The user the application has logged in (in the browser that
    /// brought the code); must be the session's user.
    #[schema(value_type = UserId)]
    user_id: String,
}

/// A confirmed flow: the connection is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmedConnection {
    pub user_id: UserId,
    pub integration: IntegrationKey,
    /// Always `connected`.
    pub status: String,
}

/// `POST /v1/connect-sessions/{id}/confirm`: the application's backend
/// confirms a confirm-mode flow for the user it has logged in; only now is
/// the authorization code exchanged and the connection stored. A code
/// brought for another user is discarded, never exchanged.
#[utoipa::path(
    post,
    path = "/v1/connect-sessions/{id}/confirm",
    tag = "flows",
    summary = "Confirm a confirm-mode connect flow for the logged-in user",
    params(("id" = String, Path, description = "The connect session's id (`connect_session` on the redirect)")),
    request_body = ConfirmRequest,
    responses(
        (status = 200, description = "The connection is stored", body = ConfirmedConnection),
        (status = 400, description = "`invalid_json`, `invalid_user_id`", body = ErrorBody),
        (status = 403, description = "`user_mismatch`: the flow was started for another user; it is discarded", body = ErrorBody),
        (status = 404, description = "`confirmation_not_found`: unknown, expired or already used code, or another session's", body = ErrorBody),
        (status = 502, description = "`token_exchange_failed`", body = ErrorBody),
        (status = 503, description = "`state_store_unavailable`, `database_unavailable`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn confirm_connect_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ConfirmRequest>,
) -> Result<Json<ConfirmedConnection>, ApiError> {
    let user = user_id(&request.user_id)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::ConfirmationNotFound,
            "unknown, expired or already used confirmation code for this connect session",
        )
    };
    if !StateKey::is_well_formed(&request.confirm_code) {
        return Err(not_found());
    }
    let record = state
        .states
        .take(&request.confirm_code)
        .await
        .map_err(state_store_error)?
        .ok_or_else(not_found)?;
    let Some(code) = record
        .authorization_code
        .as_ref()
        .filter(|_| record.connect_session.as_deref() == Some(id.as_str()))
    else {
        return Err(not_found());
    };
    if record.user_id != user {
        tracing::warn!(integration = %record.integration, "confirmation for another user than the session's; the flow is discarded");
        metrics::counter!("tokenvault_flow_confirm_mismatch_total", "integration" => record.integration.to_string()).increment(1);
        return Err(ApiError::new(
            ErrorCode::UserMismatch,
            "this flow was started for another user; it is discarded. Start a new connect session for the logged-in user",
        ));
    }
    let integration = integration(&state, record.integration.as_str())?;
    exchange_and_save(
        &state,
        integration,
        &record,
        code.expose_secret(),
        record.instance_id.as_deref(),
    )
    .await
    .map_err(FlowFailure::into_api_error)?;
    tracing::info!(integration = %integration.key(), "connection created (confirmed by the application)");
    Ok(Json(ConfirmedConnection {
        user_id: user,
        integration: integration.key().clone(),
        status: "connected".into(),
    }))
}
