//! The token lifecycle: a valid token on demand, exactly one refresh per
//! connection at a time across every instance, failure classification,
//! per-integration circuit breakers and rate limits, revocation, and the
//! background scheduler.
//!
//! **Single flight.** In a process, callers of one connection queue on one
//! lock and re-read the row when they get it, so they share the refresh
//! whoever ran it. Across processes, the row's lease (owner + expiry, taken
//! and renewed by compare-and-swap, released only by its owner in the same
//! write that stores the new tokens) admits one refresher; the others poll
//! the row (bounded by [`RefreshSettings::wait_timeout`]) until the token
//! changes. The lease outlives a provider call: it is sized from the HTTP
//! timeout and renewed before every attempt. Writes compare-and-swap on the
//! row version, so a stale writer never overwrites a newer token, and no
//! pooled database connection is held across a provider call.

mod breaker;
mod classify;
mod drain;
mod health;
pub mod journal;
pub mod local;
mod outcome;
mod revoke;
mod run;
mod scheduler;
mod single_flight;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

pub use breaker::{BreakerSettings, CircuitBreaker, CircuitState};
pub use classify::{FailureClass, backoff, classify};
use drain::*;
use health::*;
pub use health::{IntegrationHealth, IntegrationHealthView, MisconfiguredView};
use outcome::*;
pub use scheduler::{Scheduler, SchedulerSettings, TickReport};

use crate::domain::{ConnectionStatus, IntegrationKey, TokenSet};
use crate::store::{ConnectionRecord, LastError, StoreError};
use crate::vault::VaultError;

/// Knobs of the refresh engine. The defaults follow the policy.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// How long a refresh lease lasts while the holder waits (for a refresh
    /// slot, the rate budget, a backoff); renewed while it waits.
    pub lease_ttl: Duration,
    /// The lease a holder takes right before it presents a refresh token:
    /// while the provider call is unresolved, no other instance may take
    /// the row over for this long, even if the holder stalls (a pause, a
    /// lost answer, a database outage). Must exceed the provider HTTP
    /// timeout by far. See docs/refresh-protocol.md (R3).
    pub in_flight_lease: Duration,
    /// After this process starts or its database comes back, it takes over
    /// no other instance's expired lease for this long: a live holder with
    /// journaled answers gets the time to store them first (R6).
    pub takeover_grace: Duration,
    /// How long a caller waits for a refresh another instance is running.
    pub wait_timeout: Duration,
    /// Interval at which such a caller re-reads the row.
    pub wait_poll: Duration,
    /// Provider attempts per refresh run (transient failures only).
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// For a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Longest `Retry-After` a caller waiting for a token sits out; longer
    /// ones fail fast (still-valid token, or 503 with the delay).
    pub max_inline_retry_after: Duration,
    /// Delay before the run after a failed one; doubles per consecutive
    /// failed run up to `cooldown_cap`.
    pub cooldown: Duration,
    pub cooldown_cap: Duration,
    /// A failure streak this long turns a connection to `error`.
    pub error_after: Duration,
    /// Default per-integration limit on token-endpoint calls per second
    /// (per instance); `None` = unlimited.
    pub rate_limit_per_second: Option<u32>,
    /// How long a fresh token read from the database may be served from
    /// this process's memory ([`local::LocalStore`]); zero disables it.
    /// Another instance's refresh or disconnect is seen here up to this
    /// much later; this process's own writes are seen at once.
    pub token_cache: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            in_flight_lease: Duration::from_secs(300),
            takeover_grace: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(25),
            wait_poll: Duration::from_millis(50),
            attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            default_retry_after: Duration::from_secs(60),
            max_inline_retry_after: Duration::from_secs(10),
            cooldown: Duration::from_secs(60),
            cooldown_cap: Duration::from_secs(3600),
            error_after: Duration::from_secs(24 * 3600),
            rate_limit_per_second: Some(50),
            token_cache: Duration::ZERO,
        }
    }
}

/// How a token was obtained (the `token reads by outcome` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenOutcome {
    /// The stored token was fresh enough.
    Fresh,
    /// Refreshed for this call (here or by another caller or instance).
    Refreshed,
    /// Refreshing failed or is paused; the stored token is still valid.
    Stale,
}

impl TokenOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Refreshed => "refreshed",
            Self::Stale => "stale",
        }
    }
}

/// A valid token handed to a caller. Shared, not copied: a cache hit hands
/// out the cached entry itself. The refresh token never leaves the vault
/// (`tokens.refresh_token` is always `None` here; refreshing is our job).
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub tokens: Arc<TokenSet>,
    pub connection: Arc<ConnectionRecord>,
    pub outcome: TokenOutcome,
}

impl IssuedToken {
    pub(crate) fn new(
        mut tokens: TokenSet,
        connection: ConnectionRecord,
        outcome: TokenOutcome,
    ) -> Self {
        tokens.refresh_token = None;
        Self {
            tokens: Arc::new(tokens),
            connection: Arc::new(connection),
            outcome,
        }
    }
}

