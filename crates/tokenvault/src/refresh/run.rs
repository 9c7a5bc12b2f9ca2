//! One refresh run under a held lease: the provider call, retried per the
//! failure classification, and its outcome written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduler::Batch;
use single_flight::Mode;

use crate::domain::TokenSet;
use crate::integrations::Integration;
use crate::store::{ConnectionRecord, LeaseRenewal};
use crate::vault::Vault;

use super::*;

impl Vault {
    /// Calls the provider under the lease `record` holds (taken at
    /// `record.version`), retrying per the classification, and writes the
    /// outcome (which releases the lease); through `batch` when the
    /// scheduler gave one.
    pub(super) async fn run_refresh(
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
                    cause: Unavailable::ShuttingDown,
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
            let renewal = LeaseRenewal {
                id: record.id,
                expected_version: record.version,
                lease_until: self.clock().now() + chrono(self.settings().in_flight_lease),
            };
            // A scheduled refresh renews with the rest of its tick (one
            // statement and one commit for all); an on-demand one alone.
            let renewed = match &batch {
                Some(batch) => batch.writer.renew(renewal).await,
                None => {
                    self.store()
                        .renew_lease(
                            renewal.id,
                            self.owner(),
                            renewal.expected_version,
                            renewal.lease_until,
                        )
                        .await
                }
            };
            self.observe_db(&renewed);
            let renewed = renewed.inspect_err(|_| self.journal().settle(record.id))?;
            if !renewed {
                self.journal().settle(record.id);
                metrics::counter!("tokenvault_refresh_lease_lost_total").increment(1);
                tracing::info!(connection = %record.id, "the connection changed while it waited to be refreshed; its old refresh token is not presented");
                return Err(TokenError::ProviderUnavailable {
                    cause: Unavailable::Contended {
                        during: "while it waited to be refreshed",
                    },
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            let started = Instant::now();
            let result = match integration.for_stored(&record.metadata) {
                Ok(client) => {
                    client
                        .refresh(&refresh_token, &record.scopes, self.clock().now())
                        .await
                }
                Err(err) => Err(err),
            };
            metrics::histogram!("tokenvault_refresh_duration_seconds", "integration" => key.to_string())
                .record(started.elapsed().as_secs_f64());
            let now = self.clock().now();
            let err = match result {
                Ok(grant) => {
                    metrics::counter!("tokenvault_refresh_total", "integration" => key.to_string(), "outcome" => "success").increment(1);
                    health.record(&key, now, false);
                    return self
                        .store_refreshed(
                            record,
                            grant,
                            integration,
                            matches!(mode, Mode::Forced { .. }),
                            batch,
                        )
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
                            cause: Unavailable::RateLimited,
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
                    cause: Unavailable::ShuttingDown,
                    retry_after: Some(delay),
                });
            }
        }
    }
}
