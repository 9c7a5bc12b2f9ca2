//! Calling a provider's API on behalf of one user: the `/v1/proxy` route,
//! profiles, and every request of a bulk action go through
//! [`Vault::request`].
//!
//! The caller names a path *relative to the integration's `api_base_url`*;
//! [`ApiPath`] guarantees it can never leave that base (no absolute URL, no
//! `//host`, no dot segments, plain or percent-encoded, no encoded
//! separators, no control characters), and the final URL is checked again
//! against the base before anything is sent.
//!
//! A provider 401 forces one refresh (unless another caller already
//! refreshed the token we used) and retries once; a 429 whose
//! `Retry-After` fits within [`RequestOptions::max_retry_after`] is waited
//! out and retried, a longer one is handed back to the caller as is. Every
//! call spends the integration's rate budget, the one the refresher uses.
//! Bodies are never logged.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
pub use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use url::Url;

use crate::domain::{IntegrationKey, UserId};
use crate::integrations::{Integration, Profile};
use crate::oauth::{OAuthError, RetryAfter};
use crate::privacy::UserTag;
use crate::refresh::{TokenError, TokenOutcome};
use crate::vault::Vault;

/// Longest accepted path, in bytes (percent-encoded).
pub const MAX_PATH_BYTES: usize = 2048;
/// Longest accepted query string, in bytes.
pub const MAX_QUERY_BYTES: usize = 8192;

/// Why a path or query was refused. No request is sent for any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiPathError {
    #[error("the path is an absolute URL; give a path relative to the integration's API base URL")]
    AbsoluteUrl,
    #[error("the path starts with `//` or has an empty segment, which could name another host")]
    EmptySegment,
    #[error(
        "the path has a segment that reads as `.` or `..` (plain, percent-encoded at any depth, with `;` parameters or in Unicode look-alikes)"
    )]
    DotSegment,
    #[error(
        "the path has a percent-encoded `/`, `\\` or control character (at any depth of encoding)"
    )]
    EncodedSeparator,
    #[error("the path has a character that is not allowed in a URL path: {0:?}")]
    InvalidCharacter(char),
    #[error("the path has a malformed percent-escape or escapes bytes that are not UTF-8")]
    BadEscape,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the query string has a character that is not allowed: {0:?}")]
    InvalidQuery(char),
    #[error("the query string is longer than {MAX_QUERY_BYTES} bytes")]
    QueryTooLong,
    #[error("the resulting URL leaves the integration's API base URL")]
    OutsideBase,
}

/// A path below an integration's API base URL, as percent-encoded text
/// without a leading `/` (`me/tracks`, `users/%40me`). A trailing `/` is
/// kept: some APIs tell `x` and `x/` apart.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiPath(String);

