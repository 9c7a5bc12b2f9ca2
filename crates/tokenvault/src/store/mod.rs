//! Persistence. One contract ([`ConnectionStore`]), one implementation per
//! backend, each with its own migrations; the backend is chosen once, from the
//! database URL, at start-up. A conformance suite runs against both.

mod postgres;
mod record;
mod sql;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use postgres::PostgresStore;
pub(crate) use record::holds_nul;
pub use record::{
    BatchUpdate, ConnectionRecord, ConnectionUpdate, LastError, Lease, MisconfiguredIntegration,
    NewConnection, OutboxEvent, PendingEvent,
};
pub(crate) use sql::insert_event;
pub use sqlite::SqliteStore;

use crate::crypto::WrappedKey;
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, UserId};

/// Failures at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-swap lost: someone wrote the row since it was read.
    #[error(
        "connection {id} was changed concurrently (expected version {expected}); re-read and retry"
    )]
    Conflict { id: ConnectionId, expected: i64 },
    #[error("connection not found")]
    NotFound,
    #[error("cannot reach {backend} at {target}: {reason}")]
    Unavailable {
        backend: &'static str,
        target: String,
        reason: String,
    },
    #[error(
        "the database was migrated by a newer tokenvault (migration {version} is unknown to this build); run the newer version or restore a backup"
    )]
    NewerSchema { version: i64 },
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("stored row is unreadable: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}; use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database could not be reached or is going away (connection
    /// refused or broken, pool exhausted, server shutting down or not yet
    /// accepting connections): the caller should answer 503 and try again,
    /// nothing is wrong with the data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Database(err) => sqlx_unavailable(err),
            _ => false,
        }
    }
}

fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: connection exceptions (08…), operator intervention
            // (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
            // connect now), insufficient resources (53…). SQLite: busy (5)
            // and locked (6), with their extended codes.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || matches!(code.as_ref(), "5" | "6" | "261" | "517" | "262")
        }),
        _ => false,
    }
}

/// Which rows to list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub integration: Option<IntegrationKey>,
    pub status: Option<ConnectionStatus>,
}

/// Pool settings shared by both backends.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The storage contract for connections.
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

    /// Keyset paging by id: pass the last id of the previous page as `after`.
    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<ConnectionId>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError>;

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

    /// Releases a lease this owner holds; another owner's lease is untouched.
    async fn release_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError>;

    async fn delete(&self, user: &UserId, integration: &IntegrationKey)
    -> Result<bool, StoreError>;

    async fn count_by_status(&self) -> Result<BTreeMap<ConnectionStatus, u64>, StoreError>;

    /// Refreshable rows due before `before` (for the "due within 1 h" gauge).
    async fn count_due_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Rows whose data key is wrapped by any master key other than `active`.
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

    /// Removes rows in `statuses` not updated since `before` (retention).
    async fn purge(
        &self,
        statuses: &[ConnectionStatus],
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    // --- webhook outbox -------------------------------------------------

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

    // --- integration health --------------------------------------------

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

/// The connection pool of an open database, by backend. Every SQL store
/// holds one (cheap to clone) and matches on it once per statement.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// An open database: one pool, from which every store on it is built the
/// same way, `Sql…Store::on(&database)` (connections here; OAuth state,
/// device sessions, bulk actions and API keys in their modules).
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Database {
    /// Opens the backend named by the URL's scheme.
    pub async fn open(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteStore::connect(url, options).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres(PostgresStore::connect(url, options).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// The shared pool, for the stores built on this database.
    pub fn pool(&self) -> Pool {
        match self {
            Self::Sqlite(store) => Pool::Sqlite(store.pool().clone()),
            Self::Postgres(store) => Pool::Postgres(store.pool().clone()),
        }
    }

    pub fn connections(&self) -> Arc<dyn ConnectionStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }
}

/// Opens the backend named by the URL's scheme, as a connection store.
pub async fn connect(
    url: &str,
    options: &PoolOptions,
) -> Result<Arc<dyn ConnectionStore>, StoreError> {
    Ok(Database::open(url, options).await?.connections())
}

pub(crate) fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

/// Maps sqlx's migration errors onto ours, naming the newer-schema case.
pub(crate) fn migrate_error(err: sqlx::migrate::MigrateError) -> StoreError {
    match err {
        sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::NewerSchema { version },
        other => StoreError::Migrate(other.to_string()),
    }
}
