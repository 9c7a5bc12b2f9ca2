//! Test support shared by this crate's and the server's test suites: a fresh
//! database per test. PostgreSQL must be reachable; tests fail, never skip,
//! when it is not.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The server tests create their databases on (`TOKENVAULT_TEST_DATABASE_URL`,
/// default the local `test` database).
pub fn postgres_admin_url() -> String {
    std::env::var("TOKENVAULT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_postgres_url() -> String {
    let admin = postgres_admin_url();
    let options =
        PgConnectOptions::from_str(&admin).expect("TOKENVAULT_TEST_DATABASE_URL is a postgres URL");
    let mut conn = options.connect().await.unwrap_or_else(|err| {
        panic!("PostgreSQL is required for this test and is not reachable at {admin}: {err}. Run scripts/test.sh, which starts it.")
    });
    let name = format!("tv_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    let mut url = url::Url::parse(&admin).expect("admin URL parses");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A SQLite file inside `dir`.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("tokenvault.db").display())
}
