//! The embedding API. A [`Vault`] stores grants, hands out valid access
//! tokens (refreshing them once across every instance, see
//! [`crate::refresh`]), revokes connections and reports their status.
//! Sealing, scheduling and events happen here, once, for every caller
//! (HTTP handlers, the CLI, Rust apps).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashMap;
use serde::Serialize;
use serde_json::{Value, json};

use crate::crypto::{CryptoError, Envelope};
use crate::domain::{
    Clock, ConnectionId, ConnectionStatus, IntegrationKey, SystemClock, TokenSet, UserId,
};
use crate::events::{EventType, Events};
use crate::integrations::Integrations;
use crate::refresh::journal::Journal;
use crate::refresh::local::LocalStore;
use crate::refresh::{BreakerSettings, IntegrationHealth, RefreshSettings};
use crate::store::{
    ConnectionRecord, ConnectionStore, HistoryEntry, HistoryKind, LastError, NewConnection,
    OutboxEvent, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A background task (a refresh detached from its caller) panicked.
    #[error("refresh task failed: {0}")]
    Task(String),
}

/// Cheap to clone; clones share state (in-flight refreshes, breakers).
#[derive(Clone)]
pub struct Vault {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// `local`, as the trait object every connection write goes through.
    pub store: Arc<dyn ConnectionStore>,
    pub local: Arc<LocalStore>,
    /// The database itself, for the jobs that bypass the token cache (the
    /// outbox, integration health, key rotation).
    pub database: Arc<dyn Store>,
    pub envelope: Envelope,
    pub clock: Arc<dyn Clock>,
    pub integrations: Arc<Integrations>,
    pub events: Events,
    pub settings: RefreshSettings,
    pub health: DashMap<IntegrationKey, Arc<IntegrationHealth>>,
    /// For the health of integrations resolved after start-up.
    pub breaker: BreakerSettings,
    /// One lock per connection being refreshed in this process.
    pub inflight: DashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>,
    /// Lease owner name of this process.
    pub owner: String,
    /// Provider answers (and calls under way) the database may not know.
    pub journal: Journal,
    /// Since when the database has answered without an outage (`None`:
    /// not yet, or failing now); gates lease takeovers (R6).
    pub db_reachable_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// Held while the journal is drained.
    pub draining: tokio::sync::Mutex<()>,
    pub drainer_running: std::sync::atomic::AtomicBool,
}

/// Builds a [`Vault`]; everything but the store and envelope has a default.
pub struct VaultBuilder {
    store: Arc<dyn Store>,
    envelope: Envelope,
    clock: Arc<dyn Clock>,
    integrations: Arc<Integrations>,
    events: Events,
    settings: RefreshSettings,
    breaker: BreakerSettings,
    owner: Option<String>,
    journal: Option<Journal>,
}

impl VaultBuilder {
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The integrations whose connections this vault can refresh and revoke.
    pub fn integrations(mut self, integrations: Arc<Integrations>) -> Self {
        self.integrations = integrations;
        self
    }

    /// Which webhook events to write to the outbox (default: none).
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    pub fn refresh_settings(mut self, settings: RefreshSettings) -> Self {
        self.settings = settings;
        self
    }

    pub fn breaker(mut self, settings: BreakerSettings) -> Self {
        self.breaker = settings;
        self
    }