/// Why no valid token could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no connection for this user and integration")]
    NotConnected,
    #[error("the connection is {status}; the user must connect again")]
    NeedsReauth {
        status: ConnectionStatus,
        last_error: Option<LastError>,
    },
    #[error("integration {0} is not configured")]
    UnknownIntegration(IntegrationKey),
    #[error("the provider rejected this integration's client credentials ({}); refreshes are paused until its configuration changes or an admin resets it", .error.code)]
    IntegrationMisconfigured { error: LastError },
    /// No fresh token now; `retry_after` says when one may be (none while
    /// shutting down).
    #[error("no fresh token right now: {cause}")]
    ProviderUnavailable {
        cause: Unavailable,
        retry_after: Option<Duration>,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Why a refresh could not produce a token now (each heals by itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The provider's token endpoint failed (5xx, timeout, network, or a
    /// rejection that is not the user's); `class` is the failure class.
    #[error("refresh failed ({class}): {detail}")]
    RefreshFailed { class: &'static str, detail: String },
    /// The provider answered 429, or asked to slow down earlier.
    #[error("the provider is rate limiting (HTTP 429)")]
    RateLimited,
    /// Repeated failures opened this integration's circuit breaker.
    #[error("the circuit breaker is open after repeated provider failures")]
    CircuitOpen,
    /// Another instance holds the refresh lease and has not finished.
    #[error("another instance is still refreshing this connection")]
    RefreshElsewhere,
    /// The row kept moving under concurrent writers (a refresh, a
    /// disconnect); a retry sees the settled row.
    #[error("the connection kept changing {during}; retry")]
    Contended { during: &'static str },
    /// This instance is stopping and takes no new provider calls.
    #[error("shutting down")]
    ShuttingDown,
}

impl Unavailable {
    /// A stable snake_case name (metrics, bulk item reasons).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RefreshFailed { .. } => "refresh_failed",
            Self::RateLimited => "rate_limited",
            Self::CircuitOpen => "circuit_open",
            Self::RefreshElsewhere => "refresh_elsewhere",
            Self::Contended { .. } => "contended",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

impl From<StoreError> for TokenError {
    fn from(err: StoreError) -> Self {
        Self::Vault(VaultError::Store(err))
    }
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Revocation {
    pub revoked_at_provider: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether a token read asking for `min_ttl` should refresh: only when a
/// refresh can improve the answer. A `min_ttl` the provider's tokens can
/// meet (no longer than the lifetime the last refresh got) is honoured as
/// asked. One they cannot meet is capped at half that lifetime: the fresh
/// token is served with its true `expires_at`, and the next refresh comes
/// once less than half a lifetime is left, not on every read. Before the
/// first refresh the lifetime is unknown and `min_ttl` applies as asked
/// (so at most one refresh learns it).
pub(crate) fn needs_refresh_for(
    record: &ConnectionRecord,
    now: DateTime<Utc>,
    min_ttl: chrono::Duration,
) -> bool {
    // The row's `expires_at` is the sealed token's: the decision needs no
    // decryption, so a read opens only what it hands out.
    let Some(expires) = record.expires_at else {
        return false;
    };
    let lifetime = match record.last_refreshed_at {
        Some(issued) if expires > issued => Some(expires - issued),
        _ => None,
    };
    let attainable = match lifetime {
        Some(lifetime) if min_ttl > lifetime => lifetime / 2,
        _ => min_ttl,
    };
    now + attainable >= expires
}

/// One log line per change in a connection's life, at info (a successful
/// scheduled refresh is at debug, see [`log_refreshed`]): what happened,
/// to which connection, for which user — by its keyed tag, never the id.
pub(crate) fn log_lifecycle(record: &crate::store::ConnectionRecord, what: &str) {
    tracing::info!(
        user = %crate::privacy::UserTag(record.user_id.as_str()),
        integration = %record.integration,
        connection = %record.id,
        "connection {what}"
    );
}

/// A successful refresh: routine, so at debug.
pub(crate) fn log_refreshed(record: &crate::store::ConnectionRecord) {
    tracing::debug!(
        user = %crate::privacy::UserTag(record.user_id.as_str()),
        integration = %record.integration,
        connection = %record.id,
        "connection refreshed"
    );
}

/// A std duration as chrono's, saturating.
pub(crate) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Resolves once `stopping` turns true (or its sender is gone).
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Sleeps `delay` unless `stopping` turns true first (then false).
async fn sleep_unless_stopping(delay: Duration, stopping: Option<&watch::Receiver<bool>>) -> bool {
    let Some(stopping) = stopping else {
        tokio::time::sleep(delay).await;
        return true;
    };
    let mut stopping = stopping.clone();
    if *stopping.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stopped(&mut stopping) => false,
    }
}
