//! Harness: the OAuth test peer (a real oidc-provider on loopback) and the
//! service itself, wired exactly as `serve` wires it, on 127.0.0.1:0.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use secrecy::SecretString;
use serde_json::{Value, json};
pub use tokenvault_server::app::Overrides;
use tokenvault_server::app::{App, Stopped};
use tokenvault_server::config::Config;
use tokenvault_server::http::AppState;

pub const API_KEY: &str = "tvk_test_key";
pub const MASTER_KEYS: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

pub struct Peer {
    child: Child,
    pub issuer: String,
    http: reqwest::Client,
}

impl Peer {
    /// Starts `tests/peer/server.mjs`; fails (never skips) without Node or
    /// its packages.
    pub fn start() -> Peer {
        Self::start_on(0)
    }

    /// A peer listening on `port` (0: any), so a test can name its issuer
    /// before it runs.
    pub fn start_on(port: u16) -> Peer {
        Self::start_with(port, &[])
    }

    /// A peer on `port` with extra settings (`PEER_CLIENT_AUTH_METHODS`, …;
    /// see tests/peer/server.mjs).
    pub fn start_with(port: u16, env: &[(&str, &str)]) -> Peer {
        // Node very rarely hangs while starting (seen once in CI: the main
        // thread parked on a futex before listening). A peer that is not
        // ready in time is killed and started again; three misses fail.
        for _ in 0..3 {
            if let Some(peer) = Self::try_start(std::time::Duration::from_secs(30), port, env) {
                return peer;
            }
        }
        panic!("the OAuth test peer did not become ready three times in a row");
    }

    fn try_start(
        ready_within: std::time::Duration,
        port: u16,
        env: &[(&str, &str)],
    ) -> Option<Peer> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/peer/server.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .envs(env.iter().copied())
            .env("PEER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "node is required for the OAuth test peer; run scripts/test.sh, which installs it",
            );
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let Ok(line) = receiver.recv_timeout(ready_within) else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the OAuth test peer did not start (run `npm ci` in tests/peer, or scripts/test.sh): {line:?}"));
        Some(Peer {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            http: reqwest::Client::new(),
        })
    }

    pub async fn hook(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/__test/{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "peer hook {path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// `GET /__test/{path}` on the peer.
    pub async fn hook_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/__test/{path}", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn register(
        &self,
        client_id: &str,
        auth_method: &str,
        secret: Option<&str>,
        redirect_uri: &str,
        grant_types: &[&str],
    ) {
        let mut client = json!({
            "client_id": client_id,
            "token_endpoint_auth_method": auth_method,
            "redirect_uris": [redirect_uri],
            "grant_types": grant_types,
        });
        if let Some(secret) = secret {
            client["client_secret"] = json!(secret);
        }
        self.hook("clients", client).await;
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Service {
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub config: Config,
    /// Ends [`App::run_until`]; taken by [`Service::stop`] or on drop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<Stopped>>>,
    _dir: tempfile::TempDir,
}

/// A fresh service on its own SQLite file, serving the API only (no
/// background work). `configure` gets the base URL (known before start-up,
/// so redirect URIs can point at it).
pub async fn start_service(configure: impl FnOnce(&mut Config, &str)) -> Service {
    start_app(configure, |overrides| {
        overrides.without_background_work = true
    })
    .await
}

/// [`start_service`] plus the background work `serve` runs: the refresh
/// scheduler (if `scheduler_enabled`), the bulk runner (if `bulk_enabled`),
/// webhook delivery (if configured), the device poller, the state purger.
pub async fn start_service_with_workers(configure: impl FnOnce(&mut Config, &str)) -> Service {
    start_app(configure, |_| {}).await
}

/// The service as `tokenvault serve` starts it ([`App::build`], then
/// [`App::run_until`]), on 127.0.0.1:0 with its own data directory, the
/// test master key and API key, and no metrics listener.
pub async fn start_app(
    configure: impl FnOnce(&mut Config, &str),
    overrides: impl FnOnce(&mut Overrides),
) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        master_keys: Some(SecretString::from(MASTER_KEYS)),
        api_keys: vec![SecretString::from(API_KEY)],
        public_url: Some(url::Url::parse(&base).unwrap()),
        metrics_bind: None,
        ..Config::default()
    };
    configure(&mut config, &base);
    let mut chosen = Overrides {
        listener: Some(listener),
        ..Overrides::default()
    };
    overrides(&mut chosen);
    let app = App::build(config.clone(), chosen)
        .await
        .expect("service starts");
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Service {
        base,
        state,
        http: reqwest::Client::new(),
        config,
        stop: Some(stop),
        running: Some(running),
        _dir: dir,
    }
}

