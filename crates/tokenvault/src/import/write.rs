//! [`Vault::import`]: the imported grant compared with the stored
//! connection and written in one compare-and-swap.

use std::time::Duration as StdDuration;

use chrono::Duration;
use serde_json::Value;

use super::validate::validate;
use super::{ImportAction, ImportError, ImportOptions, ImportOutcome, ImportedGrant};
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, TokenSet, UserId};
use crate::events::EventType;
use crate::store::{ConnectionRecord, HistoryEntry, HistoryKind, StoreError};
use crate::vault::{ConnectionView, Vault, VaultError, jittered_refresh_at};

/// Write attempts lost to concurrent writers before giving up.
const MAX_CONFLICTS: u32 = 10;

/// Whether the stored connection holds tokens newer than `imported`: it is
/// live, tokenvault refreshed it itself since it was stored (a stored grant
/// has no `last_refreshed_at`), and the imported token does not expire later.
pub(super) fn holds_newer(record: &ConnectionRecord, imported: &TokenSet) -> bool {
    let live = matches!(
        record.status,
        ConnectionStatus::Connected | ConnectionStatus::Error
    ) && record.access_token.is_some();
    let imported_later = matches!(
        (imported.expires_at, record.expires_at),
        (Some(new), Some(old)) if new > old
    );
    live && record.last_refreshed_at.is_some() && !imported_later
}

impl Vault {
    /// Imports a grant for (user, integration); see the module docs.
    pub async fn import(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        grant: ImportedGrant,
    ) -> Result<ImportOutcome, ImportError> {
        self.import_with(user, integration, grant, ImportOptions::default())
            .await
    }

    pub async fn import_with(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        grant: ImportedGrant,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImportError> {
        let result = self.import_inner(user, integration, grant, options).await;
        if !options.dry_run {
            let outcome = match &result {
                Ok(outcome) => outcome.action.as_str(),
                Err(ImportError::Invalid(_) | ImportError::UnknownIntegration(_)) => "rejected",
                Err(_) => "error",
            };
            metrics::counter!("tokenvault_imports_total", "outcome" => outcome).increment(1);
        }
        result
    }

    async fn import_inner(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        grant: ImportedGrant,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImportError> {
        let client = self
            .integrations()
            .get(integration)
            .ok_or_else(|| ImportError::UnknownIntegration(integration.clone()))?;
        let buffer = Duration::from_std(client.refresh_buffer()).unwrap_or(Duration::MAX);
        let (tokens, metadata) = validate(grant, self.clock().now())?;
        // A refresh in flight holds the row's lease for at most lease_ttl;
        // wait it out, then decide against what it wrote.
        let settle_by =
            tokio::time::Instant::now() + self.settings().lease_ttl + StdDuration::from_secs(1);
        let mut conflicts = 0;
        loop {
            let now = self.clock().now();
            let Some(record) = self.store().get(user, integration).await? else {
                return self
                    .import_new(user, integration, &tokens, metadata, buffer, options)
                    .await;
            };
            let stored = self.open(&record).await?;
            if stored.as_ref() == Some(&tokens) && record.metadata == metadata {
                return Ok(self.imported(ImportAction::Unchanged, (&record).into()));
            }
            if !options.force && holds_newer(&record, &tokens) {
                return Ok(self.imported(ImportAction::KeptNewer, (&record).into()));
            }
            if !record.lease_allows(self.owner(), now) {
                if tokio::time::Instant::now() >= settle_by {
                    return Err(ImportError::Busy);
                }
                tokio::time::sleep(StdDuration::from_millis(100)).await;
                continue;
            }
            let mut update = record.to_update(now);
            update.status = ConnectionStatus::Connected;
            update.scopes = tokens.scopes.clone();
            update.token_type = tokens.token_type;
            update.expires_at = tokens.expires_at;
            update.next_refresh_at = jittered_refresh_at(&tokens, buffer, now);
            update.refresh_attempts = 0;
            update.last_error = None;
            // Not refreshed by tokenvault: marks the tokens as imported, for
            // the next import's newer-than check.
            update.last_refreshed_at = None;
            update.failing_since = None;
            update.metadata = metadata.clone();
            update.lease = None;
            if options.dry_run {
                let view = ConnectionView {
                    integration: integration.clone(),
                    status: update.status,
                    scopes: update.scopes.to_vec(),
                    expires_at: update.expires_at,
                    last_refreshed_at: None,
                    next_refresh_at: update.next_refresh_at,
                    last_error: None,
                    connected_at: record.created_at,
                    updated_at: now,
                    metadata: metadata.clone(),
                };
                return Ok(self.imported(ImportAction::Replaced, view));
            }
            // The row keeps its id and data key; the tokens are sealed anew
            // under it, exactly as a refresh does.
            let (access, refresh) = self
                .envelope()
                .reseal(
                    record.id,
                    &record.data_key,
                    &tokens.access_token,
                    tokens.refresh_token.as_ref(),
                )
                .await
                .map_err(VaultError::from)?;
            update.access_token = Some(access);
            update.refresh_token = refresh;
            update.emit.extend(self.event(
                EventType::ConnectionCreated,
                record.id,
                user,
                integration,
                ConnectionStatus::Connected,
                None,
                now,
            ));
            update.history.push(HistoryEntry::about(
                HistoryKind::Imported,
                &record,
                ConnectionStatus::Connected,
                now,
            ));
            match self
                .store()
                .update(record.id, record.version, &update)
                .await
            {
                Ok(stored) => {
                    return Ok(self.imported(ImportAction::Replaced, (&stored).into()));
                }
                // Someone wrote the row since we read it (a refresh, a
                // reconnect): decide again against what they wrote.
                Err(StoreError::Conflict { .. } | StoreError::NotFound)
                    if conflicts < MAX_CONFLICTS =>
                {
                    conflicts += 1;
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound) => {
                    return Err(ImportError::Busy);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn import_new(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        tokens: &TokenSet,
        metadata: Value,
        buffer: Duration,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImportError> {
        let now = self.clock().now();
        let next_refresh_at = jittered_refresh_at(tokens, buffer, now);
        if options.dry_run {
            let view = ConnectionView {
                integration: integration.clone(),
                status: ConnectionStatus::Connected,
                scopes: tokens.scopes.to_vec(),
                expires_at: tokens.expires_at,
                last_refreshed_at: None,
                next_refresh_at,
                last_error: None,
                connected_at: now,
                updated_at: now,
                metadata,
            };
            return Ok(self.imported(ImportAction::Created, view));
        }
        let record = self
            .insert_grant(
                ConnectionId::new(),
                user,
                integration,
                tokens,
                metadata,
                next_refresh_at,
                now,
                HistoryKind::Imported,
            )
            .await?;
        Ok(self.imported(ImportAction::Created, (&record).into()))
    }

    fn imported(&self, action: ImportAction, connection: ConnectionView) -> ImportOutcome {
        tracing::debug!(integration = %connection.integration, action = action.as_str(), "grant imported");
        ImportOutcome { action, connection }
    }
}
