//! Several `tokenvault serve` processes behind one public URL, sharing
//! PostgreSQL and Redis: a flow may start on one and finish on another.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use tokenvault::domain::{ConnectionStatus, IntegrationKey, UserId};

struct Instance {
    child: Child,
    base: String,
}

/// Waits until every outbox event is delivered (a delivered event is never
/// claimed again), then stops `instances` and waits for their exit: after
/// this, what a webhook receiver holds is final, with no wall-clock wait.
async fn drain_outbox_and_stop(database_url: &str, instances: Vec<Instance>) {
    let store = tokenvault::store::connect(database_url, &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.count_pending_events().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "webhook events still pending after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut instance in instances {
        instance.child.kill().unwrap();
        instance.child.wait().unwrap();
    }
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
        // No metrics listener: a port-0 one could take a port another
        // instance of the test picked with free_port().
        .env("TOKENVAULT_METRICS_BIND", "off")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let user_browser = browser(Some(callback.clone()));
    let at_callback = user_browser.get(&connect_url).send().await.unwrap();
    let callback_with_code = location(&at_callback);
    assert!(
        callback_with_code.starts_with(&callback),
        "{callback_with_code}"
    );
    // …and the provider's callback is routed to instance B, which consumes it.
    let on_b = callback_with_code.replacen(&a.base, &b.base, 1);
    // (Cookies are per host, not per port: the binding cookie set by A
    // goes to B, as it would behind one public host name.)
    let done = user_browser.get(&on_b).send().await.unwrap();
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // Instance 0 served the old token a moment ago and may keep serving it
    // (still valid) from its token cache, but for at most `token_cache_ms`.
    let started = Instant::now();
    loop {
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
        let token = after_forced.json::<serde_json::Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        if !tokens.contains(&token) {
            break;
        }
        assert!(
            started.elapsed() < TOKEN_CACHE + CACHE_SLACK,
            "the forced refresh's token must be served within token_cache_ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The token cache's lifetime (`token_cache_ms`, default): how much later
/// one instance may see another's refresh.
const TOKEN_CACHE: Duration = Duration::from_millis(1000);
/// Request and scheduling time on top of it.
const CACHE_SLACK: Duration = Duration::from_millis(1000);

/// An event whose delivery failed is still in the outbox when the process is
/// killed; the next process delivers it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let second = cluster.start("b", port).await;
    // The first retry is due ≈5 s after the failed attempt.
    let created = receiver
        .wait_for(SECRET, "connection.created", 1, Duration::from_secs(20))
        .await;
    assert_eq!(created.len(), 1, "delivered after the restart");
    assert_eq!(created[0]["data"]["user_id"], "hooked");
    // And only once: once nothing is pending and the instance is gone, no
    // more can come.
    drain_outbox_and_stop(&cluster.database_url, vec![second]).await;
    assert_eq!(receiver.events(SECRET, "connection.created").len(), 1);
    assert_eq!(store.count_pending_events().await.unwrap(), 0);
}

/// The lifecycle with every step on a different process: a connection made
/// through A, read on B, refreshed on C, its grant's death noticed on B,
/// an import on C, a revocation on B — with keys created by the CLI and each
/// webhook event delivered once although three deliverers run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_life_spread_over_three_instances() {
    const CLIENT: &str = "spread-app";
    const HOOK_SECRET: &str = "whsec_spread";
    let peer = Peer::start();
    let receiver = WebhookReceiver::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let cluster = cluster(
        &peer,
        CLIENT,
        &ports,
        &format!(
            "webhook_url = \"{}\"\nwebhook_secret = \"{HOOK_SECRET}\"\nscheduler_enabled = false\n",
            receiver.url
        ),
    )
    .await;
    let [a, b, c] = [
        cluster.start("a", ports[0]).await,
        cluster.start("b", ports[1]).await,
        cluster.start("c", ports[2]).await,
    ];
    // A key made by the CLI works on every instance (they share the table).
    let created = Command::new(env!("CARGO_BIN_EXE_tokenvault"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATABASE_URL", &cluster.database_url)
        .args([
            "api-keys", "create", "--name", "backend", "--scope", "manage",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let manage_key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, instance: &Instance, path: &str, key: &str| {
        http.request(method, format!("{}{path}", instance.base))
            .bearer_auth(key.to_owned())
    };
    let connection = format!("/v1/users/spreader/connections/{CLIENT}");
    let token_on = |instance: &Instance| {
        let request = call(
            reqwest::Method::GET,
            instance,
            &format!("{connection}/token"),
            &manage_key,
        );
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };

    cluster.connect("spreader", CLIENT).await;
    let first = token_on(&b).await;
    assert_eq!(
        first,
        token_on(&c).await,
        "every instance hands out the same token"
    );
    let refreshed = call(
        reqwest::Method::POST,
        &c,
        &format!("{connection}/refresh"),
        &manage_key,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(refreshed.status(), 200);
    let second = token_on(&a).await;
    assert_ne!(first, second);
    // B served `first` a moment ago and may keep serving it (still valid)
    // from its token cache, but for at most `token_cache_ms`.
    let started = Instant::now();
    loop {
        let on_b = token_on(&b).await;
        if on_b == second {
            break;
        }
        assert_eq!(on_b, first);
        assert!(
            started.elapsed() < TOKEN_CACHE + CACHE_SLACK,
            "C's refresh must be visible on B within token_cache_ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The grant dies at the provider; B finds out, A reports it.
    peer.hook("revoke-grants", serde_json::json!({})).await;
    let dead = call(
        reqwest::Method::POST,
        &b,
        &format!("{connection}/refresh"),
        &manage_key,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(dead.status(), 409);
    let status: serde_json::Value = call(reqwest::Method::GET, &a, &connection, &manage_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "needs_reauth");

    // Import (admin) on C, read on A, revoke on B, gone on C.
    let importer = format!("/v1/users/importer/connections/{CLIENT}");
    let put = call(reqwest::Method::PUT, &c, &importer, &manage_key)
        .json(&serde_json::json!({"access_token": "legacy-access-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403, "import needs admin");
    let put = call(reqwest::Method::PUT, &c, &importer, API_KEY)
        .json(&serde_json::json!({"access_token": "legacy-access-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let read: serde_json::Value = call(
        reqwest::Method::GET,
        &a,
        &format!("{importer}/token"),
        &manage_key,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(read["access_token"], "legacy-access-1");
    let revoked = call(reqwest::Method::DELETE, &b, &importer, &manage_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let gone = call(
        reqwest::Method::GET,
        &c,
        &format!("{importer}/token"),
        &manage_key,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(gone.status(), 404);

    // Each event once, though all three instances deliver.
    let within = Duration::from_secs(30);
    for (event, count) in [
        ("connection.created", 2),
        ("connection.needs_reauth", 1),
        ("connection.revoked", 1),
    ] {
        let events = receiver.wait_for(HOOK_SECRET, event, count, within).await;
        assert_eq!(events.len(), count, "{event}");
    }
    drain_outbox_and_stop(&cluster.database_url, vec![a, b, c]).await;
    let deliveries = receiver.deliveries.lock().unwrap().len();
    let ids: std::collections::HashSet<String> = receiver
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), deliveries, "no event was delivered twice");
    assert_eq!(deliveries, 4);
}

/// SIGTERM while a token request waits on a slow provider refresh: the
/// request still gets its refreshed token, the process exits cleanly, and
/// the refresh lease is released (another instance could refresh at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_refresh_finish_and_release_its_lease() {
    const CLIENT: &str = "graceful-app";
    let peer = Peer::start();
    let ports = [free_port()];
    let cluster = cluster(&peer, CLIENT, &ports, "scheduler_enabled = false\n").await;
    let mut instance = cluster.start("a", ports[0]).await;
    peer.hook("config", serde_json::json!({"access_token_ttl": 30}))
        .await;
    cluster.connect("leaver", CLIENT).await;
    peer.hook("config", serde_json::json!({"access_token_ttl": 3600}))
        .await;
    peer.hook(
        "faults",
        serde_json::json!({"faults": [{"delay_ms": 2000, "grant_type": "refresh_token"}]}),
    )
    .await;
    let request = tokio::spawn(
        reqwest::Client::new()
            .get(format!(
                "{}/v1/users/leaver/connections/{CLIENT}/token",
                instance.base
            ))
            .bearer_auth(API_KEY)
            .send(),
    );
    // Signal once the refresh is at the provider.
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.stats().await["token_requests"]["refresh_token"].as_u64() != Some(1) {
        assert!(Instant::now() < deadline, "the refresh never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Command::new("kill")
        .args(["-TERM", &instance.child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "the in-flight request completed");
    let body: serde_json::Value = response.json().await.unwrap();
    let exit = instance.child.wait().unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");

    let store = tokenvault::store::connect(&cluster.database_url, &Default::default())
        .await
        .unwrap();
    let record = store
        .get(
            &UserId::parse("leaver").unwrap(),
            &IntegrationKey::parse(CLIENT).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(record.lease.is_none(), "lease released: {:?}", record.lease);
    assert_eq!(record.status, ConnectionStatus::Connected);
    let stats = peer.stats().await;
    assert_eq!(stats["refresh_by_client"][CLIENT], 1);
    assert!(body["expires_at"].is_string());
}
