//! Provider catalog: how to talk OAuth to each third-party platform.

//!
//! The built-in catalog (`providers.toml` next to this crate's `Cargo.toml`) is
//! compiled in and loaded with [`Catalog::builtin`]. A user file with the same
//! schema can add providers or override single fields of built-in ones with
//! [`Catalog::merge`] / [`Catalog::merge_toml_str`].
//!
//! Loading goes in two steps: the TOML is deserialized into [`RawCatalog`] /
//! [`RawProvider`] (every field optional), then each entry is *resolved*:
//! `alias` inheritance is flattened (chains allowed, cycles and unknown targets
//! rejected), defaults are applied and everything is validated into a typed
//! [`ProviderSpec`]. Errors name the provider key and the field.
//!
//! Entries with `discovery = true` (the generic `oidc` entry) have no endpoints
//! of their own: they stay *pending* until [`Catalog::discover_pending`] reads
//! `<issuer>/.well-known/openid-configuration` (see [`discover`]). Merge user
//! overrides before running discovery: merging re-resolves the catalog from its
//! raw entries, which turns discovered providers back into pending ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

mod catalog;
mod discovery;
pub mod params;
mod raw;
mod resolve;
#[cfg(test)]
mod tests;

pub use catalog::Catalog;
pub use discovery::discover;
pub use params::{ConnectionParamSpec, ConnectionParams, ParamError, ParamSource};
pub use raw::{RawCatalog, RawConnectionParam, RawProfileMapping, RawProvider};

/// The embedded built-in catalog.
pub const BUILTIN_CATALOG_TOML: &str = include_str!("../../providers.toml");

/// Refresh this long before expiry unless an entry says otherwise.
pub const DEFAULT_REFRESH_BUFFER: Duration = Duration::from_secs(300);

/// Authorization request parameters the flow itself sets; neither a catalog
/// entry, an integration's configuration nor a caller may override them.
pub(crate) const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
];

/// Refresh request parameters the refresher itself sets.
const RESERVED_REFRESH_PARAMS: &[&str] =
    &["grant_type", "refresh_token", "client_id", "client_secret"];

/// Placeholder in a `github_grant` revocation URL.
const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";
/// The placeholder as it appears once parsed into a [`Url`] path.
const CLIENT_ID_PLACEHOLDER_ENCODED: &str = "%7Bclient_id%7D";

// ---------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------

/// How the client authenticates at the token (and revocation) endpoint: the
/// OAuth client's [`ClientAuthMethod`](crate::oauth::ClientAuthMethod), under
/// the catalog's field name (`token_auth_method = "client_secret_basic"`).
pub use crate::oauth::ClientAuthMethod as TokenAuthMethod;

/// Encoding of token endpoint request bodies (`token_request_format`): the
/// OAuth client's own option.
pub use crate::oauth::TokenRequestFormat;

/// PKCE (RFC 7636, S256) support of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum Pkce {
    /// The provider rejects authorization requests without PKCE.
    Required,
    /// Accepted (and, per RFC 6749 §3.1, ignored by servers that don't know it).
    #[default]
    Supported,
    /// Do not send PKCE parameters.
    Unsupported,
}

/// How tokens are revoked when a user disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStyle {
    /// RFC 7009: POST `token` (+ `token_type_hint`) to `revocation_url` with
    /// client authentication per `token_auth_method`.
    Rfc7009,
    /// No revocation endpoint; the user revokes access at the provider.
    None,
    /// GitHub: `DELETE https://api.github.com/applications/{client_id}/grant`
    /// with HTTP Basic `client_id:client_secret` and the JSON body
    /// `{"access_token": "<token>"}`; deletes the whole authorization.
    /// `revocation_url` holds the `{client_id}` placeholder, see
    /// [`ProviderSpec::revocation_url_for`].
    GithubGrant,
}

/// Shape of the authorization request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizeStyle {
    /// RFC 6749 §4.1.1: `response_type=code`, `client_id`, `redirect_uri`,
    /// `scope`, `state` (+ PKCE and `authorize_params`).
    #[default]
    Oauth2,
    /// Wix's app installer: `token` (from Wix's redirect to the app URL; a
    /// per-request parameter), `appId`, `redirectUrl` and `state` — no
    /// scopes (permissions are set in the app dashboard), no PKCE. As the
    /// request carries no `redirect_uri`, the code exchange sends none either.
    WixInstaller,
}

/// How an access token is presented to the provider's API (and userinfo
/// endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiAuthScheme {
    /// `Authorization: Bearer <token>` (RFC 6750; the token type from the
    /// token response).
    #[default]
    Bearer,
    /// `Authorization: <token>` without a scheme (Wix).
    Raw,
}

// ---------------------------------------------------------------------------
// Raw (deserialized) form
// ---------------------------------------------------------------------------

