//! Client-secret rotation against the real authorization server: with
//! `client_secrets = [new, old]` configured beforehand, the provider
//! switching from the old secret to the new one fails no refresh and
//! changes no connection's status.

use crate::common::*;
use crate::flows::setup;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::domain::IntegrationKey;

async fn secrets_in_use(service: &Service) -> Value {
    let list: Value = service
        .get_json("/v1/integrations")
        .await
        .json()
        .await
        .unwrap();
    let basic = list["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "basic-app")
        .unwrap()
        .clone();
    assert!(basic["health"]["misconfigured"].is_null(), "{basic}");
    basic["client_secrets"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_client_secret_at_the_provider_fails_no_refresh() {
    let peer = Peer::start();
    let service = setup(&peer, |config| {
        let basic = config
            .integrations
            .get_mut(&IntegrationKey::parse("basic-app").unwrap())
            .unwrap();
        // The operator adds the new secret first, before the provider
        // switches to it.
        basic.client_secret = None;
        basic.client_secrets = Some(vec![
            SecretString::from("basic-secret-2"),
            SecretString::from("basic-secret"),
        ]);
    })
    .await;
    let users = ["rot-1", "rot-2", "rot-3"];
    // The provider still knows only the old secret: the new one is refused
    // (invalid_client) and the old one connects.
    for user in users {
        connect_with_ttl(&peer, &service, user, "basic-app", 3600).await;
    }
    assert_eq!(
        secrets_in_use(&service).await,
        json!({"configured": 2, "in_use": 2})
    );

    // The provider switches to the new secret.
    let callback = service.url("/oauth/callback");
    peer.register(
        "basic-app",
        "client_secret_basic",
        Some("basic-secret-2"),
        &callback,
        &["authorization_code", "refresh_token", "client_credentials"],
    )
    .await;
    for user in users {
        let refreshed = service
            .post_json(
                &format!("/v1/users/{user}/connections/basic-app/refresh"),
                json!({}),
            )
            .await;
        assert_eq!(refreshed.status(), 200, "{user}");
        let body: Value = refreshed.json().await.unwrap();
        assert_eq!(body["status"], "connected", "{user}: {body}");
        assert_eq!(body["refreshed"], true, "{user}");
    }
    assert_eq!(
        secrets_in_use(&service).await,
        json!({"configured": 2, "in_use": 1})
    );
    // No connection changed status or recorded a failure.
    for user in users {
        let history: Value = service
            .get_json(&format!("/v1/users/{user}/connections/basic-app/events"))
            .await
            .json()
            .await
            .unwrap();
        let kinds: Vec<&str> = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["refresh_forced", "created"], "{user}");
        let token = service
            .get_json(&format!("/v1/users/{user}/connections/basic-app/token"))
            .await;
        assert_eq!(token.status(), 200, "{user}");
    }
    // App-level tokens (client credentials) use the secret in use too.
    let app = service.get_json("/v1/integrations/basic-app/token").await;
    assert_eq!(app.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_secret_is_one_secret_and_a_bad_list_is_refused() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    assert!(secrets_in_use(&service).await.is_null());
    // The list is checked before anything starts.
    let mut config = service.config.clone();
    config.providers_file = None;
    config
        .integrations
        .retain(|key, _| key.as_str() == "basic-app");
    let basic = config
        .integrations
        .get_mut(&IntegrationKey::parse("basic-app").unwrap())
        .unwrap();
    basic.client_secrets = Some(vec![SecretString::from("x")]);
    let err = tokenvault_server::wiring::build_state(&config)
        .await
        .err()
        .expect("client_secret and client_secrets together are refused")
        .to_string();
    assert!(err.contains("client_secrets"), "{err}");
}
