//! A valid token on demand: the cache and row read, and the single-flight
//! refresh (one task per connection here, one lease holder across
//! instances) that runs when the token is not valid enough.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use scheduler::Batch;

use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, TokenSet, UserId};
use crate::integrations::Integration;
use crate::store::{ConnectionRecord, StoreError};
use crate::vault::{Vault, VaultError};

use super::*;

/// What a caller needs from a refresh run.
#[derive(Clone)]
pub(super) enum Mode {
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
    pub(super) fn satisfied(&self, record: &ConnectionRecord, now: DateTime<Utc>) -> bool {
        match self {
            Mode::OnDemand { min_ttl, seen } => {
                !needs_refresh_for(record, now, *min_ttl) || record.access_token != *seen
            }
            Mode::Forced { seen } => record.access_token != *seen,
            Mode::Scheduled => record.next_refresh_at.is_none_or(|at| at > now),
        }
    }

    pub(super) fn waits_inline(&self) -> bool {
        !matches!(self, Mode::Scheduled)
    }
}

/// Holds the in-process refresh lock of one connection; forgets the lock
/// when nobody else is queued on it.
pub(super) struct InflightGuard<'a> {
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

    pub(super) async fn valid_token_inner(
        &self,
        user: &UserId,
        key: &IntegrationKey,
        min_ttl: Duration,
    ) -> Result<IssuedToken, TokenError> {
        let local = self.local();
        if let Some(hit) = local.cached_token(user, key)
            && !needs_refresh_for(&hit.record, self.clock().now(), chrono(min_ttl))
        {
            return Ok(IssuedToken {
                tokens: Arc::clone(&hit.tokens),
                connection: Arc::clone(&hit.record),
                outcome: TokenOutcome::Fresh,
            });
        }
        // Boxed: the read-and-maybe-refresh future is many kilobytes, and
        // inline it would be moved on every call, cache hits included.
        Box::pin(self.read_token(user, key, min_ttl)).await
    }

    /// [`Vault::valid_token`] past the token cache: from the store, then
    /// refreshed if needed.
    pub(super) async fn read_token(
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
        // Whether to refresh is read off the row; then what is needed is
        // opened once: the access token alone to answer, both tokens to
        // refresh.
        if !needs_refresh_for(&record, self.clock().now(), chrono(min_ttl)) {
            let access = usable(self, &record, Opening::AccessOnly).await?;
            let issued = IssuedToken::new(access, record, TokenOutcome::Fresh);
            local.cache_token(seq, &issued.connection, &issued.tokens);
            return Ok(issued);
        }
        let tokens = usable(self, &record, Opening::Both).await?;
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
        let tokens = usable(self, &record, Opening::Both).await?;
        super::log_lifecycle(&record, "refresh forced");
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
        let tokens = usable(self, &record, Opening::Both).await?;
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
    pub(super) async fn refresh_or_fallback(
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
                Ok(IssuedToken::new(tokens, record, TokenOutcome::Stale))
            }
            other => other,
        }
    }

    pub(super) async fn refresh_now(
        &self,
        record: &ConnectionRecord,
        tokens: &TokenSet,
        mode: Mode,
    ) -> Result<IssuedToken, TokenError> {
        let now = self.clock().now();
        let Some(integration) = self.integrations().get(&record.integration) else {
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
            return Ok(IssuedToken::new(
                tokens.clone(),
                record.clone(),
                TokenOutcome::Fresh,
            ));
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
                cause: Unavailable::RefreshElsewhere,
                retry_after: Some(Duration::from_secs(1)),
            }),
            Err(err) => Err(err),
        }
    }

    /// Waits for this process's lock on `id`; `None` after `wait`.
    pub(super) async fn inflight(
        &self,
        id: ConnectionId,
        wait: Duration,
    ) -> Option<InflightGuard<'_>> {
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

    pub(super) fn health(&self, key: &IntegrationKey) -> Option<Arc<IntegrationHealth>> {
        self.inner.health.get(key).map(|h| Arc::clone(&h))
    }

    /// The single-flight core. `Ok(None)`: another instance holds the lease
    /// and did not finish within the wait (or, for the scheduler, at all).
    pub(super) async fn refresh_connection(
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
            let now = self.clock().now();
            if mode.satisfied(&record, now) {
                let tokens = usable(self, &record, Opening::AccessOnly).await?;
                if matches!(mode, Mode::Scheduled) {
                    self.release(&record).await;
                }
                let outcome = if matches!(mode, Mode::OnDemand { ref seen, .. } if record.access_token == *seen)
                {
                    TokenOutcome::Fresh
                } else {
                    TokenOutcome::Refreshed
                };
                return Ok(Some(IssuedToken::new(tokens, record, outcome)));
            }
            let tokens = usable(self, &record, Opening::Both).await?;
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
    pub(super) async fn check_gate(
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
            Gate::Unavailable { cause, retry_after } => {
                if matches!(mode, Mode::Scheduled) {
                    let until = now + chrono(retry_after.unwrap_or(Duration::from_secs(60)));
                    self.postpone(record, until).await;
                }
                Err(TokenError::ProviderUnavailable { cause, retry_after })
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
}
