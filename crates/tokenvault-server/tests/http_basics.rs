//! The service's HTTP contract: error envelope, request ids, API keys.

use std::sync::Arc;

use secrecy::SecretString;
use tokenvault::crypto::{Envelope, KeyRing};
use tokenvault_server::http::{ApiKeys, AppState, router};

struct Server {
    base: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    let store = tokenvault::store::connect(&url, &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let ring = KeyRing::parse("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "test").unwrap();
    let state = AppState {
        store,
        envelope: Envelope::new(Arc::new(ring)),
        api_keys: ApiKeys::new(&[SecretString::from("tvk_test_key")]),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Server { base, _dir: dir }
}

#[tokio::test]
async fn v1_requires_a_valid_api_key_and_errors_are_uniform() {
    let server = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/ping", server.base);

    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let request_id = missing.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    assert_eq!(body["request_id"], request_id.as_str());

    let wrong = http
        .get(&url)
        .bearer_auth("tvk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<serde_json::Value>().await.unwrap()["message"],
        "invalid API key"
    );

    let ok = http
        .get(&url)
        .bearer_auth("tvk_test_key")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Health stays open for load balancers.
    assert_eq!(
        http.get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn caller_request_ids_are_echoed_and_unknown_paths_are_json_404s() {
    let server = start().await;
    let response = reqwest::Client::new()
        .get(format!("{}/nope", server.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "not_found", "message": "no such endpoint", "request_id": "abc-123"})
    );

    // A hostile request id is replaced, not echoed.
    let response = reqwest::Client::new()
        .get(format!("{}/nope", server.base))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-request-id"], "bad id\twith spaces");
}