impl ApiPath {
    /// Validates a caller-supplied path; one leading `/` is accepted and
    /// dropped.
    pub fn parse(raw: &str) -> Result<Self, ApiPathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(ApiPathError::TooLong);
        }
        let path = raw.strip_prefix('/').unwrap_or(raw);
        if path.starts_with('/') {
            return Err(ApiPathError::EmptySegment);
        }
        let mut segments = path.split('/').peekable();
        let mut first = true;
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            // Only a trailing `/` may leave an empty segment.
            if segment.is_empty() && (!last || first) && !path.is_empty() {
                return Err(ApiPathError::EmptySegment);
            }
            // RFC 3986 §4.2: a relative reference whose first segment has a
            // colon reads as a scheme (`https:`, `javascript:`).
            if first && segment.contains(':') {
                return Err(ApiPathError::AbsoluteUrl);
            }
            check_segment(segment)?;
            first = false;
        }
        Ok(Self(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base` + `/` + this path (+ `?query`), checked to stay under `base`:
    /// same scheme, host and port, and a path that starts with the base's.
    pub fn url_under(&self, base: &Url, query: Option<&str>) -> Result<Url, ApiPathError> {
        let mut text = base.as_str().trim_end_matches('/').to_owned();
        // The base may carry a query of its own (rare); we never append to one.
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ApiPathError::OutsideBase);
        }
        if !self.0.is_empty() {
            text.push('/');
            text.push_str(&self.0);
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            check_query(query)?;
            text.push('?');
            text.push_str(query);
        }
        let url = Url::parse(&text).map_err(|_| ApiPathError::OutsideBase)?;
        let base_path = base.path().trim_end_matches('/');
        let stays = url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.username() == base.username()
            && url.password() == base.password()
            && url.fragment().is_none()
            && (url.path() == base_path
                || url.path().starts_with(&format!("{base_path}/"))
                || (base_path.is_empty() && url.path().starts_with('/')));
        if stays {
            Ok(url)
        } else {
            Err(ApiPathError::OutsideBase)
        }
    }
}

impl fmt::Debug for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiPath({:?})", self.0)
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 3986 `pchar` minus `%`, which is checked as an escape.
fn is_path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&c)
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// How many rounds of percent-decoding a segment is checked through: a
/// chain of proxies and frameworks each decoding once is how `%252e%252e`
/// becomes `..` at the far end.
const DECODE_ROUNDS: usize = 4;

/// Refuses a segment that some server on the way could read as `.` or `..`
/// or as a separator: as sent, after each of up to [`DECODE_ROUNDS`]
/// percent-decodings, with any `;params` dropped (Tomcat and Jetty read
/// `..;x` as `..`), trimmed, and in Unicode NFKC form (`．．` and `‥` are
/// `..` there). Invalid UTF-8 after decoding is refused too: overlong forms
/// such as `%c0%ae` are dots to some decoders.
fn check_segment(segment: &str) -> Result<(), ApiPathError> {
    let mut text = decode_segment(segment)?;
    for round in 0..DECODE_ROUNDS {
        if reads_as_dots(&text) {
            return Err(ApiPathError::DotSegment);
        }
        use unicode_normalization::UnicodeNormalization as _;
        let separator = |c: char| c == '/' || c == '\\' || c.is_control();
        if (round > 0 && text.chars().any(separator)) || text.nfkc().any(separator) {
            return Err(ApiPathError::EncodedSeparator);
        }
        if !text.contains('%') {
            return Ok(());
        }
        text = match lenient_decode(&text) {
            Some(next) if next != text => next,
            _ => return Ok(()),
        };
    }
    if reads_as_dots(&text) {
        return Err(ApiPathError::DotSegment);
    }
    Ok(())
}

/// Whether a decoded segment is `.` or `..` to a lenient server.
fn reads_as_dots(decoded: &str) -> bool {
    use unicode_normalization::UnicodeNormalization as _;
    let is_dots = |s: &str| {
        let s = s.trim_matches(|c: char| c.is_whitespace() || c.is_control());
        s == "." || s == ".."
    };
    let without_params = decoded.split(';').next().unwrap_or_default();
    if is_dots(without_params) || is_dots(decoded) {
        return true;
    }
    let normalized: String = decoded.nfkc().collect();
    is_dots(&normalized) || is_dots(normalized.split(';').next().unwrap_or_default())
}

/// One more round of percent-decoding for [`check_segment`]; `None` when
/// the text is not valid UTF-8 afterwards. Malformed escapes stay as they
/// are, as most servers leave them.
fn lenient_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-decodes one segment, refusing escapes that would change the
/// path's structure or smuggle control characters, and bytes that are not
/// UTF-8.
fn decode_segment(segment: &str) -> Result<String, ApiPathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(ApiPathError::BadEscape);
            };
            let byte = hi << 4 | lo;
            if byte == b'/' || byte == b'\\' || byte < 0x20 || byte == 0x7f {
                return Err(ApiPathError::EncodedSeparator);
            }
            out.push(byte);
            i += 3;
        } else if is_path_char(c) {
            out.push(c);
            i += 1;
        } else {
            let shown = segment[i..].chars().next().unwrap_or('?');
            return Err(ApiPathError::InvalidCharacter(shown));
        }
    }
    String::from_utf8(out).map_err(|_| ApiPathError::BadEscape)
}

pub(crate) fn check_query(query: &str) -> Result<(), ApiPathError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiPathError::QueryTooLong);
    }
    if let Some(bad) = query
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '#' | '\\'))
    {
        return Err(ApiPathError::InvalidQuery(bad));
    }
    // A control character may also arrive percent-encoded; CR/LF there
    // would split a header if a provider echoed the query into one.
    let lower = query.to_ascii_lowercase();
    if lower.contains("%0d") || lower.contains("%0a") || lower.contains("%00") {
        return Err(ApiPathError::InvalidQuery('%'));
    }
    Ok(())
}

/// Headers that describe one hop, never the end-to-end message (RFC 9110
/// §7.6.1), plus those tokenvault sets itself or must not pass on.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Whether a request header from the caller may go on to the provider.
pub fn forwards_request_header(name: &HeaderName) -> bool {
    !NOT_FORWARDED.contains(&name.as_str()) && !name.as_str().starts_with("x-tokenvault-")
}

/// Whether a provider response header may go back to the caller: hop-by-hop
/// headers and cookies for the provider's domain stay behind.
pub fn forwards_response_header(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "set-cookie"
            | "content-length"
    )
}

/// Removes the headers [`forwards_request_header`] refuses, and any header a
/// `Connection` header names.
pub fn strip_request_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let refused: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !forwards_request_header(name))
        .cloned()
        .collect();
    for name in refused {
        headers.remove(name);
    }
}

/// One call to an integration's API.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub path: ApiPath,
    /// Percent-encoded query string without `?`.
    pub query: Option<String>,
    /// Sent as given, minus the headers [`forwards_request_header`] refuses.
    pub headers: HeaderMap,
    /// Kept in memory so a retry after a 401 or 429 can resend it.
    pub body: Bytes,
}

impl ApiRequest {
    pub fn new(method: Method, path: ApiPath) -> Self {
        Self {
            method,
            path,
            query: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// A request whose path is validated here.
    pub fn parse(method: Method, path: &str) -> Result<Self, ApiPathError> {
        Ok(Self::new(method, ApiPath::parse(path)?))
    }

    /// Sets the query from pairs, percent-encoding them.
    pub fn query_pairs<'a>(mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.query = (!encoded.is_empty()).then_some(encoded);
        self
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = Bytes::from(body.to_string());
        self.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self
    }
}

/// Paces a caller's sends on top of the integration's budget (a bulk
/// action's own rate); waited on before every provider call, retries
/// included.
#[async_trait::async_trait]
pub trait SendGate: Send + Sync {
    /// Returns when the next request may go out.
    async fn ready(&self);
    /// The request `ready` let through got its answer (or failed, or was
    /// abandoned): the provider has seen it by now, if ever. Called exactly
    /// once per `ready`.
    fn answered(&self) {}
}

/// Tells the gate when the request it let through is over, however the
/// call ends (a dropped future included).
struct GateTicket<'a>(&'a dyn SendGate);

impl Drop for GateTicket<'_> {
    fn drop(&mut self) {
        self.0.answered();
    }
}

/// Per-call knobs of [`Vault::request_with`].
#[derive(Clone)]
pub struct RequestOptions {
    /// The longest provider `Retry-After` (in total) waited out before
    /// retrying; longer ones return the 429 to the caller.
    pub max_retry_after: Duration,
    /// The access token must be valid this much longer, else it is
    /// refreshed first.
    pub min_ttl: Duration,
    pub gate: Option<Arc<dyn SendGate>>,
}

impl fmt::Debug for RequestOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestOptions")
            .field("max_retry_after", &self.max_retry_after)
            .field("min_ttl", &self.min_ttl)
            .field("gate", &self.gate.is_some())
            .finish()
    }
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            max_retry_after: Duration::from_secs(10),
            min_ttl: Duration::from_secs(60),
            gate: None,
        }
    }
}

/// The provider's answer, its body not read yet (stream it or read it).
#[derive(Debug)]
pub struct ApiResponse {
    response: reqwest::Response,
    /// A refresh happened for this call (expired token, or a 401).
    pub refreshed: bool,
    /// Provider calls made for this answer (retries after a 401 or 429
    /// included).
    pub attempts: u32,
    /// The access tokens the calls carried, for scrubbing any provider text
    /// that is kept (bulk item excerpts).
    secrets: crate::privacy::Scrubber,
}

impl ApiResponse {
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The provider's headers, as received.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The delay a 429 or 503 asked for, if it carried a usable
    /// `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(self.headers())
    }

    /// The secrets this call sent (the access tokens, as sent): run any
    /// text kept from the answer through it.
    pub fn secrets(&self) -> &crate::privacy::Scrubber {
        &self.secrets
    }

    /// Reads the whole body.
    pub async fn bytes(self) -> Result<Bytes, RequestError> {
        self.response.bytes().await.map_err(network)
    }

    /// The body as a stream of chunks, for relaying without buffering.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static {
        self.response.bytes_stream()
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(RetryAfter::parse)
        .map(|r| r.delay())
}

