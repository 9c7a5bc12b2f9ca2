//! The HTTP side of the protocol: the endpoint calls (client
//! authentication is in `client_auth`).

use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::client_auth::ClientAuth;
use super::error::{OAuthError, RetryAfter};
use super::token::{
    DeviceAuthorization, DevicePoll, RawResponse, TokenResponse, device_authorization_from_object,
};
use crate::privacy::Scrubber;

/// Upper bound on any response body we read; larger bodies are an error.
const MAX_BODY_BYTES: usize = 1024 * 1024;

const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Encoding of token-endpoint request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRequestFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749 §4.1.3).
    #[default]
    Form,
    /// `application/json` with every parameter as a JSON string (an
    /// extension; Wix requires it).
    Json,
}

/// Per-provider knobs for token-endpoint calls (supplied by the provider catalog).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequestOptions {
    /// JSON pointer to the object holding the token fields (`"/authed_user"`
    /// for Slack user tokens, `"/data"`, ...). `None` = the body root.
    pub token_path: Option<String>,
    /// Additional form parameters sent with the token request (`audience`,
    /// `resource`, ...). They are appended after the standard ones; do not
    /// repeat a standard parameter here.
    pub extra_params: Vec<(String, String)>,
    /// Body encoding of the token request: form (RFC 6749, the default) or
    /// JSON (Wix). Only token-endpoint calls (code exchange, refresh,
    /// client credentials, device poll) use it; the device authorization and
    /// RFC 7009 revocation endpoints are always sent forms.
    pub format: TokenRequestFormat,
    /// Extra request headers (Notion's `Notion-Version`); names and values
    /// were checked by the catalog.
    pub headers: Vec<(String, String)>,
    /// The client id's parameter name when not `client_id` (TikTok).
    pub client_id_param: Option<String>,
}

/// HTTP settings of [`OAuthClient`].
#[derive(Debug, Clone)]
pub struct OAuthClientConfig {
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect + send + reading the body).
    pub request_timeout: Duration,
    pub user_agent: String,
    /// Fixed addresses for host names, instead of DNS (reqwest's
    /// `resolve`; the port comes from the URL): split-horizon setups, and
    /// tests that check the host a templated URL reaches.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
}

impl Default for OAuthClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            user_agent: concat!("tokenvault/", env!("CARGO_PKG_VERSION")).to_string(),
            resolve: Vec::new(),
        }
    }
}

/// OAuth 2.0 protocol client. Cheap to clone (shares the connection pool).
///
/// Redirects are never followed: a 3xx from any endpoint is an
/// [`OAuthError::Http`] (a token endpoint that redirects would otherwise make
/// us re-send credentials or lose the POST body).
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// For the OAuth calls themselves: no whole-request timeout of its own
    /// (`execute` enforces it, see there).
    oauth: reqwest::Client,
    /// For auxiliary calls (discovery, the API proxy): reqwest's timeouts.
    http: reqwest::Client,
    request_timeout: Duration,
}

/// How long an answer may still be taken after [`OAuthClientConfig::request_timeout`]
/// ran out (at most a quarter of it).
const LATE_ANSWER_GRACE: Duration = Duration::from_secs(1);