    /// Lease owner name (default: `instance-<uuid>`); unique per process.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Where provider answers are journaled before they are stored
    /// (default: in memory, which survives database outages but not a
    /// crash; see [`Journal::open`] for the durable one).
    pub fn journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn build(self) -> Vault {
        let health = DashMap::new();
        for integration in self.integrations.all() {
            health.insert(
                integration.key().clone(),
                Arc::new(IntegrationHealth::new(
                    &integration,
                    self.breaker.clone(),
                    self.settings.rate_limit_per_second,
                )),
            );
        }
        let local = Arc::new(LocalStore::new(
            Arc::clone(&self.store) as Arc<dyn ConnectionStore>,
            self.settings.token_cache,
        ));
        let owner = self
            .owner
            .unwrap_or_else(|| format!("instance-{}", uuid::Uuid::new_v4()));
        let journal = self.journal.unwrap_or_else(|| Journal::in_memory(&owner));
        Vault {
            inner: Arc::new(Inner {
                store: Arc::clone(&local) as Arc<dyn ConnectionStore>,
                local,
                database: self.store,
                envelope: self.envelope,
                clock: self.clock,
                integrations: self.integrations,
                events: self.events,
                settings: self.settings,
                health,
                breaker: self.breaker,
                inflight: DashMap::new(),
                owner,
                journal,
                db_reachable_since: std::sync::Mutex::new(None),
                draining: tokio::sync::Mutex::new(()),
                drainer_running: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

/// A connection as the status API shows it: no token material.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ConnectionView {
    pub integration: IntegrationKey,
    pub status: ConnectionStatus,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub connected_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What the connection keeps besides its tokens: the non-secret fields
    /// of the token response its provider's entry lists (Slack's `team`,
    /// Salesforce's `instance_url`), kept ID-token claims under `id_token`,
    /// its `connection_params`, or what an import gave. Never a token.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub metadata: serde_json::Value,
}

impl From<&ConnectionRecord> for ConnectionView {
    fn from(record: &ConnectionRecord) -> Self {
        Self {
            integration: record.integration.clone(),
            status: record.status,
            scopes: record.scopes.to_vec(),
            expires_at: record.expires_at,
            last_refreshed_at: record.last_refreshed_at,
            next_refresh_at: record.next_refresh_at,
            last_error: record.last_error.clone(),
            connected_at: record.created_at,
            updated_at: record.updated_at,
            metadata: record.metadata.clone(),
        }
    }
}

impl Vault {
    /// A vault with no integrations (it stores and reads; refreshing needs
    /// [`Vault::builder`] with integrations).
    pub fn new(store: Arc<dyn Store>, envelope: Envelope, clock: Arc<dyn Clock>) -> Self {
        Self::builder(store, envelope).clock(clock).build()
    }

    pub fn builder(store: Arc<dyn Store>, envelope: Envelope) -> VaultBuilder {
        VaultBuilder {
            store,
            envelope,
            clock: Arc::new(SystemClock),
            integrations: Arc::new(Integrations::default()),
            events: Events::disabled(),
            settings: RefreshSettings::default(),
            breaker: BreakerSettings::default(),
            owner: None,
            journal: None,
        }
    }

    /// The store every write goes through (this process's
    /// [`LocalStore`] around the database).
    pub fn store(&self) -> &Arc<dyn ConnectionStore> {
        &self.inner.store
    }

    /// The database under the cache: every job, including the webhook
    /// outbox, integration health and key rotation.
    pub fn database(&self) -> &Arc<dyn Store> {
        &self.inner.database
    }

    pub fn local(&self) -> &Arc<LocalStore> {
        &self.inner.local
    }

    pub fn envelope(&self) -> &Envelope {
        &self.inner.envelope
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn integrations(&self) -> &Arc<Integrations> {
        &self.inner.integrations
    }

    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    pub fn settings(&self) -> &RefreshSettings {
        &self.inner.settings
    }

    /// This process's lease owner name.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Stores a fresh grant as a connected connection, replacing any earlier
    /// grant of this user for this integration, and records
    /// `connection.created`.
    pub async fn save_grant(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        tokens: &TokenSet,
        metadata: Value,
        refresh_buffer: Duration,
    ) -> Result<ConnectionRecord, VaultError> {
        let now = self.inner.clock.now();
        let due = next_refresh_at(tokens, refresh_buffer, now);
        // A reconnect keeps the connection's id. The row's id is whatever
        // the last upsert wrote and the tokens are sealed under it, so the
        // two stay in step even if the row changes meanwhile.
        let id = match self.inner.store.get(user, integration).await? {
            Some(existing) => existing.id,
            None => ConnectionId::new(),
        };
        self.insert_grant(
            id,
            user,
            integration,
            tokens,
            metadata,
            due,
            now,
            HistoryKind::Created,
        )
        .await
    }

    /// Seals a grant under a new data key and upserts it as connected, with
    /// its event and its history entry (`kind`) in the same write. A grant
    /// for a pair that is already connected updates that connection in
    /// place: same id, `connection.reconnected`, history `reconnected`
    /// (the upsert decides, so a concurrent first connect cannot mislabel).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn insert_grant(
        &self,
        id: ConnectionId,
        user: &UserId,
        integration: &IntegrationKey,
        tokens: &TokenSet,
        metadata: Value,
        next_refresh_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        kind: HistoryKind,
    ) -> Result<ConnectionRecord, VaultError> {
        let sealed = self
            .inner
            .envelope
            .seal_new(id, &tokens.access_token, tokens.refresh_token.as_ref())
            .await?;
        let event = |event_type| {
            self.event(
                event_type,
                id,
                user,
                integration,
                ConnectionStatus::Connected,
                None,
                now,
            )
            .into_iter()
            .collect()
        };
        let emit = event(EventType::ConnectionCreated);
        let emit_on_replace = event(EventType::ConnectionReconnected);
        let record = self
            .inner
            .store
            .upsert(NewConnection {
                id,
                user_id: user.clone(),
                integration: integration.clone(),
                status: ConnectionStatus::Connected,
                scopes: tokens.scopes.clone(),
                token_type: tokens.token_type,
                expires_at: tokens.expires_at,
                next_refresh_at,
                sealed,
                metadata,
                now,
                emit,
                emit_on_replace,
                history: vec![HistoryEntry::new(
                    kind,
                    id,
                    user,
                    integration,
                    ConnectionStatus::Connected,
                    now,
                )],
            })
            .await?;
        crate::refresh::log_lifecycle(&record, "created");
        Ok(record)
    }

    /// The connection and its opened tokens; `None` when there is no
    /// connection or its tokens were erased (disconnected). No refresh: see
    /// [`Vault::valid_token`].
    pub async fn read(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Option<(ConnectionRecord, TokenSet)>, VaultError> {
        let Some(record) = self.inner.store.get(user, integration).await? else {
            return Ok(None);
        };
        let tokens = self.open(&record).await?;
        Ok(tokens.map(|tokens| (record, tokens)))
    }

    /// Opens a record's access token only (`refresh_token: None`): what a
    /// token read needs.
    pub async fn open_access(
        &self,
        record: &ConnectionRecord,
    ) -> Result<Option<TokenSet>, VaultError> {
        let Some(access) = record.access_token.as_deref() else {
            return Ok(None);
        };
        let access_token = self
            .inner
            .envelope
            .open_access(record.id, &record.data_key, access)
            .await?;
        Ok(Some(TokenSet {
            access_token,
            refresh_token: None,
            token_type: record.token_type,
            scopes: record.scopes.clone(),
            expires_at: record.expires_at,
        }))
    }

    /// Opens a record's sealed tokens.
    pub async fn open(&self, record: &ConnectionRecord) -> Result<Option<TokenSet>, VaultError> {
        let Some(access) = record.access_token.as_deref() else {
            return Ok(None);
        };
        let (access_token, refresh_token) = self
            .inner
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

    /// Every connection of a user, for the status API.
    pub async fn connections(&self, user: &UserId) -> Result<Vec<ConnectionView>, VaultError> {
        Ok(self
            .inner
            .store
            .list_by_user(user)
            .await?
            .iter()
            .map(ConnectionView::from)
            .collect())
    }

    pub async fn connection(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Option<ConnectionView>, VaultError> {
        Ok(self
            .inner
            .store
            .get(user, integration)
            .await?
            .as_ref()
            .map(ConnectionView::from))
    }

    /// An outbox event about one connection, if that type is recorded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &self,
        event_type: EventType,
        id: ConnectionId,
        user: &UserId,
        integration: &IntegrationKey,
        status: ConnectionStatus,
        error: Option<&LastError>,
        now: DateTime<Utc>,
    ) -> Option<OutboxEvent> {
        let mut data = json!({
            "connection_id": id,
            "user_id": user,
            "integration": integration,
            "status": status,
        });
        if let Some(error) = error {
            data["error"] = json!(error);
        }
        self.inner.events.event(event_type, data, now)
    }
}

/// When the scheduler should look at a connection next: `buffer` before
/// expiry when it can be refreshed (at most half the remaining lifetime, so a
/// token shorter-lived than the buffer is not refreshed in a loop), at expiry
/// when it cannot (to mark it expired), never when the token does not expire.
pub fn next_refresh_at(
    tokens: &TokenSet,
    buffer: Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let expires_at = tokens.expires_at?;
    if !tokens.can_refresh() {
        return Some(expires_at);
    }
    let lifetime = expires_at - now;
    let buffer = buffer.min(lifetime / 2).max(Duration::zero());
    Some(expires_at - buffer)
}

/// [`next_refresh_at`] moved earlier by up to 10 % of the *effective*
/// buffer (clamped to half the token's remaining life, as there), at
/// random, so connections granted together do not all come due in the
/// same tick, and a short-lived token is not due again at once.
pub fn jittered_refresh_at(
    tokens: &TokenSet,
    buffer: Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let at = next_refresh_at(tokens, buffer, now)?;
    if !tokens.can_refresh() {
        return Some(at);
    }
    let effective = tokens
        .expires_at
        .map_or(buffer, |expires_at| expires_at - at);
    let spread_ms = (effective.num_milliseconds() / 10).max(0);
    let earlier = if spread_ms > 0 {
        rand::random_range(0..=spread_ms)
    } else {
        0
    };
    Some((at - Duration::milliseconds(earlier)).max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccessToken, RefreshToken, Scopes, TokenType};

    fn tokens(now: DateTime<Utc>, expires_in: Option<i64>, refresh: bool) -> TokenSet {
        TokenSet {
            access_token: AccessToken::new("AT"),
            refresh_token: refresh.then(|| RefreshToken::new("RT")),
            token_type: TokenType::Bearer,
            scopes: Scopes::new(),
            expires_at: expires_in.map(|s| now + Duration::seconds(s)),
        }
    }

    #[test]
    fn schedule_follows_refreshability() {
        let now = Utc::now();
        let buffer = Duration::minutes(5);
        let refreshable = tokens(now, Some(3600), true);
        assert_eq!(
            next_refresh_at(&refreshable, buffer, now),
            Some(refreshable.expires_at.unwrap() - buffer)
        );
        let dead_end = tokens(now, Some(3600), false);
        assert_eq!(next_refresh_at(&dead_end, buffer, now), dead_end.expires_at);
        assert_eq!(
            next_refresh_at(&tokens(now, None, true), buffer, now),
            None,
            "non-expiring tokens are never scheduled"
        );
    }

    #[test]
    fn short_lived_tokens_are_refreshed_at_half_life_not_in_a_loop() {
        let now = Utc::now();
        let short = tokens(now, Some(60), true);
        assert_eq!(
            next_refresh_at(&short, Duration::minutes(5), now),
            Some(now + Duration::seconds(30))
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth_of_the_buffer() {
        let now = Utc::now();
        let buffer = Duration::minutes(5);
        let t = tokens(now, Some(3600), true);
        let nominal = next_refresh_at(&t, buffer, now).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let at = jittered_refresh_at(&t, buffer, now).unwrap();
            assert!(
                at <= nominal && at >= nominal - Duration::seconds(30),
                "{at}"
            );
            seen.insert(at);
        }
        assert!(seen.len() > 50, "jitter spreads refreshes");
    }

    #[test]
    fn a_short_lived_token_is_next_due_about_half_a_lifetime_later_never_at_once() {
        // 20 s tokens with the default 5 min buffer: the buffer is clamped to
        // 10 s, and so is the jitter's base (at most 1 s earlier).
        let now = Utc::now();
        let t = tokens(now, Some(20), true);
        for _ in 0..500 {
            let at = jittered_refresh_at(&t, Duration::minutes(5), now).unwrap();
            assert!(
                at >= now + Duration::seconds(9) && at <= now + Duration::seconds(10),
                "due {} ms after the refresh",
                (at - now).num_milliseconds()
            );
        }
    }
}
