//! Every error code the API answers, with its HTTP status and what it
//! means. The README's error table is generated from [`ErrorCode::ALL`] (a
//! test compares them), and handlers can only answer codes listed here.

use axum::http::StatusCode;

/// A stable machine-readable error code (`{"error": "<code>", …}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// body is not the expected JSON (the message names the field)
    InvalidJson,
    /// a query string that cannot be read (e.g. a repeated `min_ttl`)
    InvalidQuery,
    /// a path segment that is not UTF-8 once percent-decoded
    InvalidPath,
    /// user id empty, too long (> 128) or with characters outside `A-Z a-z 0-9 - _ . @ : + =`
    InvalidUserId,
    /// a scope is empty or contains whitespace (import: also `scopes` that are neither a list of strings nor one string, or over 4 KiB in all)
    InvalidScopes,
    /// import: an access or refresh token that is empty, longer than 16 KiB, or has characters other than visible ASCII (the message gives the position, never the token)
    InvalidToken,
    /// import: `expires_at` is neither RFC 3339 nor whole Unix seconds, before 2000, or more than 10 years ahead
    InvalidExpiresAt,
    /// import: the access token has expired and there is no refresh token to renew it
    TokenExpired,
    /// import: `metadata` is not a JSON object, or is over 16 KiB
    InvalidMetadata,
    /// import: `force` is not `true` or `false`
    InvalidForce,
    /// `min_ttl` is not a whole number of seconds from 0 to 86400
    InvalidMinTtl,
    /// an integration key with characters outside `a-z 0-9 - _`
    InvalidIntegration,
    /// a `provider_params` entry the provider does not define, or an empty/oversized value
    InvalidProviderParams,
    /// `connection_params` of a connect session: a parameter the provider does not take, a missing one (the message names it) or a value failing its pattern; nothing is stored
    InvalidConnectionParams,
    /// the stored connection has no valid connection parameters for its provider's URLs (stored before the entry declared them, or no longer passing its pattern): connect the user again; nothing was sent
    ConnectionParamsUnusable,
    /// `redirect_to` is not an absolute URL on an allowed origin
    InvalidRedirectTo,
    /// callback or connect link with an unknown, expired or already used state
    InvalidState,
    /// callback in another browser than the one that opened the connect link (see "Connecting a user" in the README)
    BrowserMismatch,
    /// `/oauth/{integration}/callback` with a state issued for another integration
    StateMismatch,
    /// callback with neither `code` nor `error`
    MissingCode,
    /// the integration's provider has no device authorization endpoint
    DeviceFlowUnsupported,
    /// RFC 9207: the provider advertises `iss` and it is missing or wrong
    IssuerMismatch,
    /// the user declined at the provider (the authorization callback's `error=access_denied`)
    AccessDenied,
    /// the proxied path could leave the API base URL (absolute URL, `//host`, `.`/`..` segments also percent-encoded, encoded `/` or `\`, control characters) or is malformed; nothing is sent
    InvalidProxyPath,
    /// the integration's provider has no `api_base_url` to proxy to
    NoApiBaseUrl,
    /// a proxied request header that cannot be sent
    InvalidHeader,
    /// a bulk action body that does not validate; the message starts with the field (`users`, `request.path`, `not_before`, …)
    InvalidBulkAction,
    /// a malformed bulk action id
    InvalidBulkActionId,
    /// a bulk action item `state` filter that is not an item state
    InvalidItemState,
    /// a `limit` or `after` that cannot page a list
    InvalidPage,
    /// a connection `status` filter that is not a connection status
    InvalidStatus,
    /// an `after` cursor this service did not hand out
    InvalidCursor,
    /// missing, unknown or revoked API key
    Unauthorized,
    /// the key's scope does not cover the endpoint (the message names both)
    Forbidden,
    /// admin console: a state-changing request without its session's CSRF token, or sent from another origin
    CsrfFailed,
    /// confirm mode: the code was confirmed for another user than the session's; the flow is discarded
    UserMismatch,
    /// no such endpoint
    NotFound,
    /// confirm mode: unknown, expired or already used confirmation code
    ConfirmationNotFound,
    /// no integration with that key is configured
    UnknownIntegration,
    /// no catalog entry with that key
    UnknownProvider,
    /// no device session with that id
    UnknownDeviceSession,
    /// the provider has no profile endpoint
    ProfileNotSupported,
    /// no bulk action with that id
    BulkActionNotFound,
    /// the user has no (or a disconnected) connection to that integration
    ConnectionNotFound,
    /// proxy: CONNECT and TRACE are not forwarded
    MethodNotAllowed,
    /// cancel: the action already completed or was cancelled
    BulkActionFinished,
    /// import: tokenvault refreshed this connection itself and its token expires no earlier than the imported one; nothing written (`?force=true` replaces it anyway)
    StoredTokensNewer,
    /// the grant was revoked or expired (`needs_reauth`/`expired`): send the user through a connect session again
    NeedsReauth,
    /// the request body is over the size limit
    PayloadTooLarge,
    /// admin console: too many sign-in attempts from this address (with `Retry-After`)
    TooManyLoginAttempts,
    /// logged with the request id
    Internal,
    /// the provider's token endpoint failed to exchange the authorization code
    TokenExchangeFailed,
    /// the provider's token, device or profile endpoint failed; in the authorization callback (400) the provider answered with an error other than `access_denied`
    ProviderError,
    /// proxy/profile: no answer from the provider's API (connection refused, timeout)
    ProviderUnreachable,
    /// the request ran longer than `request_timeout_secs` (a refresh it started still completes)
    RequestTimeout,
    /// the database is unreachable (any endpoint; `Retry-After: 1`); it heals by itself within seconds of the database returning, and no refreshed token is lost meanwhile (docs/refresh-protocol.md, R5)
    DatabaseUnavailable,
    /// every one of `max_connections` is busy with a request (`Retry-After: 1`)
    TooManyConnections,
    /// import: the connection kept changing (a refresh in flight) for longer than a refresh lease; retry
    ConnectionBusy,
    /// Redis or the state table cannot be reached
    StateStoreUnavailable,
    /// the token has expired (or, proxy/profile, the provider refused it) and the provider cannot refresh it now (5xx, timeout, 429, circuit open); `Retry-After` says when to try again
    ProviderUnavailable,
    /// the token has expired and the provider rejects the integration's client credentials
    IntegrationMisconfigured,
    /// the integration's OIDC discovery has not succeeded since start-up (the issuer is down or unreachable); retried in the background
    IntegrationUnavailable,
}

