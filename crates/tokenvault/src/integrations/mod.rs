//! Integrations: configured instances of provider catalog entries.
//!
//! An integration is what an operator configures under `[integrations.<key>]`:
//! a catalog entry (`provider`), the app's client credentials, its redirect
//! URI and optionally its own scopes. [`IntegrationConfig`] is that
//! configuration as written (plus an environment overlay and validation);
//! [`Integration`] is the resolved form — catalog entry, client
//! authentication, redirect URI, scopes and a shared [`OAuthClient`] — whose
//! methods run every OAuth flow and return domain types ([`TokenSet`],
//! [`Scopes`]) with typed errors ([`OAuthError`]).
//!
//! ```toml
//! [integrations.spotify]
//! provider = "spotify"
//! client_id = "..."
//! client_secret = "..."
//! redirect_uri = "https://app.example.com/oauth/callback"
//!
//! [integrations.acme]
//! provider = "oidc"
//! issuer = "https://login.acme.example"
//! client_id = "..."
//! client_secret = "..."
//! redirect_uri = "https://app.example.com/oauth/callback"
//! scopes = ["openid", "email", "offline_access"]
//! ```
//!
//! Typical start-up: [`IntegrationsConfig::from_toml_str`] (the server then
//! overlays the environment) → [`IntegrationsConfig::validate`] →
//! [`Integrations::resolve`] (OIDC discovery happens there).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use url::Url;

use crate::domain::{IntegrationKey, Scopes, TokenSet};
use crate::oauth::{ClientAuth, OAuthClient, OAuthError};
use crate::providers::{
    ApiAuthScheme, Catalog, Pkce as PkceSupport, ProviderSpec, RevocationStyle,
};

mod account;
mod app_tokens;
mod authorize;
mod config;
mod grants;
mod params;

pub use app_tokens::{APP_TOKEN_RENEW_BEFORE_SECS, AppTokens};
use config::*;
pub use config::{IntegrationConfig, IntegrationConfigError, IntegrationsConfig};
pub(crate) use grants::looks_secret;

/// What a token-endpoint call produced.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tokens: TokenSet,
    /// The response carried a refresh token. On a refresh, false means the
    /// previous refresh token was kept in `tokens` (no rotation happened).
    pub refresh_token_issued: bool,
    /// The OIDC ID token, unverified (tokenvault does not use it for identity;
    /// [`Integration::userinfo`] does that).
    pub id_token: Option<SecretString>,
    /// Every other field of the token response, as a JSON object, minus any
    /// field whose name contains `token`, `secret` or `password` (at any
    /// depth), so it can be stored unencrypted as connection metadata
    /// (WordPress.com `blog_id` / `blog_url`, ...).
    pub metadata: Value,
    /// Values of the entry's `token_response` connection parameters, as the
    /// response gave them (not checked yet: see
    /// [`Integration::connection_params_for`]).
    pub token_response_params: crate::providers::ConnectionParams,
}

/// Outcome of one device-token poll; see [`DevicePoll`].
#[derive(Debug, Clone)]
pub enum DeviceGrantPoll {
    /// Poll again after the interval.
    Pending,
    /// Add 5 s to the interval (RFC 8628 §3.5), then poll again.
    SlowDown,
    Complete(Box<Grant>),
    /// The user refused.
    Denied,
    /// The device code expired; start over.
    Expired,
}

/// The account behind a connection, read from the provider's profile endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Stable provider account id (numbers are stringified).
    pub id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// The whole userinfo document.
    pub raw: Value,
}

// ---------------------------------------------------------------------------
// Integration
// ---------------------------------------------------------------------------

/// One try of a token-endpoint call with one of the client secrets.
pub(super) struct ClientAuthAttempt {
    pub(super) auth: ClientAuth,
    index: usize,
    /// No further secret is tried after this one.
    retried: bool,
}