impl Service {
    /// Stops the service as SIGTERM does and checks that it left nothing
    /// behind: every background task ended within the grace period, every
    /// refreshed token is stored, and no lease of this instance is still
    /// held in the database.
    pub async fn stop(mut self) {
        self.stop_and_check().await;
    }

    async fn stop_and_check(&mut self) {
        let (Some(stop), Some(running)) = (self.stop.take(), self.running.take()) else {
            return;
        };
        let _ = stop.send(());
        let stopped = running
            .await
            .expect("run_until does not panic")
            .expect("run_until ends cleanly");
        assert!(
            stopped.within_grace,
            "background work was still running after the shutdown grace"
        );
        assert!(stopped.journal_drained, "refreshed tokens left unstored");
        let held = held_leases(&self.config, self.state.vault.owner()).await;
        assert!(held.is_empty(), "leases still held after stop: {held:?}");
    }
}

/// A test that ends without [`Service::stop`] gets the same checks when the
/// service is dropped (skipped while the test is already failing). Needs a
/// multi-threaded runtime: the service's tasks finish on the other workers.
impl Drop for Service {
    fn drop(&mut self) {
        if self.running.is_none() || std::thread::panicking() {
            return;
        }
        let handle = tokio::runtime::Handle::try_current()
            .expect("a test that owns its runtime calls `runtime.block_on(service.stop())`");
        tokio::task::block_in_place(|| handle.block_on(self.stop_and_check()));
    }
}

