use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::record::{RawRow, UpdateColumns};
use super::sql::{Dialect, dialect, insert_event, sql_store};
use super::{
    ConnectionRecord, ConnectionUpdate, LastError, ListFilter, MisconfiguredIntegration,
    NewConnection, OutboxEvent, PendingEvent, PoolOptions, StoreError, to_millis,
};
use crate::crypto::WrappedKey;
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, UserId};

const DIALECT: Dialect = dialect!(
    columns: postgres,
    id_cast: "::uuid",
    json_cast: "::jsonb",
    id_select: "id::text",
    // Concurrent schedulers skip each other's rows instead of queueing on them.
    lock: " FOR UPDATE SKIP LOCKED"
);

/// The production backend, shared by every instance.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?;
        let target = format!("{}:{}", connect.get_host(), connect.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|err| StoreError::Unavailable {
                backend: "PostgreSQL",
                target,
                reason: err.to_string(),
            })?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/postgres")
    }
}

sql_store!(PostgresStore, Postgres, DIALECT);