/// Runs `$call` (an expression using `$auth: &ClientAuth`, awaited inside)
/// with the integration's client authentication in use, retrying once with
/// the next client secret on `invalid_client` (client-secret rotation).
/// A macro, not a method taking a closure: the call borrows the caller's
/// locals across an await, which an async closure cannot do in a `Send`
/// future.
macro_rules! with_client_auth {
    ($integration:expr, |$auth:ident| $call:expr) => {{
        let integration = $integration;
        let mut attempt = integration.first_client_auth();
        loop {
            let result = {
                let $auth = &attempt.auth;
                $call
            };
            match integration.after_client_auth(&mut attempt, result) {
                std::ops::ControlFlow::Break(result) => break result,
                std::ops::ControlFlow::Continue(()) => continue,
            }
        }
    }};
}
pub(super) use with_client_auth;

/// A resolved integration: catalog entry, client credentials, redirect URI
/// and scopes, sharing one [`OAuthClient`] ([`Integrations`] hands it out as
/// an `Arc`). `Debug` never prints the client secret.
#[derive(Debug, Clone)]
pub struct Integration {
    key: IntegrationKey,
    spec: ProviderSpec,
    /// Authenticates with the secret in use (`secrets[in_use]`).
    auth: ClientAuth,
    /// Every configured client secret, in configured order (one, or a
    /// rotation's new and old); empty for a public client.
    secrets: Vec<SecretString>,
    /// Which of `secrets` calls use first: the one that last worked.
    /// Shared by the clones of this integration.
    in_use: Arc<std::sync::atomic::AtomicUsize>,
    redirect_uri: Url,
    scopes: Vec<String>,
    oauth: OAuthClient,
    rate_limit_per_second: Option<u32>,
}

