//! The OAuth flows over HTTP: connect sessions, the browser redirect, the
//! callback, the catalog and integration listings, app-level tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokenvault::domain::{IntegrationKey, Scopes, UserId};
use tokenvault::integrations::Integration;
use tokenvault::oauth::Pkce;
use tokenvault::refresh::IntegrationHealthView;
use tokenvault::state::{StateError, StateKey, StateRecord};
use utoipa::ToSchema;

use super::AppState;
use super::connections::AccessTokenBody;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};

/// Why a browser flow ended without a connection; sent to `redirect_to` as
/// `error=<code>` when the app gave one, else as a JSON error.
struct FlowFailure {
    status: StatusCode,
    code: String,
    message: String,
}

fn state_store_error(err: StateError) -> ApiError {
    match err {
        StateError::Unavailable(reason) => {
            tracing::error!(%reason, "state store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_store_unavailable",
                "the OAuth state store is unavailable; try again shortly",
            )
        }
        other => ApiError::internal(other),
    }
}

fn invalid_state(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_state", message)
}

pub(super) fn integration<'a>(
    state: &'a AppState,
    raw: &str,
) -> Result<&'a Arc<Integration>, ApiError> {
    IntegrationKey::parse(raw)
        .ok()
        .and_then(|key| state.integrations.get(&key))
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_integration",
                format!("no integration named {raw:?} is configured; see GET /v1/integrations"),
            )
        })
}

pub(super) fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_user_id", e.to_string()))
}

pub(super) fn parse_scopes(scopes: &[String]) -> Result<Scopes, ApiError> {
    Scopes::try_from_list(scopes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_scopes", e.to_string()))
}

/// Starts a browser flow for one user and integration.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectSessionRequest {
    // A string, checked by the handler so a bad id answers `invalid_user_id`.
    #[schema(value_type = UserId)]
    user_id: String,
    #[schema(value_type = IntegrationKey)]
    integration: String,
    /// Scopes to request instead of the integration's defaults; each
    /// non-empty and without whitespace.
    #[serde(default)]
    scopes: Option<Vec<String>>,
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
    /// Confirm mode, for flows that may finish on another device: the
    /// callback stores nothing and sends the browser to `redirect_to`
    /// (required) with `status=confirmation_required`, `connect_session`
    /// and a one-time `confirm_code`; the connection is stored when the
    /// app's backend calls `POST /v1/connect-sessions/{id}/confirm` for
    /// its logged-in user. Without it, the flow must finish in the browser
    /// that opened `connect_url`.
    #[serde(default)]
    confirm: bool,
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
    path = "/v1/connect-sessions",
    tag = "flows",
    summary = "Create a connect session (a single-use link to the provider's consent screen)",
    request_body = ConnectSessionRequest,
    responses(
        (status = 201, description = "The session; send the user's browser to `connect_url`", body = ConnectSessionCreated),
        (status = 400, description = "`invalid_json`, `invalid_user_id`, `invalid_scopes`, `invalid_redirect_to`, `invalid_provider_params`", body = ErrorBody),
        (status = 404, description = "`unknown_integration`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`state_store_unavailable`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn create_connect_session(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ConnectSessionRequest>,
) -> Result<Response, ApiError> {
    let user_id = user_id(&request.user_id)?;
    let integration = integration(&state, &request.integration)?;
    let scopes = parse_scopes(request.scopes.as_deref().unwrap_or_default())?;
    let redirect_to = request
        .redirect_to
        .map(|raw| allowed_redirect(&state, &raw))
        .transpose()?;
    check_provider_params(integration, &request.provider_params)?;
    if request.confirm && redirect_to.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_to",
            "confirm mode needs redirect_to: the confirmation code is sent there",
        ));
    }

    let id = StateKey::generate();
    let now = Utc::now();
    // A connect session names no session; an OAuth state always does.
    let record = StateRecord {
        redirect_to,
        scopes: scopes.to_vec(),
        provider_params: request.provider_params,
        confirm: request.confirm,
        ..StateRecord::new(
            integration.key().clone(),
            user_id,
            integration.redirect_uri().to_string(),
            now,
        )
    };
    state
        .states
        .put(&id, &record, state.settings.state_ttl)
        .await
        .map_err(state_store_error)?;
    let connect_url = state
        .settings
        .public_url
        .join(&format!("connect/{}", id.as_str()))
        .map_err(ApiError::internal)?;
    let expires_at = now + chrono::Duration::from_std(state.settings.state_ttl).unwrap_or_default();
    tracing::info!(integration = %integration.key(), session = %id, "connect session created");
    let body = ConnectSessionCreated {
        id: id.as_str().to_owned(),
        connect_url,
        expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
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
                StatusCode::BAD_REQUEST,
                "invalid_provider_params",
                format!(
                    "provider `{}` takes no parameter {name:?} (allowed: {allowed:?})",
                    integration.spec().key
                ),
            ));
        }
        if value.is_empty() || value.len() > 4096 || value.chars().any(char::is_control) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_provider_params",
                format!("parameter {name:?} is empty, too long or has control characters"),
            ));
        }
    }
    Ok(())
}

