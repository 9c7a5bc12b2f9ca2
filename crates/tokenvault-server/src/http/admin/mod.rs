//! The admin console (`/admin`): operators sign in with an admin-scope API
//! key and get a session cookie; the pages show what `/v1` shows (the
//! summary, listing and history handlers are called as functions, so the
//! numbers are the API's) and act on it with forms.
//!
//! Security: the session cookie is `HttpOnly`, `SameSite=Strict`, `Secure`
//! in production, 8 h, and stored only as a digest; every request checks
//! the session's API key again (through the key cache: a revoked key ends
//! its sessions within [`super::KEY_CACHE_TTL`]); every state-changing form
//! carries the session's CSRF token and must come from our own origin;
//! sign-in attempts are rate-limited per client address; every page has a
//! strict CSP, `no-store` and `no-referrer`.

mod session;
mod views;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokenvault::admin_sessions::AdminSessionStore;
use tokenvault::api_keys::ApiKeyStore;

use super::AppState;
use super::error::{ApiError, ErrorCode};

pub use session::{COOKIE, Operator};

/// How long a console session lasts.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::hours(8);
/// Sign-in attempts per client address per minute (a burst of this many,
/// then one every `60 / n` s).
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;

/// The console's services.
pub struct Console {
    pub sessions: Arc<dyn AdminSessionStore>,
    /// API keys, for the keys page.
    pub keys: Arc<dyn ApiKeyStore>,
    /// The master key ring's ids, the active one first.
    pub master_keys: Vec<String>,
    /// `Secure` on the session cookie.
    pub secure_cookie: bool,
    login_limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl Console {
    pub fn new(
        sessions: Arc<dyn AdminSessionStore>,
        keys: Arc<dyn ApiKeyStore>,
        master_keys: Vec<String>,
        secure_cookie: bool,
    ) -> Self {
        let per_minute = NonZeroU32::new(LOGIN_ATTEMPTS_PER_MINUTE).expect("non-zero");
        Self {
            sessions,
            keys,
            master_keys,
            secure_cookie,
            login_limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
        }
    }

    /// Takes one sign-in attempt from `address`'s allowance; `Err`: seconds
    /// until the next is allowed.
    fn attempt_login(&self, address: IpAddr) -> Result<(), u64> {
        self.login_limiter
            .check_key(&address)
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                wait.as_secs().max(1)
            })?;
        // Bounded memory under a flood of addresses.
        if self.login_limiter.len() > 100_000 {
            self.login_limiter.retain_recent();
        }
        Ok(())
    }
}

/// The client's address, put on `/admin/login` requests by the listener
/// (what sign-in attempts are limited by).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// Every console route. The scope is visible here: [`views::login`],
/// [`views::do_login`] and the stylesheet need nothing; every other handler
/// takes an [`Operator`] (a live session of a valid admin key), and every
/// `post` handler checks the CSRF token through [`session::Form`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(views::overview))
        .route("/admin/login", get(views::login).post(views::do_login))
        .route("/admin/logout", post(views::logout))
        .route(
            "/admin/integrations/{key}/reset",
            post(views::reset_integration),
        )
        .route("/admin/connections", get(views::connections))
        .route("/admin/connections/{id}", get(views::connection))
        .route(
            "/admin/connections/{id}/refresh",
            post(views::refresh_connection),
        )
        .route(
            "/admin/connections/{id}/revoke",
            get(views::confirm_revoke).post(views::revoke_connection),
        )
        .route(
            "/admin/connections/{id}/reconnect-link",
            post(views::reconnect_link),
        )
        .route("/admin/bulk", get(views::bulk_actions))
        .route("/admin/bulk/{id}", get(views::bulk_action))
        .route("/admin/bulk/{id}/live", get(views::bulk_action_live))
        .route("/admin/bulk/{id}/cancel", post(views::cancel_bulk_action))
        .route("/admin/keys", get(views::keys).post(views::create_key))
        .route("/admin/keys/{id}/revoke", post(views::revoke_key))
        .route("/ui/admin.css", get(views::stylesheet))
        .route("/ui/admin.js", get(views::script))
        .layer(axum::middleware::map_response(harden))
}

/// Headers of every console answer: nothing cached, no `Referer`, nothing
/// framed, no script or style but our own files, forms only to ourselves.
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let is_asset = headers
        .get(header::CACHE_CONTROL)
        .is_some_and(|value| value.as_bytes().starts_with(b"public"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    for (name, value) in [
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A console failure, as a page (or JSON for a program).
#[derive(Debug)]
pub struct ConsoleError(pub ApiError);

impl From<ApiError> for ConsoleError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

#[derive(Template)]
#[template(path = "admin/error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    heading: String,
    message: &'a str,
    code: &'a str,
    request_id: String,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let err = self.0;
        let heading = match err.status {
            StatusCode::NOT_FOUND => "Not found".to_owned(),
            StatusCode::FORBIDDEN => "Refused".to_owned(),
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts".to_owned(),
            status if status.is_client_error() => "That did not work".to_owned(),
            _ => "Something went wrong".to_owned(),
        };
        let page = ErrorPage {
            title: &heading.clone(),
            heading,
            message: &err.message,
            code: err.code.as_str(),
            request_id: super::error::request_id(),
        };
        let mut response = match page.render() {
            Ok(html) => (err.status, Html(html)).into_response(),
            Err(render) => ApiError::internal(render).into_response(),
        };
        response.headers_mut().insert(
            "tokenvault-error",
            HeaderValue::from_static(err.code.as_str()),
        );
        if let Some(secs) = err.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

pub(super) fn not_found(what: &str) -> ConsoleError {
    ConsoleError(ApiError::new(
        ErrorCode::NotFound,
        format!("no such {what}"),
    ))
}