/// One or more JSON pointers; in TOML either a string or a list of strings.
/// When several are given the first one that yields a value wins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct JsonPointers(pub Vec<String>);

impl<'de> Deserialize<'de> for JsonPointers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(s) => Self(vec![s]),
            OneOrMany::Many(v) => Self(v),
        })
    }
}

/// Maps a userinfo JSON document to the account's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileMapping {
    /// Stable account id (never empty).
    pub id: Vec<String>,
    pub email: Vec<String>,
    pub display_name: Vec<String>,
}

/// What [`ProfileMapping::extract`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub id: Option<String>,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

impl ProfileMapping {
    /// Read the profile out of a userinfo response. Strings are taken as is,
    /// numbers and booleans are stringified (GitHub and WordPress ids are
    /// numbers); null, empty strings, objects and arrays are skipped so the
    /// next pointer gets its turn.
    pub fn extract(&self, userinfo: &serde_json::Value) -> Profile {
        fn first(doc: &serde_json::Value, pointers: &[String]) -> Option<String> {
            pointers.iter().find_map(|p| match doc.pointer(p)? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
        }
        Profile {
            id: first(userinfo, &self.id),
            email: first(userinfo, &self.email),
            display_name: first(userinfo, &self.display_name),
        }
    }
}

/// A fully resolved, validated provider entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSpec {
    /// Catalog key (`"spotify"`, `"google-mail"`, ...).
    pub key: String,
    pub display_name: String,
    /// `#rrggbb` (lowercase) for the entry's icon; `None`: the generic one
    /// in the application's accent colour.
    pub brand_color: Option<String>,
    /// The entry this one inherited from (first `alias` hop), if any.
    pub alias_of: Option<String>,
    pub authorization_url: Url,
    pub token_url: Url,
    /// Where refresh requests go (defaults to `token_url`).
    pub refresh_url: Url,
    pub revocation_url: Option<Url>,
    pub revocation_style: RevocationStyle,
    pub device_authorization_url: Option<Url>,
    pub userinfo_url: Option<Url>,
    /// Issuer identifier, verbatim: RFC 9207 and OIDC compare it as an exact
    /// string, which a normalized [`Url`] would break (`https://host` vs
    /// `https://host/`). Validated as an absolute URL without query/fragment.
    pub issuer: Option<String>,
    /// The authorization response carries `iss` (RFC 9207); when true the
    /// callback must require it and compare it with `issuer`.
    pub iss_parameter_supported: bool,
    /// OpenID Connect semantics (set for discovered providers): requesting
    /// `offline_access` adds `prompt=consent`, see
    /// [`ProviderSpec::authorize_params_for`].
    pub openid_connect: bool,
    pub scope_separator: String,
    pub default_scopes: Vec<String>,
    /// Scopes in plain words (the catalog's `scope_descriptions`); see
    /// [`ProviderSpec::describe_scope`].
    pub scope_descriptions: BTreeMap<String, String>,
    pub authorize_params: BTreeMap<String, String>,
    pub authorize_style: AuthorizeStyle,
    pub token_auth_method: TokenAuthMethod,
    /// Whether an integration without a client secret may authenticate as
    /// a public client (`none`, with PKCE) instead.
    pub public_client: bool,
    pub token_request_format: TokenRequestFormat,
    pub refresh_params: BTreeMap<String, String>,
    /// Extra parameters of the code exchange.
    pub exchange_params: BTreeMap<String, String>,
    /// Extra headers of token-endpoint requests.
    pub token_headers: BTreeMap<String, String>,
    /// Extra headers of API calls (`{client_id}` filled in).
    pub api_headers: BTreeMap<String, String>,
    /// The header carrying the access token to the API; `None`:
    /// `Authorization` per `api_auth_scheme`. A custom header gets the
    /// bare token.
    pub api_auth_header: Option<String>,
    /// The client id's parameter name when not `client_id` (TikTok's
    /// `client_key`), in the authorization and token requests.
    pub client_id_param: Option<String>,
    /// Refresh requests carry the granted scopes as `scope` (RFC 6749 §6
    /// makes it optional; TIDAL's SDK always sends it). Default false: the
    /// parameter is omitted, which keeps the originally granted scopes.
    pub refresh_sends_scope: bool,
    pub pkce: Pkce,
    /// The provider issues refresh tokens at all.
    pub refresh_tokens: bool,
    /// A refresh returns a new refresh token and invalidates the old one.
    pub refresh_token_rotates: bool,
    /// Refresh this long before the access token expires.
    pub refresh_buffer: Duration,
    /// Lifetime to assume when a token response has no `expires_in`.
    pub default_expires_in: Option<Duration>,
    pub api_base_url: Option<Url>,
    pub api_auth_scheme: ApiAuthScheme,
    /// JSON pointer to the object holding the token fields, when nested.
    pub token_response_path: Option<String>,
    pub profile: Option<ProfileMapping>,
    /// The `{name}` placeholders of the URLs, declared (see [`params`]).
    pub connection_params: Vec<ConnectionParamSpec>,
    /// JSON pointers of the token-response fields kept as metadata; `None`:
    /// every non-secret top-level field.
    pub token_metadata: Option<Vec<String>>,
    /// ID token claims kept as metadata (under `id_token`).
    pub id_token_claims: Vec<String>,
}

