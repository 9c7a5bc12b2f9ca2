//! The browser's side of a flow: the connect link (a page, or straight to
//! the provider), the cookie that binds the flow to the browser, and the
//! result it ends with.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use tokenvault::connect::Lookup;
use tokenvault::integrations::Integration;
use tokenvault::oauth_state::{FlowOutcome, FlowStatus, StateRecord};

use crate::http::error::{ApiError, ApiPath, ApiQuery, ErrorCode};
use crate::http::{AppState, pages};

const LINK_USED: &str =
    "this connect link has expired or was already used; ask the application for a new one";

/// `GET /connect/{id}`: a connect link. A session that shows a page (a
/// picker, `connect_ui = "page"`) gets the Connect UI page, whose buttons
/// lead to [`start_chosen`]; any other is opened at once ([`start`]). A link
/// already opened shows how its flow went (reload-safe), an unknown one
/// that it expired. Programs (no `text/html` in `Accept`) are never shown
/// a page: the link opens, or they get the JSON outcome or error.
#[tracing::instrument(skip_all)]
pub async fn start_connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    query: Result<ApiQuery<Opened>, ApiError>,
) -> Response {
    let popup = match query.and_then(|ApiQuery(opened)| popup_origin(&state, opened.popup)) {
        Ok(popup) => popup,
        Err(err) => {
            let mut response = for_browser(&state, &headers, err);
            pages::harden(&mut response);
            return response;
        }
    };
    let mut response = match state.connect.lookup(&id).await {
        Ok(Lookup::Pending(session)) if shows_page(&session) && wants_html(&headers) => {
            pages::connect_page(&state, &id, &session, popup.as_deref())
        }
        Ok(Lookup::Pending(_)) => match start(&state, &id, None, popup).await {
            Ok(response) => response,
            Err(err) => for_browser(&state, &headers, err),
        },
        Ok(Lookup::Opened(outcome)) => shown_outcome(&state, &headers, &id, &outcome).await,
        Ok(Lookup::Unknown) => expired(&state, &headers),
        Err(err) => for_browser(&state, &headers, err.into()),
    };
    pages::harden(&mut response);
    response
}

/// How a connect link was opened: `popup` is the origin of the page whose
/// `connect.js` opened it in a popup.
#[derive(Debug, serde::Deserialize)]
pub struct Opened {
    popup: Option<String>,
}

/// The integration picked on the connect page.
#[derive(Debug, serde::Deserialize)]
pub struct Chosen {
    integration: Option<String>,
    popup: Option<String>,
}

/// A popup's opener origin, which the result page will post the outcome
/// to: only an origin of `allowed_redirect_origins` (as `redirect_to`).
fn popup_origin(state: &AppState, raw: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    url::Url::parse(&raw)
        .ok()
        .and_then(|url| state.settings.allowed_origin(&url))
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRedirectTo,
                "this page's origin may not receive the outcome of a connect popup: it is not in allowed_redirect_origins",
            )
        })
}

/// `GET /connect/{id}/start?integration=KEY`: a button of the connect page;
/// opens the link for the integration chosen (one the session offers).
#[tracing::instrument(skip_all)]
pub async fn start_chosen(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    query: Result<ApiQuery<Chosen>, ApiError>,
) -> Response {
    let chosen = query.and_then(|ApiQuery(chosen)| {
        let popup = popup_origin(&state, chosen.popup)?;
        Ok((chosen.integration, popup))
    });
    let mut response = match chosen {
        Ok((integration, popup)) => match start(&state, &id, integration.as_deref(), popup).await {
            Ok(response) => response,
            // A second click, or a reload of the button's URL.
            Err(err) if err.code == ErrorCode::InvalidState => {
                match state.connect.lookup(&id).await {
                    Ok(Lookup::Opened(outcome)) => {
                        shown_outcome(&state, &headers, &id, &outcome).await
                    }
                    _ => expired(&state, &headers),
                }
            }
            Err(err) => for_browser(&state, &headers, err),
        },
        Err(err) => for_browser(&state, &headers, err),
    };
    pages::harden(&mut response);
    response
}

