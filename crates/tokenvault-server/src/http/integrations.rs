//! The provider catalog, the configured integrations and their app-level
//! (client credentials) tokens.

use crate::http::error::ErrorCode;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tokenvault::domain::IntegrationKey;
use tokenvault::refresh::IntegrationHealthView;
use utoipa::ToSchema;

use super::AppState;
use super::connections::AccessTokenBody;
use super::error::{ApiError, ApiPath, ErrorBody};
use super::flows::integration;

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
    /// Where the proxy forwards; `{name}` placeholders are filled per
    /// connection with its connection parameters (see `/v1/providers/{key}`).
    pub api_base_url: Option<String>,
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
    /// `available`, or `unavailable` while its OIDC discovery fails
    /// (retried in the background; see `unavailable`).
    pub status: IntegrationStatus,
    pub unavailable: Option<UnavailableView>,
    pub health: Option<IntegrationHealthView>,
    /// With `client_secrets` (a rotation): which secret calls use now.
    /// Null with a single secret.
    pub client_secrets: Option<ClientSecretsView>,
}

/// Which of an integration's client secrets is in use.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientSecretsView {
    /// How many are configured.
    pub configured: u32,
    /// The one calls use now, 1-based in configured order: it moves to the
    /// next when the provider refuses this one with `invalid_client` and
    /// accepts the next.
    pub in_use: u32,
}

/// Whether an integration can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationStatus {
    Available,
    Unavailable,
}

/// Why an integration is unavailable.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnavailableView {
    /// The last discovery error.
    pub error: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// Discovery attempts so far.
    pub attempts: u32,
}

/// `GET /v1/providers`: the catalog.
#[utoipa::path(
    get,
    operation_id = "listProviders",
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
                api_base_url: spec.api_base_url.as_ref().map(template_text),
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

/// One catalog entry in full: what tokenvault does with the provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderDetail {
    pub key: String,
    pub display_name: String,
    /// The entry it inherits from (`alias`), if any.
    pub alias_of: Option<String>,
    /// `#rrggbb` of its icon in the Connect UI.
    pub brand_color: Option<String>,
    /// True for an OpenID Connect entry whose endpoints come from the
    /// issuer's discovery document (then most fields below are null).
    pub discovery: bool,
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub refresh_url: Option<String>,
    pub revocation_url: Option<String>,
    /// `rfc7009`, `github_grant` or `none`.
    pub revocation_style: Option<String>,
    pub device_authorization_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub api_base_url: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub token_auth_method: Option<String>,
    pub pkce: Option<tokenvault::providers::Pkce>,
    pub default_scopes: Vec<String>,
    pub scope_separator: Option<String>,
    /// Scopes in plain words, as the Connect UI shows them.
    pub scope_descriptions: std::collections::BTreeMap<String, String>,
    /// Fixed parameters added to the authorization request.
    pub authorize_params: std::collections::BTreeMap<String, String>,
    pub refresh_tokens: Option<bool>,
    pub refresh_token_rotates: Option<bool>,
    /// Refresh requests carry the granted scopes.
    pub refresh_sends_scope: Option<bool>,
    /// Seconds before expiry a refresh is due.
    pub refresh_buffer_secs: Option<u64>,
    /// Lifetime assumed when a token response has no `expires_in`.
    pub default_expires_in_secs: Option<u64>,
    /// What the URLs above depend on per connection: each `{name}`
    /// placeholder, where its value comes from and the pattern it must
    /// match. Those with source `session` are passed as
    /// `connection_params` when creating a connect session.
    pub connection_params: Vec<ConnectionParamView>,
    /// JSON pointers of the token-response fields kept as connection
    /// metadata; null: every non-secret top-level field.
    pub token_metadata: Option<Vec<String>>,
    /// ID token claims kept as connection metadata (under `id_token`).
    pub id_token_claims: Vec<String>,
    /// Fixed parameters added to the code exchange.
    pub exchange_params: std::collections::BTreeMap<String, String>,
    /// Extra headers of token-endpoint requests.
    pub token_headers: std::collections::BTreeMap<String, String>,
    /// Extra headers of API calls (`{client_id}`: the integration's).
    pub api_headers: std::collections::BTreeMap<String, String>,
    /// The header carrying the access token to the API when it is not
    /// `Authorization` (it then carries the bare token).
    pub api_auth_header: Option<String>,
    /// The client id's parameter name when not `client_id` (TikTok's
    /// `client_key`).
    pub client_id_param: Option<String>,
}

