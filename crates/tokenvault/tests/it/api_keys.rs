//! The API-key table behaves the same on SQLite and PostgreSQL.

use std::sync::Arc;

use chrono::{Duration, Utc};
use secrecy::ExposeSecret;
use tokenvault::api_keys::{self, ApiKeyError, ApiKeyStore, Scope, SqlApiKeyStore};
use tokenvault::store::{Database, PoolOptions};

async fn sqlite() -> (Arc<dyn ApiKeyStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    (open(&url).await, dir)
}

async fn postgres() -> Arc<dyn ApiKeyStore> {
    open(&tokenvault::testing::fresh_postgres_url().await).await
}

async fn open(url: &str) -> Arc<dyn ApiKeyStore> {
    let database = Database::open(url, &PoolOptions::default()).await.unwrap();
    database.store().migrate().await.unwrap();
    SqlApiKeyStore::on(&database)
}

async fn keys_are_found_by_digest_listed_and_revoked(store: Arc<dyn ApiKeyStore>) {
    let t0 = Utc::now() - Duration::minutes(5);
    let reader = api_keys::generate("dashboard", Scope::ReadTokens, t0).unwrap();
    let admin = api_keys::generate("ops", Scope::Admin, t0 + Duration::seconds(1)).unwrap();
    store.insert(&reader).await.unwrap();
    store.insert(&admin).await.unwrap();

    let found = store
        .find_by_digest(&api_keys::digest(reader.key.expose_secret()))
        .await
        .unwrap()
        .expect("the stored key is found by its digest");
    assert_eq!(found.id, reader.record.id);
    assert_eq!(found.scope, Scope::ReadTokens);
    assert_eq!(found.name, "dashboard");
    assert_eq!(
        found.created_at.timestamp_millis(),
        t0.timestamp_millis(),
        "times round-trip at millisecond precision"
    );
    let wrong = format!("{}x", reader.key.expose_secret());
    assert!(
        store
            .find_by_digest(&api_keys::digest(&wrong))
            .await
            .unwrap()
            .is_none()
    );

    let listed = store.list().await.unwrap();
    let ids: Vec<_> = listed.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [reader.record.id.as_str(), admin.record.id.as_str()]);

    let used = Utc::now();
    store.touch(&admin.record.id, used).await.unwrap();
    assert!(store.revoke(&reader.record.id, used).await.unwrap());
    assert!(
        !store.revoke(&reader.record.id, used).await.unwrap(),
        "revoking twice reports that nothing changed"
    );
    assert!(matches!(
        store.revoke("000000000000", used).await,
        Err(ApiKeyError::NotFound(_))
    ));
    let listed = store.list().await.unwrap();
    assert_eq!(
        listed[0].revoked_at.map(|t| t.timestamp_millis()),
        Some(used.timestamp_millis())
    );
    assert!(listed[1].revoked_at.is_none());
    assert_eq!(
        listed[1].last_used_at.map(|t| t.timestamp_millis()),
        Some(used.timestamp_millis())
    );
    // A revoked key is still found (so callers can tell "revoked" from "unknown").
    let revoked = store
        .find_by_digest(&api_keys::digest(reader.key.expose_secret()))
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
}

#[tokio::test]
async fn sqlite_keys_are_found_by_digest_listed_and_revoked() {
    let (store, _dir) = sqlite().await;
    keys_are_found_by_digest_listed_and_revoked(store).await;
}

#[tokio::test]
async fn postgres_keys_are_found_by_digest_listed_and_revoked() {
    keys_are_found_by_digest_listed_and_revoked(postgres().await).await;
}

/// Admin console sessions live beside the keys they were opened with.
async fn admin_sessions_open_expire_and_end_with_their_key(database: Database) {
    use tokenvault::admin_sessions::{self, SqlAdminSessionStore};
    let sessions = SqlAdminSessionStore::on(&database);
    // Stored to the millisecond.
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let a = admin_sessions::open("k1", "digest-one", now, Duration::hours(8));
    let b = admin_sessions::open("k2", "digest-two", now, Duration::hours(8));
    let short = admin_sessions::open("k1", "digest-one", now, Duration::seconds(1));
    for opened in [&a, &b, &short] {
        sessions.insert(opened).await.unwrap();
    }
    let found = sessions
        .find(a.cookie.expose_secret(), now)
        .await
        .unwrap()
        .expect("a live session is found by its cookie");
    assert_eq!(found, a.session);
    assert_ne!(a.session.csrf_token, b.session.csrf_token);
    // Not by anything else: a wrong, malformed or expired cookie.
    let mut wrong = a.cookie.expose_secret().to_owned();
    wrong.replace_range(0..1, if wrong.starts_with('A') { "B" } else { "A" });
    assert_eq!(sessions.find(&wrong, now).await.unwrap(), None);
    assert_eq!(sessions.find("' OR 1=1 --", now).await.unwrap(), None);
    let later = now + Duration::seconds(2);
    assert_eq!(
        sessions
            .find(short.cookie.expose_secret(), later)
            .await
            .unwrap(),
        None
    );
    assert_eq!(sessions.purge_expired(later).await.unwrap(), 1);
    // Revoking key one ends its sessions only.
    assert_eq!(sessions.delete_for_key("digest-one").await.unwrap(), 1);
    assert_eq!(
        sessions.find(a.cookie.expose_secret(), now).await.unwrap(),
        None
    );
    assert!(
        sessions
            .find(b.cookie.expose_secret(), now)
            .await
            .unwrap()
            .is_some()
    );
    // Logout.
    assert!(sessions.delete(b.cookie.expose_secret()).await.unwrap());
    assert!(!sessions.delete(b.cookie.expose_secret()).await.unwrap());
    assert_eq!(
        sessions.find(b.cookie.expose_secret(), now).await.unwrap(),
        None
    );
}

async fn migrated(url: &str) -> Database {
    let database = Database::open(url, &PoolOptions::default()).await.unwrap();
    database.store().migrate().await.unwrap();
    database
}

#[tokio::test]
async fn sqlite_admin_sessions_open_expire_and_end_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let database = migrated(&tokenvault::testing::sqlite_url(dir.path())).await;
    admin_sessions_open_expire_and_end_with_their_key(database).await;
}

#[tokio::test]
async fn postgres_admin_sessions_open_expire_and_end_with_their_key() {
    let database = migrated(&tokenvault::testing::fresh_postgres_url().await).await;
    admin_sessions_open_expire_and_end_with_their_key(database).await;
}
