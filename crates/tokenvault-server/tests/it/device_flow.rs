//! The device authorization grant (RFC 8628) end to end against the OAuth
//! test peer: tokenvault polls the peer itself, and the app only reads
//! `GET /v1/device-sessions/{id}`. The peer advertises a 1 s interval.

use std::time::{Duration, Instant};

use crate::common::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::device::DeviceSessionStatus;
use tokenvault::domain::{ConnectionStatus, DeviceSessionId, IntegrationKey, UserId};
use tokenvault::integrations::IntegrationConfig;
use tokenvault_server::wiring::spawn_device_poller;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Integrations on the peer: a public device client, a confidential one, a
/// client the peer does not know, and a provider without a device endpoint.
async fn setup(peer: &Peer, database_url: Option<String>) -> Service {
    let providers = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        providers.path(),
        "[providers.peer-device]\nalias = \"oidc\"\ntoken_auth_method = \"none\"\n",
    )
    .unwrap();
    let issuer = peer.issuer.clone();
    let service = start_service(|config, base| {
        let redirect = url::Url::parse(&format!("{base}/oauth/callback")).unwrap();
        let integration =
            |provider: &str, client_id: &str, secret: Option<&str>, issuer: Option<&str>| {
                IntegrationConfig {
                    provider: provider.into(),
                    client_id: client_id.into(),
                    client_secret: secret.map(SecretString::from),
                    redirect_uri: Some(redirect.clone()),
                    scopes: Some(vec![
                        "openid".into(),
                        "offline_access".into(),
                        "api:read".into(),
                    ]),
                    issuer: issuer.map(|i| url::Url::parse(i).unwrap()),
                    ..Default::default()
                }
            };
        config.providers_file = Some(providers.path().to_path_buf());
        config.database_url = database_url;
        for (key, provider, secret, issuer) in [
            ("device-public", "peer-device", None, Some(issuer.as_str())),
            (
                "device-basic",
                "oidc",
                Some("basic-secret"),
                Some(issuer.as_str()),
            ),
            ("unregistered", "oidc", Some("nope"), Some(issuer.as_str())),
            ("spotify-app", "spotify", Some("spotify-secret"), None),
        ] {
            config.integrations.insert(
                IntegrationKey::parse(key).unwrap(),
                integration(provider, key, secret, issuer),
            );
        }
    })
    .await;
    let callback = service.url("/oauth/callback");
    let grants = [DEVICE_GRANT, "refresh_token"];
    peer.register("device-public", "none", None, &callback, &grants)
        .await;
    peer.register(
        "device-basic",
        "client_secret_basic",
        Some("basic-secret"),
        &callback,
        &grants,
    )
    .await;
    peer.hook("config", json!({"device_interval": 1})).await;
    service
}

