//! Several `tokenvault serve` processes behind one public URL, sharing
//! PostgreSQL and Redis: a flow may start on one and finish on another.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokenvault::domain::{ConnectionStatus, IntegrationKey, UserId};

struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn(
    config: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    env: &[(&str, String)],
) -> Instance {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenvault"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATA_DIR", dir)
        .env("TOKENVAULT_LOG_FORMAT", "json")
        .args([
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let instance = Instance {
        child: cmd.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/readyz", instance.base))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "instance on {port} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    instance
}

#[tokio::test]
async fn a_flow_started_on_one_process_completes_on_another() {
    let peer = Peer::start();
    let dir = tempfile::tempdir().unwrap();
    let database_url = tokenvault::testing::fresh_postgres_url().await;
    let redis_url = std::env::var("TOKENVAULT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (port_a, port_b) = (free_port(), free_port());
    // The public URL (what a load balancer would answer on) is instance A's.
    let public = format!("http://127.0.0.1:{port_a}");
    let callback = format!("{public}/oauth/callback");
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        "[providers.peer-public]\nalias = \"oidc\"\ntoken_auth_method = \"none\"\n",
    )
    .unwrap();
    let config = dir.path().join("tokenvault.toml");
    std::fs::write(
        &config,
        format!(
            "providers_file = {providers:?}\n\n[integrations.pkce-app]\nprovider = \"peer-public\"\nclient_id = \"pkce-app\"\n\
             redirect_uri = \"{callback}\"\nscopes = [\"openid\", \"offline_access\", \"api:read\"]\nissuer = \"{}\"\n",
            peer.issuer
        ),
    )
    .unwrap();
    peer.register(
        "pkce-app",
        "none",
        None,
        &callback,
        &["authorization_code", "refresh_token"],
    )
    .await;

    let env = [
        ("TOKENVAULT_DATABASE_URL", database_url.clone()),
        ("TOKENVAULT_REDIS_URL", redis_url),
        ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.to_owned()),
        ("TOKENVAULT_API_KEYS", API_KEY.to_owned()),
        ("TOKENVAULT_PUBLIC_URL", public.clone()),
    ];
    let a = spawn(&config, &dir.path().join("a"), port_a, &env).await;
    let b = spawn(&config, &dir.path().join("b"), port_b, &env).await;

    // The backend asks instance B for a connect session…
    let response = reqwest::Client::new()
        .post(format!("{}/v1/connect-sessions", b.base))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"user_id": "roaming-user", "integration": "pkce-app"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let connect_url = response.json::<serde_json::Value>().await.unwrap()["connect_url"]
        .as_str()
        .unwrap()
        .to_owned();
    // …whose link, on the public URL, is opened on instance A, which creates the state…
    assert!(connect_url.starts_with(&a.base), "{connect_url}");
    let at_callback = browser(Some(callback.clone()))
        .get(&connect_url)
        .send()
        .await
        .unwrap();
    let callback_with_code = location(&at_callback);
    assert!(
        callback_with_code.starts_with(&callback),
        "{callback_with_code}"
    );
    // …and the provider's callback is routed to instance B, which consumes it.
    let on_b = callback_with_code.replacen(&a.base, &b.base, 1);
    let done = reqwest::get(&on_b).await.unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());

    let store = tokenvault::store::connect(&database_url, &Default::default())
        .await
        .unwrap();
    let record = store
        .get(
            &UserId::parse("roaming-user").unwrap(),
            &IntegrationKey::parse("pkce-app").unwrap(),
        )
        .await
        .unwrap()
        .expect("connection stored in the shared database");
    assert_eq!(record.status, ConnectionStatus::Connected);
    assert!(record.refresh_token.is_some());

    // The same callback replayed on A is refused: the state was one-time across instances.
    let replay = reqwest::get(&callback_with_code).await.unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(
        replay.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_state"
    );
}
