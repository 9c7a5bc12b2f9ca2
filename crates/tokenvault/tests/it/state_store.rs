//! One contract, three backends: every shared test here runs against Redis,
//! SQLite and PostgreSQL (a fresh database each). Redis and PostgreSQL must be
//! reachable; these tests fail, never skip, when they are not.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use secrecy::{ExposeSecret as _, SecretString};
use tokenvault::domain::{Clock, ManualClock, SystemClock};
use tokenvault::oauth_state::{
    RedisOptions, RedisStateStore, SqlStateStore, StateError, StateKey, StateRecord, StateStore,
};
use tokenvault::store::Pool;

/// Raw access to where a backend keeps its records, to look behind the API.
enum Raw {
    Redis {
        connection: ::redis::aio::MultiplexedConnection,
        prefix: String,
    },
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

struct StateBackend {
    store: Arc<dyn StateStore>,
    /// SQL backends run on a manual clock; Redis expires keys on its own.
    clock: Option<Arc<ManualClock>>,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
}

impl StateBackend {
    /// Lets `by` pass: moves the manual clock, or really waits for Redis.
    async fn elapse(&self, by: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(chrono::Duration::from_std(by).unwrap()),
            None => tokio::time::sleep(by).await,
        }
    }

    /// The stored JSON under `key`, if a record (expired or not) is there.
    async fn stored(&self, key: &StateKey) -> Option<String> {
        match &self.raw {
            Raw::Redis { connection, prefix } => ::redis::cmd("GET")
                .arg(format!("{prefix}{}", key.as_str()))
                .query_async(&mut connection.clone())
                .await
                .unwrap(),
            Raw::Sqlite(pool) => {
                sqlx::query_scalar("SELECT record FROM oauth_states WHERE state = $1")
                    .bind(key.as_str())
                    .fetch_optional(pool)
                    .await
                    .unwrap()
            }
            Raw::Postgres(pool) => {
                sqlx::query_scalar("SELECT record::text FROM oauth_states WHERE state = $1")
                    .bind(key.as_str())
                    .fetch_optional(pool)
                    .await
                    .unwrap()
            }
        }
    }

    /// Writes `json` under `key` behind the store's back.
    async fn store_raw(&self, key: &StateKey, json: &str) {
        match &self.raw {
            Raw::Redis { connection, prefix } => ::redis::cmd("SET")
                .arg(format!("{prefix}{}", key.as_str()))
                .arg(json)
                .arg("PX")
                .arg(60_000)
                .query_async::<()>(&mut connection.clone())
                .await
                .unwrap(),
            Raw::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO oauth_states (state, record, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(key.as_str())
                .bind(json)
                .bind(i64::MAX)
                .execute(pool)
                .await
                .unwrap();
            }
            Raw::Postgres(pool) => {
                sqlx::query("INSERT INTO oauth_states (state, record, expires_at) VALUES ($1, $2::jsonb, $3)")
                    .bind(key.as_str())
                    .bind(json)
                    .bind(i64::MAX)
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }

    /// Rows in `oauth_states`, expired ones included (SQL backends only).
    async fn row_count(&self) -> i64 {
        match &self.raw {
            Raw::Sqlite(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states")
                .fetch_one(pool)
                .await
                .unwrap(),
            Raw::Postgres(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states")
                .fetch_one(pool)
                .await
                .unwrap(),
            Raw::Redis { .. } => panic!("row_count is for SQL backends"),
        }
    }
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(now()))
}

async fn redis_backend() -> StateBackend {
    let url = redis_url();
    let prefix = unique_redis_prefix();
    let options = RedisOptions {
        key_prefix: prefix.clone(),
        ..RedisOptions::default()
    };
    let store = RedisStateStore::connect(&url, &options)
        .await
        .unwrap_or_else(|err| {
            panic!("Redis is required for this test and is not reachable at {url}: {err}")
        });
    let connection = ::redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    StateBackend {
        store: Arc::new(store),
        clock: None,
        raw: Raw::Redis { connection, prefix },
        _dir: None,
    }
}

/// The store's own pool, to look at the table directly.
fn raw(store: &tokenvault::store::SqlStore) -> Raw {
    match store.pool() {
        Pool::Sqlite(pool) => Raw::Sqlite(pool.clone()),
        Pool::Postgres(pool) => Raw::Postgres(pool.clone()),
    }
}

async fn sqlite_backend() -> StateBackend {
    let (store, dir) = sqlite_store().await;
    let clock = manual_clock();
    StateBackend {
        store: Arc::new(SqlStateStore::new(store.pool().clone(), clock.clone())),
        clock: Some(clock),
        raw: raw(&store),
        _dir: Some(dir),
    }
}

async fn postgres_backend() -> StateBackend {
    let store = postgres_store().await;
    let clock = manual_clock();
    StateBackend {
        store: Arc::new(SqlStateStore::new(store.pool().clone(), clock.clone())),
        clock: Some(clock),
        raw: raw(&store),
        _dir: None,
    }
}

macro_rules! state_conformance {
    ($($test:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::redis_backend().await).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::sqlite_backend().await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::postgres_backend().await).await })*
        }
    };
}