/// `GET /connect/{id}/result`: how the link's flow went. A browser lands
/// here after the callback, and every reload shows the same page.
#[tracing::instrument(skip_all)]
pub async fn result(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Response {
    let mut response = match state.connect.lookup(&id).await {
        Ok(Lookup::Opened(outcome)) => shown_outcome(&state, &headers, &id, &outcome).await,
        Ok(Lookup::Pending(_)) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/connect/{id}"))],
        )
            .into_response(),
        Ok(Lookup::Unknown) => expired(&state, &headers),
        Err(err) => for_browser(&state, &headers, err.into()),
    };
    pages::harden(&mut response);
    response
}

/// A picker always shows its page; otherwise the session says (its request,
/// or the `connect_ui` setting when it was created).
fn shows_page(session: &StateRecord) -> bool {
    session.show_page || !session.offered.is_empty()
}

/// An opened link's outcome: its page for a browser, JSON for a program.
async fn shown_outcome(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    outcome: &FlowOutcome,
) -> Response {
    let session = state
        .states
        .peek(FlowOutcome::key_for(id).as_str())
        .await
        .ok()
        .flatten();
    if wants_html(headers) {
        return pages::result_page(state, pages::Shown::Outcome(outcome), session.as_ref());
    }
    match session {
        Some(session) if outcome.status != FlowStatus::Started => {
            pages::outcome_json(outcome, &session)
        }
        _ => ApiError::new(ErrorCode::InvalidState, LINK_USED).into_response(),
    }
}

fn expired(state: &AppState, headers: &HeaderMap) -> Response {
    if wants_html(headers) {
        pages::result_page(state, pages::Shown::Expired, None)
    } else {
        ApiError::new(ErrorCode::InvalidState, LINK_USED).into_response()
    }
}

/// Opens the link: consumes the session, creates the one-time OAuth state
/// (with a PKCE verifier where the provider supports it) and sends the
/// browser to the provider. Also binds the flow to this browser (unless
/// the session is in confirm mode): a random nonce goes into an HttpOnly,
/// SameSite=Lax cookie scoped to the callback path, its hash into the
/// state, and the callback refuses the state without it.
pub(super) async fn start(
    state: &AppState,
    id: &str,
    chosen: Option<&str>,
    popup: Option<String>,
) -> Result<Response, ApiError> {
    let started = state.connect.start(id, chosen, popup).await?;
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
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Whether the request came from a browser page load rather than a program.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// An error on a browser route: a page for a browser, the JSON envelope
/// for anything else.
pub(super) fn for_browser(state: &AppState, headers: &HeaderMap, err: ApiError) -> Response {
    if wants_html(headers) {
        pages::error_page(state, &err)
    } else {
        err.into_response()
    }
}

/// The end of a browser flow: in a `connect.js` popup, the result page
/// (which tells the opener); back to the app when it gave `redirect_to`;
/// else to the link's result page (reload-safe) for a browser, or the
/// outcome as JSON for a program.
pub(super) fn finished(
    headers: &HeaderMap,
    record: &StateRecord,
    outcome: &FlowOutcome,
    integration: &Integration,
) -> Response {
    if let Some(mut target) = record
        .redirect_to
        .as_deref()
        .filter(|_| record.popup_origin.is_none())
        .and_then(|raw| url::Url::parse(raw).ok())
    {
        {
            let mut query = target.query_pairs_mut();
            query.append_pair("connection", integration.key().as_str());
            match &outcome.code {
                None => query.append_pair("status", "connected"),
                Some(code) => query
                    .append_pair("status", "error")
                    .append_pair("error", code),
            };
        }
        return (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response();
    }
    if !wants_html(headers) && record.popup_origin.is_none() {
        return pages::outcome_json(outcome, record);
    }
    let session = record.connect_session.as_deref().unwrap_or_default();
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/connect/{session}/result"))],
    )
        .into_response()
}
