//! The service's HTTP contract: error envelope, request ids, API keys.

use crate::common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let ok = http
            .get(&url)
            .header("authorization", format!("{scheme} {API_KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{scheme}");
    }

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_request_ids_are_echoed_and_unknown_paths_and_methods_are_json_errors() {
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

    // A known path with a method it does not take: 405, same envelope, on
    // open routes and on `/v1` ones alike.
    for (method, path) in [
        (reqwest::Method::DELETE, "/healthz"),
        (reqwest::Method::PATCH, "/v1/connect-sessions"),
    ] {
        let response = reqwest::Client::new()
            .request(method.clone(), server.url(path))
            .bearer_auth(API_KEY)
            .header("x-request-id", "m-405")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "method_not_allowed", "{body}");
        assert_eq!(body["request_id"], "m-405");
        assert!(
            body["message"].as_str().unwrap().contains(method.as_str()),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // A body far bigger than the socket buffers: the client, still sending
    // when the server has decided, gets the 413 (not a reset connection),
    // and the same keep-alive connection serves the next request.
    let huge = serde_json::json!({"access_token": "x".repeat(4 * 1024 * 1024)});
    for _ in 0..3 {
        let refused = server
            .http
            .put(server.url("/v1/users/u1/connections/github"))
            .bearer_auth(API_KEY)
            .json(&huge)
            .send()
            .await
            .expect("the 413 reaches the client");
        assert_eq!(refused.status(), 413);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "payload_too_large", "{body}");
        assert!(body["message"].as_str().unwrap().contains("2048"), "{body}");
    }
    assert!(!connection_exists(&server, "u1", "github").await);
    // A client that asks before sending (`Expect: 100-continue`) gets the
    // 413 at once, not a go-ahead to upload what would be refused.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address = server.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "PUT /v1/users/u1/connections/github HTTP/1.1\r\nHost: {address}\r\n\
             Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let read_answer = async {
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&answer).contains("payload_too_large") {
                let read = stream.read(&mut chunk).await.unwrap();
                if read == 0 {
                    break;
                }
                answer.extend_from_slice(&chunk[..read]);
            }
            String::from_utf8_lossy(&answer).into_owned()
        };
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), read_answer)
            .await
            .expect("answered without the body");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    // Under the limit, the same endpoint works.
    let small = server
        .post_json(
            "/v1/connect-sessions",
            serde_json::json!({"user_id": "u1", "integration": "github"}),
        )
        .await;
    assert_eq!(small.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

/// A `tokenvault serve` limited to 1,024 file descriptors, on `port`.
fn limited_service(dir: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Process {
    let config = dir.join("tokenvault.toml");
    std::fs::write(&config, "").unwrap();
    let mut vars = vec![
        ("TOKENVAULT_BIND", format!("127.0.0.1:{port}")),
        ("TOKENVAULT_METRICS_BIND", "off".into()),
        ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.into()),
        ("TOKENVAULT_API_KEYS", API_KEY.into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Process::spawn_wrapped(
        &["prlimit", "--nofile=1024:1024", "--"],
        &config,
        &dir.join("data"),
        &vars,
    )
}

/// Opens a connection and sends the start of a request head, then one more
/// byte every half second; reconnects whenever the server closes it, until
/// `stop`.
async fn slow_header_client(addr: String, stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::io::AsyncWriteExt as _;
    while !*stop.borrow() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        if stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            .await
            .is_err()
        {
            continue;
        }
        while !*stop.borrow() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if stream.write_all(b"x").await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_slow_header_clients_than_descriptors_do_not_stop_service() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The header-read timeout is long here, so that only the connection
    // cap (and replacing slow clients at the cap) keeps service going.
    let service = limited_service(
        dir.path(),
        port,
        &[("TOKENVAULT_HEADER_READ_TIMEOUT_SECS", "300")],
    );
    service.line_after("tokenvault listening on ").await;
    let addr = format!("127.0.0.1:{port}");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // 1,100 of them, more than the process has descriptors: without a cap
    // `accept` fails with EMFILE and the backlog fills with slow clients.
    let slow: Vec<_> = (0..1100)
        .map(|_| tokio::spawn(slow_header_client(addr.clone(), stopping.clone())))
        .collect();
    // Let them all connect and settle.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let mut served = 0;
    for i in 0..100 {
        let path = if i % 2 == 0 {
            "/healthz"
        } else {
            "/v1/integrations"
        };
        let response = http
            .get(format!("http://{addr}{path}"))
            .bearer_auth(API_KEY)
            .send()
            .await;
        match response {
            Ok(response) if response.status() == 200 => served += 1,
            other => panic!("request {i} to {path} was not served: {other:?}"),
        }
    }
    assert_eq!(served, 100);
    let _ = stop.send(true);
    for client in slow {
        client.abort();
    }
    assert!(
        !service.has_line("accepting a connection failed"),
        "the process ran out of descriptors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let service = limited_service(
        dir.path(),
        port,
        &[("TOKENVAULT_HEADER_READ_TIMEOUT_SECS", "2")],
    );
    service.line_after("tokenvault listening on ").await;
    let addr = format!("127.0.0.1:{port}");

    // A head that never ends: closed after the header-read timeout even
    // though bytes keep coming.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if slow.write_all(b"x").await.is_err() {
                return;
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(0)) =
                tokio::time::timeout(std::time::Duration::from_millis(1), slow.read(&mut buf)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), closed)
        .await
        .expect("a slow-header connection stays open");
    let elapsed = started.elapsed();
    assert!(elapsed >= std::time::Duration::from_secs(2), "{elapsed:?}");

    // One request, then silence: the keep-alive connection is closed by
    // the idle timeout (the header-read timeout is longer here).
    let idle_dir = tempfile::tempdir().unwrap();
    let idle_port = free_port();
    let idle_service = limited_service(
        idle_dir.path(),
        idle_port,
        &[
            ("TOKENVAULT_HEADER_READ_TIMEOUT_SECS", "300"),
            ("TOKENVAULT_KEEP_ALIVE_IDLE_SECS", "2"),
        ],
    );
    idle_service.line_after("tokenvault listening on ").await;
    let mut idle = tokio::net::TcpStream::connect(format!("127.0.0.1:{idle_port}"))
        .await
        .unwrap();
    // From before the request: the server's idle timer starts after its
    // answer, so this is a lower bound even when this client reads late.
    let started = std::time::Instant::now();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    answer.extend_from_slice(&buf[..n]);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let end = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "an idle keep-alive connection stays open");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_catalog_entry_is_shown_in_full() {
    let service = start_service(|_, _| {}).await;
    let spotify: Value = service
        .get_json("/v1/providers/spotify")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(spotify["key"], "spotify");
    assert_eq!(spotify["discovery"], false);
    assert_eq!(
        spotify["token_url"],
        "https://accounts.spotify.com/api/token"
    );
    assert_eq!(spotify["pkce"], "supported");
    assert!(spotify["scope_descriptions"]["user-read-email"].is_string());
    let device: Value = service
        .get_json("/v1/providers/tidal-device")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(device["alias_of"], "tidal");
    assert_eq!(
        device["device_authorization_url"],
        "https://auth.tidal.com/v1/oauth2/device_authorization"
    );
    let oidc: Value = service
        .get_json("/v1/providers/oidc")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(oidc["discovery"], true);
    assert!(oidc["token_url"].is_null());
    for unknown in ["nope", "..%2F..", "SPOTIFY"] {
        let response = service.get_json(&format!("/v1/providers/{unknown}")).await;
        assert_eq!(response.status(), 404, "{unknown}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unknown_provider", "{unknown}");
    }
    // Reading the catalog needs a key like the rest of /v1.
    let anonymous = service
        .http
        .get(service.url("/v1/providers/spotify"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