macro_rules! sql_only {
    ($($test:ident),* $(,)?) => {
        mod sql {
            mod sqlite {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() { super::super::$test(super::super::sqlite_backend().await).await })*
            }
            mod postgres {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() { super::super::$test(super::super::postgres_backend().await).await })*
            }
        }
    };
}

state_conformance!(
    put_then_take_round_trips_every_field,
    a_second_take_is_a_replay_and_gets_none,
    a_peek_reads_without_taking,
    expired_states_are_none,
    concurrent_takes_exactly_one_wins,
    unknown_and_malformed_keys_are_none,
    put_replaces_and_keys_are_independent,
    stored_json_holds_no_client_secret,
    unreadable_records_are_corrupt,
    ping_answers,
);

sql_only!(
    purge_expired_removes_only_expired_rows,
    an_expired_row_still_in_the_table_is_none,
);

const TTL: Duration = Duration::from_secs(60);

fn record(user: &str, verifier: Option<&str>) -> StateRecord {
    StateRecord {
        integration: integration("spotify"),
        user_id: common::user(user),
        code_verifier: verifier.map(SecretString::from),
        redirect_uri: "https://vault.example.com/oauth/callback".into(),
        connect_session: Some("cs_0123".into()),
        redirect_to: Some("https://app.example.com/settings?tab=integrations".into()),
        scopes: vec!["user-read-email".into(), "user-library-modify".into()],
        created_at: now(),
        provider_params: Default::default(),
        connection_params: [("realm_id".to_owned(), "9130".to_owned())].into(),
        browser_binding: verifier.map(|_| "cd".repeat(32)),
        confirm: verifier.is_some(),
        authorization_code: verifier.map(|_| SecretString::from("code-0123456789")),
        instance_id: verifier.map(|_| "instance-1".to_owned()),
        offered: vec![integration("spotify"), integration("tidal")],
        show_page: true,
        reconnect: true,
        popup_origin: Some("https://app.example.com".into()),
        outcome: verifier.map(|_| tokenvault::oauth_state::FlowOutcome {
            status: tokenvault::oauth_state::FlowStatus::Connected,
            code: None,
            connection_id: Some("c-1".into()),
        }),
    }
}

fn same(a: &StateRecord, b: &StateRecord) {
    assert_eq!(a.integration, b.integration);
    assert_eq!(a.offered, b.offered);
    assert_eq!(a.show_page, b.show_page);
    assert_eq!(a.reconnect, b.reconnect);
    assert_eq!(a.popup_origin, b.popup_origin);
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(a.user_id, b.user_id);
    assert_eq!(
        a.code_verifier
            .as_ref()
            .map(|v| v.expose_secret().to_owned()),
        b.code_verifier
            .as_ref()
            .map(|v| v.expose_secret().to_owned())
    );
    assert_eq!(a.redirect_uri, b.redirect_uri);
    assert_eq!(a.connect_session, b.connect_session);
    assert_eq!(a.redirect_to, b.redirect_to);
    assert_eq!(a.scopes, b.scopes);
    assert_eq!(a.created_at, b.created_at);
    assert_eq!(a.browser_binding, b.browser_binding);
    assert_eq!(a.confirm, b.confirm);
    assert_eq!(
        a.authorization_code
            .as_ref()
            .map(|v| v.expose_secret().to_owned()),
        b.authorization_code
            .as_ref()
            .map(|v| v.expose_secret().to_owned())
    );
    assert_eq!(a.instance_id, b.instance_id);
}

