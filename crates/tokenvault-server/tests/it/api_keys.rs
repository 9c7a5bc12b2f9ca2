//! API keys as operators use them: created, listed and revoked with the CLI,
//! stored hashed, checked on every `/v1` request with their scope.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokenvault::domain::IntegrationKey;
use tokenvault::integrations::IntegrationConfig;

async fn service() -> Service {
    start_service(|config, base| {
        config.integrations.insert(
            IntegrationKey::parse("github").unwrap(),
            IntegrationConfig {
                provider: "github".into(),
                client_id: "gh-client".into(),
                client_secret: Some(secrecy::SecretString::from("gh-secret")),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await
}

/// Runs `tokenvault api-keys ARGS` against the service's database.
fn api_keys(service: &Service, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenvault"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATABASE_URL", service.config.database_url())
        .env("TOKENVAULT_LOG_FORMAT", "json")
        .arg("api-keys")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn create(service: &Service, name: &str, scope: &str) -> String {
    let (ok, stdout, stderr) = api_keys(service, &["create", "--name", name, "--scope", scope]);
    assert!(ok, "api-keys create failed: {stderr}");
    let key = stdout.trim().to_owned();
    assert!(
        key.starts_with("tvk_") && !key.contains(char::is_whitespace),
        "stdout holds only the key: {stdout:?}"
    );
    assert!(stderr.contains("shown only this once"), "{stderr}");
    key
}

async fn call(
    service: &Service,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = service.http.request(method, service.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn connect_body(user: &str) -> Value {
    json!({"user_id": user, "integration": "github"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_nest_and_wrong_scope_is_403_with_nothing_changed() {
    let service = service().await;
    let reader = create(&service, "dashboard", "read-tokens");
    let manager = create(&service, "backend", "manage");
    let admin = create(&service, "ops", "admin");

    // Reads work with every scope.
    for key in [&reader, &manager, &admin] {
        let (status, _) = call(
            &service,
            reqwest::Method::GET,
            "/v1/integrations",
            Some(key),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = call(
            &service,
            reqwest::Method::GET,
            "/v1/users/u1/connections/github/token",
            Some(key),
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("connection_not_found"))
        );
    }

    // A read-tokens key may not start a flow: 403, and no session exists.
    let (status, body) = call(
        &service,
        reqwest::Method::POST,
        "/v1/connect-sessions",
        Some(&reader),
        Some(connect_body("u1")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("read-tokens") && message.contains("manage"),
        "{message}"
    );
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let (status, _) = call(
        &service,
        reqwest::Method::DELETE,
        "/v1/users/u1/connections/github",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // manage may; admin-only routes stay closed to it.
    let (status, _) = call(
        &service,
        reqwest::Method::POST,
        "/v1/connect-sessions",
        Some(&manager),
        Some(connect_body("u1")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(
        &service,
        reqwest::Method::POST,
        "/v1/integrations/github/reset",
        Some(&manager),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );

    let import = json!({"access_token": "imported-access-token-1", "refresh_token": "imported-refresh-token-1"});
    let (status, body) = call(
        &service,
        reqwest::Method::PUT,
        "/v1/users/u3/connections/github",
        Some(&manager),
        Some(import.clone()),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    assert!(
        !connection_exists(&service, "u3", "github").await,
        "a refused import stores nothing"
    );

    // admin may do everything.
    let (status, _) = call(
        &service,
        reqwest::Method::PUT,
        "/v1/users/u3/connections/github",
        Some(&admin),
        Some(import),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(
        &service,
        reqwest::Method::POST,
        "/v1/integrations/github/reset",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &service,
        reqwest::Method::POST,
        "/v1/connect-sessions",
        Some(&admin),
        Some(connect_body("u2")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_and_unknown_keys_are_401() {
    let service = service().await;
    let key = create(&service, "backend", "admin");
    let path = "/v1/users/u1/connections";
    let (status, body) = call(&service, reqwest::Method::GET, path, None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    // Same shape as a real key, one character off.
    let mut forged = key.clone();
    forged.pop();
    forged.push(if key.ends_with('A') { 'B' } else { 'A' });
    for bad in [forged.as_str(), "tvk_", "not-a-key"] {
        let (status, body) = call(&service, reqwest::Method::GET, path, Some(bad), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{bad}"
        );
    }
    let basic = service
        .http
        .get(service.url(path))
        .basic_auth("user", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(
        basic.status(),
        StatusCode::UNAUTHORIZED,
        "only Bearer is accepted"
    );
    let (status, _) = call(&service, reqwest::Method::GET, path, Some(&key), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_hashed_listed_without_secrets_and_revocable() {
    let service = service().await;
    let key = create(&service, "billing backend", "manage");
    let id = key.split('_').nth(1).unwrap().to_owned();

    // The database holds no usable key: not the key, not its secret part.
    let database = std::fs::read(service.config.data_dir.join("tokenvault.db")).unwrap();
    let wal = std::fs::read(service.config.data_dir.join("tokenvault.db-wal")).unwrap_or_default();
    let secret = key.rsplit('_').next().unwrap();
    for bytes in [&database, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the key's secret is stored in clear"
        );
    }

    let (ok, table, _) = api_keys(&service, &["list"]);
    assert!(ok);
    assert!(
        table.contains(&id)
            && table.contains("billing backend")
            && table.contains("manage")
            && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(secret));

    // Use it, then revoke it: refused within the cache TTL, on this instance
    // without a restart.
    let (status, _) = call(
        &service,
        reqwest::Method::GET,
        "/v1/integrations",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (ok, out, err) = api_keys(&service, &["revoke", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let deadline = Instant::now() + tokenvault_server::http::KEY_CACHE_TTL + Duration::from_secs(3);
    loop {
        let (status, body) = call(
            &service,
            reqwest::Method::GET,
            "/v1/integrations",
            Some(&key),
            None,
        )
        .await;
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                body["message"].as_str().unwrap().contains("revoked"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked key still works after the cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (ok, listed, _) = api_keys(&service, &["list", "--json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert!(entry["revoked_at"].is_string(), "{entry}");
    assert!(
        entry["last_used_at"].is_string(),
        "the use was recorded: {entry}"
    );
    assert!(entry.get("key").is_none() && entry.get("digest").is_none());

    let (ok, _, err) = api_keys(&service, &["revoke", "ffffffffffff"]);
    assert!(!ok && err.contains("no API key"), "{err}");
    let (ok, _, err) = api_keys(&service, &["create", "--name", "x", "--scope", "root"]);
    assert!(!ok && err.contains("read-tokens, manage or admin"), "{err}");
}

/// The key check sits in the router's per-request layer: every routed
/// `/v1` operation (also one reached with a method it does not serve, so
/// a keyless caller learns nothing about the route) needs a key; an unknown
/// path is a 404 with or without one, and the routes outside `/v1` need
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routed_v1_request_needs_a_key_and_nothing_else_does() {
    let service = service().await;
    let key = create(&service, "backend", "admin");
    let keyless = |method: reqwest::Method, path: &'static str| {
        let service = &service;
        async move { call(service, method, path, None, None).await }
    };
    for (method, path) in [
        (reqwest::Method::GET, "/v1/ping"),
        (
            reqwest::Method::GET,
            "/v1/users/u1/connections/github/token",
        ),
        (
            reqwest::Method::POST,
            "/v1/users/u1/connections/github/token",
        ),
        (reqwest::Method::GET, "/v1/proxy/github/u1/user"),
        (reqwest::Method::GET, "/v1/bulk-actions/some-id"),
    ] {
        let (status, body) = keyless(method.clone(), path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{method} {path}"
        );
    }
    for key in [None, Some(key.as_str())] {
        let (status, body) = call(
            &service,
            reqwest::Method::GET,
            "/v1/no-such-thing",
            key,
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }
    // With a key, the method the route does not serve is what is wrong.
    let (status, _) = call(
        &service,
        reqwest::Method::POST,
        "/v1/users/u1/connections/github/token",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    for path in ["/healthz", "/openapi.json"] {
        let (status, _) = keyless(reqwest::Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}
