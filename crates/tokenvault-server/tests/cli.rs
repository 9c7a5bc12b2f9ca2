//! The binary as operators run it: start-up, refusals, key lifecycle.

mod common;

use common::free_port;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenvault::crypto::{Envelope, KeyRing};
use tokenvault::domain::{
    AccessToken, ConnectionId, ConnectionStatus, IntegrationKey, Scopes, TokenType, UserId,
};
use tokenvault::store::NewConnection;

/// The binary with a clean environment: only what a test sets.
fn tokenvault(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenvault"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATA_DIR", dir.join("data"))
        .env("TOKENVAULT_LOG_FORMAT", "json")
        // Processes run side by side: no fixed metrics port.
        .env("TOKENVAULT_METRICS_BIND", "127.0.0.1:0")
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_on_the_embedded_default_generates_a_key_and_answers_health() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = tokenvault(dir.path())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            Ok(response) => break response,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => panic!("service did not come up: {err}"),
        }
    };
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let ready = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["database"]["status"], "ok");

    let key_file = dir.path().join("data/master.key");
    assert!(key_file.exists());
    assert!(dir.path().join("data/tokenvault.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // SIGTERM: graceful stop with a zero exit.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let output = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(output.0.success(), "{}", output.1);
    assert!(
        output
            .1
            .contains("WARNING: generated a development master key"),
        "{}",
        output.1
    );
    assert!(
        output.1.contains("Production must supply its own keys"),
        "{}",
        output.1
    );
}

#[test]
fn malformed_master_keys_stop_startup_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (keys, expected) in [
        ("k1:c2hvcnQ=", "must be 32 bytes"),
        ("k1:***", "not valid base64"),
        (
            "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "appears more than once",
        ),
    ] {
        let (ok, _, stderr) = run(tokenvault(dir.path())
            .env("TOKENVAULT_MASTER_KEYS", keys)
            .args(["serve", "--bind", "127.0.0.1:0"]));
        assert!(!ok);
        assert!(
            stderr.contains("TOKENVAULT_MASTER_KEYS:") && stderr.contains(expected),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(
        !dir.path().join("data/master.key").exists(),
        "no key file when keys are given"
    );
}

#[test]
fn production_refuses_to_generate_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(tokenvault(dir.path())
        .env("TOKENVAULT_ENVIRONMENT", "production")
        .args(["serve", "--bind", "127.0.0.1:0"]));
    assert!(!ok);
    assert!(
        stderr.contains("production requires master keys"),
        "{stderr}"
    );
    assert!(!dir.path().join("data/master.key").exists());
}

#[test]
fn unreachable_database_is_named_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(tokenvault(dir.path())
        .env(
            "TOKENVAULT_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/test",
        )
        .arg("migrate"));
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach PostgreSQL at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = run(tokenvault(dir.path()).arg("--help"));
    assert!(ok);
    for command in ["serve", "migrate", "keys"] {
        assert!(stdout.contains(command), "{stdout}");
    }
    let (ok, stdout, _) = run(tokenvault(dir.path()).args(["keys", "--help"]));
    assert!(ok);
    for command in ["generate", "rotate", "retire", "status"] {
        assert!(stdout.contains(command), "{stdout}");
    }
}

#[tokio::test]
async fn key_lifecycle_generate_rotate_retire() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |id: &str| {
        let (ok, stdout, _) = run(tokenvault(dir.path()).args(["keys", "generate", "--id", id]));
        assert!(ok);
        stdout.trim().to_owned()
    };
    let (k1, k2) = (generate("k1"), generate("k2"));
    assert!(k1.starts_with("k1:") && k2.starts_with("k2:"));

    let (ok, stdout, stderr) = run(tokenvault(dir.path())
        .env("TOKENVAULT_MASTER_KEYS", &k1)
        .arg("migrate"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("up to date"));

    // Connections written under k1 by the library, as a running service would.
    let url = format!(
        "sqlite://{}",
        dir.path().join("data/tokenvault.db").display()
    );
    let store = tokenvault::store::connect(&url, &Default::default())
        .await
        .unwrap();
    let old = Envelope::new(Arc::new(KeyRing::parse(&k1, "test").unwrap()));
    for i in 0..5 {
        let id = ConnectionId::new();
        let now = chrono::Utc::now();
        store
            .upsert(NewConnection {
                id,
                user_id: UserId::parse(format!("user-{i}")).unwrap(),
                integration: IntegrationKey::parse("spotify").unwrap(),
                status: ConnectionStatus::Connected,
                scopes: Scopes::new(),
                token_type: TokenType::Bearer,
                expires_at: None,
                next_refresh_at: None,
                sealed: old
                    .seal_new(id, &AccessToken::new(format!("AT-{i}")), None)
                    .await
                    .unwrap(),
                metadata: serde_json::json!({}),
                now,
                emit: Vec::new(),
            })
            .await
            .unwrap();
    }

    let both = format!("{k2},{k1}");
    let keys = |args: &[&str]| {
        run(tokenvault(dir.path())
            .env("TOKENVAULT_MASTER_KEYS", &both)
            .arg("keys")
            .args(args))
    };
    let (ok, stdout, _) = keys(&["status"]);
    assert!(ok);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("k1") && l.contains(" 5") && l.contains("needs rotation")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("k2") && l.contains("active")),
        "{stdout}"
    );

    let (ok, _, stderr) = keys(&["retire", "k1"]);
    assert!(!ok);
    assert!(
        stderr.contains("5 connections still use master key `k1`"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = keys(&["rotate", "--batch", "2"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("re-wrapped 5 data keys under `k2`"),
        "{stdout}"
    );

    let (ok, stdout, _) = keys(&["status"]);
    assert!(ok);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("k1") && l.contains("retirable")),
        "{stdout}"
    );
    let (ok, stdout, stderr) = keys(&["retire", "k1"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("remove it from TOKENVAULT_MASTER_KEYS"),
        "{stdout}"
    );

    // Only k2 is needed now.
    let new = Envelope::new(Arc::new(KeyRing::parse(&k2, "test").unwrap()));
    for row in store.list(&Default::default(), None, 10).await.unwrap() {
        new.open(
            row.id,
            &row.data_key,
            row.access_token.as_deref().unwrap(),
            None,
        )
        .await
        .unwrap();
    }
}
