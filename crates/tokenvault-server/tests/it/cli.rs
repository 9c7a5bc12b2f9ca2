//! The binary as operators run it: start-up, refusals, key lifecycle.

use crate::common::free_port;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_embedded_default_generates_a_key_and_answers_health() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = tokenvault(dir.path())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        // A client id and secret are all a catalog provider needs.
        .env("SPOTIFY_CLIENT_ID", "spotify-id")
        .env("SPOTIFY_CLIENT_SECRET", "spotify-secret")
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
    // The first run says what to register and what to do next.
    assert!(
        output.1.contains(&format!(
            "integration spotify (Spotify): register this redirect URI at the provider: http://127.0.0.1:{port}/oauth/callback"
        )),
        "{}",
        output.1
    );
    assert!(
        output
            .1
            .contains("tokenvault api-keys create --name backend --scope manage"),
        "{}",
        output.1
    );
}

#[test]
fn config_check_and_serve_refuse_the_same_mistakes_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenvault.toml"),
        "pubilc_url = \"http://127.0.0.1:8080\"\n\
         [integrations.music]\nprovider = \"spotfy\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n",
    )
    .unwrap();
    let (ok, _, check) = run(tokenvault(dir.path()).args(["config", "check"]));
    assert!(!ok);
    let (ok, _, serve) = run(tokenvault(dir.path()).args(["serve", "--bind", "127.0.0.1:0"]));
    assert!(!ok);
    for stderr in [&check, &serve] {
        for expected in [
            "unknown key `pubilc_url` (did you mean `public_url`?)",
            "integrations.music.provider: unknown provider `spotfy` (did you mean `spotify`?)",
        ] {
            assert!(stderr.contains(expected), "{expected} missing:\n{stderr}");
        }
        assert_eq!(
            stderr.matches("unknown provider").count(),
            1,
            "said once:\n{stderr}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing written before the configuration validated"
    );

    // The example file, copied but not filled in.
    std::fs::write(
        dir.path().join("tokenvault.toml"),
        include_str!("../../../../tokenvault.example.toml"),
    )
    .unwrap();
    let (ok, _, stderr) = run(tokenvault(dir.path()).args(["config", "check"]));
    assert!(!ok);
    assert!(
        stderr.contains("integrations.spotify.client_id = \"your-spotify-client-id\" is the example file's placeholder"),
        "{stderr}"
    );
}