/// One connection parameter of a catalog entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionParamView {
    pub name: String,
    pub description: String,
    /// `session` (the application passes it), `callback` (a query
    /// parameter of the OAuth callback), `token_response` (a field of the
    /// token response) or `post_connect` (read with the new token from
    /// `request`).
    pub source: String,
    /// The regular expression the whole value must match.
    pub pattern: String,
    pub example: String,
    /// `callback`: the query parameter.
    pub query: Option<String>,
    /// `token_response` / `post_connect`: the JSON pointer to the value.
    pub pointer: Option<String>,
    /// `post_connect`: the URL read.
    pub request: Option<String>,
    /// The value is an https URL of which only the host is kept.
    pub extract_host: bool,
}

impl ConnectionParamView {
    fn of(spec: &tokenvault::providers::ConnectionParamSpec) -> Self {
        use tokenvault::providers::ParamSource;
        let (query, pointer, request) = match &spec.source {
            ParamSource::Session => (None, None, None),
            ParamSource::Callback { query } => (Some(query.clone()), None, None),
            ParamSource::TokenResponse { pointer } => (None, Some(pointer.clone()), None),
            ParamSource::PostConnect { request, pointer } => {
                (None, Some(pointer.clone()), Some(template_text(request)))
            }
        };
        Self {
            name: spec.name.clone(),
            description: spec.description.clone(),
            source: spec.source.as_str().to_owned(),
            pattern: spec.pattern.as_str().to_owned(),
            example: spec.example.clone(),
            query,
            pointer,
            request,
            extract_host: spec.extract_host,
        }
    }
}

/// A URL template as written: placeholders in braces (a parsed path
/// carries them percent-encoded).
pub fn template_text(url: &url::Url) -> String {
    url.as_str()
        .replace("%7B", "{")
        .replace("%7D", "}")
        .replace("%7b", "{")
        .replace("%7d", "}")
}

impl ProviderDetail {
    pub fn of(spec: &tokenvault::providers::ProviderSpec) -> Self {
        let revocation_style = serde_json::to_value(spec.revocation_style)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned));
        Self {
            key: spec.key.clone(),
            display_name: spec.display_name.clone(),
            alias_of: spec.alias_of.clone(),
            brand_color: spec.brand_color.clone(),
            discovery: false,
            issuer: spec.issuer.clone(),
            authorization_url: Some(template_text(&spec.authorization_url)),
            token_url: Some(template_text(&spec.token_url)),
            refresh_url: Some(template_text(&spec.refresh_url)),
            revocation_url: spec.revocation_url.as_ref().map(template_text),
            revocation_style,
            device_authorization_url: spec.device_authorization_url.as_ref().map(template_text),
            userinfo_url: spec.userinfo_url.as_ref().map(template_text),
            api_base_url: spec.api_base_url.as_ref().map(template_text),
            token_auth_method: Some(spec.token_auth_method.as_str().to_owned()),
            pkce: Some(spec.pkce),
            default_scopes: spec.default_scopes.clone(),
            scope_separator: Some(spec.scope_separator.clone()),
            scope_descriptions: spec.scope_descriptions.clone(),
            authorize_params: spec.authorize_params.clone(),
            refresh_tokens: Some(spec.refresh_tokens),
            refresh_token_rotates: Some(spec.refresh_token_rotates),
            refresh_sends_scope: Some(spec.refresh_sends_scope),
            refresh_buffer_secs: Some(spec.refresh_buffer.as_secs()),
            default_expires_in_secs: spec.default_expires_in.map(|d| d.as_secs()),
            connection_params: spec
                .connection_params
                .iter()
                .map(ConnectionParamView::of)
                .collect(),
            token_metadata: spec.token_metadata.clone(),
            id_token_claims: spec.id_token_claims.clone(),
            exchange_params: spec.exchange_params.clone(),
            token_headers: spec.token_headers.clone(),
            api_headers: spec.api_headers.clone(),
            api_auth_header: spec.api_auth_header.clone(),
            client_id_param: spec.client_id_param.clone(),
        }
    }

    /// An entry resolved by OIDC discovery when an integration uses it.
    pub fn discovered(pending: &tokenvault::providers::PendingDiscovery) -> Self {
        Self {
            key: pending.key.clone(),
            display_name: pending.key.clone(),
            alias_of: pending.alias_of.clone(),
            brand_color: None,
            discovery: true,
            issuer: pending.issuer.as_ref().map(ToString::to_string),
            authorization_url: None,
            token_url: None,
            refresh_url: None,
            revocation_url: None,
            revocation_style: None,
            device_authorization_url: None,
            userinfo_url: None,
            api_base_url: None,
            token_auth_method: None,
            pkce: None,
            default_scopes: Vec::new(),
            scope_separator: None,
            scope_descriptions: Default::default(),
            authorize_params: Default::default(),
            refresh_tokens: None,
            refresh_token_rotates: None,
            refresh_sends_scope: None,
            refresh_buffer_secs: None,
            default_expires_in_secs: None,
            connection_params: Vec::new(),
            token_metadata: None,
            id_token_claims: Vec::new(),
            exchange_params: Default::default(),
            token_headers: Default::default(),
            api_headers: Default::default(),
            api_auth_header: None,
            client_id_param: None,
        }
    }

    /// The entry `key` of `catalog`, resolved or awaiting discovery.
    pub fn find(catalog: &tokenvault::providers::Catalog, key: &str) -> Option<Self> {
        catalog.get(key).map(Self::of).or_else(|| {
            catalog
                .pending_discovery()
                .find(|pending| pending.key == key)
                .map(Self::discovered)
        })
    }
}

