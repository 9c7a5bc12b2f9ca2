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
use url::{Host, Url};

/// The embedded built-in catalog.
pub const BUILTIN_CATALOG_TOML: &str = include_str!("../providers.toml");

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

/// `[providers.<key>.profile]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileMapping {
    pub id: Option<JsonPointers>,
    pub email: Option<JsonPointers>,
    pub display_name: Option<JsonPointers>,
}

/// One `[providers.<key>]` table as written: every field optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub display_name: Option<String>,
    pub alias: Option<String>,
    pub discovery: Option<bool>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub refresh_url: Option<String>,
    pub revocation_url: Option<String>,
    pub revocation_style: Option<RevocationStyle>,
    pub device_authorization_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub issuer: Option<String>,
    pub iss_parameter_supported: Option<bool>,
    pub openid_connect: Option<bool>,
    pub scope_separator: Option<String>,
    pub default_scopes: Option<Vec<String>>,
    pub authorize_params: Option<BTreeMap<String, String>>,
    pub authorize_style: Option<AuthorizeStyle>,
    pub token_auth_method: Option<TokenAuthMethod>,
    pub token_request_format: Option<TokenRequestFormat>,
    pub refresh_params: Option<BTreeMap<String, String>>,
    pub refresh_sends_scope: Option<bool>,
    pub pkce: Option<Pkce>,
    pub refresh_tokens: Option<bool>,
    pub refresh_token_rotates: Option<bool>,
    pub refresh_buffer_secs: Option<u64>,
    pub default_expires_in_secs: Option<u64>,
    pub api_base_url: Option<String>,
    pub api_auth_scheme: Option<ApiAuthScheme>,
    pub token_response_path: Option<String>,
    pub profile: Option<RawProfileMapping>,
}

macro_rules! overlay_fields {
    ($dst:ident, $src:ident; $($field:ident),* $(,)?) => {
        $( if $src.$field.is_some() { $dst.$field = $src.$field.clone(); } )*
    };
}

impl RawProvider {
    /// Field-level override: every field set in `over` replaces ours; `profile`
    /// is overridden pointer by pointer.
    pub fn overlay(&mut self, over: &RawProvider) {
        let dst = self;
        let src = over;
        overlay_fields!(dst, src;
            display_name, alias, discovery, authorization_url, token_url, refresh_url,
            revocation_url, revocation_style, device_authorization_url, userinfo_url, issuer,
            iss_parameter_supported, openid_connect, scope_separator, default_scopes,
            authorize_params, authorize_style, token_auth_method, token_request_format,
            refresh_params, refresh_sends_scope, pkce, refresh_tokens, refresh_token_rotates,
            refresh_buffer_secs, default_expires_in_secs, api_base_url, api_auth_scheme,
            token_response_path,
        );
        if let Some(src_profile) = &src.profile {
            let dst_profile = dst.profile.get_or_insert_with(RawProfileMapping::default);
            overlay_fields!(dst_profile, src_profile; id, email, display_name);
        }
    }
}

/// A whole catalog file as written: `[providers.<key>]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
}

impl RawCatalog {
    /// Parse a catalog file without resolving it (aliases may point at
    /// entries of the catalog it will be merged into).
    pub fn from_toml_str(text: &str) -> Result<Self, CatalogError> {
        Ok(toml::from_str(text)?)
    }