impl Integration {
    /// Builds an integration from its configuration and an already resolved
    /// catalog entry (use [`Integration::resolve`] to look the entry up and
    /// run OIDC discovery). The configuration should have passed
    /// [`IntegrationConfig::validate`]; this checks what needs the entry:
    /// a confidential `token_auth_method` without a secret is an error naming
    /// `<PREFIX>_CLIENT_SECRET`. The configuration's `authorize_params` are
    /// merged over the entry's.
    pub fn new(
        key: IntegrationKey,
        config: &IntegrationConfig,
        mut spec: ProviderSpec,
        oauth: OAuthClient,
    ) -> Result<Self, IntegrationConfigError> {
        let prefix = key.env_prefix();
        if config.client_id.trim().is_empty() {
            return Err(invalid(format!("{prefix}_CLIENT_ID"), "missing"));
        }
        let secrets = config.client_secret_list(&key)?;
        let mut method = spec.token_auth_method;
        if secrets.is_empty() && method.is_confidential() && spec.public_client {
            // No secret, and the provider takes public clients: be one.
            method = crate::oauth::ClientAuthMethod::None;
        }
        if method == crate::oauth::ClientAuthMethod::None
            && matches!(spec.pkce, PkceSupport::Unsupported)
        {
            return Err(invalid(
                format!("integrations.{key}.provider"),
                format!(
                    "provider `{}` would make this a public client (no client secret), which needs PKCE, and the provider does not support it; set {prefix}_CLIENT_SECRET",
                    spec.key
                ),
            ));
        }
        let needs_secret = method.is_confidential()
            || matches!(spec.revocation_style, RevocationStyle::GithubGrant);
        if needs_secret && secrets.is_empty() {
            return Err(invalid(
                format!("{prefix}_CLIENT_SECRET"),
                format!(
                    "missing; provider `{}` authenticates with {}",
                    spec.key,
                    method.as_str()
                ),
            ));
        }
        let redirect_uri = config.redirect_uri.clone().ok_or_else(|| {
            invalid(
                format!("{prefix}_REDIRECT_URI"),
                format!("missing (set redirect_uri in [integrations.{key}] or the environment)"),
            )
        })?;
        check_authorize_params(&key, &config.authorize_params)?;
        spec.authorize_params.extend(
            config
                .authorize_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let scopes = config
            .scopes
            .clone()
            .unwrap_or_else(|| spec.default_scopes.clone());
        let auth = ClientAuth {
            client_id: config.client_id.trim().to_owned(),
            client_secret: secrets.first().cloned(),
            method,
        };
        Ok(Self {
            key,
            spec,
            auth,
            secrets,
            in_use: Arc::default(),
            redirect_uri,
            scopes,
            oauth,
            rate_limit_per_second: config.rate_limit_per_second,
        })
    }

    /// Looks `config.provider` up in `catalog` and builds the integration.
    /// A discovery entry (`oidc`, or a user entry aliasing it) is discovered
    /// at `config.issuer` (falling back to the entry's own issuer) through
    /// `oauth`'s HTTP client; `issuer` on a non-discovery provider is an
    /// error.
    pub async fn resolve(
        key: IntegrationKey,
        config: &IntegrationConfig,
        catalog: &Catalog,
        oauth: OAuthClient,
    ) -> Result<Self, IntegrationConfigError> {
        let provider = config.provider.trim();
        if let Some(spec) = catalog.get(provider) {
            if config.issuer.is_some() {
                return Err(invalid(
                    format!("integrations.{key}.issuer"),
                    format!("provider `{provider}` does not use OIDC discovery; remove issuer"),
                ));
            }
            return Self::new(key, config, spec.clone(), oauth);
        }
        let Some(pending) = catalog.pending_discovery().find(|p| p.key == provider) else {
            return Err(IntegrationConfigError::UnknownProvider {
                key: key.to_string(),
                provider: provider.to_owned(),
            });
        };
        if config.issuer.is_none() && pending.issuer.is_none() {
            return Err(invalid(
                format!("integrations.{key}.issuer"),
                format!("required for provider `{provider}` (OpenID Connect discovery)"),
            ));
        }
        let spec = catalog
            .discover_entry(provider, config.issuer.as_ref(), oauth.http())
            .await
            .map_err(|source| IntegrationConfigError::Catalog {
                key: key.to_string(),
                source,
            })?;
        Self::new(key, config, spec, oauth)
    }

    pub fn key(&self) -> &IntegrationKey {
        &self.key
    }

    /// The resolved catalog entry (with the configuration's
    /// `authorize_params` merged in).
    pub fn spec(&self) -> &ProviderSpec {
        &self.spec
    }

    /// How this integration authenticates at the token endpoint (`none`
    /// for a public client).
    pub fn auth_method(&self) -> crate::oauth::ClientAuthMethod {
        self.auth.method
    }

    pub fn client_id(&self) -> &str {
        &self.auth.client_id
    }

    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// The configured scopes (or the catalog's defaults), in order.
    pub fn default_scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether to generate PKCE for an authorization request: true when the
    /// provider requires or supports it. Pass the [`Pkce`] to
    /// [`Integration::authorize_url`] and store its verifier with the state.
    pub fn wants_pkce(&self) -> bool {
        !matches!(self.spec.pkce, PkceSupport::Unsupported)
    }

    /// Identifies the client configuration the provider sees (client id,
    /// secret, auth method, token endpoint) without revealing the secret:
    /// a recorded "misconfigured" verdict lapses when this changes.
    pub fn config_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.auth.client_id.as_bytes());
        hash.update([0]);
        for secret in &self.secrets {
            hash.update(secrecy::ExposeSecret::expose_secret(secret).as_bytes());
            hash.update([0]);
        }
        hash.update([0]);
        hash.update(self.auth.method.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.spec.refresh_url.as_str().as_bytes());
        hex::encode(&hash.finalize()[..8])
    }

    /// With several client secrets: which one calls use now (1-based
    /// position in `client_secrets`) and how many there are.
    pub fn client_secret_in_use(&self) -> Option<(usize, usize)> {
        (self.secrets.len() > 1).then(|| {
            let in_use = self.in_use.load(std::sync::atomic::Ordering::Relaxed);
            (in_use % self.secrets.len() + 1, self.secrets.len())
        })
    }

    /// The first attempt of a token-endpoint call: the client
    /// authentication in use. See [`with_client_auth!`].
    pub(super) fn first_client_auth(&self) -> ClientAuthAttempt {
        let count = self.secrets.len();
        if count < 2 {
            return ClientAuthAttempt {
                auth: self.auth.clone(),
                index: 0,
                retried: true,
            };
        }
        let index = self.in_use.load(std::sync::atomic::Ordering::Relaxed) % count;
        ClientAuthAttempt {
            auth: self.with_secret(index),
            index,
            retried: false,
        }
    }

    fn with_secret(&self, index: usize) -> ClientAuth {
        ClientAuth {
            client_secret: Some(self.secrets[index].clone()),
            ..self.auth.clone()
        }
    }

    /// After an attempt: an `invalid_client` with another secret configured
    /// is retried once with the next one (`Continue`); a success with it
    /// makes that one the secret in use. (A provider checks the client
    /// before the grant, so a refresh token refused with `invalid_client`
    /// was not consumed.)
    pub(super) fn after_client_auth<T>(
        &self,
        attempt: &mut ClientAuthAttempt,
        result: Result<T, OAuthError>,
    ) -> std::ops::ControlFlow<Result<T, OAuthError>> {
        use std::sync::atomic::Ordering;
        match result {
            Err(err) if !attempt.retried && err.oauth_error_code() == Some("invalid_client") => {
                let next = (attempt.index + 1) % self.secrets.len();
                tracing::warn!(
                    integration = %self.key,
                    "the provider refused client secret {} of {} (invalid_client); trying secret {}",
                    attempt.index + 1,
                    self.secrets.len(),
                    next + 1
                );
                *attempt = ClientAuthAttempt {
                    auth: self.with_secret(next),
                    index: next,
                    retried: true,
                };
                std::ops::ControlFlow::Continue(())
            }
            Ok(value) => {
                if attempt.retried
                    && self.secrets.len() > 1
                    && self.in_use.swap(attempt.index, Ordering::Relaxed) != attempt.index
                {
                    tracing::warn!(
                        integration = %self.key,
                        "client secret {} of {} works: using it from now on",
                        attempt.index + 1,
                        self.secrets.len()
                    );
                }
                std::ops::ControlFlow::Break(Ok(value))
            }
            Err(err) => std::ops::ControlFlow::Break(Err(err)),
        }
    }

    /// The shared HTTP client (no redirects, the configured timeouts), for
    /// calls to the provider's API.
    pub fn http(&self) -> &reqwest::Client {
        self.oauth.http()
    }

    /// The configured per-second limit on token-endpoint calls, if any.
    pub fn rate_limit_per_second(&self) -> Option<u32> {
        self.rate_limit_per_second
    }

    /// Refresh this long before the access token expires.
    pub fn refresh_buffer(&self) -> Duration {
        self.spec.refresh_buffer
    }

    /// The `Authorization` header value for an API call with `tokens`
    /// (`Bearer <token>`, or the bare token for `api_auth_scheme = "raw"`).
    pub fn api_authorization(&self, tokens: &TokenSet) -> SecretString {
        match self.spec.api_auth_scheme {
            ApiAuthScheme::Bearer => tokens.authorization_header(),
            ApiAuthScheme::Raw => SecretString::from(tokens.access_token.expose().to_owned()),
        }
    }

    /// The headers an API call carries for `tokens`: first the access token
    /// in the entry's header (`Authorization` per `api_auth_scheme`, or the
    /// bare token in `api_auth_header`), marked sensitive, then the entry's
    /// `api_headers` with `{client_id}` filled in.
    pub fn api_headers(
        &self,
        tokens: &TokenSet,
    ) -> Result<Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>, OAuthError> {
        self.api_headers_for(&tokens.access_token, tokens.token_type)
    }

    /// [`Integration::api_headers`] for an access token alone (`token_type`
    /// names the `Authorization` scheme).
    pub fn api_headers_for(
        &self,
        access_token: &crate::domain::AccessToken,
        token_type: crate::domain::TokenType,
    ) -> Result<Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>, OAuthError> {
        use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
        use secrecy::ExposeSecret as _;
        let unencodable =
            || OAuthError::Config("the access token is not a valid header value".into());
        let bare = || SecretString::from(access_token.expose().to_owned());
        let (name, token) = match (&self.spec.api_auth_header, self.spec.api_auth_scheme) {
            (None, ApiAuthScheme::Bearer) => (
                AUTHORIZATION,
                SecretString::from(format!("{} {}", token_type.as_str(), access_token.expose())),
            ),
            (None, ApiAuthScheme::Raw) => (AUTHORIZATION, bare()),
            (Some(name), _) => (
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| unencodable())?,
                bare(),
            ),
        };
        let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| unencodable())?;
        value.set_sensitive(true);
        let mut headers = vec![(name, value)];
        for (name, value) in &self.spec.api_headers {
            let filled = value.replace("{client_id}", &self.auth.client_id);
            if filled.contains('{') {
                // Names a connection parameter this integration was not
                // given (see `for_connection`): not sent.
                continue;
            }
            headers.push((
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| OAuthError::Config(format!("`{name}` is not a header name")))?,
                HeaderValue::from_str(&filled)
                    .map_err(|_| OAuthError::Config(format!("`{name}` has no valid value")))?,
            ));
        }
        Ok(headers)
    }

    fn requested_scopes(&self, scopes: Option<&Scopes>) -> Vec<String> {
        match scopes {
            Some(s) => s.to_vec(),
            None => self.scopes.clone(),
        }
    }
}