/// OpenID Connect's standard scopes, in plain words, for every provider.
const STANDARD_SCOPES: &[(&str, &str)] = &[
    ("openid", "Confirm who you are"),
    ("profile", "See your name and profile picture"),
    ("email", "See your email address"),
    (
        "offline_access",
        "Stay connected when you are not using the app",
    ),
];

impl ProviderSpec {
    /// What `scope` lets the application do, in plain words: the entry's
    /// own description, else OpenID Connect's for its standard scopes.
    pub fn describe_scope(&self, scope: &str) -> Option<&str> {
        self.scope_descriptions
            .get(scope)
            .map(String::as_str)
            .or_else(|| {
                STANDARD_SCOPES
                    .iter()
                    .find_map(|(name, words)| (*name == scope).then_some(*words))
            })
    }

    /// Extra authorization request parameters for a request asking for
    /// `scopes`: the entry's `authorize_params`, plus `prompt=consent` when the
    /// provider follows OpenID Connect and `offline_access` is requested (OIDC
    /// Core §11: otherwise the OP must ignore `offline_access`). An existing
    /// `prompt` is extended (it is a space-separated list), never duplicated;
    /// `prompt=none` is left alone because it cannot be combined with other
    /// values.
    pub fn authorize_params_for(&self, scopes: &[String]) -> BTreeMap<String, String> {
        let mut params = self.authorize_params.clone();
        if self.openid_connect && scopes.iter().any(|s| s == "offline_access") {
            match params.get_mut("prompt") {
                None => {
                    params.insert("prompt".to_owned(), "consent".to_owned());
                }
                Some(prompt) => {
                    let has = |v: &str| prompt.split_ascii_whitespace().any(|p| p == v);
                    if !has("consent") && !has("none") {
                        if prompt.trim().is_empty() {
                            *prompt = "consent".to_owned();
                        } else {
                            prompt.push_str(" consent");
                        }
                    }
                }
            }
        }
        params
    }

    /// The `scope` parameter value for `scopes`.
    pub fn scope_param(&self, scopes: &[String]) -> String {
        scopes.join(&self.scope_separator)
    }

    /// The revocation URL to call for `client_id` (fills the `{client_id}`
    /// placeholder of [`RevocationStyle::GithubGrant`]); `None` when the
    /// provider has no revocation.
    pub fn revocation_url_for(&self, client_id: &str) -> Option<Url> {
        let url = self.revocation_url.as_ref()?;
        match self.revocation_style {
            RevocationStyle::None => None,
            RevocationStyle::Rfc7009 => Some(url.clone()),
            RevocationStyle::GithubGrant => {
                let filled = url.as_str().replace(
                    CLIENT_ID_PLACEHOLDER_ENCODED,
                    &params::encode_component(client_id),
                );
                Url::parse(&filled).ok()
            }
        }
    }

    /// The part of a token endpoint response that holds `access_token`,
    /// `expires_in`, ...: the whole body unless `token_response_path` is set.
    pub fn token_fields<'a>(&self, body: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        match &self.token_response_path {
            Some(path) => body.pointer(path),
            None => Some(body),
        }
    }
}

/// A `discovery = true` entry waiting for [`Catalog::discover_pending`].
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDiscovery {
    pub key: String,
    /// The entry this one inherited from (first `alias` hop), if any.
    pub alias_of: Option<String>,
    /// Issuer to discover; `None` until a user file sets it (the built-in
    /// `oidc` entry has none).
    pub issuer: Option<Url>,
    /// The entry's own (alias-flattened) fields; they override discovered
    /// values.
    overrides: RawProvider,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid provider catalog TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("provider `{key}`: {field}: {message}")]
    Invalid {
        key: String,
        field: String,
        message: String,
    },
    #[error("provider `{key}`: alias: unknown provider `{target}`")]
    UnknownAlias { key: String, target: String },
    #[error("provider `{key}`: alias: cycle {}", chain.join(" -> "))]
    AliasCycle { key: String, chain: Vec<String> },
    #[error("OIDC discovery for `{issuer}`: {source}")]
    DiscoveryHttp {
        issuer: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("OIDC discovery for `{issuer}`: {message}")]
    Discovery { issuer: String, message: String },
    #[error("OIDC discovery for `{expected}`: issuer mismatch, metadata says `{found}`")]
    IssuerMismatch { expected: String, found: String },
}
