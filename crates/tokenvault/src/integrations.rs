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
//! Typical start-up: [`IntegrationsConfig::from_toml_str`] →
//! [`IntegrationsConfig::apply_env`] → [`IntegrationsConfig::validate`] →
//! [`Integrations::resolve`] (OIDC discovery happens there).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value};
use url::{Host, Url};

use crate::domain::{AccessToken, IntegrationKey, RefreshToken, Scopes, TokenSet, TokenType};
use crate::oauth::{
    AuthorizeRequest, ClientAuth, DeviceAuthorization, DevicePoll, IssuerMismatch, OAuthClient,
    OAuthError, Pkce, TokenRequestOptions, TokenResponse, build_authorize_url,
    check_callback_issuer,
};
use crate::providers::{
    ApiAuthScheme, AuthorizeStyle, Catalog, CatalogError, Pkce as PkceSupport, ProviderSpec,
    RESERVED_AUTHORIZE_PARAMS, RevocationStyle,
};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// A configuration error. The message starts with the name of what to fix:
/// the environment variable for values the environment can set
/// (`SPOTIFY_REDIRECT_URI: must use https in production`), else the TOML
/// path (`integrations.acme.issuer: ...`).
#[derive(Debug, thiserror::Error)]
pub enum IntegrationConfigError {
    #[error("{variable}: {message}")]
    Invalid { variable: String, message: String },
    #[error(
        "integrations.{key}.provider: unknown provider `{provider}` (not in the provider catalog)"
    )]
    UnknownProvider { key: String, provider: String },
    /// OIDC discovery (or another catalog operation) failed for the integration.
    #[error("integration `{key}`: {source}")]
    Catalog {
        key: String,
        #[source]
        source: CatalogError,
    },
}

fn invalid(variable: impl Into<String>, message: impl Into<String>) -> IntegrationConfigError {
    IntegrationConfigError::Invalid {
        variable: variable.into(),
        message: message.into(),
    }
}

/// One `[integrations.<key>]` table. `Debug` never prints the secret.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// Catalog key (`spotify`, `google-mail`, `oidc`, a user catalog entry).
    pub provider: String,
    /// May be left out of the file when `<PREFIX>_CLIENT_ID` provides it.
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default, deserialize_with = "de_opt_url")]
    pub redirect_uri: Option<Url>,
    /// Replaces the catalog's `default_scopes` when set.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Issuer to discover, for discovery entries (`provider = "oidc"`).
    #[serde(default, deserialize_with = "de_opt_url")]
    pub issuer: Option<Url>,
    /// Extra authorization request parameters; they override the catalog's
    /// `authorize_params` (e.g. `prompt = "select_account consent"`).
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Token-endpoint calls per second this instance makes for the
    /// integration (refreshes); default from the refresher settings.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

/// `url` is built without its serde feature: parse the string ourselves.
fn de_opt_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => Url::parse(s.trim())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not an absolute URL: {e}"))),
    }
}