    /// Add `other`'s providers; for keys present in both, `other` overrides
    /// field by field.
    pub fn overlay(&mut self, other: RawCatalog) {
        for (key, over) in other.providers {
            match self.providers.get_mut(&key) {
                Some(existing) => existing.overlay(&over),
                None => {
                    self.providers.insert(key, over);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Resolved form
// ---------------------------------------------------------------------------

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
    pub authorize_params: BTreeMap<String, String>,
    pub authorize_style: AuthorizeStyle,
    pub token_auth_method: TokenAuthMethod,
    pub token_request_format: TokenRequestFormat,
    pub refresh_params: BTreeMap<String, String>,
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
}

impl ProviderSpec {
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
                    &encode_path_segment(client_id),
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

fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

fn invalid(key: &str, field: &str, message: impl Into<String>) -> CatalogError {
    CatalogError::Invalid {
        key: key.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Validation helpers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlPolicy {
    /// Built-in entries.
    HttpsOnly,
    /// User files: the operator's explicit choice (e.g. an internal IdP).
    AllowHttp,
    /// Values read from the network (discovery metadata).
    HttpsOrLoopback,
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn parse_url(value: &str, policy: UrlPolicy) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| e.to_string())?;
    match url.scheme() {
        "https" => {}
        "http" => match policy {
            UrlPolicy::AllowHttp => {}
            UrlPolicy::HttpsOrLoopback if is_loopback(&url) => {}
            UrlPolicy::HttpsOrLoopback => {
                return Err(format!(
                    "`{value}` must use https (http only for loopback hosts)"
                ));
            }
            UrlPolicy::HttpsOnly => {
                return Err(format!("`{value}` must use https in the built-in catalog"));
            }
        },
        other => return Err(format!("`{value}` has unsupported scheme `{other}`")),
    }
    if url.host().is_none() {
        return Err(format!("`{value}` has no host"));
    }
    if url.fragment().is_some() {
        return Err(format!("`{value}` must not contain a fragment"));
    }
    Ok(url)
}

fn url_field(key: &str, field: &str, value: &str, policy: UrlPolicy) -> Result<Url, CatalogError> {
    parse_url(value, policy).map_err(|m| invalid(key, field, m))
}

/// Optional URL: absent or empty string (a user file removing an inherited
/// value) is `None`.
fn opt_url_field(
    key: &str,
    field: &str,
    value: Option<&str>,
    policy: UrlPolicy,
) -> Result<Option<Url>, CatalogError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => url_field(key, field, v, policy).map(Some),
    }
}

fn required_url_field(
    key: &str,
    field: &str,
    value: Option<&str>,
    policy: UrlPolicy,
) -> Result<Url, CatalogError> {
    opt_url_field(key, field, value, policy)?.ok_or_else(|| invalid(key, field, "missing"))
}

fn issuer_field(
    key: &str,
    value: Option<&str>,
    policy: UrlPolicy,
) -> Result<Option<String>, CatalogError> {
    let Some(url) = opt_url_field(key, "issuer", value, policy)? else {
        return Ok(None);
    };
    if url.query().is_some() {
        return Err(invalid(key, "issuer", "must not contain a query"));
    }
    Ok(value.map(str::to_owned))
}

fn check_pointer(key: &str, field: &str, pointer: &str) -> Result<(), CatalogError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(
            key,
            field,
            format!("`{pointer}` is not a JSON pointer (must start with '/')"),
        ))
    }
}

fn profile_pointers(
    key: &str,
    field: &str,
    pointers: Option<&JsonPointers>,
) -> Result<Vec<String>, CatalogError> {
    let pointers = pointers.map(|p| p.0.clone()).unwrap_or_default();
    for p in &pointers {
        check_pointer(key, field, p)?;
    }
    Ok(pointers)
}

fn check_params(
    key: &str,
    field: &str,
    params: &BTreeMap<String, String>,
    reserved: &[&str],
) -> Result<(), CatalogError> {
    for name in params.keys() {
        if name.is_empty() {
            return Err(invalid(key, field, "empty parameter name"));
        }
        if reserved.contains(&name.as_str()) {
            return Err(invalid(
                key,
                field,
                format!("`{name}` is set by tokenvault and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), CatalogError> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            "key",
            "must be non-empty lowercase ASCII letters, digits, '-' or '_'",
        ))
    }
}

// ---------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------

enum Resolved {
    Ready(Box<ProviderSpec>),
    Pending(Box<PendingDiscovery>),
}

/// Flatten the alias chain of `key`: returns the merged raw entry (root
/// first, `key` last, `alias` cleared) and the first alias hop.
fn flatten_alias(
    raw: &RawCatalog,
    key: &str,
) -> Result<(RawProvider, Option<String>), CatalogError> {
    let mut chain = vec![key.to_owned()];
    let mut current = &raw.providers[key];
    while let Some(target) = current.alias.as_deref() {
        if chain.iter().any(|k| k == target) {
            chain.push(target.to_owned());
            return Err(CatalogError::AliasCycle {
                key: key.to_owned(),
                chain,
            });
        }
        let Some(next) = raw.providers.get(target) else {
            let from = chain.last().cloned().unwrap_or_else(|| key.to_owned());
            return Err(CatalogError::UnknownAlias {
                key: from,
                target: target.to_owned(),
            });
        };
        chain.push(target.to_owned());
        current = next;
    }
    let mut merged = RawProvider::default();
    for k in chain.iter().rev() {
        merged.overlay(&raw.providers[k]);
    }
    merged.alias = None;
    Ok((merged, chain.get(1).cloned()))
}

fn resolve_entry(
    key: &str,
    raw: RawProvider,
    alias_of: Option<String>,
    policy: UrlPolicy,
) -> Result<Resolved, CatalogError> {
    check_key(key)?;

    if raw.discovery.unwrap_or(false) {
        // Validate what is there now so mistakes surface at start-up.
        let issuer = opt_url_field(key, "issuer", raw.issuer.as_deref(), policy)?;
        for (field, value) in [
            ("authorization_url", &raw.authorization_url),
            ("token_url", &raw.token_url),
            ("refresh_url", &raw.refresh_url),
            ("revocation_url", &raw.revocation_url),
            ("device_authorization_url", &raw.device_authorization_url),
            ("userinfo_url", &raw.userinfo_url),
            ("api_base_url", &raw.api_base_url),
        ] {
            opt_url_field(key, field, value.as_deref(), policy)?;
        }
        return Ok(Resolved::Pending(Box::new(PendingDiscovery {
            key: key.to_owned(),
            alias_of,
            issuer,
            overrides: raw,
        })));
    }

    let display_name = match raw.display_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => return Err(invalid(key, "display_name", "missing")),
    };

    let authorization_url = required_url_field(
        key,
        "authorization_url",
        raw.authorization_url.as_deref(),
        policy,
    )?;
    let token_url = required_url_field(key, "token_url", raw.token_url.as_deref(), policy)?;
    let refresh_url = opt_url_field(key, "refresh_url", raw.refresh_url.as_deref(), policy)?
        .unwrap_or_else(|| token_url.clone());
    let revocation_url =
        opt_url_field(key, "revocation_url", raw.revocation_url.as_deref(), policy)?;
    let device_authorization_url = opt_url_field(
        key,
        "device_authorization_url",
        raw.device_authorization_url.as_deref(),
        policy,
    )?;
    let userinfo_url = opt_url_field(key, "userinfo_url", raw.userinfo_url.as_deref(), policy)?;
    let api_base_url = opt_url_field(key, "api_base_url", raw.api_base_url.as_deref(), policy)?;
    let issuer = issuer_field(key, raw.issuer.as_deref(), policy)?;

    let revocation_style = raw.revocation_style.unwrap_or(if revocation_url.is_some() {
        RevocationStyle::Rfc7009
    } else {
        RevocationStyle::None
    });
    match (revocation_style, &revocation_url) {
        (RevocationStyle::None, Some(_)) => {
            return Err(invalid(
                key,
                "revocation_style",
                "`none` but revocation_url is set",
            ));
        }
        (RevocationStyle::Rfc7009 | RevocationStyle::GithubGrant, None) => {
            return Err(invalid(
                key,
                "revocation_url",
                "required by the revocation_style",
            ));
        }
        (RevocationStyle::GithubGrant, Some(_))
            if !raw
                .revocation_url
                .as_deref()
                .is_some_and(|u| u.contains(CLIENT_ID_PLACEHOLDER)) =>
        {
            return Err(invalid(
                key,
                "revocation_url",
                "`github_grant` needs the `{client_id}` placeholder",
            ));
        }
        _ => {}
    }

    let iss_parameter_supported = raw.iss_parameter_supported.unwrap_or(false);
    if iss_parameter_supported && issuer.is_none() {
        return Err(invalid(key, "iss_parameter_supported", "requires issuer"));
    }

    let scope_separator = raw
        .scope_separator
        .clone()
        .unwrap_or_else(|| " ".to_owned());
    if scope_separator.is_empty() {
        return Err(invalid(key, "scope_separator", "must not be empty"));
    }
    let default_scopes = raw.default_scopes.clone().unwrap_or_default();
    for scope in &default_scopes {
        if scope.is_empty()
            || scope.chars().any(char::is_whitespace)
            || scope.contains(scope_separator.as_str())
        {
            return Err(invalid(
                key,
                "default_scopes",
                format!("`{scope}` is not a single scope"),
            ));
        }
    }

    let authorize_params = raw.authorize_params.clone().unwrap_or_default();
    check_params(
        key,
        "authorize_params",
        &authorize_params,
        RESERVED_AUTHORIZE_PARAMS,
    )?;
    let refresh_params = raw.refresh_params.clone().unwrap_or_default();
    check_params(
        key,
        "refresh_params",
        &refresh_params,
        RESERVED_REFRESH_PARAMS,
    )?;

    let refresh_buffer = raw
        .refresh_buffer_secs
        .map_or(DEFAULT_REFRESH_BUFFER, Duration::from_secs);
    let default_expires_in = match raw.default_expires_in_secs {
        Some(0) => return Err(invalid(key, "default_expires_in_secs", "must be positive")),
        Some(secs) => Some(Duration::from_secs(secs)),
        None => None,
    };
    if let Some(lifetime) = default_expires_in
        && refresh_buffer >= lifetime
    {
        return Err(invalid(
            key,
            "refresh_buffer_secs",
            "must be shorter than default_expires_in_secs",
        ));
    }

    if let Some(path) = &raw.token_response_path {
        check_pointer(key, "token_response_path", path)?;
    }

    let profile = match &raw.profile {
        None => None,
        Some(p) => {
            let id = profile_pointers(key, "profile.id", p.id.as_ref())?;
            if id.is_empty() {
                return Err(invalid(key, "profile.id", "missing"));
            }
            Some(ProfileMapping {
                id,
                email: profile_pointers(key, "profile.email", p.email.as_ref())?,
                display_name: profile_pointers(
                    key,
                    "profile.display_name",
                    p.display_name.as_ref(),
                )?,
            })
        }
    };

    let refresh_tokens = raw.refresh_tokens.unwrap_or(true);
    let refresh_token_rotates = raw.refresh_token_rotates.unwrap_or(false);
    if refresh_token_rotates && !refresh_tokens {
        return Err(invalid(
            key,
            "refresh_token_rotates",
            "true but refresh_tokens is false",
        ));
    }

    Ok(Resolved::Ready(Box::new(ProviderSpec {
        key: key.to_owned(),
        display_name,
        alias_of,
        authorization_url,
        token_url,
        refresh_url,
        revocation_url,
        revocation_style,
        device_authorization_url,
        userinfo_url,
        issuer,
        iss_parameter_supported,
        openid_connect: raw.openid_connect.unwrap_or(false),
        scope_separator,
        default_scopes,
        authorize_params,
        authorize_style: raw.authorize_style.unwrap_or_default(),
        token_auth_method: raw.token_auth_method.unwrap_or_default(),
        token_request_format: raw.token_request_format.unwrap_or_default(),
        refresh_params,
        refresh_sends_scope: raw.refresh_sends_scope.unwrap_or(false),
        pkce: raw.pkce.unwrap_or_default(),
        refresh_tokens,
        refresh_token_rotates,
        refresh_buffer,
        default_expires_in,
        api_base_url,
        api_auth_scheme: raw.api_auth_scheme.unwrap_or_default(),
        token_response_path: raw.token_response_path.clone(),
        profile,
    })))
}

// ---------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------

/// The resolved provider catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    raw: RawCatalog,
    providers: BTreeMap<String, ProviderSpec>,
    pending: BTreeMap<String, PendingDiscovery>,
}

impl From<Catalog> for RawCatalog {
    fn from(catalog: Catalog) -> Self {
        catalog.raw
    }
}

impl Catalog {
    /// The embedded catalog. Its validity (https only, every entry resolves)
    /// is guaranteed by this module's unit tests.
    pub fn builtin() -> Catalog {
        Self::parse(BUILTIN_CATALOG_TOML, UrlPolicy::HttpsOnly)
            .unwrap_or_else(|e| panic!("built-in provider catalog is invalid: {e}"))
    }

