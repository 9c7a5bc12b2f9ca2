//! Opening a pool: the one place where the backends' connection settings
//! differ.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{Pool, PoolOptions, StoreError};

/// Opens the backend named by the URL's scheme.
pub(super) async fn pool(url: &str, options: &PoolOptions) -> Result<Pool, StoreError> {
    if url.starts_with("sqlite:") {
        sqlite(url, options).await.map(Pool::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        postgres(url, options).await.map(Pool::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// The embedded default: one file, WAL mode, no server to run.
async fn sqlite(url: &str, options: &PoolOptions) -> Result<sqlx::SqlitePool, StoreError> {
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
    SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(|err| StoreError::Unavailable {
            backend: "SQLite",
            target: path.display().to_string(),
            reason: err.to_string(),
        })
}

/// The production backend, shared by every instance.
async fn postgres(url: &str, options: &PoolOptions) -> Result<sqlx::PgPool, StoreError> {
    let connect =
        PgConnectOptions::from_str(url).map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?;
    let target = format!("{}:{}", connect.get_host(), connect.get_port());
    PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(|err| StoreError::Unavailable {
            backend: "PostgreSQL",
            target,
            reason: err.to_string(),
        })
}
