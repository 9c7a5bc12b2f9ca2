//! B1: token reads against the HTTP floor. The same load runs against a
//! bare axum handler returning a small JSON document and against
//! `GET /v1/users/{u}/connections/{i}/token` of the real router, both
//! served by `axum::serve` on a fresh 127.0.0.1:0 listener in this process.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokenvault::domain::{
    AccessToken, IntegrationKey, RefreshToken, Scopes, TokenSet, TokenType, UserId,
};

use crate::load::{Load, LoadResult};
use crate::setup;

pub const CONNECTIONS: usize = 64;
pub const CONCURRENCY: usize = 64;
/// The floor and the service are loaded in turns, this many slices each.
const ROUNDS: u32 = 5;

#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub floor: LoadResult,
    pub service: LoadResult,
    /// service req/s ÷ floor req/s.
    pub ratio: f64,
    pub breakdown: Breakdown,
}

/// Where a token read's time goes, measured one call at a time (no
/// concurrency) before the load: the store read and the envelope open.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub store_get_us: f64,
    pub open_us: f64,
    pub valid_token_us: f64,
}

async fn breakdown(
    vault: &tokenvault::vault::Vault,
    integration: &IntegrationKey,
) -> anyhow::Result<Breakdown> {
    const CALLS: usize = 2_000;
    let users: Vec<UserId> = (0..CONNECTIONS)
        .map(|i| UserId::parse(setup::user(i)))
        .collect::<Result<_, _>>()?;
    let per_call =
        |started: std::time::Instant| started.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
    let started = std::time::Instant::now();
    let mut records = Vec::new();
    for k in 0..CALLS {
        let record = vault
            .store()
            .get(&users[k % CONNECTIONS], integration)
            .await?;
        if k < CONNECTIONS {
            records.push(record.expect("inserted"));
        }
    }
    let store_get_us = per_call(started);
    let started = std::time::Instant::now();
    for k in 0..CALLS {
        vault.open(&records[k % CONNECTIONS]).await?;
    }
    let open_us = per_call(started);
    let started = std::time::Instant::now();
    for k in 0..CALLS {
        vault
            .valid_token(
                &users[k % CONNECTIONS],
                integration,
                std::time::Duration::ZERO,
            )
            .await?;
    }
    let valid_token_us = per_call(started);
    Ok(Breakdown {
        store_get_us,
        open_us,
        valid_token_us,
    })
}

pub async fn listen(app: axum::Router) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The floor: no routing layers, no auth, no database; a JSON document of
/// the token answer's shape and size. It is sent the very requests the
/// service gets (same paths, same `Authorization` header), so that both
/// sides pay the same HTTP parsing, kernel and load-generator costs and the
/// ratio is what the service itself adds.
fn floor_router() -> axum::Router {
    #[derive(Serialize)]
    struct Body {
        access_token: &'static str,
        token_type: &'static str,
        expires_at: &'static str,
        scopes: [&'static str; 0],
    }
    axum::Router::new().route(
        "/v1/users/{user_id}/connections/{integration}/token",
        axum::routing::get(|| async {
            axum::Json(Body {
                access_token: "AT-0000000",
                token_type: "Bearer",
                expires_at: "2026-11-21T13:00:00Z",
                scopes: [],
            })
        }),
    )
}

/// `database_url`: `None` for the default SQLite file in a fresh directory.
pub async fn run(
    database_url: Option<String>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Backend> {
    let dir = tempfile::tempdir()?;
    let config = setup::config(dir.path(), database_url, None)?;
    let state = tokenvault_server::wiring::build_state(&config).await?;
    let integration = IntegrationKey::parse(setup::INTEGRATION)?;
    for i in 0..CONNECTIONS {
        let tokens = TokenSet {
            access_token: AccessToken::new(format!("AT-{i:07}")),
            refresh_token: Some(RefreshToken::new(setup::refresh_token(i))),
            token_type: TokenType::Bearer,
            scopes: Scopes::new(),
            // Fresh for the whole run: every read is served from the store.
            expires_at: Some(Utc::now() + chrono::Duration::hours(2)),
        };
        state
            .vault
            .save_grant(
                &UserId::parse(setup::user(i))?,
                &integration,
                &tokens,
                serde_json::json!({}),
                chrono::Duration::minutes(5),
            )
            .await?;
    }
    let breakdown = breakdown(&state.vault, &integration).await?;
    let service = listen(tokenvault_server::http::router(state)).await?;
    let floor = listen(floor_router()).await?;

    let paths = Arc::new((0..CONNECTIONS).map(setup::token_path).collect());
    let floor = Load {
        addr: floor,
        paths: Arc::clone(&paths),
        bearer: Some(setup::API_KEY.to_owned()),
        concurrency: CONCURRENCY,
        warmup: warmup / ROUNDS,
        duration: duration / ROUNDS,
        random: false,
    };
    let service = Load {
        addr: service,
        paths,
        bearer: Some(setup::API_KEY.to_owned()),
        concurrency: CONCURRENCY,
        warmup: warmup / ROUNDS,
        duration: duration / ROUNDS,
        random: false,
    };
    // Alternating slices: the machine's speed drifts over seconds (other
    // tenants), and both sides should see the same drift.
    let (mut floor_latencies, mut service_latencies) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        floor_latencies.extend(floor.latencies().await?);
        service_latencies.extend(service.latencies().await?);
    }
    let floor = LoadResult::of(floor_latencies, duration)?;
    let service = LoadResult::of(service_latencies, duration)?;
    Ok(Backend {
        ratio: service.rps / floor.rps,
        breakdown,
        floor,
        service,
    })
}