/// Every configured integration, by key: the resolved ones, and those
/// whose OIDC discovery failed at start-up, retried with backoff (see
/// [`Integrations::retry_unavailable`]) until they resolve. Shared by every
/// service of a process.
#[derive(Debug, Default)]
pub struct Integrations {
    by_key: std::sync::RwLock<BTreeMap<IntegrationKey, Arc<Integration>>>,
    unavailable: std::sync::Mutex<BTreeMap<IntegrationKey, Pending>>,
}

/// An integration whose provider could not be resolved: its issuer did
/// not answer discovery (down, unreachable, an unusable document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableIntegration {
    pub key: IntegrationKey,
    pub provider: String,
    pub redirect_uri: Option<Url>,
    /// The last discovery error.
    pub error: String,
    pub since: chrono::DateTime<chrono::Utc>,
    /// Discovery attempts so far.
    pub attempts: u32,
}

#[derive(Debug)]
struct Pending {
    view: UnavailableIntegration,
    config: IntegrationConfig,
    next_attempt: std::time::Instant,
}

/// Backoff between discovery attempts: doubling from one second, capped
/// so that an issuer coming back is picked up within the cap.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(10);

impl Integrations {
    /// Resolves every configured integration against `catalog` (running OIDC
    /// discovery where needed), sharing `oauth`. A discovery that fails
    /// leaves that integration unavailable (retried by
    /// [`Integrations::retry_unavailable`]); any other error is returned:
    /// the configuration itself is wrong.
    pub async fn resolve(
        config: &IntegrationsConfig,
        catalog: &Catalog,
        oauth: &OAuthClient,
    ) -> Result<Self, IntegrationConfigError> {
        let integrations = Self::default();
        for (key, cfg) in &config.integrations {
            match Integration::resolve(key.clone(), cfg, catalog, oauth.clone()).await {
                Ok(integration) => integrations.insert(integration),
                Err(IntegrationConfigError::Catalog { source, .. }) => {
                    tracing::warn!(integration = %key, error = %source, "OIDC discovery failed; the integration is unavailable and discovery is retried in the background");
                    metrics::gauge!("tokenvault_integration_unavailable", "integration" => key.to_string()).set(1.0);
                    integrations.unavailable.lock().unwrap().insert(
                        key.clone(),
                        Pending {
                            view: UnavailableIntegration {
                                key: key.clone(),
                                provider: cfg.provider.trim().to_owned(),
                                redirect_uri: cfg.redirect_uri.clone(),
                                error: source.to_string(),
                                since: chrono::Utc::now(),
                                attempts: 1,
                            },
                            config: cfg.clone(),
                            next_attempt: std::time::Instant::now() + RETRY_FIRST,
                        },
                    );
                }
                Err(err) => return Err(err),
            }
        }
        Ok(integrations)
    }

