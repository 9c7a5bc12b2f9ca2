//! Calling a provider's API for one user without handling tokens: the proxy
//! and the profile.

use crate::http::error::ErrorCode;
use axum::Json;
use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::proxy::{self, ApiPath as ProviderPath, ApiRequest, RequestError, RequestOptions};
use utoipa::ToSchema;

use super::AppState;
use super::connections::token_error;
use super::error::{ApiError, ApiPath, ErrorBody};
use super::flows::{integration, user_id};

/// The part of the request path after `/v1/proxy/{integration}/{user_id}/`,
/// still percent-encoded: the router's decoded wildcard would hide `%2e%2e`
/// and `%2f`, which are exactly what must be checked.
fn raw_provider_path(path: &str) -> &str {
    path.splitn(6, '/').nth(5).unwrap_or_default()
}

pub(super) fn request_error(err: RequestError, integration: &str) -> ApiError {
    match err {
        RequestError::Token(err) => token_error(err, integration),
        RequestError::InvalidPath(err) => {
            ApiError::new(ErrorCode::InvalidProxyPath, err.to_string())
        }
        RequestError::UnknownIntegration(key) => ApiError::new(
            ErrorCode::UnknownIntegration,
            format!("no integration named {key:?} is configured; see GET /v1/integrations"),
        ),
        err @ RequestError::NoApiBaseUrl(_) => {
            ApiError::new(ErrorCode::NoApiBaseUrl, err.to_string())
        }
        err @ RequestError::NoProfileEndpoint(_) => {
            ApiError::new(ErrorCode::ProfileNotSupported, err.to_string())
        }
        err @ RequestError::InvalidHeader(_) => {
            ApiError::new(ErrorCode::InvalidHeader, err.to_string())
        }
        RequestError::Network(reason) => ApiError::new(
            ErrorCode::ProviderUnreachable,
            format!("the {integration} API could not be reached: {reason}"),
        ),
        RequestError::ConnectionParams(err) => {
            ApiError::new(ErrorCode::ConnectionParamsUnusable, err.to_string())
        }
        RequestError::Profile(err) => ApiError::new(
            ErrorCode::ProviderError,
            match err.status() {
                Some(status) => {
                    format!("the {integration} profile endpoint answered HTTP {status}")
                }
                None => format!("the {integration} profile endpoint failed: {err}"),
            },
        ),
    }
}

