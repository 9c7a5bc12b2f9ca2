//! No input may produce a 5xx, on either backend.
//!
//! - Raw requests written to the socket, from a seeded generator: every
//!   route with hostile path segments and query strings, odd methods,
//!   broken and conflicting headers (lengths, encodings, keys, cookies),
//!   and bodies from valid through mutated (NUL, deep nesting, huge
//!   numbers, wrong types) to random bytes. `TOKENVAULT_FUZZ_SEED` and
//!   `TOKENVAULT_FUZZ_CASES` change the run.
//! - A property test of the JSON extractors: arbitrary JSON values as the
//!   body of every JSON route.
//!
//! The service runs against a hand-made provider that answers every call,
//! so the happy paths run too.

use std::time::Duration;

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A provider that answers every call: tokens, device codes, profiles and
/// API calls.
async fn start_provider() -> String {
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                axum::Json(json!({"access_token": uuid::Uuid::new_v4().to_string(), "token_type": "Bearer", "expires_in": 3600, "refresh_token": uuid::Uuid::new_v4().to_string()}))
            }),
        )
        .route(
            "/device",
            axum::routing::post(|| async {
                axum::Json(json!({"device_code": uuid::Uuid::new_v4().to_string(), "user_code": "WDJB-MJHT", "verification_uri": "http://127.0.0.1/device", "expires_in": 600, "interval": 1}))
            }),
        )
        .route(
            "/userinfo",
            axum::routing::get(|| async { axum::Json(json!({"sub": "someone"})) }),
        )
        .fallback(|| async { axum::Json(json!({"ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn fuzz_service(database: Option<String>) -> (Service, tempfile::TempDir) {
    let provider = start_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[providers.demo]\ndisplay_name = \"Demo\"\nauthorization_url = \"{provider}/authorize\"\n\
             token_url = \"{provider}/token\"\ndevice_authorization_url = \"{provider}/device\"\n\
             userinfo_url = \"{provider}/userinfo\"\napi_base_url = \"{provider}/api\"\n\
             revocation_url = \"{provider}/revoke\"\nprofile = {{ id = \"/sub\" }}\n"
        ),
    )
    .unwrap();
    let service = start_service(|config, base| {
        config.providers_file = Some(providers);
        config.database_url = database;
        config.scheduler_enabled = false;
        config.allowed_redirect_origins = vec!["http://app.test".into()];
        config.integrations.insert(
            tokenvault::domain::IntegrationKey::parse("demo").unwrap(),
            tokenvault::integrations::IntegrationConfig {
                provider: "demo".into(),
                client_id: "demo-client".into(),
                client_secret: Some(secrecy::SecretString::from("demo-secret")),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await;
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let imported = service
        .http
        .put(service.url("/v1/users/alice/connections/demo"))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "at-alice", "refresh_token": "rt-alice", "expires_at": in_an_hour}))
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), 201);
    (service, dir)
}

/// Every route, with `{user}`, `{integration}`, `{id}` (a bulk action or
/// device session), `{session}` (a connect session or state) and `{path}`
/// where path parameters go, and a valid body.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    vec![
        ("GET", "/v1/ping", None),
        ("GET", "/v1/providers", None),
        ("GET", "/v1/integrations", None),
        ("GET", "/v1/integrations/{integration}/token", None),
        ("POST", "/v1/integrations/{integration}/reset", None),
        ("GET", "/v1/users/{user}/connections", None),
        ("GET", "/v1/users/{user}/connections/{integration}", None),
        ("DELETE", "/v1/users/{user}/connections/{integration}", None),
        (
            "PUT",
            "/v1/users/{user}/connections/{integration}",
            Some(
                json!({"access_token": "at", "refresh_token": "rt", "expires_at": in_an_hour, "scopes": ["a"], "metadata": {"k": "v"}}),
            ),
        ),
        (
            "GET",
            "/v1/users/{user}/connections/{integration}/token",
            None,
        ),
        (
            "POST",
            "/v1/users/{user}/connections/{integration}/refresh",
            None,
        ),
        (
            "GET",
            "/v1/users/{user}/connections/{integration}/profile",
            None,
        ),
        ("GET", "/v1/proxy/{integration}/{user}/{path}", None),
        (
            "POST",
            "/v1/proxy/{integration}/{user}/{path}",
            Some(json!({"any": "thing"})),
        ),
        (
            "POST",
            "/v1/bulk-actions",
            Some(
                json!({"integration": "demo", "users": ["alice"], "request": {"method": "PUT", "path": "me/tracks", "query": {"ids": "1"}}}),
            ),
        ),
        ("GET", "/v1/bulk-actions/{id}", None),
        ("GET", "/v1/bulk-actions/{id}/items", None),
        ("POST", "/v1/bulk-actions/{id}/cancel", None),
        (
            "POST",
            "/v1/connect-sessions",
            Some(
                json!({"user_id": "alice", "integration": "demo", "redirect_to": "http://app.test/x", "scopes": ["a"], "confirm": false}),
            ),
        ),
        (
            "POST",
            "/v1/connect-sessions/{session}/confirm",
            Some(json!({"confirm_code": "x", "user_id": "alice"})),
        ),
        (
            "POST",
            "/v1/device-sessions",
            Some(json!({"user_id": "alice", "integration": "demo"})),
        ),
        ("GET", "/v1/device-sessions/{id}", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/openapi.json", None),
        ("GET", "/connect/{session}", None),
        ("GET", "/oauth/callback", None),
        ("GET", "/oauth/{integration}/callback", None),
    ]
}