/// `GET /v1/providers/{key}`: one catalog entry in full.
#[utoipa::path(
    get,
    operation_id = "getProvider",
    path = "/v1/providers/{key}",
    tag = "integrations",
    summary = "One catalog entry in full",
    params(("key" = String, Path, description = "A catalog key (`GET /v1/providers` lists them)")),
    responses(
        (status = 200, description = "The entry", body = ProviderDetail),
        (status = 400, description = "`invalid_path` (a path segment that is not UTF-8)", body = ErrorBody),
        (status = 404, description = "`unknown_provider`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn get_provider(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<ProviderDetail>, ApiError> {
    ProviderDetail::find(&state.catalog, &key)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownProvider,
                format!("no catalog entry {key:?}; GET /v1/providers lists them"),
            )
        })
}

/// `GET /v1/integrations`: what this deployment is configured for.
#[utoipa::path(
    get,
    operation_id = "listIntegrations",
    path = "/v1/integrations",
    tag = "integrations",
    summary = "The configured integrations with their health",
    responses((status = 200, description = "Every configured integration", body = IntegrationList)),
)]
#[tracing::instrument(skip_all)]
pub async fn list_integrations(State(state): State<AppState>) -> Json<IntegrationList> {
    let mut integrations: Vec<IntegrationView> = state
        .integrations
        .all()
        .into_iter()
        .map(|integration| {
            let key = integration.key();
            let spec = integration.spec();
            let mut flows = vec![Flow::AuthorizationCode];
            if spec.device_authorization_url.is_some() {
                flows.push(Flow::DeviceCode);
            }
            if integration.auth_method() != tokenvault::oauth::ClientAuthMethod::None {
                flows.push(Flow::ClientCredentials);
            }
            IntegrationView {
                key: key.clone(),
                provider: spec.key.clone(),
                display_name: spec.display_name.clone(),
                redirect_uri: integration.redirect_uri().clone(),
                default_scopes: integration.default_scopes().to_vec(),
                flows,
                status: IntegrationStatus::Available,
                unavailable: None,
                health: state.vault.integration_health(key),
                client_secrets: integration
                    .client_secret_in_use()
                    .map(|(in_use, configured)| ClientSecretsView {
                        configured: u32::try_from(configured).unwrap_or(u32::MAX),
                        in_use: u32::try_from(in_use).unwrap_or(u32::MAX),
                    }),
            }
        })
        .collect();
    integrations.extend(state.integrations.unavailable().into_iter().map(|pending| {
        IntegrationView {
            display_name: pending.key.to_string(),
            redirect_uri: pending.redirect_uri.unwrap_or_else(|| {
                crate::integrations_env::default_redirect_uri(&state.settings.public_url)
            }),
            key: pending.key,
            provider: pending.provider,
            default_scopes: Vec::new(),
            flows: Vec::new(),
            status: IntegrationStatus::Unavailable,
            unavailable: Some(UnavailableView {
                error: pending.error,
                since: pending.since,
                attempts: pending.attempts,
            }),
            health: None,
            client_secrets: None,
        }
    }));
    integrations.sort_by(|a, b| a.key.cmp(&b.key));
    Json(IntegrationList { integrations })
}

/// `GET /v1/integrations/{key}/token`: an app-level (client credentials)
/// token, cached and fetched again a minute before it expires. Concurrent
/// callers share one fetch.
#[utoipa::path(
    get,
    operation_id = "getAppToken",
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
    let tokens = state
        .app_tokens
        .token(&integration, state.vault.clock().as_ref())
        .await
        .map_err(|err| {
            ApiError::new(
                ErrorCode::ProviderError,
                format!("the client credentials grant failed: {err}"),
            )
        })?;
    Ok(Json(AccessTokenBody::from(&tokens)))
}
