//! A provider that echoes every secret it is sent (in error descriptions,
//! `WWW-Authenticate`-less 4xx bodies and API error bodies), as real ones
//! do: no refresh token, access token, client secret, authorization code,
//! PKCE verifier or device code it echoes may reach a database column, an
//! API answer, a webhook or a log line — on SQLite and on PostgreSQL. (The
//! verifier lives in the OAuth state until the callback consumes it; it is
//! not echoed anywhere from there.)
//!
//! The provider is hand-made: no real server can be told to echo.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

const ACCESS: &str = "at-canary/71+q=a";
const REFRESH: &str = "rt-canary/72+q=b";
const API_ACCESS: &str = "at-api-canary/73+q=c";
const POST_SECRET: &str = "post-secret-canary/74+q=d";
const BASIC_SECRET: &str = "basic-secret-canary/75+q=e";
const CODE: &str = "code-canary/76+q=f";
const DEVICE_CODE: &str = "device-code-canary/77+q=g";
const WEBHOOK_SECRET: &str = "whsec-echo-test";

/// Every value the provider received (form values, Authorization
/// headers): how the test learns the PKCE verifiers we generated.
#[derive(Clone, Default)]
struct Echo {
    seen: Arc<Mutex<Vec<String>>>,
    refreshes: Arc<Mutex<u32>>,
}

impl Echo {
    fn record(&self, headers: &HeaderMap, body: &str) -> String {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut seen = self.seen.lock().unwrap();
        seen.extend(url::form_urlencoded::parse(body.as_bytes()).map(|(_, v)| v.into_owned()));
        seen.push(authorization.clone());
        format!("{body} authorization={authorization}")
    }
}

