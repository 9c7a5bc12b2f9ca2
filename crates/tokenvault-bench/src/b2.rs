//! B2: refresh throughput of one instance's background refresher on
//! PostgreSQL against an instant in-process token endpoint, compared with
//! what that endpoint answers at the refresher's concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use chrono::Utc;
use serde::Serialize;

use crate::mock::TokenEndpoint;
use crate::setup;

#[derive(Debug, Clone, Serialize)]
pub struct Result {
    pub connections: usize,
    pub concurrency: usize,
    pub batch: u32,
    pub insert_s: f64,
    /// The mock's raw answers per second at `concurrency` in-flight
    /// requests: the mean of a measurement before and one after the run.
    pub mock_rps: f64,
    pub mock_rps_before: f64,
    pub mock_rps_after: f64,
    pub refresh_s: f64,
    pub refreshes_per_s: f64,
    pub ratio: f64,
    /// refreshes/s × 3600: connections kept fresh with 1-hour tokens.
    pub connections_per_instance: f64,
    pub exactly_once: bool,
}

/// The floor: `concurrency` workers POSTing refresh grants (each with a new
/// token, so the mock does the same work as for the refresher) for `duration`.
async fn mock_floor(concurrency: usize, duration: Duration) -> anyhow::Result<f64> {
    let endpoint = TokenEndpoint::default();
    let url = endpoint.start().await?;
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.clone(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let response = client
                    .post(&url)
                    .basic_auth("bench-client", Some("bench-secret"))
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &format!("floor-{n}")),
                    ])
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "mock answered {}",
                    response.status()
                );
                response.bytes().await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

pub async fn run(
    connections: usize,
    floor_for: Duration,
    limit: Duration,
) -> anyhow::Result<Result> {
    let endpoint = TokenEndpoint::default();
    let token_url = endpoint.start().await?;
    let url = tokenvault::testing::fresh_postgres_url().await;
    let dir = tempfile::tempdir()?;
    let mut config = setup::config(dir.path(), Some(url.clone()), Some(&token_url))?;
    // The per-integration rate limit protects real providers; here it would
    // only measure itself.
    config.refresh_rate_limit_per_second = 0;
    let concurrency = config.scheduler_concurrency;
    let batch = config.scheduler_batch;
    let state = tokenvault_server::wiring::build_state(&config).await?;

    let pool = setup::pg_pool(&url).await?;
    let inserting = Instant::now();
    let now = Utc::now();
    setup::bulk_insert(
        &pool,
        state.vault.envelope(),
        0..connections,
        now + chrono::Duration::hours(1),
        |_| now - chrono::Duration::seconds(1),
    )
    .await?;
    sqlx::query("ANALYZE connections").execute(&pool).await?;
    let insert_s = inserting.elapsed().as_secs_f64();

    let floor_before = mock_floor(concurrency, floor_for).await?;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let scheduler = tokenvault_server::wiring::spawn_scheduler(&state, &config, stopping)
        .expect("the scheduler is enabled by default");
    while endpoint.presented() < connections && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refresh_s = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    scheduler.await?;
    // The floor again after the run: the machine's speed drifts over
    // seconds, and the mean of both sides of the run is the fairer floor.
    let floor_after = mock_floor(concurrency, floor_for).await?;
    let mock_rps = (floor_before + floor_after) / 2.0;
    ensure!(
        endpoint.presented() == connections,
        "only {} of {connections} connections refreshed within {limit:?}",
        endpoint.presented()
    );

    let stored: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM connections WHERE last_refreshed_at IS NOT NULL AND lease_owner IS NULL",
    )
    .fetch_one(&pool)
    .await?;
    let exactly_once = endpoint.replays.load(Ordering::Relaxed) == 0
        && endpoint.uses.iter().all(|entry| *entry.value() == 1)
        && (0..connections).all(|i| endpoint.uses.contains_key(&setup::refresh_token(i)))
        && stored == connections as i64;
    ensure!(
        exactly_once,
        "a connection was not refreshed exactly once (stored refreshed rows: {stored})"
    );
    pool.close().await;
    drop(state);
    setup::drop_database(&url).await?;

    let refreshes_per_s = connections as f64 / refresh_s;
    Ok(Result {
        connections,
        concurrency,
        batch,
        insert_s,
        mock_rps,
        mock_rps_before: floor_before,
        mock_rps_after: floor_after,
        refresh_s,
        refreshes_per_s,
        ratio: refreshes_per_s / mock_rps,
        connections_per_instance: refreshes_per_s * 3600.0,
        exactly_once,
    })
}