/// `POST /v1/device-sessions` → the 201 body.
async fn start(service: &Service, user: &str, integration: &str) -> Value {
    let response = service
        .post_json(
            "/v1/device-sessions",
            json!({"user_id": user, "integration": integration}),
        )
        .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn session(service: &Service, id: &str) -> Value {
    let response = service.get_json(&format!("/v1/device-sessions/{id}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Reads the session until it is no longer pending (or `within` passes).
async fn outcome(service: &Service, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let body = session(service, id).await;
        if body["status"] != "pending" || Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn device_polls(peer: &Peer) -> u64 {
    peer.stats().await["token_requests"][DEVICE_GRANT]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the peer has answered at least `n` device-token requests.
async fn wait_for_polls(peer: &Peer, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while device_polls(peer).await < n {
        assert!(
            Instant::now() < deadline,
            "tokenvault did not poll the peer {n} time(s) within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn session_id(body: &Value) -> DeviceSessionId {
    DeviceSessionId::parse(body["id"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_sessions_connect_with_working_tokens() {
    let peer = Peer::start();
    let service = setup(&peer, None).await;
    let poller = spawn_device_poller(&service.state);
    for integration in ["device-public", "device-basic"] {
        let user = format!("user-{integration}");
        let started = start(&service, &user, integration).await;
        assert!(
            started["user_code"].as_str().is_some_and(|c| !c.is_empty()),
            "{started}"
        );
        assert_eq!(
            started["verification_uri"],
            format!("{}/device", peer.issuer),
            "{started}"
        );
        assert!(
            started["verification_uri_complete"]
                .as_str()
                .is_some_and(|u| u.contains("user_code=")),
            "{started}"
        );
        assert_eq!(started["interval"], 1, "{started}");
        assert!(started["expires_at"].is_string(), "{started}");
        assert!(started.get("device_code").is_none(), "never handed out");
        let id = started["id"].as_str().unwrap();

        let pending = session(&service, id).await;
        assert_eq!(pending["status"], "pending", "{pending}");
        assert_eq!(pending["integration"], integration);
        assert_eq!(pending["user_id"], user.as_str());
        assert_eq!(pending["expires_at"], started["expires_at"]);
        assert!(pending.get("connection").is_none(), "{pending}");

        peer.hook("device/approve", json!({"user_code": started["user_code"]}))
            .await;
        let done = outcome(&service, id, Duration::from_secs(10)).await;
        assert_eq!(done["status"], "connected", "{integration}: {done}");
        assert_eq!(
            done["connection"],
            json!({"integration": integration, "status": "connected"}),
            "{done}"
        );

        let (record, tokens) = service
            .state
            .vault
            .read(
                &UserId::parse(user.as_str()).unwrap(),
                &IntegrationKey::parse(integration).unwrap(),
            )
            .await
            .unwrap()
            .expect("connection stored");
        assert_eq!(record.status, ConnectionStatus::Connected);
        assert!(
            tokens.refresh_token.is_some(),
            "{integration}: refresh token"
        );
        assert!(tokens.scopes.includes("api:read"), "{:?}", tokens.scopes);
        assert!(record.expires_at.is_some() && record.next_refresh_at.is_some());
        // The decrypted access token is the peer's: its userinfo accepts it.
        let profile = service
            .state
            .integrations
            .get(&IntegrationKey::parse(integration).unwrap())
            .unwrap()
            .userinfo(&tokens.access_token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(profile.id, "test-user");

        // The finished session no longer holds the device code.
        let stored = service
            .state
            .device
            .get(session_id(&started))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, DeviceSessionStatus::Connected);
        assert!(stored.device_code.is_none() && stored.lease.is_none());
    }
    let stats = peer.stats().await;
    assert_eq!(stats["token_successes"][DEVICE_GRANT], 2, "{stats}");
    assert_eq!(stats["device_authorizations"], 2, "{stats}");
    poller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_sessions_end_denied_without_a_connection() {
    let peer = Peer::start();
    let service = setup(&peer, None).await;
    let poller = spawn_device_poller(&service.state);
    let started = start(&service, "refuser", "device-public").await;
    peer.hook("device/deny", json!({"user_code": started["user_code"]}))
        .await;
    let done = outcome(
        &service,
        started["id"].as_str().unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(done["status"], "denied", "{done}");
    assert!(done.get("connection").is_none(), "{done}");
    assert!(!connection_exists(&service, "refuser", "device-public").await);
    let polls = device_polls(&peer).await;
    // Still pending, the session (1 s interval) would be due again within
    // 1.5 s; a quiet tick after that means it was not polled.
    let due_again = Instant::now() + Duration::from_millis(1_500);
    let quiet = tokio::time::timeout(Duration::from_secs(10), poller.quiet_since(due_again));
    assert!(
        quiet.await.is_ok_and(|became_quiet| became_quiet),
        "the denied session keeps being polled"
    );
    assert_eq!(
        device_polls(&peer).await,
        polls,
        "polling stops when denied"
    );
    poller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_sessions_expire() {
    let peer = Peer::start();
    let service = setup(&peer, None).await;
    peer.hook("config", json!({"device_code_ttl": 2})).await;
    let poller = spawn_device_poller(&service.state);
    let started = start(&service, "slowpoke", "device-public").await;
    let id = started["id"].as_str().unwrap();
    let done = outcome(&service, id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert!(!connection_exists(&service, "slowpoke", "device-public").await);
    // The poller records it too (not only the read-time view of expiry).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = service
            .state
            .device
            .get(session_id(&started))
            .await
            .unwrap()
            .unwrap();
        if stored.status == DeviceSessionStatus::Expired {
            assert!(stored.device_code.is_none());
            break;
        }
        assert!(Instant::now() < deadline, "still {:?}", stored.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Approving now is too late.
    let late = reqwest::Client::new()
        .post(format!("{}/__test/device/approve", peer.issuer))
        .json(&json!({"user_code": started["user_code"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 404);
    poller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_adds_five_seconds_to_the_interval() {
    let peer = Peer::start();
    let service = setup(&peer, None).await;
    peer.hook(
        "faults",
        json!({"faults": [{"status": 400, "body": {"error": "slow_down"}, "grant_type": DEVICE_GRANT}]}),
    )
    .await;
    let poller = spawn_device_poller(&service.state);
    let started = start(&service, "patient", "device-public").await;
    let id = started["id"].as_str().unwrap();

    // First poll (after the 1 s interval) is answered slow_down.
    wait_for_polls(&peer, 1, Duration::from_secs(5)).await;
    let slowed_at = Instant::now();
    assert_eq!(peer.stats().await["faults_served"], 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stored = service
            .state
            .device
            .get(session_id(&started))
            .await
            .unwrap()
            .unwrap();
        if stored.lease.is_none() {
            assert_eq!(stored.interval_secs, 6, "1 s + 5 s");
            assert_eq!(stored.status, DeviceSessionStatus::Pending);
            // The next poll is scheduled the new interval after this one.
            let wait = stored.next_poll_at - chrono::Utc::now();
            assert!(
                wait >= chrono::Duration::seconds(3),
                "next poll in {wait}, not about 6 s"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow_down poll was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Approved at once, but the next poll waits the new 6 s interval; at the
    // old 1 s interval it would have connected within about 2 s.
    peer.hook("device/approve", json!({"user_code": started["user_code"]}))
        .await;

    let done = outcome(&service, id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "connected", "{done}");
    assert!(
        slowed_at.elapsed() >= Duration::from_secs(5),
        "connected {:?} after slow_down",
        slowed_at.elapsed()
    );
    assert_eq!(device_polls(&peer).await, 2, "one slow_down, one success");
    poller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_resumes_polling_after_a_restart() {
    let peer = Peer::start();
    let database = tokenvault::testing::fresh_postgres_url().await;
    let first = setup(&peer, Some(database.clone())).await;
    let poller = spawn_device_poller(&first.state);
    let started = start(&first, "resumer", "device-basic").await;
    let id = started["id"].as_str().unwrap();
    wait_for_polls(&peer, 1, Duration::from_secs(5)).await;
    // The first instance's poller stops (a deploy, a crash after its lease ran out).
    poller.shutdown().await;
    peer.hook("device/approve", json!({"user_code": started["user_code"]}))
        .await;
    // With no poller running, the approval is not picked up.
    assert_eq!(session(&first, id).await["status"], "pending");

    // A second instance on the same database picks the session up.
    let second = setup(&peer, Some(database)).await;
    let poller = spawn_device_poller(&second.state);
    let done = outcome(&second, id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "connected", "{done}");
    assert_eq!(done["connection"]["status"], "connected");
    assert_eq!(
        session(&first, id).await["status"],
        "connected",
        "shared state"
    );
    let (_, tokens) = second
        .state
        .vault
        .read(
            &UserId::parse("resumer").unwrap(),
            &IntegrationKey::parse("device-basic").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    second
        .state
        .integrations
        .get(&IntegrationKey::parse("device-basic").unwrap())
        .unwrap()
        .userinfo(&tokens.access_token)
        .await
        .unwrap();
    assert_eq!(peer.stats().await["token_successes"][DEVICE_GRANT], 1);
    poller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_session_errors_use_the_documented_codes() {
    let peer = Peer::start();
    let service = setup(&peer, None).await;
    let cases = [
        (json!({"user_id": "u"}), 400, "invalid_json"),
        (
            json!({"user_id": "u", "integration": "device-public", "extra": 1}),
            400,
            "invalid_json",
        ),
        (
            json!({"user_id": "a b", "integration": "device-public"}),
            400,
            "invalid_user_id",
        ),
        (
            json!({"user_id": "u", "integration": "nope"}),
            404,
            "unknown_integration",
        ),
        (
            json!({"user_id": "u", "integration": "device-public", "scopes": ["a b"]}),
            400,
            "invalid_scopes",
        ),
        (
            json!({"user_id": "u", "integration": "spotify-app"}),
            400,
            "device_flow_unsupported",
        ),
        (
            json!({"user_id": "u", "integration": "unregistered"}),
            502,
            "provider_error",
        ),
    ];
    for (body, status, code) in cases {
        let response = service.post_json("/v1/device-sessions", body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], code, "{body}: {error}");
        assert!(error["request_id"].is_string(), "{error}");
    }
    for id in [DeviceSessionId::new().to_string(), "not-an-id".to_owned()] {
        let response = service.get_json(&format!("/v1/device-sessions/{id}")).await;
        assert_eq!(response.status(), 404);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "unknown_device_session", "{error}");
    }
    // Like every /v1 route: an API key is required.
    let anonymous = reqwest::Client::new()
        .post(service.url("/v1/device-sessions"))
        .json(&json!({"user_id": "u", "integration": "device-public"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let anonymous =
        reqwest::get(service.url(&format!("/v1/device-sessions/{}", DeviceSessionId::new())))
            .await
            .unwrap();
    assert_eq!(anonymous.status(), 401);
    // Explicit scopes are what the provider is asked for.
    let response = service
        .post_json(
            "/v1/device-sessions",
            json!({"user_id": "u", "integration": "device-public", "scopes": ["openid", "api:write"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let started: Value = response.json().await.unwrap();
    let stored = service
        .state
        .device
        .get(session_id(&started))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.scopes.to_vec(), ["api:write", "openid"]);
    assert_eq!(peer.stats().await["device_authorizations"], 1);
}

/// The device page: the code in large type, the address as a link and a QR
/// code, and a status endpoint that turns to connected once the peer
/// approves. No API key, no user id on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_page_shows_the_code_and_qr_and_follows_the_outcome() {
    let peer = Peer::start();
    let service = setup(&peer, None).await;
    let poller = spawn_device_poller(&service.state);
    let started = start(&service, "tv-user", "device-public").await;
    let page_url = started["page_url"].as_str().unwrap().to_owned();
    let id = started["id"].as_str().unwrap();
    assert_eq!(page_url, service.url(&format!("/device/{id}")));
    let user_code = started["user_code"].as_str().unwrap();

    let browser = crate::flows::html_browser(None);
    let page = browser.get(&page_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!(
            r#"<p class="user-code" aria-label="Your code: {user_code}">{user_code}</p>"#
        )),
        "{html}"
    );
    assert!(
        html.contains(&format!(r#"href="{}/device""#, peer.issuer)),
        "{html}"
    );
    assert!(
        html.contains(r#"<svg class="qr" role="img""#),
        "a server-drawn QR code: {html}"
    );
    assert!(!html.contains("tv-user"), "no user id on the page");
    assert!(html.contains(r#"data-status="pending""#), "{html}");

    // Programs (and the page's script) get the status as JSON.
    let status_url = service.url(&format!("/device/{id}/status"));
    let pending: Value = reqwest::get(&status_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(pending.get("user_id").is_none(), "{pending}");

    peer.hook("device/approve", json!({"user_code": user_code}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let body: Value = reqwest::get(&status_url)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] != "pending" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "connected", "{done}");
    assert!(
        done["message"].as_str().unwrap().contains("now connected"),
        "{done}"
    );
    let html = browser
        .get(&page_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"data-status="connected""#), "{html}");

    // An unknown or malformed id: 404, as JSON or as a page.
    for bad in ["00000000-0000-4000-8000-000000000000", "not-a-uuid"] {
        let json = reqwest::get(service.url(&format!("/device/{bad}/status")))
            .await
            .unwrap();
        assert_eq!(json.status(), 404);
        let body: Value = json.json().await.unwrap();
        assert_eq!(body["error"], "unknown_device_session");
        let page = browser
            .get(service.url(&format!("/device/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 404);
        assert!(page.text().await.unwrap().contains("<html"));
    }
    poller.shutdown().await;
}