#[test]
fn only_the_working_directorys_config_file_is_read_never_a_parents() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(
        parent.path().join("tokenvault.toml"),
        "[integrations.peer]\nissuer = \"\"\n",
    )
    .unwrap();
    let dir = parent.path().join("service");
    std::fs::create_dir(&dir).unwrap();
    let (ok, stdout, stderr) = run(tokenvault(&dir).args(["config", "check"]));
    assert!(
        ok,
        "a parent directory's file was read:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("tokenvault.toml"), "{stderr}");

    // The working directory's own file is still the default.
    std::fs::write(
        dir.join("tokenvault.toml"),
        "[integrations.peer]\nissuer = \"\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(tokenvault(&dir).args(["config", "check"]));
    assert!(!ok);
    assert!(stderr.contains("integrations.peer.issuer"), "{stderr}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
                emit_on_replace: Vec::new(),
                history: Vec::new(),
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

#[test]
fn config_check_masks_secrets_and_fails_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenvault.toml"),
        "[integrations.spotify]\nprovider = \"spotify\"\nredirect_uri = \"http://127.0.0.1:8080/oauth/callback\"\n",
    )
    .unwrap();
    let secrets = [
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "spotify-secret-4411",
        "tvk_bootstrap_9911",
        "pg-password-6620",
        "whsec_2244",
        "salt-7788",
    ];
    let (ok, stdout, stderr) = run(tokenvault(dir.path())
        .args(["config", "check"])
        .env("TOKENVAULT_MASTER_KEYS", secrets[0])
        .env("SPOTIFY_CLIENT_ID", "spotify-client")
        .env("SPOTIFY_CLIENT_SECRET", secrets[1])
        .env("TOKENVAULT_API_KEYS", secrets[2])
        .env(
            "TOKENVAULT_DATABASE_URL",
            format!("postgres://tv:{}@db.internal:5432/tokenvault", secrets[3]),
        )
        .env("TOKENVAULT_WEBHOOK_URL", "https://app.example.com/hooks")
        .env("TOKENVAULT_WEBHOOK_SECRET", secrets[4])
        .env("TOKENVAULT_LOG_SALT", secrets[5]));
    assert!(ok, "a valid configuration passes: {stderr}");
    assert!(stderr.contains("configuration OK"), "{stderr}");
    for secret in secrets {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed:\n{stdout}\n{stderr}"
        );
    }
    // The effective values, env applied over the file, parse as TOML.
    let effective: toml::Table = stdout.parse().unwrap();
    assert_eq!(
        effective["database_url"].as_str(),
        Some("postgres://tv:********@db.internal:5432/tokenvault")
    );
    let spotify = effective["integrations"]["spotify"].as_table().unwrap();
    assert_eq!(spotify["client_id"].as_str(), Some("spotify-client"));
    assert_eq!(spotify["client_secret"].as_str(), Some("********"));
    assert_eq!(effective["webhook_secret"].as_str(), Some("********"));
    assert_eq!(effective["master_keys"].as_str(), Some("********"));

    // Errors: exit non-zero, each named.
    let (ok, _, stderr) = run(tokenvault(dir.path())
        .args(["config", "check"])
        .env("TOKENVAULT_ENVIRONMENT", "production")
        .env("TOKENVAULT_MASTER_KEYS", "k1:not-base64")
        .env("SPOTIFY_CLIENT_ID", "spotify-client")
        .env("TOKENVAULT_WEBHOOK_URL", "https://app.example.com/hooks"));
    assert!(!ok);
    for expected in [
        "TOKENVAULT_MASTER_KEYS",
        // The redirect URI came from the file, and the error says so.
        "integrations.spotify.redirect_uri (config file): must use https in production",
        "TOKENVAULT_WEBHOOK_SECRET",
        "error(s)",
    ] {
        assert!(stderr.contains(expected), "{expected} not named:\n{stderr}");
    }
    // A file that does not parse is an error too, not a crash.
    std::fs::write(dir.path().join("broken.toml"), "bind = [").unwrap();
    let (ok, _, stderr) =
        run(tokenvault(dir.path()).args(["--config", "broken.toml", "config", "check"]));
    assert!(!ok && stderr.contains("configuration"), "{stderr}");
    assert!(
        !dir.path().join("data/master.key").exists(),
        "check writes nothing"
    );
}

