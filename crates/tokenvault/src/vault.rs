//! The embedding API: store a grant, read a connection's tokens. Sealing and
//! the choice of when to refresh next happen here, once, for every caller
//! (HTTP handlers, the CLI importer, Rust apps).

use std::sync::Arc;

use chrono::Duration;
use serde_json::Value;

use crate::crypto::{CryptoError, Envelope};
use crate::domain::{Clock, ConnectionId, ConnectionStatus, IntegrationKey, TokenSet, UserId};
use crate::store::{ConnectionRecord, ConnectionStore, NewConnection, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

#[derive(Clone)]
pub struct Vault {
    store: Arc<dyn ConnectionStore>,
    envelope: Envelope,
    clock: Arc<dyn Clock>,
}

impl Vault {
    pub fn new(store: Arc<dyn ConnectionStore>, envelope: Envelope, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            envelope,
            clock,
        }
    }

    pub fn store(&self) -> &Arc<dyn ConnectionStore> {
        &self.store
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Stores a fresh grant as a connected connection, replacing any earlier
    /// grant of this user for this integration.
    pub async fn save_grant(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        tokens: &TokenSet,
        metadata: Value,
        refresh_buffer: Duration,
    ) -> Result<ConnectionRecord, VaultError> {
        let id = ConnectionId::new();
        let sealed = self
            .envelope
            .seal_new(id, &tokens.access_token, tokens.refresh_token.as_ref())
            .await?;
        let record = self
            .store
            .upsert(NewConnection {
                id,
                user_id: user.clone(),
                integration: integration.clone(),
                status: ConnectionStatus::Connected,
                scopes: tokens.scopes.clone(),
                token_type: tokens.token_type,
                expires_at: tokens.expires_at,
                next_refresh_at: next_refresh_at(tokens, refresh_buffer),
                sealed,
                metadata,
                now: self.clock.now(),
            })
            .await?;
        Ok(record)
    }

    /// The connection and its opened tokens; `None` when there is no
    /// connection or its tokens were erased (disconnected).
    pub async fn read(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Option<(ConnectionRecord, TokenSet)>, VaultError> {
        let Some(record) = self.store.get(user, integration).await? else {
            return Ok(None);
        };
        let tokens = self.open(&record).await?;
        Ok(tokens.map(|tokens| (record, tokens)))
    }

    /// Opens a record's sealed tokens.
    pub async fn open(&self, record: &ConnectionRecord) -> Result<Option<TokenSet>, VaultError> {
        let Some(access) = record.access_token.as_deref() else {
            return Ok(None);
        };
        let (access_token, refresh_token) = self
            .envelope
            .open(
                record.id,
                &record.data_key,
                access,
                record.refresh_token.as_deref(),
            )
            .await?;
        Ok(Some(TokenSet {
            access_token,
            refresh_token,
            token_type: record.token_type,
            scopes: record.scopes.clone(),
            expires_at: record.expires_at,
        }))
    }
}

/// When the scheduler should look at a connection next: `buffer` before
/// expiry when it can be refreshed, at expiry when it cannot (to mark it
/// expired), never when the token does not expire.
pub fn next_refresh_at(
    tokens: &TokenSet,
    buffer: Duration,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let expires_at = tokens.expires_at?;
    Some(if tokens.can_refresh() {
        expires_at - buffer
    } else {
        expires_at
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccessToken, RefreshToken, Scopes, TokenType};
    use chrono::Utc;

    fn tokens(expires_in: Option<i64>, refresh: bool) -> TokenSet {
        TokenSet {
            access_token: AccessToken::new("AT"),
            refresh_token: refresh.then(|| RefreshToken::new("RT")),
            token_type: TokenType::Bearer,
            scopes: Scopes::new(),
            expires_at: expires_in.map(|s| Utc::now() + Duration::seconds(s)),
        }
    }

    #[test]
    fn schedule_follows_refreshability() {
        let buffer = Duration::minutes(5);
        let refreshable = tokens(Some(3600), true);
        assert_eq!(
            next_refresh_at(&refreshable, buffer),
            Some(refreshable.expires_at.unwrap() - buffer)
        );
        let dead_end = tokens(Some(3600), false);
        assert_eq!(next_refresh_at(&dead_end, buffer), dead_end.expires_at);
        assert_eq!(
            next_refresh_at(&tokens(None, true), buffer),
            None,
            "non-expiring tokens are never scheduled"
        );
    }
}
