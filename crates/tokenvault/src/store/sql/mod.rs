//! [`SqlStore`]: the connection tables (connections, the webhook outbox,
//! key rotation, integration health) on SQLite or PostgreSQL. Each statement
//! is written once; the backends differ only in SQL text ([`Dialect`]):
//! PostgreSQL keeps ids as `uuid` and metadata as `jsonb`, casting to and
//! from text at the boundary, claims due rows with `FOR UPDATE SKIP LOCKED`,
//! and writes a batch as one `UNNEST` statement ([`batch`]).

mod batch;
mod connections;
mod health;
mod history;
mod outbox;
mod rotation;

use std::sync::Arc;

use super::record::UpdateColumns;
use super::{BatchUpdate, Database, LeaseRenewal, Pool, StoreError};
use crate::domain::ConnectionId;

/// Every job of the connection tables on one pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: Pool,
}

impl SqlStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Shares the pool of an open database.
    pub fn on(database: &Database) -> Arc<Self> {
        Arc::new(Self::new(database.pool()))
    }

    /// Opens its own database (see [`Database::open`]).
    pub async fn connect(
        url: &str,
        options: &super::PoolOptions,
    ) -> Result<Self, super::StoreError> {
        Ok(Self::new(Database::open(url, options).await?.pool()))
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// What differs between the backends beyond SQL text.
trait Backend: sqlx::Database {
    fn migrator() -> sqlx::migrate::Migrator;

    /// One transaction of compare-and-swap updates, with the events of the
    /// rows written. `None` for a row not at its expected version.
    fn write_batch(
        pool: &sqlx::Pool<Self>,
        updates: &[BatchUpdate],
    ) -> impl Future<Output = Result<Vec<Option<i64>>, StoreError>> + Send;

    /// Lease renewals in one transaction; whether each row was renewed.
    fn renew_batch(
        pool: &sqlx::Pool<Self>,
        owner: &str,
        renewals: &[LeaseRenewal],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;
}

const SQLITE: Dialect =
    dialect!(columns: sqlite, id_cast: "", json_cast: "", id_select: "id", lock: "");

const POSTGRES: Dialect = dialect!(
    columns: postgres,
    id_cast: "::uuid",
    json_cast: "::jsonb",
    id_select: "id::text",
    // Concurrent schedulers skip each other's rows instead of queueing on them.
    lock: " FOR UPDATE SKIP LOCKED"
);

/// Per-backend SQL. Placeholders are `$N` in both (SQLite accepts them).
struct Dialect {
    /// SELECT list producing a `RawRow`.
    pub columns: &'static str,
    pub select_by_key: &'static str,
    pub select_by_id: &'static str,
    pub select_by_user: &'static str,
    pub upsert: &'static str,
    pub update: &'static str,
    /// `update` answering only the new version (batched write-backs).
    pub update_version: &'static str,
    pub claim_due: &'static str,
    pub acquire_lease: &'static str,
    pub renew_lease: &'static str,
    pub release_lease: &'static str,
    pub replace_wrapped_key: &'static str,
    pub list_keys_to_rotate: &'static str,
    pub insert_event: &'static str,
    pub insert_history: &'static str,
    pub claim_events: &'static str,
    pub event_delivered: &'static str,
    pub event_failed: &'static str,
}

/// Column list of `RETURNING`/`SELECT` for a dialect; a macro so that the
/// dialect's statements can be `concat!`ed at compile time.
macro_rules! returning_columns {
    (sqlite) => {
        "id, user_id, integration, status, scopes, token_type, expires_at, next_refresh_at, \
         refresh_attempts, last_error_code, last_error_message, last_refreshed_at, failing_since, version, \
         access_token, refresh_token, data_key, metadata, lease_owner, lease_expires_at, \
         created_at, updated_at"
    };
    (postgres) => {
        "id::text AS id, user_id, integration, status, scopes, token_type, expires_at, next_refresh_at, \
         refresh_attempts, last_error_code, last_error_message, last_refreshed_at, failing_since, version, \
         access_token, refresh_token, data_key, metadata::text AS metadata, lease_owner, lease_expires_at, \
         created_at, updated_at"
    };
}
use returning_columns;

/// Binds an update's columns, then the row's id and expected version, in the
/// order of the dialects' `update` and `update_version` statements.
fn bind_update<'q, DB, O>(
    query: sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments>,
    c: UpdateColumns<'q>,
    id: ConnectionId,
    expected_version: i64,
) -> sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    &'static str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(c.status)
        .bind(c.scopes)
        .bind(c.token_type)
        .bind(c.expires_at)
        .bind(c.next_refresh_at)
        .bind(c.refresh_attempts)
        .bind(c.last_error_code)
        .bind(c.last_error_message)
        .bind(c.last_refreshed_at)
        .bind(c.access_token)
        .bind(c.refresh_token)
        .bind(c.metadata)
        .bind(c.lease_owner)
        .bind(c.lease_expires_at)
        .bind(c.updated_at)
        .bind(id.to_string())
        .bind(expected_version)
        .bind(c.failing_since)
}

