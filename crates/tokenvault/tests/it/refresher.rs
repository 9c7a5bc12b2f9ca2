//! The background refresher with two instances sharing PostgreSQL: every
//! due connection refreshed exactly once, rescheduled an hour out; expired
//! dead ends marked expired; non-expiring tokens never scheduled.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use chrono::Utc;
use secrecy::SecretString;
use serde_json::json;
use tokenvault::crypto::Envelope;
use tokenvault::domain::{
    AccessToken, ConnectionId, ConnectionStatus, RefreshToken, Scopes, TokenType,
};
use tokenvault::integrations::{Integration, IntegrationConfig, Integrations};
use tokenvault::oauth::{OAuthClient, OAuthClientConfig};
use tokenvault::providers::Catalog;
use tokenvault::refresh::{RefreshSettings, Scheduler, SchedulerSettings};
use tokenvault::store::{ConnectionStore, NewConnection, PoolOptions, SqlStore};
use tokenvault::vault::Vault;

fn integrations(token_url: &str) -> Arc<Integrations> {
    let catalog = Catalog::builtin()
        .merge_toml_str(&format!(
            "[providers.spotify]\ntoken_url = \"{token_url}\"\nrefresh_url = \"{token_url}\"\n"
        ))
        .unwrap();
    let config = IntegrationConfig {
        provider: "spotify".into(),
        client_id: "client".into(),
        client_secret: Some(SecretString::from("secret")),
        redirect_uri: Some(url::Url::parse("https://app.example.com/cb").unwrap()),
        ..IntegrationConfig::default()
    };
    let registry = Integrations::default();
    registry.insert(
        Integration::new(
            integration("spotify"),
            &config,
            catalog.get("spotify").unwrap().clone(),
            OAuthClient::new(OAuthClientConfig::default()).unwrap(),
        )
        .unwrap(),
    );
    Arc::new(registry)
}

/// One "instance": its own pool and lease owner over the shared database.
async fn instance(url: &str, integrations: &Arc<Integrations>, keys: &str) -> Vault {
    let store = SqlStore::connect(url, &PoolOptions::default())
        .await
        .unwrap();
    Vault::builder(Arc::new(store), envelope(keys))
        .integrations(Arc::clone(integrations))
        .refresh_settings(RefreshSettings {
            rate_limit_per_second: None,
            ..RefreshSettings::default()
        })
        .build()
}

