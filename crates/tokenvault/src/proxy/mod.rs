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
use reqwest::header::{self, HeaderMap, HeaderValue};
pub use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use url::Url;

use crate::domain::{IntegrationKey, UserId};
use crate::integrations::{Integration, Profile};
use crate::oauth::{OAuthError, RetryAfter};
use crate::privacy::UserTag;
use crate::refresh::{TokenError, TokenOutcome};
use crate::vault::Vault;

mod headers;
mod path;
#[cfg(test)]
mod tests;

pub use headers::{forwards_request_header, forwards_response_header, strip_request_headers};
pub(crate) use path::check_query;
pub use path::{ApiPath, ApiPathError, MAX_PATH_BYTES, MAX_QUERY_BYTES};

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
    /// The connection's parameters cannot build its provider's URLs; the
    /// user must connect again. Nothing was sent.
    #[error("{0}")]
    ConnectionParams(OAuthError),
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
            .ok_or_else(|| RequestError::UnknownIntegration(key.clone()))?;
        let base_template = integration
            .spec()
            .api_base_url
            .as_ref()
            .ok_or_else(|| RequestError::NoApiBaseUrl(key.clone()))?;
        // A bad path is refused before any token is read.
        let mut url = request
            .path
            .url_under(base_template, request.query.as_deref())?;
        strip_request_headers(&mut request.headers);

        let mut issued = self.valid_token(user, key, options.min_ttl).await?;
        // A base that depends on the connection (Shopify's shop, Salesforce's
        // instance) is filled with its checked parameters.
        let connection_client = integration
            .for_stored(&issued.connection.metadata)
            .map_err(RequestError::ConnectionParams)?;
        if let Some(base) = connection_client
            .api_base_url()
            .map_err(RequestError::ConnectionParams)?
            && base != base_template
        {
            url = request.path.url_under(base, request.query.as_deref())?;
        }
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
            let response = send(&connection_client, &url, &request, &issued.tokens).await;
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
            .ok_or_else(|| RequestError::UnknownIntegration(key.clone()))?;
        if integration.spec().userinfo_url.is_none() {
            return Err(RequestError::NoProfileEndpoint(key.clone()));
        }
        let defaults = RequestOptions::default();
        let mut issued = self.valid_token(user, key, defaults.min_ttl).await?;
        let mut retried_unauthorized = false;
        loop {
            self.spend_rate_budget(key).await;
            let client = integration
                .for_stored(&issued.connection.metadata)
                .map_err(RequestError::ConnectionParams)?;
            match client.userinfo(&issued.tokens.access_token).await {
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
    tokens: &crate::domain::TokenSet,
) -> Result<reqwest::Response, RequestError> {
    let ours = integration
        .api_headers(tokens)
        .map_err(|e| RequestError::InvalidHeader(e.to_string()))?;
    // The token header replaces any the caller sent; the entry's other
    // headers are defaults the caller may set otherwise (its own
    // `Notion-Version`, say).
    let mut headers = request.headers.clone();
    let mut ours = ours.into_iter();
    if let Some((name, value)) = ours.next() {
        headers.insert(name, value);
    }
    for (name, value) in ours {
        headers.entry(name).or_insert(value);
    }
    let mut builder = integration
        .http()
        .request(request.method.clone(), url.clone())
        .headers(headers);
    if !request.body.is_empty() {
        builder = builder.body(request.body.clone());
    }
    builder.send().await.map_err(network)
}
