use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::record::{RawRow, UpdateColumns};
use super::sql::{Dialect, dialect, insert_event, sql_store};
use super::{
    BatchUpdate, ConnectionRecord, ConnectionUpdate, LastError, ListFilter,
    MisconfiguredIntegration, NewConnection, OutboxEvent, PendingEvent, PoolOptions, StoreError,
    to_millis,
};
use crate::crypto::WrappedKey;
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, UserId};

const DIALECT: Dialect =
    dialect!(columns: sqlite, id_cast: "", json_cast: "", id_select: "id", lock: "");

/// The embedded default: one file, WAL mode, no server to run.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true);
        let path = connect.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| StoreError::Unavailable {
                backend: "SQLite",
                target: path.display().to_string(),
                reason: format!("cannot create directory {}: {err}", dir.display()),
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|err| StoreError::Unavailable {
                backend: "SQLite",
                target: path.display().to_string(),
                reason: err.to_string(),
            })?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/sqlite")
    }

    /// One transaction of compare-and-swap updates (SQLite runs in-process:
    /// one commit is what batching saves, statements are cheap). `None` for
    /// a row not at its expected version.
    async fn write_batch(&self, updates: &[BatchUpdate]) -> Result<Vec<Option<i64>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut written = Vec::with_capacity(updates.len());
        for entry in updates {
            let c = UpdateColumns::new(&entry.update);
            let version: Option<i64> = crate::store::sql::bind_update!(
                sqlx::query_scalar(DIALECT.update_version),
                c,
                entry.id,
                entry.expected_version
            )
            .fetch_optional(&mut *tx)
            .await?;
            if version.is_some() {
                for event in &entry.update.emit {
                    insert_event::<Sqlite>(DIALECT.insert_event, event)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            written.push(version);
        }
        tx.commit().await?;
        Ok(written)
    }
}

sql_store!(SqliteStore, Sqlite, DIALECT);