    /// A standalone catalog from a TOML file (aliases must resolve inside it;
    /// http URLs are accepted). To extend the built-in catalog use
    /// [`Catalog::merge_toml_str`].
    pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogError> {
        Self::parse(text, UrlPolicy::AllowHttp)
    }

    fn parse(text: &str, policy: UrlPolicy) -> Result<Catalog, CatalogError> {
        Self::from_raw(RawCatalog::from_toml_str(text)?, policy)
    }

    fn from_raw(raw: RawCatalog, policy: UrlPolicy) -> Result<Catalog, CatalogError> {
        let mut providers = BTreeMap::new();
        let mut pending = BTreeMap::new();
        for key in raw.providers.keys() {
            let (flat, alias_of) = flatten_alias(&raw, key)?;
            match resolve_entry(key, flat, alias_of, policy)? {
                Resolved::Ready(spec) => {
                    providers.insert(key.clone(), *spec);
                }
                Resolved::Pending(p) => {
                    pending.insert(key.clone(), *p);
                }
            }
        }
        Ok(Catalog {
            raw,
            providers,
            pending,
        })
    }

    /// Layer `user` over this catalog: new keys are added, existing keys are
    /// overridden field by field (e.g. only `api_base_url`), then everything
    /// is re-resolved (aliases see the overridden base entries). Accepts a
    /// [`RawCatalog`] or another [`Catalog`].
    pub fn merge(self, user: impl Into<RawCatalog>) -> Result<Catalog, CatalogError> {
        let mut raw = self.raw;
        raw.overlay(user.into());
        // User values may use http (operator's choice); built-in values were
        // already checked for https when the built-in catalog was loaded.
        Self::from_raw(raw, UrlPolicy::AllowHttp)
    }

