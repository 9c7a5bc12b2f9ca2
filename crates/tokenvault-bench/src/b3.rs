//! B3: scale. Many connections inserted directly into PostgreSQL, a few of
//! them due; the due query's plan; then, in a fresh process wired as
//! `serve` (so the bulk insert's memory does not count), claims of the
//! due rows timed (a cold one, then the median of five warm ones), one
//! full scheduler tick, and the process RSS after it.

use std::time::Instant;

use anyhow::{Context, ensure};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokenvault::refresh::Scheduler;

use crate::mock::TokenEndpoint;
use crate::setup;

#[derive(Debug, Clone, Serialize)]
pub struct Result {
    pub connections: usize,
    pub due: usize,
    pub insert_s: f64,
    /// `EXPLAIN` of the scheduler's claim statement.
    pub plan: String,
    /// The plan reads the partial `connections_due` index.
    pub index_scan: bool,
    #[serde(flatten)]
    pub tick: Tick,
}

/// What the child process measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    /// Database time of one tick: the store's `claim_due` of the due rows,
    /// on a warm connection: the median of [`WARM_CLAIMS`] claims after the
    /// first (leases released in between). One claim alone varied by a
    /// third from run to run.
    pub tick_ms: f64,
    /// Every warm claim's time, in order.
    pub warm_claims_ms: Vec<f64>,
    /// The same, first in the process (connection setup, statement prepare).
    pub tick_cold_ms: f64,
    pub claimed: usize,
    /// One whole `Scheduler::tick` (claim, refresh each due row against
    /// the in-process mock, write back).
    pub full_tick_ms: f64,
    pub refreshed: usize,
    pub rss_mib: f64,
    pub rss_peak_mib: f64,
}

/// The claim statement as the PostgreSQL store runs it (see
/// `store/sql/mod.rs`, the dialects' `claim_due`), for `EXPLAIN`.
const CLAIM: &str = "EXPLAIN UPDATE connections SET lease_owner = $1, lease_expires_at = $2, version = version + 1 \
     WHERE id IN (SELECT id FROM connections \
     WHERE next_refresh_at IS NOT NULL AND next_refresh_at <= $3 AND status IN ('connected', 'error') \
     AND (lease_expires_at IS NULL OR lease_expires_at <= $3) \
     ORDER BY next_refresh_at LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING id";

pub async fn run(connections: usize, due: usize) -> anyhow::Result<Result> {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let dir = tempfile::tempdir()?;
    let config = setup::config(dir.path(), Some(url.clone()), None)?;
    // Migrates the fresh database and gives the envelope to seal with.
    let state = tokenvault_server::wiring::build_state(&config).await?;
    let pool = setup::pg_pool(&url).await?;
    let inserting = Instant::now();
    let now = Utc::now();
    // The due rows first, then the rest due over the next 50 minutes.
    let span = (connections - due).max(1) as i64;
    setup::bulk_insert(
        &pool,
        state.vault.envelope(),
        0..connections,
        now + chrono::Duration::hours(1),
        |i| {
            if i < due {
                now - chrono::Duration::seconds(1)
            } else {
                now + chrono::Duration::minutes(1)
                    + chrono::Duration::milliseconds((i - due) as i64 * 49 * 60_000 / span)
            }
        },
    )
    .await?;
    // What autovacuum would have done by the time the table is this big.
    sqlx::query("VACUUM ANALYZE connections")
        .execute(&pool)
        .await?;
    let insert_s = inserting.elapsed().as_secs_f64();
    drop(state);

    let at = Utc::now().timestamp_millis();
    let plan: Vec<String> = sqlx::query_scalar(CLAIM)
        .bind("bench")
        .bind(at + 60_000)
        .bind(at)
        .bind(due as i64)
        .fetch_all(&pool)
        .await?;
    let plan = plan.join("\n");
    let index_scan = plan.contains("Index Scan using connections_due");

    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg("b3-tick")
        .arg("--database-url")
        .arg(&url)
        .arg("--batch")
        .arg(due.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    ensure!(output.status.success(), "b3-tick failed: {}", output.status);
    let tick: Tick = serde_json::from_slice(&output.stdout).context("b3-tick output")?;
    ensure!(
        tick.claimed == due,
        "claimed {} of {due} due rows",
        tick.claimed
    );
    ensure!(
        tick.refreshed == due,
        "refreshed {} of {due} due rows",
        tick.refreshed
    );
    pool.close().await;
    setup::drop_database(&url).await?;
    Ok(Result {
        connections,
        due,
        insert_s,
        plan,
        index_scan,
        tick,
    })
}

/// Warm claims timed after the first one.
const WARM_CLAIMS: usize = 5;

/// The child process: built as `serve` builds an instance, with the mock
/// standing in for the provider.
pub async fn child(database_url: String, batch: u32) -> anyhow::Result<Tick> {
    let endpoint = TokenEndpoint::default();
    let token_url = endpoint.start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = setup::config(dir.path(), Some(database_url), Some(&token_url))?;
    config.refresh_rate_limit_per_second = 0;
    config.scheduler_batch = batch;
    let state = tokenvault_server::wiring::build_state(&config).await?;
    let vault = &state.vault;
    let store = vault.store();

    let mut times = Vec::new();
    let mut claimed = Vec::new();
    for _ in 0..=WARM_CLAIMS {
        let now = Utc::now();
        let started = Instant::now();
        claimed = store
            .claim_due(
                now,
                batch,
                vault.owner(),
                now,
                now + chrono::Duration::minutes(1),
            )
            .await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        for record in &claimed {
            store.release_lease(record.id, vault.owner()).await?;
        }
    }

    let scheduler = Scheduler::new(
        vault.clone(),
        tokenvault_server::wiring::scheduler_settings(&config),
    );
    let started = Instant::now();
    let report = scheduler.tick().await?;
    let full_tick_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (rss_mib, rss_peak_mib) = setup::rss_mib()?;
    let warm_claims_ms = times.split_off(1);
    let mut sorted = warm_claims_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Tick {
        tick_cold_ms: times[0],
        tick_ms: sorted[sorted.len() / 2],
        warm_claims_ms,
        claimed: claimed.len(),
        full_tick_ms,
        refreshed: report.refreshed,
        rss_mib,
        rss_peak_mib,
    })
}