    /// Tries discovery again for every unavailable integration whose
    /// backoff has passed; the ones that resolve join the others. Returns
    /// their keys. A configuration error found once discovery works (a
    /// confidential provider without a secret, say) keeps the integration
    /// unavailable with that error, retried at the cap.
    pub async fn retry_unavailable(
        &self,
        catalog: &Catalog,
        oauth: &OAuthClient,
    ) -> Vec<IntegrationKey> {
        let now = std::time::Instant::now();
        let due: Vec<(IntegrationKey, IntegrationConfig)> = self
            .unavailable
            .lock()
            .unwrap()
            .values()
            .filter(|pending| pending.next_attempt <= now)
            .map(|pending| (pending.view.key.clone(), pending.config.clone()))
            .collect();
        let mut resolved = Vec::new();
        for (key, config) in due {
            let result = Integration::resolve(key.clone(), &config, catalog, oauth.clone()).await;
            let mut unavailable = self.unavailable.lock().unwrap();
            match result {
                Ok(integration) => {
                    unavailable.remove(&key);
                    drop(unavailable);
                    self.insert(integration);
                    tracing::info!(integration = %key, "OIDC discovery succeeded; the integration is available");
                    metrics::gauge!("tokenvault_integration_unavailable", "integration" => key.to_string()).set(0.0);
                    resolved.push(key);
                }
                Err(err) => {
                    if let Some(pending) = unavailable.get_mut(&key) {
                        pending.view.attempts += 1;
                        pending.view.error = match err {
                            IntegrationConfigError::Catalog { source, .. } => source.to_string(),
                            other => other.to_string(),
                        };
                        let backoff = RETRY_FIRST
                            .saturating_mul(1 << pending.view.attempts.min(8))
                            .min(RETRY_CAP);
                        pending.next_attempt = std::time::Instant::now() + backoff;
                        tracing::debug!(integration = %key, error = %pending.view.error, "OIDC discovery still failing");
                    }
                }
            }
        }
        resolved
    }

