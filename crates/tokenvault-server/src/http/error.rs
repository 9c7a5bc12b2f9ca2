//! Every error leaves as `{"error": "<stable_code>", "message": "…", "request_id": "…"}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware: the
    /// header value itself, which the response echoes without a copy.
    pub static REQUEST_ID: axum::http::HeaderValue;
}

/// The current request's id, empty outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

pub use super::error_code::ErrorCode;

/// An error with a stable machine-readable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Answered with the code's own status ([`ErrorCode::status`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Only the authorization callback answers a provider's error with
    /// another status (400: the user's browser brought it, nothing failed here).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_retry_after(mut self, delay: std::time::Duration) -> Self {
        // Round up: "retry after 0 s" would invite an immediate retry.
        self.retry_after = Some(delay.as_secs() + u64::from(delay.subsec_nanos() > 0));
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
}

impl ApiError {
    /// Failures the caller cannot fix: 503 `database_unavailable` (with a
    /// `Retry-After`) when the database cannot be reached, which heals by
    /// itself; otherwise a bug or corrupt data, logged in full and
    /// answered 500 `internal` without detail.
    pub fn internal(err: impl Failure) -> Self {
        if err.database_unavailable() {
            tracing::warn!(error = %err, "database unavailable");
            return Self::database_unavailable();
        }
        tracing::error!(error = %err, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; see the service log for this request id",
        )
    }

    pub fn database_unavailable() -> Self {
        Self::new(
            ErrorCode::DatabaseUnavailable,
            "the database is unavailable; try again shortly",
        )
        .with_retry_after(std::time::Duration::from_secs(1))
    }
}

/// An error an endpoint cannot turn into a client error: does it mean the
/// database is unreachable (a 503 that heals by itself) rather than a bug?
pub trait Failure: std::fmt::Display {
    fn database_unavailable(&self) -> bool {
        false
    }
}

impl Failure for tokenvault::store::StoreError {
    fn database_unavailable(&self) -> bool {
        self.is_unavailable()
    }
}

impl Failure for tokenvault::vault::VaultError {
    fn database_unavailable(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_unavailable())
    }
}

impl Failure for tokenvault::api_keys::ApiKeyError {
    fn database_unavailable(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_unavailable())
    }
}

impl Failure for String {}
impl Failure for url::ParseError {}
impl Failure for askama::Error {}

/// Malformed or mistyped bodies all answer 400 `invalid_json`; serde's
/// message names the offending field. A body over the size limit is the
/// client's size problem, not its syntax: 413 `payload_too_large`.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(ErrorCode::PayloadTooLarge, rejection.body_text());
        }
        Self::new(ErrorCode::InvalidJson, rejection.body_text())
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code (`invalid_user_id`, `needs_reauth`, …);
    /// each response lists the codes it can carry.
    #[schema(examples("connection_not_found"))]
    pub error: String,
    /// What went wrong and what to do, for humans.
    pub message: String,
    /// The request's id (also in `x-request-id`), to find it in the logs.
    pub request_id: String,
}

/// `axum::Json` whose rejection is our error envelope.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A query string that does not fit (a repeated parameter, bad
/// percent-encoding) answers 400 `invalid_query`.
impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidQuery, rejection.body_text())
    }
}

/// `axum::extract::Query` whose rejection is our error envelope.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// A path segment that is not UTF-8 once percent-decoded answers 400
/// `invalid_path`; anything else is a routing bug.
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status() == StatusCode::BAD_REQUEST {
            Self::new(ErrorCode::InvalidPath, rejection.body_text())
        } else {
            Self::internal(rejection.body_text())
        }
    }
}

/// `axum::extract::Path` whose rejection is our error envelope.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The header on every error tokenvault answers itself: its error code.
pub const ERROR_HEADER: &str = "tokenvault-error";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = request_id();
        let body = ErrorBody {
            error: self.code.as_str().to_owned(),
            message: self.message,
            request_id,
        };
        let mut response = (self.status, Json(body)).into_response();
        // Marks tokenvault's own refusal, so a client of the proxy can tell it
        // from the provider's answer (the proxy drops provider headers by
        // this name).
        response.headers_mut().insert(
            ERROR_HEADER,
            axum::http::HeaderValue::from_static(self.code.as_str()),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl Failure for tokenvault::device::DeviceFlowError {
    fn database_unavailable(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_unavailable())
    }
}

/// The state store has its own 503 (`state_store_unavailable`); what reaches
/// here is corrupt data.
impl Failure for tokenvault::oauth_state::StateError {}
