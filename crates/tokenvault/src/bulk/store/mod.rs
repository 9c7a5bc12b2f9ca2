//! Storage of bulk actions and their items (`bulk_actions`, `bulk_items`):
//! the [`BulkStore`] trait and what it takes and answers. [`SqlBulkStore`]
//! implements it on SQLite and PostgreSQL.

mod rows;
mod sql;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

pub use sql::SqlBulkStore;

use super::{BulkActionRecord, BulkItem, ItemOutcome, ItemState};
use crate::domain::{ConnectionStatus, IntegrationKey};
use crate::store::{OutboxEvent, StoreError};

/// A new action with its targets, written in one transaction.
#[derive(Debug, Clone)]
pub struct NewBulkAction {
    pub id: uuid::Uuid,
    pub integration: IntegrationKey,
    /// JSON: the request and how users were chosen.
    pub spec: String,
    pub not_before: DateTime<Utc>,
    pub rate_per_second: f64,
    pub created_at: DateTime<Utc>,
    /// Created already leased (by `tokenvault bulk run`, which runs it).
    pub lease: Option<(String, DateTime<Utc>)>,
}

/// Who the items are for.
#[derive(Debug, Clone)]
pub enum TargetRows<'a> {
    /// These users, in this order (already deduplicated).
    Users(&'a [String]),
    /// Every connection of the action's integration with this status, at
    /// creation time.
    Status(ConnectionStatus),
}

/// What cancelling found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    /// Already completed or cancelled.
    Finished,
}

#[async_trait::async_trait]
pub trait BulkStore: Send + Sync + 'static {
    /// Inserts the action and its items; returns the number of items.
    async fn create(
        &self,
        action: &NewBulkAction,
        targets: TargetRows<'_>,
    ) -> Result<u64, StoreError>;
    async fn get(&self, id: uuid::Uuid) -> Result<Option<BulkActionRecord>, StoreError>;
    /// The newest `limit` actions, newest first.
    async fn recent(&self, limit: u32) -> Result<Vec<BulkActionRecord>, StoreError>;
    async fn counts(&self, id: uuid::Uuid) -> Result<BTreeMap<ItemState, u64>, StoreError>;
    /// Items that reached a final state at or after `since`.
    async fn finished_since(&self, id: uuid::Uuid, since: DateTime<Utc>)
    -> Result<u64, StoreError>;
    /// Items in `seq` order after `after`, optionally of one state.
    async fn items(
        &self,
        id: uuid::Uuid,
        state: Option<ItemState>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<BulkItem>, StoreError>;
    /// Marks an active action cancelled and its pending items cancelled,
    /// enqueuing `event` in the same transaction.
    async fn cancel(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
        event: Option<&OutboxEvent>,
    ) -> Result<CancelOutcome, StoreError>;
    /// Leases one runnable action (active, `not_before` passed, no live
    /// lease), oldest first.
    async fn claim_action(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<BulkActionRecord>, StoreError>;
    /// Leases action `id` to `owner` when it is active and its lease is free,
    /// expired, or already `owner`'s (whatever its `not_before`); `None`
    /// otherwise. Marks the action started.
    async fn take_action(
        &self,
        id: uuid::Uuid,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<BulkActionRecord>, StoreError>;
    /// Extends our lease; false when it was lost or the action is no longer
    /// active (cancelled).
    async fn renew_action(
        &self,
        id: uuid::Uuid,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    async fn release_action(&self, id: uuid::Uuid, owner: &str) -> Result<(), StoreError>;
    /// Items left `running` by an instance that stopped mid-request: back to
    /// `pending` when the method is idempotent (sending again is safe), else
    /// `failed` with `interrupted` (the outcome is unknown; sending again
    /// could do it twice). Returns how many were found.
    async fn recover_interrupted(
        &self,
        id: uuid::Uuid,
        resend: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Pending items due at `now`, in order.
    async fn due_items(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BulkItem>, StoreError>;
    /// When the next pending item falls due.
    async fn next_due(&self, id: uuid::Uuid) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// When an item of the action last changed after a send (any runner).
    async fn last_sent(&self, id: uuid::Uuid) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// `pending` → `running` with `attempts` raised to `attempt`; false
    /// when the item is no longer pending (cancelled).
    async fn start_item(
        &self,
        id: uuid::Uuid,
        seq: i64,
        attempt: i32,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Records the outcome of send number `attempt`; false when the item
    /// was taken over meanwhile (its state is not ours to write).
    async fn finish_item(
        &self,
        id: uuid::Uuid,
        seq: i64,
        attempt: i32,
        outcome: &ItemOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Completes an active action we hold once no item is pending or
    /// running, enqueuing `event` in the same transaction.
    async fn complete(
        &self,
        id: uuid::Uuid,
        owner: &str,
        now: DateTime<Utc>,
        event: Option<&OutboxEvent>,
    ) -> Result<bool, StoreError>;
}
