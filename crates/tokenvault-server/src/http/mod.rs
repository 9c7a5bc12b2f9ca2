//! The HTTP surface: routes, middleware, shared state.

pub mod admin;
mod auth;
mod bulk;
mod connections;
mod device;
pub mod error;
mod error_code;
mod flows;
mod health;
mod import;
mod integrations;
mod listing;
pub mod openapi;
pub mod pages;
mod proxy;

use crate::http::error::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use std::future::Future;
use tokenvault::device::DeviceFlow;
use tokenvault::integrations::Integrations;
use tokenvault::oauth::OAuthClient;
use tokenvault::oauth_state::StateStore;
use tokenvault::providers::Catalog;
use tokenvault::vault::Vault;
use url::Url;

pub use auth::{ApiKeys, Caller, KEY_CACHE_TTL};
use error::REQUEST_ID;
pub use integrations::ProviderDetail;
pub use listing::{ConnectionEvent, ListedConnection};
use tokenvault::api_keys::Scope;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler shares. Cheap to clone: axum clones the state for
/// every request, and one reference count is what that should cost (a
/// field-by-field clone was ~3 % of a token read's CPU time).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The services and settings behind an [`AppState`].
pub struct AppParts {
    pub vault: Vault,
    pub api_keys: ApiKeys,
    pub catalog: Arc<Catalog>,
    pub integrations: Arc<Integrations>,
    pub states: Arc<dyn StateStore>,
    pub oauth: OAuthClient,
    pub settings: Arc<FlowSettings>,
    /// How the Connect UI pages look.
    pub theme: pages::Theme,
    /// The admin console's sessions and what its pages manage.
    pub console: admin::Console,
    /// The browser authorization-code flow (connect sessions, the
    /// redirect, the callback, confirm mode).
    pub connect: tokenvault::connect::ConnectFlow,
    pub app_tokens: tokenvault::integrations::AppTokens,
    /// Device authorization sessions; a [`tokenvault::device::DevicePoller`]
    /// (see `wiring::spawn_device_poller`) polls them.
    pub device: DeviceFlow,
    /// Bulk actions (a [`tokenvault::bulk::BulkWorker`], see
    /// `wiring::spawn_bulk_worker`, runs them).
    pub bulk: tokenvault::bulk::BulkActions,
    pub limits: Limits,
}

/// Bounds on every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Larger bodies are refused with 413.
    pub max_body_bytes: usize,
    /// Requests still running after this are answered 503 `request_timeout`.
    pub request_timeout: Duration,
    /// The longest provider `Retry-After` the proxy waits out before
    /// retrying; a longer one is relayed to the caller.
    pub proxy_max_retry_after: Duration,
}

impl Limits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
            proxy_max_retry_after: Duration::from_secs(config.proxy_max_retry_after_secs),
        }
    }
}

/// Settings of the browser flows.
#[derive(Debug, Clone)]
pub struct FlowSettings {
    pub public_url: Url,
    pub state_ttl: Duration,
    /// Serialized origins (`https://app.example.com`) `redirect_to` may use.
    pub allowed_redirect_origins: Vec<String>,
    /// What a connect link shows first unless its session says.
    pub connect_ui: crate::config::ConnectUi,
}

impl FlowSettings {
    /// `url`'s origin (serialized) when it is one of
    /// `allowed_redirect_origins`: where a flow may send the browser or
    /// post its outcome.
    pub fn allowed_origin(&self, url: &Url) -> Option<String> {
        let origin = url.origin().ascii_serialization();
        self.allowed_redirect_origins
            .contains(&origin)
            .then_some(origin)
    }

    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Self> {
        let allowed_redirect_origins = config
            .allowed_redirect_origins
            .iter()
            .map(|origin| {
                Url::parse(origin)
                    .ok()
                    .filter(Url::has_host)
                    .map(|url| url.origin().ascii_serialization())
                    .with_context(|| {
                        format!("TOKENVAULT_ALLOWED_REDIRECT_ORIGINS: {origin:?} is not an origin like https://app.example.com")
                    })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            public_url: config.public_url(),
            state_ttl: Duration::from_secs(config.state_ttl_secs),
            allowed_redirect_origins,
            connect_ui: config.connect_ui,
        })
    }
}