async fn insert(
    store: &dyn ConnectionStore,
    envelope: &Envelope,
    user: &str,
    refresh: Option<&str>,
    expires_in: Option<chrono::Duration>,
    due_in: Option<chrono::Duration>,
) -> ConnectionId {
    let id = ConnectionId::new();
    let now = Utc::now();
    let sealed = envelope
        .seal_new(
            id,
            &AccessToken::new(format!("AT-{user}")),
            refresh.map(RefreshToken::new).as_ref(),
        )
        .await
        .unwrap();
    store
        .upsert(NewConnection {
            id,
            user_id: common::user(user),
            integration: integration("spotify"),
            status: ConnectionStatus::Connected,
            scopes: Scopes::new(),
            token_type: TokenType::Bearer,
            expires_at: expires_in.map(|d| now + d),
            next_refresh_at: due_in.map(|d| now + d),
            sealed,
            metadata: json!({}),
            now,
            emit: Vec::new(),
            emit_on_replace: Vec::new(),
            history: Vec::new(),
        })
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn two_instances_refresh_a_thousand_due_connections_exactly_once() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let keys = key_spec("k1", 7);
    let endpoint = TokenEndpoint::default();
    let integrations = integrations(&endpoint.start().await);
    let a = instance(&url, &integrations, &keys).await;
    let b = instance(&url, &integrations, &keys).await;
    a.store().migrate().await.unwrap();

    // Due at random moments over the next 5 seconds (tokens live a minute).
    const N: usize = 1000;
    for i in 0..N {
        let due = chrono::Duration::milliseconds(rand::random_range(0..5000));
        insert(
            a.store().as_ref(),
            a.envelope(),
            &format!("user-{i:04}"),
            Some(&format!("RT-{i:04}")),
            Some(chrono::Duration::seconds(60)),
            Some(due),
        )
        .await;
    }

    let settings = SchedulerSettings {
        tick: Duration::from_millis(100),
        batch: 50,
        concurrency: 8,
        ..SchedulerSettings::default()
    };
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = |vault: Vault| {
        let scheduler = Scheduler::new(vault, settings.clone());
        let total = Arc::clone(&total);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut refreshed = 0;
            while Instant::now() < deadline && total.load(std::sync::atomic::Ordering::SeqCst) < N {
                let report = scheduler.tick().await.unwrap();
                refreshed += report.refreshed;
                total.fetch_add(report.refreshed, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(report.failed, 0, "{report:?}");
                if report.claimed == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            refreshed
        })
    };
    let (by_a, by_b) = (run(a.clone()), run(b.clone()));
    let (by_a, by_b) = (by_a.await.unwrap(), by_b.await.unwrap());

    assert_eq!(by_a + by_b, N, "a: {by_a}, b: {by_b}");
    assert!(
        by_a > 0 && by_b > 0,
        "both instances shared the work: a {by_a}, b {by_b}"
    );
    let uses = endpoint.uses.lock().unwrap().clone();
    assert_eq!(
        uses.len(),
        N,
        "every connection's refresh token was presented"
    );
    assert!(
        uses.values().all(|count| *count == 1),
        "no refresh token presented twice: {:?}",
        uses.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    let now = Utc::now();
    let mut after = None;
    loop {
        let page = a
            .store()
            .list(&Default::default(), after.as_ref(), 500)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(tokenvault::store::ListCursor::of(last));
        for record in &page {
            assert_eq!(record.status, ConnectionStatus::Connected);
            assert!(record.lease.is_none(), "lease released");
            assert!(record.last_refreshed_at.is_some());
            let next = record.next_refresh_at.unwrap();
            // expires_at − 5 min, moved earlier by at most 30 s of jitter.
            let nominal = record.expires_at.unwrap() - chrono::Duration::minutes(5);
            assert!(next <= nominal && next >= nominal - chrono::Duration::seconds(30));
            assert!(next > now + chrono::Duration::minutes(50));
            let tokens = a.open(record).await.unwrap().unwrap();
            let rt = tokens.refresh_token.unwrap();
            assert!(rt.expose().ends_with("-rotated"), "rotated token persisted");
            assert_eq!(
                tokens.access_token.expose(),
                format!("AT-after-{}", rt.expose().trim_end_matches("-rotated"))
            );
        }
    }
}

#[tokio::test]
async fn dead_ends_expire_and_non_expiring_tokens_are_never_scheduled() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let keys = key_spec("k1", 7);
    let endpoint = TokenEndpoint::default();
    let integrations = integrations(&endpoint.start().await);
    let vault = instance(&url, &integrations, &keys).await;
    vault.store().migrate().await.unwrap();
    let store = vault.store().as_ref();
    // No refresh token, expired a second ago: a dead end.
    let dead = insert(
        store,
        vault.envelope(),
        "dead",
        None,
        Some(chrono::Duration::seconds(-1)),
        Some(chrono::Duration::seconds(-1)),
    )
    .await;
    // GitHub OAuth app style: no expiry, never scheduled.
    let forever = insert(
        store,
        vault.envelope(),
        "forever",
        Some("RT-forever"),
        None,
        None,
    )
    .await;
    let scheduler = Scheduler::new(vault.clone(), SchedulerSettings::default());
    let report = scheduler.tick().await.unwrap();
    assert_eq!(report.claimed, 1, "{report:?}");
    assert_eq!(report.expired, 1, "{report:?}");
    assert_eq!(
        store.get_by_id(dead).await.unwrap().unwrap().status,
        ConnectionStatus::Expired
    );
    let forever = store.get_by_id(forever).await.unwrap().unwrap();
    assert_eq!(forever.status, ConnectionStatus::Connected);
    assert!(forever.next_refresh_at.is_none());
    assert!(endpoint.uses.lock().unwrap().is_empty(), "no provider call");
    // The expired connection answers needs_reauth on demand.
    let err = vault
        .valid_token(
            &user("dead"),
            &integration("spotify"),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            tokenvault::refresh::TokenError::NeedsReauth {
                status: ConnectionStatus::Expired,
                ..
            }
        ),
        "{err}"
    );
}