impl IntegrationConfig {
    /// Overlays `<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET` and
    /// `<PREFIX>_REDIRECT_URI` (PREFIX = [`IntegrationKey::env_prefix`],
    /// `google-mail` → `GOOGLE_MAIL`) on the file values: the environment
    /// wins. Unset and empty (or blank) variables are ignored. `env` is
    /// usually `|name| std::env::var(name).ok()`.
    pub fn apply_env(
        &mut self,
        key: &IntegrationKey,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), IntegrationConfigError> {
        let prefix = key.env_prefix();
        let get = |suffix: &str| {
            let name = format!("{prefix}_{suffix}");
            env(&name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        };
        if let Some((_, v)) = get("CLIENT_ID") {
            self.client_id = v.trim().to_owned();
        }
        if let Some((_, v)) = get("CLIENT_SECRET") {
            self.client_secret = Some(SecretString::from(v));
        }
        if let Some((name, v)) = get("REDIRECT_URI") {
            let url = Url::parse(v.trim())
                .map_err(|e| invalid(name, format!("must be an absolute URL ({e})")))?;
            self.redirect_uri = Some(url);
        }
        Ok(())
    }

    /// Checks what can be checked without the catalog:
    ///
    /// * `client_id` is set;
    /// * the redirect URI is set, absolute http(s) with a host and without a
    ///   fragment (RFC 6749 §3.1.2); in production https only; in
    ///   development http only on `localhost`, `127.0.0.1` or `[::1]`; when
    ///   `public_url` is given, on its origin;
    /// * scopes are single tokens; `authorize_params` do not override a
    ///   parameter the flow sets; the issuer is https (http on loopback
    ///   hosts outside production).
    ///
    /// A confidential provider without `client_secret` is reported when the
    /// integration is resolved ([`Integration::new`]), which knows the
    /// catalog's `token_auth_method`.
    pub fn validate(
        &self,
        key: &IntegrationKey,
        public_url: Option<&Url>,
        production: bool,
    ) -> Result<(), IntegrationConfigError> {
        let prefix = key.env_prefix();
        if self.provider.trim().is_empty() {
            return Err(invalid(format!("integrations.{key}.provider"), "missing"));
        }
        if self.client_id.trim().is_empty() {
            return Err(invalid(
                format!("{prefix}_CLIENT_ID"),
                format!("missing (set client_id in [integrations.{key}] or the environment)"),
            ));
        }

        let variable = format!("{prefix}_REDIRECT_URI");
        let Some(redirect) = &self.redirect_uri else {
            return Err(invalid(
                variable,
                format!("missing (set redirect_uri in [integrations.{key}] or the environment)"),
            ));
        };
        check_redirect_uri(redirect, public_url, production).map_err(|m| invalid(variable, m))?;

        if let Some(scopes) = &self.scopes {
            for scope in scopes {
                if scope.is_empty() || scope.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        format!("integrations.{key}.scopes"),
                        format!("`{scope}` is not a single scope"),
                    ));
                }
            }
        }
        check_authorize_params(key, &self.authorize_params)?;

        if let Some(issuer) = &self.issuer {
            let loopback_ok = !production && is_loopback_host(issuer);
            let ok = issuer.scheme() == "https" || (issuer.scheme() == "http" && loopback_ok);
            if !ok || issuer.host().is_none() {
                return Err(invalid(
                    format!("integrations.{key}.issuer"),
                    if production {
                        "must be an https URL in production"
                    } else {
                        "must be an https URL (http only on localhost)"
                    },
                ));
            }
            if issuer.query().is_some() || issuer.fragment().is_some() {
                return Err(invalid(
                    format!("integrations.{key}.issuer"),
                    "must not contain a query or fragment",
                ));
            }
        }
        Ok(())
    }
}

