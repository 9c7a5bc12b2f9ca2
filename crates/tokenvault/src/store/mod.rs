//! Persistence. One contract per job ([`ConnectionStore`], [`EventOutbox`],
//! [`KeyRotationStore`], [`IntegrationHealthStore`]), each statement written
//! once for both backends (SQLite and PostgreSQL, each with its own
//! migrations); the backend is chosen once, from the database URL, when the
//! [`Database`] is opened. A conformance suite runs against both.

mod contract;
mod open;
mod record;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use contract::{
    ConnectionHistory, ConnectionStore, EventOutbox, IntegrationHealthStore, KeyRotationStore,
    Store,
};
pub(crate) use record::holds_nul;
pub use record::{
    BatchUpdate, ConnectionRecord, ConnectionUpdate, HistoryCursor, HistoryEntry, HistoryKind,
    LastError, Lease, LeaseRenewal, MisconfiguredIntegration, NewConnection, OutboxEvent,
    PendingEvent, StatusCount,
};
pub use sql::SqlStore;
pub(crate) use sql::insert_event;

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
    /// Only users whose id starts with this (a valid user id's characters).
    pub user_id_prefix: Option<String>,
}

/// Position in a listing, which is ordered by (user id, integration) in
/// byte order: the page after it starts strictly after this pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub user_id: UserId,
    pub integration: IntegrationKey,
}

impl ListCursor {
    pub fn of(record: &ConnectionRecord) -> Self {
        Self {
            user_id: record.user_id.clone(),
            integration: record.integration.clone(),
        }
    }
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

/// The connection pool of an open database, by backend. Every SQL store
/// holds one (cheap to clone) and dispatches on it once per call with
/// [`with_pool!`].
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Pool {
    /// `"SQLite"` or `"PostgreSQL"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }
}

/// Runs `$body` with `$pool` bound to the concrete sqlx pool of `$self.pool`
/// (a [`Pool`]), once per backend: the statements are written once and
/// compiled for each. The second form also binds `$dialect` to the calling
/// module's `SQLITE` or `POSTGRES` constant, for the SQL that differs.
macro_rules! with_pool {
    ($self:ident, |$pool:ident| $body:expr) => {
        match &$self.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
    ($self:ident, |$pool:ident, $dialect:ident| $body:expr) => {
        match &$self.pool {
            $crate::store::Pool::Sqlite($pool) => {
                let $dialect = &SQLITE;
                $body
            }
            $crate::store::Pool::Postgres($pool) => {
                let $dialect = &POSTGRES;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// An open database: one pool, from which every store on it is built the
/// same way, `Sql…Store::on(&database)` ([`SqlStore`] for connections, the
/// outbox, key rotation and integration health; OAuth state, device
/// sessions, bulk actions and API keys in their modules).
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
}

impl Database {
    /// Opens the backend named by the URL's scheme (`sqlite:` or
    /// `postgres:`). Does not migrate: see [`ConnectionStore::migrate`].
    pub async fn open(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        Ok(Self {
            pool: open::pool(url, options).await?,
        })
    }

    /// The shared pool, for the stores built on this database.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Every job of the connection tables, on this database's pool.
    pub fn store(&self) -> Arc<dyn Store> {
        SqlStore::on(self)
    }
}

/// Opens the backend named by the URL's scheme, as a [`Store`].
pub async fn connect(url: &str, options: &PoolOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Database::open(url, options).await?.store())
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
