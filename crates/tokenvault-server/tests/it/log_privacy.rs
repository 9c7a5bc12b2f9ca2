//! Logs at TRACE, over a whole connection's life (flow, token reads, forced
//! refresh, import, revocation), never contain a token, a client secret, an
//! authorization code, a PKCE verifier, a whole state or connect link, an API
//! key or a raw user id — and every line logged while serving a request
//! carries its request id.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CLIENT: &str = "privacy-app";
const CLIENT_SECRET: &str = "privacy-client-secret-8c1f2a";
const USER: &str = "privacy.canary+7731@example.com";
const IMPORT_USER: &str = "import-canary-5520";
const LOG_SALT: &str = "log-salt-for-the-privacy-test";
const IMPORTED_ACCESS: &str = "imported-access-token-canary-31d9";
const IMPORTED_REFRESH: &str = "imported-refresh-token-canary-7e44";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_a_whole_connection_life_hold_no_secret() {
    let peer = Peer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let callback = format!("{public}/oauth/callback");
    let config = dir.path().join("tokenvault.toml");
    std::fs::write(
        &config,
        format!(
            "[integrations.{CLIENT}]\nprovider = \"oidc\"\nclient_id = \"{CLIENT}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
             redirect_uri = \"{callback}\"\nscopes = [\"openid\", \"offline_access\", \"api:read\"]\nissuer = \"{}\"\n",
            peer.issuer
        ),
    )
    .unwrap();
    peer.register(
        CLIENT,
        "client_secret_basic",
        Some(CLIENT_SECRET),
        &callback,
        &["authorization_code", "refresh_token"],
    )
    .await;
    let mut service = Process::spawn(
        &config,
        &dir.path().join("data"),
        &[
            ("RUST_LOG", "trace".into()),
            ("TOKENVAULT_BIND", format!("127.0.0.1:{port}")),
            ("TOKENVAULT_METRICS_BIND", "off".into()),
            ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.into()),
            ("TOKENVAULT_API_KEYS", API_KEY.into()),
            ("TOKENVAULT_PUBLIC_URL", public.clone()),
            ("TOKENVAULT_LOG_SALT", LOG_SALT.into()),
        ],
    );
    service.line_after("tokenvault listening on ").await;
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{public}{path}"))
            .bearer_auth(API_KEY)
    };
    let connection = format!("/v1/users/{USER}/connections/{CLIENT}");

    // The browser flow, stopping before our callback to learn the code and state.
    let response = api(reqwest::Method::POST, "/v1/connect-sessions")
        .json(&json!({"user_id": USER, "integration": CLIENT}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let connect_url = response.json::<Value>().await.unwrap()["connect_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let connect_id = connect_url.rsplit('/').next().unwrap().to_owned();
    let user_browser = browser(Some(callback.clone()));
    let at_callback = user_browser.get(&connect_url).send().await.unwrap();
    let callback_url = url::Url::parse(&location(&at_callback)).unwrap();
    let param = |name: &str| {
        callback_url
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {callback_url}"))
    };
    let (code, state) = (param("code"), param("state"));
    let finished = user_browser
        .get(callback_url.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), 200);

    // Token reads, a forced refresh, a read of the new token.
    let token = |path: String| {
        let request = api(reqwest::Method::GET, &path);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let first = token(format!("{connection}/token")).await;
    let refreshed = api(reqwest::Method::POST, &format!("{connection}/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let second = token(format!("{connection}/token")).await;
    assert_ne!(first, second, "the forced refresh issued a new token");

    // An import, a rejected request, then revocation at the provider.
    let imported = api(
        reqwest::Method::PUT,
        &format!("/v1/users/{IMPORT_USER}/connections/{CLIENT}"),
    )
    .json(&json!({"access_token": IMPORTED_ACCESS, "refresh_token": IMPORTED_REFRESH}))
    .send()
    .await
    .unwrap();
    assert_eq!(imported.status(), StatusCode::CREATED);
    let rejected = api(
        reqwest::Method::PUT,
        &format!("/v1/users/{IMPORT_USER}/connections/{CLIENT}"),
    )
    .json(&json!({"access_token": 42, "refresh_token": IMPORTED_REFRESH}))
    .send()
    .await
    .unwrap();
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    let revoked = api(reqwest::Method::DELETE, &connection)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        revoked.json::<Value>().await.unwrap()["revoked_at_provider"],
        true
    );

    assert!(service.terminate().success());
    let lines = service.stderr.lock().unwrap().clone();
    let log = lines.join("\n");

    // The log is really at TRACE and really covers this traffic, so the
    // absence checks below mean something.
    let records: Vec<Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let trace = records.iter().filter(|r| r["level"] == "TRACE").count();
    assert!(
        trace > 0 && records.len() > 100,
        "{trace} TRACE lines of {} JSON lines",
        records.len()
    );
    for dependency in [
        "sqlx::query",
        "reqwest::connect",
        "hyper_util::client::legacy::pool",
    ] {
        assert!(
            records.iter().any(|r| r["target"] == dependency),
            "dependencies' logs are captured too ({dependency})"
        );
    }
    let tag = tokenvault::privacy::user_tag_with(LOG_SALT.as_bytes(), USER);
    assert!(
        log.contains(&tag),
        "the user appears by their keyed hash {tag}"
    );
    assert!(log.contains(&state[..8]), "states appear truncated");
    // One info line per change in the connection's life, naming the user
    // by tag, the integration and the connection.
    for message in [
        "connection created",
        "connection refresh forced",
        "connection revoked and erased",
    ] {
        let line = records
            .iter()
            .find(|r| r["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line"));
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["fields"]["user"], tag.as_str(), "{line}");
        assert_eq!(line["fields"]["integration"], CLIENT, "{line}");
        assert!(line["fields"]["connection"].is_string(), "{line}");
    }

    let mut secrets: Vec<(String, String)> = peer.hook_get("secrets").await["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                "a value the OAuth peer saw or issued".into(),
                s.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        secrets.len() >= 8,
        "the peer saw codes, a verifier, the secret and tokens: {secrets:?}"
    );
    for (what, value) in [
        ("the authorization code", code.as_str()),
        ("the whole state", state.as_str()),
        ("the connect link id", connect_id.as_str()),
        ("the client secret", CLIENT_SECRET),
        ("the raw user id", USER),
        ("the raw imported user id", IMPORT_USER),
        ("an access token", first.as_str()),
        ("the refreshed access token", second.as_str()),
        ("an imported access token", IMPORTED_ACCESS),
        ("an imported refresh token", IMPORTED_REFRESH),
        ("the API key", API_KEY),
        ("the master key", MASTER_KEYS.split(':').nth(1).unwrap()),
        ("the log salt", LOG_SALT),
    ] {
        secrets.push((what.into(), value.to_owned()));
    }
    let leaks: Vec<String> = secrets
        .iter()
        .filter(|(_, value)| log.contains(value.as_str()))
        .map(|(what, value)| {
            let line = lines.iter().find(|l| l.contains(value.as_str())).unwrap();
            format!("{what} in: {line}")
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets in the log:\n{}",
        leaks.join("\n")
    );

    // Every line logged while serving a request names it.
    let in_requests: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("tokenvault_server::http"))
        })
        .collect();
    assert!(
        in_requests.len() >= 10,
        "{} request lines",
        in_requests.len()
    );
    for record in in_requests {
        assert!(
            record["span"]["request_id"].is_string()
                || record["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"].is_string())),
            "a request's log line without its request id: {record}"
        );
    }
    let refresh_lines = records
        .iter()
        .filter(|r| {
            r["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("tokenvault::"))
                && r["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"].is_string()))
        })
        .count();
    assert!(
        refresh_lines > 0,
        "library lines inside a request (the forced refresh) carry the request id too"
    );
}