/// Every `/v1` operation, declared once, in the group of the scope it
/// needs: its method and path come from the handler's `#[utoipa::path]`.
/// The router ([`router`]), the OpenAPI document ([`openapi::openapi`]) and
/// the scope check ([`required_scope`]) are all derived from this list.
pub fn api() -> Vec<(Scope, OpenApiRouter<AppState>)> {
    let read_tokens = OpenApiRouter::new()
        .routes(routes!(health::ping))
        .routes(routes!(integrations::list_providers))
        .routes(routes!(integrations::get_provider))
        .routes(routes!(integrations::list_integrations))
        .routes(routes!(integrations::app_token))
        .routes(routes!(connections::list))
        .routes(routes!(listing::list_connections))
        .routes(routes!(listing::summary))
        .routes(routes!(listing::events))
        .routes(routes!(connections::show))
        .routes(routes!(connections::token))
        .routes(routes!(proxy::profile))
        .routes(proxy_routes())
        .routes(routes!(bulk::show))
        .routes(routes!(bulk::items))
        .routes(routes!(device::get_device_session));
    let manage = OpenApiRouter::new()
        .routes(routes!(flows::create_connect_session))
        .routes(routes!(flows::callback::confirm_connect_session))
        .routes(routes!(device::create_device_session))
        .routes(routes!(connections::force_refresh))
        .routes(routes!(connections::revoke))
        .routes(routes!(bulk::create))
        .routes(routes!(bulk::cancel));
    let admin = OpenApiRouter::new()
        .routes(routes!(connections::reset_integration))
        .routes(routes!(import::put_connection));
    vec![
        (Scope::ReadTokens, read_tokens),
        (Scope::Manage, manage),
        (Scope::Admin, admin),
    ]
}

/// The proxy: documented for the methods an API call uses, routed for
/// every method so that CONNECT and TRACE get our own `405` envelope.
fn proxy_routes() -> utoipa_axum::router::UtoipaMethodRouter<AppState> {
    let (schemas, paths, _) = routes!(proxy::proxy);
    (schemas, paths, any(proxy::proxy))
}

pub fn router(state: AppState) -> Router {
    // `/v1` routes carry their prefix instead of being nested: a nested
    // router costs every request a prefix strip and a second route lookup.
    let v1 = api().into_iter().fold(Router::new(), |router, (_, group)| {
        router.merge(group.split_for_parts().0)
    });
    v1.route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::serve))
        .route("/connect/{id}", get(flows::browser::start_connect))
        .route("/connect/{id}/start", get(flows::browser::start_chosen))
        .route("/connect/{id}/result", get(flows::browser::result))
        .route("/connect.js", get(pages::connect_js))
        .route("/ui/popup.js", get(pages::popup_js))
        .route("/ui/device.js", get(pages::device_js))
        .route("/ui/connect.css", get(pages::stylesheet))
        .route("/ui/theme.css", get(pages::theme_css))
        .route("/device/{id}", get(device::page))
        .route("/device/{id}/status", get(device::page_status))
        .route("/oauth/callback", get(flows::callback::callback))
        .route(
            "/oauth/{integration}/callback",
            get(flows::callback::integration_callback),
        )
        .merge(admin::routes())
        .fallback(|| async { error::ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: Method| async move {
            error::ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("this endpoint does not take {method}; see /openapi.json"),
            )
        })
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state, per_request))
}

/// The scope each `/v1` operation needs, by route template (as axum
/// matched it) and method, from [`api`]. Keyed by the template alone so a
/// lookup borrows the matched path instead of allocating a key.
static SCOPES: LazyLock<HashMap<String, Vec<(Method, Scope)>>> = LazyLock::new(|| {
    let mut scopes: HashMap<String, Vec<(Method, Scope)>> = HashMap::new();
    for (scope, group) in api() {
        for (path, item) in &group.get_openapi().paths.paths {
            let methods = scopes.entry(path.clone()).or_default();
            methods.extend(openapi::methods_of(item).into_iter().map(|m| (m, scope)));
        }
    }
    scopes
});

/// The scope a request to `route` (a matched template) with `method`
/// needs; anything not declared in [`api`] needs `admin`.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let declared = SCOPES.get(route).map(Vec::as_slice).unwrap_or_default();
    let find = |wanted: &Method| {
        declared
            .iter()
            .find_map(|(m, scope)| (m == wanted).then_some(*scope))
    };
    find(method)
        // axum answers HEAD with the GET handler.
        .or_else(|| {
            (*method == Method::HEAD)
                .then(|| find(&Method::GET))
                .flatten()
        })
        .unwrap_or(Scope::Admin)
}

/// What every request gets, in one layer (one boxed future and one clone of
/// the inner service per request, where a layer each would cost one each),
/// from the outside in: the HTTP metrics (`crate::metrics::record_http`), a
/// request id (the caller's `X-Request-Id` if sane, else a new UUID) echoed
/// in the response and available to logs and error bodies, the request's
/// log span, the request timeout, and on a `/v1` route the API key check
/// ([`auth::authorize`]).
async fn per_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // A clone of the matched template is a reference count, not a copy.
    let matched = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let route = matched
        .as_ref()
        .map_or("unmatched", axum::extract::MatchedPath::as_str);
    let method = crate::metrics::method_label(request.method());
    let started = std::time::Instant::now();
    let id = request_id(&request);
    // The path's user id is hashed only if a subscriber records the span.
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default(), method = %request.method(), path = %LoggablePath(request.uri().path()));
    let handled = async {
        let mut request = request;
        // Only routed `/v1` requests need a key: an unknown path stays a
        // 404 rather than turning into a 401.
        if route.starts_with("/v1/")
            && let Err(refused) = auth::authorize(&state.api_keys, route, &mut request).await
        {
            return refused.into_response();
        }
        if declared_length(&request).is_some_and(|length| length > state.limits.max_body_bytes) {
            // A client that waits for `100 Continue` sends nothing until
            // the body is read: answer at once, it never gets the go-ahead.
            let waiting = request
                .headers()
                .get(axum::http::header::EXPECT)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let body = (!waiting).then(|| request.into_body());
            return refuse_oversized(body, state.limits.max_body_bytes).await;
        }
        next.run(request).await
    };
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(request_timeout(state.limits, handled), span),
        )
        .await;
    response.headers_mut().insert("x-request-id", id);
    crate::metrics::record_http(method, route, response.status(), started.elapsed());
    response
}

