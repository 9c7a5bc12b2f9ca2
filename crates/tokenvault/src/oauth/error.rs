//! Error type for the OAuth protocol client.
//!
//! The `Display` output of every error is safe to log: it never contains a
//! token, a client secret or a raw response body.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Maximum number of characters kept from a non-OAuth error response body.
pub(crate) const BODY_EXCERPT_MAX_CHARS: usize = 200;

/// A parsed `Retry-After` header, expressed as the delay from the moment the
/// response was received.
///
/// Both RFC 9110 forms are accepted: `delta-seconds` (`Retry-After: 7`) and an
/// HTTP-date (`Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past
/// yields a zero delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(Duration);

impl RetryAfter {
    /// Wraps an explicit delay.
    pub fn from_duration(delay: Duration) -> Self {
        Self(delay)
    }

    /// The delay to wait before retrying.
    pub fn delay(&self) -> Duration {
        self.0
    }

    /// Parses a `Retry-After` header value relative to the current time.
    pub fn parse(value: &str) -> Option<Self> {
        Self::parse_at(value, Utc::now())
    }

    /// Parses a `Retry-After` header value relative to `now`.
    pub fn parse_at(value: &str, now: DateTime<Utc>) -> Option<Self> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        if value.bytes().all(|b| b.is_ascii_digit()) {
            // delta-seconds; absurdly long values saturate instead of failing.
            let secs = value.parse::<u64>().unwrap_or(u64::MAX);
            return Some(Self(Duration::from_secs(secs)));
        }
        // HTTP-date. IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is a subset
        // of RFC 2822 as far as chrono's parser is concerned.
        let date = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        let delay = (date - now).to_std().unwrap_or(Duration::ZERO);
        Some(Self(delay))
    }
}

/// Errors returned by [`OAuthClient`](super::OAuthClient) operations.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The provider answered with an OAuth error code (`error` field), with any
    /// HTTP status including 200 (GitHub, Slack).
    #[error(
        "provider returned OAuth error `{error}` (HTTP {status}){}",
        fmt_description(description)
    )]
    Provider {
        status: u16,
        error: String,
        description: Option<String>,
        retry_after: Option<RetryAfter>,
    },
    /// A non-success HTTP status without an OAuth error code (e.g. a 503 HTML
    /// page, a 302 redirect which is never followed). `body_excerpt` holds at
    /// most 200 characters of the body; it is deliberately not part of the
    /// `Display` output.
    #[error("unexpected HTTP status {status} from provider")]
    Http {
        status: u16,
        retry_after: Option<RetryAfter>,
        body_excerpt: String,
    },
    /// The request (connect + send + read) exceeded the configured timeout.
    #[error("request to provider timed out")]
    Timeout,
    /// The connection could not be established or broke (DNS, TLS, reset...).
    #[error("transport error talking to provider: {0}")]
    Connect(String),
    /// The provider answered successfully but the body is unusable (no
    /// `access_token`, unparseable body, missing token path...).
    #[error("invalid response from provider: {0}")]
    InvalidResponse(String),
    /// Local misconfiguration detected before any request was sent (e.g.
    /// `client_secret_basic` without a secret, or an HTTP client that could
    /// not be built).
    #[error("invalid OAuth client configuration: {0}")]
    Config(String),
    /// A connection's parameters are missing or invalid, so a URL of its
    /// provider cannot be built; detected before any request was sent.
    #[error("{0}")]
    ConnectionParams(String),
}

fn fmt_description(description: &Option<String>) -> String {
    match description {
        Some(d) => format!(": {}", truncate_chars(d, BODY_EXCERPT_MAX_CHARS)),
        None => String::new(),
    }
}

impl OAuthError {
    /// The delay requested by the provider through `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OAuthError::Provider { retry_after, .. } | OAuthError::Http { retry_after, .. } => {
                retry_after.map(|r| r.delay())
            }
            _ => None,
        }
    }

    /// The HTTP status of the provider response, if a response was received.
    pub fn status(&self) -> Option<u16> {
        match self {
            OAuthError::Provider { status, .. } | OAuthError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The OAuth `error` code (e.g. `invalid_grant`), if the provider sent one.
    pub fn oauth_error_code(&self) -> Option<&str> {
        match self {
            OAuthError::Provider { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether this is `invalid_grant` (or a provider-specific equivalent such
    /// as GitHub's `bad_refresh_token` / `bad_verification_code` or Slack's
    /// `invalid_refresh_token`): the grant is dead and the user must
    /// re-authorize.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(
            self.oauth_error_code(),
            Some(
                "invalid_grant"
                    | "bad_refresh_token"
                    | "bad_verification_code"
                    | "invalid_refresh_token"
                    | "invalid_code"
                    | "token_revoked"
            )
        )
    }

    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return OAuthError::Timeout;
        }
        // Strip the URL (it could in theory carry sensitive query parameters)
        // and flatten the source chain, which is where the useful detail is.
        let err = err.without_url();
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            // hyper/io timeouts can surface as a source rather than via is_timeout.
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return OAuthError::Timeout;
            }
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        OAuthError::Connect(msg)
    }
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((idx, _)) => s[..idx].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(
            RetryAfter::parse("7").unwrap().delay(),
            Duration::from_secs(7)
        );
        assert_eq!(RetryAfter::parse(" 0 ").unwrap().delay(), Duration::ZERO);
        assert!(RetryAfter::parse("-3").is_none());
        assert!(RetryAfter::parse("soon").is_none());
        assert!(RetryAfter::parse("").is_none());
    }

    #[test]
    fn retry_after_http_date() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 0).unwrap();
        let r = RetryAfter::parse_at("Wed, 21 Oct 2015 07:28:00 GMT", now).unwrap();
        assert_eq!(r.delay(), Duration::from_secs(60));
        // Past date → zero.
        let r = RetryAfter::parse_at("Wed, 21 Oct 2015 07:00:00 GMT", now).unwrap();
        assert_eq!(r.delay(), Duration::ZERO);
    }

    #[test]
    fn truncation_is_char_safe() {
        assert_eq!(truncate_chars("ééé", 2), "éé");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