#[test]
fn every_command_has_clear_help() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, top, _) = run(tokenvault(dir.path()).arg("--help"));
    assert!(ok);
    let commands = [
        "serve",
        "migrate",
        "keys",
        "api-keys",
        "config",
        "import",
        "connections",
    ];
    for command in commands {
        let line = top
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("`{command}` missing from --help:\n{top}"));
        assert!(
            line.split_whitespace().count() > 3,
            "`{command}` has no description: {line:?}"
        );
    }
    let nested = [
        vec!["serve"],
        vec!["migrate"],
        vec!["keys", "generate"],
        vec!["keys", "rotate"],
        vec!["keys", "retire"],
        vec!["keys", "status"],
        vec!["api-keys", "create"],
        vec!["api-keys", "list"],
        vec!["api-keys", "revoke"],
        vec!["config", "check"],
        vec!["import"],
        vec!["connections", "list"],
        vec!["connections", "show"],
        vec!["connections", "refresh"],
        vec!["connections", "revoke"],
    ];
    for args in nested {
        let (ok, help, stderr) = run(tokenvault(dir.path()).args(&args).arg("--help"));
        assert!(ok, "{args:?} --help failed: {stderr}");
        let about = help.lines().next().unwrap_or_default();
        assert!(
            about.split_whitespace().count() >= 4 && !about.starts_with("Usage"),
            "{args:?} has no one-line description: {help}"
        );
        assert!(help.contains("Usage: tokenvault"), "{help}");
    }
    // Each option of api-keys create says what it is for.
    let (_, help, _) = run(tokenvault(dir.path()).args(["api-keys", "create", "--help"]));
    assert!(help.contains("read-tokens") && help.contains("manage") && help.contains("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_shown_and_revoked_from_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, key, _) = run(tokenvault(dir.path()).args(["keys", "generate", "--id", "k1"]));
    assert!(ok);
    let key = key.trim().to_owned();
    let cli = |args: &[&str]| {
        run(tokenvault(dir.path())
            .env("TOKENVAULT_MASTER_KEYS", &key)
            .args(args))
    };
    let (ok, _, stderr) = cli(&["migrate"]);
    assert!(ok, "{stderr}");

    // Connections saved by the library, as a running service would.
    let url = format!(
        "sqlite://{}",
        dir.path().join("data/tokenvault.db").display()
    );
    let store = tokenvault::store::connect(&url, &Default::default())
        .await
        .unwrap();
    let envelope = Envelope::new(Arc::new(KeyRing::parse(&key, "test").unwrap()));
    let vault = tokenvault::vault::Vault::new(
        store.clone(),
        envelope,
        Arc::new(tokenvault::domain::SystemClock),
    );
    let spotify = IntegrationKey::parse("spotify").unwrap();
    for i in 0..5 {
        let tokens = tokenvault::domain::TokenSet {
            access_token: AccessToken::new(format!("AT-{i}")),
            refresh_token: None,
            token_type: TokenType::Bearer,
            expires_at: None,
            scopes: Scopes::parse("read", " "),
        };
        vault
            .save_grant(
                &UserId::parse(format!("fan:{i}")).unwrap(),
                &spotify,
                &tokens,
                serde_json::json!({}),
                chrono::Duration::minutes(5),
            )
            .await
            .unwrap();
    }
    let dead = store
        .get(&UserId::parse("fan:3").unwrap(), &spotify)
        .await
        .unwrap()
        .unwrap();
    let mut update = dead.to_update(chrono::Utc::now());
    update.status = ConnectionStatus::NeedsReauth;
    store.update(dead.id, dead.version, &update).await.unwrap();

    let (ok, stdout, stderr) = cli(&["connections", "list", "--status", "needs_reauth"]);
    assert!(ok, "{stderr}");
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(rows[0].starts_with("fan:3 ") && rows[0].contains("needs_reauth"));
    assert!(stderr.contains("1 connection(s)"), "{stderr}");

    let (ok, stdout, stderr) = cli(&["connections", "list", "--json", "--user-prefix", "fan:"]);
    assert!(ok, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let users: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["fan:0", "fan:1", "fan:2", "fan:3", "fan:4"]);
    assert!(!stdout.contains("AT-"), "no token material");

    let (ok, stdout, stderr) = cli(&["connections", "list", "--status", "dead"]);
    assert!(!ok && stdout.trim().is_empty());
    assert!(stderr.contains("needs_reauth"), "{stderr}");

    let (ok, stdout, stderr) = cli(&["connections", "revoke", "fan:2", "spotify"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tokens erased"), "{stdout}");
    let (ok, stdout, stderr) = cli(&["connections", "show", "fan:2", "spotify"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("disconnected"), "{stdout}");
    let history: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("at "))
        .skip(1)
        .collect();
    assert_eq!(history.len(), 2, "{stdout}");
    assert!(history[0].contains("revoked") && history[1].contains("created"));
    let (ok, stdout, _) = cli(&["connections", "show", "fan:2", "spotify", "--json"]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["connection"]["status"], "disconnected");
    assert_eq!(shown["events"][0]["kind"], "revoked");

    // Refreshing needs the integration configured; the error says so.
    let (ok, _, stderr) = cli(&["connections", "refresh", "fan:1", "spotify"]);
    assert!(!ok);
    assert!(
        stderr.contains("integration spotify is not configured"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&["connections", "show", "nobody", "spotify"]);
    assert!(!ok);
    assert!(
        stderr.contains("nobody has no spotify connection"),
        "{stderr}"
    );
}

/// The README's quickstart, line for line, on a fresh directory: the OAuth
/// test peer plays Spotify (a providers file points the `spotify` entry at
/// it, and it knows the README's client id and secret), and the test plays
/// the user who opens the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_runs_verbatim_and_ends_with_a_token() {
    let readme = include_str!("../../../../README.md");
    let section = readme
        .split_once("## Quickstart")
        .expect("README has a Quickstart")
        .1;
    let block = section
        .split_once("```sh\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    let (before, after) = block
        .split_once("# open connect_url")
        .expect("the quickstart says when to open the link");
    let after = after.split_once('\n').unwrap().1;

    let peer = crate::common::Peer::start();
    peer.register(
        "your-client-id",
        "client_secret_basic",
        Some("your-client-secret"),
        "http://127.0.0.1:8080/oauth/callback",
        &["authorization_code", "refresh_token"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokenvault"), bin.join("tokenvault")).unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[providers.spotify]\nauthorization_url = \"{0}/auth\"\ntoken_url = \"{0}/token\"\n\
             userinfo_url = \"{0}/me\"\nissuer = \"{0}\"\niss_parameter_supported = true\n\
             default_scopes = [\"openid\", \"offline_access\", \"api:read\"]\n",
            peer.issuer
        ),
    )
    .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(
        home.join("script.sh"),
        format!(
            "set -euo pipefail\n{before}\necho\n\
             while [ ! -f approved ]; do sleep 0.1; done\n{after}\necho\nkill \"$!\"\nwait || true\n"
        ),
    )
    .unwrap();
    let mut child = Command::new("bash")
        .arg(home.join("script.sh"))
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", &home)
        // Outside the quickstart: Spotify is the peer, no metrics port.
        .env("TOKENVAULT_PROVIDERS_FILE", &providers)
        .env("TOKENVAULT_METRICS_BIND", "off")
        .env("TOKENVAULT_LOG_FORMAT", "json")
        .current_dir(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            sink.lock().unwrap().push(line.unwrap());
        }
    });
    // The connect session's answer, printed by the first curl.
    let deadline = Instant::now() + Duration::from_secs(60);
    let connect_url = loop {
        let found = lines.lock().unwrap().iter().find_map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["connect_url"].as_str().map(str::to_owned))
        });
        if let Some(url) = found {
            break url;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).ok();
            panic!(
                "no connect_url (is 127.0.0.1:8080 free?): {:?}\n{stderr}",
                lines.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        connect_url.starts_with("http://127.0.0.1:8080/connect/"),
        "{connect_url}"
    );
    // The user opens the link; the peer approves at once.
    let page = crate::common::browser(None)
        .get(&connect_url)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    std::fs::write(home.join("approved"), "").unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let token = lines
        .iter()
        .find_map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|v| v["access_token"].is_string())
        })
        .unwrap_or_else(|| panic!("no token read: {lines:?}"));
    assert_eq!(token["token_type"], "Bearer");
    assert!(status.success(), "{lines:?}");
    assert!(
        home.join("data/tokenvault.db").exists(),
        "a fresh data directory"
    );
}

