//! The token lifecycle over HTTP against the rotating test peer: valid
//! tokens on demand, one refresh for many callers, the failure table
//! (429, 5xx, revoked grant, wrong client secret), revocation, status and
//! signed webhooks.

use std::time::{Duration, Instant};

use crate::common::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::domain::{ConnectionStatus, IntegrationKey, UserId};
use tokenvault::integrations::IntegrationConfig;
use tokenvault_server::config::Config;

const CLIENT: &str = "life-app";
const SECRET: &str = "life-secret";
const WEBHOOK_SECRET: &str = "whsec_lifecycle";

/// A confidential client on the peer; the service may use a different
/// secret than the peer knows (`service_secret`) to provoke invalid_client.
async fn setup(peer: &Peer, service_secret: &str, tweak: impl FnOnce(&mut Config)) -> Service {
    let issuer = peer.issuer.clone();
    let secret = service_secret.to_owned();
    let service = start_service_with_workers(|config, base| {
        config.integrations.insert(
            IntegrationKey::parse(CLIENT).unwrap(),
            IntegrationConfig {
                provider: "oidc".into(),
                client_id: CLIENT.into(),
                client_secret: Some(SecretString::from(secret)),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                scopes: Some(vec![
                    "openid".into(),
                    "offline_access".into(),
                    "api:read".into(),
                ]),
                issuer: Some(url::Url::parse(&issuer).unwrap()),
                ..Default::default()
            },
        );
        // On-demand behaviour only: the scheduler would refresh behind the
        // tests' backs (it has its own tests).
        config.scheduler_enabled = false;
        tweak(config);
    })
    .await;
    peer.register(
        CLIENT,
        "client_secret_basic",
        Some(SECRET),
        &service.url("/oauth/callback"),
        &["authorization_code", "refresh_token"],
    )
    .await;
    service
}

/// Connects `user` through the browser flow with an access token that
/// lives `ttl` seconds; later tokens live an hour.
async fn connect(peer: &Peer, service: &Service, user: &str, ttl: u64) {
    connect_with_ttl(peer, service, user, CLIENT, ttl).await;
}

async fn stored(service: &Service, user: &str) -> tokenvault::store::ConnectionRecord {
    service
        .state
        .vault
        .store()
        .get(
            &UserId::parse(user).unwrap(),
            &IntegrationKey::parse(CLIENT).unwrap(),
        )
        .await
        .unwrap()
        .expect("connection exists")
}

async fn stored_access_token(service: &Service, user: &str) -> String {
    let record = stored(service, user).await;
    let tokens = service.state.vault.open(&record).await.unwrap().unwrap();
    tokens.access_token.expose().to_owned()
}

fn with_webhook(config: &mut Config, receiver: &WebhookReceiver) {
    config.webhook_url = Some(url::Url::parse(&receiver.url).unwrap());
    config.webhook_secret = Some(SecretString::from(WEBHOOK_SECRET));
}

fn token_path(user: &str) -> String {
    format!("/v1/users/{user}/connections/{CLIENT}/token")
}

fn refreshes(stats: &Value) -> u64 {
    stats["refresh_by_client"][CLIENT].as_u64().unwrap_or(0)
}

