#![allow(dead_code)]

use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use tokenvault::crypto::{Envelope, KeyRing};
use tokenvault::domain::{
    AccessToken, ConnectionId, ConnectionStatus, IntegrationKey, RefreshToken, Scopes, TokenType,
    UserId,
};
use tokenvault::store::{self, ConnectionStore, NewConnection, PoolOptions, SqlStore, Store};

pub struct Backend {
    pub store: Arc<dyn Store>,
    pub url: String,
    // Keeps the SQLite directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    open(url, Some(dir)).await
}

pub async fn postgres() -> Backend {
    open(tokenvault::testing::fresh_postgres_url().await, None).await
}

async fn open(url: String, dir: Option<tempfile::TempDir>) -> Backend {
    let store = store::connect(&url, &PoolOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    Backend {
        store,
        url,
        _dir: dir,
    }
}

pub fn key_spec(id: &str, byte: u8) -> String {
    format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    )
}

pub fn envelope(spec: &str) -> Envelope {
    Envelope::new(Arc::new(KeyRing::parse(spec, "test").unwrap()))
}

pub fn user(raw: &str) -> UserId {
    UserId::parse(raw).unwrap()
}

pub fn integration(raw: &str) -> IntegrationKey {
    IntegrationKey::parse(raw).unwrap()
}

/// Millisecond precision, as stored.
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

pub async fn new_connection(
    envelope: &Envelope,
    user_id: &str,
    integration_key: &str,
    access: &str,
    refresh: Option<&str>,
    next_refresh_at: Option<DateTime<Utc>>,
) -> NewConnection {
    let id = ConnectionId::new();
    let sealed = envelope
        .seal_new(
            id,
            &AccessToken::new(access),
            refresh.map(RefreshToken::new).as_ref(),
        )
        .await
        .unwrap();
    let now = now();
    NewConnection {
        id,
        user_id: user(user_id),
        integration: integration(integration_key),
        status: ConnectionStatus::Connected,
        scopes: Scopes::parse("user-read-email user-library-modify", " "),
        token_type: TokenType::Bearer,
        expires_at: Some(now + Duration::hours(1)),
        next_refresh_at,
        sealed,
        metadata: json!({"site_id": "abc"}),
        now,
        emit: Vec::new(),
        emit_on_replace: Vec::new(),
        history: Vec::new(),
    }
}

/// A migrated SQLite connection store; keep the directory alive alongside it.
pub async fn sqlite_store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    let store = SqlStore::connect(&url, &PoolOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

/// A migrated PostgreSQL connection store on a fresh database.
pub async fn postgres_store() -> SqlStore {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let store = SqlStore::connect(&url, &PoolOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// The Redis the state-store tests use (`TOKENVAULT_TEST_REDIS_URL`, default
/// the local one). Tests needing it fail, never skip, when it is down.
pub fn redis_url() -> String {
    std::env::var("TOKENVAULT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test run shares, so tests never touch foreign keys.
pub fn unique_redis_prefix() -> String {
    format!("tokenvault:test:{}:state:", uuid::Uuid::new_v4().simple())
}

/// A rotating token endpoint: each refresh token works once (reuse is
/// `invalid_grant`, as at the real peer); counts uses per token.
#[derive(Clone, Default)]
pub struct TokenEndpoint {
    pub uses: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl TokenEndpoint {
    pub async fn start(&self) -> String {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use serde_json::json;
        let uses = self.uses.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(
                move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                    let uses = uses.clone();
                    async move {
                        let token = form.get("refresh_token").cloned().unwrap_or_default();
                        let count = {
                            let mut uses = uses.lock().unwrap();
                            let count = uses.entry(token.clone()).or_default();
                            *count += 1;
                            *count
                        };
                        if count > 1 {
                            return (
                                StatusCode::BAD_REQUEST,
                                axum::Json(json!({"error": "invalid_grant"})),
                            )
                                .into_response();
                        }
                        axum::Json(json!({
                            "access_token": format!("AT-after-{token}"),
                            "refresh_token": format!("{token}-rotated"),
                            "expires_in": 3600,
                            "token_type": "Bearer",
                        }))
                        .into_response()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }
}