const SEGMENTS: &[&str] = &[
    "alice",
    "demo",
    "me",
    "01a24188-9329-72c7-827d-388826b0e927",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "",
    "%00",
    "%ff%fe",
    "..",
    "%2e%2e",
    "..;",
    "%252e%252e",
    "%",
    "%zz",
    "%c0%ae",
    "%e2%80%ae",
    "%ef%bc%8e%ef%bc%8e",
    "a;b=c",
    "a%2fb",
    "a%5cb",
    "%0d%0aX:y",
    "caf%C3%A9",
    "-1",
    "99999999999999999999",
    "null",
    "%7B%7D",
    "*",
    "~",
];

const QUERIES: &[&str] = &[
    "",
    "?min_ttl=60",
    "?min_ttl=-1",
    "?min_ttl=99999999999999999999",
    "?min_ttl=abc&min_ttl=2",
    "?state=failed&limit=0&after=-5",
    "?limit=999999999999&after=abc",
    "?state=nope",
    "?code=x&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "?code=&state=&error=access_denied&error_description=%00%ff",
    "?state=%00",
    "?%",
    "?a=%zz",
    "?=&&&==",
    "?instanceId=x&iss=http%3A%2F%2Fevil",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A random JSON value: the nasty kinds weighted up.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!("\u{0}"),
        5 => json!(format!("a\u{0}b{}", "\u{202e}")),
        6 => json!("x".repeat(rng.random_range(0..70_000))),
        7 => json!(pick(rng, SEGMENTS).to_string()),
        8 if depth < 4 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        9 if depth < 4 => {
            let mut object = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                let key = pick(
                    rng,
                    &[
                        "user_id",
                        "integration",
                        "\u{0}",
                        "",
                        "scopes",
                        "metadata",
                        "request",
                        "users",
                    ],
                )
                .to_string();
                object.insert(key, random_json(rng, depth + 1));
            }
            Value::Object(object)
        }
        _ => json!("ok"),
    }
}

/// `valid` with one field replaced, removed or added, or something else.
fn mutate(rng: &mut StdRng, valid: &Value) -> Vec<u8> {
    match rng.random_range(0..8) {
        0 => valid.to_string().into_bytes(),
        1..=3 => {
            let mut value = valid.clone();
            mutate_in_place(rng, &mut value);
            value.to_string().into_bytes()
        }
        4 => random_json(rng, 0).to_string().into_bytes(),
        5 => format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        6 => br#"{"user_id": "alice", "user_id": 1e400, "integration": "demo"}"#.to_vec(),
        _ => (0..rng.random_range(0..200))
            .map(|_| rng.random::<u8>())
            .collect(),
    }
}