/// Why a call could not be made (a provider's error *status* is not one of
/// these: it comes back as an [`ApiResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    InvalidPath(#[from] ApiPathError),
    #[error("integration {0} is not configured")]
    UnknownIntegration(IntegrationKey),
    #[error("integration {0} has no API base URL (set api_base_url in its providers.toml entry)")]
    NoApiBaseUrl(IntegrationKey),
    #[error("integration {0} has no profile endpoint (userinfo_url in its providers.toml entry)")]
    NoProfileEndpoint(IntegrationKey),
    #[error("a header of the request cannot be sent: {0}")]
    InvalidHeader(String),
    #[error("the provider could not be reached: {0}")]
    Network(String),
    /// The profile endpoint answered with an error or an unusable body.
    #[error("the provider's profile endpoint failed: {0}")]
    Profile(OAuthError),
}

fn network(err: reqwest::Error) -> RequestError {
    // reqwest's Display may include the URL; the URL holds no secret (the
    // token travels in a header) but can hold the caller's query, which
    // the logs do not need: drop it.
    let err = err.without_url();
    RequestError::Network(if err.is_timeout() {
        "the request timed out".to_owned()
    } else {
        err.to_string()
    })
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Vault {
    /// Calls the integration's API for `user` with a valid access token:
    /// refreshes first when needed, once more after a provider 401, and
    /// waits out short 429s ([`RequestOptions::default`]).
    pub async fn request(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        request: ApiRequest,
    ) -> Result<ApiResponse, RequestError> {
        self.request_with(user, integration, request, RequestOptions::default())
            .await
    }

    /// [`Vault::request`] with explicit options.
    pub async fn request_with(
        &self,
        user: &UserId,
        key: &IntegrationKey,
        mut request: ApiRequest,
        options: RequestOptions,
    ) -> Result<ApiResponse, RequestError> {
        let integration = self
            .integrations()
            .get(key)
            .cloned()
            .ok_or_else(|| RequestError::UnknownIntegration(key.clone()))?;
        let base = integration
            .spec()
            .api_base_url
            .as_ref()
            .ok_or_else(|| RequestError::NoApiBaseUrl(key.clone()))?;
        let url = request.path.url_under(base, request.query.as_deref())?;
        strip_request_headers(&mut request.headers);

        let mut issued = self.valid_token(user, key, options.min_ttl).await?;
        let mut refreshed = issued.outcome == TokenOutcome::Refreshed;
        let mut retried_unauthorized = false;
        let mut waited = Duration::ZERO;
        let mut attempts = 0u32;
        let mut secrets = crate::privacy::Scrubber::new();
        loop {
            self.spend_rate_budget(key).await;
            // Last, so nothing between the gate and the send delays it.
            let ticket = match &options.gate {
                Some(gate) => {
                    gate.ready().await;
                    Some(GateTicket(gate.as_ref()))
                }
                None => None,
            };
            attempts += 1;
            let authorization = integration.api_authorization(&issued.tokens);
            secrets.add(issued.tokens.access_token.expose());
            secrets.add(authorization.expose_secret());
            let response = send(&integration, &url, &request, &authorization).await;
            // The answer's head is here: the provider has seen the request.
            drop(ticket);
            let response = match response {
                Ok(response) => response,
                Err(err) => {
                    metrics::counter!("tokenvault_api_requests_total", "integration" => key.to_string(), "status" => "error").increment(1);
                    return Err(err);
                }
            };
            let status = response.status();
            metrics::counter!("tokenvault_api_requests_total", "integration" => key.to_string(), "status" => status_class(status)).increment(1);
            tracing::debug!(integration = %key, user = %UserTag(user.as_str()), method = %request.method, status = status.as_u16(), "provider API call");
            if status == StatusCode::UNAUTHORIZED && !retried_unauthorized {
                retried_unauthorized = true;
                let again = self.refresh_rejected(&issued).await?;
                if again.connection.access_token == issued.connection.access_token {
                    // Nothing newer to offer (the connection has no
                    // refresh token): the 401 is the answer.
                    return Ok(ApiResponse {
                        response,
                        refreshed,
                        attempts,
                        secrets,
                    });
                }
                metrics::counter!("tokenvault_api_retries_total", "integration" => key.to_string(), "reason" => "unauthorized").increment(1);
                issued = again;
                refreshed = true;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS
                && let Some(delay) = retry_after(response.headers())
                && waited + delay <= options.max_retry_after
            {
                metrics::counter!("tokenvault_api_retries_total", "integration" => key.to_string(), "reason" => "rate_limited").increment(1);
                drop(response);
                tokio::time::sleep(delay).await;
                waited += delay;
                continue;
            }
            return Ok(ApiResponse {
                response,
                refreshed,
                attempts,
                secrets,
            });
        }
    }

    /// The account behind the connection, read from the provider's profile
    /// endpoint (`userinfo_url` and `profile` mapping of the catalog), with
    /// the same refresh-on-401 as [`Vault::request`].
    pub async fn profile(
        &self,
        user: &UserId,
        key: &IntegrationKey,
    ) -> Result<Profile, RequestError> {
        let integration = self
            .integrations()
            .get(key)
            .cloned()
            .ok_or_else(|| RequestError::UnknownIntegration(key.clone()))?;
        if integration.spec().userinfo_url.is_none() {
            return Err(RequestError::NoProfileEndpoint(key.clone()));
        }
        let defaults = RequestOptions::default();
        let mut issued = self.valid_token(user, key, defaults.min_ttl).await?;
        let mut retried_unauthorized = false;
        loop {
            self.spend_rate_budget(key).await;
            match integration.userinfo(&issued.tokens.access_token).await {
                Ok(Some(profile)) => return Ok(profile),
                Ok(None) => return Err(RequestError::NoProfileEndpoint(key.clone())),
                Err(err) if err.status() == Some(401) && !retried_unauthorized => {
                    retried_unauthorized = true;
                    let again = self.refresh_rejected(&issued).await?;
                    if again.connection.access_token == issued.connection.access_token {
                        return Err(RequestError::Profile(err));
                    }
                    issued = again;
                }
                Err(err) => return Err(RequestError::Profile(err)),
            }
        }
    }
}

async fn send(
    integration: &Integration,
    url: &Url,
    request: &ApiRequest,
    authorization: &secrecy::SecretString,
) -> Result<reqwest::Response, RequestError> {
    let mut value = HeaderValue::from_str(authorization.expose_secret()).map_err(|_| {
        RequestError::InvalidHeader("the access token is not a valid header value".into())
    })?;
    value.set_sensitive(true);
    let mut builder = integration
        .http()
        .request(request.method.clone(), url.clone())
        .headers(request.headers.clone())
        .header(header::AUTHORIZATION, value);
    if !request.body.is_empty() {
        builder = builder.body(request.body.clone());
    }
    builder.send().await.map_err(network)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/v1").unwrap()
    }

    #[test]
    fn ordinary_paths_stay_under_the_base() {
        for (path, expected) in [
            ("me", "https://api.example.com/v1/me"),
            ("/me/tracks", "https://api.example.com/v1/me/tracks"),
            ("users/%40me/x", "https://api.example.com/v1/users/%40me/x"),
            ("a.b/c..d/...", "https://api.example.com/v1/a.b/c..d/..."),
            ("trailing/", "https://api.example.com/v1/trailing/"),
            ("", "https://api.example.com/v1"),
        ] {
            let url = ApiPath::parse(path).unwrap().url_under(&base(), None);
            assert_eq!(url.unwrap().as_str(), expected, "{path}");
        }
        let url = ApiPath::parse("me/tracks")
            .unwrap()
            .url_under(&base(), Some("ids=1,2&market=DE"))
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.example.com/v1/me/tracks?ids=1,2&market=DE"
        );
    }

    #[test]
    fn escapes_are_refused() {
        let cases: &[(&str, ApiPathError)] = &[
            ("https://evil.example/x", ApiPathError::AbsoluteUrl),
            ("http:evil", ApiPathError::AbsoluteUrl),
            ("javascript:alert(1)", ApiPathError::AbsoluteUrl),
            ("//evil.example/x", ApiPathError::EmptySegment),
            ("///evil", ApiPathError::EmptySegment),
            ("a//b", ApiPathError::EmptySegment),
            ("..", ApiPathError::DotSegment),
            ("../x", ApiPathError::DotSegment),
            ("a/../../x", ApiPathError::DotSegment),
            ("%2e%2e/x", ApiPathError::DotSegment),
            ("%2E%2e/x", ApiPathError::DotSegment),
            (".%2e/admin", ApiPathError::DotSegment),
            ("a/./b", ApiPathError::DotSegment),
            ("a%2f..%2fb", ApiPathError::EncodedSeparator),
            ("a%5c..", ApiPathError::EncodedSeparator),
            ("a/b%0d%0aX-Injected:1", ApiPathError::EncodedSeparator),
            ("a%00", ApiPathError::EncodedSeparator),
            ("a\r\nb", ApiPathError::InvalidCharacter('\r')),
            ("a b", ApiPathError::InvalidCharacter(' ')),
            ("a\\b", ApiPathError::InvalidCharacter('\\')),
            ("a?b=1", ApiPathError::InvalidCharacter('?')),
            ("a#frag", ApiPathError::InvalidCharacter('#')),
            ("%zz", ApiPathError::BadEscape),
            ("%4", ApiPathError::BadEscape),
            ("..;/admin", ApiPathError::DotSegment),
            ("x/.;jsessionid=1/admin", ApiPathError::DotSegment),
            ("%252e%252e/admin", ApiPathError::DotSegment),
            ("%252fadmin", ApiPathError::EncodedSeparator),
            ("%ef%bc%8e%ef%bc%8e/admin", ApiPathError::DotSegment),
            ("%e2%80%a5/admin", ApiPathError::DotSegment),
            ("a%ef%bc%8fb", ApiPathError::EncodedSeparator),
            ("%c0%ae%c0%ae/admin", ApiPathError::BadEscape),
            ("..%20/admin", ApiPathError::DotSegment),
        ];
        for (path, expected) in cases {
            assert_eq!(ApiPath::parse(path).as_ref(), Err(expected), "{path:?}");
        }
        assert_eq!(
            ApiPath::parse(&"a".repeat(MAX_PATH_BYTES + 1)),
            Err(ApiPathError::TooLong)
        );
    }

    #[test]
    fn queries_cannot_smuggle_fragments_or_line_breaks() {
        let path = ApiPath::parse("me").unwrap();
        for query in ["a=1#x", "a=1\r\nb", "a=%0d%0aHost:evil", "a=%00", "a b"] {
            assert!(path.url_under(&base(), Some(query)).is_err(), "{query:?}");
        }
    }

    #[test]
    fn a_base_at_the_root_accepts_any_relative_path() {
        let root = Url::parse("https://api.github.com").unwrap();
        let url = ApiPath::parse("user/repos")
            .unwrap()
            .url_under(&root, None)
            .unwrap();
        assert_eq!(url.as_str(), "https://api.github.com/user/repos");
    }

    proptest::proptest! {
        /// Whatever the caller sends, a path that parses yields a URL on the
        /// base's host under the base's path.
        #[test]
        fn parsed_paths_never_leave_the_base(raw in "[a-zA-Z0-9%./:@?#\\\\-]{0,40}") {
            if let Ok(path) = ApiPath::parse(&raw) {
                let url = path.url_under(&base(), None).unwrap();
                proptest::prop_assert_eq!(url.host_str(), Some("api.example.com"));
                proptest::prop_assert!(url.path() == "/v1" || url.path().starts_with("/v1/"), "{}", url);
            }
        }
    }

    #[test]
    fn hop_by_hop_and_our_own_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer tvk_ours"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "tokenvault.internal"),
            ("cookie", "session=abc"),
            ("x-tokenvault-min-ttl", "60"),
            ("accept", "application/json"),
            ("if-none-match", "\"abc\""),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_request_headers(&mut headers);
        let mut kept: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["accept", "content-type", "if-none-match"]);
    }
}