impl ErrorCode {
    /// Every code, in the order of the README table (by status).
    pub const ALL: &[ErrorCode] = &[
        Self::InvalidJson,
        Self::InvalidQuery,
        Self::InvalidPath,
        Self::InvalidUserId,
        Self::InvalidScopes,
        Self::InvalidToken,
        Self::InvalidExpiresAt,
        Self::TokenExpired,
        Self::InvalidMetadata,
        Self::InvalidForce,
        Self::InvalidMinTtl,
        Self::InvalidIntegration,
        Self::InvalidProviderParams,
        Self::InvalidConnectionParams,
        Self::InvalidRedirectTo,
        Self::InvalidState,
        Self::BrowserMismatch,
        Self::StateMismatch,
        Self::MissingCode,
        Self::DeviceFlowUnsupported,
        Self::IssuerMismatch,
        Self::AccessDenied,
        Self::InvalidProxyPath,
        Self::NoApiBaseUrl,
        Self::InvalidHeader,
        Self::InvalidBulkAction,
        Self::InvalidBulkActionId,
        Self::InvalidItemState,
        Self::InvalidPage,
        Self::InvalidStatus,
        Self::InvalidCursor,
        Self::Unauthorized,
        Self::Forbidden,
        Self::CsrfFailed,
        Self::UserMismatch,
        Self::NotFound,
        Self::ConfirmationNotFound,
        Self::UnknownIntegration,
        Self::UnknownProvider,
        Self::UnknownDeviceSession,
        Self::ProfileNotSupported,
        Self::BulkActionNotFound,
        Self::ConnectionNotFound,
        Self::MethodNotAllowed,
        Self::BulkActionFinished,
        Self::StoredTokensNewer,
        Self::NeedsReauth,
        Self::ConnectionParamsUnusable,
        Self::PayloadTooLarge,
        Self::TooManyLoginAttempts,
        Self::Internal,
        Self::TokenExchangeFailed,
        Self::ProviderError,
        Self::ProviderUnreachable,
        Self::RequestTimeout,
        Self::DatabaseUnavailable,
        Self::TooManyConnections,
        Self::ConnectionBusy,
        Self::StateStoreUnavailable,
        Self::ProviderUnavailable,
        Self::IntegrationMisconfigured,
        Self::IntegrationUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidQuery => "invalid_query",
            Self::InvalidPath => "invalid_path",
            Self::InvalidUserId => "invalid_user_id",
            Self::InvalidScopes => "invalid_scopes",
            Self::InvalidToken => "invalid_token",
            Self::InvalidExpiresAt => "invalid_expires_at",
            Self::TokenExpired => "token_expired",
            Self::InvalidMetadata => "invalid_metadata",
            Self::InvalidForce => "invalid_force",
            Self::InvalidMinTtl => "invalid_min_ttl",
            Self::InvalidIntegration => "invalid_integration",
            Self::InvalidProviderParams => "invalid_provider_params",
            Self::InvalidConnectionParams => "invalid_connection_params",
            Self::ConnectionParamsUnusable => "connection_params_unusable",
            Self::InvalidRedirectTo => "invalid_redirect_to",
            Self::InvalidState => "invalid_state",
            Self::BrowserMismatch => "browser_mismatch",
            Self::StateMismatch => "state_mismatch",
            Self::MissingCode => "missing_code",
            Self::DeviceFlowUnsupported => "device_flow_unsupported",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::AccessDenied => "access_denied",
            Self::InvalidProxyPath => "invalid_proxy_path",
            Self::NoApiBaseUrl => "no_api_base_url",
            Self::InvalidHeader => "invalid_header",
            Self::InvalidBulkAction => "invalid_bulk_action",
            Self::InvalidBulkActionId => "invalid_bulk_action_id",
            Self::InvalidItemState => "invalid_item_state",
            Self::InvalidPage => "invalid_page",
            Self::InvalidStatus => "invalid_status",
            Self::InvalidCursor => "invalid_cursor",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::CsrfFailed => "csrf_failed",
            Self::UserMismatch => "user_mismatch",
            Self::NotFound => "not_found",
            Self::ConfirmationNotFound => "confirmation_not_found",
            Self::UnknownIntegration => "unknown_integration",
            Self::UnknownProvider => "unknown_provider",
            Self::UnknownDeviceSession => "unknown_device_session",
            Self::ProfileNotSupported => "profile_not_supported",
            Self::BulkActionNotFound => "bulk_action_not_found",
            Self::ConnectionNotFound => "connection_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BulkActionFinished => "bulk_action_finished",
            Self::StoredTokensNewer => "stored_tokens_newer",
            Self::NeedsReauth => "needs_reauth",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManyLoginAttempts => "too_many_login_attempts",
            Self::Internal => "internal",
            Self::TokenExchangeFailed => "token_exchange_failed",
            Self::ProviderError => "provider_error",
            Self::ProviderUnreachable => "provider_unreachable",
            Self::RequestTimeout => "request_timeout",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::TooManyConnections => "too_many_connections",
            Self::ConnectionBusy => "connection_busy",
            Self::StateStoreUnavailable => "state_store_unavailable",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::IntegrationMisconfigured => "integration_misconfigured",
            Self::IntegrationUnavailable => "integration_unavailable",
        }
    }

    /// The status this code is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::InvalidQuery
            | Self::InvalidPath
            | Self::InvalidUserId
            | Self::InvalidScopes
            | Self::InvalidToken
            | Self::InvalidExpiresAt
            | Self::TokenExpired
            | Self::InvalidMetadata
            | Self::InvalidForce
            | Self::InvalidMinTtl
            | Self::InvalidIntegration
            | Self::InvalidProviderParams
            | Self::InvalidConnectionParams
            | Self::InvalidRedirectTo
            | Self::InvalidState
            | Self::BrowserMismatch
            | Self::StateMismatch
            | Self::MissingCode
            | Self::DeviceFlowUnsupported
            | Self::IssuerMismatch
            | Self::AccessDenied
            | Self::InvalidProxyPath
            | Self::NoApiBaseUrl
            | Self::InvalidHeader
            | Self::InvalidBulkAction
            | Self::InvalidBulkActionId
            | Self::InvalidItemState
            | Self::InvalidPage
            | Self::InvalidStatus
            | Self::InvalidCursor => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::UserMismatch | Self::CsrfFailed => StatusCode::FORBIDDEN,
            Self::NotFound
            | Self::ConfirmationNotFound
            | Self::UnknownIntegration
            | Self::UnknownProvider
            | Self::UnknownDeviceSession
            | Self::ProfileNotSupported
            | Self::BulkActionNotFound
            | Self::ConnectionNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BulkActionFinished
            | Self::StoredTokensNewer
            | Self::NeedsReauth
            | Self::ConnectionParamsUnusable => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyLoginAttempts => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TokenExchangeFailed | Self::ProviderError | Self::ProviderUnreachable => {
                StatusCode::BAD_GATEWAY
            }
            Self::RequestTimeout
            | Self::DatabaseUnavailable
            | Self::TooManyConnections
            | Self::ConnectionBusy
            | Self::StateStoreUnavailable
            | Self::ProviderUnavailable
            | Self::IntegrationMisconfigured
            | Self::IntegrationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// When it is answered (one README table row).
    pub const fn description(self) -> &'static str {
        match self {
            Self::InvalidJson => "body is not the expected JSON (the message names the field)",
            Self::InvalidQuery => "a query string that cannot be read (e.g. a repeated `min_ttl`)",
            Self::InvalidPath => "a path segment that is not UTF-8 once percent-decoded",
            Self::InvalidUserId => {
                "user id empty, too long (> 128) or with characters outside `A-Z a-z 0-9 - _ . @ : + =`"
            }
            Self::InvalidScopes => {
                "a scope is empty or contains whitespace (import: also `scopes` that are neither a list of strings nor one string, or over 4 KiB in all)"
            }
            Self::InvalidToken => {
                "import: an access or refresh token that is empty, longer than 16 KiB, or has characters other than visible ASCII (the message gives the position, never the token)"
            }
            Self::InvalidExpiresAt => {
                "import: `expires_at` is neither RFC 3339 nor whole Unix seconds, before 2000, or more than 10 years ahead"
            }
            Self::TokenExpired => {
                "import: the access token has expired and there is no refresh token to renew it"
            }
            Self::InvalidMetadata => "import: `metadata` is not a JSON object, or is over 16 KiB",
            Self::InvalidForce => "import: `force` is not `true` or `false`",
            Self::InvalidMinTtl => "`min_ttl` is not a whole number of seconds from 0 to 86400",
            Self::InvalidIntegration => "an integration key with characters outside `a-z 0-9 - _`",
            Self::InvalidProviderParams => {
                "a `provider_params` entry the provider does not define, or an empty/oversized value"
            }
            Self::InvalidConnectionParams => {
                "`connection_params` of a connect session: a parameter the provider does not take, a missing one (the message names it) or a value failing its pattern; nothing is stored"
            }
            Self::ConnectionParamsUnusable => {
                "the stored connection has no valid connection parameters for its provider's URLs (stored before the entry declared them, or no longer passing its pattern): connect the user again; nothing was sent"
            }
            Self::InvalidRedirectTo => "`redirect_to` is not an absolute URL on an allowed origin",
            Self::InvalidState => {
                "callback or connect link with an unknown, expired or already used state"
            }
            Self::BrowserMismatch => {
                "callback in another browser than the one that opened the connect link (see [Connecting a user](#connecting-a-user))"
            }
            Self::StateMismatch => {
                "`/oauth/{integration}/callback` with a state issued for another integration"
            }
            Self::MissingCode => "callback with neither `code` nor `error`",
            Self::DeviceFlowUnsupported => {
                "the integration's provider has no device authorization endpoint"
            }
            Self::IssuerMismatch => {
                "RFC 9207: the provider advertises `iss` and it is missing or wrong"
            }
            Self::AccessDenied => {
                "the user declined at the provider (the authorization callback's `error=access_denied`)"
            }
            Self::InvalidProxyPath => {
                "the proxied path could leave the API base URL (absolute URL, `//host`, `.`/`..` segments also percent-encoded, encoded `/` or `\\`, control characters) or is malformed; nothing is sent"
            }
            Self::NoApiBaseUrl => "the integration's provider has no `api_base_url` to proxy to",
            Self::InvalidHeader => "a proxied request header that cannot be sent",
            Self::InvalidBulkAction => {
                "a bulk action body that does not validate; the message starts with the field (`users`, `request.path`, `not_before`, …)"
            }
            Self::InvalidBulkActionId => "a malformed bulk action id",
            Self::InvalidItemState => "a bulk action item `state` filter that is not an item state",
            Self::InvalidPage => {
                "a `limit` or `after` that cannot page a list (`limit` is 1 to 1000)"
            }
            Self::InvalidStatus => {
                "listing: a `status` that is not one of connected, needs_reauth, expired, error, disconnected"
            }
            Self::InvalidCursor => {
                "listing: an `after` cursor that is not one the previous page handed out"
            }
            Self::Unauthorized => "missing, unknown or revoked API key",
            Self::Forbidden => {
                "the key's scope does not cover the endpoint (the message names both)"
            }
            Self::CsrfFailed => {
                "admin console: a state-changing request without its session's CSRF token, or sent from another origin"
            }
            Self::UserMismatch => {
                "confirm mode: the code was confirmed for another user than the session's; the flow is discarded"
            }
            Self::NotFound => "no such endpoint",
            Self::ConfirmationNotFound => {
                "confirm mode: unknown, expired or already used confirmation code"
            }
            Self::UnknownIntegration => "no integration with that key is configured",
            Self::UnknownProvider => "no catalog entry with that key",
            Self::UnknownDeviceSession => "no device session with that id",
            Self::ProfileNotSupported => "the provider has no profile endpoint",
            Self::BulkActionNotFound => "no bulk action with that id",
            Self::ConnectionNotFound => {
                "the user has no connection to that integration; token reads and the proxy also answer it for a `disconnected` one, whose status document stays readable"
            }
            Self::MethodNotAllowed => {
                "the path exists but not with this method (proxy: CONNECT and TRACE are not forwarded)"
            }
            Self::BulkActionFinished => "cancel: the action already completed or was cancelled",
            Self::StoredTokensNewer => {
                "import: tokenvault refreshed this connection itself and its token expires no earlier than the imported one; nothing written (`?force=true` replaces it anyway)"
            }
            Self::NeedsReauth => {
                "the grant was revoked or expired (`needs_reauth`/`expired`): send the user through a connect session again"
            }
            Self::PayloadTooLarge => "the request body is over the size limit",
            Self::TooManyLoginAttempts => {
                "admin console: too many sign-in attempts from this address (with `Retry-After`)"
            }
            Self::Internal => "logged with the request id",
            Self::TokenExchangeFailed => {
                "the provider's token endpoint failed to exchange the authorization code"
            }
            Self::ProviderError => {
                "the provider's token, device or profile endpoint failed; in the authorization callback (400) the provider answered with an error other than `access_denied`"
            }
            Self::ProviderUnreachable => {
                "proxy/profile: no answer from the provider's API (connection refused, timeout)"
            }
            Self::RequestTimeout => {
                "the request ran longer than `request_timeout_secs` (a refresh it started still completes)"
            }
            Self::DatabaseUnavailable => {
                "the database is unreachable (any endpoint; `Retry-After: 1`); it heals by itself within seconds of the database returning, and no refreshed token is lost meanwhile (docs/refresh-protocol.md, R5)"
            }
            Self::TooManyConnections => {
                "every one of `max_connections` is busy with a request (`Retry-After: 1`)"
            }
            Self::ConnectionBusy => {
                "import: the connection kept changing (a refresh in flight) for longer than a refresh lease; retry"
            }
            Self::StateStoreUnavailable => "Redis or the state table cannot be reached",
            Self::ProviderUnavailable => {
                "the token has expired (or, proxy/profile, the provider refused it) and the provider cannot refresh it now (5xx, timeout, 429, circuit open); `Retry-After` says when to try again"
            }
            Self::IntegrationMisconfigured => {
                "the token has expired and the provider rejects the integration's client credentials"
            }
            Self::IntegrationUnavailable => {
                "connect, device, proxy and profile requests of an integration whose OIDC discovery has not succeeded since start-up (retried every few seconds; `GET /v1/integrations` shows the error); stored tokens are still served"
            }
        }
    }

    /// The code named `code`, if it is one of ours.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Self::ALL
            .iter()
            .copied()
            .find(|known| known.as_str() == code)
    }

    /// The README's error table: `| status | code | when |` rows.
    pub fn markdown_table() -> String {
        let mut table = String::from("| status | `error` | when |\n|---|---|---|\n");
        for code in Self::ALL {
            table.push_str(&format!(
                "| {} | `{}` | {} |\n",
                code.status().as_u16(),
                code.as_str(),
                code.description()
            ));
        }
        table
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
