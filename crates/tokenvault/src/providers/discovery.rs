//! OpenID Connect discovery: an issuer's metadata into a [`ProviderSpec`].

use serde::Deserialize;
use url::Url;

use super::raw::*;
use super::resolve::*;
use super::*;

/// The parts of OpenID Provider Metadata (OIDC Discovery §3, RFC 8414 /
/// RFC 9207) tokenvault uses.
#[derive(Debug, Deserialize)]
pub(super) struct ProviderMetadata {
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
pub(super) fn well_known_url(issuer: &Url) -> Result<Url, url::ParseError> {
    let base = issuer.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/.well-known/openid-configuration"))
}

/// OIDC Discovery §4.3: the metadata issuer must be identical to the one
/// discovery was started with. A [`Url`] always has a path, so a bare-host
/// issuer (`https://idp.example`) is also accepted without the `/` that
/// parsing added.
pub(super) fn issuer_matches(requested: &Url, found: &str) -> bool {
    let requested_str = requested.as_str();
    found == requested_str
        || (requested.path() == "/" && found == requested_str.trim_end_matches('/'))
}

pub(super) async fn discover_raw(
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

    // RFC 8414 §2: when absent, the default is client_secret_basic. A
    // confidential method is preferred; `none` (a public client, with
    // PKCE) is used when it is the only one offered, or by an integration
    // configured without a secret.
    let auth_methods = meta
        .token_endpoint_auth_methods_supported
        .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]);
    let offered = |m: TokenAuthMethod| auth_methods.iter().any(|a| a == m.as_str());
    let token_auth_method = [
        TokenAuthMethod::ClientSecretBasic,
        TokenAuthMethod::ClientSecretPost,
        TokenAuthMethod::None,
    ]
    .into_iter()
    .find(|m| offered(*m))
    .ok_or_else(|| {
        fail(format!(
            "token_endpoint_auth_methods_supported offers none of client_secret_basic, client_secret_post, none: {auth_methods:?}"
        ))
    })?;
    let public_client = offered(TokenAuthMethod::None);

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
        public_client: Some(public_client),
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