    /// The integrations not resolved yet, by key.
    pub fn unavailable(&self) -> Vec<UnavailableIntegration> {
        self.unavailable
            .lock()
            .unwrap()
            .values()
            .map(|pending| pending.view.clone())
            .collect()
    }

    /// When the next unavailable integration is due for another attempt.
    pub fn next_retry(&self) -> Option<std::time::Instant> {
        self.unavailable
            .lock()
            .unwrap()
            .values()
            .map(|pending| pending.next_attempt)
            .min()
    }

    pub fn insert(&self, integration: Integration) {
        self.by_key
            .write()
            .unwrap()
            .insert(integration.key.clone(), Arc::new(integration));
    }

    pub fn get(&self, key: &IntegrationKey) -> Option<Arc<Integration>> {
        self.by_key.read().unwrap().get(key).cloned()
    }

    /// The resolved integrations, by key (a snapshot).
    pub fn all(&self) -> Vec<Arc<Integration>> {
        self.by_key.read().unwrap().values().cloned().collect()
    }

    /// Resolved integrations.
    pub fn len(&self) -> usize {
        self.by_key.read().unwrap().len()
    }

    /// No integration is configured, resolved or not.
    pub fn is_empty(&self) -> bool {
        self.by_key.read().unwrap().is_empty() && self.unavailable.lock().unwrap().is_empty()
    }
}

#[cfg(test)]
mod tests;
