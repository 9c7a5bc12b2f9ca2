//! The callback: the state is consumed, checked against the browser, and
//! the code exchanged and stored (or, in confirm mode, kept for the
//! application's confirmation).

use crate::http::error::ErrorCode;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokenvault::connect::{Callback, ConnectFlow, Finished};
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::integrations::Integration;
use tokenvault::oauth_state::{FlowOutcome, FlowStatus, StateKey, StateRecord};
use utoipa::ToSchema;

use super::browser::{binding_cookie, binding_cookie_name, cookie, finished, for_browser};
use super::{FlowFailure, user_id};
use crate::http::{AppState, pages};

use crate::http::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};

/// `GET /oauth/callback`: one callback for every integration; the state says which.
#[tracing::instrument(skip_all)]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<ApiQuery<Callback>, ApiError>,
) -> Response {
    let mut response = match params {
        Ok(ApiQuery(params)) => finish(&state, &headers, None, params).await,
        Err(err) => for_browser(&state, &headers, err),
    };
    pages::harden(&mut response);
    response
}

/// `GET /oauth/{integration}/callback`: rejects a state issued for another integration.
#[tracing::instrument(skip_all)]
pub async fn integration_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<ApiPath<String>, ApiError>,
    params: Result<ApiQuery<Callback>, ApiError>,
) -> Response {
    let mut response = match (path, params) {
        (Ok(ApiPath(integration)), Ok(ApiQuery(params))) => {
            finish(&state, &headers, Some(integration), params).await
        }
        (Err(err), _) | (_, Err(err)) => for_browser(&state, &headers, err),
    };
    pages::harden(&mut response);
    response
}

pub(super) async fn finish(
    state: &AppState,
    headers: &HeaderMap,
    expected: Option<String>,
    callback: Callback,
) -> Response {
    let Some(key) = callback.state.as_deref() else {
        return for_browser(
            state,
            headers,
            ApiError::new(
                ErrorCode::InvalidState,
                "the callback has no state parameter",
            ),
        );
    };
    let (record, integration) = match state.connect.take_state(key, expected.as_deref()).await {
        Ok(found) => found,
        Err(err) => return for_browser(state, headers, err.into()),
    };
    let nonce = cookie(headers, &binding_cookie_name(key));
    let outcome = if !ConnectFlow::bound_to_browser(&record, nonce) {
        tracing::warn!(integration = %integration.key(), "callback from a browser that did not open the connect link; refused");
        metrics::counter!("tokenvault_flow_browser_mismatch_total", "integration" => integration.key().to_string()).increment(1);
        Err(FlowFailure::new(
            ErrorCode::BrowserMismatch,
            "finish the connection in the browser that started it: this browser did not open the connect link (or does not keep cookies); start again from the application",
        ))
    } else {
        match state.connect.finish(&integration, &record, &callback).await {
            Ok(Finished::Connected { connection_id }) => Ok(Ended::Connected(connection_id)),
            Ok(Finished::AwaitingConfirmation { confirmation }) => {
                confirmation_redirect(&integration, &record, &confirmation).map(Ended::AwaitingApp)
            }
            Err(err) => Err(FlowFailure::from(err)),
        }
    };
    let counted = match &outcome {
        Ok(Ended::AwaitingApp(_)) => "confirmation_required",
        Ok(Ended::Connected(_)) => "connected",
        Err(failure) => failure.code.as_str(),
    };
    metrics::counter!("tokenvault_connect_flows_total", "integration" => integration.key().to_string(), "outcome" => counted).increment(1);
    // What the link's result page shows, on every reload.
    let shown = match &outcome {
        Ok(Ended::AwaitingApp(_)) => FlowOutcome {
            status: FlowStatus::ConfirmationRequired,
            code: None,
            connection_id: None,
        },
        Ok(Ended::Connected(connection_id)) => FlowOutcome {
            status: FlowStatus::Connected,
            code: None,
            connection_id: Some(connection_id.clone()),
        },
        Err(failure) => FlowOutcome {
            status: if failure.code == ErrorCode::AccessDenied {
                FlowStatus::Denied
            } else {
                FlowStatus::Failed
            },
            code: Some(failure.redirect_code().to_owned()),
            connection_id: None,
        },
    };
    if let Some(session) = record.connect_session.as_deref()
        && let Err(err) = state
            .connect
            .record_outcome(&record, session, shown.clone())
            .await
    {
        // The flow itself is done; only a reload of its page would miss it.
        tracing::warn!(integration = %integration.key(), error = %err, "recording the flow's outcome failed");
    }
    let mut response = match outcome {
        Ok(Ended::AwaitingApp(confirmation)) => confirmation,
        Ok(Ended::Connected(_)) => {
            tracing::info!(integration = %integration.key(), "connect flow finished");
            finished(headers, &record, &shown, &integration)
        }
        Err(failure) => {
            tracing::warn!(integration = %integration.key(), code = %failure.redirect_code(), "flow failed");
            // At the callback URL itself (its state is spent: a reload
            // shows that the link was used, with this outcome).
            if record.redirect_to.is_some() || record.popup_origin.is_some() {
                finished(headers, &record, &shown, &integration)
            } else {
                for_browser(state, headers, failure.into_api_error())
            }
        }
    };
    if record.browser_binding.is_some() {
        let cleared = binding_cookie(state, &integration, key, "", 0);
        response.headers_mut().append(header::SET_COOKIE, cleared);
    }
    response
}

/// How a callback that went through ended.
enum Ended {
    /// Stored under this connection id.
    Connected(String),
    /// Confirm mode: the redirect that takes the code to the application.
    AwaitingApp(Response),
}

/// Confirm mode: the browser goes to the app with the one-time
/// confirmation code (the authorization code stays with us, not yet
/// exchanged).
fn confirmation_redirect(
    integration: &Integration,
    record: &StateRecord,
    confirmation: &StateKey,
) -> Result<Response, FlowFailure> {
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
    Ok((StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response())
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
    operation_id = "confirmConnectSession",
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
    let integration = state
        .connect
        .confirm(&id, &request.confirm_code, &user)
        .await?;
    metrics::counter!("tokenvault_connect_flows_total", "integration" => integration.to_string(), "outcome" => "confirmed").increment(1);
    tracing::info!(integration = %integration, "connect flow confirmed by the application");
    Ok(Json(ConfirmedConnection {
        user_id: user,
        integration,
        status: "connected".into(),
    }))
}
