//! The API proxy and the profile: against the real OIDC peer (its userinfo
//! endpoint is "the provider's API"), and against a hand-made provider for
//! what the peer cannot show (429 with Retry-After, header handling).

use std::time::Duration;

use crate::common::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::domain::IntegrationKey;
use tokenvault::integrations::IntegrationConfig;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT: &str = "proxy-app";
const SECRET: &str = "proxy-secret";

/// A confidential peer client whose API base URL is the peer itself, so
/// `/v1/proxy/proxy-app/{user}/me` is the peer's userinfo endpoint. The
/// service runs on the returned clock: a test expires a token by moving it,
/// not by waiting.
async fn peer_service(
    peer: &Peer,
) -> (
    Service,
    tempfile::TempDir,
    std::sync::Arc<tokenvault::domain::ManualClock>,
) {
    let clock = std::sync::Arc::new(tokenvault::domain::ManualClock::new(chrono::Utc::now()));
    let service_clock: std::sync::Arc<dyn tokenvault::domain::Clock> = clock.clone();
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[providers.peer-api]\nalias = \"oidc\"\napi_base_url = \"{}\"\n",
            peer.issuer
        ),
    )
    .unwrap();
    let issuer = peer.issuer.clone();
    let service = start_app(
        |config, base| {
            config.providers_file = Some(providers);
            config.scheduler_enabled = false;
            config.integrations.insert(
                IntegrationKey::parse(CLIENT).unwrap(),
                IntegrationConfig {
                    provider: "peer-api".into(),
                    client_id: CLIENT.into(),
                    client_secret: Some(SecretString::from(SECRET)),
                    redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                    scopes: Some(vec![
                        "openid".into(),
                        "offline_access".into(),
                        "email".into(),
                    ]),
                    issuer: Some(url::Url::parse(&issuer).unwrap()),
                    ..Default::default()
                },
            );
        },
        |overrides| {
            overrides.without_background_work = true;
            overrides.clock = Some(service_clock);
        },
    )
    .await;
    peer.register(
        CLIENT,
        "client_secret_basic",
        Some(SECRET),
        &service.url("/oauth/callback"),
        &["authorization_code", "refresh_token"],
    )
    .await;
    (service, dir, clock)
}

/// Connects `user` with an access token living `ttl` seconds, then resets
/// the peer's counters.
async fn connect(peer: &Peer, service: &Service, user: &str, ttl: u64) {
    connect_with_ttl(peer, service, user, CLIENT, ttl).await;
}

