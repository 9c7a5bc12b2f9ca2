//! Device sessions in the connection database (`device_sessions`). One SQL
//! text serves both backends (`$N` placeholders, text ids, millisecond
//! integers); only the claim differs: PostgreSQL adds `FOR UPDATE SKIP
//! LOCKED` so concurrent pollers skip each other's rows instead of queueing
//! on them, while SQLite serializes writers anyway.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{DeviceSession, DeviceSessionStore, NewDeviceSession, PollOutcome, ShownCode};
use crate::crypto::WrappedKey;
use crate::domain::{DeviceSessionId, IntegrationKey, Scopes, UserId};
use crate::store::{
    Database, LastError, Lease, Pool, PoolOptions, StoreError, from_millis, to_millis, with_pool,
};

macro_rules! columns {
    () => {
        "id, user_id, integration, scopes, status, interval_secs, next_poll_at, expires_at, \
         device_code, data_key, last_error_code, last_error_message, lease_owner, \
         lease_expires_at, created_at, updated_at, user_code, verification_uri, \
         verification_uri_complete"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO device_sessions (id, user_id, integration, scopes, status, interval_secs, \
     next_poll_at, expires_at, device_code, data_key, kek_id, created_at, updated_at, \
     user_code, verification_uri, verification_uri_complete) \
     VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14) RETURNING ",
    columns!()
);

const SELECT_BY_ID: &str = concat!("SELECT ", columns!(), " FROM device_sessions WHERE id = $1");

macro_rules! claim_due {
    ($lock:literal) => {
        concat!(
            "UPDATE device_sessions SET lease_owner = $1, lease_expires_at = $2 \
             WHERE id IN (SELECT id FROM device_sessions \
             WHERE status = 'pending' AND next_poll_at <= $3 \
             AND (lease_expires_at IS NULL OR lease_expires_at <= $3) \
             ORDER BY next_poll_at LIMIT $4",
            $lock,
            ") RETURNING ",
            columns!()
        )
    };
}

/// The SQL that differs between the backends.
struct Dialect {
    claim_due: &'static str,
}

const SQLITE: Dialect = Dialect {
    claim_due: claim_due!(""),
};
const POSTGRES: Dialect = Dialect {
    claim_due: claim_due!(" FOR UPDATE SKIP LOCKED"),
};

const FINISH_POLL: &str = "UPDATE device_sessions SET status = $1, interval_secs = $2, \
     next_poll_at = $3, last_error_code = $4, last_error_message = $5, \
     device_code = CASE WHEN $1 = 'pending' THEN device_code ELSE NULL END, \
     lease_owner = NULL, lease_expires_at = NULL, updated_at = $6 \
     WHERE id = $7 AND status = 'pending' AND lease_owner = $8";

const PURGE_FINISHED: &str =
    "DELETE FROM device_sessions WHERE status <> 'pending' AND updated_at < $1";

/// The `device_sessions` table on SQLite or PostgreSQL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqlDeviceSessionStore {
    pool: Pool,
}

impl SqlDeviceSessionStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Shares the pool of an open database.
    pub fn on(database: &Database) -> Arc<dyn DeviceSessionStore> {
        Arc::new(Self::new(database.pool()))
    }

    /// Opens its own pool to the database URL (`sqlite:` or `postgres:`).
    /// Does not migrate: the connection store's migrations create the table.
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        Ok(Self::new(Database::open(url, options).await?.pool()))
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    user_id: String,
    integration: String,
    scopes: String,
    status: String,
    interval_secs: i64,
    next_poll_at: i64,
    expires_at: i64,
    device_code: Option<Vec<u8>>,
    data_key: Vec<u8>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    lease_owner: Option<String>,
    lease_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    user_code: Option<String>,
    verification_uri: Option<String>,
    verification_uri_complete: Option<String>,
}

fn corrupt(field: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("device_sessions.{field}: {err}"))
}

impl TryFrom<Row> for DeviceSession {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        Ok(DeviceSession {
            id: DeviceSessionId::parse(&row.id).map_err(|e| corrupt("id", e))?,
            user_id: UserId::parse(row.user_id).map_err(|e| corrupt("user_id", e))?,
            integration: IntegrationKey::parse(row.integration)
                .map_err(|e| corrupt("integration", e))?,
            scopes: Scopes::parse(&row.scopes, " "),
            status: row.status.parse().map_err(|e| corrupt("status", e))?,
            interval_secs: u64::try_from(row.interval_secs)
                .map_err(|e| corrupt("interval_secs", e))?,
            next_poll_at: from_millis(row.next_poll_at)?,
            expires_at: from_millis(row.expires_at)?,
            device_code: row.device_code,
            data_key: WrappedKey::from_blob(row.data_key).map_err(|e| corrupt("data_key", e))?,
            last_error: row.last_error_code.map(|code| LastError {
                code,
                message: row.last_error_message.unwrap_or_default(),
            }),
            lease: match (row.lease_owner, row.lease_expires_at) {
                (Some(owner), Some(expires_at)) => Some(Lease {
                    owner,
                    expires_at: from_millis(expires_at)?,
                }),
                _ => None,
            },
            created_at: from_millis(row.created_at)?,
            updated_at: from_millis(row.updated_at)?,
            shown: row.user_code.map(|user_code| ShownCode {
                user_code,
                verification_uri: row.verification_uri.unwrap_or_default(),
                verification_uri_complete: row.verification_uri_complete,
            }),
        })
    }
}

fn interval(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl DeviceSessionStore for SqlDeviceSessionStore {
    async fn insert(&self, s: &NewDeviceSession) -> Result<DeviceSession, StoreError> {
        let row: Row = with_pool!(self, |pool| sqlx::query_as(INSERT)
            .bind(s.id.to_string())
            .bind(s.user_id.as_str())
            .bind(s.integration.as_str())
            .bind(s.scopes.format(" "))
            .bind(interval(s.interval_secs))
            .bind(to_millis(s.next_poll_at))
            .bind(to_millis(s.expires_at))
            .bind(s.sealed.device_code.as_slice())
            .bind(s.sealed.data_key.blob())
            .bind(s.sealed.data_key.key_id().as_str())
            .bind(to_millis(s.now))
            .bind(&s.shown.user_code)
            .bind(&s.shown.verification_uri)
            .bind(s.shown.verification_uri_complete.as_deref())
            .fetch_one(pool)
            .await)?;
        row.try_into()
    }

    async fn get(&self, id: DeviceSessionId) -> Result<Option<DeviceSession>, StoreError> {
        let row: Option<Row> = with_pool!(self, |pool| sqlx::query_as(SELECT_BY_ID)
            .bind(id.to_string())
            .fetch_optional(pool)
            .await)?;
        row.map(TryInto::try_into).transpose()
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<DeviceSession>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool, dialect| sqlx::query_as(dialect.claim_due)
            .bind(owner)
            .bind(to_millis(lease_until))
            .bind(to_millis(now))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn finish_poll(
        &self,
        id: DeviceSessionId,
        owner: &str,
        outcome: &PollOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let status: &str = outcome.status.as_str();
        let error = outcome.last_error.as_ref();
        let done = with_pool!(self, |pool| sqlx::query(FINISH_POLL)
            .bind(status)
            .bind(interval(outcome.interval_secs))
            .bind(to_millis(outcome.next_poll_at))
            .bind(error.map(|e| e.code.as_str()))
            .bind(error.map(|e| e.message.as_str()))
            .bind(to_millis(now))
            .bind(id.to_string())
            .bind(owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = with_pool!(self, |pool| sqlx::query(PURGE_FINISHED)
            .bind(to_millis(before))
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(done)
    }
}
