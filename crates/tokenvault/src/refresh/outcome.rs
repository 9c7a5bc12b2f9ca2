//! Storing what a refresh ended with: new tokens, a dead grant, a
//! misconfigured integration, a failure to retry, and the events each emits.

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use classify::FailureClass;
use scheduler::{Batch, applied};

use crate::domain::{ConnectionId, ConnectionStatus, TokenSet};
use crate::events::EventType;
use crate::integrations::{Grant, Integration};
use crate::oauth::OAuthError;
use crate::store::{
    BatchUpdate, ConnectionRecord, HistoryEntry, HistoryKind, LastError, MisconfiguredIntegration,
    StoreError,
};
use crate::vault::{Vault, VaultError, jittered_refresh_at};

use super::*;

impl Vault {
    /// Persists a successful refresh, releasing the lease in the same write.
    /// The provider may have rotated the refresh token, so the answer is
    /// journaled first (R5): a write the database refuses is kept and
    /// retried until it lands, and the row's in-flight lease keeps every
    /// other instance from presenting the old token meanwhile.
    pub(super) async fn store_refreshed(
        &self,
        record: ConnectionRecord,
        grant: Grant,
        integration: &Arc<Integration>,
        forced: bool,
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
            update.history.push(HistoryEntry::about(
                HistoryKind::Recovered,
                &record,
                ConnectionStatus::Connected,
                now,
            ));
        }
        if forced {
            update.history.push(HistoryEntry::about(
                HistoryKind::RefreshForced,
                &record,
                ConnectionStatus::Connected,
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
                if record.status == ConnectionStatus::Error {
                    super::log_lifecycle(&stored, "recovered");
                } else {
                    super::log_refreshed(&stored);
                }
                Ok(IssuedToken::new(tokens, stored, TokenOutcome::Refreshed))
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
                Ok(IssuedToken::new(
                    tokens,
                    applied(&record, &update, record.version),
                    TokenOutcome::Refreshed,
                ))
            }
        }
    }

    /// Our write lost the compare-and-swap after the provider issued new
    /// tokens: the connection was reconnected, revoked or deleted meanwhile.
    /// The tokens we hold belong to nothing; revoke them if the user
    /// disconnected, and answer from the row as it is now.
    pub(super) async fn after_lost_write(
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
        let tokens = usable(self, &record, Opening::AccessOnly).await?;
        Ok(IssuedToken::new(tokens, record, TokenOutcome::Refreshed))
    }

    pub(super) async fn store_needs_reauth(
        &self,
        record: ConnectionRecord,
        err: &OAuthError,
    ) -> TokenError {
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
        update.history.push(
            HistoryEntry::about(
                HistoryKind::NeedsReauth,
                &record,
                ConnectionStatus::NeedsReauth,
                now,
            )
            .with_error(None, &last_error),
        );
        self.write_best_effort(&record, &update, "recording needs_reauth failed")
            .await;
        super::log_lifecycle(
            &record,
            "needs reauthorization: the provider refused its grant",
        );
        TokenError::NeedsReauth {
            status: ConnectionStatus::NeedsReauth,
            last_error: Some(last_error),
        }
    }

    pub(super) async fn store_misconfigured(
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
            .database()
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
    pub(super) async fn store_failed_run(
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
        // The first failed run of a streak, and the one that turns the
        // connection to `error`: a long outage retried with backoff does
        // not fill the history with one entry per attempt.
        if record.failing_since.is_none() || status != record.status {
            update.history.push(
                HistoryEntry::about(HistoryKind::RefreshFailed, &record, status, now)
                    .with_error(Some(class.as_str()), &last_error),
            );
        }
        self.write_best_effort(&record, &update, "recording the failed refresh run failed")
            .await;
        if status == ConnectionStatus::Error && record.status != ConnectionStatus::Error {
            super::log_lifecycle(
                &record,
                "failing: refreshes keep failing, retried with backoff",
            );
        }
        TokenError::ProviderUnavailable {
            cause: super::Unavailable::RefreshFailed {
                class: class.as_str(),
                detail: err.to_string(),
            },
            retry_after: Some(cooldown),
        }
    }

    /// Moves `next_refresh_at` to `until` and releases our lease, if the row
    /// is still as we read it.
    pub(super) async fn postpone(&self, record: &ConnectionRecord, until: DateTime<Utc>) {
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
    pub(super) async fn release(&self, record: &ConnectionRecord) {
        if record
            .lease
            .as_ref()
            .is_some_and(|l| l.owner == self.owner())
        {
            let _ = self.store().release_lease(record.id, self.owner()).await;
        }
    }

    pub(super) async fn mark_expired(&self, record: &ConnectionRecord) {
        if !record.status.can_become(ConnectionStatus::Expired) {
            return;
        }
        let now = self.clock().now();
        let mut update = record.to_update(now);
        update.status = ConnectionStatus::Expired;
        update.next_refresh_at = None;
        update.lease = None;
        update.history.push(HistoryEntry::about(
            HistoryKind::Expired,
            record,
            ConnectionStatus::Expired,
            now,
        ));
        let _ = self
            .store()
            .update(record.id, record.version, &update)
            .await;
    }
}

impl Vault {
    pub(super) fn connection_event(
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
    pub(super) async fn write_best_effort(
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
pub(super) fn outcome_unknown(err: &OAuthError) -> bool {
    matches!(
        err,
        OAuthError::Timeout | OAuthError::Connect(_) | OAuthError::InvalidResponse(_)
    )
}
