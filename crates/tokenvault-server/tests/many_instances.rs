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
        // Processes run side by side: no fixed metrics port.
        .env("TOKENVAULT_METRICS_BIND", "127.0.0.1:0")
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

/// A config file with one confidential client on the peer, and the
/// environment shared by every instance of a test.
struct Cluster {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    public: String,
    database_url: String,
}

async fn cluster(peer: &Peer, client: &str, ports: &[u16], extra: &str) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let database_url = tokenvault::testing::fresh_postgres_url().await;
    let redis_url = std::env::var("TOKENVAULT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let public = format!("http://127.0.0.1:{}", ports[0]);
    let callback = format!("{public}/oauth/callback");
    let config = dir.path().join("tokenvault.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[integrations.{client}]\nprovider = \"oidc\"\nclient_id = \"{client}\"\nclient_secret = \"{client}-secret\"\n\
             redirect_uri = \"{callback}\"\nscopes = [\"openid\", \"offline_access\", \"api:read\"]\nissuer = \"{}\"\n",
            peer.issuer
        ),
    )
    .unwrap();
    peer.register(
        client,
        "client_secret_basic",
        Some(&format!("{client}-secret")),
        &callback,
        &["authorization_code", "refresh_token"],
    )
    .await;
    let env = vec![
        ("TOKENVAULT_DATABASE_URL", database_url.clone()),
        ("TOKENVAULT_REDIS_URL", redis_url),
        ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.to_owned()),
        ("TOKENVAULT_API_KEYS", API_KEY.to_owned()),
        ("TOKENVAULT_PUBLIC_URL", public.clone()),
    ];
    Cluster {
        dir,
        config,
        env,
        public,
        database_url,
    }
}

impl Cluster {
    async fn start(&self, name: &str, port: u16) -> Instance {
        spawn(&self.config, &self.dir.path().join(name), port, &self.env).await
    }

    /// Runs the browser flow for `user` through the public URL.
    async fn connect(&self, user: &str, client: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/connect-sessions", self.public))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({"user_id": user, "integration": client}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let connect_url = response.json::<serde_json::Value>().await.unwrap()["connect_url"]
            .as_str()
            .unwrap()
            .to_owned();
        let page = browser(None).get(&connect_url).send().await.unwrap();
        assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    }
}

/// The headline race: 300 concurrent token requests for one near-expiry
/// connection, spread over three processes, against a provider that
/// rotates refresh tokens and revokes the grant on any reuse.
#[tokio::test]
async fn three_processes_300_requests_one_refresh() {
    const CLIENT: &str = "race-app";
    let peer = Peer::start();
    let ports = [free_port(), free_port(), free_port()];
    let cluster = cluster(&peer, CLIENT, &ports, "").await;
    let instances = [
        cluster.start("a", ports[0]).await,
        cluster.start("b", ports[1]).await,
        cluster.start("c", ports[2]).await,
    ];
    // Tokens from this connect live 30 s: inside the default min_ttl (60 s).
    peer.hook("config", serde_json::json!({"access_token_ttl": 30}))
        .await;
    cluster.connect("racer", CLIENT).await;
    peer.hook("config", serde_json::json!({"access_token_ttl": 3600}))
        .await;
    peer.hook("reset", serde_json::json!({})).await;
    let store = tokenvault::store::connect(&cluster.database_url, &Default::default())
        .await
        .unwrap();
    let user = UserId::parse("racer").unwrap();
    let key = IntegrationKey::parse(CLIENT).unwrap();
    let before = store.get(&user, &key).await.unwrap().unwrap();

    let http = reqwest::Client::new();
    let requests = (0..300).map(|i| {
        let url = format!(
            "{}/v1/users/racer/connections/{CLIENT}/token",
            instances[i % 3].base
        );
        let http = http.clone();
        async move {
            let response = http.get(url).bearer_auth(API_KEY).send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        }
    });
    let tokens: std::collections::BTreeSet<String> = futures::future::join_all(requests)
        .await
        .into_iter()
        .collect();

    let stats = peer.stats().await;
    assert_eq!(
        stats["refresh_by_client"][CLIENT], 1,
        "exactly one refresh grant reached the provider: {stats}"
    );
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    assert_eq!(
        tokens.len(),
        1,
        "every request got the same token: {tokens:?}"
    );
    let after = store.get(&user, &key).await.unwrap().unwrap();
    assert_eq!(after.status, ConnectionStatus::Connected);
    assert_ne!(
        after.access_token, before.access_token,
        "a new token was stored"
    );
    assert!(after.lease.is_none(), "lease released");

    // The grant is alive: a forced refresh on another instance succeeds.
    let forced = http
        .post(format!(
            "{}/v1/users/racer/connections/{CLIENT}/refresh",
            instances[2].base
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 200, "{}", forced.text().await.unwrap());
    assert_eq!(peer.stats().await["refresh_by_client"][CLIENT], 2);
    let after_forced = http
        .get(format!(
            "{}/v1/users/racer/connections/{CLIENT}/token",
            instances[0].base
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(after_forced.status(), 200);
    assert!(
        !tokens.contains(
            after_forced.json::<serde_json::Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
        )
    );
}

/// An event whose delivery failed is still in the outbox when the process is
/// killed; the next process delivers it, once.
#[tokio::test]
async fn a_pending_webhook_survives_a_killed_process() {
    const CLIENT: &str = "hook-app";
    const SECRET: &str = "whsec_restart";
    let peer = Peer::start();
    let port = free_port();
    // Nothing listens here until the receiver starts.
    let hook_port = free_port();
    let extra = format!(
        "webhook_url = \"http://127.0.0.1:{hook_port}/hook\"\nwebhook_secret = \"{SECRET}\"\n"
    );
    let cluster = cluster(&peer, CLIENT, &[port], &extra).await;
    let mut first = cluster.start("a", port).await;
    cluster.connect("hooked", CLIENT).await;
    // Let the deliverer try (and fail) at least once.
    let store = tokenvault::store::connect(&cluster.database_url, &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempted: Option<(i32,)> =
            sqlx::query_as("SELECT attempts FROM webhook_outbox WHERE attempts > 0")
                .fetch_optional(&sqlx::PgPool::connect(&cluster.database_url).await.unwrap())
                .await
                .unwrap();
        if attempted.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery attempt was made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.count_pending_events().await.unwrap(), 1);
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let receiver = WebhookReceiver::start_on(
        tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
            .await
            .unwrap(),
    )
    .await;
    let _second = cluster.start("b", port).await;
    // The first retry is due ≈5 s after the failed attempt.
    let created = receiver
        .wait_for(SECRET, "connection.created", 1, Duration::from_secs(20))
        .await;
    assert_eq!(created.len(), 1, "delivered after the restart");
    assert_eq!(created[0]["data"]["user_id"], "hooked");
    // And only once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.events(SECRET, "connection.created").len(), 1);
    assert_eq!(store.count_pending_events().await.unwrap(), 0);
}
