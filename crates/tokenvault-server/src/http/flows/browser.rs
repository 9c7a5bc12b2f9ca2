//! The browser's side of a flow: the connect link, the cookie that binds
//! the flow to the browser, the pages and redirects it ends with.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use tokenvault::integrations::Integration;
use tokenvault::oauth_state::StateRecord;

use crate::http::AppState;

use crate::http::error::{ApiError, ApiPath};

/// `GET /connect/{id}`: consumes the connect session, creates the one-time
/// OAuth state (with a PKCE verifier where the provider supports it) and
/// sends the browser to the provider.
/// Also binds the flow to this browser (unless the session is in confirm
/// mode): a random nonce goes into an HttpOnly, SameSite=Lax cookie scoped
/// to the callback path, its hash into the state, and the callback refuses
/// the state without it.
#[tracing::instrument(skip_all)]
pub async fn start_connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Response {
    let mut response = match start(&state, id).await {
        Ok(response) => response,
        Err(err) => for_browser(&headers, err),
    };
    harden_browser_response(&mut response);
    response
}

/// Headers of every answer a browser gets on the flow routes: nothing is
/// cached (the callback URL carries a code), no `Referer` leaves (it would
/// carry the code and state), the pages load nothing and cannot be framed.
pub(super) fn harden_browser_response(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

pub(super) async fn start(state: &AppState, id: String) -> Result<Response, ApiError> {
    let started = state.connect.start(&id).await?;
    let integration = &started.integration;
    tracing::info!(integration = %integration.key(), state = %started.state, "redirecting to provider");
    let mut response = (
        StatusCode::FOUND,
        [(header::LOCATION, started.authorize_url.to_string())],
    )
        .into_response();
    if let Some(nonce) = &started.browser_nonce {
        let cookie = binding_cookie(
            state,
            integration,
            started.state.as_str(),
            nonce.as_str(),
            state.settings.state_ttl.as_secs().max(1),
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The cookie that binds one flow to its browser. Its name comes from the
/// state, so concurrent flows in one browser do not overwrite each other.
pub(super) fn binding_cookie_name(state_key: &str) -> String {
    format!(
        "tv_flow_{}",
        hex::encode(&Sha256::digest(state_key.as_bytes())[..8])
    )
}

pub(super) fn binding_cookie(
    state: &AppState,
    integration: &Integration,
    state_key: &str,
    value: &str,
    max_age_secs: u64,
) -> HeaderValue {
    let secure = if state.settings.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let path = integration.redirect_uri().path();
    let cookie = format!(
        "{}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}",
        binding_cookie_name(state_key)
    );
    // Every part is ASCII we made (the path is a parsed URL's).
    HeaderValue::from_str(&cookie)
        .unwrap_or_else(|_| HeaderValue::from_static("tv_flow=; Max-Age=0"))
}

/// The value of cookie `name` in the request, if sent.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Whether the request came from a browser page load rather than a program.
pub(super) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// An error on a browser route: a short page for a browser, the JSON
/// envelope for anything else.
pub(super) fn for_browser(headers: &HeaderMap, err: ApiError) -> Response {
    if !wants_html(headers) {
        return err.into_response();
    }
    let request_id = crate::http::error::REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_default();
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Connection not completed</title></head>\
         <body style=\"font-family:system-ui;margin:4rem auto;max-width:32rem;padding:0 1rem\">\
         <h1>Connection not completed</h1><p>{}</p>\
         <p style=\"color:#555;font-size:.875rem\">Error <code>{}</code>, request {}</p></body></html>",
        html_escape(&err.message),
        err.code,
        html_escape(&request_id),
    );
    let mut response = (err.status, Html(page)).into_response();
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

/// The end of a browser flow: back to the app, or a small page.
pub(super) fn finished(
    record: &StateRecord,
    error: Option<&str>,
    integration: &Integration,
) -> Response {
    if let Some(target) = record
        .redirect_to
        .as_deref()
        .and_then(|raw| url::Url::parse(raw).ok())
    {
        let mut target = target;
        {
            let mut query = target.query_pairs_mut();
            query.append_pair("connection", integration.key().as_str());
            match error {
                None => query.append_pair("status", "connected"),
                Some(code) => query
                    .append_pair("status", "error")
                    .append_pair("error", code),
            };
        }
        return (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response();
    }
    let name = html_escape(&integration.spec().display_name);
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Connected</title></head>\
         <body style=\"font-family:system-ui;margin:4rem auto;max-width:32rem\"><h1>{name} connected</h1>\
         <p>You can close this window.</p></body></html>"
    ))
    .into_response()
}

pub(super) fn html_escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