fn allowed_redirect(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let url = url::Url::parse(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_to",
            format!("redirect_to is not an absolute URL: {e}"),
        )
    })?;
    let origin = url.origin().ascii_serialization();
    if !state.settings.allowed_redirect_origins.contains(&origin) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_to",
            format!("redirect_to origin {origin} is not in TOKENVAULT_ALLOWED_REDIRECT_ORIGINS"),
        ));
    }
    Ok(url.to_string())
}

/// `GET /connect/{id}`: consumes the connect session, creates the one-time
/// OAuth state (with a PKCE verifier where the provider supports it) and
/// sends the browser to the provider.
/// Also binds the flow to this browser (unless the session is in confirm
/// mode): a random nonce goes into an HttpOnly, SameSite=Lax cookie scoped
/// to the callback path, its hash into the state, and the callback refuses
/// the state without it.
#[tracing::instrument(skip_all)]
pub async fn start_connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Response {
    let mut response = match start(&state, id).await {
        Ok(response) => response,
        Err(err) => for_browser(&headers, err),
    };
    harden_browser_response(&mut response);
    response
}

/// Headers of every answer a browser gets on the flow routes: nothing is
/// cached (the callback URL carries a code), no `Referer` leaves (it would
/// carry the code and state), the pages load nothing and cannot be framed.
fn harden_browser_response(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

async fn start(state: &AppState, id: String) -> Result<Response, ApiError> {
    let expired =
        "this connect link has expired or was already used; ask the application for a new one";
    let session = state
        .states
        .take(&id)
        .await
        .map_err(state_store_error)?
        .ok_or_else(|| invalid_state(expired))?;
    if session.connect_session.is_some() {
        return Err(invalid_state(expired));
    }
    let integration = integration(state, session.integration.as_str())?;
    let pkce = integration.wants_pkce().then(Pkce::generate);
    let key = StateKey::generate();
    let scopes: Option<Scopes> =
        (!session.scopes.is_empty()).then(|| session.scopes.iter().cloned().collect());
    let nonce = (!session.confirm).then(StateKey::generate);
    let record = StateRecord {
        code_verifier: pkce.as_ref().map(|p| p.verifier().clone()),
        connect_session: Some(id),
        created_at: Utc::now(),
        browser_binding: nonce.as_ref().map(|nonce| binding_digest(nonce.as_str())),
        ..session
    };
    state
        .states
        .put(&key, &record, state.settings.state_ttl)
        .await
        .map_err(state_store_error)?;
    let extras: Vec<(String, String)> = record
        .provider_params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let url = integration.authorize_url_with(key.as_str(), pkce.as_ref(), scopes.as_ref(), &extras);
    tracing::info!(integration = %integration.key(), state = %key, "redirecting to provider");
    let mut response = (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response();
    if let Some(nonce) = nonce {
        let cookie = binding_cookie(
            state,
            integration,
            key.as_str(),
            nonce.as_str(),
            state.settings.state_ttl.as_secs().max(1),
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The cookie that binds one flow to its browser. Its name comes from the
/// state, so concurrent flows in one browser do not overwrite each other.
fn binding_cookie_name(state_key: &str) -> String {
    format!(
        "tv_flow_{}",
        hex::encode(&Sha256::digest(state_key.as_bytes())[..8])
    )
}

/// What the state keeps of the cookie's nonce: a hash, so a leaked state
/// store does not hand out the cookie.
fn binding_digest(nonce: &str) -> String {
    hex::encode(Sha256::digest(nonce.as_bytes()))
}

fn binding_cookie(
    state: &AppState,
    integration: &Integration,
    state_key: &str,
    value: &str,
    max_age_secs: u64,
) -> HeaderValue {
    let secure = if state.settings.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let path = integration.redirect_uri().path();
    let cookie = format!(
        "{}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}",
        binding_cookie_name(state_key)
    );
    // Every part is ASCII we made (the path is a parsed URL's).
    HeaderValue::from_str(&cookie)
        .unwrap_or_else(|_| HeaderValue::from_static("tv_flow=; Max-Age=0"))
}

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Whether the request came from a browser page load rather than a program.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// An error on a browser route: a short page for a browser, the JSON
/// envelope for anything else.
fn for_browser(headers: &HeaderMap, err: ApiError) -> Response {
    if !wants_html(headers) {
        return err.into_response();
    }
    let request_id = super::error::REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_default();
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Connection not completed</title></head>\
         <body style=\"font-family:system-ui;margin:4rem auto;max-width:32rem;padding:0 1rem\">\
         <h1>Connection not completed</h1><p>{}</p>\
         <p style=\"color:#555;font-size:.875rem\">Error <code>{}</code>, request {}</p></body></html>",
        html_escape(&err.message),
        err.code,
        html_escape(&request_id),
    );
    let mut response = (err.status, Html(page)).into_response();
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

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

async fn finish(
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
        Err(FlowFailure {
            status: StatusCode::BAD_REQUEST,
            code: "browser_mismatch".into(),
            message: "finish the connection in the browser that started it: this browser did not open the connect link (or does not keep cookies); start again from the application".into(),
        })
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
            tracing::warn!(integration = %integration.key(), code = %failure.code, "flow failed");
            match &record.redirect_to {
                Some(_) => finished(&record, Some(&failure.code), integration),
                None => for_browser(
                    headers,
                    ApiError::new(failure.status, static_code(&failure.code), failure.message),
                ),
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
async fn consume_state<'a>(
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
            StatusCode::BAD_REQUEST,
            "state_mismatch",
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
async fn await_confirmation(
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
        .map_err(|err| {
            let err = state_store_error(err);
            FlowFailure {
                status: err.status,
                code: err.code.into(),
                message: err.message,
            }
        })?;
    let Some(mut target) = record
        .redirect_to
        .as_deref()
        .and_then(|raw| url::Url::parse(raw).ok())
    else {
        return Err(FlowFailure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal".into(),
            message: "a confirm-mode session without redirect_to".into(),
        });
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
fn authorization_code<'a>(
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
        return Err(FlowFailure {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the provider answered {code}: {}",
                description.chars().take(200).collect::<String>()
            ),
            code,
        });
    }
    integration
        .check_callback_issuer(params.iss.as_deref())
        .map_err(|e| FlowFailure {
            status: StatusCode::BAD_REQUEST,
            code: "issuer_mismatch".into(),
            message: format!("the callback's iss parameter does not match the provider: {e}"),
        })?;
    params
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| FlowFailure {
            status: StatusCode::BAD_REQUEST,
            code: "missing_code".into(),
            message: "the callback has neither code nor error".into(),
        })
}

async fn complete(
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
async fn exchange_and_save(
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
        .map_err(|err| FlowFailure {
            status: StatusCode::BAD_GATEWAY,
            code: "token_exchange_failed".into(),
            message: format!("exchanging the authorization code failed: {err}"),
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
            if super::error::Failure::database_unavailable(&err) {
                tracing::warn!(error = %err, "storing the grant failed: the database is unavailable");
                FlowFailure {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "database_unavailable".into(),
                    message: "storing the connection failed: the database is unavailable; start again shortly".into(),
                }
            } else {
                tracing::error!(error = %err, "storing the grant failed");
                FlowFailure {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal".into(),
                    message: "storing the connection failed".into(),
                }
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
        ApiError::not_found(
            "confirmation_not_found",
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
            StatusCode::FORBIDDEN,
            "user_mismatch",
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
    .map_err(|failure| {
        let mut err = ApiError::new(failure.status, static_code(&failure.code), failure.message);
        if err.status == StatusCode::SERVICE_UNAVAILABLE {
            err = err.with_retry_after(std::time::Duration::from_secs(1));
        }
        err
    })?;
    tracing::info!(integration = %integration.key(), "connection created (confirmed by the application)");
    Ok(Json(ConfirmedConnection {
        user_id: user,
        integration: integration.key().clone(),
        status: "connected".into(),
    }))
}

/// Our stable codes are static; a provider's own code is reported as `provider_error`.
fn static_code(code: &str) -> &'static str {
    match code {
        "issuer_mismatch" => "issuer_mismatch",
        "missing_code" => "missing_code",
        "token_exchange_failed" => "token_exchange_failed",
        "internal" => "internal",
        "database_unavailable" => "database_unavailable",
        "state_store_unavailable" => "state_store_unavailable",
        "browser_mismatch" => "browser_mismatch",
        "access_denied" => "access_denied",
        _ => "provider_error",
    }
}

/// The end of a browser flow: back to the app, or a small page.
fn finished(record: &StateRecord, error: Option<&str>, integration: &Integration) -> Response {
    if let Some(target) = record
        .redirect_to
        .as_deref()
        .and_then(|raw| url::Url::parse(raw).ok())
    {
        let mut target = target;
        {
            let mut query = target.query_pairs_mut();
            query.append_pair("connection", integration.key().as_str());
            match error {
                None => query.append_pair("status", "connected"),
                Some(code) => query
                    .append_pair("status", "error")
                    .append_pair("error", code),
            };
        }
        return (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response();
    }
    let name = html_escape(&integration.spec().display_name);
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Connected</title></head>\
         <body style=\"font-family:system-ui;margin:4rem auto;max-width:32rem\"><h1>{name} connected</h1>\
         <p>You can close this window.</p></body></html>"
    ))
    .into_response()
}

fn html_escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The provider catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderEntry>,
}

/// A catalog entry: resolved, or an OpenID Connect entry whose endpoints are
/// discovered when an integration uses it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ProviderEntry {
    Resolved(ProviderView),
    Discovery(DiscoveryProviderView),
}

/// A resolved catalog entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub key: String,
    pub display_name: String,
    pub default_scopes: Vec<String>,
    pub pkce: tokenvault::providers::Pkce,
    /// The provider issues refresh tokens.
    pub refresh_tokens: bool,
    /// A refresh returns a new refresh token and invalidates the old one.
    pub refresh_token_rotates: bool,
    /// The provider has a device authorization endpoint (`POST /v1/device-sessions`).
    pub device_flow: bool,
    #[schema(value_type = Option<String>, format = "uri")]
    pub api_base_url: Option<url::Url>,
    /// The entry this one inherited from, if any.
    pub alias_of: Option<String>,
}

/// An entry configured by OpenID Connect discovery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryProviderView {
    pub key: String,
    /// Always true.
    pub discovery: bool,
}

/// The configured integrations.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationList {
    pub integrations: Vec<IntegrationView>,
}

/// An OAuth flow an integration supports.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    AuthorizationCode,
    DeviceCode,
    ClientCredentials,
}

/// A configured integration.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationView {
    pub key: IntegrationKey,
    /// Its catalog entry.
    pub provider: String,
    pub display_name: String,
    #[schema(value_type = String, format = "uri")]
    pub redirect_uri: url::Url,
    pub default_scopes: Vec<String>,
    pub flows: Vec<Flow>,
    pub health: Option<IntegrationHealthView>,
}

