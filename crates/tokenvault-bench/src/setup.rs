//! Building the service as `serve` does, and filling databases fast.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokenvault::crypto::Envelope;
use tokenvault::domain::{AccessToken, ConnectionId, IntegrationKey, RefreshToken};
use tokenvault::integrations::IntegrationConfig;
use tokenvault_server::config::Config;

pub const API_KEY: &str = "tvk_bench_key";
/// A fixed development key: the benchmark's data is thrown away.
pub const MASTER_KEYS: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
pub const INTEGRATION: &str = "spotify";

/// Overrides of the service's defaults given on the command line (for
/// experiments; the documented run uses none).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Tuning {
    pub database_max_connections: Option<u32>,
    pub scheduler_concurrency: Option<usize>,
    pub scheduler_batch: Option<u32>,
}

pub static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();

/// The configuration `serve` would load, for a database and (optionally) a
/// token endpoint that replaces the provider's.
pub fn config(
    data_dir: &Path,
    database_url: Option<String>,
    token_url: Option<&str>,
) -> anyhow::Result<Config> {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        database_url,
        master_keys: Some(SecretString::from(MASTER_KEYS)),
        api_keys: vec![SecretString::from(API_KEY)],
        public_url: Some(url::Url::parse("http://127.0.0.1:8080")?),
        metrics_bind: None,
        ..Config::default()
    };
    if let Some(token_url) = token_url {
        let file = data_dir.join("providers.toml");
        std::fs::write(
            &file,
            format!(
                "[providers.spotify]\ntoken_url = \"{token_url}\"\nrefresh_url = \"{token_url}\"\n"
            ),
        )?;
        config.providers_file = Some(file);
    }
    let tuning = TUNING.get().copied().unwrap_or_default();
    if let Some(n) = tuning.database_max_connections {
        config.database_max_connections = n;
    }
    if let Some(n) = tuning.scheduler_concurrency {
        config.scheduler_concurrency = n;
    }
    if let Some(n) = tuning.scheduler_batch {
        config.scheduler_batch = n;
    }
    config.integrations.insert(
        IntegrationKey::parse(INTEGRATION)?,
        IntegrationConfig {
            provider: INTEGRATION.into(),
            client_id: "bench-client".into(),
            client_secret: Some(SecretString::from("bench-secret")),
            redirect_uri: Some(url::Url::parse("http://127.0.0.1:8080/oauth/callback")?),
            ..IntegrationConfig::default()
        },
    );
    Ok(config)
}

pub fn user(i: usize) -> String {
    format!("user-{i:07}")
}

/// The token read of connection `i`: what B1 and B4 request.
pub fn token_path(i: usize) -> String {
    format!("/v1/users/{}/connections/{}/token", user(i), INTEGRATION)
}

pub fn refresh_token(i: usize) -> String {
    format!("RT-{i:07}")
}

/// Inserts connections `range` of integration [`INTEGRATION`] with one
/// multi-row `INSERT … SELECT FROM UNNEST(…)` per batch (static SQL, arrays
/// bound), each sealed under its own data key exactly as a grant is.
/// `due(i)` is the row's `next_refresh_at`.
pub async fn bulk_insert(
    pool: &PgPool,
    envelope: &Envelope,
    range: std::ops::Range<usize>,
    expires_at: DateTime<Utc>,
    due: impl Fn(usize) -> DateTime<Utc>,
) -> anyhow::Result<()> {
    const INSERT: &str = "INSERT INTO connections (id, user_id, integration, status, scopes, token_type, \
         expires_at, next_refresh_at, access_token, refresh_token, data_key, kek_id, metadata, created_at, updated_at) \
         SELECT t.id, t.user_id, $1, 'connected', '', 'Bearer', $2, t.due, t.access, t.refresh, t.data_key, $3, \
         '{}'::jsonb, $4, $4 \
         FROM UNNEST($5::uuid[], $6::text[], $7::bigint[], $8::bytea[], $9::bytea[], $10::bytea[]) \
         AS t(id, user_id, due, access, refresh, data_key)";
    const BATCH: usize = 5_000;
    let now = Utc::now().timestamp_millis();
    let mut start = range.start;
    while start < range.end {
        let end = (start + BATCH).min(range.end);
        let mut ids = Vec::with_capacity(end - start);
        let mut users = Vec::with_capacity(end - start);
        let mut dues = Vec::with_capacity(end - start);
        let mut access = Vec::with_capacity(end - start);
        let mut refresh = Vec::with_capacity(end - start);
        let mut keys = Vec::with_capacity(end - start);
        let mut kek = String::new();
        for i in start..end {
            let id = ConnectionId::new();
            let sealed = envelope
                .seal_new(
                    id,
                    &AccessToken::new(format!("AT-{i:07}")),
                    Some(&RefreshToken::new(refresh_token(i))),
                )
                .await?;
            ids.push(id.as_uuid());
            users.push(user(i));
            dues.push(due(i).timestamp_millis());
            access.push(sealed.access_token);
            refresh.push(sealed.refresh_token.unwrap_or_default());
            kek = sealed.data_key.key_id().as_str().to_owned();
            keys.push(sealed.data_key.into_blob());
        }
        sqlx::query(INSERT)
            .bind(INTEGRATION)
            .bind(expires_at.timestamp_millis())
            .bind(kek)
            .bind(now)
            .bind(ids)
            .bind(users)
            .bind(dues)
            .bind(access)
            .bind(refresh)
            .bind(keys)
            .execute(pool)
            .await
            .context("bulk insert")?;
        start = end;
    }
    Ok(())
}

pub async fn pg_pool(url: &str) -> anyhow::Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await?)
}

/// Drops a database made by `fresh_postgres_url` (they can be large).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let name = url::Url::parse(url)?
        .path()
        .trim_start_matches('/')
        .to_owned();
    anyhow::ensure!(name.starts_with("tv_test_"), "refusing to drop {name}");
    let admin = tokenvault::testing::postgres_admin_url();
    let mut conn = PgConnectOptions::from_str(&admin)?.connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(())
}

/// `VmRSS` and `VmHWM` of this process, in MiB.
pub fn rss_mib() -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{name} in /proc/self/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
