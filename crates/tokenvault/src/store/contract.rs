//! The storage contracts, one trait per job. [`super::SqlStore`] implements
//! them all on either backend.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{
    BatchUpdate, ConnectionRecord, ConnectionUpdate, HistoryCursor, HistoryEntry, LeaseRenewal,
    ListCursor, ListFilter, MisconfiguredIntegration, NewConnection, OutboxEvent, PendingEvent,
    StatusCount, StoreError,
};
use crate::crypto::WrappedKey;
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, UserId};

/// Connections: the rows, their compare-and-swap writes and the refresh
/// leases. The token cache ([`crate::refresh::LocalStore`]) wraps this job
/// only, since only it changes what a token read returns.
///
/// Every write bumps `version`; [`ConnectionStore::update`] only succeeds when
/// the caller's version is still current, so a stale writer can never
/// overwrite a newer token.
#[async_trait::async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Applies pending migrations; refuses a schema from a newer release.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Stores a new grant for (user, integration), replacing any previous
    /// one wholesale (new id, data key and tokens; attempts, errors and lease
    /// cleared; `created_at` kept).
    async fn upsert(&self, connection: NewConnection) -> Result<ConnectionRecord, StoreError>;

    async fn get(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Option<ConnectionRecord>, StoreError>;

    async fn get_by_id(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError>;

    async fn list_by_user(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError>;

    /// Rows matching `filter` in (user id, integration) byte order, keyset
    /// paged: pass the cursor of the previous page's last row as `after`.
    /// Each filter is served by an index, so a page costs O(page).
    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError>;

    /// Row counts by integration and status, with how many of them are
    /// failing and how many are due for a refresh before `due_before`.
    async fn summary(&self, due_before: DateTime<Utc>) -> Result<Vec<StatusCount>, StoreError>;

    /// Compare-and-swap: writes `update` if the row is still at
    /// `expected_version`, returning the new row; [`StoreError::Conflict`] if
    /// it moved, [`StoreError::NotFound`] if it is gone.
    async fn update(
        &self,
        id: ConnectionId,
        expected_version: i64,
        update: &ConnectionUpdate,
    ) -> Result<ConnectionRecord, StoreError>;

    /// Many compare-and-swap updates in one round trip (one transaction):
    /// each row is written only if it is still at its `expected_version`.
    /// The answer has one entry per input, in order: the row's new version,
    /// or [`StoreError::Conflict`] / [`StoreError::NotFound`] as
    /// [`ConnectionStore::update`] would answer. Outbox events of the rows
    /// written are stored in the same transaction. The outer error means
    /// nothing was written.
    async fn update_batch(
        &self,
        updates: &[BatchUpdate],
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError>;

    /// Leases up to `limit` refreshable rows whose `next_refresh_at` has come
    /// and that hold no lease, or one that expired at or before
    /// `takeover_before` (normally `now`; an earlier instant defers
    /// taking over other instances' expired leases). Costs O(due), not
    /// O(rows). Bumps each claimed row's version.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        takeover_before: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<ConnectionRecord>, StoreError>;

    /// Takes the lease on one row *as the caller read it*: only while the
    /// row is still at `expected_version`, and unless another owner holds a
    /// lease expiring after `takeover_before`. Bumps the version; the
    /// returned row is the caller's new copy. `None` when the row moved or
    /// is held.
    async fn acquire_lease(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        takeover_before: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ConnectionRecord>, StoreError>;

    /// Moves the expiry of `owner`'s lease to `lease_until` if the row is
    /// still at `expected_version` and still leased to `owner` (an expired
    /// lease nobody took over counts). The version is left alone: the
    /// holder's copy stays current. False when the row moved.
    async fn renew_lease(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// [`ConnectionStore::renew_lease`] of many rows in one round trip and
    /// one commit (the scheduler's in-flight leases, taken right before
    /// each provider call). Answers, in order, whether each was renewed;
    /// the outer error means none was.
    async fn renew_leases(
        &self,
        owner: &str,
        renewals: &[LeaseRenewal],
    ) -> Result<Vec<bool>, StoreError>;

    /// Releases a lease this owner holds; another owner's lease is untouched.
    async fn release_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError>;

    async fn delete(&self, user: &UserId, integration: &IntegrationKey)
    -> Result<bool, StoreError>;

    async fn count_by_status(&self) -> Result<BTreeMap<ConnectionStatus, u64>, StoreError>;

    /// Refreshable rows due before `before` (for the "due within 1 h" gauge).
    async fn count_due_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Rows whose data key is wrapped by any master key other than `active`.
    /// Removes rows in `statuses` not updated since `before` (retention).
    async fn purge(
        &self,
        statuses: &[ConnectionStatus],
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}

/// Key rotation: re-wrapping each row's data key under the active master
/// key (`tokenvault keys rotate`), and what is still wrapped under which.
#[async_trait::async_trait]
pub trait KeyRotationStore: Send + Sync + 'static {
    async fn list_keys_to_rotate(
        &self,
        active: &str,
        after: Option<ConnectionId>,
        limit: u32,
    ) -> Result<Vec<(ConnectionId, WrappedKey)>, StoreError>;

    /// Swaps a row's wrapped data key if it is still `old`. Tokens and version
    /// are untouched: the data key itself does not change, only its wrapping.
    async fn replace_wrapped_key(
        &self,
        id: ConnectionId,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StoreError>;

    async fn count_by_key(&self) -> Result<BTreeMap<String, u64>, StoreError>;
}

/// The webhook outbox: events written with the change they report (or on
/// their own), claimed and delivered by a [`crate::events::WebhookDeliverer`].
#[async_trait::async_trait]
pub trait EventOutbox: Send + Sync + 'static {
    /// Adds events not tied to a connection write (see `emit` on
    /// [`NewConnection`] and [`ConnectionUpdate`] for those).
    async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError>;

    /// Leases up to `limit` undelivered events whose next attempt has come,
    /// oldest first, skipping events another worker holds.
    async fn claim_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<PendingEvent>, StoreError>;

    /// Marks a leased event delivered; false if the lease was lost.
    async fn event_delivered(
        &self,
        id: uuid::Uuid,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Records a failed attempt: retried at `retry_at`, or abandoned when
    /// `None`.
    async fn event_failed(
        &self,
        id: uuid::Uuid,
        owner: &str,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    async fn count_pending_events(&self) -> Result<u64, StoreError>;
}

/// What happened to each connection, kept whether or not a webhook is
/// configured. Entries are written with the change they describe (see
/// `history` on [`NewConnection`] and [`ConnectionUpdate`]).
#[async_trait::async_trait]
pub trait ConnectionHistory: Send + Sync + 'static {
    /// The (user, integration) pair's entries, newest first, across its
    /// reconnects; `before` is the cursor of the previous page's last entry.
    async fn history(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Removes entries older than `before` (retention).
    async fn purge_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Entries recorded at or after `since`, per kind (every kind listed).
    async fn kinds_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<super::HistoryKind, u64>, StoreError>;

    /// Connections whose last successful refresh was at or after `since`
    /// (routine refreshes write no history entry; this counts them).
    async fn refreshed_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Integrations found misconfigured (a provider refused the client), shared
/// by every instance.
#[async_trait::async_trait]
pub trait IntegrationHealthStore: Send + Sync + 'static {
    /// Marks an integration misconfigured unless it already is under the
    /// same configuration fingerprint; writes `event` only when newly
    /// marked. Returns whether it was newly marked.
    async fn mark_misconfigured(
        &self,
        entry: &MisconfiguredIntegration,
        event: Option<&OutboxEvent>,
    ) -> Result<bool, StoreError>;

    async fn clear_misconfigured(&self, integration: &IntegrationKey) -> Result<bool, StoreError>;

    async fn list_misconfigured(&self) -> Result<Vec<MisconfiguredIntegration>, StoreError>;
}

/// Every job of the database, as one object: what [`super::Database::store`]
/// returns and a [`crate::vault::Vault`] is built on.
pub trait Store:
    ConnectionStore + EventOutbox + KeyRotationStore + IntegrationHealthStore + ConnectionHistory
{
}

impl<T> Store for T where
    T: ConnectionStore
        + EventOutbox
        + KeyRotationStore
        + IntegrationHealthStore
        + ConnectionHistory
{
}
