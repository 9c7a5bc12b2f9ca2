//! The OAuth flows over HTTP: connect sessions, the browser redirect, the
//! callback, the catalog and integration listings, app-level tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
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

    let id = StateKey::generate();
    let now = Utc::now();
    let record = StateRecord {
        integration: integration.key().clone(),
        user_id,
        code_verifier: None,
        redirect_uri: integration.redirect_uri().to_string(),
        // A connect session names no session; an OAuth state always does.
        connect_session: None,
        redirect_to,
        scopes: scopes.to_vec(),
        created_at: now,
        provider_params: request.provider_params,
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
#[tracing::instrument(skip_all)]
pub async fn start_connect(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
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
    let integration = integration(&state, session.integration.as_str())?;
    let pkce = integration.wants_pkce().then(Pkce::generate);
    let key = StateKey::generate();
    let scopes: Option<Scopes> =
        (!session.scopes.is_empty()).then(|| session.scopes.iter().cloned().collect());
    let record = StateRecord {
        code_verifier: pkce.as_ref().map(|p| p.verifier().clone()),
        connect_session: Some(id),
        created_at: Utc::now(),
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
    Ok((StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response())
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
    ApiQuery(params): ApiQuery<CallbackParams>,
) -> Result<Response, ApiError> {
    finish(state, None, params).await
}

/// `GET /oauth/{integration}/callback`: rejects a state issued for another integration.
#[tracing::instrument(skip_all)]
pub async fn integration_callback(
    State(state): State<AppState>,
    ApiPath(integration): ApiPath<String>,
    ApiQuery(params): ApiQuery<CallbackParams>,
) -> Result<Response, ApiError> {
    finish(state, Some(integration), params).await
}

async fn finish(
    state: AppState,
    expected: Option<String>,
    params: CallbackParams,
) -> Result<Response, ApiError> {
    let unknown = "unknown, expired or already used state; start the connection again";
    let key = params
        .state
        .as_deref()
        .ok_or_else(|| invalid_state("the callback has no state parameter"))?;
    // Consumed first: whatever happens next, this state cannot be replayed.
    let record = state
        .states
        .take(key)
        .await
        .map_err(state_store_error)?
        .ok_or_else(|| invalid_state(unknown))?;
    if record.connect_session.is_none() {
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
    let integration = integration(&state, record.integration.as_str())?;
    match complete(&state, integration, &record, &params).await {
        Ok(()) => {
            tracing::info!(integration = %integration.key(), "connection created");
            Ok(finished(&record, None, integration))
        }
        Err(failure) => {
            tracing::warn!(integration = %integration.key(), code = %failure.code, "flow failed");
            match &record.redirect_to {
                Some(_) => Ok(finished(&record, Some(&failure.code), integration)),
                None => Err(ApiError::new(
                    failure.status,
                    static_code(&failure.code),
                    failure.message,
                )),
            }
        }
    }
}

async fn complete(
    state: &AppState,
    integration: &Integration,
    record: &StateRecord,
    params: &CallbackParams,
) -> Result<(), FlowFailure> {
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
    let code = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| FlowFailure {
            status: StatusCode::BAD_REQUEST,
            code: "missing_code".into(),
            message: "the callback has neither code nor error".into(),
        })?;
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
    if let (Some(instance_id), Some(fields)) = (&params.instance_id, metadata.as_object_mut()) {
        fields.insert("instance_id".into(), json!(instance_id));
    }
    state
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
        })?;
    Ok(())
}

/// Our stable codes are static; a provider's own code is reported as `provider_error`.
fn static_code(code: &str) -> &'static str {
    match code {
        "issuer_mismatch" => "issuer_mismatch",
        "missing_code" => "missing_code",
        "token_exchange_failed" => "token_exchange_failed",
        "internal" => "internal",
        "database_unavailable" => "database_unavailable",
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