/// Binds one outbox row for [`Dialect::insert_event`].
pub(crate) fn insert_event<'q, DB: sqlx::Database>(
    sql: &'static str,
    event: &'q super::OutboxEvent,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(sql)
        .bind(event.id.to_string())
        .bind(event.event_type.as_str())
        .bind(event.payload.as_str())
        .bind(super::to_millis(event.created_at))
}

/// Binds one history entry for [`Dialect::insert_history`]; `kind`
/// overrides the entry's own (a reconnect found by the upsert).
pub(crate) fn insert_history<'q, DB: sqlx::Database>(
    sql: &'static str,
    entry: &'q super::HistoryEntry,
    kind: super::HistoryKind,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(sql)
        .bind(entry.id.to_string())
        .bind(entry.connection_id.to_string())
        .bind(entry.user_id.as_str())
        .bind(entry.integration.as_str())
        .bind(kind.as_str())
        .bind(entry.status.as_str())
        .bind(entry.error_class.as_deref())
        .bind(entry.error_code.as_deref())
        .bind(entry.error_message.as_deref())
        .bind(super::to_millis(entry.at))
}

/// Builds a backend's [`Dialect`]. The statements are identical but for
/// the SELECT list, parameter casts and PostgreSQL's row locking.
macro_rules! dialect {
    (columns: $cols:tt, id_cast: $id:literal, json_cast: $json:literal, id_select: $id_select:literal, lock: $lock:literal) => {
        $crate::store::sql::Dialect {
            columns: $crate::store::sql::returning_columns!($cols),
            select_by_key: concat!(
                "SELECT ", $crate::store::sql::returning_columns!($cols),
                " FROM connections WHERE user_id = $1 AND integration = $2"
            ),
            select_by_id: concat!(
                "SELECT ", $crate::store::sql::returning_columns!($cols), " FROM connections WHERE id = $1", $id
            ),
            select_by_user: concat!(
                "SELECT ", $crate::store::sql::returning_columns!($cols),
                " FROM connections WHERE user_id = $1 ORDER BY integration"
            ),
            upsert: concat!(
                "INSERT INTO connections (id, user_id, integration, status, scopes, token_type, expires_at, \
                 next_refresh_at, access_token, refresh_token, data_key, kek_id, metadata, created_at, updated_at) \
                 VALUES ($1", $id, ", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13", $json, ", $14, $14) \
                 ON CONFLICT (user_id, integration) DO UPDATE SET \
                 id = excluded.id, status = excluded.status, scopes = excluded.scopes, \
                 token_type = excluded.token_type, expires_at = excluded.expires_at, \
                 next_refresh_at = excluded.next_refresh_at, refresh_attempts = 0, \
                 last_error_code = NULL, last_error_message = NULL, last_refreshed_at = NULL, failing_since = NULL, \
                 version = connections.version + 1, access_token = excluded.access_token, \
                 refresh_token = excluded.refresh_token, data_key = excluded.data_key, \
                 kek_id = excluded.kek_id, metadata = excluded.metadata, lease_owner = NULL, \
                 lease_expires_at = NULL, updated_at = excluded.updated_at \
                 RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            update: concat!(
                "UPDATE connections SET status = $1, scopes = $2, token_type = $3, expires_at = $4, \
                 next_refresh_at = $5, refresh_attempts = $6, last_error_code = $7, last_error_message = $8, \
                 last_refreshed_at = $9, access_token = $10, refresh_token = $11, metadata = $12", $json, ", \
                 lease_owner = $13, lease_expires_at = $14, updated_at = $15, failing_since = $18, version = version + 1 \
                 WHERE id = $16", $id, " AND version = $17 RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            update_version: concat!(
                "UPDATE connections SET status = $1, scopes = $2, token_type = $3, expires_at = $4, \
                 next_refresh_at = $5, refresh_attempts = $6, last_error_code = $7, last_error_message = $8, \
                 last_refreshed_at = $9, access_token = $10, refresh_token = $11, metadata = $12", $json, ", \
                 lease_owner = $13, lease_expires_at = $14, updated_at = $15, failing_since = $18, version = version + 1 \
                 WHERE id = $16", $id, " AND version = $17 RETURNING version"
            ),
            claim_due: concat!(
                "UPDATE connections SET lease_owner = $1, lease_expires_at = $2, version = version + 1 \
                 WHERE id IN (SELECT id FROM connections \
                 WHERE next_refresh_at IS NOT NULL AND next_refresh_at <= $3 AND status IN ('connected', 'error') \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $5) \
                 ORDER BY next_refresh_at LIMIT $4", $lock, ") RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            acquire_lease: concat!(
                "UPDATE connections SET lease_owner = $1, lease_expires_at = $2, version = version + 1 \
                 WHERE id = $3", $id, " AND version = $5 \
                 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at <= $4) \
                 RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            // Not a version bump: the holder keeps the version its copy of
            // the row (and its refresh token) was validated at.
            renew_lease: concat!(
                "UPDATE connections SET lease_expires_at = $1 \
                 WHERE id = $2", $id, " AND lease_owner = $3 AND version = $4"
            ),
            release_lease: concat!(
                "UPDATE connections SET lease_owner = NULL, lease_expires_at = NULL, version = version + 1 \
                 WHERE id = $1", $id, " AND lease_owner = $2"
            ),
            replace_wrapped_key: concat!(
                "UPDATE connections SET data_key = $1, kek_id = $2 WHERE id = $3", $id, " AND data_key = $4"
            ),
            list_keys_to_rotate: concat!(
                "SELECT ", $id_select, ", data_key FROM connections WHERE id > $1", $id,
                " AND kek_id <> $2 ORDER BY id LIMIT $3"
            ),
            insert_history: concat!(
                "INSERT INTO connection_events (id, connection_id, user_id, integration, kind, status, \
                 error_class, error_code, error_message, created_at) \
                 VALUES ($1", $id, ", $2", $id, ", $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            insert_event: concat!(
                "INSERT INTO webhook_outbox (id, event_type, payload, created_at, next_attempt_at) \
                 VALUES ($1", $id, ", $2, $3, $4, $4)"
            ),
            claim_events: concat!(
                "UPDATE webhook_outbox SET lease_owner = $1, lease_expires_at = $2 \
                 WHERE id IN (SELECT id FROM webhook_outbox \
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= $3 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $3) \
                 ORDER BY next_attempt_at LIMIT $4", $lock, ") \
                 RETURNING ", $id_select, ", event_type, payload, attempts, created_at"
            ),
            event_delivered: concat!(
                "UPDATE webhook_outbox SET delivered_at = $3, attempts = attempts + 1, last_error = NULL, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", $id, " AND lease_owner = $2"
            ),
            event_failed: concat!(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $3, abandoned_at = $4, \
                 last_error = $5, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1", $id, " AND lease_owner = $2"
            ),
        }
    };
}
use dialect;
