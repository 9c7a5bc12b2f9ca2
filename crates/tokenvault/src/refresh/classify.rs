//! What a failed refresh means and what to do about it: the one table.

use std::time::Duration;

use crate::oauth::OAuthError;

/// The class of a failed refresh, which decides retry, status and alerting.
///
/// | provider answer                                   | class          | retry in run | status                      |
/// |---------------------------------------------------|----------------|--------------|-----------------------------|
/// | `invalid_grant` (+ GitHub/Slack equivalents)      | NeedsReauth    | no           | needs_reauth, webhook       |
/// | `invalid_client`, `unauthorized_client`, bad client credentials, HTTP 401 | Misconfigured | no | unchanged; integration paused |
/// | HTTP 429 / `slow_down` / `rate_limited`           | RateLimited    | after Retry-After, not an attempt | unchanged |
/// | HTTP 5xx, `server_error`, `temporarily_unavailable`, timeout, connection error, unreadable 2xx | Transient | yes, backoff | connected while the token is valid; error after 24 h |
/// | any other 4xx (`invalid_request`, `invalid_scope`, ...) | Rejected | no         | as Transient                |
///
/// Errors a provider sends with HTTP 200 (GitHub, Slack) arrive here as
/// [`OAuthError::Provider`] and are classified by their code like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    NeedsReauth,
    Misconfigured,
    RateLimited { retry_after: Duration },
    Transient,
    Rejected,
}

/// OAuth error codes meaning the client (not the user's grant) is wrong.
const CLIENT_ERRORS: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    // GitHub, with HTTP 200.
    "incorrect_client_credentials",
    // Slack, with HTTP 200.
    "invalid_client_id",
    "bad_client_secret",
];

const RATE_LIMIT_ERRORS: &[&str] = &["slow_down", "rate_limited", "ratelimited"];

const TRANSIENT_ERRORS: &[&str] = &["server_error", "temporarily_unavailable"];

/// Classifies a refresh failure. `default_retry_after` applies to a 429
/// without a usable `Retry-After`.
pub fn classify(err: &OAuthError, default_retry_after: Duration) -> FailureClass {
    if err.is_invalid_grant() {
        return FailureClass::NeedsReauth;
    }
    let code = err.oauth_error_code();
    if code.is_some_and(|c| CLIENT_ERRORS.contains(&c)) {
        return FailureClass::Misconfigured;
    }
    let status = err.status();
    if status == Some(429) || code.is_some_and(|c| RATE_LIMIT_ERRORS.contains(&c)) {
        return FailureClass::RateLimited {
            retry_after: err.retry_after().unwrap_or(default_retry_after),
        };
    }
    if code.is_some_and(|c| TRANSIENT_ERRORS.contains(&c)) {
        return FailureClass::Transient;
    }
    match err {
        OAuthError::Timeout | OAuthError::Connect(_) | OAuthError::InvalidResponse(_) => {
            FailureClass::Transient
        }
        OAuthError::Config(_) => FailureClass::Misconfigured,
        // This connection's parameters cannot build its provider's URLs
        // (none stored, or no longer valid under the entry's pattern): only
        // connecting again gives it valid ones; other connections are fine.
        OAuthError::ConnectionParams(_) => FailureClass::NeedsReauth,
        // RFC 6749 §5.2: a failed client authentication is a 401.
        OAuthError::Http { status: 401, .. } => FailureClass::Misconfigured,
        OAuthError::Http { status, .. } | OAuthError::Provider { status, .. }
            if *status >= 500 || *status == 408 =>
        {
            FailureClass::Transient
        }
        OAuthError::Http { .. } | OAuthError::Provider { .. } => FailureClass::Rejected,
    }
}

impl FailureClass {
    /// Stable label for metrics, logs and `last_error.code` fallbacks.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeedsReauth => "needs_reauth",
            Self::Misconfigured => "misconfigured",
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient => "transient",
            Self::Rejected => "rejected",
        }
    }

    /// Worth another attempt in the same run, after a backoff.
    pub fn retries_within_run(self) -> bool {
        matches!(self, Self::Transient)
    }

    /// Counts toward the run's attempt limit and the integration's circuit
    /// breaker. A 429 does neither: the provider is up and told us when.
    pub fn is_provider_failure(self) -> bool {
        matches!(self, Self::Transient | Self::Rejected)
    }
}