fn refresh_requests(stats: &Value) -> u64 {
    stats["token_requests"]["refresh_token"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_expiry_token_is_refreshed_once_for_many_concurrent_callers() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    connect(&peer, &service, "alice", 30).await;
    let old = stored_access_token(&service, "alice").await;

    // Fresh for 30 s, but callers want 60 s by default: 50 concurrent callers
    // share one refresh.
    let path = token_path("alice");
    let calls = (0..50).map(|_| service.get_json(&path));
    let responses = futures::future::join_all(calls).await;
    let mut handed_out = std::collections::BTreeSet::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert!(
            body["scopes"]
                .as_array()
                .unwrap()
                .contains(&json!("api:read"))
        );
        handed_out.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(handed_out.len(), 1, "every caller got the same token");
    let new = handed_out.into_iter().next().unwrap();
    assert_ne!(new, old, "the near-expiry token was replaced");
    assert_eq!(
        refreshes(&peer.stats().await),
        1,
        "exactly one refresh grant"
    );
    assert_eq!(stored_access_token(&service, "alice").await, new, "stored");

    // Now fresh for an hour: served from storage, no provider call.
    let again: Value = service
        .get_json(&token_path("alice"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["access_token"], new.as_str());
    // A caller asking for more than the provider's tokens ever live is
    // served the fresh token as it is (a refresh could not improve it)…
    let long: Value = service
        .get_json(&format!("{}?min_ttl=7200", token_path("alice")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(long["access_token"], new.as_str());
    assert_eq!(refreshes(&peer.stats().await), 1);
    // …and a forced refresh shows the rotated refresh token still works
    // (the grant is alive).
    let forced = service
        .post_json(
            &format!("/v1/users/alice/connections/{CLIENT}/refresh"),
            json!({}),
        )
        .await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_ne!(forced["access_token"], new.as_str());
    assert_eq!(refreshes(&peer.stats().await), 2);
    let record = stored(&service, "alice").await;
    assert_eq!(record.status, ConnectionStatus::Connected);
    assert!(record.last_refreshed_at.is_some() && record.lease.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_validated() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    for (path, status, code) in [
        (
            format!("{}?min_ttl=abc", token_path("bob")),
            400,
            "invalid_min_ttl",
        ),
        (
            format!("{}?min_ttl=-1", token_path("bob")),
            400,
            "invalid_min_ttl",
        ),
        (
            "/v1/users/bob/connections/nope/token".into(),
            404,
            "unknown_integration",
        ),
        (
            format!("/v1/users/{}/connections/{CLIENT}/token", "x".repeat(300)),
            400,
            "invalid_user_id",
        ),
        (token_path("nobody"), 404, "connection_not_found"),
    ] {
        let response = service.get_json(&path).await;
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["request_id"].is_string());
    }
    let anonymous = service
        .http
        .get(service.url(&token_path("bob")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_out_for_its_retry_after_and_is_not_an_attempt() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    connect(&peer, &service, "carol", 30).await;
    peer.hook(
        "faults",
        json!({"faults": [{"status": 429, "retry_after": "2", "grant_type": "refresh_token"}]}),
    )
    .await;
    let started = Instant::now();
    let response = service.get_json(&token_path("carol")).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        elapsed >= Duration::from_secs(2),
        "Retry-After honoured: {elapsed:?}"
    );
    let stats = peer.stats().await;
    assert_eq!(refresh_requests(&stats), 2, "the 429, then the refresh");
    assert_eq!(refreshes(&stats), 1);
    let record = stored(&service, "carol").await;
    assert_eq!(record.status, ConnectionStatus::Connected);
    assert_eq!(record.refresh_attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_success_ends_connected_after_three_provider_calls() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    connect(&peer, &service, "dave", 30).await;
    peer.hook(
        "faults",
        json!({"faults": [
            {"status": 503, "grant_type": "refresh_token"},
            {"status": 503, "grant_type": "refresh_token"},
        ]}),
    )
    .await;
    let started = Instant::now();
    let response = service.get_json(&token_path("dave")).await;
    assert_eq!(response.status(), 200);
    // Backoff ≈1 s then ≈2 s, each ±25 %.
    assert!(
        started.elapsed() >= Duration::from_millis(2200),
        "{:?}",
        started.elapsed()
    );
    let stats = peer.stats().await;
    assert_eq!(refresh_requests(&stats), 3);
    assert_eq!(refreshes(&stats), 1);
    let record = stored(&service, "dave").await;
    assert_eq!(record.status, ConnectionStatus::Connected);
    assert_eq!(record.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_5xx_keeps_a_valid_token_flowing_then_reports_unavailable() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    connect(&peer, &service, "erin", 30).await;
    let old = stored_access_token(&service, "erin").await;
    let outage: Vec<Value> = (0..3)
        .map(|_| json!({"status": 503, "grant_type": "refresh_token"}))
        .collect();
    peer.hook("faults", json!({ "faults": outage })).await;
    // The run fails after 3 attempts, but the stored token is still valid
    // for ~25 s: it is handed out.
    let response = service.get_json(&token_path("erin")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["access_token"], old.as_str());
    assert_eq!(
        refresh_requests(&peer.stats().await),
        3,
        "at most 3 attempts per run"
    );
    let record = stored(&service, "erin").await;
    assert_eq!(
        record.status,
        ConnectionStatus::Connected,
        "token still valid"
    );
    assert_eq!(record.refresh_attempts, 1, "one failed run");
    assert_eq!(record.last_error.as_ref().unwrap().code, "server_error");
    assert!(record.failing_since.is_some());
    let status: Value = service
        .get_json(&format!("/v1/users/erin/connections/{CLIENT}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["last_error"]["code"], "server_error");
    // The failed run is in the history, with its class and code.
    let page: Value = service
        .get_json(&format!("/v1/users/erin/connections/{CLIENT}/events"))
        .await
        .json()
        .await
        .unwrap();
    let failed = &page["events"][0];
    assert_eq!(failed["kind"], "refresh_failed", "{page}");
    assert_eq!(failed["status"], "connected");
    assert_eq!(failed["error"]["class"], "transient");
    assert_eq!(failed["error"]["code"], "server_error");
    assert_eq!(page["events"][1]["kind"], "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_needs_reauth_and_sends_a_signed_webhook() {
    let peer = Peer::start();
    let receiver = WebhookReceiver::start().await;
    let service = setup(&peer, SECRET, |config| with_webhook(config, &receiver)).await;
    connect(&peer, &service, "frank", 30).await;
    let created = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "connection.created",
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["user_id"], "frank");

    peer.hook("revoke-grants", json!({})).await;
    let response = service.get_json(&token_path("frank")).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "needs_reauth");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("connect-sessions"),
        "{body}"
    );
    assert_eq!(
        stored(&service, "frank").await.status,
        ConnectionStatus::NeedsReauth
    );

    // No retry: later calls answer from the status, the provider is not asked.
    let requests = refresh_requests(&peer.stats().await);
    assert_eq!(service.get_json(&token_path("frank")).await.status(), 409);
    assert_eq!(refresh_requests(&peer.stats().await), requests);

    let events = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "connection.needs_reauth",
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(events.len(), 1, "one event, signature verified");
    let event = &events[0];
    assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    assert_eq!(event["data"]["user_id"], "frank");
    assert_eq!(event["data"]["integration"], CLIENT);
    assert_eq!(event["data"]["error"]["code"], "invalid_grant");
    let list: Value = service
        .get_json("/v1/users/frank/connections")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["any_connected"], false);
    assert_eq!(list["connections"][0]["status"], "needs_reauth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_marks_the_integration_not_the_users() {
    let peer = Peer::start();
    let receiver = WebhookReceiver::start().await;
    // The operator rotated the client secret wrongly: the peer knows
    // SECRET, the service sends another.
    let bad = setup(&peer, "not-the-secret", |config| {
        with_webhook(config, &receiver)
    })
    .await;
    // Connections stored while the configuration was still right (a
    // connect flow would itself fail at the token endpoint now).
    for user in ["gina", "hank"] {
        let tokens = tokenvault::domain::TokenSet {
            access_token: tokenvault::domain::AccessToken::new(format!("AT-{user}")),
            refresh_token: Some(tokenvault::domain::RefreshToken::new(format!("RT-{user}"))),
            token_type: tokenvault::domain::TokenType::Bearer,
            scopes: tokenvault::domain::Scopes::new(),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
        };
        bad.state
            .vault
            .save_grant(
                &UserId::parse(user).unwrap(),
                &IntegrationKey::parse(CLIENT).unwrap(),
                &tokens,
                json!({}),
                chrono::Duration::minutes(5),
            )
            .await
            .unwrap();
    }
    peer.hook("reset", json!({})).await;

    // Still-valid tokens keep flowing; the integration is paused.
    let response = bad.get_json(&token_path("gina")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["access_token"],
        "AT-gina"
    );
    let after_first = refresh_requests(&peer.stats().await);
    assert_eq!(after_first, 1);
    let response = bad.get_json(&token_path("hank")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        refresh_requests(&peer.stats().await),
        after_first,
        "refreshes for a misconfigured integration pause"
    );
    for user in ["gina", "hank"] {
        let record = stored(&bad, user).await;
        assert_eq!(
            record.status,
            ConnectionStatus::Connected,
            "{user} keeps its status"
        );
    }
    let integrations: Value = bad.get_json("/v1/integrations").await.json().await.unwrap();
    let entry = integrations["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == CLIENT)
        .unwrap()
        .clone();
    assert_eq!(
        entry["health"]["misconfigured"]["error"]["code"], "invalid_client",
        "{entry}"
    );
    let ready: Value = reqwest::get(bad.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"]["integrations"][CLIENT]["status"], "misconfigured",
        "{ready}"
    );
    let events = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "integration.misconfigured",
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["integration"], CLIENT);

    // An admin reset resumes refreshes (which fail again with the wrong secret).
    let reset = bad
        .post_json(&format!("/v1/integrations/{CLIENT}/reset"), json!({}))
        .await;
    assert_eq!(reset.status(), 200);
    assert_eq!(bad.get_json(&token_path("hank")).await.status(), 200);
    assert_eq!(refresh_requests(&peer.stats().await), after_first + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_revokes_at_the_provider_and_erases_locally() {
    let peer = Peer::start();
    let receiver = WebhookReceiver::start().await;
    let service = setup(&peer, SECRET, |config| with_webhook(config, &receiver)).await;
    connect(&peer, &service, "ivy", 3600).await;
    let record = stored(&service, "ivy").await;
    let tokens = service.state.vault.open(&record).await.unwrap().unwrap();

    let response = service
        .delete(&format!("/v1/users/ivy/connections/{CLIENT}"))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"revoked_at_provider": true}));
    assert_eq!(
        peer.stats().await["revocations"],
        2,
        "refresh token, then access token"
    );

    let record = stored(&service, "ivy").await;
    assert_eq!(record.status, ConnectionStatus::Disconnected);
    assert!(
        record.access_token.is_none() && record.refresh_token.is_none(),
        "erased"
    );
    // The grant is dead at the provider.
    let integration = service
        .state
        .integrations
        .get(&IntegrationKey::parse(CLIENT).unwrap())
        .unwrap();
    let err = integration
        .refresh(
            tokens.refresh_token.as_ref().unwrap(),
            &tokens.scopes,
            chrono::Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "{err}");
    // The documented contract: token reads answer 404 connection_not_found,
    // the status document stays readable as `disconnected`.
    let token = service.get_json(&token_path("ivy")).await;
    assert_eq!(token.status(), 404);
    assert_eq!(
        token.json::<Value>().await.unwrap()["error"],
        "connection_not_found"
    );
    let status = service
        .get_json(&format!("/v1/users/ivy/connections/{CLIENT}"))
        .await;
    assert_eq!(status.status(), 200);
    assert_eq!(
        status.json::<Value>().await.unwrap()["status"],
        "disconnected"
    );
    let events = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "connection.revoked",
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(events.len(), 1);

    // Twice is harmless.
    let again: Value = service
        .delete(&format!("/v1/users/ivy/connections/{CLIENT}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["revoked_at_provider"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_does_not_block_the_local_erase() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    connect(&peer, &service, "jack", 3600).await;
    drop(peer);
    let response = service
        .delete(&format!("/v1/users/jack/connections/{CLIENT}"))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_at_provider"], false);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("revocation failed"),
        "{body}"
    );
    let record = stored(&service, "jack").await;
    assert_eq!(record.status, ConnectionStatus::Disconnected);
    assert!(record.access_token.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_and_forced_refresh() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    let empty: Value = service
        .get_json("/v1/users/kim/connections")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({"connections": [], "any_connected": false}));
    connect(&peer, &service, "kim", 3600).await;
    let list: Value = service
        .get_json("/v1/users/kim/connections")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["any_connected"], true);
    let connection = &list["connections"][0];
    assert_eq!(connection["integration"], CLIENT);
    assert_eq!(connection["status"], "connected");
    assert!(connection["expires_at"].is_string());
    assert!(connection["last_refreshed_at"].is_null());
    assert!(
        connection.get("access_token").is_none(),
        "no token material in status"
    );

    let forced = service
        .post_json(
            &format!("/v1/users/kim/connections/{CLIENT}/refresh"),
            json!({}),
        )
        .await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["refreshed"], true);
    assert!(forced["last_refreshed_at"].is_string());
    assert_eq!(refreshes(&peer.stats().await), 1);
    let one: Value = service
        .get_json(&format!("/v1/users/kim/connections/{CLIENT}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["last_refreshed_at"], forced["last_refreshed_at"]);
    let missing = service.get_json("/v1/users/kim/connections/other").await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_stops_provider_calls_and_shows_in_health() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |config| {
        config.breaker_failure_threshold = 3;
    })
    .await;
    connect(&peer, &service, "lena", 30).await;
    let outage: Vec<Value> = (0..3)
        .map(|_| json!({"status": 502, "grant_type": "refresh_token"}))
        .collect();
    peer.hook("faults", json!({ "faults": outage })).await;
    // Three failed attempts open the circuit; the still-valid token flows.
    assert_eq!(service.get_json(&token_path("lena")).await.status(), 200);
    assert_eq!(refresh_requests(&peer.stats().await), 3);
    // While it is open, callers are answered without asking the provider.
    assert_eq!(service.get_json(&token_path("lena")).await.status(), 200);
    assert_eq!(
        refresh_requests(&peer.stats().await),
        3,
        "no call while open"
    );
    let integrations: Value = service
        .get_json("/v1/integrations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(integrations["integrations"][0]["health"]["circuit"], "open");
    let ready = reqwest::get(service.url("/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "integration trouble does not unready the instance"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready["checks"]["integrations"][CLIENT]["status"],
        "degraded"
    );
    assert_eq!(ready["checks"]["integrations"][CLIENT]["circuit"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_mid_refresh_still_stores_the_rotated_token() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |config| config.request_timeout_secs = 1).await;
    connect(&peer, &service, "tim", 30).await;
    let before = stored_access_token(&service, "tim").await;
    // The provider takes 2.5 s to answer the refresh: longer than the
    // request may run.
    peer.hook(
        "faults",
        json!({"faults": [{"delay_ms": 2500, "grant_type": "refresh_token"}]}),
    )
    .await;
    let started = Instant::now();
    let response = service.get_json(&token_path("tim")).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The refresh the request started goes on without it and keeps the
    // rotated refresh token (dropping it would kill the grant at the next
    // refresh: the peer detects reuse of the old one).
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_access_token(&service, "tim").await == before {
        assert!(Instant::now() < deadline, "the refresh was abandoned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = service.get_json(&token_path("tim")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["access_token"],
        stored_access_token(&service, "tim").await
    );
    let forced = service
        .post_json(
            &format!("/v1/users/tim/connections/{CLIENT}/refresh"),
            json!({}),
        )
        .await;
    assert_eq!(forced.status(), 200, "the grant is alive");
    let stats = peer.stats().await;
    assert_eq!(
        refreshes(&stats),
        2,
        "the detached refresh, then the forced one"
    );
    assert_eq!(stats["grants_revoked"], 0);
}

/// `min_ttl` above what the provider issues (1-hour tokens, a day asked):
/// at most one refresh, and every answer tells the truth about expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ttl_above_the_token_lifetime_refreshes_at_most_once() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    connect(&peer, &service, "dora", 3600).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let response = client
            .get(service.url(&format!("{}?min_ttl=86400", token_path("dora"))))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let expires_at: chrono::DateTime<chrono::Utc> =
            body["expires_at"].as_str().unwrap().parse().unwrap();
        let left = expires_at - chrono::Utc::now();
        assert!(
            left > chrono::Duration::minutes(55) && left <= chrono::Duration::hours(1),
            "the answer's expires_at is the token's own: {left}"
        );
    }
    assert!(
        refreshes(&peer.stats().await) <= 1,
        "{}",
        peer.stats().await
    );
}

/// Two idle connections whose provider issues 20-second tokens: the
/// scheduler refreshes each about once per half-life (8–14 grants a
/// minute for both), never again right after a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_about_once_per_half_life() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |config| {
        config.scheduler_enabled = true;
    })
    .await;
    peer.hook("config", json!({"access_token_ttl": 20})).await;
    for user in ["idle-1", "idle-2"] {
        let page = browser(None)
            .get(service.connect_url(user, CLIENT, None).await)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
    }
    // The service's own scheduler (enabled above) runs meanwhile.
    peer.hook("reset", json!({})).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let grants = refreshes(&peer.stats().await);
    assert!(
        (8..=14).contains(&grants),
        "{grants} refresh grants in a minute for two 20-second tokens"
    );
    assert_eq!(
        stored(&service, "idle-1").await.status,
        ConnectionStatus::Connected
    );
}

async fn history_kinds(service: &Service, user: &str) -> Vec<String> {
    let page: Value = service
        .get_json(&format!("/v1/users/{user}/connections/{CLIENT}/events"))
        .await
        .json()
        .await
        .unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The history is kept without any webhook configured, one entry per
/// change, newest first, across a reconnect; routine refreshes stay out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_history_records_each_change_without_a_webhook() {
    let peer = Peer::start();
    let service = setup(&peer, SECRET, |_| {}).await;
    assert!(history_kinds(&service, "gina").await.is_empty());
    connect(&peer, &service, "gina", 30).await;
    let first_id = stored(&service, "gina").await.id;
    assert_eq!(history_kinds(&service, "gina").await, ["created"]);

    // A refresh asked for by min_ttl is routine: not recorded.
    let read = service
        .get_json(&format!("{}?min_ttl=600", token_path("gina")))
        .await;
    assert_eq!(read.status(), 200);
    assert_eq!(refreshes(&peer.stats().await), 1);
    let forced = service
        .post_json(
            &format!("/v1/users/gina/connections/{CLIENT}/refresh"),
            json!({}),
        )
        .await;
    assert_eq!(forced.status(), 200);
    assert_eq!(
        history_kinds(&service, "gina").await,
        ["refresh_forced", "created"]
    );

    peer.hook("revoke-grants", json!({})).await;
    let forced = service
        .post_json(
            &format!("/v1/users/gina/connections/{CLIENT}/refresh"),
            json!({}),
        )
        .await;
    assert_eq!(forced.status(), 409);
    connect(&peer, &service, "gina", 3600).await;
    let revoked = service
        .delete(&format!("/v1/users/gina/connections/{CLIENT}"))
        .await;
    assert_eq!(revoked.status(), 200);

    let page: Value = service
        .get_json(&format!("/v1/users/gina/connections/{CLIENT}/events"))
        .await
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "revoked",
            "reconnected",
            "needs_reauth",
            "refresh_forced",
            "created"
        ]
    );
    assert_eq!(events[0]["status"], "disconnected");
    assert_eq!(events[2]["status"], "needs_reauth");
    assert_eq!(events[2]["error"]["code"], "invalid_grant");
    assert!(events[3]["error"].is_null());
    assert_eq!(events[4]["connection_id"], first_id.to_string());
    // Reconnecting renews the same connection: one id across its history.
    assert_eq!(events[1]["connection_id"], events[4]["connection_id"]);
    assert!(page["next_cursor"].is_null());

    // Paged one at a time, the same entries in the same order.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = after.map(|c| format!("&after={c}")).unwrap_or_default();
        let page: Value = service
            .get_json(&format!(
                "/v1/users/gina/connections/{CLIENT}/events?limit=2{query}"
            ))
            .await
            .json()
            .await
            .unwrap();
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(&paged, events);
}
