//! B4: wide token reads. Many connections, each request for a uniformly
//! random user, so nearly every read misses the 1 s in-process cache and
//! goes to the database. The floor is the database itself: in the same run,
//! the same point query (by user and integration) issued directly with sqlx
//! through a pool of the same size, at the same concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt as _;
use serde::Serialize;
use tokenvault::domain::{
    AccessToken, IntegrationKey, RefreshToken, Scopes, TokenSet, TokenType, UserId,
};
use tokenvault::store::{Database, Pool, PoolOptions};

use crate::load::{self, Load, LoadResult};
use crate::setup;

pub const CONCURRENCY: usize = 64;
/// The floor and the service are loaded in turns, this many slices each.
const ROUNDS: u32 = 5;

/// The point query the store's read is (its column list aside).
const POINT_QUERY: &str = "SELECT * FROM connections WHERE user_id = $1 AND integration = $2";

#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// Direct sqlx point reads.
    pub floor: LoadResult,
    /// `GET /v1/users/{u}/connections/{i}/token` over keep-alive HTTP.
    pub service: LoadResult,
    /// service req/s ÷ floor reads/s.
    pub ratio: f64,
    pub insert_s: f64,
}

/// `database_url`: `None` for the default SQLite file in a fresh directory.
pub async fn run(
    database_url: Option<String>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Backend> {
    let dir = tempfile::tempdir()?;
    let config = setup::config(dir.path(), database_url, None)?;
    let state = tokenvault_server::wiring::build_state(&config).await?;
    let integration = IntegrationKey::parse(setup::INTEGRATION)?;

    let inserting = Instant::now();
    let expires_at = Utc::now() + chrono::Duration::hours(2);
    let vault = &state.vault;
    let integration_ref = &integration;
    let mut saves = futures::stream::iter(0..connections)
        .map(|i| async move {
            let tokens = TokenSet {
                access_token: AccessToken::new(format!("AT-{i:07}")),
                refresh_token: Some(RefreshToken::new(setup::refresh_token(i))),
                token_type: TokenType::Bearer,
                scopes: Scopes::new(),
                // Fresh for the whole run: no read refreshes.
                expires_at: Some(expires_at),
            };
            vault
                .save_grant(
                    &UserId::parse(setup::user(i))?,
                    integration_ref,
                    &tokens,
                    serde_json::json!({}),
                    chrono::Duration::minutes(5),
                )
                .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(8);
    while let Some(saved) = saves.next().await {
        saved?;
    }
    drop(saves);
    let insert_s = inserting.elapsed().as_secs_f64();

    // The floor's own pool: opened as the service opens its own.
    let database = Database::open(
        &config.database_url(),
        &PoolOptions {
            max_connections: config.database_max_connections,
            ..PoolOptions::default()
        },
    )
    .await?;
    let pool = database.pool();
    // What autovacuum does soon after a table grows this much (B3 does the
    // same): fresh statistics, which also invalidate plans the service's
    // pool cached while the table was still empty.
    match &pool {
        Pool::Postgres(pg) => {
            sqlx::query("ANALYZE connections").execute(pg).await?;
        }
        Pool::Sqlite(lite) => {
            sqlx::query("ANALYZE").execute(lite).await?;
        }
    }
    let users: Arc<Vec<String>> = Arc::new((0..connections).map(setup::user).collect());

    let service = crate::b1::listen(tokenvault_server::http::router(state)).await?;
    let paths = (0..connections).map(setup::token_path).collect();
    let service = Load {
        addr: service,
        paths: Arc::new(paths),
        bearer: Some(setup::API_KEY.to_owned()),
        concurrency: CONCURRENCY,
        warmup: warmup / ROUNDS,
        duration: duration / ROUNDS,
        random: true,
    };
    let (mut floor_latencies, mut service_latencies) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        floor_latencies.extend(floor(&pool, &users, warmup / ROUNDS, duration / ROUNDS).await?);
        service_latencies.extend(service.latencies().await?);
    }
    let floor = LoadResult::of(floor_latencies, duration)?;
    let service = LoadResult::of(service_latencies, duration)?;
    Ok(Backend {
        ratio: service.rps / floor.rps,
        floor,
        service,
        insert_s,
    })
}

/// Latencies (µs) of direct point reads of random users at [`CONCURRENCY`].
async fn floor(
    pool: &Pool,
    users: &Arc<Vec<String>>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<u32>> {
    load::closed_loop(CONCURRENCY, warmup, duration, |worker| {
        let pool = pool.clone();
        let users = Arc::clone(users);
        let mut random = load::Random::new(worker);
        move || {
            let pool = pool.clone();
            let user = users[random.below(users.len())].clone();
            async move {
                let found = match &pool {
                    Pool::Sqlite(pool) => sqlx::query(POINT_QUERY)
                        .bind(user)
                        .bind(setup::INTEGRATION)
                        .fetch_optional(pool)
                        .await?
                        .is_some(),
                    Pool::Postgres(pool) => sqlx::query(POINT_QUERY)
                        .bind(user)
                        .bind(setup::INTEGRATION)
                        .fetch_optional(pool)
                        .await?
                        .is_some(),
                };
                anyhow::ensure!(found, "a connection the benchmark inserted is missing");
                Ok(())
            }
        }
    })
    .await
}