    /// [`Catalog::merge`] with a user TOML file.
    pub fn merge_toml_str(self, user_toml: &str) -> Result<Catalog, CatalogError> {
        self.merge(RawCatalog::from_toml_str(user_toml)?)
    }

    /// A ready provider (pending discovery entries are not returned).
    pub fn get(&self, key: &str) -> Option<&ProviderSpec> {
        self.providers.get(key)
    }

    /// Keys of ready providers, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// Ready providers, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ProviderSpec)> {
        self.providers.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// `discovery = true` entries not discovered yet (with or without issuer).
    pub fn pending_discovery(&self) -> impl Iterator<Item = &PendingDiscovery> {
        self.pending.values()
    }

    /// The raw entries this catalog was resolved from.
    pub fn raw(&self) -> &RawCatalog {
        &self.raw
    }

    /// Discover every pending entry that has an issuer; the entry's own fields
    /// (display name, scopes, profile, ...) override discovered values.
    /// Entries without an issuer stay pending. Returns how many were
    /// discovered.
    pub async fn discover_pending(
        &mut self,
        http: &reqwest::Client,
    ) -> Result<usize, CatalogError> {
        let ready: Vec<(String, Url)> = self
            .pending
            .values()
            .filter_map(|p| p.issuer.clone().map(|i| (p.key.clone(), i)))
            .collect();
        for (key, issuer) in &ready {
            let spec = self.discover_entry(key, Some(issuer), http).await?;
            self.providers.insert(key.clone(), spec);
            self.pending.remove(key);
        }
        Ok(ready.len())
    }

    /// Discover one pending entry without changing the catalog, e.g. for an
    /// integration that names the generic `oidc` entry together with its own
    /// issuer. `issuer` overrides the entry's; one of the two must be set.
    /// The entry's own fields override discovered values, as in
    /// [`Catalog::discover_pending`].
    pub async fn discover_entry(
        &self,
        key: &str,
        issuer: Option<&Url>,
        http: &reqwest::Client,
    ) -> Result<ProviderSpec, CatalogError> {
        let pending = self
            .pending
            .get(key)
            .ok_or_else(|| invalid(key, "discovery", "not a pending discovery entry"))?;
        let issuer = issuer
            .or(pending.issuer.as_ref())
            .ok_or_else(|| invalid(key, "issuer", "required for discovery"))?;
        let mut merged = discover_raw(http, issuer, key).await?;
        let mut overrides = pending.overrides.clone();
        overrides.discovery = None;
        // The metadata's issuer string is authoritative (it was checked
        // against the configured one).
        overrides.issuer = None;
        merged.overlay(&overrides);
        merged.discovery = Some(false);
        match resolve_entry(key, merged, pending.alias_of.clone(), UrlPolicy::AllowHttp)? {
            Resolved::Ready(spec) => Ok(*spec),
            Resolved::Pending(_) => unreachable!("discovery flag was cleared"),
        }
    }
}

// ---------------------------------------------------------------------------
// OIDC discovery
// ---------------------------------------------------------------------------

/// The parts of OpenID Provider Metadata (OIDC Discovery §3, RFC 8414 /
/// RFC 9207) tokenvault uses.
#[derive(Debug, Deserialize)]
struct ProviderMetadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    grant_types_supported: Option<Vec<String>>,
}

/// `<issuer>/.well-known/openid-configuration` (OIDC Discovery §4).
fn well_known_url(issuer: &Url) -> Result<Url, url::ParseError> {
    let base = issuer.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/.well-known/openid-configuration"))
}

/// OIDC Discovery §4.3: the metadata issuer must be identical to the one
/// discovery was started with. A [`Url`] always has a path, so a bare-host
/// issuer (`https://idp.example`) is also accepted without the `/` that
/// parsing added.
fn issuer_matches(requested: &Url, found: &str) -> bool {
    let requested_str = requested.as_str();
    found == requested_str
        || (requested.path() == "/" && found == requested_str.trim_end_matches('/'))
}

