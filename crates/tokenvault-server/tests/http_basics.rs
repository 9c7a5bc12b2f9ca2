//! The service's HTTP contract: error envelope, request ids, API keys.

mod common;

use common::*;

#[tokio::test]
async fn v1_requires_a_valid_api_key_and_errors_are_uniform() {
    let server = start_service(|_, _| {}).await;
    let http = reqwest::Client::new();
    let url = server.url("/v1/ping");

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

    let ok = http.get(&url).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    // Health stays open for load balancers.
    assert_eq!(
        http.get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: serde_json::Value = http
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["state_store"]["status"], "ok");
}

#[tokio::test]
async fn caller_request_ids_are_echoed_and_unknown_paths_are_json_404s() {
    let server = start_service(|_, _| {}).await;
    let response = reqwest::Client::new()
        .get(server.url("/nope"))
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
        .get(server.url("/nope"))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-request-id"], "bad id\twith spaces");
}

#[tokio::test]
async fn bodies_over_the_configured_limit_are_413_and_change_nothing() {
    let server = start_service(|config, base| {
        config.max_body_bytes = 2048;
        config.integrations.insert(
            tokenvault::domain::IntegrationKey::parse("github").unwrap(),
            tokenvault::integrations::IntegrationConfig {
                provider: "github".into(),
                client_id: "gh-client".into(),
                client_secret: Some(secrecy::SecretString::from("gh-secret")),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await;
    let padding = "x".repeat(4096);
    let big = server
        .post_json(
            "/v1/connect-sessions",
            serde_json::json!({"user_id": "u1", "integration": "github", "redirect_to": padding}),
        )
        .await;
    assert_eq!(big.status(), 413);
    let body: serde_json::Value = big.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert!(body["request_id"].is_string());
    let import = server
        .http
        .put(server.url("/v1/users/u1/connections/github"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"access_token": padding}))
        .send()
        .await
        .unwrap();
    assert_eq!(import.status(), 413);
    assert!(!connection_exists(&server, "u1", "github").await);
    // Under the limit, the same endpoint works.
    let small = server
        .post_json(
            "/v1/connect-sessions",
            serde_json::json!({"user_id": "u1", "integration": "github"}),
        )
        .await;
    assert_eq!(small.status(), 201);
}

#[tokio::test]
async fn unreadable_queries_and_paths_answer_the_error_envelope() {
    let server = start_service(|_, _| {}).await;
    for (path, code) in [
        (
            "/v1/users/u1/connections/demo/token?min_ttl=1&min_ttl=2",
            "invalid_query",
        ),
        ("/v1/users/%FF/connections", "invalid_path"),
    ] {
        let response = server.get_json(path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert_eq!(body["request_id"], request_id.as_str());
    }
}
