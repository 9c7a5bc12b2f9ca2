//! App-level tokens: an integration's own token from the client
//! credentials grant, not tied to any user.

use std::sync::Arc;

use dashmap::DashMap;

use super::Integration;
use crate::domain::{Clock, IntegrationKey, TokenSet};
use crate::oauth::OAuthError;

/// How long before its expiry a cached app token is fetched again.
pub const APP_TOKEN_RENEW_BEFORE_SECS: i64 = 60;

/// One cached client-credentials token per integration, fetched again
/// [`APP_TOKEN_RENEW_BEFORE_SECS`] before it expires. Concurrent callers
/// for one integration share one fetch. Cheap to clone; clones share the
/// cache.
#[derive(Clone, Default)]
pub struct AppTokens {
    slots: Arc<DashMap<IntegrationKey, Arc<tokio::sync::Mutex<Option<TokenSet>>>>>,
}

impl AppTokens {
    /// The integration's app token: the cached one while it has more than
    /// a minute left, else a new one from the token endpoint.
    pub async fn token(
        &self,
        integration: &Integration,
        clock: &dyn Clock,
    ) -> Result<TokenSet, OAuthError> {
        let slot = Arc::clone(&self.slots.entry(integration.key().clone()).or_default());
        let mut cached = slot.lock().await;
        // Read after the lock: a caller that waited sees the fetch it
        // waited for.
        let now = clock.now();
        let renew_before = chrono::Duration::seconds(APP_TOKEN_RENEW_BEFORE_SECS);
        if let Some(tokens) = cached
            .as_ref()
            .filter(|tokens| !tokens.needs_refresh(now, renew_before))
        {
            return Ok(tokens.clone());
        }
        let grant = integration.client_credentials(None, now).await?;
        *cached = Some(grant.tokens.clone());
        Ok(grant.tokens)
    }
}