/// The scheduler refreshes straight from the rows it claimed (no re-read)
/// and writes them back in batches; on-demand reads of the same process
/// refreshing the same connections meanwhile must never make it present a
/// refresh token a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_on_demand_refreshes_in_one_process_spend_each_token_once() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let keys = key_spec("k1", 7);
    let endpoint = TokenEndpoint::default();
    let integrations = integrations(&endpoint.start().await);
    let vault = instance(&url, &integrations, &keys).await;
    vault.store().migrate().await.unwrap();
    const N: usize = 300;
    for i in 0..N {
        insert(
            vault.store().as_ref(),
            vault.envelope(),
            &format!("user-{i:04}"),
            Some(&format!("RT-{i:04}")),
            // Expiring within the readers' min_ttl: every read refreshes
            // unless the scheduler got there first.
            Some(chrono::Duration::seconds(30)),
            Some(chrono::Duration::seconds(-1)),
        )
        .await;
    }
    let scheduler = Scheduler::new(
        vault.clone(),
        SchedulerSettings {
            batch: 100,
            concurrency: 8,
            ..SchedulerSettings::default()
        },
    );
    let readers = {
        let vault = vault.clone();
        tokio::spawn(async move {
            // Odd users, read in reverse, so both sides meet in the middle.
            for i in (0..N).rev().filter(|i| i % 2 == 1) {
                vault
                    .valid_token(
                        &user(&format!("user-{i:04}")),
                        &integration("spotify"),
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let mut refreshed = 0;
    for _ in 0..10 {
        let report = scheduler.tick().await.unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        refreshed += report.refreshed;
        if report.claimed == 0 {
            break;
        }
    }
    readers.await.unwrap();
    let uses = endpoint.uses.lock().unwrap().clone();
    assert_eq!(uses.len(), N, "every refresh token was presented");
    assert!(
        uses.values().all(|count| *count == 1),
        "no refresh token presented twice: {:?}",
        uses.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    assert!(refreshed > 0 && refreshed <= N, "{refreshed}");
    let page = vault
        .store()
        .list(&Default::default(), None, 1000)
        .await
        .unwrap();
    assert_eq!(page.len(), N);
    for record in &page {
        assert!(record.lease.is_none(), "lease released");
        let tokens = vault.open(record).await.unwrap().unwrap();
        assert!(tokens.refresh_token.unwrap().expose().ends_with("-rotated"));
    }
}

/// Fresh tokens are served from memory for `token_cache`: this process's
/// own writes are seen at once, another instance's within the TTL, and a
/// cached token that is not valid for the caller's `min_ttl` is never
/// handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cache_is_bounded_in_staleness_and_never_serves_a_token_too_short_lived() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let keys = key_spec("k1", 7);
    let endpoint = TokenEndpoint::default();
    let integrations = integrations(&endpoint.start().await);
    let ttl = Duration::from_millis(500);
    let cached = |vault: Vault| {
        Vault::builder(Arc::clone(vault.database()), envelope(&keys))
            .integrations(Arc::clone(&integrations))
            .refresh_settings(RefreshSettings {
                rate_limit_per_second: None,
                token_cache: ttl,
                ..RefreshSettings::default()
            })
            .build()
    };
    let a = cached(instance(&url, &integrations, &keys).await);
    let b = instance(&url, &integrations, &keys).await;
    a.store().migrate().await.unwrap();
    insert(
        a.store().as_ref(),
        a.envelope(),
        "alice",
        Some("RT-alice"),
        Some(chrono::Duration::seconds(90)),
        None,
    )
    .await;
    let (alice, spotify) = (user("alice"), integration("spotify"));
    let read = |vault: &Vault, min_ttl: u64| {
        let vault = vault.clone();
        let (alice, spotify) = (alice.clone(), spotify.clone());
        async move {
            vault
                .valid_token(&alice, &spotify, Duration::from_secs(min_ttl))
                .await
        }
    };
    let first = read(&a, 60).await.unwrap();
    assert_eq!(first.tokens.access_token.expose(), "AT-alice");
    assert_eq!(a.local().cached_tokens(), 1);

    // Another instance refreshes: `a` may serve the old (still valid) token
    // for at most the TTL, then sees the new one.
    let refreshed = b.force_refresh(&alice, &spotify).await.unwrap();
    assert_eq!(refreshed.tokens.access_token.expose(), "AT-after-RT-alice");
    let started = Instant::now();
    loop {
        let token = read(&a, 60).await.unwrap();
        if token.tokens.access_token.expose() == "AT-after-RT-alice" {
            break;
        }
        assert_eq!(token.tokens.access_token.expose(), "AT-alice");
        assert!(
            started.elapsed() < ttl + Duration::from_millis(200),
            "another instance's refresh must show within the cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A caller asking for more than the provider's tokens ever live (1 h)
    // is served the fresh token as it is: a refresh could not improve it.
    let long = read(&a, 7200).await.unwrap();
    assert_eq!(long.outcome, tokenvault::refresh::TokenOutcome::Fresh);
    assert_eq!(long.tokens.access_token.expose(), "AT-after-RT-alice");
    // This process's own write (a forced refresh) is seen at once.
    a.force_refresh(&alice, &spotify).await.unwrap();
    let again = read(&a, 60).await.unwrap();
    assert_eq!(
        again.tokens.access_token.expose(),
        "AT-after-RT-alice-rotated"
    );

    // This process's disconnect is seen at once.
    a.disconnect(&alice, &spotify).await.unwrap();
    let err = read(&a, 60).await.unwrap_err();
    assert!(
        matches!(err, tokenvault::refresh::TokenError::NotConnected),
        "{err}"
    );
    assert_eq!(
        endpoint.uses.lock().unwrap().values().sum::<u32>(),
        2,
        "two refreshes, each token presented once"
    );
}

/// A token read opens only the access token and never hands out the
/// refresh token; a cache hit shares the cached entry instead of copying
/// it. A refresh token whose ciphertext is damaged therefore does not
/// stop reads of a fresh token, only the refresh that needs it.
#[tokio::test]
async fn a_read_opens_only_the_access_token_and_a_cache_hit_shares_it() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let keys = key_spec("k1", 7);
    let endpoint = TokenEndpoint::default();
    let integrations = integrations(&endpoint.start().await);
    let plain = instance(&url, &integrations, &keys).await;
    let vault = Vault::builder(Arc::clone(plain.database()), envelope(&keys))
        .integrations(Arc::clone(&integrations))
        .refresh_settings(RefreshSettings {
            rate_limit_per_second: None,
            token_cache: Duration::from_secs(60),
            ..RefreshSettings::default()
        })
        .build();
    vault.store().migrate().await.unwrap();
    let id = insert(
        vault.store().as_ref(),
        vault.envelope(),
        "carol",
        Some("RT-carol"),
        Some(chrono::Duration::hours(1)),
        None,
    )
    .await;
    // Damage the sealed refresh token (one flipped byte: GCM refuses it).
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE connections SET refresh_token = overlay(refresh_token placing '\\x00'::bytea from 20 for 1) WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(&pool)
    .await
    .unwrap();
    let (carol, spotify) = (user("carol"), integration("spotify"));
    let first = vault
        .valid_token(&carol, &spotify, Duration::from_secs(60))
        .await
        .expect("a fresh token is served without opening the refresh token");
    assert_eq!(first.tokens.access_token.expose(), "AT-carol");
    assert!(
        first.tokens.refresh_token.is_none(),
        "the refresh token stays in the vault"
    );
    let second = vault
        .valid_token(&carol, &spotify, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        Arc::ptr_eq(&first.tokens, &second.tokens),
        "a cache hit is shared"
    );
    assert!(Arc::ptr_eq(&first.connection, &second.connection));
    // The refresh does need it, and reports the damage instead of using it.
    assert!(vault.force_refresh(&carol, &spotify).await.is_err());
    assert!(
        endpoint.uses.lock().unwrap().is_empty(),
        "nothing was sent with a damaged token"
    );
}

/// R2 through the tick's batched renewal: a claimed row that another
/// instance moved while it waited for a refresh slot is not presented to
/// the provider (its in-flight renewal compares the version and fails);
/// the row that held the slot is refreshed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_row_moved_by_another_instance_before_its_slot_is_not_presented() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let keys = key_spec("k1", 7);
    // A token endpoint that holds the first refresh until the test lets
    // it go, and records every refresh token presented.
    let presented = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<String>();
    let release = Arc::new(tokio::sync::Notify::new());
    let app = {
        let presented = Arc::clone(&presented);
        let release = Arc::clone(&release);
        axum::Router::new().route(
            "/token",
            axum::routing::post(
                move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                    let presented = Arc::clone(&presented);
                    let release = Arc::clone(&release);
                    let arrived = arrived.clone();
                    async move {
                        let token = form.get("refresh_token").cloned().unwrap_or_default();
                        let first = {
                            let mut presented = presented.lock().unwrap();
                            presented.push(token.clone());
                            presented.len() == 1
                        };
                        arrived.send(token.clone()).unwrap();
                        if first {
                            release.notified().await;
                        }
                        axum::Json(json!({
                            "access_token": format!("AT-after-{token}"),
                            "refresh_token": format!("{token}-rotated"),
                            "expires_in": 3600,
                            "token_type": "Bearer",
                        }))
                    }
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let integrations = integrations(&token_url);
    let vault = instance(&url, &integrations, &keys).await;
    vault.store().migrate().await.unwrap();
    for user in ["a", "b"] {
        insert(
            vault.store().as_ref(),
            vault.envelope(),
            user,
            Some(&format!("RT-{user}")),
            Some(chrono::Duration::seconds(30)),
            Some(chrono::Duration::seconds(-1)),
        )
        .await;
    }
    // Another instance's own pool: its write is not this process's.
    let other = SqlStore::connect(&url, &PoolOptions::default())
        .await
        .unwrap();
    let scheduler = Scheduler::new(
        vault.clone(),
        SchedulerSettings {
            batch: 10,
            concurrency: 1,
            ..SchedulerSettings::default()
        },
    );
    let tick = tokio::spawn(async move { scheduler.tick().await });
    let first = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("a refresh reached the provider")
        .unwrap();
    let waiting = if first == "RT-a" { "b" } else { "a" };
    // Both rows are claimed (one claim statement); the other waits for the
    // only slot. Another instance writes it meanwhile: a new version.
    let row = other
        .get(&user(waiting), &integration("spotify"))
        .await
        .unwrap()
        .unwrap();
    assert!(row.lease.is_some(), "claimed with the first row");
    other
        .update(row.id, row.version, &row.to_update(Utc::now()))
        .await
        .unwrap();
    release.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(10), tick)
        .await
        .expect("the tick finishes")
        .unwrap()
        .unwrap();
    assert_eq!(
        presented.lock().unwrap().clone(),
        vec![first.clone()],
        "the moved row's refresh token was not presented"
    );
    assert_eq!((report.claimed, report.refreshed, report.failed), (2, 1, 1));
    let refreshed = vault
        .store()
        .get(
            &user(if waiting == "a" { "b" } else { "a" }),
            &integration("spotify"),
        )
        .await
        .unwrap()
        .unwrap();
    let tokens = vault.open(&refreshed).await.unwrap().unwrap();
    assert_eq!(
        tokens.refresh_token.unwrap().expose(),
        format!("{first}-rotated")
    );
}
