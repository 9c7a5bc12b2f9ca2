//! Who is signed in: the session cookie, the API key behind it, the CSRF
//! check of every form.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};
use tokenvault::admin_sessions::{self, AdminSession};
use tokenvault::api_keys::Scope;

use super::ConsoleError;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::{AppState, auth};

/// The session cookie's name.
pub const COOKIE: &str = "tokenvault_admin";
/// The most a console form may send.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A signed-in operator: a live session whose API key is still valid and
/// has the admin scope.
pub struct Operator {
    pub session: AdminSession,
    /// The session cookie (to end it on logout).
    pub cookie: SecretString,
    pub caller: auth::Caller,
}

/// The value of our cookie in a `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    crate::http::flows::browser::cookie(headers, COOKIE).map(str::to_owned)
}

/// `Set-Cookie` for a new session (`Some`) or to clear it (`None`).
pub fn set_cookie(value: Option<&SecretString>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = match value {
        Some(value) => format!(
            "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            value.expose_secret(),
            super::SESSION_TTL.num_seconds()
        ),
        None => format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&cookie).expect("a generated cookie is a valid header")
}

/// Where a request without a live session goes: the sign-in page (a
/// navigation), or a 401 (a program or a form post).
fn signed_out(parts: &Parts, why: Option<&str>, secure: bool) -> Response {
    let wants_page = parts.method == Method::GET
        && parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    let mut response = if wants_page {
        let target = match why {
            Some(why) => format!("/admin/login?why={why}"),
            None => "/admin/login".to_owned(),
        };
        Redirect::to(&target).into_response()
    } else {
        ConsoleError(ApiError::new(
            ErrorCode::Unauthorized,
            "sign in to the admin console first (POST /admin/login)",
        ))
        .into_response()
    };
    if why.is_some() {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, set_cookie(None, secure));
    }
    response
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(cookie) = session_cookie(&parts.headers) else {
            return Err(signed_out(parts, None, state.console.secure_cookie));
        };
        let now = state.vault.clock().now();
        let session = state
            .console
            .sessions
            .find(&cookie, now)
            .await
            .map_err(|err| ConsoleError(ApiError::internal(err)).into_response())?;
        let Some(session) = session else {
            return Err(signed_out(
                parts,
                Some("expired"),
                state.console.secure_cookie,
            ));
        };
        let digest: Option<auth::KeyDigest> = hex::decode(&session.key_digest)
            .ok()
            .and_then(|bytes| bytes.try_into().ok());
        let verdict = match digest {
            Some(digest) => state.api_keys.verify_digest(digest).await,
            None => Err(auth::AuthError::Invalid),
        };
        match verdict {
            Ok(caller) if caller.scope.allows(Scope::Admin) => Ok(Self {
                session,
                cookie: SecretString::from(cookie),
                caller,
            }),
            Err(auth::AuthError::Unavailable(err)) => Err(ConsoleError(ApiError::new(
                ErrorCode::DatabaseUnavailable,
                format!("cannot check the session's API key: {err}"),
            ))
            .into_response()),
            // Revoked, unknown, or no longer admin: every session of the key
            // is over.
            _ => {
                if let Err(err) = state
                    .console
                    .sessions
                    .delete_for_key(&session.key_digest)
                    .await
                {
                    tracing::warn!(error = %err, "ending a revoked key's console session failed");
                }
                Err(signed_out(
                    parts,
                    Some("revoked"),
                    state.console.secure_cookie,
                ))
            }
        }
    }
}

/// Whether a state-changing request comes from our own pages. Browsers
/// say so in `Sec-Fetch-Site` (only `same-origin` passes); without it, an
/// `Origin` must be the service's public origin or the origin the request
/// was addressed to. (`Origin: null`, which our `no-referrer` pages make
/// browsers send, and a request with neither header are left to the CSRF
/// token check.)
pub fn same_origin(headers: &HeaderMap, state: &AppState) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin";
    }
    let Some(sent) = header("origin").filter(|origin| *origin != "null") else {
        return true;
    };
    let Ok(sent) = url::Url::parse(sent) else {
        return false;
    };
    let sent = sent.origin().ascii_serialization();
    if sent == state.settings.public_url.origin().ascii_serialization() {
        return true;
    }
    header("host")
        .is_some_and(|host| sent == format!("http://{host}") || sent == format!("https://{host}"))
}

/// A console form's fields, after the checks every state-changing request
/// passes: our own origin, and (for a signed-in operator) the session's
/// CSRF token in the `csrf` field.
pub struct Form(pub HashMap<String, String>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Checks the form's `csrf` field against the operator's session.
    pub fn check_csrf(&self, operator: &Operator) -> Result<(), ConsoleError> {
        let sent = self.get("csrf").unwrap_or_default().as_bytes();
        let expected = operator.session.csrf_token.as_bytes();
        let equal = sent.len() == expected.len()
            && sent
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if equal {
            Ok(())
        } else {
            Err(csrf_refused(
                "the form's CSRF token is missing or wrong; reload the page and try again",
            ))
        }
    }
}

pub fn csrf_refused(message: &str) -> ConsoleError {
    ConsoleError(ApiError::new(ErrorCode::CsrfFailed, message.to_owned()))
}

impl FromRequest<AppState> for Form {
    type Rejection = ConsoleError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ConsoleError> {
        if !same_origin(request.headers(), state) {
            return Err(csrf_refused("this form was sent from another site"));
        }
        let body = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                ConsoleError(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("a console form is at most {MAX_FORM_BYTES} bytes"),
                ))
            })?;
        Ok(Self(
            url::form_urlencoded::parse(&body)
                .into_owned()
                .collect::<HashMap<_, _>>(),
        ))
    }
}

/// Opens a session for a verified admin key; the answer sets its cookie.
pub async fn open(
    state: &AppState,
    caller: &auth::Caller,
    key_digest: &auth::KeyDigest,
) -> Result<SecretString, ConsoleError> {
    let opened = admin_sessions::open(
        &caller.key_id,
        &hex::encode(key_digest),
        state.vault.clock().now(),
        super::SESSION_TTL,
    );
    state
        .console
        .sessions
        .insert(&opened)
        .await
        .map_err(|err| ConsoleError(ApiError::internal(err)))?;
    Ok(opened.cookie)
}