impl OAuthClient {
    pub fn new(config: OAuthClientConfig) -> Result<Self, OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let builder = || {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(config.connect_timeout)
                .user_agent(config.user_agent.clone())
                .default_headers(headers.clone());
            for (host, addr) in &config.resolve {
                builder = builder.resolve(host, *addr);
            }
            builder
        };
        let build_error =
            |e: reqwest::Error| OAuthError::Config(format!("building HTTP client: {e}"));
        // No reqwest timeout here: it checks its clock before the
        // connection, so after a pause it would drop an answer already
        // received. `execute` bounds every call instead.
        let oauth = builder().build().map_err(build_error)?;
        let http = builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(build_error)?;
        Ok(Self {
            oauth,
            http,
            request_timeout: config.request_timeout,
        })
    }

    /// The underlying HTTP client (no redirects, `Accept: application/json`,
    /// the configured timeouts), for auxiliary calls such as OIDC discovery.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Authorization-code exchange (RFC 6749 §4.1.3, with the RFC 7636
    /// `code_verifier` when PKCE was used).
    ///
    /// `redirect_uri` must be the exact string sent in the authorization
    /// request; `None` omits the parameter, which RFC 6749 allows only when
    /// the authorization request carried none (Wix's installer flow).
    pub async fn exchange_code(
        &self,
        token_url: &Url,
        auth: &ClientAuth,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&SecretString>,
        options: &TokenRequestOptions,
    ) -> Result<TokenResponse, OAuthError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
        ];
        if let Some(redirect_uri) = redirect_uri {
            form.push(("redirect_uri", redirect_uri.to_string()));
        }
        if let Some(v) = code_verifier {
            form.push(("code_verifier", v.expose_secret().to_string()));
        }
        self.token_request(token_url, auth, form, options).await
    }

    /// Refresh-token grant (RFC 6749 §6). `scopes: None` (or empty) omits the
    /// `scope` parameter, which keeps the originally granted scopes.
    ///
    /// If the response carries no `refresh_token`, the old one stays valid and
    /// must be kept by the caller.
    pub async fn refresh(
        &self,
        token_url: &Url,
        auth: &ClientAuth,
        refresh_token: &SecretString,
        scopes: Option<&[String]>,
        scope_separator: &str,
        options: &TokenRequestOptions,
    ) -> Result<TokenResponse, OAuthError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.expose_secret().to_string()),
        ];
        push_scope(&mut form, scopes.unwrap_or_default(), scope_separator);
        self.token_request(token_url, auth, form, options).await
    }

    /// Client-credentials grant (RFC 6749 §4.4).
    pub async fn client_credentials(
        &self,
        token_url: &Url,
        auth: &ClientAuth,
        scopes: &[String],
        scope_separator: &str,
        options: &TokenRequestOptions,
    ) -> Result<TokenResponse, OAuthError> {
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        push_scope(&mut form, scopes, scope_separator);
        self.token_request(token_url, auth, form, options).await
    }

    /// Device authorization request (RFC 8628 §3.1).
    ///
    /// Public clients (`ClientAuthMethod::None`) send `client_id` in the body,
    /// as RFC 8628 requires; confidential clients authenticate as usual.
    pub async fn device_authorize(
        &self,
        device_authorization_url: &Url,
        auth: &ClientAuth,
        scopes: &[String],
        scope_separator: &str,
        extra_params: &[(String, String)],
    ) -> Result<DeviceAuthorization, OAuthError> {
        let mut form = Vec::new();
        push_scope(&mut form, scopes, scope_separator);
        let raw = self
            .post_form(device_authorization_url, auth, form, extra_params)
            .await?;
        match raw.into_object()? {
            Some(object) => device_authorization_from_object(object),
            None => Err(OAuthError::InvalidResponse(
                "device authorization body is neither a JSON object nor form-encoded".into(),
            )),
        }
    }

    /// One device-token poll (RFC 8628 §3.4/3.5). The caller owns the loop,
    /// the interval (+5 s on [`DevicePoll::SlowDown`]) and the overall expiry.
    /// `scopes`: sent as `scope` when given (TIDAL's SDK sends them with
    /// every poll); RFC 8628 polls carry none.
    pub async fn poll_device_token(
        &self,
        token_url: &Url,
        auth: &ClientAuth,
        device_code: &SecretString,
        scopes: Option<(&[String], &str)>,
        options: &TokenRequestOptions,
    ) -> Result<DevicePoll, OAuthError> {
        let mut form = vec![
            ("grant_type", GRANT_DEVICE_CODE.to_string()),
            ("device_code", device_code.expose_secret().to_string()),
        ];
        if let Some((scopes, separator)) = scopes {
            push_scope(&mut form, scopes, separator);
        }
        match self.token_request(token_url, auth, form, options).await {
            Ok(token) => Ok(DevicePoll::Complete(token)),
            Err(err) => match err.oauth_error_code() {
                Some("authorization_pending") => Ok(DevicePoll::Pending),
                Some("slow_down") => Ok(DevicePoll::SlowDown),
                Some("access_denied") => Ok(DevicePoll::Denied),
                Some("expired_token") => Ok(DevicePoll::Expired),
                _ => Err(err),
            },
        }
    }

    /// Token revocation (RFC 7009). Any 2xx is success (RFC 7009 §2.2: the
    /// server answers 200 even for unknown/already-invalid tokens).
    pub async fn revoke(
        &self,
        revocation_url: &Url,
        auth: &ClientAuth,
        token: &SecretString,
        token_type_hint: Option<&str>,
    ) -> Result<(), OAuthError> {
        let mut form = vec![("token", token.expose_secret().to_string())];
        if let Some(hint) = token_type_hint {
            form.push(("token_type_hint", hint.to_string()));
        }
        let raw = self.post_form(revocation_url, auth, form, &[]).await?;
        if raw.is_success() {
            return Ok(());
        }
        Err(raw.failure())
    }

    /// GitHub's grant deletion, its substitute for RFC 7009:
    /// `DELETE {grant_url}` (`https://api.github.com/applications/{client_id}/grant`)
    /// with HTTP Basic `client_id:client_secret` — whatever `auth.method`
    /// says, GitHub only accepts Basic here — and the JSON body
    /// `{"access_token": "..."}`. It deletes the app's whole authorization
    /// for that user, every token included.
    ///
    /// Any 2xx (GitHub documents 204) is success. Everything else is an
    /// error carrying the status: 422 ("validation failed"), and 404, which
    /// GitHub returns for a token it does not know, e.g. one whose grant is
    /// already gone — callers treating disconnects as idempotent may accept
    /// it.
    pub async fn revoke_github_grant(
        &self,
        grant_url: &Url,
        auth: &ClientAuth,
        access_token: &SecretString,
    ) -> Result<(), OAuthError> {
        let basic = auth.require_basic_header()?;
        let body = serde_json::json!({ "access_token": access_token.expose_secret() });
        let req = self
            .http
            .delete(grant_url.clone())
            .header(header::AUTHORIZATION, basic)
            .header(
                header::ACCEPT,
                HeaderValue::from_static("application/vnd.github+json"),
            )
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(&body);
        let mut secrets = Scrubber::new().with(access_token.expose_secret());
        auth.add_secrets(&mut secrets);
        let raw = self.execute(req, secrets).await?;
        if raw.is_success() {
            return Ok(());
        }
        Err(raw.failure())
    }

    /// GET a userinfo (or any JSON) endpoint with `Authorization: Bearer`.
    ///
    /// Non-2xx → [`OAuthError::Provider`] when the body or `WWW-Authenticate`
    /// carries an OAuth error (e.g. `invalid_token`), else
    /// [`OAuthError::Http`]; both expose [`OAuthError::status`] so callers can
    /// refresh on 401.
    pub async fn userinfo(
        &self,
        url: &Url,
        access_token: &SecretString,
    ) -> Result<Value, OAuthError> {
        let authorization = SecretString::from(format!("Bearer {}", access_token.expose_secret()));
        self.userinfo_with_authorization(url, &authorization).await
    }

    /// [`OAuthClient::userinfo`] with a caller-built `Authorization` header
    /// value, for APIs that do not use the Bearer scheme (Wix wants the bare
    /// token).
    pub async fn userinfo_with_authorization(
        &self,
        url: &Url,
        authorization: &SecretString,
    ) -> Result<Value, OAuthError> {
        let mut value = HeaderValue::from_str(authorization.expose_secret())
            .map_err(|_| OAuthError::Config("unencodable Authorization header".into()))?;
        value.set_sensitive(true);
        let secret = authorization.expose_secret();
        let token = secret
            .split_once(' ')
            .map_or(secret, |(_scheme, token)| token.trim());
        self.get_json(
            url,
            vec![(header::AUTHORIZATION, value)],
            &SecretString::from(token.to_owned()),
        )
        .await
    }

    /// GET `url` with `headers` (the access token among them, in whatever
    /// header the API wants it) and read a JSON answer; `token` is scrubbed
    /// from any error text.
    pub async fn get_json(
        &self,
        url: &Url,
        headers: Vec<(reqwest::header::HeaderName, HeaderValue)>,
        token: &SecretString,
    ) -> Result<Value, OAuthError> {
        let mut req = self.oauth.get(url.clone());
        let mut secrets = Scrubber::new().with(token.expose_secret());
        for (name, value) in headers {
            if value.is_sensitive()
                && let Ok(text) = value.to_str()
            {
                secrets.add(text);
            }
            req = req.header(name, value);
        }
        let raw = self.execute(req, secrets).await?;
        if raw.is_success() {
            return serde_json::from_slice::<Value>(&raw.body).map_err(|e| {
                OAuthError::InvalidResponse(format!("userinfo body is not JSON: {e}"))
            });
        }
        Err(raw.failure())
    }

    async fn token_request(
        &self,
        token_url: &Url,
        auth: &ClientAuth,
        form: Vec<(&'static str, String)>,
        options: &TokenRequestOptions,
    ) -> Result<TokenResponse, OAuthError> {
        let raw = self.post(token_url, auth, form, options).await?;
        raw.into_token_response(options.token_path.as_deref())
    }

    async fn post_form(
        &self,
        url: &Url,
        auth: &ClientAuth,
        form: Vec<(&'static str, String)>,
        extra_params: &[(String, String)],
    ) -> Result<RawResponse, OAuthError> {
        let options = TokenRequestOptions {
            extra_params: extra_params.to_vec(),
            ..TokenRequestOptions::default()
        };
        self.post(url, auth, form, &options).await
    }

    async fn post(
        &self,
        url: &Url,
        auth: &ClientAuth,
        mut params: Vec<(&'static str, String)>,
        options: &TokenRequestOptions,
    ) -> Result<RawResponse, OAuthError> {
        let TokenRequestOptions {
            extra_params,
            format,
            headers,
            client_id_param,
            ..
        } = options;
        let client_id_param = client_id_param.as_deref();
        let mut req = self.oauth.post(url.clone());
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = auth.apply(req, &mut params)?;
        let mut pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| match client_id_param {
                Some(name) if *k == "client_id" => (name, v.as_str()),
                _ => (*k, v.as_str()),
            })
            .collect();
        pairs.extend(extra_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut secrets = Scrubber::new();
        auth.add_secrets(&mut secrets);
        for (name, value) in &pairs {
            if !NOT_SECRET_PARAMS.contains(name) {
                secrets.add(value);
            }
        }
        let req = match format {
            TokenRequestFormat::Form => req.form(&pairs),
            TokenRequestFormat::Json => {
                // Later entries win, like a server reading the last value of a
                // repeated form field.
                let object: serde_json::Map<String, Value> = pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect();
                req.json(&object)
            }
        };
        self.execute(req, secrets).await
    }

    /// Sends `req` and reads the answer within `request_timeout`. When the
    /// time runs out, the answer still gets a short last chance: if this
    /// process was stopped meanwhile (SIGSTOP, a paused VM, a long stall),
    /// the provider's answer may be sitting unread in the socket, and
    /// dropping it would lose a rotated refresh token for good. reqwest's
    /// own timeout would win that race (it checks the clock before the
    /// connection); this one polls the call first.
    async fn execute(
        &self,
        req: reqwest::RequestBuilder,
        secrets: Scrubber,
    ) -> Result<RawResponse, OAuthError> {
        let call = self.execute_unbounded(req, secrets);
        tokio::pin!(call);
        match tokio::time::timeout(self.request_timeout, &mut call).await {
            Ok(result) => result,
            Err(_) => {
                let grace = LATE_ANSWER_GRACE.min(self.request_timeout / 4);
                tokio::time::timeout(grace, &mut call)
                    .await
                    .unwrap_or(Err(OAuthError::Timeout))
            }
        }
    }

    async fn execute_unbounded(
        &self,
        req: reqwest::RequestBuilder,
        secrets: Scrubber,
    ) -> Result<RawResponse, OAuthError> {
        let mut resp = req.send().await.map_err(OAuthError::from_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp.headers();
        let header_str = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header_str(header::CONTENT_TYPE);
        let retry_after = header_str(header::RETRY_AFTER)
            .as_deref()
            .and_then(RetryAfter::parse);
        let www_authenticate = header_str(header::WWW_AUTHENTICATE);

        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(OAuthError::from_reqwest)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(OAuthError::InvalidResponse(format!(
                    "response body exceeds {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawResponse {
            status,
            content_type,
            retry_after,
            www_authenticate,
            body,
            secrets,
        })
    }
}

/// Request parameters whose values are not secrets; every other value a
/// request carries (code, verifier, refresh token, device code, client
/// secret, token, provider-specific extras) is scrubbed from its answer.
const NOT_SECRET_PARAMS: &[&str] = &[
    "grant_type",
    "scope",
    "redirect_uri",
    "client_id",
    "token_type_hint",
    "audience",
    "resource",
];

fn push_scope(form: &mut Vec<(&'static str, String)>, scopes: &[String], separator: &str) {
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(separator)));
    }
}
