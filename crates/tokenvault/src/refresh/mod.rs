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
pub mod journal;
pub mod local;
mod scheduler;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::watch;

pub use breaker::{BreakerSettings, CircuitBreaker, CircuitState};
pub use classify::{FailureClass, backoff, classify};
use scheduler::{Batch, applied};
pub use scheduler::{Scheduler, SchedulerSettings, TickReport};

use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, TokenSet, UserId};
use crate::events::EventType;
use crate::integrations::{Grant, Integration};
use crate::oauth::OAuthError;
use crate::store::{
    BatchUpdate, ConnectionRecord, LastError, MisconfiguredIntegration, StoreError,
};
use crate::vault::{Vault, VaultError, jittered_refresh_at};

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

/// A valid token handed to a caller.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub tokens: TokenSet,
    pub connection: ConnectionRecord,
    pub outcome: TokenOutcome,
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
    #[error("the provider is unavailable: {reason}")]
    ProviderUnavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
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

/// Health of one integration as the status API, `/readyz` and metrics see it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct IntegrationHealthView {
    /// The circuit breaker's state, as `CircuitState::as_str` names it.
    #[cfg_attr(feature = "utoipa", schema(value_type = CircuitState))]
    pub circuit: &'static str,
    pub misconfigured: Option<MisconfiguredView>,
    pub rate_limited_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct MisconfiguredView {
    pub error: LastError,
    pub since: DateTime<Utc>,
}

/// Per-integration gates, in memory (the misconfigured verdict is also
/// persisted and shared through the database).
pub struct IntegrationHealth {
    fingerprint: String,
    breaker: Mutex<CircuitBreaker>,
    throttled_until: Mutex<Option<DateTime<Utc>>>,
    misconfigured: Mutex<Option<MisconfiguredIntegration>>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Token-endpoint calls per second this instance may make, if limited.
    rate: Option<u32>,
}

enum Gate {
    Open,
    Misconfigured(LastError),
    Unavailable {
        reason: &'static str,
        retry_after: Option<Duration>,
    },
}

impl IntegrationHealth {
    pub(crate) fn new(
        integration: &Integration,
        breaker: BreakerSettings,
        default_rate: Option<u32>,
    ) -> Self {
        let rate = integration.rate_limit_per_second().or(default_rate);
        Self {
            fingerprint: integration.config_fingerprint(),
            breaker: Mutex::new(CircuitBreaker::new(breaker)),
            throttled_until: Mutex::new(None),
            misconfigured: Mutex::new(None),
            limiter: rate
                .and_then(NonZeroU32::new)
                .map(|rate| RateLimiter::direct(Quota::per_second(rate))),
            rate: rate.filter(|rate| *rate > 0),
        }
    }

    pub fn circuit(&self, now: DateTime<Utc>) -> CircuitState {
        self.breaker.lock().unwrap().state(now)
    }

    fn gate(&self, now: DateTime<Utc>) -> Gate {
        if let Some(entry) = &*self.misconfigured.lock().unwrap() {
            return Gate::Misconfigured(entry.error.clone());
        }
        let to_std = |at: DateTime<Utc>| (at - now).to_std().ok();
        if let Some(until) = *self.throttled_until.lock().unwrap()
            && until > now
        {
            return Gate::Unavailable {
                reason: "the provider asked us to slow down (HTTP 429)",
                retry_after: to_std(until),
            };
        }
        let breaker = self.breaker.lock().unwrap();
        if !breaker.allows(now) {
            return Gate::Unavailable {
                reason: "the circuit breaker is open after repeated provider failures",
                retry_after: breaker.retry_at().and_then(to_std),
            };
        }
        Gate::Open
    }

    async fn until_ready(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }

    /// Waits for the rate budget unless `stopping` turns true first
    /// (then false).
    async fn until_ready_or_stopping(&self, stopping: Option<&watch::Receiver<bool>>) -> bool {
        let Some(stopping) = stopping else {
            self.until_ready().await;
            return true;
        };
        let mut watching = stopping.clone();
        tokio::select! {
            () = self.until_ready() => !*stopping.borrow(),
            () = stopped(&mut watching) => false,
        }
    }

    /// How many refreshes of this integration one instance can make within
    /// `window` at its rate budget; `None` when unlimited.
    pub(crate) fn refreshes_within(&self, window: Duration) -> Option<usize> {
        self.rate
            .map(|rate| ((f64::from(rate) * window.as_secs_f64()) as usize).max(1))
    }

    fn record(&self, key: &IntegrationKey, now: DateTime<Utc>, failure: bool) {
        let mut breaker = self.breaker.lock().unwrap();
        let before = breaker.state(now);
        if failure {
            breaker.on_failure(now);
        } else {
            breaker.on_success(now);
        }
        let after = breaker.state(now);
        if before != after {
            tracing::warn!(integration = %key, from = before.as_str(), to = after.as_str(), "circuit breaker changed state");
        }
        metrics::gauge!("tokenvault_circuit_state", "integration" => key.to_string())
            .set(after.gauge());
    }

    fn view(&self, now: DateTime<Utc>) -> IntegrationHealthView {
        IntegrationHealthView {
            circuit: self.circuit(now).as_str(),
            misconfigured: self.misconfigured.lock().unwrap().as_ref().map(|entry| {
                MisconfiguredView {
                    error: entry.error.clone(),
                    since: entry.since,
                }
            }),
            rate_limited_until: (*self.throttled_until.lock().unwrap()).filter(|at| *at > now),
        }
    }
}

/// What a caller needs from a refresh run.
#[derive(Clone)]
enum Mode {
    /// A token valid for `min_ttl`; `seen` is the sealed access token the
    /// caller started from: once it changed, someone refreshed for us.
    OnDemand {
        min_ttl: chrono::Duration,
        seen: Option<Vec<u8>>,
    },
    /// Refresh even if fresh, unless someone already did since `seen`.
    Forced { seen: Option<Vec<u8>> },
    /// The scheduler claimed the row; refresh if it is still due.
    Scheduled,
}