async fn discover_raw(
    http: &reqwest::Client,
    issuer: &Url,
    key: &str,
) -> Result<RawProvider, CatalogError> {
    let issuer_str = issuer.as_str().to_owned();
    let fail = |message: String| CatalogError::Discovery {
        issuer: issuer_str.clone(),
        message,
    };
    let http_err = |source: reqwest::Error| CatalogError::DiscoveryHttp {
        issuer: issuer_str.clone(),
        source,
    };

    parse_url(issuer.as_str(), UrlPolicy::HttpsOrLoopback)
        .map_err(|m| fail(format!("issuer: {m}")))?;
    if issuer.query().is_some() {
        return Err(fail("issuer must not contain a query".to_owned()));
    }
    let url = well_known_url(issuer).map_err(|e| fail(e.to_string()))?;

    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(http_err)?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("GET {url}: HTTP {status}")));
    }
    let meta: ProviderMetadata = response.json().await.map_err(http_err)?;

    if !issuer_matches(issuer, &meta.issuer) {
        return Err(CatalogError::IssuerMismatch {
            expected: issuer_str.clone(),
            found: meta.issuer,
        });
    }

    let endpoint = |field: &str, value: Option<String>| -> Result<Option<String>, CatalogError> {
        match value {
            None => Ok(None),
            Some(v) => parse_url(&v, UrlPolicy::HttpsOrLoopback)
                .map(|_| Some(v))
                .map_err(|m| fail(format!("{field}: {m}"))),
        }
    };
    let authorization_url = endpoint("authorization_endpoint", meta.authorization_endpoint)?
        .ok_or_else(|| fail("metadata has no authorization_endpoint".to_owned()))?;
    let token_url = endpoint("token_endpoint", meta.token_endpoint)?
        .ok_or_else(|| fail("metadata has no token_endpoint".to_owned()))?;
    let revocation_url = endpoint("revocation_endpoint", meta.revocation_endpoint)?;
    let device_authorization_url = endpoint(
        "device_authorization_endpoint",
        meta.device_authorization_endpoint,
    )?;
    let userinfo_url = endpoint("userinfo_endpoint", meta.userinfo_endpoint)?;

    // RFC 8414 §2: when absent, the default is client_secret_basic.
    let auth_methods = meta
        .token_endpoint_auth_methods_supported
        .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]);
    let token_auth_method = [TokenAuthMethod::ClientSecretBasic, TokenAuthMethod::ClientSecretPost]
        .into_iter()
        .find(|m| auth_methods.iter().any(|a| a == m.as_str()))
        .ok_or_else(|| {
            fail(format!(
                "token_endpoint_auth_methods_supported offers neither client_secret_basic nor client_secret_post: {auth_methods:?}"
            ))
        })?;

    let pkce = if meta
        .code_challenge_methods_supported
        .as_deref()
        .is_some_and(|m| m.iter().any(|x| x == "S256"))
    {
        Pkce::Supported
    } else {
        Pkce::Unsupported
    };

    let mut default_scopes = vec![
        "openid".to_owned(),
        "email".to_owned(),
        "profile".to_owned(),
    ];
    if meta
        .scopes_supported
        .as_deref()
        .is_some_and(|s| s.iter().any(|x| x == "offline_access"))
    {
        default_scopes.push("offline_access".to_owned());
    }
    // Absent grant_types_supported is taken as "refresh supported": nearly
    // every OP omitting it still issues refresh tokens.
    let refresh_tokens = meta
        .grant_types_supported
        .as_deref()
        .is_none_or(|g| g.iter().any(|x| x == "refresh_token"));

    let display_name = issuer.host_str().unwrap_or(key).to_owned();
    let revocation_style = revocation_url.as_ref().map(|_| RevocationStyle::Rfc7009);
    let api_base_url = None;

    Ok(RawProvider {
        display_name: Some(display_name),
        discovery: Some(false),
        authorization_url: Some(authorization_url),
        token_url: Some(token_url),
        revocation_url,
        revocation_style: Some(revocation_style.unwrap_or(RevocationStyle::None)),
        device_authorization_url,
        userinfo_url,
        issuer: Some(meta.issuer),
        iss_parameter_supported: Some(meta.authorization_response_iss_parameter_supported),
        openid_connect: Some(true),
        default_scopes: Some(default_scopes),
        token_auth_method: Some(token_auth_method),
        pkce: Some(pkce),
        refresh_tokens: Some(refresh_tokens),
        // Unknown for a generic OP; assume the stricter behaviour.
        refresh_token_rotates: Some(refresh_tokens),
        api_base_url,
        profile: Some(RawProfileMapping {
            id: Some(JsonPointers(vec!["/sub".to_owned()])),
            email: Some(JsonPointers(vec!["/email".to_owned()])),
            display_name: Some(JsonPointers(vec![
                "/name".to_owned(),
                "/preferred_username".to_owned(),
            ])),
        }),
        ..RawProvider::default()
    })
}

