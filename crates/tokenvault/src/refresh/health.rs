//! Integration health: the circuit breaker, the rate limiter and the
//! misconfiguration latch in front of a provider, and their admin view.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::watch;

pub use breaker::{BreakerSettings, CircuitBreaker, CircuitState};

use crate::domain::IntegrationKey;
use crate::integrations::Integration;
use crate::store::{LastError, MisconfiguredIntegration, StoreError};
use crate::vault::Vault;

use super::*;

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
    pub(super) fingerprint: String,
    pub(super) breaker: Mutex<CircuitBreaker>,
    pub(super) throttled_until: Mutex<Option<DateTime<Utc>>>,
    pub(super) misconfigured: Mutex<Option<MisconfiguredIntegration>>,
    pub(super) limiter: Option<DefaultDirectRateLimiter>,
    /// Token-endpoint calls per second this instance may make, if limited.
    pub(super) rate: Option<u32>,
}

pub(super) enum Gate {
    Open,
    Misconfigured(LastError),
    Unavailable {
        cause: super::Unavailable,
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

    pub(super) fn gate(&self, now: DateTime<Utc>) -> Gate {
        if let Some(entry) = &*self.misconfigured.lock().unwrap() {
            return Gate::Misconfigured(entry.error.clone());
        }
        let to_std = |at: DateTime<Utc>| (at - now).to_std().ok();
        if let Some(until) = *self.throttled_until.lock().unwrap()
            && until > now
        {
            return Gate::Unavailable {
                cause: super::Unavailable::RateLimited,
                retry_after: to_std(until),
            };
        }
        let breaker = self.breaker.lock().unwrap();
        if !breaker.allows(now) {
            return Gate::Unavailable {
                cause: super::Unavailable::CircuitOpen,
                retry_after: breaker.retry_at().and_then(to_std),
            };
        }
        Gate::Open
    }

    pub(super) async fn until_ready(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }

    /// Waits for the rate budget unless `stopping` turns true first
    /// (then false).
    pub(super) async fn until_ready_or_stopping(
        &self,
        stopping: Option<&watch::Receiver<bool>>,
    ) -> bool {
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

    pub(super) fn record(&self, key: &IntegrationKey, now: DateTime<Utc>, failure: bool) {
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

    pub(super) fn view(&self, now: DateTime<Utc>) -> IntegrationHealthView {
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

impl Vault {
    /// Starts tracking the health of an integration resolved after the
    /// vault was built (its OIDC discovery succeeded late); its stored
    /// misconfigured verdict, if any, is picked up by the next health sync.
    pub fn integration_added(&self, key: &IntegrationKey) {
        let Some(integration) = self.integrations().get(key) else {
            return;
        };
        self.inner.health.entry(key.clone()).or_insert_with(|| {
            Arc::new(IntegrationHealth::new(
                &integration,
                self.inner.breaker.clone(),
                self.inner.settings.rate_limit_per_second,
            ))
        });
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
        self.database().clear_misconfigured(key).await?;
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
        let recorded = self.database().list_misconfigured().await?;
        for entry in self.inner.health.iter() {
            let (key, health) = (entry.key(), entry.value());
            let verdict = recorded.iter().find(|m| &m.integration == key);
            let current = match verdict {
                Some(m) if m.config_fingerprint != health.fingerprint => {
                    tracing::info!(integration = %key, "integration configuration changed; resuming its refreshes");
                    self.database().clear_misconfigured(key).await?;
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