/// Changes one place anywhere in `value`: a nested value replaced, a key
/// removed, or a key added (often with a NUL in it).
fn mutate_in_place(rng: &mut StdRng, value: &mut Value) {
    match value {
        Value::Object(object) if !object.is_empty() => {
            let keys: Vec<String> = object.keys().cloned().collect();
            let key = pick(rng, &keys).clone();
            let nested = object[&key].is_object() || object[&key].is_array();
            match rng.random_range(0..5) {
                0 | 1 if nested => mutate_in_place(rng, object.get_mut(&key).unwrap()),
                0 => {
                    object.remove(&key);
                }
                1 | 2 => {
                    object.insert(key, random_json(rng, 1));
                }
                3 => {
                    object.insert(format!("{key}\u{0}"), random_json(rng, 1));
                }
                _ => {
                    object.insert(key, json!("\u{0}"));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let index = rng.random_range(0..items.len());
            mutate_in_place(rng, &mut items[index]);
        }
        other => *other = random_json(rng, 2),
    }
}

/// One raw HTTP/1.1 request.
fn random_request(rng: &mut StdRng, addr: &str) -> Vec<u8> {
    let routes = routes();
    let (method, template, body) = pick(rng, &routes);
    // Mostly valid values, so requests get past the first check.
    let mut target = (*template).to_owned();
    for (slot, valid) in [
        ("{user}", &["alice", "bob", "u-1"][..]),
        ("{integration}", &["demo"][..]),
        ("{id}", &["01a24188-9329-72c7-827d-388826b0e927"][..]),
        (
            "{session}",
            &["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"][..],
        ),
        ("{path}", &["me", "me/tracks", "a/b/c"][..]),
    ] {
        while target.contains(slot) {
            let value = if rng.random_range(0..3) == 0 {
                *pick(rng, SEGMENTS)
            } else {
                *pick(rng, valid)
            };
            target = target.replacen(slot, value, 1);
        }
    }
    let query = *pick(rng, QUERIES);
    target.push_str(query);
    let method = match rng.random_range(0..10) {
        0 => pick(
            rng,
            &[
                "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW", "get", "CONNECT",
            ],
        )
        .to_string(),
        _ => (*method).to_owned(),
    };
    let body: Vec<u8> = match body {
        Some(valid) => mutate(rng, valid),
        None if rng.random_range(0..4) == 0 => mutate(rng, &json!({"x": 1})),
        None => Vec::new(),
    };
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    let mut headers: Vec<String> = vec![format!("Host: {addr}")];
    headers.push(match rng.random_range(0..20) {
        0 => String::new(),
        1 => "Authorization: Bearer".into(),
        2 => format!("Authorization: bearer {API_KEY}"),
        3 => "Authorization: Basic dHZrOng=".into(),
        4 => format!("Authorization: Bearer {}", "k".repeat(10_000)),
        5 => "Authorization: Bearer tvk_\u{7f}".into(),
        _ => format!("Authorization: Bearer {API_KEY}"),
    });
    headers.push(match rng.random_range(0..6) {
        0 => String::new(),
        1 => "Content-Type: text/plain".into(),
        2 => "Content-Type: application/json; charset=latin1".into(),
        3 => "Content-Type: multipart/form-data; boundary=".into(),
        _ => "Content-Type: application/json".into(),
    });
    for _ in 0..rng.random_range(0..3) {
        headers.push(
            pick(
                rng,
                &[
                    "X-Request-Id: \u{0}bad",
                    "X-Request-Id: ../../../etc/passwd",
                    "Accept: text/html",
                    "Accept: */*;q=nope",
                    "Cookie: tv_flow_0000=x; =; ;;",
                    "Cookie: \u{1}",
                    "Connection: keep-alive, Upgrade",
                    "Upgrade: websocket",
                    "Expect: 100-continue",
                    "Content-Encoding: gzip",
                    "X-Forwarded-For: 1.2.3.4",
                    "Range: bytes=0-",
                    "If-None-Match: *",
                ],
            )
            .to_string(),
        );
    }
    let chunked = rng.random_range(0..8) == 0;
    if chunked {
        headers.push("Transfer-Encoding: chunked".into());
    } else {
        headers.push(match rng.random_range(0..24) {
            0 => format!("Content-Length: {}", body.len() + 10),
            1 => "Content-Length: -1".into(),
            2 => format!("Content-Length: {0}\r\nContent-Length: {0}", body.len()),
            3 => format!("Content-Length: {}", body.len().saturating_sub(1)),
            4 => "Content-Length: 99999999999999999999".into(),
            _ => format!("Content-Length: {}", body.len()),
        });
    }
    for header in headers.into_iter().filter(|h| !h.is_empty()) {
        head.push_str(&header);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut request = head.into_bytes();
    if chunked {
        request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        request.extend_from_slice(&body);
        let tails: [&[u8]; 3] = [b"\r\n0\r\n\r\n", b"\r\nzz\r\n", b""];
        let tail = *pick(rng, &tails);
        request.extend_from_slice(tail);
    } else {
        request.extend_from_slice(&body);
    }
    request
}

/// The status of the answer to `request`, if one came (a request the
/// HTTP layer cannot parse may be answered 400 or just closed; one whose
/// body is shorter than its length gets no answer before the client gives
/// up).
async fn send_raw(addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_never_get_a_5xx_on_sqlite() {
    raw_requests_never_get_a_5xx(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_never_get_a_5xx_on_postgres() {
    raw_requests_never_get_a_5xx(Some(tokenvault::testing::fresh_postgres_url().await)).await;
}

async fn raw_requests_never_get_a_5xx(database: Option<String>) {
    let (service, _dir) = fuzz_service(database).await;
    let addr = service.base.trim_start_matches("http://").to_owned();
    let seed: u64 = std::env::var("TOKENVAULT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_204);
    let cases: usize = std::env::var("TOKENVAULT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<Vec<u8>> = (0..cases)
        .map(|_| random_request(&mut rng, &addr))
        .collect();
    let mut answered = 0;
    let mut by_class = [0usize; 6];
    // 16 at a time: quick, and concurrent requests are part of the test.
    for batch in requests.chunks(16) {
        let answers = futures::future::join_all(batch.iter().map(|r| send_raw(&addr, r))).await;
        for (request, answer) in batch.iter().zip(answers) {
            let Some((status, text)) = answer else {
                continue;
            };
            answered += 1;
            by_class[usize::from(status / 100).min(5)] += 1;
            assert!(
                status < 500,
                "seed {seed}: a {status} for\n{}\n---\n{text}",
                String::from_utf8_lossy(&request[..request.len().min(2000)])
            );
        }
    }
    // Most requests get an answer; the happy paths ran too.
    assert!(
        answered * 10 >= cases * 8,
        "only {answered} of {cases} answered"
    );
    assert!(by_class[2] >= cases / 20, "too few successes: {by_class:?}");
    let health = reqwest::get(service.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    eprintln!("seed {seed}: {cases} requests, {answered} answered, by class {by_class:?}");
}

/// Arbitrary JSON as the body of every JSON route: always a 4xx or a
/// success, never a 5xx.
#[test]
fn arbitrary_json_bodies_never_get_a_5xx() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (service, _dir) = runtime.block_on(fuzz_service(None));
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        Just(json!("alice")),
        Just(json!("demo")),
    ];
    let json_value = json_leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("user_id".to_owned()),
                    Just("integration".to_owned()),
                    Just("users".to_owned()),
                    Just("request".to_owned()),
                    Just("metadata".to_owned()),
                    Just("access_token".to_owned()),
                    Just("expires_at".to_owned()),
                    Just("confirm_code".to_owned()),
                    ".{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let targets: Vec<(&str, String)> = vec![
        ("PUT", "/v1/users/alice/connections/demo".into()),
        ("POST", "/v1/bulk-actions".into()),
        ("POST", "/v1/connect-sessions".into()),
        (
            "POST",
            "/v1/connect-sessions/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/confirm".into(),
        ),
        ("POST", "/v1/device-sessions".into()),
    ];
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(target in 0..targets.len(), body in json_value)| {
        let (method, path) = &targets[target];
        let status = runtime.block_on(async {
            service
                .http
                .request(method.parse().unwrap(), service.url(path))
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        });
        prop_assert!(status.as_u16() < 500, "{method} {path} {body}: {status}");
    });
    runtime.block_on(service.stop());
}
