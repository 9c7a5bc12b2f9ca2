//! The background refresher with two instances sharing PostgreSQL: every
//! due connection refreshed exactly once, rescheduled an hour out; expired
//! dead ends marked expired; non-expiring tokens never scheduled.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
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
use tokenvault::store::{ConnectionStore, NewConnection, PoolOptions, PostgresStore};
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
    let mut registry = Integrations::default();
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
    let store = PostgresStore::connect(url, &PoolOptions::default())
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
            .list(&Default::default(), after, 500)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
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