#[test]
fn providers_list_and_show_include_a_providers_files_entries() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("providers.toml"),
        "[providers.acme]\ndisplay_name = \"Acme\"\nauthorization_url = \"https://acme.example/authorize\"\n\
         token_url = \"https://acme.example/token\"\nrefresh_token_rotates = true\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenvault.toml"),
        "providers_file = \"providers.toml\"\n",
    )
    .unwrap();
    let (ok, list, err) = run(tokenvault(dir.path()).args(["providers", "list"]));
    assert!(ok, "{err}");
    for key in ["spotify", "tidal-device", "oidc", "acme"] {
        assert!(
            list.lines()
                .any(|line| line.starts_with(&format!("{key} "))),
            "{key}: {list}"
        );
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("acme ") && l.contains("rotating")),
        "{list}"
    );

    let (ok, shown, err) = run(tokenvault(dir.path()).args(["providers", "show", "spotify"]));
    assert!(ok, "{err}");
    let spotify: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        spotify["token_url"],
        "https://accounts.spotify.com/api/token"
    );
    assert_eq!(spotify["token_auth_method"], "client_secret_basic");
    assert_eq!(spotify["refresh_token_rotates"], true);

    let (ok, _, err) = run(tokenvault(dir.path()).args(["providers", "show", "nope"]));
    assert!(!ok);
    assert!(err.contains("no catalog entry \"nope\""), "{err}");
}