async fn put_then_take_round_trips_every_field(b: StateBackend) {
    let key = StateKey::generate();
    let put = record(
        "user-1",
        Some("pkce-verifier-0123456789abcdefghijklmnopqrstu"),
    );
    b.store.put(&key, &put, TTL).await.unwrap();
    let got = b.store.take(key.as_str()).await.unwrap().expect("stored");
    same(&got, &put);
    assert_eq!(
        got.code_verifier.unwrap().expose_secret(),
        "pkce-verifier-0123456789abcdefghijklmnopqrstu"
    );

    // No verifier and no optional fields round-trip as absent.
    let key = StateKey::generate();
    let bare = StateRecord {
        code_verifier: None,
        connect_session: None,
        redirect_to: None,
        scopes: vec![],
        ..record("user-2", None)
    };
    b.store.put(&key, &bare, TTL).await.unwrap();
    same(&b.store.take(key.as_str()).await.unwrap().unwrap(), &bare);
}

async fn a_second_take_is_a_replay_and_gets_none(b: StateBackend) {
    let key = StateKey::generate();
    b.store
        .put(&key, &record("u", Some("v")), TTL)
        .await
        .unwrap();
    assert!(b.store.take(key.as_str()).await.unwrap().is_some());
    assert!(b.store.take(key.as_str()).await.unwrap().is_none());
    assert!(b.stored(&key).await.is_none(), "taking deletes the record");
}

async fn a_peek_reads_without_taking(b: StateBackend) {
    let key = StateKey::generate();
    let short = StateKey::generate();
    let stored = record("u", Some("v"));
    b.store.put(&key, &stored, TTL).await.unwrap();
    b.store
        .put(&short, &stored, Duration::from_millis(50))
        .await
        .unwrap();
    same(&b.store.peek(key.as_str()).await.unwrap().unwrap(), &stored);
    same(&b.store.peek(key.as_str()).await.unwrap().unwrap(), &stored);
    assert!(
        b.store.take(key.as_str()).await.unwrap().is_some(),
        "still there to take"
    );
    assert!(
        b.store.peek(key.as_str()).await.unwrap().is_none(),
        "gone once taken"
    );
    assert!(b.store.peek("not a key").await.unwrap().is_none());
    b.elapse(Duration::from_millis(200)).await;
    assert!(
        b.store.peek(short.as_str()).await.unwrap().is_none(),
        "expired"
    );
}

async fn expired_states_are_none(b: StateBackend) {
    let short = StateKey::generate();
    let long = StateKey::generate();
    b.store
        .put(&short, &record("u", Some("v")), Duration::from_millis(50))
        .await
        .unwrap();
    b.store
        .put(&long, &record("u", Some("v")), TTL)
        .await
        .unwrap();
    b.elapse(Duration::from_millis(200)).await;
    assert!(b.store.take(short.as_str()).await.unwrap().is_none());
    assert!(b.store.take(long.as_str()).await.unwrap().is_some());
}

