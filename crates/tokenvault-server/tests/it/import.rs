//! Importing from a legacy store: `PUT /v1/users/{user_id}/connections/{integration}`
//! and `tokenvault import FILE.jsonl`. Imported grants the OAuth test peer
//! issued are served and refreshed against it; every rejected request or
//! line leaves the stored connections exactly as they were.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::common::*;
use chrono::{SecondsFormat, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::integrations::IntegrationConfig;
use tokenvault::store::ConnectionRecord;

const PEER_CLIENT: &str = "import-app";
const PEER_SECRET: &str = "import-secret";

/// A service with a `spotify` integration (no provider needed: imported
/// tokens that are still valid are served from storage).
async fn service() -> Service {
    start_service(|config, base| {
        config.integrations.insert(
            IntegrationKey::parse("spotify").unwrap(),
            IntegrationConfig {
                provider: "spotify".into(),
                client_id: "client".into(),
                client_secret: Some(SecretString::from("secret")),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await
}

fn path(user: &str, integration: &str) -> String {
    format!("/v1/users/{user}/connections/{integration}")
}

async fn put(service: &Service, path: &str, body: &Value) -> reqwest::Response {
    service
        .http
        .put(service.url(path))
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn stored(service: &Service, user: &str, integration: &str) -> Option<ConnectionRecord> {
    service
        .state
        .vault
        .store()
        .get(
            &UserId::parse(user).unwrap(),
            &IntegrationKey::parse(integration).unwrap(),
        )
        .await
        .unwrap()
}

/// Decrypted (access, refresh) of a stored connection.
async fn tokens(service: &Service, user: &str, integration: &str) -> (String, Option<String>) {
    let (_, tokens) = service
        .state
        .vault
        .read(
            &UserId::parse(user).unwrap(),
            &IntegrationKey::parse(integration).unwrap(),
        )
        .await
        .unwrap()
        .expect("a connection with tokens");
    (
        tokens.access_token.expose().to_owned(),
        tokens.refresh_token.map(|t| t.expose().to_owned()),
    )
}

/// What any write would change.
fn fingerprint(record: &ConnectionRecord) -> String {
    format!(
        "{} v{} {} {:?} {:?} {}",
        record.id,
        record.version,
        record.updated_at.to_rfc3339(),
        record.access_token,
        record.refresh_token,
        record.metadata
    )
}

fn rfc3339(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_peer_tokens_are_served_and_refreshed_against_the_peer() {
    let peer = Peer::start();
    let issuer = peer.issuer.clone();
    let service = start_service(|config, base| {
        config.integrations.insert(
            IntegrationKey::parse(PEER_CLIENT).unwrap(),
            IntegrationConfig {
                provider: "oidc".into(),
                client_id: PEER_CLIENT.into(),
                client_secret: Some(SecretString::from(PEER_SECRET)),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                scopes: Some(vec!["openid".into(), "api:read".into()]),
                issuer: Some(url::Url::parse(&issuer).unwrap()),
                ..Default::default()
            },
        );
    })
    .await;
    peer.register(
        PEER_CLIENT,
        "client_secret_basic",
        Some(PEER_SECRET),
        &service.url("/oauth/callback"),
        &["authorization_code", "refresh_token"],
    )
    .await;

    // The "legacy store": a grant the peer really issued (through the
    // flow), taken out of tokenvault's database as an export would have it.
    let page = browser(None)
        .get(service.connect_url("alice", PEER_CLIENT, None).await)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let (access, refresh) = tokens(&service, "alice", PEER_CLIENT).await;
    let refresh = refresh.expect("the peer issues refresh tokens");
    let original = stored(&service, "alice", PEER_CLIENT).await.unwrap();
    let scopes = original.scopes.to_vec();
    let alice = UserId::parse("alice").unwrap();
    let key = IntegrationKey::parse(PEER_CLIENT).unwrap();
    assert!(
        service
            .state
            .vault
            .store()
            .delete(&alice, &key)
            .await
            .unwrap()
    );
    let refreshes_before = peer.stats().await["refresh_by_client"][PEER_CLIENT]
        .as_u64()
        .unwrap_or(0);

    // The export says the access token has expired: due at once.
    let expired = Utc::now() - chrono::Duration::minutes(5);
    let export = json!({
        "access_token": access,
        "refresh_token": refresh,
        "expires_at": rfc3339(expired),
        "scopes": scopes,
        "metadata": {"legacy_id": 42},
    });
    let connection = path("alice", PEER_CLIENT);
    let created = put(&service, &connection, &export).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["import"], "created");
    assert_eq!(created["status"], "connected");
    assert_eq!(created["integration"], PEER_CLIENT);
    assert_eq!(created["scopes"], json!(scopes));
    let due: chrono::DateTime<Utc> = created["next_refresh_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(due <= Utc::now(), "an expired token is due at once: {due}");
    // The same document as GET, plus the import outcome.
    let shown: Value = service.get_json(&connection).await.json().await.unwrap();
    let mut without_import = created.clone();
    without_import.as_object_mut().unwrap().remove("import");
    assert_eq!(shown, without_import);

    // Asking for a token refreshes it at the peer with the imported
    // refresh token: the import holds a live grant.
    let token = service.get_json(&format!("{connection}/token")).await;
    assert_eq!(token.status(), 200);
    let token: Value = token.json().await.unwrap();
    let fresh = token["access_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, access);
    assert_eq!(
        peer.stats().await["refresh_by_client"][PEER_CLIENT].as_u64(),
        Some(refreshes_before + 1)
    );
    let refreshed = stored(&service, "alice", PEER_CLIENT).await.unwrap();
    assert_eq!(refreshed.metadata, json!({"legacy_id": 42}));

    // Re-running the export would put the spent refresh token back (the
    // peer would then revoke the whole grant): refused, nothing written.
    let again = put(&service, &connection, &export).await;
    assert_eq!(again.status(), 409);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["error"], "stored_tokens_newer");
    assert!(again["message"].as_str().unwrap().contains("?force=true"));
    assert_eq!(
        fingerprint(&stored(&service, "alice", PEER_CLIENT).await.unwrap()),
        fingerprint(&refreshed)
    );
    // The grant is still alive at the peer.
    let forced = service
        .post_json(&format!("{connection}/refresh"), json!({}))
        .await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["refreshed"], true);
    assert_eq!(forced["status"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_creates_then_leaves_unchanged_then_replaces() {
    let service = service().await;
    let connection = path("bob", "spotify");
    let expires = Utc::now() + chrono::Duration::hours(2);
    let grant = json!({
        "access_token": "legacy-AT-1",
        "refresh_token": "legacy-RT-1",
        "expires_at": expires.timestamp(),
        "scopes": "user-read-email playlist-read-private",
    });
    let created = put(&service, &connection, &grant).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["import"], "created");
    assert_eq!(
        created["scopes"],
        json!(["playlist-read-private", "user-read-email"])
    );
    assert_eq!(
        created["expires_at"],
        json!(chrono::DateTime::from_timestamp(expires.timestamp(), 0).unwrap())
    );
    let first = stored(&service, "bob", "spotify").await.unwrap();
    assert_eq!(first.metadata, json!({}));

    // Served as is: valid for two hours, no provider involved.
    let token: Value = service
        .get_json(&format!("{connection}/token"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["access_token"], "legacy-AT-1");

    let unchanged = put(&service, &connection, &grant).await;
    assert_eq!(unchanged.status(), 200);
    let unchanged: Value = unchanged.json().await.unwrap();
    assert_eq!(unchanged["import"], "unchanged");
    assert_eq!(unchanged["updated_at"], created["updated_at"]);
    assert_eq!(
        fingerprint(&stored(&service, "bob", "spotify").await.unwrap()),
        fingerprint(&first),
        "nothing written"
    );

    let replaced = put(
        &service,
        &connection,
        &json!({"access_token": "legacy-AT-2", "metadata": {"plan": "pro"}}),
    )
    .await;
    assert_eq!(replaced.status(), 200);
    let replaced: Value = replaced.json().await.unwrap();
    assert_eq!(replaced["import"], "replaced");
    assert_eq!(replaced["expires_at"], Value::Null);
    assert_eq!(replaced["next_refresh_at"], Value::Null);
    assert_eq!(
        tokens(&service, "bob", "spotify").await,
        ("legacy-AT-2".into(), None)
    );
    let token: Value = service
        .get_json(&format!("{connection}/token"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(token["access_token"], "legacy-AT-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_change_nothing() {
    let service = service().await;
    let bob = path("bob", "spotify");
    let good = json!({"access_token": "legacy-AT-1", "refresh_token": "legacy-RT-1"});
    assert_eq!(put(&service, &bob, &good).await.status(), 201);
    let before = fingerprint(&stored(&service, "bob", "spotify").await.unwrap());
    let soon = rfc3339(Utc::now() + chrono::Duration::hours(1));
    let past = rfc3339(Utc::now() - chrono::Duration::hours(1));

    let cases: Vec<(String, Value, u16, &str, &str)> = vec![
        (
            bob.clone(),
            json!({"refresh_token": "secret-RT-9"}),
            400,
            "invalid_json",
            "missing field `access_token`",
        ),
        (
            bob.clone(),
            json!({"access_token": 918273645}),
            400,
            "invalid_json",
            "access_token",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "refersh_token": "x"}),
            400,
            "invalid_json",
            "unknown field `refersh_token`",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "scopes": 5}),
            400,
            "invalid_scopes",
            "array of strings",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "scopes": ["a b"]}),
            400,
            "invalid_scopes",
            "\"a b\"",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret AT-9"}),
            400,
            "invalid_token",
            "access_token contains whitespace",
        ),
        (
            bob.clone(),
            json!({"access_token": ""}),
            400,
            "invalid_token",
            "must not be empty",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "refresh_token": "x".repeat(20_000)}),
            400,
            "invalid_token",
            "refresh_token is 20000 bytes",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "expires_at": "soon"}),
            400,
            "invalid_expires_at",
            "RFC 3339",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "expires_at": 1_700_000_000_000_i64}),
            400,
            "invalid_expires_at",
            "milliseconds",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "expires_at": past}),
            400,
            "token_expired",
            "no refresh token",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "metadata": [1]}),
            400,
            "invalid_metadata",
            "JSON object",
        ),
        (
            bob.clone(),
            json!({"access_token": "secret-AT-9", "metadata": {"x": "y".repeat(17_000)}}),
            400,
            "invalid_metadata",
            "at most 16384",
        ),
        (
            format!("{bob}?force=maybe"),
            json!({"access_token": "secret-AT-9"}),
            400,
            "invalid_force",
            "true or false",
        ),
        (
            path("bad%20user", "spotify"),
            json!({"access_token": "secret-AT-9"}),
            400,
            "invalid_user_id",
            "user id",
        ),
        (
            path("bob", "Not-A-Key"),
            json!({"access_token": "secret-AT-9"}),
            400,
            "invalid_integration",
            "integration key",
        ),
        (
            path("bob", "github"),
            json!({"access_token": "secret-AT-9", "expires_at": soon}),
            404,
            "unknown_integration",
            "github",
        ),
        (
            path("carol", "github"),
            json!({"access_token": "secret-AT-9"}),
            404,
            "unknown_integration",
            "github",
        ),
    ];
    for (target, body, status, code, needle) in cases {
        let response = put(&service, &target, &body).await;
        assert_eq!(response.status(), status, "{target} {body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], code, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(needle), "{code}: {message}");
        assert!(answer["request_id"].is_string());
        for secret in ["secret-AT-9", "secret AT-9", "secret-RT-9", "918273645"] {
            assert!(!message.contains(secret), "{message}");
        }
    }

    // Malformed JSON.
    let malformed = service
        .http
        .put(service.url(&bob))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(r#"{"access_token": "secret-AT-9""#)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"],
        "invalid_json"
    );

    // Bigger than the body limit: 413, with our envelope.
    let huge =
        json!({"access_token": "secret-AT-9", "metadata": {"blob": "x".repeat(3 * 1024 * 1024)}});
    let too_large = put(&service, &bob, &huge).await;
    assert_eq!(too_large.status(), 413);
    let answer: Value = too_large.json().await.unwrap();
    assert_eq!(answer["error"], "payload_too_large", "{answer}");
    assert!(answer["request_id"].is_string());

    // Without an API key.
    let anonymous = service
        .http
        .put(service.url(&bob))
        .json(&json!({"access_token": "secret-AT-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    assert_eq!(
        fingerprint(&stored(&service, "bob", "spotify").await.unwrap()),
        before
    );
    assert_eq!(
        tokens(&service, "bob", "spotify").await,
        ("legacy-AT-1".into(), Some("legacy-RT-1".into()))
    );
    assert!(stored(&service, "carol", "github").await.is_none());
    let everything = service
        .state
        .vault
        .store()
        .list(&Default::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(everything.len(), 1, "only bob's connection exists");
}

// --- the command --------------------------------------------------------

/// The binary against the service's database and key, with the same
/// `spotify` integration, and nothing else from the environment.
fn tokenvault(service: &Service, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenvault"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATABASE_URL", service.config.database_url())
        .env("TOKENVAULT_MASTER_KEYS", MASTER_KEYS)
        .env("TOKENVAULT_LOG_FORMAT", "json")
        .env("SPOTIFY_CLIENT_ID", "client")
        .env("SPOTIFY_CLIENT_SECRET", "secret")
        .env("TOKENVAULT_PUBLIC_URL", &service.base)
        .env("SPOTIFY_REDIRECT_URI", service.url("/oauth/callback"))
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().expect("exited"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

async fn all_fingerprints(service: &Service) -> Vec<String> {
    service
        .state
        .vault
        .store()
        .list(&Default::default(), None, 10_000)
        .await
        .unwrap()
        .iter()
        .map(fingerprint)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_reports_rejects_and_a_rerun_changes_nothing() {
    let service = service().await;
    let dir = tempfile::tempdir().unwrap();
    let soon = rfc3339(Utc::now() + chrono::Duration::hours(1));
    let past = rfc3339(Utc::now() - chrono::Duration::hours(1));
    // Already connected before the import: replaced by line 2.
    assert_eq!(
        put(
            &service,
            &path("u2", "spotify"),
            &json!({"access_token": "old-AT-u2"})
        )
        .await
        .status(),
        201
    );
    let lines = [
        json!({"user_id": "u1", "integration": "spotify", "access_token": "file-AT-u1", "refresh_token": "file-RT-u1", "expires_at": soon, "scopes": ["a", "b"], "metadata": {"legacy_id": 1}}).to_string(),
        json!({"user_id": "u2", "integration": "spotify", "access_token": "file-AT-u2"}).to_string(),
        String::new(),
        "   ".into(),
        r#"{"user_id": "u3", "integration": "spotify", "access_token": "file-AT-u3""#.into(),
        json!({"user_id": "u4", "integration": "github", "access_token": "file-AT-u4"}).to_string(),
        json!({"user_id": "bad user", "integration": "spotify", "access_token": "file-AT-u5"}).to_string(),
        json!({"user_id": "u6", "integration": "spotify", "access_token": "file-AT-u6", "expires_at": past}).to_string(),
        json!({"user_id": "u7", "integration": "spotify", "refresh_token": "file-RT-u7"}).to_string(),
        // CRLF line endings and an expired token that can be refreshed.
        format!("{}\r", json!({"user_id": "u8", "integration": "spotify", "access_token": "file-AT-u8", "refresh_token": "file-RT-u8", "expires_at": past})),
        json!({"user_id": "u1", "integration": "spotify", "access_token": "file-AT-u1-dup"}).to_string(),
    ];
    let file = dir.path().join("legacy.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let rejects = dir.path().join("rejects.jsonl");

    let (code, stdout, stderr) = run(tokenvault(&service, dir.path()).args([
        "import",
        "legacy.jsonl",
        "--rejects",
        "rejects.jsonl",
    ]));
    assert_eq!(
        code, 2,
        "rejected lines make the exit status non-zero: {stderr}"
    );
    assert_eq!(
        stdout.trim(),
        "imported 3 (created 2, replaced 1, unchanged 0), kept newer 0, rejected 6"
    );
    for expected in [
        "line 5: invalid JSON: EOF while parsing an object",
        "line 6: no integration named \"github\" is configured",
        "line 7: user_id: user id contains ' ' at position 3",
        "line 8: the access token expired at ",
        "line 9: missing field `access_token`",
        "line 11: line 1 already names this user_id and integration",
        "6 lines were rejected",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
    let report = std::fs::read_to_string(&rejects).unwrap();
    let report: Vec<Value> = report
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary: Vec<(u64, &str)> = report
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["error"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (5, "invalid_json"),
            (6, "unknown_integration"),
            (7, "invalid_user_id"),
            (8, "token_expired"),
            (9, "invalid_json"),
            (11, "duplicate"),
        ]
    );
    assert_eq!(report[1]["user_id"], "u4");
    assert_eq!(report[1]["integration"], "github");
    assert!(
        report[0].get("user_id").is_none(),
        "unparsable line: no ids"
    );
    assert!(report.iter().all(|r| r["reason"].is_string()));
    for output in [
        &stdout,
        &stderr,
        &std::fs::read_to_string(&rejects).unwrap(),
    ] {
        assert!(
            !output.contains("file-AT") && !output.contains("file-RT"),
            "{output}"
        );
    }

    // What was stored, decrypted.
    assert_eq!(
        tokens(&service, "u1", "spotify").await,
        ("file-AT-u1".into(), Some("file-RT-u1".into()))
    );
    let u1 = stored(&service, "u1", "spotify").await.unwrap();
    assert_eq!(u1.metadata, json!({"legacy_id": 1}));
    assert_eq!(u1.scopes.to_vec(), ["a", "b"]);
    assert_eq!(
        tokens(&service, "u2", "spotify").await,
        ("file-AT-u2".into(), None)
    );
    let u8_view: Value = service
        .get_json(&path("u8", "spotify"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(u8_view["status"], "connected");
    let due: chrono::DateTime<Utc> = u8_view["next_refresh_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(due <= Utc::now(), "due at once");
    for absent in ["u3", "u6", "u7"] {
        assert!(
            stored(&service, absent, "spotify").await.is_none(),
            "{absent}"
        );
    }
    let after_first = all_fingerprints(&service).await;
    assert_eq!(after_first.len(), 3, "u1, u2 and u8");

    // Again: all unchanged, nothing written.
    let (code, stdout, _) = run(tokenvault(&service, dir.path()).args(["import", "legacy.jsonl"]));
    assert_eq!(code, 2);
    assert_eq!(
        stdout.trim(),
        "imported 3 (created 0, replaced 0, unchanged 3), kept newer 0, rejected 6"
    );
    assert_eq!(all_fingerprints(&service).await, after_first);

    // A dry run of a changed file reports and writes nothing.
    let changed = [
        json!({"user_id": "u1", "integration": "spotify", "access_token": "file-AT-u1-v2"})
            .to_string(),
        json!({"user_id": "u9", "integration": "spotify", "access_token": "file-AT-u9"})
            .to_string(),
    ];
    std::fs::write(dir.path().join("changed.jsonl"), changed.join("\n")).unwrap();
    let (code, stdout, stderr) =
        run(tokenvault(&service, dir.path()).args(["import", "changed.jsonl", "--dry-run"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "dry run, nothing written: would import 2 (create 1, replace 1, unchanged 0), keep newer 0, reject 0"
    );
    assert_eq!(all_fingerprints(&service).await, after_first);

    // Without rejects the exit status is zero; standard input works too.
    let (code, stdout, stderr) = run(tokenvault(&service, dir.path())
        .args(["import", "-"])
        .stdin(std::fs::File::open(dir.path().join("changed.jsonl")).unwrap()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "imported 2 (created 1, replaced 1, unchanged 0), kept newer 0, rejected 0"
    );
    assert_eq!(
        tokens(&service, "u9", "spotify").await,
        ("file-AT-u9".into(), None)
    );

    // A file that cannot be read is an error, not a report.
    let (code, _, stderr) = run(tokenvault(&service, dir.path()).args(["import", "missing.jsonl"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot open missing.jsonl"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_documents_the_command() {
    let service = service().await;
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(tokenvault(&service, dir.path()).arg("--help"));
    assert_eq!(code, 0);
    assert!(stdout.contains("import"), "{stdout}");
    let (code, stdout, _) = run(tokenvault(&service, dir.path()).args(["import", "--help"]));
    assert_eq!(code, 0);
    for needle in [
        "\"access_token\"",
        "RFC 3339 or Unix seconds",
        "--rejects <FILE>",
        "--dry-run",
        "--force",
        "--concurrency",
        "2 some lines rejected",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_through() {
    const LINES: usize = 5_000;
    let service = service().await;
    let dir = tempfile::tempdir().unwrap();
    let soon = rfc3339(Utc::now() + chrono::Duration::days(1));
    let mut content = String::new();
    for i in 0..LINES {
        content.push_str(
            &json!({
                "user_id": format!("user-{i}"),
                "integration": "spotify",
                "access_token": format!("bulk-AT-{i}-{}", "a".repeat(200)),
                "refresh_token": format!("bulk-RT-{i}-{}", "r".repeat(100)),
                "expires_at": soon,
                "scopes": ["user-read-email", "playlist-read-private"],
                "metadata": {"legacy_id": i},
            })
            .to_string(),
        );
        content.push('\n');
    }
    std::fs::write(dir.path().join("bulk.jsonl"), &content).unwrap();

    let started = Instant::now();
    let (code, stdout, stderr) =
        run(tokenvault(&service, dir.path()).args(["import", "bulk.jsonl"]));
    let elapsed = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "imported {LINES} (created {LINES}, replaced 0, unchanged 0), kept newer 0, rejected 0"
        )
    );
    eprintln!(
        "imported {LINES} lines ({} KiB) in {elapsed:?}: {:.0} lines/s",
        content.len() / 1024,
        LINES as f64 / elapsed.as_secs_f64()
    );
    let counts = service.state.vault.store().count_by_status().await.unwrap();
    assert_eq!(
        counts[&tokenvault::domain::ConnectionStatus::Connected],
        LINES as u64
    );
    assert_eq!(
        tokens(&service, "user-4321", "spotify").await.0,
        format!("bulk-AT-4321-{}", "a".repeat(200))
    );

    let started = Instant::now();
    let (code, stdout, stderr) =
        run(tokenvault(&service, dir.path()).args(["import", "bulk.jsonl"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "imported {LINES} (created 0, replaced 0, unchanged {LINES}), kept newer 0, rejected 0"
        )
    );
    eprintln!("re-run (all unchanged) in {:?}", started.elapsed());
}
