//! The catalog as written: every field optional, overlaid field by field.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;

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
    /// `#rrggbb`: the colour of the entry's icon in the Connect UI.
    pub brand_color: Option<String>,
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
    /// Each scope in plain words, for the Connect UI ("See your email address").
    pub scope_descriptions: Option<BTreeMap<String, String>>,
    pub authorize_params: Option<BTreeMap<String, String>>,
    pub authorize_style: Option<AuthorizeStyle>,
    pub token_auth_method: Option<TokenAuthMethod>,
    /// The token endpoint also takes public clients (`none`, with PKCE):
    /// an integration configured without a client secret becomes one.
    pub public_client: Option<bool>,
    pub token_request_format: Option<TokenRequestFormat>,
    pub refresh_params: Option<BTreeMap<String, String>>,
    /// Extra parameters of the code exchange (Shopify's `expiring=1`).
    pub exchange_params: Option<BTreeMap<String, String>>,
    /// Extra headers of token-endpoint requests (Notion's `Notion-Version`).
    pub token_headers: Option<BTreeMap<String, String>>,
    /// Extra headers of API calls (proxy, profile, post-connect); `{client_id}`
    /// in a value is the integration's client id (Twitch's `Client-Id`).
    pub api_headers: Option<BTreeMap<String, String>>,
    /// The header that carries the access token to the API (default
    /// `Authorization`; Shopify's `X-Shopify-Access-Token` takes the bare token).
    pub api_auth_header: Option<String>,
    /// The name the provider gives the client id in the authorization and
    /// token requests (TikTok: `client_key`).
    pub client_id_param: Option<String>,
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
    /// `[providers.<key>.connection_params.<name>]`: the `{name}`
    /// placeholders of the entry's URLs.
    pub connection_params: Option<BTreeMap<String, RawConnectionParam>>,
    /// JSON pointers of the token response's non-secret fields kept as
    /// connection metadata (absent: every non-secret top-level field).
    pub token_metadata: Option<Vec<String>>,
    /// OpenID Connect: claims of the ID token kept as connection metadata.
    pub id_token_claims: Option<Vec<String>>,
}

/// Where a connection parameter comes from, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawParamSource {
    Session,
    Callback,
    TokenResponse,
    PostConnect,
}

/// What of a parameter's raw value is kept, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawParamExtract {
    /// The value is an https URL; keep its host.
    Host,
}

/// `[providers.<key>.connection_params.<name>]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnectionParam {
    pub description: Option<String>,
    pub pattern: Option<String>,
    pub source: Option<RawParamSource>,
    pub example: Option<String>,
    /// `callback`: the query parameter's name (default: the parameter's).
    pub query: Option<String>,
    /// `token_response` / `post_connect`: where the value is.
    pub pointer: Option<String>,
    /// `post_connect`: the https URL to GET with the access token.
    pub request: Option<String>,
    pub extract: Option<RawParamExtract>,
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
            display_name, brand_color, alias, discovery, authorization_url, token_url, refresh_url,
            revocation_url, revocation_style, device_authorization_url, userinfo_url, issuer,
            iss_parameter_supported, openid_connect, scope_separator, default_scopes,
            scope_descriptions, authorize_params, authorize_style, token_auth_method, public_client, token_request_format,
            refresh_params, refresh_sends_scope, pkce, refresh_tokens, refresh_token_rotates,
            refresh_buffer_secs, default_expires_in_secs, api_base_url, api_auth_scheme,
            token_response_path, connection_params, token_metadata, id_token_claims,
            exchange_params, token_headers, api_headers, api_auth_header, client_id_param,
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