/// Build a provider from `<issuer>/.well-known/openid-configuration`:
/// authorization, token, revocation, device and userinfo endpoints; the
/// issuer (which must equal `issuer`); RFC 9207 support from
/// `authorization_response_iss_parameter_supported`; the token auth method
/// from `token_endpoint_auth_methods_supported` (basic preferred, then post);
/// PKCE from `code_challenge_methods_supported` containing `S256`; profile
/// mapping `sub` / `email` / `name`. The returned spec has key `oidc` and
/// `openid_connect = true`. Issuer and endpoints must be https (http only on
/// loopback hosts).
pub async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<ProviderSpec, CatalogError> {
    let raw = discover_raw(http, issuer, "oidc").await?;
    match resolve_entry("oidc", raw, None, UrlPolicy::HttpsOrLoopback)? {
        Resolved::Ready(spec) => Ok(*spec),
        Resolved::Pending(_) => unreachable!("discovered entries are not pending"),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const REQUIRED: &[&str] = &[
        "spotify",
        "tidal",
        "google",
        "youtube",
        "google-mail",
        "google-calendar",
        "google-search-console",
        "discord",
        "github",
        "bing-webmaster",
        "wordpress",
        "wix",
        "oidc",
    ];

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn err_text(result: Result<Catalog, CatalogError>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn builtin_catalog_loads_with_every_required_key() {
        let catalog = Catalog::builtin();
        for key in REQUIRED {
            let ready = catalog.get(key).is_some();
            let pending = catalog.pending_discovery().any(|p| p.key == *key);
            assert!(ready || pending, "missing built-in provider `{key}`");
        }
        // Everything but the generic OIDC entry is usable as is.
        assert_eq!(catalog.len(), REQUIRED.len() - 1);
        let pending: Vec<_> = catalog
            .pending_discovery()
            .map(|p| p.key.as_str())
            .collect();
        assert_eq!(pending, ["oidc"]);

        for (key, spec) in catalog.iter() {
            assert_eq!(spec.key, key);
            assert!(spec.api_base_url.is_some(), "`{key}` has no api_base_url");
            for url in [&spec.authorization_url, &spec.token_url, &spec.refresh_url] {
                assert_eq!(url.scheme(), "https", "`{key}`: {url}");
            }
            if spec.refresh_token_rotates {
                assert!(spec.refresh_tokens, "`{key}`");
            }
            if key != "bing-webmaster" {
                assert!(
                    spec.userinfo_url.is_some() && spec.profile.is_some(),
                    "`{key}`"
                );
            }
        }
    }

    #[test]
    fn builtin_entries_match_the_documented_behaviour() {
        let c = Catalog::builtin();
        let spotify = c.get("spotify").unwrap();
        assert_eq!(
            spotify.token_auth_method,
            TokenAuthMethod::ClientSecretBasic
        );
        assert_eq!(spotify.refresh_url, spotify.token_url);

        let github = c.get("github").unwrap();
        assert!(!github.refresh_tokens);
        assert_eq!(github.revocation_style, RevocationStyle::GithubGrant);
        assert_eq!(
            github.revocation_url_for("Iv1.abc 1").unwrap().as_str(),
            "https://api.github.com/applications/Iv1.abc%201/grant"
        );

        let google = c.get("google").unwrap();
        assert_eq!(google.authorize_params["access_type"], "offline");
        assert_eq!(
            google.issuer.as_deref(),
            Some("https://accounts.google.com")
        );
        assert_eq!(
            google.revocation_url_for("x").unwrap(),
            google.revocation_url.clone().unwrap()
        );

        let wix = c.get("wix").unwrap();
        assert_eq!(wix.token_request_format, TokenRequestFormat::Json);
        assert_eq!(wix.authorize_style, AuthorizeStyle::WixInstaller);
        assert_eq!(wix.api_auth_scheme, ApiAuthScheme::Raw);
        assert!(c.get("tidal").unwrap().refresh_sends_scope);
        for (key, spec) in c.iter() {
            if !matches!(key, "wix" | "tidal") {
                assert_eq!(spec.authorize_style, AuthorizeStyle::Oauth2, "{key}");
                assert_eq!(spec.api_auth_scheme, ApiAuthScheme::Bearer, "{key}");
                assert!(!spec.refresh_sends_scope, "{key}");
            }
        }
        assert_eq!(wix.default_expires_in, Some(Duration::from_secs(300)));
        assert_eq!(wix.refresh_buffer, Duration::from_secs(60));
        assert!(
            c.get("wordpress")
                .unwrap()
                .revocation_url_for("x")
                .is_none()
        );
    }

    #[test]
    fn alias_inherits_token_url_but_overrides_scopes() {
        let c = Catalog::builtin();
        let google = c.get("google").unwrap();
        for key in [
            "youtube",
            "google-mail",
            "google-calendar",
            "google-search-console",
        ] {
            let alias = c.get(key).unwrap();
            assert_eq!(alias.alias_of.as_deref(), Some("google"));
            assert_eq!(alias.token_url, google.token_url, "{key}");
            assert_eq!(alias.authorization_url, google.authorization_url, "{key}");
            assert_eq!(alias.authorize_params, google.authorize_params, "{key}");
            assert_eq!(alias.profile, google.profile, "{key}");
            assert_ne!(alias.default_scopes, google.default_scopes, "{key}");
            assert_ne!(alias.display_name, google.display_name, "{key}");
            assert_ne!(alias.api_base_url, google.api_base_url, "{key}");
        }
        assert!(
            c.get("youtube")
                .unwrap()
                .default_scopes
                .contains(&"https://www.googleapis.com/auth/youtube.readonly".to_owned())
        );
    }

    #[test]
    fn user_override_of_one_field_keeps_the_rest() {
        let before = Catalog::builtin();
        let after = Catalog::builtin()
            .merge_toml_str(
                r#"
                [providers.spotify]
                api_base_url = "http://localhost:8080/spotify"

                [providers.google]
                token_url = "https://google-proxy.example/token"

                [providers.discord.profile]
                email = "/mail"
                "#,
            )
            .unwrap();

        let (old, new) = (
            before.get("spotify").unwrap(),
            after.get("spotify").unwrap(),
        );
        assert_eq!(
            new.api_base_url.as_ref().unwrap().as_str(),
            "http://localhost:8080/spotify"
        );
        assert_eq!(
            ProviderSpec {
                api_base_url: old.api_base_url.clone(),
                ..new.clone()
            },
            *old
        );

        // Aliases see the overridden base entry, but keep their own fields.
        let youtube = after.get("youtube").unwrap();
        assert_eq!(
            youtube.token_url.as_str(),
            "https://google-proxy.example/token"
        );
        assert_eq!(
            youtube.refresh_url.as_str(),
            "https://google-proxy.example/token"
        );
        assert_eq!(
            youtube.default_scopes,
            before.get("youtube").unwrap().default_scopes
        );

        // Profile fields are overridden one by one.
        let discord = after.get("discord").unwrap().profile.as_ref().unwrap();
        assert_eq!(discord.email, ["/mail"]);
        assert_eq!(discord.id, ["/id"]);
        assert_eq!(after.len(), before.len());
    }

    #[test]
    fn user_file_adds_providers_and_can_alias_builtins() {
        let c = Catalog::builtin()
            .merge(
                RawCatalog::from_toml_str(
                    r#"
                    [providers.google-drive]
                    alias = "google"
                    display_name = "Google Drive"
                    default_scopes = ["openid", "https://www.googleapis.com/auth/drive.file"]
                    api_base_url = "https://www.googleapis.com/drive/v3"
                    "#,
                )
                .unwrap(),
            )
            .unwrap();
        let drive = c.get("google-drive").unwrap();
        assert_eq!(drive.token_url, c.get("google").unwrap().token_url);
        assert_eq!(drive.display_name, "Google Drive");

        // A Catalog can be merged too.
        let extra = Catalog::from_toml_str(
            r#"
            [providers.acme]
            display_name = "Acme"
            authorization_url = "https://acme.example/authorize"
            token_url = "https://acme.example/token"
            "#,
        )
        .unwrap();
        let c = c.merge(extra).unwrap();
        let acme = c.get("acme").unwrap();
        assert_eq!(acme.token_auth_method, TokenAuthMethod::ClientSecretBasic);
        assert_eq!(acme.pkce, Pkce::Supported);
        assert_eq!(acme.refresh_buffer, DEFAULT_REFRESH_BUFFER);
        assert_eq!(acme.revocation_style, RevocationStyle::None);
        assert!(acme.refresh_tokens && !acme.refresh_token_rotates);
    }

    #[test]
    fn empty_string_removes_an_inherited_url() {
        let c = Catalog::builtin()
            .merge_toml_str(
                r#"
                [providers.google-mail]
                revocation_url = ""
                revocation_style = "none"
                "#,
            )
            .unwrap();
        assert!(c.get("google-mail").unwrap().revocation_url.is_none());
        assert!(c.get("google").unwrap().revocation_url.is_some());
    }

    #[test]
    fn unknown_alias_is_an_error_naming_the_key() {
        let text = r#"
            [providers.foo]
            alias = "nope"
            display_name = "Foo"
        "#;
        assert_eq!(
            err_text(Catalog::from_toml_str(text)),
            "provider `foo`: alias: unknown provider `nope`"
        );
        assert!(err_text(Catalog::builtin().merge_toml_str(text)).contains("provider `foo`"));
    }

    #[test]
    fn alias_cycle_is_an_error_naming_the_key() {
        let text = r#"
            [providers.a]
            alias = "b"
            [providers.b]
            alias = "a"
        "#;
        assert_eq!(
            err_text(Catalog::from_toml_str(text)),
            "provider `a`: alias: cycle a -> b -> a"
        );
        let own = "[providers.selfish]\nalias = \"selfish\"\n";
        assert_eq!(
            err_text(Catalog::from_toml_str(own)),
            "provider `selfish`: alias: cycle selfish -> selfish"
        );
    }

    #[test]
    fn http_url_in_builtin_is_rejected() {
        let text = r#"
            [providers.plain]
            display_name = "Plain"
            authorization_url = "https://plain.example/authorize"
            token_url = "http://plain.example/token"
        "#;
        let err = Catalog::parse(text, UrlPolicy::HttpsOnly)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("provider `plain`: token_url: "), "{err}");
        assert!(err.contains("must use https"), "{err}");
        // The same entry is fine in a user file.
        assert!(Catalog::from_toml_str(text).is_ok());
        // Other schemes never are.
        let ftp = text.replace("http://", "ftp://");
        assert!(err_text(Catalog::from_toml_str(&ftp)).contains("unsupported scheme `ftp`"));
    }

    #[test]
    fn validation_errors_name_provider_and_field() {
        let base = "[providers.tidal]\ndisplay_name = \"TIDAL\"\nauthorization_url = \"https://login.tidal.com/authorize\"\n";
        assert_eq!(
            err_text(Catalog::from_toml_str(&format!(
                "{base}token_url = \"/v1/oauth2/token\"\n"
            ))),
            "provider `tidal`: token_url: relative URL without a base"
        );
        assert_eq!(
            err_text(Catalog::from_toml_str(base)),
            "provider `tidal`: token_url: missing"
        );
        let full = format!("{base}token_url = \"https://auth.tidal.com/v1/oauth2/token\"\n");
        let cases = [
            (
                "authorize_params = { client_id = \"x\" }",
                "authorize_params",
            ),
            ("refresh_params = { grant_type = \"x\" }", "refresh_params"),
            ("revocation_style = \"rfc7009\"", "revocation_url"),
            (
                "revocation_style = \"github_grant\"\nrevocation_url = \"https://x.example/r\"",
                "revocation_url",
            ),
            ("default_scopes = [\"a b\"]", "default_scopes"),
            ("iss_parameter_supported = true", "iss_parameter_supported"),
            ("token_response_path = \"data\"", "token_response_path"),
            ("default_expires_in_secs = 60", "refresh_buffer_secs"),
            (
                "refresh_tokens = false\nrefresh_token_rotates = true",
                "refresh_token_rotates",
            ),
            (
                "[providers.tidal.profile]\nemail = \"/email\"",
                "profile.id",
            ),
        ];
        for (extra, field) in cases {
            let err = err_text(Catalog::from_toml_str(&format!("{full}{extra}\n")));
            assert!(
                err.starts_with(&format!("provider `tidal`: {field}: ")),
                "{extra}: {err}"
            );
        }
        // Typos in field names are caught by the TOML layer.
        let err = err_text(Catalog::from_toml_str(&format!("{full}tokn_url = \"x\"\n")));
        assert!(err.contains("tokn_url"), "{err}");
        // Keys are restricted.
        let err = err_text(Catalog::from_toml_str(
            &full.replace("providers.tidal", "providers.Tidal"),
        ));
        assert!(err.starts_with("provider `Tidal`: key: "), "{err}");
    }

    #[test]
    fn profile_mapping_uses_the_first_non_null_pointer() {
        let c = Catalog::builtin();
        let discord = c.get("discord").unwrap().profile.as_ref().unwrap();
        let p = discord
            .extract(&json!({"id": "80351110224678912", "username": "nelly", "global_name": null}));
        assert_eq!(p.id.as_deref(), Some("80351110224678912"));
        assert_eq!(p.display_name.as_deref(), Some("nelly"));
        assert_eq!(p.email, None);

        let github = c.get("github").unwrap().profile.as_ref().unwrap();
        let p = github.extract(
            &json!({"id": 583231, "login": "octocat", "name": "The Octocat", "email": null}),
        );
        assert_eq!(p.id.as_deref(), Some("583231"));
        assert_eq!(p.display_name.as_deref(), Some("The Octocat"));

        let tidal = c.get("tidal").unwrap().profile.as_ref().unwrap();
        let p = tidal.extract(&json!({"data": {"id": "42", "type": "users",
            "attributes": {"username": "dj", "email": "dj@example.com"}}}));
        assert_eq!(
            (p.id.as_deref(), p.email.as_deref()),
            (Some("42"), Some("dj@example.com"))
        );
    }

    #[test]
    fn prompt_consent_for_offline_access_on_oidc_providers() {
        let mut spec = Catalog::builtin().get("spotify").unwrap().clone();
        let offline = scopes(&["openid", "offline_access"]);

        // Not an OIDC provider: untouched.
        assert!(!spec.authorize_params_for(&offline).contains_key("prompt"));

        spec.openid_connect = true;
        assert_eq!(spec.authorize_params_for(&offline)["prompt"], "consent");
        assert!(
            !spec
                .authorize_params_for(&scopes(&["openid"]))
                .contains_key("prompt")
        );

        for (existing, expected) in [
            ("consent", "consent"),
            ("login consent", "login consent"),
            ("login", "login consent"),
            ("none", "none"),
            ("", "consent"),
        ] {
            spec.authorize_params
                .insert("prompt".to_owned(), existing.to_owned());
            let params = spec.authorize_params_for(&offline);
            assert_eq!(params["prompt"], expected, "existing prompt `{existing}`");
            assert_eq!(params.len(), 1);
        }

        // Google keeps its own params and is not flagged.
        let google = Catalog::builtin().get("google").unwrap().clone();
        assert_eq!(
            google.authorize_params_for(&offline),
            google.authorize_params
        );
    }

    fn metadata(issuer: &str) -> serde_json::Value {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "device_authorization_endpoint": format!("{issuer}/device"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "jwks_uri": format!("{issuer}/jwks"),
            "authorization_response_iss_parameter_supported": true,
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "scopes_supported": ["openid", "email", "profile", "offline_access"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        })
    }

    async fn serve_metadata(server: &MockServer, well_known_path: &str, body: serde_json::Value) {
        Mock::given(method("GET"))
            .and(path(well_known_path))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn discovery_happy_path() {
        let server = MockServer::start().await;
        let issuer = format!("{}/realms/main", server.uri());
        serve_metadata(
            &server,
            "/realms/main/.well-known/openid-configuration",
            metadata(&issuer),
        )
        .await;

        let http = reqwest::Client::new();
        let spec = discover(&http, &Url::parse(&issuer).unwrap())
            .await
            .unwrap();
        assert_eq!(spec.key, "oidc");
        assert_eq!(spec.issuer.as_deref(), Some(issuer.as_str()));
        assert_eq!(
            spec.authorization_url.as_str(),
            format!("{issuer}/authorize")
        );
        assert_eq!(spec.token_url, spec.refresh_url);
        assert_eq!(spec.revocation_style, RevocationStyle::Rfc7009);
        assert_eq!(
            spec.revocation_url.unwrap().as_str(),
            format!("{issuer}/revoke")
        );
        assert_eq!(
            spec.device_authorization_url.unwrap().as_str(),
            format!("{issuer}/device")
        );
        assert_eq!(
            spec.userinfo_url.unwrap().as_str(),
            format!("{issuer}/userinfo")
        );
        assert!(spec.iss_parameter_supported);
        assert!(spec.openid_connect);
        assert_eq!(spec.token_auth_method, TokenAuthMethod::ClientSecretBasic);
        assert_eq!(spec.pkce, Pkce::Supported);
        assert!(spec.default_scopes.contains(&"offline_access".to_owned()));
        let profile = spec.profile.unwrap();
        assert_eq!(
            (profile.id[0].as_str(), profile.email[0].as_str()),
            ("/sub", "/email")
        );
        assert_eq!(profile.display_name[0], "/name");

        // Post-only servers get client_secret_post; no S256 means no PKCE.
        let server2 = MockServer::start().await;
        let mut meta = metadata(&server2.uri());
        meta["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
        meta["code_challenge_methods_supported"] = json!(["plain"]);
        serve_metadata(&server2, "/.well-known/openid-configuration", meta).await;
        let spec = discover(&http, &Url::parse(&server2.uri()).unwrap())
            .await
            .unwrap();
        assert_eq!(spec.token_auth_method, TokenAuthMethod::ClientSecretPost);
        assert_eq!(spec.pkce, Pkce::Unsupported);
        // The bare-host issuer is kept verbatim (no trailing slash added).
        assert_eq!(spec.issuer.as_deref(), Some(server2.uri().as_str()));
    }

    #[tokio::test]
    async fn discovery_rejects_issuer_mismatch() {
        let server = MockServer::start().await;
        serve_metadata(
            &server,
            "/.well-known/openid-configuration",
            metadata("https://evil.example"),
        )
        .await;
        let err = discover(&reqwest::Client::new(), &Url::parse(&server.uri()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::IssuerMismatch { .. }), "{err}");
        assert!(err.to_string().contains("https://evil.example"), "{err}");
    }

    #[tokio::test]
    async fn discovery_rejects_bad_metadata() {
        let http = reqwest::Client::new();
        let server = MockServer::start().await;
        let mut meta = metadata(&server.uri());
        meta["token_endpoint_auth_methods_supported"] = json!(["private_key_jwt"]);
        serve_metadata(&server, "/.well-known/openid-configuration", meta).await;
        let err = discover(&http, &Url::parse(&server.uri()).unwrap())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("neither client_secret_basic"),
            "{err}"
        );

        // Non-loopback http issuers are refused before any request.
        let err = discover(&http, &Url::parse("http://idp.example").unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must use https"), "{err}");

        // 404 from the well-known URL.
        let empty = MockServer::start().await;
        let err = discover(&http, &Url::parse(&empty.uri()).unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("HTTP 404"), "{err}");
    }

    #[tokio::test]
    async fn catalog_discovers_pending_entries_with_user_overrides() {
        let server = MockServer::start().await;
        serve_metadata(
            &server,
            "/.well-known/openid-configuration",
            metadata(&server.uri()),
        )
        .await;

        let mut catalog = Catalog::builtin()
            .merge_toml_str(&format!(
                r#"
                [providers.oidc]
                issuer = "{uri}"

                [providers.corp]
                alias = "oidc"
                display_name = "Corp SSO"
                issuer = "{uri}"
                default_scopes = ["openid", "offline_access"]
                "#,
                uri = server.uri()
            ))
            .unwrap();
        assert!(catalog.get("oidc").is_none());
        assert_eq!(catalog.pending_discovery().count(), 2);

        let found = catalog
            .discover_pending(&reqwest::Client::new())
            .await
            .unwrap();
        assert_eq!(found, 2);
        assert_eq!(catalog.pending_discovery().count(), 0);

        let oidc = catalog.get("oidc").unwrap();
        assert_eq!(oidc.display_name, "OpenID Connect");
        assert_eq!(oidc.token_url.as_str(), format!("{}/token", server.uri()));
        let corp = catalog.get("corp").unwrap();
        assert_eq!(corp.display_name, "Corp SSO");
        assert_eq!(corp.alias_of.as_deref(), Some("oidc"));
        assert_eq!(corp.default_scopes, scopes(&["openid", "offline_access"]));
        assert_eq!(
            corp.authorize_params_for(&corp.default_scopes)["prompt"],
            "consent"
        );
        assert_eq!(
            corp.profile.as_ref().unwrap().display_name,
            ["/name", "/preferred_username"]
        );
    }
}
