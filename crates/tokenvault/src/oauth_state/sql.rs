//! State in the connection database (`oauth_states`), for single-instance
//! deployments and multi-instance ones without Redis. `take` is one
//! `DELETE … RETURNING`, atomic on both backends; an expired row it returns
//! counts as absent. Expired rows linger until [`StateStore::purge_expired`].

use std::sync::Arc;
use std::time::Duration;

use super::{StateError, StateKey, StateRecord, StateStore, ttl_millis};
use crate::domain::{Clock, SystemClock};
use crate::store::{Database, Pool, PoolOptions, with_pool};

/// Per-backend SQL; placeholders are `$N` on both.
struct Dialect {
    put: &'static str,
    take: &'static str,
    peek: &'static str,
}

macro_rules! dialect {
    (json_in: $json_in:literal, json_out: $json_out:literal) => {
        Dialect {
            put: concat!(
                "INSERT INTO oauth_states (state, record, expires_at) VALUES ($1, $2",
                $json_in,
                ", $3) ON CONFLICT (state) DO UPDATE SET record = excluded.record, expires_at = excluded.expires_at"
            ),
            take: concat!(
                "DELETE FROM oauth_states WHERE state = $1 RETURNING record",
                $json_out,
                ", expires_at"
            ),
            peek: concat!(
                "SELECT record",
                $json_out,
                ", expires_at FROM oauth_states WHERE state = $1"
            ),
        }
    };
}

const SQLITE: Dialect = dialect!(json_in: "", json_out: "");
const POSTGRES: Dialect = dialect!(json_in: "::jsonb", json_out: "::text");
const PURGE: &str = "DELETE FROM oauth_states WHERE expires_at <= $1";

/// The `oauth_states` table on SQLite or PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct SqlStateStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SqlStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStateStore")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl SqlStateStore {
    pub fn new(pool: Pool, clock: Arc<dyn Clock>) -> Self {
        Self { pool, clock }
    }

    /// Shares the pool of an open database.
    pub fn on(database: &Database, clock: Arc<dyn Clock>) -> Arc<dyn StateStore> {
        Arc::new(Self::new(database.pool(), clock))
    }

    /// Opens its own pool to the database URL (`sqlite:` or `postgres:`),
    /// with the connection store's settings, on the system clock. Prefer
    /// sharing the database's pool via [`Self::on`]. Does not migrate.
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StateError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Never echo the URL: it may hold a password.
        let unavailable = |err: crate::store::StoreError| match err {
            crate::store::StoreError::UnsupportedUrl(_) => {
                StateError::InvalidUrl("the database URL does not parse".into())
            }
            other => StateError::Unavailable(other.to_string()),
        };
        let database = Database::open(url, options).await.map_err(unavailable)?;
        Ok(Self::new(database.pool(), clock))
    }

    /// `"SQLite"` or `"PostgreSQL"`.
    pub fn backend(&self) -> &'static str {
        self.pool.backend()
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// The record `statement` (take or peek) returns for `key`; a row past
    /// its expiry counts as absent.
    async fn fetch(
        &self,
        key: &str,
        statement: fn(&Dialect) -> &'static str,
    ) -> Result<Option<StateRecord>, StateError> {
        if !StateKey::is_well_formed(key) {
            return Ok(None);
        }
        let row: Option<(String, i64)> =
            with_pool!(self, |pool, dialect| sqlx::query_as(statement(dialect))
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(|err| self.error(err)))?;
        match row {
            Some((record, expires_at)) if expires_at > self.now_ms() => {
                StateRecord::from_json(&record).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn error(&self, err: sqlx::Error) -> StateError {
        match err {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StateError::Corrupt(err.to_string())
            }
            other => StateError::Unavailable(format!("{}: {other}", self.backend())),
        }
    }
}

#[async_trait::async_trait]
impl StateStore for SqlStateStore {
    async fn put(
        &self,
        key: &StateKey,
        record: &StateRecord,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let expires_at = self.now_ms().saturating_add(ttl_millis(ttl));
        let json = record.to_json();
        with_pool!(self, |pool, dialect| sqlx::query(dialect.put)
            .bind(key.as_str())
            .bind(&json)
            .bind(expires_at)
            .execute(pool)
            .await
            .map(drop)
            .map_err(|err| self.error(err)))
    }

    async fn take(&self, key: &str) -> Result<Option<StateRecord>, StateError> {
        self.fetch(key, |dialect| dialect.take).await
    }

    async fn peek(&self, key: &str) -> Result<Option<StateRecord>, StateError> {
        self.fetch(key, |dialect| dialect.peek).await
    }

    async fn purge_expired(&self) -> Result<u64, StateError> {
        let now = self.now_ms();
        with_pool!(self, |pool| sqlx::query(PURGE)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(|err| self.error(err)))
    }

    async fn ping(&self) -> Result<(), StateError> {
        with_pool!(self, |pool| sqlx::query(
            "SELECT 1 FROM oauth_states LIMIT 1"
        )
        .execute(pool)
        .await
        .map(drop)
        .map_err(|err| self.error(err)))
    }
}