fn check_authorize_params(
    key: &IntegrationKey,
    params: &BTreeMap<String, String>,
) -> Result<(), IntegrationConfigError> {
    for name in params.keys() {
        if name.is_empty() || RESERVED_AUTHORIZE_PARAMS.contains(&name.as_str()) {
            return Err(invalid(
                format!("integrations.{key}.authorize_params"),
                format!("`{name}` is set by tokenvault and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        None => false,
    }
}

fn check_redirect_uri(
    redirect: &Url,
    public_url: Option<&Url>,
    production: bool,
) -> Result<(), String> {
    match redirect.scheme() {
        "https" => {}
        "http" if production => return Err("must use https in production".into()),
        "http" if !is_loopback_host(redirect) => {
            return Err(
                "must use https (http is only allowed on localhost, 127.0.0.1 or [::1])".into(),
            );
        }
        "http" => {}
        other => return Err(format!("must be an absolute http(s) URL, not `{other}:`")),
    }
    if redirect.host().is_none() {
        return Err("must be an absolute URL with a host".into());
    }
    if redirect.fragment().is_some() {
        return Err("must not contain a fragment (RFC 6749 §3.1.2)".into());
    }
    if let Some(public) = public_url
        && redirect.origin() != public.origin()
    {
        return Err(format!(
            "must be on the public URL's origin {}, not {}",
            public.origin().ascii_serialization(),
            redirect.origin().ascii_serialization()
        ));
    }
    Ok(())
}

/// The `[integrations]` section of a configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IntegrationsConfig {
    #[serde(default)]
    pub integrations: BTreeMap<IntegrationKey, IntegrationConfig>,
}

impl IntegrationsConfig {
    /// Parses a TOML document; tables other than `[integrations.*]` are
    /// ignored, unknown fields inside an integration are errors.
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// [`IntegrationConfig::apply_env`] for every configured integration.
    pub fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), IntegrationConfigError> {
        for (key, config) in &mut self.integrations {
            config.apply_env(key, &env)?;
        }
        Ok(())
    }

    /// [`IntegrationConfig::validate`] for every configured integration.
    pub fn validate(
        &self,
        public_url: Option<&Url>,
        production: bool,
    ) -> Result<(), IntegrationConfigError> {
        for (key, config) in &self.integrations {
            config.validate(key, public_url, production)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

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

/// A resolved integration: catalog entry, client credentials, redirect URI
/// and scopes, sharing one [`OAuthClient`] ([`Integrations`] hands it out as
/// an `Arc`). `Debug` never prints the client secret.
#[derive(Debug, Clone)]
pub struct Integration {
    key: IntegrationKey,
    spec: ProviderSpec,
    auth: ClientAuth,
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
        let method = spec.token_auth_method;
        let needs_secret = method.is_confidential()
            || matches!(spec.revocation_style, RevocationStyle::GithubGrant);
        if needs_secret && config.client_secret.is_none() {
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
            client_secret: config.client_secret.clone(),
            method,
        };
        Ok(Self {
            key,
            spec,
            auth,
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
        if let Some(secret) = &self.auth.client_secret {
            hash.update(secrecy::ExposeSecret::expose_secret(secret).as_bytes());
        }
        hash.update([0]);
        hash.update(self.auth.method.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.spec.refresh_url.as_str().as_bytes());
        hex::encode(&hash.finalize()[..8])
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

    fn requested_scopes(&self, scopes: Option<&Scopes>) -> Vec<String> {
        match scopes {
            Some(s) => s.to_vec(),
            None => self.scopes.clone(),
        }
    }

    /// The URL to send the user's browser to. `scopes: None` requests the
    /// integration's default scopes. PKCE parameters are sent only when
    /// [`Integration::wants_pkce`] (a `pkce` passed for a provider without
    /// PKCE support is ignored; for `pkce = "required"` the caller must pass
    /// one). Provider parameters come from the catalog
    /// ([`ProviderSpec::authorize_params_for`]: Google's
    /// `access_type=offline` & `prompt=consent`, `prompt=consent` for OIDC
    /// `offline_access`).
    pub fn authorize_url(&self, state: &str, pkce: Option<&Pkce>, scopes: Option<&Scopes>) -> Url {
        self.authorize_url_with(state, pkce, scopes, &[])
    }

    /// [`Integration::authorize_url`] with per-request parameters
    /// (`login_hint`, or Wix's `token` from its redirect to the app URL).
    /// They override catalog and configured parameters, never the ones the
    /// flow sets.
    pub fn authorize_url_with(
        &self,
        state: &str,
        pkce: Option<&Pkce>,
        scopes: Option<&Scopes>,
        extra_params: &[(String, String)],
    ) -> Url {
        match self.spec.authorize_style {
            AuthorizeStyle::Oauth2 => {
                let scopes = self.requested_scopes(scopes);
                let mut params = self.spec.authorize_params_for(&scopes);
                for (k, v) in extra_params {
                    params.insert(k.clone(), v.clone());
                }
                let params: Vec<(String, String)> = params.into_iter().collect();
                let challenge = pkce.filter(|_| self.wants_pkce()).map(Pkce::challenge);
                build_authorize_url(&AuthorizeRequest {
                    authorization_url: &self.spec.authorization_url,
                    client_id: &self.auth.client_id,
                    redirect_uri: self.redirect_uri.as_str(),
                    scopes: &scopes,
                    scope_separator: &self.spec.scope_separator,
                    state,
                    code_challenge: challenge,
                    extra_params: &params,
                })
            }
            AuthorizeStyle::WixInstaller => self.wix_installer_url(state, extra_params),
        }
    }

    /// `https://www.wix.com/installer/install?appId=…&redirectUrl=…&state=…&token=…`
    fn wix_installer_url(&self, state: &str, extra_params: &[(String, String)]) -> Url {
        const CORE: [&str; 3] = ["appId", "redirectUrl", "state"];
        let mut extras: BTreeMap<&str, &str> = self
            .spec
            .authorize_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in extra_params {
            extras.insert(k.as_str(), v.as_str());
        }
        extras.retain(|k, _| !CORE.contains(k));
        let mut url = self.spec.authorization_url.clone();
        let existing: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !CORE.contains(&k.as_ref()) && !extras.contains_key(k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &existing {
                q.append_pair(k, v);
            }
            q.append_pair("appId", &self.auth.client_id);
            q.append_pair("redirectUrl", self.redirect_uri.as_str());
            q.append_pair("state", state);
            for (k, v) in &extras {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// RFC 9207 check of the callback's `iss` parameter against the
    /// provider's issuer.
    pub fn check_callback_issuer(&self, iss: Option<&str>) -> Result<(), IssuerMismatch> {
        check_callback_issuer(
            self.spec.issuer.as_deref(),
            self.spec.iss_parameter_supported,
            iss,
        )
    }

    fn token_options(&self, extra: &BTreeMap<String, String>) -> TokenRequestOptions {
        TokenRequestOptions {
            token_path: self.spec.token_response_path.clone(),
            extra_params: extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            format: self.spec.token_request_format,
        }
    }

    /// Exchanges the callback's `code`. `code_verifier` is the stored PKCE
    /// verifier (ignored for providers without PKCE; required for
    /// `pkce = "required"`). `scopes` are the ones the authorization request
    /// asked for (`None`: the defaults); they become the token set's scopes
    /// when the response does not list the granted ones. `now` is when the
    /// response is considered received (expiry is computed from it).
    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: Option<&SecretString>,
        scopes: Option<&Scopes>,
        now: DateTime<Utc>,
    ) -> Result<Grant, OAuthError> {
        let verifier = code_verifier.filter(|_| self.wants_pkce());
        if verifier.is_none() && self.spec.pkce == PkceSupport::Required {
            return Err(OAuthError::Config(format!(
                "provider `{}` requires PKCE: pass the stored code_verifier",
                self.spec.key
            )));
        }
        let redirect_uri = match self.spec.authorize_style {
            AuthorizeStyle::Oauth2 => Some(self.redirect_uri.as_str()),
            AuthorizeStyle::WixInstaller => None,
        };
        let response = self
            .oauth
            .exchange_code(
                &self.spec.token_url,
                &self.auth,
                code,
                redirect_uri,
                verifier,
                &self.token_options(&BTreeMap::new()),
            )
            .await?;
        let requested: Scopes = self.requested_scopes(scopes).into_iter().collect();
        Ok(self.grant(response, requested, None, now))
    }

    /// Refresh-token grant at the entry's `refresh_url`, with its
    /// `refresh_params`. `current_scopes` are the connection's granted scopes:
    /// sent as `scope` only for providers with `refresh_sends_scope`, and kept
    /// as the token set's scopes when the response lists none.
    ///
    /// **Refresh token retention:** when the response carries no
    /// `refresh_token` (Google, TIDAL, most non-rotating providers), the
    /// returned token set keeps `refresh_token` — the old one stays valid —
    /// and [`Grant::refresh_token_issued`] is false. When it carries one,
    /// that one replaces it and must be stored before the old one is
    /// discarded (rotating providers invalidate the old one).
    pub async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        current_scopes: &Scopes,
        now: DateTime<Utc>,
    ) -> Result<Grant, OAuthError> {
        let scope_param = self
            .spec
            .refresh_sends_scope
            .then(|| current_scopes.to_vec())
            .filter(|s| !s.is_empty());
        let response = self
            .oauth
            .refresh(
                &self.spec.refresh_url,
                &self.auth,
                &SecretString::from(refresh_token.expose().to_owned()),
                scope_param.as_deref(),
                &self.spec.scope_separator,
                &self.token_options(&self.spec.refresh_params),
            )
            .await?;
        Ok(self.grant(response, current_scopes.clone(), Some(refresh_token), now))
    }

    /// Client-credentials grant (app-only token). `scopes: None` requests the
    /// default scopes.
    pub async fn client_credentials(
        &self,
        scopes: Option<&Scopes>,
        now: DateTime<Utc>,
    ) -> Result<Grant, OAuthError> {
        let requested = self.requested_scopes(scopes);
        let response = self
            .oauth
            .client_credentials(
                &self.spec.token_url,
                &self.auth,
                &requested,
                &self.spec.scope_separator,
                &self.token_options(&BTreeMap::new()),
            )
            .await?;
        Ok(self.grant(response, requested.into_iter().collect(), None, now))
    }

    /// Starts a device authorization (RFC 8628). Errors with
    /// [`OAuthError::Config`] when the provider has no device endpoint.
    pub async fn device_authorize(
        &self,
        scopes: Option<&Scopes>,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let url = self.spec.device_authorization_url.as_ref().ok_or_else(|| {
            OAuthError::Config(format!(
                "provider `{}` has no device authorization endpoint",
                self.spec.key
            ))
        })?;
        self.oauth
            .device_authorize(
                url,
                &self.auth,
                &self.requested_scopes(scopes),
                &self.spec.scope_separator,
                &[],
            )
            .await
    }

    /// One device-token poll. `scopes` are the ones passed to
    /// [`Integration::device_authorize`] (fallback for the granted scopes).
    /// The caller owns the loop, the interval and the overall expiry.
    pub async fn poll_device(
        &self,
        device_code: &SecretString,
        scopes: Option<&Scopes>,
        now: DateTime<Utc>,
    ) -> Result<DeviceGrantPoll, OAuthError> {
        let poll = self
            .oauth
            .poll_device_token(
                &self.spec.token_url,
                &self.auth,
                device_code,
                &self.token_options(&BTreeMap::new()),
            )
            .await?;
        Ok(match poll {
            DevicePoll::Pending => DeviceGrantPoll::Pending,
            DevicePoll::SlowDown => DeviceGrantPoll::SlowDown,
            DevicePoll::Denied => DeviceGrantPoll::Denied,
            DevicePoll::Expired => DeviceGrantPoll::Expired,
            DevicePoll::Complete(response) => {
                let requested: Scopes = self.requested_scopes(scopes).into_iter().collect();
                DeviceGrantPoll::Complete(Box::new(self.grant(response, requested, None, now)))
            }
        })
    }

    /// Revokes `tokens` at the provider, per its `revocation_style`:
    ///
    /// * `rfc7009`: the refresh token first (`token_type_hint=refresh_token`;
    ///   that ends the whole grant at most providers), then the access token.
    ///   A token the provider reports as `invalid_token` (already revoked or
    ///   expired — Google answers 400 for those) counts as revoked.
    /// * `github_grant`: deletes the app's grant for the user (all tokens).
    /// * `none`: nothing to call; returns `Ok(false)` — "not revoked at the
    ///   provider", the user has to remove the app there.
    ///
    /// `Ok(true)` means the provider confirmed the revocation.
    pub async fn revoke(&self, tokens: &TokenSet) -> Result<bool, OAuthError> {
        let missing_url = || {
            OAuthError::Config(format!(
                "provider `{}` has no usable revocation_url",
                self.spec.key
            ))
        };
        let access = SecretString::from(tokens.access_token.expose().to_owned());
        match self.spec.revocation_style {
            RevocationStyle::None => Ok(false),
            RevocationStyle::Rfc7009 => {
                let url = self
                    .spec
                    .revocation_url_for(&self.auth.client_id)
                    .ok_or_else(missing_url)?;
                if let Some(refresh) = &tokens.refresh_token {
                    let refresh = SecretString::from(refresh.expose().to_owned());
                    self.revoke_one(&url, &refresh, "refresh_token").await?;
                }
                self.revoke_one(&url, &access, "access_token").await?;
                Ok(true)
            }
            RevocationStyle::GithubGrant => {
                let url = self
                    .spec
                    .revocation_url_for(&self.auth.client_id)
                    .ok_or_else(missing_url)?;
                self.oauth
                    .revoke_github_grant(&url, &self.auth, &access)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn revoke_one(
        &self,
        url: &Url,
        token: &SecretString,
        hint: &str,
    ) -> Result<(), OAuthError> {
        match self.oauth.revoke(url, &self.auth, token, Some(hint)).await {
            Err(err) if err.oauth_error_code() == Some("invalid_token") => Ok(()),
            other => other,
        }
    }

    /// Reads the account profile through the catalog's `userinfo_url` and
    /// `profile` mapping. `Ok(None)` when the provider has no profile
    /// endpoint (Bing Webmaster Tools). A 401 is an error whose
    /// [`OAuthError::status`] is 401 (refresh, then retry).
    pub async fn userinfo(
        &self,
        access_token: &AccessToken,
    ) -> Result<Option<Profile>, OAuthError> {
        let Some(url) = &self.spec.userinfo_url else {
            return Ok(None);
        };
        let Some(mapping) = &self.spec.profile else {
            return Err(OAuthError::Config(format!(
                "provider `{}` has a userinfo_url but no profile mapping",
                self.spec.key
            )));
        };
        let token = access_token.expose();
        let raw = match self.spec.api_auth_scheme {
            ApiAuthScheme::Bearer => {
                self.oauth
                    .userinfo(url, &SecretString::from(token.to_owned()))
                    .await?
            }
            ApiAuthScheme::Raw => {
                self.oauth
                    .userinfo_with_authorization(url, &SecretString::from(token.to_owned()))
                    .await?
            }
        };
        let found = mapping.extract(&raw);
        let id = found.id.ok_or_else(|| {
            OAuthError::InvalidResponse(format!(
                "profile response has no account id at {}",
                mapping.id.join(" / ")
            ))
        })?;
        Ok(Some(Profile {
            id,
            email: found.email,
            display_name: found.display_name,
            raw,
        }))
    }

    /// TokenResponse → Grant: token type defaults to Bearer (parsed
    /// case-insensitively; an unknown type is logged and taken as Bearer);
    /// scopes are the response's when it lists any, else `requested`;
    /// `expires_at = now + expires_in`, or `now + default_expires_in` when
    /// the response has none (or 0), or `None`; the refresh token is the
    /// response's, else `previous`.
    fn grant(
        &self,
        response: TokenResponse,
        requested: Scopes,
        previous: Option<&RefreshToken>,
        now: DateTime<Utc>,
    ) -> Grant {
        let token_type = match response.token_type.as_deref() {
            None => TokenType::Bearer,
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                tracing::warn!(
                    integration = %self.key,
                    token_type = raw,
                    "unknown token_type in token response; using Bearer"
                );
                TokenType::Bearer
            }),
        };
        let scopes = match response.scopes {
            Some(granted) if !granted.is_empty() => granted.into_iter().collect(),
            _ => requested,
        };
        let lifetime = response
            .expires_in
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .or(self.spec.default_expires_in);
        let expires_at = lifetime
            .and_then(|d| chrono::TimeDelta::from_std(d).ok())
            .and_then(|d| now.checked_add_signed(d));
        let refresh_token_issued = response.refresh_token.is_some();
        let refresh_token = response
            .refresh_token
            .map(RefreshToken::from)
            .or_else(|| previous.cloned());
        Grant {
            tokens: TokenSet {
                access_token: AccessToken::from(response.access_token),
                refresh_token,
                token_type,
                scopes,
                expires_at,
            },
            refresh_token_issued,
            id_token: response.id_token,
            metadata: strip_secrets(response.extra),
        }
    }
}

fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "secret", "password"]
        .iter()
        .any(|s| name.contains(s))
}

fn strip_secrets(object: Map<String, Value>) -> Value {
    Value::Object(
        object
            .into_iter()
            .filter(|(k, _)| !looks_secret(k))
            .map(|(k, v)| (k, strip_value(v)))
            .collect(),
    )
}

fn strip_value(value: Value) -> Value {
    match value {
        Value::Object(m) => strip_secrets(m),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_value).collect()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

/// Every resolved integration, by key.
#[derive(Debug, Clone, Default)]
pub struct Integrations {
    by_key: BTreeMap<IntegrationKey, Arc<Integration>>,
}

impl Integrations {
    /// Resolves every configured integration against `catalog` (running OIDC
    /// discovery where needed), sharing `oauth`. Stops at the first error.
    pub async fn resolve(
        config: &IntegrationsConfig,
        catalog: &Catalog,
        oauth: &OAuthClient,
    ) -> Result<Self, IntegrationConfigError> {
        let mut by_key = BTreeMap::new();
        for (key, cfg) in &config.integrations {
            let integration =
                Integration::resolve(key.clone(), cfg, catalog, oauth.clone()).await?;
            by_key.insert(key.clone(), Arc::new(integration));
        }
        Ok(Self { by_key })
    }

    pub fn insert(&mut self, integration: Integration) {
        self.by_key
            .insert(integration.key.clone(), Arc::new(integration));
    }

    pub fn get(&self, key: &IntegrationKey) -> Option<&Arc<Integration>> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IntegrationKey, &Arc<Integration>)> {
        self.by_key.iter()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests;