/// Unexpired leases in any table held by `owner` or its workers
/// (`owner/device`, `owner/webhooks`), as `table: id` lines.
pub async fn held_leases(config: &Config, owner: &str) -> Vec<String> {
    let url = config.database_url();
    let now = chrono::Utc::now().timestamp_millis();
    let owned = format!("{owner}/%");
    let tables = [
        ("connections", "lease_expires_at"),
        ("device_sessions", "lease_expires_at"),
        ("webhook_outbox", "lease_expires_at"),
        ("bulk_actions", "lease_until"),
    ];
    let sql = tables
        .iter()
        .map(|(table, until)| {
            format!(
                "SELECT '{table}: ' || CAST(id AS TEXT) FROM {table} \
                 WHERE (lease_owner = $1 OR lease_owner LIKE $2) AND {until} > $3"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    // The same query on either backend's pool.
    macro_rules! held_on {
        ($pool:expr) => {{
            let pool = $pool.await.unwrap();
            let held = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(&owned)
                .bind(now)
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            held
        }};
    }
    if url.starts_with("sqlite:") {
        held_on!(sqlx::SqlitePool::connect(&url))
    } else {
        held_on!(sqlx::PgPool::connect(&url))
    }
}

/// A webhook endpoint that records every delivery (headers and raw body).
pub struct WebhookReceiver {
    pub url: String,
    pub deliveries: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(listener: tokio::net::TcpListener) -> Self {
        let deliveries: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>> =
            Default::default();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let sink = deliveries.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push((headers, body));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, deliveries }
    }

    /// Deliveries of `event_type` so far, as parsed bodies, after checking
    /// each signature with `secret`.
    pub fn events(&self, secret: &str, event_type: &str) -> Vec<Value> {
        let secret = SecretString::from(secret);
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(headers, body)| {
                let signature = headers["tokenvault-signature"].to_str().unwrap();
                tokenvault::events::verify_signature(
                    &secret,
                    signature,
                    body.as_bytes(),
                    chrono::Utc::now(),
                    std::time::Duration::from_secs(300),
                )
                .unwrap_or_else(|err| panic!("webhook signature: {err}"));
                let body: Value = serde_json::from_str(body).unwrap();
                (body["type"] == event_type).then_some(body)
            })
            .collect()
    }

    /// Waits (up to `within`) until `count` deliveries of `event_type` arrived.
    pub async fn wait_for(
        &self,
        secret: &str,
        event_type: &str,
        count: usize,
        within: std::time::Duration,
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let events = self.events(secret, event_type);
            if events.len() >= count || std::time::Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/connect-sessions` → connect_url.
    pub async fn connect_url(
        &self,
        user: &str,
        integration: &str,
        redirect_to: Option<&str>,
    ) -> String {
        let mut body = json!({ "user_id": user, "integration": integration });
        if let Some(target) = redirect_to {
            body["redirect_to"] = json!(target);
        }
        let response = self.post_json("/v1/connect-sessions", body).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["connect_url"].as_str().unwrap().to_owned()
    }
}

/// A browser: keeps cookies, follows redirects, but stops before reaching
/// `stop_at` (a URL prefix), returning that redirect response instead.
pub fn browser(stop_at: Option<String>) -> reqwest::Client {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > 15 {
            attempt.error("too many redirects")
        } else if stop_at
            .as_deref()
            .is_some_and(|prefix| attempt.url().as_str().starts_with(prefix))
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(policy)
        .build()
        .unwrap()
}

pub fn location(response: &reqwest::Response) -> String {
    response.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A port nothing listens on right now (for processes that need it up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `key` field of every object in `body[list]`.
pub fn keys_of<'a>(body: &'a Value, list: &str) -> Vec<&'a str> {
    body[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["key"].as_str().unwrap())
        .collect()
}

/// Whether `user` has a stored connection for `integration`.
pub async fn connection_exists(service: &Service, user: &str, integration: &str) -> bool {
    service
        .state
        .vault
        .store()
        .get(
            &tokenvault::domain::UserId::parse(user).unwrap(),
            &tokenvault::domain::IntegrationKey::parse(integration).unwrap(),
        )
        .await
        .unwrap()
        .is_some()
}

/// Connects `user` to `client` through the browser flow with an access
/// token living `ttl` seconds (later tokens live an hour), then resets the
/// peer's counters.
pub async fn connect_with_ttl(peer: &Peer, service: &Service, user: &str, client: &str, ttl: u64) {
    peer.hook("config", json!({"access_token_ttl": ttl})).await;
    let page = browser(None)
        .get(service.connect_url(user, client, None).await)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    peer.hook("config", json!({"access_token_ttl": 3600})).await;
    peer.hook("reset", json!({})).await;
}

/// A `tokenvault serve` child whose stderr is collected line by line.
pub struct Process {
    pub child: Child,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(config: &std::path::Path, dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        Self::spawn_wrapped(&[], config, dir, env)
    }

    /// [`Process::spawn`] under a wrapper command (`prlimit --nofile=…`).
    pub fn spawn_wrapped(
        wrapper: &[&str],
        config: &std::path::Path,
        dir: &std::path::Path,
        env: &[(&str, String)],
    ) -> Self {
        let binary = env!("CARGO_BIN_EXE_tokenvault");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TOKENVAULT_DATA_DIR", dir)
            .env("TOKENVAULT_LOG_FORMAT", "json")
            .args(["--config", config.to_str().unwrap(), "serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        // Drains the pipe for the process's whole life so logging never blocks.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// The rest of the first stderr line starting with `prefix`.
    pub async fn line_after(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(rest) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find_map(|line| line.strip_prefix(prefix))
            {
                return rest.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {prefix:?} line; stderr:\n{}",
                self.stderr.lock().unwrap().join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn has_line(&self, prefix: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.starts_with(prefix))
    }

    /// SIGKILL: the process dies mid-work, as in a crash.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    /// SIGTERM, then the exit status once the process and its stderr ended
    /// (so every line it printed is collected).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