fn oauth_error(status: StatusCode, error: &str, description: String) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn start_echo() -> (String, Echo) {
    let echo = Echo::default();
    let app = axum::Router::new()
        .route(
            "/authorize",
            axum::routing::get(
                |Query(query): Query<std::collections::HashMap<String, String>>| async move {
                    let mut target = url::Url::parse(&query["redirect_uri"]).unwrap();
                    target
                        .query_pairs_mut()
                        .append_pair("code", CODE)
                        .append_pair("state", &query["state"]);
                    Redirect::to(target.as_str())
                },
            ),
        )
        .route(
            "/token",
            axum::routing::post(
                |State(echo): State<Echo>, headers: HeaderMap, body: String| async move {
                    let echoed = echo.record(&headers, &body);
                    let description = format!("backend failed for {echoed}");
                    let grant: String = url::form_urlencoded::parse(body.as_bytes())
                        .find(|(k, _)| k == "grant_type")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    match grant.as_str() {
                        "refresh_token" => {
                            let mut count = echo.refreshes.lock().unwrap();
                            *count += 1;
                            if *count % 2 == 1 {
                                oauth_error(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "server_error",
                                    description,
                                )
                            } else {
                                oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
                            }
                        }
                        "authorization_code" => {
                            oauth_error(StatusCode::BAD_REQUEST, "server_error", description)
                        }
                        _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description),
                    }
                },
            ),
        )
        .route(
            "/device",
            axum::routing::post(
                |State(echo): State<Echo>, headers: HeaderMap, body: String| async move {
                    echo.record(&headers, &body);
                    axum::Json(json!({
                        "device_code": DEVICE_CODE,
                        "user_code": "WDJB-MJHT",
                        "verification_uri": "http://echo.test/device",
                        "expires_in": 600,
                        "interval": 1,
                    }))
                },
            ),
        )
        .route(
            "/revoke",
            axum::routing::post(
                |State(echo): State<Echo>, headers: HeaderMap, body: String| async move {
                    let echoed = echo.record(&headers, &body);
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "server_error",
                        format!("could not revoke {echoed}"),
                    )
                },
            ),
        )
        .route(
            "/userinfo",
            axum::routing::get(|State(echo): State<Echo>, headers: HeaderMap| async move {
                let echoed = echo.record(&headers, "");
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("not accepted: {echoed}"),
                )
            }),
        )
        .route(
            "/api/{*rest}",
            axum::routing::any(
                |State(echo): State<Echo>, headers: HeaderMap, body: String| async move {
                    let echoed = echo.record(&headers, &body);
                    (
                        StatusCode::BAD_REQUEST,
                        format!("rejected request {echoed}"),
                    )
                },
            ),
        )
        .with_state(echo.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_reach_no_sink_on_sqlite() {
    echoed_secrets_reach_no_sink(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_reach_no_sink_on_postgres() {
    echoed_secrets_reach_no_sink(Some(tokenvault::testing::fresh_postgres_url().await)).await;
}

async fn echoed_secrets_reach_no_sink(database: Option<String>) {
    let (echo_base, echo) = start_echo().await;
    let receiver = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[providers.echo-post]\ndisplay_name = \"Echo\"\nauthorization_url = \"{echo_base}/authorize\"\n\
             token_url = \"{echo_base}/token\"\nrevocation_url = \"{echo_base}/revoke\"\n\
             device_authorization_url = \"{echo_base}/device\"\nuserinfo_url = \"{echo_base}/userinfo\"\n\
             api_base_url = \"{echo_base}/api\"\ntoken_auth_method = \"client_secret_post\"\npkce = \"required\"\n\
             profile = {{ id = \"/sub\" }}\n\n\
             [providers.echo-basic]\nalias = \"echo-post\"\ntoken_auth_method = \"client_secret_basic\"\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("tokenvault.toml");
    std::fs::write(
        &config,
        format!(
            "providers_file = {providers:?}\n\
             [integrations.echo-post]\nprovider = \"echo-post\"\nclient_id = \"echo-post-client\"\n\
             client_secret = \"{POST_SECRET}\"\nredirect_uri = \"{public}/oauth/callback\"\n\n\
             [integrations.echo-basic]\nprovider = \"echo-basic\"\nclient_id = \"echo-basic-client\"\n\
             client_secret = \"{BASIC_SECRET}\"\nredirect_uri = \"{public}/oauth/callback\"\n"
        ),
    )
    .unwrap();
    let mut env = vec![
        ("RUST_LOG", "trace".to_owned()),
        ("TOKENVAULT_BIND", format!("127.0.0.1:{port}")),
        ("TOKENVAULT_METRICS_BIND", "off".into()),
        ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.into()),
        ("TOKENVAULT_API_KEYS", API_KEY.into()),
        ("TOKENVAULT_PUBLIC_URL", public.clone()),
        ("TOKENVAULT_SCHEDULER_ENABLED", "false".into()),
        ("TOKENVAULT_WEBHOOK_URL", receiver.url.clone()),
        ("TOKENVAULT_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
    ];
    if let Some(url) = &database {
        env.push(("TOKENVAULT_DATABASE_URL", url.clone()));
    }
    let mut service = Process::spawn(&config, &dir.path().join("data"), &env);
    service.line_after("tokenvault listening on ").await;

    let http = reqwest::Client::new();
    let bodies: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let call = async |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{public}{path}"))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        bodies.lock().unwrap().push(text.clone());
        (status, text)
    };
    // Polls `path` until `done` holds for its body (30 s at most).
    let wait_until = async |path: &str, done: fn(&Value) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = call(reqwest::Method::GET, path, None).await;
            if done(&serde_json::from_str(&text).unwrap()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} stays at {text}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();

    for integration in ["echo-post", "echo-basic"] {
        // The code exchange fails, echoing code, verifier and client secret.
        let (status, created) = call(
            reqwest::Method::POST,
            "/v1/connect-sessions",
            Some(json!({"user_id": "flow-user", "integration": integration})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let connect_url = serde_json::from_str::<Value>(&created).unwrap()["connect_url"]
            .as_str()
            .unwrap()
            .to_owned();
        let failed = browser(None).get(&connect_url).send().await.unwrap();
        assert_eq!(failed.status(), 502);
        let text = failed.text().await.unwrap();
        assert!(
            text.contains("[redacted]"),
            "the provider's echo is kept, scrubbed: {text}"
        );
        bodies.lock().unwrap().push(text);

        // Refresh fails twice (500, then invalid_grant), echoing the
        // refresh token and the client secret.
        let connection = format!("/v1/users/u-refresh/connections/{integration}");
        let (status, text) = call(
            reqwest::Method::PUT,
            &connection,
            Some(
                json!({"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": in_an_hour}),
            ),
        )
        .await;
        assert_eq!(status, 201, "{text}");
        for _ in 0..2 {
            let (status, text) = call(
                reqwest::Method::POST,
                &format!("{connection}/refresh"),
                None,
            )
            .await;
            assert!(status >= 400, "{status} {text}");
        }
        let (status, text) = call(reqwest::Method::GET, &connection, None).await;
        assert_eq!(status, 200);
        let shown: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(shown["status"], "needs_reauth", "{shown}");
        assert!(
            text.contains("[redacted]"),
            "last_error keeps the scrubbed echo: {text}"
        );
    }

    // The device flow: the poll fails, echoing the device code.
    let (status, text) = call(
        reqwest::Method::POST,
        "/v1/device-sessions",
        Some(json!({"user_id": "device-user", "integration": "echo-post"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let session = id_of(&text);
    wait_until(&format!("/v1/device-sessions/{session}"), |body| {
        body["status"] != "pending"
    })
    .await;

    // The profile, the API (a bulk action) and revocation echo the access
    // token.
    let connection = "/v1/users/u-api/connections/echo-post";
    let (status, text) = call(
        reqwest::Method::PUT,
        connection,
        Some(
            json!({"access_token": API_ACCESS, "refresh_token": REFRESH, "expires_at": in_an_hour}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let (status, text) = call(reqwest::Method::GET, &format!("{connection}/profile"), None).await;
    assert!(status >= 400, "{status} {text}");
    let (status, text) = call(
        reqwest::Method::POST,
        "/v1/bulk-actions",
        Some(json!({"integration": "echo-post", "users": ["u-api"], "request": {"method": "POST", "path": "things", "body": {"x": 1}}})),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let action = id_of(&text);
    wait_until(&format!("/v1/bulk-actions/{action}"), |body| {
        body["state"] == "completed"
    })
    .await;
    let (_, items) = call(
        reqwest::Method::GET,
        &format!("/v1/bulk-actions/{action}/items?state=failed"),
        None,
    )
    .await;
    assert!(
        items.contains("[redacted]"),
        "the item keeps the scrubbed answer: {items}"
    );
    let bearer = format!("Bearer {API_ACCESS}");
    assert_eq!(
        echo.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|v| **v == bearer)
            .count(),
        2,
        "the profile and the bulk action's API call"
    );
    let (status, text) = call(reqwest::Method::DELETE, connection, None).await;
    assert!(status < 500, "{status} {text}");

    // Every needs_reauth webhook is out.
    let events = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "connection.needs_reauth",
            2,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    service.terminate();

    // What the provider was sent, and what it echoed.
    let seen = echo.seen.lock().unwrap().clone();
    let verifiers: Vec<String> = seen
        .iter()
        .filter(|value| {
            value.len() >= 43 && !value.contains([' ', ':']) && !value.contains("canary")
        })
        .cloned()
        .collect();
    assert_eq!(verifiers.len(), 2, "one PKCE verifier per flow: {seen:?}");
    let mut secrets: Vec<String> = [
        ACCESS,
        REFRESH,
        API_ACCESS,
        POST_SECRET,
        BASIC_SECRET,
        CODE,
        DEVICE_CODE,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    secrets.extend(verifiers);
    for secret in &secrets {
        assert!(
            seen.iter().any(|value| value.contains(secret.as_str()))
                || seen.iter().any(|value| value.starts_with("Basic ")),
            "the provider never saw {secret}"
        );
    }
    let basic = seen
        .iter()
        .find(|value| value.starts_with("Basic "))
        .expect("client_secret_basic was used")
        .trim_start_matches("Basic ")
        .to_owned();

    let webhooks: Vec<String> = receiver
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body.clone())
        .collect();
    let logs = service.stderr.lock().unwrap().join("\n");
    let stored = database_text(database.as_deref(), &dir.path().join("data")).await;
    let sinks = [
        ("API answers", bodies.lock().unwrap().join("\n")),
        ("webhooks", webhooks.join("\n")),
        ("logs", logs),
        ("the database", stored),
    ];
    for secret in secrets.iter().chain([&basic]) {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for (sink, text) in &sinks {
            assert!(
                !text.contains(secret.as_str()) && !text.contains(&encoded),
                "{secret} reached {sink}"
            );
        }
    }
}

fn id_of(created: &str) -> String {
    serde_json::from_str::<Value>(created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Everything the database holds, as text: every row of every table.
async fn database_text(database: Option<&str>, data_dir: &std::path::Path) -> String {
    match database {
        Some(url) => {
            use sqlx::Row as _;
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.len() >= 5, "{tables:?}");
            let mut text = String::new();
            for table in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT t::text AS row FROM \"{table}\" t"
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                for row in rows {
                    text.push_str(&row.get::<String, _>("row"));
                    text.push('\n');
                }
            }
            text
        }
        None => {
            use sqlx::Row as _;
            let url = format!("sqlite://{}", data_dir.join("tokenvault.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.len() >= 5, "{tables:?}");
            let mut text = String::new();
            for table in tables {
                let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}')"
                )))
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|row| format!("quote(\"{}\")", row.get::<String, _>("name")))
                .collect();
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {} AS row FROM \"{table}\"",
                    columns.join(" || char(9) || ")
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                for row in rows {
                    text.push_str(&row.get::<String, _>("row"));
                    text.push('\n');
                }
            }
            text
        }
    }
}
