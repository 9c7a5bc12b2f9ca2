//! Integrations as configured: `[integrations.<key>]` and the validation
//! policy (redirect URIs, reserved parameters). Where the values come from
//! (a file, the environment) is the application's business; the server's
//! is `tokenvault-server`'s `integrations_env`.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;
use url::{Host, Url};

use crate::domain::IntegrationKey;
use crate::providers::{CatalogError, RESERVED_AUTHORIZE_PARAMS};

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

pub(super) fn invalid(
    variable: impl Into<String>,
    message: impl Into<String>,
) -> IntegrationConfigError {
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
    /// The server also takes it from `<PREFIX>_CLIENT_ID`.
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// Instead of `client_secret`, for rotating it at the provider without
    /// downtime: calls use the secret that last worked (the first at
    /// start-up), and a provider `invalid_client` is retried once with the
    /// next (`["new", "old"]` before the provider switches, then drop the
    /// old one). The server also takes a comma-separated
    /// `<PREFIX>_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secrets: Option<Vec<SecretString>>,
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
pub(super) fn de_opt_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => Url::parse(s.trim())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not an absolute URL: {e}"))),
    }
}

/// The most secrets `client_secrets` takes (one rotation in flight, and a
/// spare).
pub const MAX_CLIENT_SECRETS: usize = 3;

impl IntegrationConfig {
    /// The client secrets in the order calls try them: `client_secrets`,
    /// or `client_secret` alone; empty for a public client.
    pub fn client_secret_list(
        &self,
        key: &IntegrationKey,
    ) -> Result<Vec<SecretString>, IntegrationConfigError> {
        use secrecy::ExposeSecret as _;
        let prefix = key.env_prefix();
        match (&self.client_secret, &self.client_secrets) {
            (Some(_), Some(_)) => Err(invalid(
                format!("integrations.{key}.client_secrets"),
                format!(
                    "give client_secret or client_secrets, not both ({prefix}_CLIENT_SECRET sets one of them)"
                ),
            )),
            (Some(secret), None) => Ok(vec![secret.clone()]),
            (None, None) => Ok(Vec::new()),
            (None, Some(list)) => {
                let blank = list.iter().any(|s| s.expose_secret().trim().is_empty());
                let mut seen = std::collections::BTreeSet::new();
                let repeated = !list
                    .iter()
                    .all(|s| seen.insert(s.expose_secret().to_owned()));
                if list.is_empty() || list.len() > MAX_CLIENT_SECRETS || blank || repeated {
                    return Err(invalid(
                        format!("integrations.{key}.client_secrets"),
                        format!(
                            "give 1 to {MAX_CLIENT_SECRETS} different, non-empty secrets, the one to use first first"
                        ),
                    ));
                }
                Ok(list.clone())
            }
        }
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

        self.client_secret_list(key)?;

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

pub(super) fn check_authorize_params(
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

pub(super) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        None => false,
    }
}

pub(super) fn check_redirect_uri(
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