impl Mode {
    fn satisfied(&self, record: &ConnectionRecord, tokens: &TokenSet, now: DateTime<Utc>) -> bool {
        match self {
            Mode::OnDemand { min_ttl, seen } => {
                !needs_refresh_for(record, tokens, now, *min_ttl) || record.access_token != *seen
            }
            Mode::Forced { seen } => record.access_token != *seen,
            Mode::Scheduled => record.next_refresh_at.is_none_or(|at| at > now),
        }
    }

    fn waits_inline(&self) -> bool {
        !matches!(self, Mode::Scheduled)
    }
}

/// Holds the in-process refresh lock of one connection; forgets the lock
/// when nobody else is queued on it.
struct InflightGuard<'a> {
    vault: &'a Vault,
    id: ConnectionId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.vault
            .inner
            .inflight
            .remove_if(&self.id, |_, lock| Arc::strong_count(lock) == 1);
    }
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
    tokens: &TokenSet,
    now: DateTime<Utc>,
    min_ttl: chrono::Duration,
) -> bool {
    let lifetime = match (record.last_refreshed_at, tokens.expires_at) {
        (Some(issued), Some(expires)) if expires > issued => Some(expires - issued),
        _ => None,
    };
    let attainable = match lifetime {
        Some(lifetime) if min_ttl > lifetime => lifetime / 2,
        _ => min_ttl,
    };
    tokens.needs_refresh(now, attainable)
}

