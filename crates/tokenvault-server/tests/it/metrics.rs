//! Prometheus metrics of a real `tokenvault serve` process, scraped from
//! its own listener after real traffic: HTTP requests by route template
//! (never a user id), token reads, refreshes, connection gauges, circuit
//! state, state-store latency and webhook deliveries.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

const CLIENT: &str = "metrics-app";
const SECRET: &str = "metrics-secret";
const WEBHOOK_SECRET: &str = "whsec_metrics";
const TOKEN_ROUTE: &str = "/v1/users/{user_id}/connections/{integration}/token";
/// User ids that must never show up in the exposition.
const USER_A: &str = "user-9d2c41";
const USER_B: &str = "user-5e7b03";

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let Some((name, labels)) = head.split_once('{') else {
                return Sample {
                    name: head.to_owned(),
                    labels: Vec::new(),
                    value,
                };
            };
            let mut rest = labels.strip_suffix('}').expect("labels end with }");
            let mut labels = Vec::new();
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (_, '\\') => value.push(chars.next().unwrap().1),
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = after[end + 1..].trim_start_matches(',');
            }
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Samples named `name` carrying all of `labels`.
    fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// The value of the one sample named `name` with `labels`, if any.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.find(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is ambiguous: {found:?}"
        );
        found.first().map(|sample| sample.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }
}

async fn scrape(metrics_url: &str) -> Scrape {
    let response = reqwest::get(metrics_url).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    Scrape {
        samples: parse_exposition(&text),
        text,
    }
}

async fn get_token(base: &str, user: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/users/{user}/connections/{CLIENT}/token"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
}