/// How much of a body declared over the limit is read (and dropped) before
/// the 413 goes out; beyond it the connection is closed instead.
const OVERSIZED_DRAIN_BYTES: usize = 32 * 1024 * 1024;

/// The request's `Content-Length`, when it has a readable one.
fn declared_length(request: &Request) -> Option<usize> {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Answers 413 `payload_too_large` to a body declared over the limit,
/// after reading and dropping it (up to [`OVERSIZED_DRAIN_BYTES`], within
/// the request timeout; `None`: the client has sent nothing yet).
/// Answering first and closing with the body unread makes the client's
/// kernel see a reset while it is still sending, and the client gets a
/// broken connection instead of the 413.
async fn refuse_oversized(body: Option<axum::body::Body>, limit: usize) -> Response {
    use futures::StreamExt;
    if let Some(body) = body {
        let mut stream = body.into_data_stream();
        let mut read = 0usize;
        while read <= OVERSIZED_DRAIN_BYTES {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                Some(Err(_)) | None => break,
            }
        }
    }
    error::ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is over {limit} bytes (max_body_bytes)"),
    )
    .into_response()
}

/// Answers 503 `request_timeout` when a handler runs longer than the limit.
/// The handler is dropped; a refresh it started runs on in its own task and
/// stores what the provider returned, so nothing is lost or half-written.
async fn request_timeout(limits: Limits, handler: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(limits.request_timeout, handler).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                timeout_secs = limits.request_timeout.as_secs(),
                "request timed out"
            );
            error::ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request did not complete within {} s; retry later",
                    limits.request_timeout.as_secs()
                ),
            )
            .into_response()
        }
    }
}

/// The request path as logs show it: user ids replaced by their keyed hash,
/// connect-session ids (single-use bearer links) cut to 8 characters, and a
/// proxied call's provider path (which may name the user's resources) left
/// out.
fn loggable_path(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    if segments.get(1) == Some(&"v1") && segments.get(2) == Some(&"proxy") {
        // ["", "v1", "proxy", integration, user, provider path...]
        let mut shown: Vec<String> = segments.iter().take(4).map(|s| (*s).to_owned()).collect();
        if let Some(user) = segments.get(4) {
            shown.push(tokenvault::privacy::UserTag(user).to_string());
        }
        if segments.len() > 5 {
            shown.push("…".to_owned());
        }
        return shown.join("/");
    }
    let mut previous = "";
    segments
        .into_iter()
        .map(|segment| {
            let shown = match previous {
                "users" => tokenvault::privacy::UserTag(segment).to_string(),
                "connect" => format!("{}…", tokenvault::privacy::truncated(segment)),
                _ => segment.to_owned(),
            };
            previous = segment;
            shown
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// [`loggable_path`], computed when displayed.
struct LoggablePath<'a>(&'a str);

impl std::fmt::Display for LoggablePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&loggable_path(self.0))
    }
}

/// The caller's `X-Request-Id` if sane, else a new (version 4) UUID.
fn request_id(request: &Request) -> axum::http::HeaderValue {
    let given = request.headers().get("x-request-id").filter(|v| {
        let v = v.as_bytes();
        !v.is_empty()
            && v.len() <= 64
            && v.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if let Some(given) = given {
        return given.clone();
    }
    // From the thread-local CSPRNG: `Uuid::new_v4` asks the kernel for
    // every id. Formatted on the stack, copied once into the header value.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    axum::http::HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut text).as_bytes())
        .expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_hide_user_ids_and_connect_links() {
        let user = "alice@example.com";
        let logged = loggable_path(&format!("/v1/users/{user}/connections/spotify/token"));
        assert!(!logged.contains(user), "{logged}");
        let tag = tokenvault::privacy::UserTag(user).to_string();
        assert_eq!(logged, format!("/v1/users/{tag}/connections/spotify/token"));
        assert_eq!(
            loggable_path("/connect/0123456789abcdefghij"),
            "/connect/01234567…"
        );
        assert_eq!(loggable_path("/v1/integrations"), "/v1/integrations");
    }
}