/// `GET /v1/providers`: the catalog.
#[utoipa::path(
    get,
    path = "/v1/providers",
    tag = "integrations",
    summary = "The provider catalog",
    responses((status = 200, description = "Every catalog entry", body = ProviderList)),
)]
#[tracing::instrument(skip_all)]
pub async fn list_providers(State(state): State<AppState>) -> Json<ProviderList> {
    let mut providers: Vec<ProviderEntry> = state
        .catalog
        .iter()
        .map(|(key, spec)| {
            ProviderEntry::Resolved(ProviderView {
                key: key.to_owned(),
                display_name: spec.display_name.clone(),
                default_scopes: spec.default_scopes.clone(),
                pkce: spec.pkce,
                refresh_tokens: spec.refresh_tokens,
                refresh_token_rotates: spec.refresh_token_rotates,
                device_flow: spec.device_authorization_url.is_some(),
                api_base_url: spec.api_base_url.clone(),
                alias_of: spec.alias_of.clone(),
            })
        })
        .collect();
    providers.extend(state.catalog.pending_discovery().map(|pending| {
        ProviderEntry::Discovery(DiscoveryProviderView {
            key: pending.key.clone(),
            discovery: true,
        })
    }));
    Json(ProviderList { providers })
}

/// `GET /v1/integrations`: what this deployment is configured for.
#[utoipa::path(
    get,
    path = "/v1/integrations",
    tag = "integrations",
    summary = "The configured integrations with their health",
    responses((status = 200, description = "Every configured integration", body = IntegrationList)),
)]
#[tracing::instrument(skip_all)]
pub async fn list_integrations(State(state): State<AppState>) -> Json<IntegrationList> {
    let integrations = state
        .integrations
        .iter()
        .map(|(key, integration)| {
            let spec = integration.spec();
            let mut flows = vec![Flow::AuthorizationCode];
            if spec.device_authorization_url.is_some() {
                flows.push(Flow::DeviceCode);
            }
            if spec.token_auth_method != tokenvault::oauth::ClientAuthMethod::None {
                flows.push(Flow::ClientCredentials);
            }
            IntegrationView {
                key: key.clone(),
                provider: spec.key.clone(),
                display_name: spec.display_name.clone(),
                redirect_uri: integration.redirect_uri().clone(),
                default_scopes: integration.default_scopes().to_vec(),
                flows,
                health: state.vault.integration_health(key),
            }
        })
        .collect();
    Json(IntegrationList { integrations })
}