/// The browser flow for `user`, with an access token that lives `ttl` s.
async fn connect(peer: &Peer, base: &str, user: &str, ttl: u64) {
    peer.hook("config", json!({"access_token_ttl": ttl})).await;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/connect-sessions"))
        .bearer_auth(API_KEY)
        .json(&json!({"user_id": user, "integration": CLIENT}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let connect_url = response.json::<Value>().await.unwrap()["connect_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = browser(None).get(&connect_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    peer.hook("config", json!({"access_token_ttl": 3600})).await;
}

/// A config file with one confidential client on the peer, registered there.
async fn config_file(peer: &Peer, dir: &std::path::Path, public: &str) -> std::path::PathBuf {
    let callback = format!("{public}/oauth/callback");
    let config = dir.join("tokenvault.toml");
    std::fs::write(
        &config,
        format!(
            "[integrations.{CLIENT}]\nprovider = \"oidc\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{SECRET}\"\n\
             redirect_uri = \"{callback}\"\nscopes = [\"openid\", \"offline_access\", \"api:read\"]\nissuer = \"{}\"\n",
            peer.issuer
        ),
    )
    .unwrap();
    peer.register(
        CLIENT,
        "client_secret_basic",
        Some(SECRET),
        &callback,
        &["authorization_code", "refresh_token"],
    )
    .await;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_real_traffic_shows_every_metric_and_no_user_id() {
    let peer = Peer::start();
    let receiver = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let config = config_file(&peer, dir.path(), &public).await;
    let mut service = Process::spawn(
        &config,
        &dir.path().join("data"),
        &[
            ("TOKENVAULT_BIND", format!("127.0.0.1:{port}")),
            ("TOKENVAULT_METRICS_BIND", "127.0.0.1:0".into()),
            ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.into()),
            ("TOKENVAULT_API_KEYS", API_KEY.into()),
            ("TOKENVAULT_PUBLIC_URL", public.clone()),
            ("TOKENVAULT_WEBHOOK_URL", receiver.url.clone()),
            ("TOKENVAULT_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            // Refreshes happen only when the test asks for a token.
            ("TOKENVAULT_SCHEDULER_ENABLED", "false".into()),
        ],
    );
    let base = service.line_after("tokenvault listening on ").await;
    assert_eq!(base, public);
    let metrics_url = service.line_after("tokenvault metrics on ").await;
    assert!(
        metrics_url.starts_with("http://127.0.0.1:") && metrics_url.ends_with("/metrics"),
        "{metrics_url}"
    );
    assert_ne!(metrics_url, format!("{base}/metrics"), "its own listener");
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Not on the API listener; on its own one without an API key.
    let on_api = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(on_api.status(), 404);
    assert_eq!(on_api.json::<Value>().await.unwrap()["error"], "not_found");
    let response = reqwest::get(&metrics_url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let other = metrics_url.replace("/metrics", "/v1/ping");
    assert_eq!(reqwest::get(&other).await.unwrap().status(), 404);

    // At start: every connection status is there, at zero; the circuit is closed.
    let first = scrape(&metrics_url).await;
    for status in [
        "connected",
        "needs_reauth",
        "error",
        "expired",
        "disconnected",
    ] {
        assert_eq!(
            first.get("tokenvault_connections", &[("status", status)]),
            0.0
        );
    }
    assert_eq!(first.get("tokenvault_connections_due_within_1h", &[]), 0.0);
    assert_eq!(
        first.get("tokenvault_circuit_state", &[("integration", CLIENT)]),
        0.0
    );
    assert_eq!(
        first.get(
            "tokenvault_integration_misconfigured",
            &[("integration", CLIENT)]
        ),
        0.0
    );

    // A: connected, then its grant revoked at the provider: needs_reauth.
    connect(&peer, &base, USER_A, 30).await;
    peer.hook("revoke-grants", json!({})).await;
    assert_eq!(get_token(&base, USER_A).await.status(), 409);
    // B: near expiry; one 503 (transient) then a successful refresh, then a fresh read.
    connect(&peer, &base, USER_B, 30).await;
    peer.hook(
        "faults",
        json!({"faults": [{"status": 503, "grant_type": "refresh_token"}]}),
    )
    .await;
    let refreshed = get_token(&base, USER_B).await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(get_token(&base, USER_B).await.status(), 200);
    // A path no route matches, with a user id in it.
    let unmatched = reqwest::Client::new()
        .get(format!("{base}/v1/users/{USER_B}/nowhere"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unmatched.status(), 404);
    // Two connection.created and one connection.needs_reauth.
    let delivered = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "connection.needs_reauth",
            1,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        receiver
            .wait_for(
                WEBHOOK_SECRET,
                "connection.created",
                2,
                Duration::from_secs(15)
            )
            .await
            .len(),
        2
    );

    // The database gauges follow within one 15 s period.
    let deadline = Instant::now() + Duration::from_secs(25);
    let scrape = loop {
        let scrape = scrape(&metrics_url).await;
        let settled = scrape.value("tokenvault_connections", &[("status", "connected")])
            == Some(1.0)
            && scrape.value("tokenvault_connections", &[("status", "needs_reauth")]) == Some(1.0)
            && scrape.value("tokenvault_webhook_outbox_pending", &[]) == Some(0.0)
            && scrape.value(
                "tokenvault_webhook_deliveries_total",
                &[("outcome", "delivered")],
            ) == Some(3.0);
        if settled {
            break scrape;
        }
        assert!(
            Instant::now() < deadline,
            "gauges did not follow:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Route templates, never raw paths or user ids.
    for user in [USER_A, USER_B] {
        assert!(
            !scrape.text.contains(user),
            "{user} leaked:\n{}",
            scrape.text
        );
    }
    let token_route = [("method", "GET"), ("route", TOKEN_ROUTE)];
    assert_eq!(
        scrape.get(
            "tokenvault_http_requests_total",
            &[token_route[0], token_route[1], ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        scrape.get(
            "tokenvault_http_requests_total",
            &[token_route[0], token_route[1], ("status", "409")]
        ),
        1.0
    );
    assert_eq!(
        scrape.get(
            "tokenvault_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/connect-sessions"),
                ("status", "201")
            ]
        ),
        2.0
    );
    assert!(
        scrape.get(
            "tokenvault_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 2.0,
        "/metrics on the API listener and /v1/users/…/nowhere"
    );
    // The latency histogram: buckets from 1 ms to 30 s, cumulative.
    let buckets: Vec<(String, f64)> = scrape
        .find(
            "tokenvault_http_request_duration_seconds_bucket",
            &token_route,
        )
        .map(|s| {
            let le = s.labels.iter().find(|(k, _)| k == "le").unwrap().1.clone();
            (le, s.value)
        })
        .collect();
    let bounds: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(
        bounds,
        [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "5", "10", "30", "+Inf"
        ]
    );
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap().1, 3.0);
    assert_eq!(
        scrape.get(
            "tokenvault_http_request_duration_seconds_count",
            &token_route
        ),
        3.0
    );
    assert!(scrape.get("tokenvault_http_request_duration_seconds_sum", &token_route) > 0.0);

    // Connect flows by integration and outcome: A and B connected.
    assert_eq!(
        scrape.get(
            "tokenvault_connect_flows_total",
            &[("integration", CLIENT), ("outcome", "connected")]
        ),
        2.0
    );
    // Token reads by outcome.
    for (outcome, count) in [("refreshed", 1.0), ("fresh", 1.0), ("needs_reauth", 1.0)] {
        assert_eq!(
            scrape.get("tokenvault_token_reads_total", &[("outcome", outcome)]),
            count,
            "{outcome}"
        );
    }
    // Refresh outcomes by integration and error class, and their duration.
    for (outcome, count) in [("success", 1.0), ("transient", 1.0), ("needs_reauth", 1.0)] {
        assert_eq!(
            scrape.get(
                "tokenvault_refresh_total",
                &[("integration", CLIENT), ("outcome", outcome)]
            ),
            count,
            "{outcome}"
        );
    }
    assert_eq!(
        scrape.get(
            "tokenvault_refresh_duration_seconds_count",
            &[("integration", CLIENT)]
        ),
        3.0
    );
    // Connections: B is refreshable and due within the hour, A is not.
    assert_eq!(scrape.get("tokenvault_connections_due_within_1h", &[]), 1.0);
    assert_eq!(
        scrape.get("tokenvault_connections", &[("status", "error")]),
        0.0
    );
    assert_eq!(
        scrape.get("tokenvault_circuit_state", &[("integration", CLIENT)]),
        0.0
    );
    // State store: per flow, a put and a take of the connect session and of
    // the OAuth state, two puts of the link's outcome (opened, then how it
    // ended: what a reload of the result page reads); a ping per /readyz; a
    // purge at start.
    assert_eq!(
        scrape.get(
            "tokenvault_state_store_duration_seconds_count",
            &[("op", "ping"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        scrape.get(
            "tokenvault_state_store_duration_seconds_count",
            &[("op", "purge_expired"), ("outcome", "ok")]
        ),
        1.0
    );
    for (op, count) in [("put", 8.0), ("take", 4.0)] {
        assert_eq!(
            scrape.get(
                "tokenvault_state_store_duration_seconds_count",
                &[("op", op), ("outcome", "ok")]
            ),
            count,
            "{op}"
        );
        assert_eq!(
            scrape.get(
                "tokenvault_state_store_duration_seconds_bucket",
                &[("op", op), ("outcome", "ok"), ("le", "+Inf")]
            ),
            count
        );
    }
    // Each connect link is looked up (without taking it) when opened.
    assert_eq!(
        scrape.get(
            "tokenvault_state_store_duration_seconds_count",
            &[("op", "peek"), ("outcome", "ok")]
        ),
        2.0
    );

    // SIGTERM stops the metrics listener with the rest, cleanly.
    let status = service.terminate();
    assert!(status.success(), "{status:?}");
    assert!(reqwest::get(&metrics_url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bind_off_serves_no_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenvault.toml");
    std::fs::write(&config, "").unwrap();
    let mut service = Process::spawn(
        &config,
        &dir.path().join("data"),
        &[
            ("TOKENVAULT_BIND", "127.0.0.1:0".into()),
            ("TOKENVAULT_METRICS_BIND", "off".into()),
            ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.into()),
        ],
    );
    let base = service.line_after("tokenvault listening on ").await;
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(service.terminate().success());
    assert!(service.has_line("tokenvault listening on"));
    assert!(
        !service.has_line("tokenvault metrics on"),
        "{:?}",
        service.stderr.lock().unwrap()
    );
}