async fn get(service: &Service, path: &str) -> reqwest::Response {
    service
        .http
        .get(service.url(path))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_the_call_goes_through() {
    let peer = Peer::start();
    let (service, _dir, clock) = peer_service(&peer).await;
    connect(&peer, &service, "fan-1", 1).await;
    // Past the token's 1 s lifetime, on the service's clock.
    clock.advance(chrono::Duration::milliseconds(1500));

    let response = get(&service, "/v1/proxy/proxy-app/fan-1/me").await;
    let status = response.status();
    let refreshed = response.headers().get("x-tokenvault-refreshed").cloned();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(refreshed.unwrap(), "true");
    let claims: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(claims["sub"], "test-user");
    assert_eq!(claims["email"], "test-user@example.test");

    let stats = peer.stats().await;
    assert_eq!(stats["refresh_by_client"][CLIENT], 1, "{stats}");
    assert_eq!(stats["userinfo_requests"], 1, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");

    // The next call uses the fresh token as it is.
    let again = get(&service, "/v1/proxy/proxy-app/fan-1/me").await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("x-tokenvault-refreshed").is_none());
    assert_eq!(peer.stats().await["refresh_by_client"][CLIENT], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_401_forces_one_refresh_and_one_retry() {
    let peer = Peer::start();
    let (service, _dir, _clock) = peer_service(&peer).await;
    connect(&peer, &service, "fan-2", 3600).await;
    // The stored access token looks valid for an hour, but the provider
    // does not know it (a token it rotated away or forgot); the refresh
    // token is the real one.
    let record = service
        .state
        .vault
        .store()
        .get(
            &tokenvault::domain::UserId::parse("fan-2").unwrap(),
            &IntegrationKey::parse(CLIENT).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let tokens = service.state.vault.open(&record).await.unwrap().unwrap();
    let refresh_token = tokens.refresh_token.unwrap();
    let forged = service
        .http
        .put(service.url(&format!("/v1/users/fan-2/connections/{CLIENT}?force=true")))
        .bearer_auth(API_KEY)
        .json(&json!({
            "access_token": "not-a-token-the-peer-issued",
            "refresh_token": refresh_token.expose(),
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        }))
        .send()
        .await
        .unwrap();
    assert!(
        forged.status().is_success(),
        "{}",
        forged.text().await.unwrap()
    );
    peer.hook("reset", json!({})).await;

    let response = get(&service, "/v1/proxy/proxy-app/fan-2/me").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["sub"], "test-user");
    let stats = peer.stats().await;
    assert_eq!(stats["refresh_by_client"][CLIENT], 1, "{stats}");
    assert_eq!(stats["userinfo_requests"], 2, "one 401, one retry: {stats}");

    // The profile endpoint reads the same account through the catalog mapping.
    let profile = get(&service, "/v1/users/fan-2/connections/proxy-app/profile").await;
    assert_eq!(profile.status(), 200);
    let profile: Value = profile.json().await.unwrap();
    assert_eq!(profile["id"], "test-user");
    assert_eq!(profile["email"], "test-user@example.test");
    assert_eq!(profile["raw"]["sub"], "test-user");
}

/// Sends a request line exactly as written: HTTP clients normalise `..`
/// and `%2e%2e` away before sending, which would hide what is tested.
async fn raw_get(base: &str, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_could_leave_the_api_are_refused_before_anything_is_sent() {
    let peer = Peer::start();
    let (service, _dir, clock) = peer_service(&peer).await;
    connect(&peer, &service, "fan-3", 1).await;
    // Past the token's 1 s lifetime: a request sent would refresh first.
    clock.advance(chrono::Duration::milliseconds(1500));
    for target in [
        "/v1/proxy/proxy-app/fan-3/https://evil.example/steal",
        "/v1/proxy/proxy-app/fan-3/http:evil.example",
        "/v1/proxy/proxy-app/fan-3//evil.example/steal",
        "/v1/proxy/proxy-app/fan-3/%2e%2e/%2e%2e/admin",
        "/v1/proxy/proxy-app/fan-3/.%2E/token",
        "/v1/proxy/proxy-app/fan-3/../../token",
        "/v1/proxy/proxy-app/fan-3/me%2f..%2f..%2fadmin",
        "/v1/proxy/proxy-app/fan-3/me%0d%0aHost:%20evil.example",
        "/v1/proxy/proxy-app/fan-3/me%00",
    ] {
        let (status, body) = raw_get(&service.base, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(body["error"], "invalid_proxy_path", "{target}: {body}");
    }
    // A raw CR/LF never reaches the handler: the HTTP layer refuses it.
    let (status, _) = raw_get(&service.base, "/v1/proxy/proxy-app/fan-3/me\r\nX: y").await;
    assert_eq!(status, 400);

    // Nothing went out: no API call, and no refresh of the expired token.
    let stats = peer.stats().await;
    assert_eq!(stats["userinfo_requests"], 0, "{stats}");
    assert_eq!(stats["refresh_by_client"].get(CLIENT), None, "{stats}");
}

/// An integration whose token and API endpoints are `server`, with one
/// connection (imported) holding access token `at-1`.
async fn mock_service(server: &MockServer) -> (Service, tempfile::TempDir) {
    api_service(&server.uri()).await
}

/// An integration `mock` whose token and API endpoints are at `origin`
/// (API base `{origin}/api/v2`), with one connection (imported) for user
/// `u-1` holding access token `at-1`.
async fn api_service(origin: &str) -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[providers.mockapi]\ndisplay_name = \"Mock API\"\n\
             authorization_url = \"{0}/authorize\"\ntoken_url = \"{0}/token\"\napi_base_url = \"{0}/api/v2\"\n",
            origin
        ),
    )
    .unwrap();
    let service = start_service(|config, base| {
        config.providers_file = Some(providers);
        config.scheduler_enabled = false;
        config.proxy_max_retry_after_secs = 2;
        config.integrations.insert(
            IntegrationKey::parse("mock").unwrap(),
            IntegrationConfig {
                provider: "mockapi".into(),
                client_id: "mock-client".into(),
                client_secret: Some(SecretString::from("mock-secret")),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await;
    let imported = service
        .http
        .put(service.url("/v1/users/u-1/connections/mock"))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), 201);
    (service, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_answers_are_relayed_without_hop_headers_or_our_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/playlists/p1/tracks"))
        .and(query_param("position", "0"))
        .and(header("authorization", "Bearer at-1"))
        .and(header("x-app-trace", "abc"))
        .and(header("content-type", "application/json"))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("x-provider", "yes")
                .insert_header("set-cookie", "provider_session=1")
                .set_body_json(json!({"snapshot_id": "s1"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let (service, _dir) = mock_service(&server).await;
    let response = service
        .http
        .post(service.url("/v1/proxy/mock/u-1/playlists/p1/tracks?position=0"))
        .bearer_auth(API_KEY)
        .header("x-app-trace", "abc")
        .header("cookie", "our_session=secret")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .json(&json!({"uris": ["spotify:track:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-provider"], "yes");
    assert!(response.headers().get("set-cookie").is_none());
    assert_eq!(response.json::<Value>().await.unwrap()["snapshot_id"], "s1");

    let received = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        received.body_json::<Value>().unwrap()["uris"][0],
        "spotify:track:1"
    );
    for name in ["cookie", "x-hop"] {
        assert!(received.headers.get(name).is_none(), "{name} was forwarded");
    }
    let authorization = received.headers["authorization"].to_str().unwrap();
    assert!(
        !authorization.contains(API_KEY),
        "our API key was forwarded"
    );

    // The provider's error statuses come back as they are, never marked as
    // tokenvault's own, even when the provider sends our marker itself.
    Mock::given(path("/api/v2/missing"))
        .respond_with(
            ResponseTemplate::new(404)
                .insert_header("tokenvault-error", "connection_not_found")
                .insert_header("x-tokenvault-refreshed", "true")
                .set_body_string("no such thing"),
        )
        .mount(&server)
        .await;
    let missing = get(&service, "/v1/proxy/mock/u-1/missing").await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get("tokenvault-error").is_none());
    assert!(missing.headers().get("x-tokenvault-refreshed").is_none());
    assert_eq!(missing.text().await.unwrap(), "no such thing");

    // tokenvault's own refusal is marked with its code.
    let ours = get(&service, "/v1/proxy/mock/nobody/missing").await;
    assert_eq!(ours.status(), 404);
    assert_eq!(ours.headers()["tokenvault-error"], "connection_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_that_no_refresh_can_fix_yet_is_retryable_not_relayed() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v2/me"))
        .respond_with(ResponseTemplate::new(401).set_body_string("token expired"))
        .mount(&server)
        .await;
    // The token endpoint is down: the refused token cannot be replaced.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "7"))
        .mount(&server)
        .await;
    let (service, _dir) = mock_service(&server).await;
    let response = get(&service, "/v1/proxy/mock/u-1/me").await;
    // Not the provider's 401, which would tell the caller the user must
    // reconnect: the refresh that fixes it is only delayed.
    assert_eq!(response.status(), 503);
    // When to come back: the connection's backoff, at least the
    // token endpoint's Retry-After.
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 7, "{retry_after}");
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "provider_unavailable"
    );
    let received = server.received_requests().await.unwrap();
    let calls = |p: &str| received.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(calls("/api/v2/me"), 1, "no retry without a new token");
    assert!(calls("/token") >= 1, "the refused token was not refreshed");
}

async fn request(service: &Service, method: &str, url: &str) -> reqwest::Response {
    service
        .http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_api_method_is_forwarded_but_tunnels_and_echoes_are_not() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v2/calendars/c1"))
        .respond_with(ResponseTemplate::new(204).insert_header("allow", "GET, OPTIONS"))
        .mount(&server)
        .await;
    let (service, _dir) = mock_service(&server).await;
    let url = service.url("/v1/proxy/mock/u-1/calendars/c1");
    for method in ["OPTIONS", "HEAD", "REPORT"] {
        let response = request(&service, method, &url).await;
        assert_eq!(response.status(), 204, "{method}");
        assert_eq!(response.headers()["allow"], "GET, OPTIONS", "{method}");
    }
    for method in ["TRACE", "CONNECT"] {
        let response = request(&service, method, &url).await;
        // hyper does not route an HTTP/1 CONNECT at all (404); TRACE
        // reaches the proxy, which refuses it.
        assert!(response.status().is_client_error(), "{method}");
        if method == "TRACE" {
            assert_eq!(response.status(), 405);
            assert_eq!(
                response.json::<Value>().await.unwrap()["error"],
                "method_not_allowed"
            );
        }
    }
    let received = server.received_requests().await.unwrap();
    let methods: Vec<_> = received.iter().map(|r| r.method.to_string()).collect();
    assert_eq!(methods, ["OPTIONS", "HEAD", "REPORT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_after_is_waited_out_and_a_long_one_is_relayed() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v2/short"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/v2/short"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    Mock::given(path("/api/v2/long"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "60"))
        .mount(&server)
        .await;
    let (service, _dir) = mock_service(&server).await;
    let started = std::time::Instant::now();
    let short = get(&service, "/v1/proxy/mock/u-1/short").await;
    assert_eq!(short.status(), 200);
    assert!(started.elapsed() >= Duration::from_secs(1));

    let long = get(&service, "/v1/proxy/mock/u-1/long").await;
    assert_eq!(long.status(), 429);
    assert_eq!(long.headers()["retry-after"], "60");
    let received = server.received_requests().await.unwrap();
    let calls = |p: &str| received.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(calls("/api/v2/short"), 2);
    assert_eq!(calls("/api/v2/long"), 1);

    // No userinfo_url in this catalog entry: no profile to read.
    let profile = get(&service, "/v1/users/u-1/connections/mock/profile").await;
    assert_eq!(profile.status(), 404);
    assert_eq!(
        profile.json::<Value>().await.unwrap()["error"],
        "profile_not_supported"
    );
}

/// An API that records the raw path of every request it gets, the way the
/// provider's server would see it, and answers 200.
async fn recording_api() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let sink = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(uri.path().to_owned());
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

/// How the most lenient server on the way could read a path: each segment
/// percent-decoded until it stops changing, `;params` dropped, NFKC
/// normalised, decoded separators split on, and dot segments resolved.
/// `None` when the path climbs above the root.
fn lenient_reading(path: &str) -> Option<Vec<String>> {
    use unicode_normalization::UnicodeNormalization as _;
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let mut text = raw.to_owned();
        for _ in 0..8 {
            let next = String::from_utf8_lossy(&percent_decode(text.as_bytes())).into_owned();
            if next == text {
                break;
            }
            text = next;
        }
        let text: String = text.nfkc().collect();
        for part in text.split(['/', '\\']) {
            let part = part.split(';').next().unwrap_or_default().trim();
            match part {
                "" | "." => {}
                ".." => {
                    out.pop()?;
                }
                other => out.push(other.to_owned()),
            }
        }
    }
    Some(out)
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_variant_reaches_the_provider_outside_the_api_base() {
    let (api, seen) = recording_api().await;
    let (service, _dir) = api_service(&api).await;

    // Each of these reads as `.`/`..` or holds a separator to some server:
    // `;` parameters (Tomcat, Jetty), one to three extra rounds of
    // percent-encoding, Unicode look-alikes (NFKC), overlong UTF-8,
    // backslashes, whitespace, mixed case.
    let refused = [
        "..;/admin",
        ".;/admin",
        "x/..;/..;/admin",
        "..;foo=bar/admin",
        ".;x=1/admin",
        "%2e%2e;/admin",
        "%2e.;/admin",
        "..%3b/admin",
        "..%3B/admin",
        "x/..;jsessionid=abc/admin",
        "%2e%2e%3bjsessionid=1/admin",
        "x/.;/admin",
        "x/%2e;/admin",
        "x/..;",
        "%252e%252e%252fadmin",
        "%252e%252e/admin",
        "%25252e%25252e/admin",
        "x/%252E%252E/%252E%252E/admin",
        "%252E%252e/admin",
        "%2e%2e%252fadmin",
        "..%252fadmin",
        "..%255cadmin",
        "%252fadmin",
        "%255c..%255cadmin",
        "%252E%252E%253B/admin",
        "%252e%252e;/admin",
        "%2525252e%2525252e/admin",
        "%ef%bc%8e%ef%bc%8e/admin",
        "%EF%BC%8E/admin",
        "%e2%80%a5/admin",
        "%e2%80%a4/admin",
        "%e2%80%a4%e2%80%a4/admin",
        "%ef%b9%92%ef%b9%92/admin",
        "%ef%bc%8f..%ef%bc%8fadmin",
        "a%ef%bc%8fb",
        "%ef%bc%bcadmin",
        "x/%E2%80%A5",
        "%ef%bc%8e%2e/admin",
        "%25ef%25bc%258e%25ef%25bc%258e/admin",
        "%c0%ae%c0%ae/admin",
        "%c0%af",
        "%e0%80%ae%e0%80%ae/admin",
        "%c1%9c",
        "..%5cadmin",
        "%5c..%5cadmin",
        "%2E%2E/admin",
        "%2e%2E/admin",
        ".%2E/admin",
        "%2E./admin",
        "..%00/admin",
        "..%20/admin",
        "%20../admin",
        "..%09/admin",
        "x/../admin",
        "./admin",
        "x/./admin",
        "..;%2fadmin",
        "%2e%2e%3b%2fadmin",
        "%2e",
        "x/%2e%2e",
        "%u002e%u002e/admin",
        "%%32%65%%32%65/admin",
        "..",
        ".",
        "a/..",
    ];
    // Ordinary paths that merely look odd go through.
    let forwarded = [
        "me",
        ".../x",
        "a..b/c",
        "%2e%2e%2e/x",
        "v1;x=y/me",
        "caf%C3%A9",
        "..a/b",
        "x/%25/y",
        "a.b/c..d",
        "%7euser/files",
    ];
    assert!(refused.len() + forwarded.len() >= 60);
    for path in refused {
        let (status, body) = raw_get(&service.base, &format!("/v1/proxy/mock/u-1/{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        // Bytes that are not UTF-8 are refused by the path extractor first.
        assert!(
            body["error"] == "invalid_proxy_path" || body["error"] == "invalid_path",
            "{path}: {body}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    for path in forwarded {
        let (status, body) = raw_get(&service.base, &format!("/v1/proxy/mock/u-1/{path}")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), forwarded.len(), "{seen:?}");
    for path in &seen {
        let reading =
            lenient_reading(path).unwrap_or_else(|| panic!("{path} climbs above the root"));
        assert!(
            path.starts_with("/api/v2/") && reading.len() > 2 && reading[..2] == ["api", "v2"],
            "{path} leaves /api/v2 when read leniently: {reading:?}"
        );
    }
}
