//! Token-endpoint grants: code exchange, refresh, client credentials and
//! the device flow, and what of a token response is kept as metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::domain::{AccessToken, RefreshToken, Scopes, TokenSet, TokenType};
use crate::oauth::{
    DeviceAuthorization, DevicePoll, OAuthError, TokenRequestOptions, TokenResponse,
};
use crate::providers::{AuthorizeStyle, ConnectionParams, ParamSource, Pkce as PkceSupport};

use super::*;

impl Integration {
    pub(super) fn token_options(&self, extra: &BTreeMap<String, String>) -> TokenRequestOptions {
        TokenRequestOptions {
            token_path: self.spec.token_response_path.clone(),
            extra_params: extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            format: self.spec.token_request_format,
            headers: self
                .spec
                .token_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            client_id_param: self.spec.client_id_param.clone(),
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
        let response = with_client_auth!(self, |auth| {
            self.oauth
                .exchange_code(
                    self.ready(&self.spec.token_url)?,
                    auth,
                    code,
                    redirect_uri,
                    verifier,
                    &self.token_options(&self.spec.exchange_params),
                )
                .await
        })?;
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
        let response = with_client_auth!(self, |auth| {
            self.oauth
                .refresh(
                    self.ready(&self.spec.refresh_url)?,
                    auth,
                    &SecretString::from(refresh_token.expose().to_owned()),
                    scope_param.as_deref(),
                    &self.spec.scope_separator,
                    &self.token_options(&self.spec.refresh_params),
                )
                .await
        })?;
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
        let response = with_client_auth!(self, |auth| {
            self.oauth
                .client_credentials(
                    self.ready(&self.spec.token_url)?,
                    auth,
                    &requested,
                    &self.spec.scope_separator,
                    &self.token_options(&BTreeMap::new()),
                )
                .await
        })?;
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
        let url = self.ready(url)?;
        let requested = self.requested_scopes(scopes);
        with_client_auth!(self, |auth| {
            self.oauth
                .device_authorize(url, auth, &requested, &self.spec.scope_separator, &[])
                .await
        })
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
        // Providers that want the scopes on every token request (TIDAL)
        // get them on polls too.
        let scope_param = self
            .spec
            .refresh_sends_scope
            .then(|| self.requested_scopes(scopes));
        let poll = with_client_auth!(self, |auth| {
            self.oauth
                .poll_device_token(
                    self.ready(&self.spec.token_url)?,
                    auth,
                    device_code,
                    scope_param
                        .as_deref()
                        .map(|scopes| (scopes, self.spec.scope_separator.as_str())),
                    &self.token_options(&BTreeMap::new()),
                )
                .await
        })?;
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

    /// TokenResponse → Grant: token type defaults to Bearer (parsed
    /// case-insensitively; an unknown type is logged and taken as Bearer);
    /// scopes are the response's when it lists any, else `requested`;
    /// `expires_at = now + expires_in`, or `now + default_expires_in` when
    /// the response has none (or 0), or `None`; the refresh token is the
    /// response's, else `previous`.
    pub(super) fn grant(
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
        let token_response_params = self.token_response_params(&response.extra);
        let mut metadata = match &self.spec.token_metadata {
            None => strip_secrets(response.extra),
            Some(pointers) => select_fields(&response.extra, pointers),
        };
        if !self.spec.id_token_claims.is_empty()
            && let Some(claims) = response
                .id_token
                .as_ref()
                .and_then(|jwt| id_token_claims(jwt, &self.spec.id_token_claims))
            && let Some(fields) = metadata.as_object_mut()
        {
            fields.insert("id_token".to_owned(), claims);
        }
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
            metadata,
            token_response_params,
        }
    }

    /// The raw values of the `token_response` connection parameters
    /// (checked later, with the others).
    fn token_response_params(&self, extra: &Map<String, Value>) -> ConnectionParams {
        let object = Value::Object(extra.clone());
        self.spec
            .connection_params
            .iter()
            .filter_map(|spec| match &spec.source {
                ParamSource::TokenResponse { pointer } => {
                    scalar(object.pointer(pointer)?).map(|v| (spec.name.clone(), v))
                }
                _ => None,
            })
            .collect()
    }
}

/// A JSON scalar as a string (numbers and booleans stringified); `None`
/// for null, objects and arrays.
pub(crate) fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The fields at `pointers`, nested as in the response (`/team/id` keeps
/// `{"team": {"id": ...}}`); missing ones are skipped.
fn select_fields(object: &Map<String, Value>, pointers: &[String]) -> Value {
    let source = Value::Object(object.clone());
    let mut out = Value::Object(Map::new());
    for pointer in pointers {
        let Some(found) = source.pointer(pointer) else {
            continue;
        };
        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let mut node = &mut out;
        for (i, segment) in segments.iter().enumerate() {
            let Some(fields) = node.as_object_mut() else {
                break;
            };
            if i + 1 == segments.len() {
                fields.insert(segment.clone(), strip_value(found.clone()));
                break;
            }
            node = fields
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    out
}

/// The listed claims of an ID token's payload. The token came straight from
/// the token endpoint over TLS, which OpenID Connect Core §3.1.3.7 accepts
/// in place of checking its signature; nothing here decides identity.
fn id_token_claims(jwt: &SecretString, wanted: &[String]) -> Option<Value> {
    use base64::Engine as _;
    use secrecy::ExposeSecret as _;
    let payload = jwt.expose_secret().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let kept: Map<String, Value> = wanted
        .iter()
        .filter_map(|name| Some((name.clone(), strip_value(claims.get(name)?.clone()))))
        .collect();
    (!kept.is_empty()).then_some(Value::Object(kept))
}

pub(crate) fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "secret", "password"]
        .iter()
        .any(|s| name.contains(s))
}

pub(super) fn strip_secrets(object: Map<String, Value>) -> Value {
    Value::Object(
        object
            .into_iter()
            .filter(|(k, _)| !looks_secret(k))
            .map(|(k, v)| (k, strip_value(v)))
            .collect(),
    )
}

pub(super) fn strip_value(value: Value) -> Value {
    match value {
        Value::Object(m) => strip_secrets(m),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_value).collect()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------