/// Exponential backoff before attempt `attempt + 1` (1-based `attempt` just
/// failed): base, 2·base, 4·base … capped, with ±25 % jitter.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    crate::events::jitter(exp.min(cap), 0.25)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::RetryAfter;

    fn provider(status: u16, error: &str) -> OAuthError {
        OAuthError::Provider {
            status,
            error: error.into(),
            description: None,
            retry_after: None,
        }
    }

    fn http(status: u16, retry_after: Option<u64>) -> OAuthError {
        OAuthError::Http {
            status,
            retry_after: retry_after.map(|s| RetryAfter::from_duration(Duration::from_secs(s))),
            body_excerpt: String::new(),
        }
    }

    #[test]
    fn the_table() {
        let default = Duration::from_secs(60);
        let cases: Vec<(OAuthError, FailureClass)> = vec![
            (provider(400, "invalid_grant"), FailureClass::NeedsReauth),
            // GitHub answers errors with HTTP 200.
            (
                provider(200, "bad_refresh_token"),
                FailureClass::NeedsReauth,
            ),
            (provider(400, "invalid_client"), FailureClass::Misconfigured),
            (provider(401, "invalid_client"), FailureClass::Misconfigured),
            (
                provider(400, "unauthorized_client"),
                FailureClass::Misconfigured,
            ),
            (
                provider(200, "incorrect_client_credentials"),
                FailureClass::Misconfigured,
            ),
            (http(401, None), FailureClass::Misconfigured),
            (
                OAuthError::Config("no secret".into()),
                FailureClass::Misconfigured,
            ),
            (
                http(429, Some(7)),
                FailureClass::RateLimited {
                    retry_after: Duration::from_secs(7),
                },
            ),
            (
                http(429, None),
                FailureClass::RateLimited {
                    retry_after: default,
                },
            ),
            (
                provider(400, "slow_down"),
                FailureClass::RateLimited {
                    retry_after: default,
                },
            ),
            (http(500, None), FailureClass::Transient),
            (http(502, None), FailureClass::Transient),
            (http(503, Some(3)), FailureClass::Transient),
            (
                provider(503, "temporarily_unavailable"),
                FailureClass::Transient,
            ),
            (provider(400, "server_error"), FailureClass::Transient),
            (http(408, None), FailureClass::Transient),
            (OAuthError::Timeout, FailureClass::Transient),
            (OAuthError::Connect("reset".into()), FailureClass::Transient),
            (
                OAuthError::InvalidResponse("no access_token".into()),
                FailureClass::Transient,
            ),
            (provider(400, "invalid_request"), FailureClass::Rejected),
            (provider(400, "invalid_scope"), FailureClass::Rejected),
            (http(403, None), FailureClass::Rejected),
            (http(404, None), FailureClass::Rejected),
        ];
        for (err, expected) in cases {
            assert_eq!(classify(&err, default), expected, "{err}");
        }
    }

    #[test]
    fn only_provider_failures_count_and_only_transient_retries() {
        let rate = FailureClass::RateLimited {
            retry_after: Duration::from_secs(1),
        };
        assert!(!rate.is_provider_failure() && !rate.retries_within_run());
        assert!(FailureClass::Transient.is_provider_failure());
        assert!(FailureClass::Transient.retries_within_run());
        assert!(FailureClass::Rejected.is_provider_failure());
        assert!(!FailureClass::Rejected.retries_within_run());
        assert!(!FailureClass::NeedsReauth.is_provider_failure());
        assert!(!FailureClass::Misconfigured.retries_within_run());
    }

    #[test]
    fn backoff_is_exponential_with_a_cap() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(30));
        for (attempt, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (30, 30.0)] {
            let got = backoff(attempt, base, cap).as_secs_f64();
            assert!(
                got >= nominal * 0.75 && got <= nominal * 1.25,
                "attempt {attempt}: {got}s not within 25 % of {nominal}s"
            );
        }
    }
}