async fn concurrent_takes_exactly_one_wins(b: StateBackend) {
    let key = StateKey::generate();
    b.store
        .put(&key, &record("u", Some("v")), TTL)
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let takes: Vec<_> = (0..20)
        .map(|_| {
            let store = b.store.clone();
            let key = key.as_str().to_owned();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.take(&key).await
            })
        })
        .collect();
    let mut winners = 0;
    for take in takes {
        if take.await.unwrap().unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

async fn unknown_and_malformed_keys_are_none(b: StateBackend) {
    let unknown = StateKey::generate();
    assert!(b.store.take(unknown.as_str()).await.unwrap().is_none());
    for malformed in ["", "x", "../../etc", &"a".repeat(10_000), "*"] {
        assert!(
            b.store.take(malformed).await.unwrap().is_none(),
            "{malformed:?}"
        );
    }
}

async fn put_replaces_and_keys_are_independent(b: StateBackend) {
    let a = StateKey::generate();
    let other = StateKey::generate();
    b.store.put(&a, &record("first", None), TTL).await.unwrap();
    b.store.put(&a, &record("second", None), TTL).await.unwrap();
    b.store
        .put(&other, &record("other", None), TTL)
        .await
        .unwrap();
    assert_eq!(
        b.store
            .take(a.as_str())
            .await
            .unwrap()
            .unwrap()
            .user_id
            .as_str(),
        "second"
    );
    assert_eq!(
        b.store
            .take(other.as_str())
            .await
            .unwrap()
            .unwrap()
            .user_id
            .as_str(),
        "other"
    );
}

async fn stored_json_holds_no_client_secret(b: StateBackend) {
    let key = StateKey::generate();
    b.store
        .put(&key, &record("u", Some("pkce-verifier")), TTL)
        .await
        .unwrap();
    let json = b.stored(&key).await.expect("stored under the key");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "authorization_code",
            "browser_binding",
            "code_verifier",
            "confirm",
            "offered",
            "outcome",
            "show_page",
            "reconnect",
            "popup_origin",
            "connect_session",
            "connection_params",
            "created_at",
            "instance_id",
            "integration",
            "redirect_to",
            "redirect_uri",
            "scopes",
            "user_id",
        ])
    );
    assert!(!json.contains("client_secret"), "{json}");
    assert_eq!(value["code_verifier"], "pkce-verifier");
    assert!(b.store.take(key.as_str()).await.unwrap().is_some());
}

async fn unreadable_records_are_corrupt(b: StateBackend) {
    let key = StateKey::generate();
    b.store_raw(&key, r#"{"integration": "spotify"}"#).await;
    let err = b.store.take(key.as_str()).await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt(_)), "{err}");
}

async fn ping_answers(b: StateBackend) {
    b.store.ping().await.unwrap();
}