/// `GET /v1/integrations/{key}/token`: an app-level (client credentials)
/// token, cached and fetched again a minute before it expires. Concurrent
/// callers share one fetch.
#[utoipa::path(
    get,
    path = "/v1/integrations/{key}/token",
    tag = "integrations",
    summary = "An app-level (client credentials) token",
    description = "Cached until a minute before it expires; concurrent callers share one fetch.",
    params(("key" = IntegrationKey, Path, description = "A configured integration")),
    responses(
        (status = 200, description = "The integration's own token", body = AccessTokenBody),
        (status = 400, description = "`invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`unknown_integration`", body = ErrorBody),
        (status = 502, description = "`provider_error`: the client credentials grant failed", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn app_token(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<AccessTokenBody>, ApiError> {
    let integration = integration(&state, &key)?;
    let slot = {
        let mut slots = state.app_tokens.lock().await;
        Arc::clone(slots.entry(integration.key().clone()).or_default())
    };
    let mut cached = slot.lock().await;
    let now = Utc::now();
    let fresh = cached
        .as_ref()
        .filter(|tokens| !tokens.needs_refresh(now, chrono::Duration::seconds(60)));
    let tokens = match fresh {
        Some(tokens) => tokens.clone(),
        None => {
            let grant = integration
                .client_credentials(None, now)
                .await
                .map_err(|err| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "provider_error",
                        format!("the client credentials grant failed: {err}"),
                    )
                })?;
            *cached = Some(grant.tokens.clone());
            grant.tokens
        }
    };
    Ok(Json(AccessTokenBody::from(&tokens)))
}