/// `ANY /v1/proxy/{integration}/{user_id}/{path}`
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/v1/proxy/{integration}/{user_id}/{*path}",
    tag = "proxy",
    summary = "Call the provider's API as the user",
    description = "Forwards the request to the integration's `api_base_url` + `path` + query with the user's valid access token (refreshed first when needed), and streams the provider's status, headers and body back. Hop-by-hop headers, `Cookie`, `Host` and our own `Authorization` are not forwarded; `Set-Cookie` is not returned. On a provider 401 the token is refreshed once and the call retried once; a provider 429 whose `Retry-After` is within `proxy_max_retry_after_secs` is waited out and retried, a longer one is returned as is. The path can never leave the API base URL: absolute URLs, `//host`, `.`/`..` segments (also percent-encoded), encoded `/` or `\\`, and control characters are refused with 400 before anything is sent. Any answer without the `error`/`message`/`request_id` envelope is the provider's own.",
    params(
        ("integration" = IntegrationKey, Path, description = "A configured integration with an `api_base_url`"),
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("path" = String, Path, description = "The API path below `api_base_url`, e.g. `me/tracks`; may contain `/`"),
    ),
    responses(
        (status = 200, description = "The provider's answer (any status the provider sends is relayed)"),
        (status = 400, description = "`invalid_proxy_path`, `no_api_base_url`, `invalid_user_id`, `invalid_header`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`unknown_integration`, `connection_not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`: CONNECT and TRACE are not forwarded", body = ErrorBody),
        (status = 409, description = "`needs_reauth`", body = ErrorBody),
        (status = 502, description = "`provider_unreachable`: no answer from the provider", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` (with `Retry-After`), `integration_misconfigured`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn proxy(
    State(state): State<AppState>,
    ApiPath((key, user, _path)): ApiPath<(String, String, String)>,
    OriginalUri(original): OriginalUri,
    request: Request,
) -> Result<Response, ApiError> {
    // CONNECT would ask the provider for a tunnel and TRACE to echo the
    // request back, our bearer token included: neither is an API call.
    if request.method() == Method::CONNECT || request.method() == Method::TRACE {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{} is not forwarded to providers", request.method()),
        ));
    }
    let user = user_id(&user)?;
    let integration = integration(&state, &key)?.key().clone();
    let (parts, body) = request.into_parts();
    // The leading `/` keeps a remainder that starts with `/` (the caller
    // wrote `//host`) a refused empty segment.
    // The original URI: inside the `/v1` nest the request's own URI has
    // lost its prefix.
    let raw = format!("/{}", raw_provider_path(original.path()));
    let path = ProviderPath::parse(&raw)
        .map_err(|err| ApiError::new(ErrorCode::InvalidProxyPath, err.to_string()))?;
    let body = axum::body::to_bytes(body, state.limits.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is over {} bytes (max_body_bytes)",
                    state.limits.max_body_bytes
                ),
            )
        })?;
    let mut call = ApiRequest::new(parts.method, path);
    call.query = parts.uri.query().map(str::to_owned);
    call.headers = parts.headers;
    call.body = body;
    let options = RequestOptions {
        max_retry_after: state.limits.proxy_max_retry_after,
        ..RequestOptions::default()
    };
    let response = state
        .vault
        .request_with(&user, &integration, call, options)
        .await
        .map_err(|err| request_error(err, &key))?;
    let status = response.status();
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        if proxy::forwards_response_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if response.refreshed {
        headers.insert(
            "x-tokenvault-refreshed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok((status, headers, Body::from_stream(response.into_stream())).into_response())
}

/// The account behind a connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileBody {
    /// The provider's stable account id.
    pub id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// The provider's whole profile document.
    #[schema(value_type = Object)]
    pub raw: serde_json::Value,
}

/// `GET /v1/users/{user_id}/connections/{integration}/profile`
#[utoipa::path(
    get,
    operation_id = "getProfile",
    path = "/v1/users/{user_id}/connections/{integration}/profile",
    tag = "connections",
    summary = "The provider account behind the connection",
    description = "Read from the provider's profile endpoint (the catalog's `userinfo_url` and `profile` mapping) with the user's valid token; a provider 401 refreshes once and retries once.",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "A configured integration"),
    ),
    responses(
        (status = 200, description = "The account", body = ProfileBody),
        (status = 400, description = "`invalid_user_id`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`unknown_integration`, `connection_not_found`, `profile_not_supported` (the provider has no profile endpoint)", body = ErrorBody),
        (status = 409, description = "`needs_reauth`", body = ErrorBody),
        (status = 502, description = "`provider_error`, `provider_unreachable`: the profile endpoint failed", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` (with `Retry-After`), `integration_misconfigured`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn profile(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
) -> Result<Json<ProfileBody>, ApiError> {
    let user = user_id(&user)?;
    let integration = integration(&state, &key)?.key().clone();
    let profile = state
        .vault
        .profile(&user, &integration)
        .await
        .map_err(|err| request_error(err, &key))?;
    Ok(Json(ProfileBody {
        id: profile.id,
        email: profile.email,
        display_name: profile.display_name,
        raw: profile.raw,
    }))
}

#[cfg(test)]
mod tests {
    use super::raw_provider_path;

    #[test]
    fn the_provider_path_is_taken_raw_after_the_user_id() {
        assert_eq!(
            raw_provider_path("/v1/proxy/spotify/u-1/me/tracks"),
            "me/tracks"
        );
        assert_eq!(
            raw_provider_path("/v1/proxy/spotify/u-1/%2e%2e/x"),
            "%2e%2e/x"
        );
        assert_eq!(raw_provider_path("/v1/proxy/spotify/u-1//evil"), "/evil");
        assert_eq!(raw_provider_path("/v1/proxy/spotify/u-1"), "");
    }
}
