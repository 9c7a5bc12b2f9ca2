//! Disconnecting: revoke at the provider, then mark the connection.

use std::time::Duration;

use crate::domain::{ConnectionStatus, IntegrationKey, UserId};
use crate::events::EventType;
use crate::store::{HistoryEntry, HistoryKind, StoreError};
use crate::vault::Vault;

use super::*;

impl Vault {
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
            (Some(tokens), Some(client)) => match match client.for_stored(&record.metadata) {
                Ok(client) => client.revoke(&tokens).await,
                Err(err) => Err(err),
            } {
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
            update.history.push(HistoryEntry::about(
                HistoryKind::Revoked,
                &record,
                ConnectionStatus::Disconnected,
                now,
            ));
            match self
                .store()
                .update(record.id, record.version, &update)
                .await
            {
                Ok(_) => {
                    super::log_lifecycle(&record, "revoked and erased");
                    return Ok(revocation);
                }
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
            cause: super::Unavailable::Contended {
                during: "while it was being disconnected",
            },
            retry_after: Some(Duration::from_secs(1)),
        })
    }
}