async fn purge_expired_removes_only_expired_rows(b: StateBackend) {
    for _ in 0..3 {
        b.store
            .put(
                &StateKey::generate(),
                &record("u", None),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let keep = StateKey::generate();
    b.store
        .put(&keep, &record("keep", None), TTL)
        .await
        .unwrap();
    assert_eq!(b.store.purge_expired().await.unwrap(), 0);
    b.elapse(Duration::from_secs(11)).await;
    assert_eq!(b.store.purge_expired().await.unwrap(), 3);
    assert_eq!(b.row_count().await, 1);
    assert_eq!(b.store.purge_expired().await.unwrap(), 0);
    assert_eq!(
        b.store
            .take(keep.as_str())
            .await
            .unwrap()
            .unwrap()
            .user_id
            .as_str(),
        "keep"
    );
}

async fn an_expired_row_still_in_the_table_is_none(b: StateBackend) {
    let key = StateKey::generate();
    b.store
        .put(&key, &record("u", Some("v")), Duration::from_secs(600))
        .await
        .unwrap();
    b.elapse(Duration::from_secs(600)).await;
    assert!(b.stored(&key).await.is_some(), "not purged yet");
    assert!(b.store.take(key.as_str()).await.unwrap().is_none());
    assert!(
        b.stored(&key).await.is_none(),
        "the expired row is consumed too"
    );
}

// Backend-specific behaviour.

/// SQL expiry on the real clock, as production runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_expiry_on_the_system_clock() {
    let (sqlite, _dir) = sqlite_store().await;
    let postgres = postgres_store().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    for store in [
        SqlStateStore::new(sqlite.pool().clone(), clock.clone()),
        SqlStateStore::new(postgres.pool().clone(), clock.clone()),
    ] {
        let short = StateKey::generate();
        let long = StateKey::generate();
        store
            .put(&short, &record("u", None), Duration::from_millis(50))
            .await
            .unwrap();
        store.put(&long, &record("u", None), TTL).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            store.purge_expired().await.unwrap(),
            1,
            "{}",
            store.backend()
        );
        assert!(store.take(short.as_str()).await.unwrap().is_none());
        assert!(store.take(long.as_str()).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_store_connects_from_a_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    let connections = tokenvault::store::connect(&url, &Default::default())
        .await
        .unwrap();
    connections.migrate().await.unwrap();
    let store = SqlStateStore::connect(&url, &Default::default())
        .await
        .unwrap();
    assert_eq!(store.backend(), "SQLite");
    store.ping().await.unwrap();
    let err = SqlStateStore::connect("mysql://x", &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidUrl(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ping_fails_before_migration() {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    let store = SqlStateStore::connect(&url, &Default::default())
        .await
        .unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_are_prefixed_and_expire_on_their_own() {
    let b = redis_backend().await;
    let Raw::Redis { connection, prefix } = &b.raw else {
        unreachable!()
    };
    let key = StateKey::generate();
    b.store.put(&key, &record("u", None), TTL).await.unwrap();
    let pttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("{prefix}{}", key.as_str()))
        .query_async(&mut connection.clone())
        .await
        .unwrap();
    assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");
    assert_eq!(b.store.purge_expired().await.unwrap(), 0);
    assert!(b.store.take(key.as_str()).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_default_prefix_is_tokenvault_state() {
    let store = RedisStateStore::connect(&redis_url(), &RedisOptions::default())
        .await
        .unwrap();
    assert_eq!(store.redis_key("abc"), "tokenvault:state:abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_unavailable_quickly() {
    let started = Instant::now();
    let err = RedisStateStore::connect("redis://127.0.0.1:1", &RedisOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Connected lazily, every operation fails the same way, just as fast.
    let lazy =
        RedisStateStore::connect_lazy("redis://127.0.0.1:1", &RedisOptions::default()).unwrap();
    let started = Instant::now();
    let err = lazy.take(StateKey::generate().as_str()).await.unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let err = lazy
        .put(&StateKey::generate(), &record("u", None), TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)), "{err}");
    assert!(matches!(lazy.ping().await, Err(StateError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_redis_is_unavailable_within_the_timeouts() {
    // A listener that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    let started = Instant::now();
    let err = RedisStateStore::connect(&format!("redis://{addr}"), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn malformed_redis_urls_are_config_errors_without_the_password() {
    let err = RedisStateStore::connect("http://:hunter2@example.com", &RedisOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidUrl(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_unavailable_quickly_and_recovers() {
    // A TCP proxy in front of the real Redis that the test can cut.
    let upstream_addr = ::redis::Client::open(redis_url().as_str())
        .unwrap()
        .get_connection_info()
        .addr()
        .to_string();
    let upstream = upstream_addr.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, _) = tokio::sync::watch::channel(false);
    let proxy = {
        let cut = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        })
    };
    let options = RedisOptions {
        key_prefix: unique_redis_prefix(),
        ..RedisOptions::default()
    };
    let store = RedisStateStore::connect(&format!("redis://{addr}"), &options)
        .await
        .unwrap();
    let key = StateKey::generate();
    store.put(&key, &record("u", None), TTL).await.unwrap();

    proxy.abort();
    cut.send_replace(true);
    let _ = proxy.await;
    let started = Instant::now();
    for _ in 0..3 {
        let err = store.take(key.as_str()).await.unwrap_err();
        assert!(matches!(err, StateError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
    assert!(store.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Redis is back: the next requests reconnect by themselves.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let upstream = upstream_addr.clone();
    let proxy = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let taken = loop {
        match store.take(key.as_str()).await {
            Ok(taken) => break taken,
            Err(err) if Instant::now() < deadline => {
                assert!(matches!(err, StateError::Unavailable(_)), "{err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("no reconnect within 5 s: {err}"),
        }
    };
    assert!(taken.is_some(), "the record survived the outage");
    proxy.abort();
}