/// A std duration as chrono's, saturating.
pub(crate) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Vault {
    /// A valid access token for (user, integration), refreshed first when
    /// it expires within `min_ttl`. When the provider is unavailable or the
    /// integration paused, a still-valid token is returned
    /// ([`TokenOutcome::Stale`]); an expired one is an error.
    pub async fn valid_token(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        min_ttl: Duration,
    ) -> Result<IssuedToken, TokenError> {
        let result = self.valid_token_inner(user, integration, min_ttl).await;
        let outcome = match &result {
            Ok(issued) => issued.outcome.as_str(),
            Err(TokenError::NeedsReauth { .. }) => "needs_reauth",
            Err(TokenError::NotConnected) => "not_connected",
            Err(
                TokenError::ProviderUnavailable { .. }
                | TokenError::IntegrationMisconfigured { .. },
            ) => "unavailable",
            Err(_) => "error",
        };
        metrics::counter!("tokenvault_token_reads_total", "outcome" => outcome).increment(1);
        result
    }

    async fn valid_token_inner(
        &self,
        user: &UserId,
        key: &IntegrationKey,
        min_ttl: Duration,
    ) -> Result<IssuedToken, TokenError> {
        let local = self.local();
        if let Some(hit) = local.cached_token(user, key)
            && !needs_refresh_for(
                &hit.record,
                &hit.tokens,
                self.clock().now(),
                chrono(min_ttl),
            )
        {
            return Ok(IssuedToken {
                tokens: hit.tokens.clone(),
                connection: hit.record.clone(),
                outcome: TokenOutcome::Fresh,
            });
        }
        // Boxed: the read-and-maybe-refresh future is many kilobytes, and
        // inline it would be moved on every call, cache hits included.
        Box::pin(self.read_token(user, key, min_ttl)).await
    }

    /// [`Vault::valid_token`] past the token cache: from the store, then
    /// refreshed if needed.
    async fn read_token(
        &self,
        user: &UserId,
        key: &IntegrationKey,
        min_ttl: Duration,
    ) -> Result<IssuedToken, TokenError> {
        let local = self.local();
        let seq = local.seq();
        let record = self
            .store()
            .get(user, key)
            .await?
            .ok_or(TokenError::NotConnected)?;
        let tokens = usable(self, &record).await?;
        let now = self.clock().now();
        if !needs_refresh_for(&record, &tokens, now, chrono(min_ttl)) {
            local.cache_token(seq, &record, &tokens);
            return Ok(IssuedToken {
                tokens,
                connection: record,
                outcome: TokenOutcome::Fresh,
            });
        }
        let seen = record.access_token.clone();
        let mode = Mode::OnDemand {
            min_ttl: chrono(min_ttl),
            seen,
        };
        self.refresh_or_fallback(record, tokens, mode).await
    }

    /// Refreshes now even if the token is fresh (unless another caller's
    /// refresh finished meanwhile). Same fallbacks as [`Vault::valid_token`].
    pub async fn force_refresh(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<IssuedToken, TokenError> {
        let record = self
            .store()
            .get(user, integration)
            .await?
            .ok_or(TokenError::NotConnected)?;
        let tokens = usable(self, &record).await?;
        let mode = Mode::Forced {
            seen: record.access_token.clone(),
        };
        self.refresh_or_fallback(record, tokens, mode).await
    }

    /// The provider's API refused `rejected`'s access token (401): refresh
    /// now, unless another caller already replaced that token, whose newer
    /// token is then returned. Unlike [`Vault::valid_token`] there is no
    /// fallback to the stored token when the provider cannot be reached: it
    /// was just refused, so the caller gets the error (a retryable
    /// `ProviderUnavailable`) instead of a 401 that a refresh would fix.
    /// Without a refresh token the result carries the same token.
    pub(crate) async fn refresh_rejected(
        &self,
        rejected: &IssuedToken,
    ) -> Result<IssuedToken, TokenError> {
        let record = self
            .store()
            .get_by_id(rejected.connection.id)
            .await?
            .ok_or(TokenError::NotConnected)?;
        let tokens = usable(self, &record).await?;
        let mode = Mode::Forced {
            seen: rejected.connection.access_token.clone(),
        };
        self.refresh_now(&record, &tokens, mode).await
    }

    /// Waits for the integration's per-second budget, which API calls share
    /// with the refresher's token-endpoint calls.
    pub(crate) async fn spend_rate_budget(&self, key: &IntegrationKey) {
        if let Some(health) = self.health(key) {
            health.until_ready().await;
        }
    }

    /// [`Vault::refresh_now`], but when the provider cannot be reached (or
    /// the integration is broken) a stored token that has not expired yet
    /// is handed out instead of the error.
    async fn refresh_or_fallback(
        &self,
        record: ConnectionRecord,
        tokens: TokenSet,
        mode: Mode,
    ) -> Result<IssuedToken, TokenError> {
        match self.refresh_now(&record, &tokens, mode).await {
            Err(
                err @ (TokenError::ProviderUnavailable { .. }
                | TokenError::IntegrationMisconfigured { .. }
                | TokenError::UnknownIntegration(_)),
            ) if !tokens.is_expired(self.clock().now()) => {
                tracing::debug!(error = %err, "handing out the stored token, still valid");
                Ok(IssuedToken {
                    tokens,
                    connection: record,
                    outcome: TokenOutcome::Stale,
                })
            }
            other => other,
        }
    }

    async fn refresh_now(
        &self,
        record: &ConnectionRecord,
        tokens: &TokenSet,
        mode: Mode,
    ) -> Result<IssuedToken, TokenError> {
        let now = self.clock().now();
        let Some(integration) = self.integrations().get(&record.integration).cloned() else {
            return Err(TokenError::UnknownIntegration(record.integration.clone()));
        };
        if !tokens.can_refresh() {
            if tokens.is_expired(now) {
                self.mark_expired(record).await;
                return Err(TokenError::NeedsReauth {
                    status: ConnectionStatus::Expired,
                    last_error: None,
                });
            }
            // Nothing better to offer than the token we have.
            return Ok(IssuedToken {
                tokens: tokens.clone(),
                connection: record.clone(),
                outcome: TokenOutcome::Fresh,
            });
        }
        // The refresh runs in its own task: if the caller goes away (client
        // disconnect, request timeout), a refresh already sent to the
        // provider still stores the rotated refresh token it gets back
        // instead of losing it with the dropped future.
        let vault = self.clone();
        let id = record.id;
        let refreshed =
            tokio::spawn(async move { vault.refresh_connection(id, &integration, mode).await })
                .await
                .unwrap_or_else(|join| Err(TokenError::Vault(VaultError::Task(join.to_string()))));
        match refreshed {
            Ok(Some(issued)) => Ok(issued),
            Ok(None) => Err(TokenError::ProviderUnavailable {
                reason: "another instance is still refreshing this connection".into(),
                retry_after: Some(Duration::from_secs(1)),
            }),
            Err(err) => Err(err),
        }
    }

    /// Waits for this process's lock on `id`; `None` after `wait`.
    async fn inflight(&self, id: ConnectionId, wait: Duration) -> Option<InflightGuard<'_>> {
        let lock = self
            .inner
            .inflight
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let acquired = tokio::time::timeout(wait, lock.lock_owned()).await;
        let guard = InflightGuard {
            vault: self,
            id,
            guard: acquired.ok(),
        };
        guard.guard.is_some().then_some(guard)
    }

    fn health(&self, key: &IntegrationKey) -> Option<Arc<IntegrationHealth>> {
        self.inner.health.get(key).map(|h| Arc::clone(&h))
    }

    /// The single-flight core. `Ok(None)`: another instance holds the lease
    /// and did not finish within the wait (or, for the scheduler, at all).
    async fn refresh_connection(
        &self,
        id: ConnectionId,
        integration: &Arc<Integration>,
        mode: Mode,
    ) -> Result<Option<IssuedToken>, TokenError> {
        // Callers in this process queue here (bounded) and then find the
        // token the one before them stored.
        let Some(_inflight) = self.inflight(id, self.settings().wait_timeout).await else {
            return Ok(None);
        };
        let health = self
            .health(integration.key())
            .ok_or_else(|| TokenError::UnknownIntegration(integration.key().clone()))?;
        let deadline = Instant::now() + self.settings().wait_timeout;
        loop {
            let read = self.store().get_by_id(id).await;
            self.observe_db(&read);
            let record = read?.ok_or(TokenError::NotConnected)?;
            let tokens = usable(self, &record).await?;
            let now = self.clock().now();
            if mode.satisfied(&record, &tokens, now) {
                if matches!(mode, Mode::Scheduled) {
                    self.release(&record).await;
                }
                let outcome = if matches!(mode, Mode::OnDemand { ref seen, .. } if record.access_token == *seen)
                {
                    TokenOutcome::Fresh
                } else {
                    TokenOutcome::Refreshed
                };
                return Ok(Some(IssuedToken {
                    tokens,
                    connection: record,
                    outcome,
                }));
            }
            self.check_gate(&health, &record, &mode, now).await?;
            if self.journal().has_pending(id) {
                // This process holds the provider's newer answer for this
                // row: it must be stored before anything else happens here.
                if !self.drain_journal().await && self.journal().has_pending(id) {
                    return Err(StoreError::Unavailable {
                        backend: "database",
                        target: "the refresh journal".into(),
                        reason: "a refreshed token is waiting to be stored".into(),
                    }
                    .into());
                }
                continue;
            }
            let takeover_before = self.takeover_before(now);
            let held_elsewhere = record
                .lease
                .as_ref()
                .is_some_and(|l| l.owner != self.owner() && l.expires_at > takeover_before);
            if !held_elsewhere {
                // R1: the lease is taken on the row as read, so the refresh
                // token opened above is the current one.
                let acquired = self
                    .store()
                    .acquire_lease(
                        id,
                        self.owner(),
                        record.version,
                        takeover_before,
                        now + chrono(self.settings().lease_ttl),
                    )
                    .await;
                self.observe_db(&acquired);
                if let Some(leased) = acquired? {
                    return self
                        .run_refresh(leased, tokens, integration, &health, &mode, None)
                        .await
                        .map(Some);
                }
                // The row moved between our read and the lease: read again.
                if Instant::now() < deadline {
                    continue;
                }
                return Ok(None);
            }
            // Another instance is refreshing: wait for its result.
            match mode {
                Mode::Scheduled => return Ok(None),
                _ if Instant::now() >= deadline => return Ok(None),
                _ => tokio::time::sleep(self.settings().wait_poll).await,
            }
        }
    }

    /// Whether the integration lets a refresh through now. Only the
    /// scheduler moves the schedule (and drops its claim) when it does not;
    /// a caller just gets the answer.
    async fn check_gate(
        &self,
        health: &IntegrationHealth,
        record: &ConnectionRecord,
        mode: &Mode,
        now: DateTime<Utc>,
    ) -> Result<(), TokenError> {
        match health.gate(now) {
            Gate::Open => Ok(()),
            Gate::Misconfigured(error) => {
                if matches!(mode, Mode::Scheduled) {
                    self.postpone(record, now + chrono::Duration::minutes(1))
                        .await;
                }
                Err(TokenError::IntegrationMisconfigured { error })
            }
            Gate::Unavailable {
                reason,
                retry_after,
            } => {
                if matches!(mode, Mode::Scheduled) {
                    let until = now + chrono(retry_after.unwrap_or(Duration::from_secs(60)));
                    self.postpone(record, until).await;
                }
                Err(TokenError::ProviderUnavailable {
                    reason: reason.into(),
                    retry_after,
                })
            }
        }
    }

    /// A scheduled refresh straight from the row the scheduler claimed
    /// (`record`, opened as `tokens`), without reading it again: the claim
    /// gave this process the lease at that version, and the lease is
    /// renewed by compare-and-swap on that version right before the
    /// provider call ([`Vault::run_refresh`]), so a row that moved since is
    /// never refreshed from this copy. When this process itself wrote the
    /// row after the claim (`seq`), the refresh takes the re-reading path
    /// at once.
    pub(super) async fn refresh_claimed(
        &self,
        record: ConnectionRecord,
        tokens: TokenSet,
        integration: &Arc<Integration>,
        seq: u64,
        batch: Batch<'_>,
    ) -> Result<Option<IssuedToken>, TokenError> {
        let id = record.id;
        let Some(inflight) = self.inflight(id, self.settings().wait_timeout).await else {
            return Ok(None);
        };
        if self.local().written_since(id, seq) || self.journal().has_pending(id) {
            drop(inflight);
            return self
                .refresh_connection(id, integration, Mode::Scheduled)
                .await;
        }
        let health = self
            .health(integration.key())
            .ok_or_else(|| TokenError::UnknownIntegration(integration.key().clone()))?;
        self.check_gate(&health, &record, &Mode::Scheduled, self.clock().now())
            .await?;
        self.run_refresh(
            record,
            tokens,
            integration,
            &health,
            &Mode::Scheduled,
            Some(batch),
        )
        .await
        .map(Some)
    }

    /// Calls the provider under the lease `record` holds (taken at
    /// `record.version`), retrying per the classification, and writes the
    /// outcome (which releases the lease); through `batch` when the
    /// scheduler gave one.
    async fn run_refresh(
        &self,
        record: ConnectionRecord,
        tokens: TokenSet,
        integration: &Arc<Integration>,
        health: &IntegrationHealth,
        mode: &Mode,
        batch: Option<Batch<'_>>,
    ) -> Result<IssuedToken, TokenError> {
        let key = integration.key().clone();
        let refresh_token = tokens
            .refresh_token
            .clone()
            .expect("refresh_connection is only called for refreshable tokens");
        let stopping = batch.as_ref().map(|b| b.stopping.clone());
        let mut attempts = 0u32;
        let mut inline_waits = 0u32;
        loop {
            // Only the lease holder spends the integration's rate budget; a
            // scheduled refresh still waiting for it when the process stops
            // gives its row back instead of starting a provider call.
            if !health.until_ready_or_stopping(stopping.as_ref()).await {
                self.postpone(&record, self.clock().now()).await;
                return Err(TokenError::ProviderUnavailable {
                    reason: "shutting down".into(),
                    retry_after: None,
                });
            }
            // R2/R3: present only under a lease validated against the row
            // as it is now (same version, still ours), extended to cover the
            // unresolved call however long this process stalls. The intent
            // is journaled first: a process killed between the two leaves
            // an intent its successor settles, never an in-flight lease
            // nobody knows about.
            self.journal().intent(record.id, record.version);
            let now = self.clock().now();
            let renewed = self
                .store()
                .renew_lease(
                    record.id,
                    self.owner(),
                    record.version,
                    now + chrono(self.settings().in_flight_lease),
                )
                .await;
            self.observe_db(&renewed);
            let renewed = renewed.inspect_err(|_| self.journal().settle(record.id))?;
            if !renewed {
                self.journal().settle(record.id);
                metrics::counter!("tokenvault_refresh_lease_lost_total").increment(1);
                tracing::info!(connection = %record.id, "the connection changed while it waited to be refreshed; its old refresh token is not presented");
                return Err(TokenError::ProviderUnavailable {
                    reason: "the connection changed while it waited to be refreshed".into(),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            let started = Instant::now();
            let result = integration
                .refresh(&refresh_token, &record.scopes, self.clock().now())
                .await;
            metrics::histogram!("tokenvault_refresh_duration_seconds", "integration" => key.to_string())
                .record(started.elapsed().as_secs_f64());
            let now = self.clock().now();
            let err = match result {
                Ok(grant) => {
                    metrics::counter!("tokenvault_refresh_total", "integration" => key.to_string(), "outcome" => "success").increment(1);
                    health.record(&key, now, false);
                    return self
                        .store_refreshed(record, grant, integration, batch)
                        .await;
                }
                Err(err) => err,
            };
            // This process is alive to handle the failure itself.
            self.journal().settle(record.id);
            if outcome_unknown(&err) {
                // The provider may have rotated the token and the answer
                // was lost: unknowable from here (docs/refresh-protocol.md).
                metrics::counter!("tokenvault_refresh_outcome_unknown_total", "reason" => "transport").increment(1);
                tracing::warn!(connection = %record.id, integration = %key, error = %err, "refresh outcome unknown: the request may have reached the provider");
            }
            let class = classify(&err, self.settings().default_retry_after);
            metrics::counter!("tokenvault_refresh_total", "integration" => key.to_string(), "outcome" => class.as_str()).increment(1);
            tracing::warn!(integration = %key, connection = %record.id, class = class.as_str(), error = %err, "refresh failed");
            let delay = match class {
                FailureClass::NeedsReauth => {
                    // The provider answered: it is up.
                    health.record(&key, now, false);
                    return Err(self.store_needs_reauth(record, &err).await);
                }
                FailureClass::Misconfigured => {
                    return Err(self
                        .store_misconfigured(record, integration, health, &err)
                        .await);
                }
                FailureClass::RateLimited { retry_after } => {
                    *health.throttled_until.lock().unwrap() = Some(now + chrono(retry_after));
                    if mode.waits_inline()
                        && retry_after <= self.settings().max_inline_retry_after
                        && inline_waits < 3
                    {
                        inline_waits += 1;
                        retry_after
                    } else {
                        self.postpone(&record, now + chrono(retry_after)).await;
                        return Err(TokenError::ProviderUnavailable {
                            reason: "the provider is rate limiting (HTTP 429)".into(),
                            retry_after: Some(retry_after),
                        });
                    }
                }
                FailureClass::Transient | FailureClass::Rejected => {
                    health.record(&key, now, true);
                    attempts += 1;
                    if class.retries_within_run()
                        && attempts < self.settings().attempts
                        && health.circuit(now) != CircuitState::Open
                    {
                        backoff(
                            attempts,
                            self.settings().backoff_base,
                            self.settings().backoff_cap,
                        )
                    } else {
                        return Err(self.store_failed_run(record, &tokens, &err, class).await);
                    }
                }
            };
            if !sleep_unless_stopping(delay, stopping.as_ref()).await {
                self.postpone(&record, now + chrono(delay)).await;
                return Err(TokenError::ProviderUnavailable {
                    reason: "shutting down".into(),
                    retry_after: Some(delay),
                });
            }
        }
    }

    /// Persists a successful refresh, releasing the lease in the same write.
    /// The provider may have rotated the refresh token, so the answer is
    /// journaled first (R5): a write the database refuses is kept and
    /// retried until it lands, and the row's in-flight lease keeps every
    /// other instance from presenting the old token meanwhile.
    async fn store_refreshed(
        &self,
        record: ConnectionRecord,
        grant: Grant,
        integration: &Arc<Integration>,
        batch: Option<Batch<'_>>,
    ) -> Result<IssuedToken, TokenError> {
        let now = self.clock().now();
        let tokens = grant.tokens;
        let sealed = self
            .envelope()
            .reseal(
                record.id,
                &record.data_key,
                &tokens.access_token,
                tokens.refresh_token.as_ref(),
            )
            .await;
        let (access, refresh) = match sealed {
            Ok(sealed) => sealed,
            Err(err) => {
                // Nothing stored and nothing journaled: the answer is lost.
                self.journal().settle(record.id);
                tracing::error!(connection = %record.id, error = %err, "cannot seal refreshed tokens; the provider's answer is lost");
                return Err(VaultError::from(err).into());
            }
        };
        let mut update = record.to_update(now);
        update.status = ConnectionStatus::Connected;
        update.scopes = tokens.scopes.clone();
        update.token_type = tokens.token_type;
        update.expires_at = tokens.expires_at;
        update.next_refresh_at =
            jittered_refresh_at(&tokens, chrono(integration.refresh_buffer()), now);
        update.refresh_attempts = 0;
        update.failing_since = None;
        update.last_error = None;
        update.last_refreshed_at = Some(now);
        update.access_token = Some(access);
        update.refresh_token = refresh;
        update.lease = None;
        if record.status == ConnectionStatus::Error {
            update.emit.extend(self.connection_event(
                EventType::ConnectionRecovered,
                &record,
                ConnectionStatus::Connected,
                None,
                now,
            ));
        }
        update.emit.extend(self.connection_event(
            EventType::ConnectionRefreshed,
            &record,
            ConnectionStatus::Connected,
            None,
            now,
        ));
        self.journal().answer(record.id, record.version, &update);
        // A scheduled refresh's write joins the tick's batch, after giving
        // back the refresh slot.
        let written = match batch {
            Some(Batch { writer, permit, .. }) => {
                drop(permit);
                let entry = BatchUpdate {
                    id: record.id,
                    expected_version: record.version,
                    update,
                };
                let (result, returned) = writer.write(entry).await;
                update = returned;
                result.map(|version| applied(&record, &update, version))
            }
            None => {
                self.store()
                    .update(record.id, record.version, &update)
                    .await
            }
        };
        match written {
            Ok(stored) => {
                self.journal().stored(record.id);
                self.db_reachable();
                Ok(IssuedToken {
                    tokens,
                    connection: stored,
                    outcome: TokenOutcome::Refreshed,
                })
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound) => {
                self.journal().stored(record.id);
                self.after_lost_write(record.id, &tokens, integration).await
            }
            Err(err) => {
                self.journal().sync();
                self.db_failed(&err);
                metrics::counter!("tokenvault_refresh_journaled_total").increment(1);
                tracing::error!(connection = %record.id, error = %err, "storing refreshed tokens failed; kept in the refresh journal until the database takes them");
                self.spawn_journal_drainer();
                // The caller still gets the fresh token: it is valid, and
                // the row stays leased to us until it is stored.
                Ok(IssuedToken {
                    connection: applied(&record, &update, record.version),
                    tokens,
                    outcome: TokenOutcome::Refreshed,
                })
            }
        }
    }

    /// Our write lost the compare-and-swap after the provider issued new
    /// tokens: the connection was reconnected, revoked or deleted meanwhile.
    /// The tokens we hold belong to nothing; revoke them if the user
    /// disconnected, and answer from the row as it is now.
    async fn after_lost_write(
        &self,
        id: ConnectionId,
        orphan: &TokenSet,
        integration: &Arc<Integration>,
    ) -> Result<IssuedToken, TokenError> {
        let current = self.store().get_by_id(id).await?;
        let disconnected = current
            .as_ref()
            .is_none_or(|record| record.status == ConnectionStatus::Disconnected);
        if disconnected {
            if let Err(err) = integration.revoke(orphan).await {
                tracing::warn!(connection = %id, error = %err, "revoking tokens refreshed during a disconnect failed");
            }
            return Err(TokenError::NotConnected);
        }
        let record = current.expect("checked above");
        let tokens = usable(self, &record).await?;
        Ok(IssuedToken {
            tokens,
            connection: record,
            outcome: TokenOutcome::Refreshed,
        })
    }

    async fn store_needs_reauth(&self, record: ConnectionRecord, err: &OAuthError) -> TokenError {
        let now = self.clock().now();
        let last_error = LastError {
            code: err.oauth_error_code().unwrap_or("invalid_grant").to_owned(),
            message: err.to_string(),
        };
        let mut update = record.to_update(now);
        update.status = ConnectionStatus::NeedsReauth;
        update.next_refresh_at = None;
        update.last_error = Some(last_error.clone());
        update.lease = None;
        update.emit.extend(self.connection_event(
            EventType::ConnectionNeedsReauth,
            &record,
            ConnectionStatus::NeedsReauth,
            Some(&last_error),
            now,
        ));
        self.write_best_effort(&record, &update, "recording needs_reauth failed")
            .await;
        TokenError::NeedsReauth {
            status: ConnectionStatus::NeedsReauth,
            last_error: Some(last_error),
        }
    }

    async fn store_misconfigured(
        &self,
        record: ConnectionRecord,
        integration: &Arc<Integration>,
        health: &IntegrationHealth,
        err: &OAuthError,
    ) -> TokenError {
        let now = self.clock().now();
        let error = LastError {
            code: err
                .oauth_error_code()
                .unwrap_or("invalid_client")
                .to_owned(),
            message: err.to_string(),
        };
        let entry = MisconfiguredIntegration {
            integration: integration.key().clone(),
            config_fingerprint: health.fingerprint.clone(),
            error: error.clone(),
            since: now,
        };
        tracing::error!(integration = %integration.key(), code = %error.code, "the provider rejected the integration's client credentials; pausing its refreshes");
        let event = self.inner.events.event(
            EventType::IntegrationMisconfigured,
            serde_json::json!({"integration": integration.key(), "error": &error}),
            now,
        );
        if let Err(store_err) = self
            .store()
            .mark_misconfigured(&entry, event.as_ref())
            .await
        {
            tracing::warn!(error = %store_err, "recording the misconfigured integration failed");
        }
        *health.misconfigured.lock().unwrap() = Some(entry);
        metrics::gauge!("tokenvault_integration_misconfigured", "integration" => integration.key().to_string()).set(1.0);
        // The user's connection is fine: keep its status, retry later.
        self.postpone(&record, now + chrono::Duration::minutes(1))
            .await;
        TokenError::IntegrationMisconfigured { error }
    }

    /// A run ended without tokens (transient or rejected failures): count
    /// the failed run, cool down, and turn the connection to `error` once
    /// the streak spans [`RefreshSettings::error_after`] or the access token
    /// has expired meanwhile.
    async fn store_failed_run(
        &self,
        record: ConnectionRecord,
        tokens: &TokenSet,
        err: &OAuthError,
        class: FailureClass,
    ) -> TokenError {
        let now = self.clock().now();
        let settings = self.settings();
        let failed_runs = record.refresh_attempts.saturating_add(1);
        let since = record.failing_since.unwrap_or(now);
        let cooldown = settings
            .cooldown
            .saturating_mul(1u32 << (failed_runs - 1).min(16))
            .min(settings.cooldown_cap);
        let last_error = LastError {
            code: err
                .oauth_error_code()
                .map(str::to_owned)
                .or_else(|| err.status().map(|s| format!("http_{s}")))
                .unwrap_or_else(|| class.as_str().to_owned()),
            message: err.to_string(),
        };
        let long_streak = now - since >= chrono(settings.error_after);
        let status = if long_streak || tokens.is_expired(now) {
            ConnectionStatus::Error
        } else {
            record.status
        };
        let mut update = record.to_update(now);
        update.refresh_attempts = failed_runs;
        update.failing_since = Some(since);
        update.last_error = Some(last_error.clone());
        update.next_refresh_at = Some(now + chrono(crate::events::jitter(cooldown, 0.1)));
        update.status = status;
        update.lease = None;
        if status == ConnectionStatus::Error && record.status != ConnectionStatus::Error {
            update.emit.extend(self.connection_event(
                EventType::ConnectionError,
                &record,
                status,
                Some(&last_error),
                now,
            ));
        }
        self.write_best_effort(&record, &update, "recording the failed refresh run failed")
            .await;
        TokenError::ProviderUnavailable {
            reason: format!("refresh failed ({}): {err}", class.as_str()),
            retry_after: Some(cooldown),
        }
    }

    /// Moves `next_refresh_at` to `until` and releases our lease, if the row
    /// is still as we read it.
    async fn postpone(&self, record: &ConnectionRecord, until: DateTime<Utc>) {
        let now = self.clock().now();
        let mut update = record.to_update(now);
        if record.next_refresh_at.is_some() {
            update.next_refresh_at = Some(until);
        }
        if record.lease_allows(self.owner(), now) {
            update.lease = None;
        }
        let _ = self
            .store()
            .update(record.id, record.version, &update)
            .await;
    }

    /// Drops our lease on a row we claimed but did not need to refresh.
    async fn release(&self, record: &ConnectionRecord) {
        if record
            .lease
            .as_ref()
            .is_some_and(|l| l.owner == self.owner())
        {
            let _ = self.store().release_lease(record.id, self.owner()).await;
        }
    }

    async fn mark_expired(&self, record: &ConnectionRecord) {
        if !record.status.can_become(ConnectionStatus::Expired) {
            return;
        }
        let mut update = record.to_update(self.clock().now());
        update.status = ConnectionStatus::Expired;
        update.next_refresh_at = None;
        update.lease = None;
        let _ = self
            .store()
            .update(record.id, record.version, &update)
            .await;
    }

    /// Revokes the connection at the provider (RFC 7009: refresh token, then
    /// access token, or the provider's own mechanism), then marks it
    /// disconnected and erases its sealed tokens. A provider failure is
    /// reported but never blocks the local erase.
    pub async fn disconnect(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Revocation, TokenError> {
        let record = self
            .store()
            .get(user, integration)
            .await?
            .ok_or(TokenError::NotConnected)?;
        // Queue behind an in-process refresh instead of racing it; if that
        // takes too long, the compare-and-swap below still keeps us safe.
        let _inflight = self.inflight(record.id, self.settings().wait_timeout).await;
        let mut record = self
            .store()
            .get_by_id(record.id)
            .await?
            .ok_or(TokenError::NotConnected)?;
        if record.status == ConnectionStatus::Disconnected {
            return Ok(Revocation {
                revoked_at_provider: false,
                reason: Some("already disconnected".into()),
            });
        }
        let revocation = match (self.open(&record).await?, self.integrations().get(integration)) {
            (None, _) => Revocation {
                revoked_at_provider: false,
                reason: Some("no tokens stored".into()),
            },
            (Some(_), None) => Revocation {
                revoked_at_provider: false,
                reason: Some(format!("integration {integration} is not configured")),
            },
            (Some(tokens), Some(client)) => match client.revoke(&tokens).await {
                Ok(true) => Revocation {
                    revoked_at_provider: true,
                    reason: None,
                },
                Ok(false) => Revocation {
                    revoked_at_provider: false,
                    reason: Some(
                        "the provider offers no revocation endpoint; the user can remove the app in their account settings"
                            .into(),
                    ),
                },
                Err(err) => {
                    tracing::warn!(integration = %integration, error = %err, "provider revocation failed; erasing locally anyway");
                    Revocation {
                        revoked_at_provider: false,
                        reason: Some(format!("provider revocation failed: {err}")),
                    }
                }
            },
        };
        for _ in 0..5 {
            let now = self.clock().now();
            let mut update = record.to_update(now);
            update.status = ConnectionStatus::Disconnected;
            update.access_token = None;
            update.refresh_token = None;
            update.next_refresh_at = None;
            update.lease = None;
            update.emit.extend(self.connection_event(
                EventType::ConnectionRevoked,
                &record,
                ConnectionStatus::Disconnected,
                None,
                now,
            ));
            match self
                .store()
                .update(record.id, record.version, &update)
                .await
            {
                Ok(_) => return Ok(revocation),
                Err(StoreError::Conflict { .. }) => {
                    record = self
                        .store()
                        .get_by_id(record.id)
                        .await?
                        .ok_or(TokenError::NotConnected)?;
                }
                Err(StoreError::NotFound) => return Err(TokenError::NotConnected),
                Err(err) => return Err(err.into()),
            }
        }
        Err(TokenError::ProviderUnavailable {
            reason: "the connection kept changing while it was being disconnected; retry".into(),
            retry_after: Some(Duration::from_secs(1)),
        })
    }

    /// Circuit, misconfiguration and rate-limit state of one integration.
    pub fn integration_health(&self, key: &IntegrationKey) -> Option<IntegrationHealthView> {
        self.health(key).map(|h| h.view(self.clock().now()))
    }

    /// Clears a misconfigured verdict and closes the breaker (the admin
    /// "reset"). Returns whether the integration is configured.
    pub async fn reset_integration(&self, key: &IntegrationKey) -> Result<bool, TokenError> {
        let Some(health) = self.health(key) else {
            return Ok(false);
        };
        self.store().clear_misconfigured(key).await?;
        *health.misconfigured.lock().unwrap() = None;
        *health.throttled_until.lock().unwrap() = None;
        health.breaker.lock().unwrap().reset();
        metrics::gauge!("tokenvault_integration_misconfigured", "integration" => key.to_string())
            .set(0.0);
        Ok(true)
    }

    /// Loads the shared misconfigured verdicts from the database (another
    /// instance may have recorded or cleared one). A verdict recorded under
    /// a different configuration fingerprint is cleared: the operator
    /// changed the credentials.
    pub async fn sync_integration_health(&self) -> Result<(), StoreError> {
        let recorded = self.store().list_misconfigured().await?;
        for entry in self.inner.health.iter() {
            let (key, health) = (entry.key(), entry.value());
            let verdict = recorded.iter().find(|m| &m.integration == key);
            let current = match verdict {
                Some(m) if m.config_fingerprint != health.fingerprint => {
                    tracing::info!(integration = %key, "integration configuration changed; resuming its refreshes");
                    self.store().clear_misconfigured(key).await?;
                    None
                }
                other => other.cloned(),
            };
            metrics::gauge!("tokenvault_integration_misconfigured", "integration" => key.to_string())
                .set(if current.is_some() { 1.0 } else { 0.0 });
            metrics::gauge!("tokenvault_circuit_state", "integration" => key.to_string())
                .set(health.circuit(self.clock().now()).gauge());
            *health.misconfigured.lock().unwrap() = current;
        }
        Ok(())
    }
}

impl Vault {
    fn connection_event(
        &self,
        event_type: EventType,
        record: &ConnectionRecord,
        status: ConnectionStatus,
        error: Option<&LastError>,
        now: DateTime<Utc>,
    ) -> Option<crate::store::OutboxEvent> {
        self.event(
            event_type,
            record.id,
            &record.user_id,
            &record.integration,
            status,
            error,
            now,
        )
    }

    /// Records an outcome; losing the compare-and-swap means someone wrote
    /// a newer state, which wins.
    async fn write_best_effort(
        &self,
        record: &ConnectionRecord,
        update: &crate::store::ConnectionUpdate,
        what: &str,
    ) {
        if let Err(err) = self.store().update(record.id, record.version, update).await {
            tracing::warn!(connection = %record.id, error = %err, "{what}");
        }
    }
}

/// Whether a failed provider call may still have been processed: the
/// request may have reached the provider and its answer been lost (a
/// timeout, a reset, an unreadable answer).
fn outcome_unknown(err: &OAuthError) -> bool {
    matches!(
        err,
        OAuthError::Timeout | OAuthError::Connect(_) | OAuthError::InvalidResponse(_)
    )
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

/// The refresh journal's side of the vault: draining answers the database
/// refused, and the takeover grace that protects them (R5, R6).
impl Vault {
    pub(crate) fn journal(&self) -> &journal::Journal {
        &self.inner.journal
    }

    /// The instant before which another owner's expired lease may be taken
    /// over: `now`, unless the database became reachable (or this process
    /// started) less than [`RefreshSettings::takeover_grace`] ago.
    pub(crate) fn takeover_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match *self.inner.db_reachable_since.lock().unwrap() {
            Some(at) if at.elapsed() >= self.settings().takeover_grace => now,
            _ => DateTime::UNIX_EPOCH,
        }
    }

    pub(crate) fn observe_db<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.db_reachable(),
            Err(err) => self.db_failed(err),
        }
    }

    pub(crate) fn db_reachable(&self) {
        self.inner
            .db_reachable_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }

    pub(crate) fn db_failed(&self, err: &StoreError) {
        if err.is_unavailable() {
            *self.inner.db_reachable_since.lock().unwrap() = None;
        }
    }

    /// Stores the answers the refresh journal holds (this process's that
    /// the database refused, and those a dead process left), and settles
    /// the calls a dead process left unanswered. True when nothing is left.
    pub async fn drain_journal(&self) -> bool {
        let journal = self.journal();
        if journal.is_drained() {
            return true;
        }
        let Ok(_draining) = self.inner.draining.try_lock() else {
            return false;
        };
        for answered in journal.pending() {
            let (id, update) = match (answered.id(), answered.to_update()) {
                (Ok(id), Ok(update)) => (id, update),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::error!(error = %err, "an unreadable refresh journal entry is skipped");
                    if let Ok(id) = answered.id() {
                        journal.stored(id);
                    }
                    continue;
                }
            };
            let written = self.store().update(id, answered.version(), &update).await;
            self.observe_db(&written);
            match written {
                Ok(_) => {
                    journal.stored(id);
                    metrics::counter!("tokenvault_refresh_journal_replayed_total", "outcome" => "stored").increment(1);
                    tracing::info!(connection = %id, "stored a refreshed token from the refresh journal");
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound) => {
                    // Reconnected, disconnected or taken over meanwhile: the
                    // row's newer state wins, as for any lost write.
                    journal.stored(id);
                    metrics::counter!("tokenvault_refresh_journal_replayed_total", "outcome" => "conflict").increment(1);
                    tracing::warn!(connection = %id, "a journaled refresh could not be stored: the connection changed meanwhile");
                }
                Err(err) if err.is_unavailable() => {
                    tracing::warn!(connection = %id, error = %err, "the refresh journal cannot be stored yet");
                    return false;
                }
                Err(err) => {
                    // Not an outage: retrying would block this instance's
                    // scheduler forever on one entry.
                    journal.stored(id);
                    metrics::counter!("tokenvault_refresh_journal_replayed_total", "outcome" => "failed").increment(1);
                    tracing::error!(connection = %id, error = %err, "a journaled refresh cannot be stored; the provider's answer is lost");
                }
            }
        }
        for unsettled in journal.unsettled() {
            let read = self.store().get_by_id(unsettled.id).await;
            self.observe_db(&read);
            let Ok(current) = read else {
                return false;
            };
            if let Some(record) = current
                && record.version == unsettled.version
                && record
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.owner == unsettled.owner)
            {
                // The dead holder's call has no answer anywhere: release
                // its in-flight lease so the connection is refreshed again
                // now rather than when that lease runs out.
                let mut update = record.to_update(self.clock().now());
                update.lease = None;
                let written = self
                    .store()
                    .update(record.id, record.version, &update)
                    .await;
                self.observe_db(&written);
                if let Err(err) = written
                    && err.is_unavailable()
                {
                    return false;
                }
            }
            journal.resolve_unsettled(unsettled.id);
            metrics::counter!("tokenvault_refresh_outcome_unknown_total", "reason" => "crash")
                .increment(1);
            tracing::warn!(connection = %unsettled.id, owner = %unsettled.owner, "refresh outcome unknown: a stopped process presented this connection's refresh token and left no answer");
        }
        journal.is_drained()
    }

    /// Keeps draining the journal in the background until it is empty
    /// (one such task at a time).
    pub fn spawn_journal_drainer(&self) {
        use std::sync::atomic::Ordering;
        if self.journal().is_drained() || self.inner.drainer_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let vault = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                if vault.drain_journal().await {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            vault.inner.drainer_running.store(false, Ordering::Release);
            // An answer journaled after the last look starts a new drainer.
            if !vault.journal().is_drained() {
                vault.spawn_journal_drainer();
            }
        });
    }
}

/// The opened tokens of a connection that can still hand some out.
async fn usable(vault: &Vault, record: &ConnectionRecord) -> Result<TokenSet, TokenError> {
    match record.status {
        ConnectionStatus::Disconnected => return Err(TokenError::NotConnected),
        status @ (ConnectionStatus::NeedsReauth | ConnectionStatus::Expired) => {
            return Err(TokenError::NeedsReauth {
                status,
                last_error: record.last_error.clone(),
            });
        }
        ConnectionStatus::Connected | ConnectionStatus::Error => {}
    }
    vault.open(record).await?.ok_or(TokenError::NotConnected)
}
