//! The standing fault suite (docs/refresh-protocol.md, docs/reliability.md):
//! real `tokenvault serve` processes, PostgreSQL, Redis, the rotating peer
//! with reuse detection and a TCP fault proxy between the service and the
//! peer's token endpoint, with timing chosen the way an adversary would.
//!
//! Every scenario ends with the same checks: grants revoked at the peer = 0
//! (or, where the scenario loses provider answers on purpose, no more than
//! the outcomes tokenvault counted as unknown), connections wrongly
//! `needs_reauth` = 0, rotated refresh tokens lost = 0 (the peer's last
//! issued refresh token of every live grant is the one the database holds),
//! and no reader got a 500 (a 503 only with a stable code).
//!
//! `TOKENVAULT_CHAOS_SIZE=soak` (scripts/chaos.sh --size soak) multiplies
//! connections, durations and iterations. Scenarios run one at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn soak() -> bool {
    std::env::var("TOKENVAULT_CHAOS_SIZE").is_ok_and(|s| s == "soak")
}

/// `n` in CI, `n * factor` in a soak run.
fn size(n: usize, factor: usize) -> usize {
    if soak() { n * factor } else { n }
}

fn report(line: String) {
    eprintln!("chaos: {line}");
    if let Ok(path) = std::env::var("TOKENVAULT_CHAOS_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }
}

// --- real parts -------------------------------------------------------------

fn as_postgres(program: &Path) -> Command {
    // PostgreSQL refuses to run as root; CI runs as root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temp dir, own port),
/// so it can be stopped and started; never the shared one.
struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    fn start() -> Self {
        let versions = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (apt install postgresql)");
        let mut bins: Vec<PathBuf> = versions
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().expect("an initdb binary");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let cluster = Self {
            _dir: dir,
            data,
            bin,
            port: free_port(),
        };
        cluster.up();
        cluster
    }

    fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.data.display()
        );
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.data.join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }

    /// Stops the server (clients are disconnected), as in an outage.
    fn down(&self) {
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

/// A Redis server of the test's own.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
        };
        redis.up();
        redis
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

/// What the fault proxy does to one request.
#[derive(Debug, Clone)]
enum Action {
    /// Forward it after a delay (a slow provider).
    Delay(Duration),
    /// Reset the connection without forwarding (the provider never saw it).
    ResetBefore,
    /// Forward it, read the provider's answer, then reset the connection
    /// instead of answering: the provider rotated, the answer is lost.
    ResetAfter,
    /// Answer with this status without forwarding (429/503 bursts).
    Status(u16, Option<u64>),
    /// Neither forward nor answer; hold the connection this long, then
    /// reset it (a provider that hangs).
    Stall(Duration),
}

#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    /// Applies to this many more requests; `None` = until cleared.
    count: Option<u32>,
    /// A matching request takes the rule with this probability.
    probability: f64,
}

impl Rule {
    fn always(action: Action) -> Self {
        Self {
            action,
            count: None,
            probability: 1.0,
        }
    }
}

#[derive(Default)]
struct ProxyState {
    rules: Vec<Rule>,
    rng: u64,
    /// Refresh token presented → refresh token the provider answered with.
    rotations: HashMap<String, String>,
    /// Refresh tokens issued in answers that were reset on purpose (or
    /// that the client was gone for).
    swallowed: Vec<String>,
    /// Refresh tokens presented again after the provider had rotated them.
    reused: Vec<String>,
    applied: BTreeMap<String, u64>,
    requests: u64,
    /// Refresh requests received and not yet answered.
    in_flight: u64,
}

/// A TCP fault proxy of our own between the service and the peer's token
/// endpoint: it sees every refresh request and answer (so it knows which
/// refresh token the provider issued for which), and applies the current
/// rules to refresh requests (delay, reset before or after the provider
/// processed it, 429/503 bursts). One request per client connection: the
/// forwarded request asks for `Connection: close`, and so does the answer.
struct FaultProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
    /// Its own runtime: the test's blocking calls (waiting for a process to
    /// exit, pg_ctl) must never stall the traffic it carries.
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    fn start(peer: &Peer) -> Self {
        let upstream = peer.issuer.trim_start_matches("http://").to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            rng: 0x9e37_79b9_7f4a_7c15,
            ..ProxyState::default()
        }));
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = proxy_one(client, &upstream, &state).await;
                });
            }
        });
        Self {
            port,
            state,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn rules(&self, rules: Vec<Rule>) {
        self.state.lock().unwrap().rules = rules;
    }

    fn stats(&self) -> String {
        let state = self.state.lock().unwrap();
        format!(
            "{} refresh requests, faults {:?}, {} answers lost on purpose",
            state.requests,
            state.applied,
            state.swallowed.len()
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of a JSON string field in raw bytes (no decoding needed for
/// the peer's opaque tokens).
fn json_field(body: &[u8], field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = find(body, key.as_bytes())? + key.len();
    let end = body[start..].iter().position(|b| *b == b'"')? + start;
    Some(String::from_utf8_lossy(&body[start..end]).into_owned())
}

/// Counts a refresh request in [`ProxyState::in_flight`] until dropped.
struct InFlight<'a>(&'a Mutex<ProxyState>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

/// Makes dropping `stream` send a TCP RST instead of a FIN.
#[allow(deprecated)] // A zero linger never blocks on drop; it only resets.
fn reset(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_linger(Some(Duration::ZERO))
}

async fn proxy_one(
    mut client: tokio::net::TcpStream,
    upstream: &str,
    state: &Mutex<ProxyState>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = find(&buffer, b"\r\n\r\n") {
            break at + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    let presented = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v.into_owned());
    let action = match &presented {
        None => None,
        Some(_) => {
            let mut state = state.lock().unwrap();
            state.requests += 1;
            state.in_flight += 1;
            let mut chosen = None;
            for index in 0..state.rules.len() {
                state.rng ^= state.rng << 13;
                state.rng ^= state.rng >> 7;
                state.rng ^= state.rng << 17;
                let roll = (state.rng % 10_000) as f64 / 10_000.0;
                if roll >= state.rules[index].probability {
                    continue;
                }
                let rule = &mut state.rules[index];
                let action = rule.action.clone();
                if let Some(count) = &mut rule.count {
                    *count -= 1;
                    if *count == 0 {
                        state.rules.remove(index);
                    }
                }
                chosen = Some(action);
                break;
            }
            if let Some(action) = &chosen {
                let name = format!("{action:?}");
                let name = name.split('(').next().unwrap().to_owned();
                *state.applied.entry(name).or_default() += 1;
            }
            chosen
        }
    };
    let in_flight = presented.as_ref().map(|_| InFlight(state));
    match action {
        Some(Action::ResetBefore) => {
            reset(&client)?;
            return Ok(());
        }
        Some(Action::Status(status, retry_after)) => {
            let body = if status == 429 {
                r#"{"error":"rate_limited"}"#
            } else {
                r#"{"error":"temporarily_unavailable"}"#
            };
            let retry = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let answer = format!(
                "HTTP/1.1 {status} Fault\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            return Ok(());
        }
        Some(Action::Stall(hold)) => {
            tokio::time::sleep(hold).await;
            reset(&client)?;
            return Ok(());
        }
        Some(Action::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Action::ResetAfter) | None => {}
    }
    // A refresh token the provider already rotated, reaching it again: the
    // provider will revoke the grant (checked as it is forwarded, after any
    // delay, as the provider sees the order).
    if let Some(presented) = &presented {
        let mut state = state.lock().unwrap();
        if state.rotations.contains_key(presented) {
            state.reused.push(presented.clone());
        }
    }
    // Forward with `Connection: close` so the answer ends at EOF.
    let mut forwarded = String::new();
    for line in head.trim_end().split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(name, _)| name.eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&body).await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    drop(in_flight);
    let issued = json_field(&answer, "refresh_token");
    if let (Some(presented), Some(issued)) = (&presented, &issued) {
        state
            .lock()
            .unwrap()
            .rotations
            .insert(presented.clone(), issued.clone());
    }
    let delivered = if matches!(action, Some(Action::ResetAfter)) {
        reset(&client)?;
        false
    } else {
        client.write_all(&answer).await.is_ok() && client.shutdown().await.is_ok()
    };
    if !delivered && let Some(issued) = issued {
        state.lock().unwrap().swallowed.push(issued);
    }
    Ok(())
}

// --- the service ------------------------------------------------------------

/// One `tokenvault serve` process; its data directory (and so its refresh
/// journal) survives a restart.
struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    process: Option<Process>,
    /// Log lines of earlier incarnations.
    past_logs: Vec<String>,
}

impl Node {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self, config: &Path) {
        let mut env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        env.push(("TOKENVAULT_BIND", format!("127.0.0.1:{}", self.port)));
        env.push(("TOKENVAULT_METRICS_BIND", "off".into()));
        env.push(("RUST_LOG", "info".into()));
        self.process = Some(Process::spawn(config, &self.dir, &env));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("{}/readyz", self.base()))
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready:\n{}",
                self.name,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
            self.past_logs
                .extend(process.stderr.lock().unwrap().iter().cloned());
        }
    }

    /// SIGTERM, and the exit; a process that fails to exit cleanly fails
    /// the scenario.
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let status = process.terminate();
            self.past_logs
                .extend(process.stderr.lock().unwrap().iter().cloned());
            assert!(status.success(), "{} exited with {status}", self.name);
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().unwrap().child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn logs(&self) -> Vec<String> {
        let mut lines = self.past_logs.clone();
        if let Some(process) = &self.process {
            lines.extend(process.stderr.lock().unwrap().iter().cloned());
        }
        lines
    }
}

struct Setup {
    rates: Vec<u32>,
    access_ttl: u64,
    extra_config: String,
    /// Per node: a test clock offset in milliseconds.
    clock_offsets: Vec<i64>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            rates: vec![50, 50],
            access_ttl: 40,
            extra_config: String::new(),
            clock_offsets: Vec::new(),
        }
    }
}

struct Chaos {
    peer: Peer,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
    config: PathBuf,
    nodes: Vec<Node>,
    database_url: String,
    users: Vec<String>,
    /// (user, refresh token) of every connection right after it was made.
    initial: Vec<(String, String)>,
}

const CLIENT: &str = "chaos-app";

impl Chaos {
    /// Nodes are configured, not started.
    async fn new(database_url: String, redis_url: String, setup: &Setup) -> Self {
        let peer = Peer::start();
        let proxy = FaultProxy::start(&peer);
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = setup.rates.iter().map(|_| free_port()).collect();
        let public = format!("http://127.0.0.1:{}", ports[0]);
        let callback = format!("{public}/oauth/callback");
        let providers = dir.path().join("providers.toml");
        // Only refreshes go through the fault proxy.
        std::fs::write(
            &providers,
            format!(
                "[providers.chaos-peer]\ndisplay_name = \"Chaos peer\"\nauthorization_url = \"{0}/auth\"\n\
                 token_url = \"{0}/token\"\nrefresh_url = \"{1}/token\"\nrevocation_url = \"{0}/token/revocation\"\n\
                 issuer = \"{0}\"\niss_parameter_supported = true\nrefresh_token_rotates = true\n",
                peer.issuer,
                proxy.url()
            ),
        )
        .unwrap();
        let config = dir.path().join("tokenvault.toml");
        std::fs::write(
            &config,
            format!(
                "providers_file = {providers:?}\n{}\n[integrations.{CLIENT}]\nprovider = \"chaos-peer\"\n\
                 client_id = \"{CLIENT}\"\nclient_secret = \"{CLIENT}-secret\"\nredirect_uri = \"{callback}\"\n\
                 scopes = [\"openid\", \"offline_access\", \"api:read\"]\n",
                setup.extra_config
            ),
        )
        .unwrap();
        peer.register(
            CLIENT,
            "client_secret_basic",
            Some(&format!("{CLIENT}-secret")),
            &callback,
            &["authorization_code", "refresh_token"],
        )
        .await;
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(n, port)| {
                let mut env = vec![
                    ("TOKENVAULT_DATABASE_URL".to_owned(), database_url.clone()),
                    ("TOKENVAULT_REDIS_URL".to_owned(), redis_url.clone()),
                    ("TOKENVAULT_MASTER_KEYS".to_owned(), MASTER_KEYS.to_owned()),
                    ("TOKENVAULT_API_KEYS".to_owned(), API_KEY.to_owned()),
                    ("TOKENVAULT_PUBLIC_URL".to_owned(), public.clone()),
                    (
                        "TOKENVAULT_REFRESH_RATE_LIMIT_PER_SECOND".to_owned(),
                        setup.rates[n].to_string(),
                    ),
                    ("TOKENVAULT_TOKEN_CACHE_MS".to_owned(), "0".to_owned()),
                ];
                if let Some(offset) = setup.clock_offsets.get(n) {
                    env.push((
                        "TOKENVAULT_TEST_CLOCK_OFFSET_MS".to_owned(),
                        offset.to_string(),
                    ));
                }
                Node {
                    name: format!("node-{n}"),
                    dir: dir.path().join(format!("node-{n}")),
                    port: *port,
                    env,
                    process: None,
                    past_logs: Vec::new(),
                }
            })
            .collect();
        Self {
            peer,
            proxy,
            _dir: dir,
            config,
            nodes,
            database_url,
            users: Vec::new(),
            initial: Vec::new(),
        }
    }

    async fn start(&mut self, n: usize) {
        let config = self.config.clone();
        self.nodes[n].start(&config).await;
    }

    /// Connects `count` users through node 0's connect flow, their access
    /// tokens living `ttl` seconds (so they all come due together).
    async fn connect(&mut self, count: usize, ttl: u64) {
        self.peer
            .hook("config", json!({"access_token_ttl": ttl}))
            .await;
        let base = self.nodes[0].base();
        let users: Vec<String> = (0..count).map(|i| format!("fan-{i}")).collect();
        let flows = futures::stream::iter(users.clone()).map(|user| {
            let base = base.clone();
            async move {
                let response = reqwest::Client::new()
                    .post(format!("{base}/v1/connect-sessions"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"user_id": user, "integration": CLIENT}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                let url = response.json::<Value>().await.unwrap()["connect_url"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let page = browser(None).get(&url).send().await.unwrap();
                assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
            }
        });
        use futures::StreamExt;
        flows.buffer_unordered(8).collect::<Vec<()>>().await;
        self.users.extend(users);
        self.initial = self
            .stored()
            .await
            .rows
            .into_iter()
            .map(|r| (r.user, r.refresh_token))
            .collect();
    }

    fn unknown_outcomes(&self) -> usize {
        let (transport, crash) = self.unknown_outcomes_by_reason();
        transport + crash
    }

    /// Outcomes tokenvault logged as unknown: answers lost on the wire (or
    /// late), and calls of a killed process found unanswered in its journal.
    fn unknown_outcomes_by_reason(&self) -> (usize, usize) {
        let lines: Vec<String> = self.nodes.iter().flat_map(Node::logs).collect();
        let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
        (
            count("refresh outcome unknown: the request may have reached the provider"),
            count("refresh outcome unknown: a stopped process presented"),
        )
    }

    /// Every stored connection, tokens opened.
    async fn stored(&self) -> Stored {
        let store = tokenvault::store::connect(&self.database_url, &Default::default())
            .await
            .unwrap();
        let keys = tokenvault::crypto::KeyRing::parse(MASTER_KEYS, "test").unwrap();
        let envelope = tokenvault::crypto::Envelope::new(Arc::new(keys));
        let mut stored = Stored::default();
        let mut after = None;
        loop {
            let page = store
                .list(&Default::default(), after.as_ref(), 500)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(tokenvault::store::ListCursor::of(last));
            for record in page {
                *stored
                    .statuses
                    .entry(record.status.as_str().to_owned())
                    .or_default() += 1;
                if record.lease.is_some() {
                    stored.leased += 1;
                }
                if let (Some(access), Some(refresh)) = (&record.access_token, &record.refresh_token)
                {
                    let (_, refresh) = envelope
                        .open(record.id, &record.data_key, access, Some(refresh))
                        .await
                        .unwrap();
                    stored.rows.push(StoredRow {
                        user: record.user_id.to_string(),
                        refresh_token: refresh.unwrap().expose().to_owned(),
                        status: record.status.as_str().to_owned(),
                    });
                }
            }
        }
        stored
    }

    /// The four counts. The proxy saw every refresh (which token was
    /// presented, which one the provider answered with), so each
    /// connection's chain of refresh tokens is known: it was revoked if a
    /// token of it was presented twice, and its rotated token was lost if
    /// the database does not hold the chain's last token.
    async fn counts(&self) -> Counts {
        let stored = self.stored().await;
        let held: std::collections::HashSet<&str> = stored
            .rows
            .iter()
            .map(|r| r.refresh_token.as_str())
            .collect();
        let (rotations, reused, swallowed) = {
            let state = self.proxy.state.lock().unwrap();
            (
                state.rotations.clone(),
                state.reused.clone(),
                state.swallowed.clone(),
            )
        };
        let mut counts = Counts {
            statuses: stored.statuses.clone(),
            leased: stored.leased,
            refreshed: rotations.len() as u64,
            ..Counts::default()
        };
        for (user, initial) in &self.initial {
            let mut chain = vec![initial.clone()];
            while let Some(next) = rotations.get(chain.last().unwrap()) {
                chain.push(next.clone());
            }
            let revoked = chain.iter().any(|t| reused.contains(t));
            let explained = chain.iter().any(|t| swallowed.contains(t));
            if revoked {
                counts.revoked += 1;
                if !explained {
                    counts.revoked_unexplained += 1;
                }
            } else if !held.contains(chain.last().unwrap().as_str()) {
                let row = stored.rows.iter().find(|r| &r.user == user);
                let short = |t: &str| t.chars().take(8).collect::<String>();
                counts.details.push(format!(
                    "lost: {user}: chain {:?}, database holds {:?} ({:?})",
                    chain.iter().map(|t| short(t)).collect::<Vec<_>>(),
                    row.map(|r| short(&r.refresh_token)),
                    row.map(|r| r.status.clone()),
                ));
                counts.lost += 1;
                if !explained {
                    counts.lost_unexplained += 1;
                }
            }
        }
        let needs_reauth = stored.statuses.get("needs_reauth").copied().unwrap_or(0);
        counts.wrongly_needs_reauth = needs_reauth.saturating_sub(counts.revoked);
        counts.peer_grants_revoked = self.peer.stats().await["grants_revoked"]
            .as_u64()
            .unwrap_or(0);
        // The same from the provider's own books: every live grant's newest
        // refresh token must be the one the database holds.
        let held_hashes: std::collections::HashSet<String> = stored
            .rows
            .iter()
            .map(|r| {
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    r.refresh_token.as_bytes(),
                ))
            })
            .collect();
        let grants = self.peer.hook_get("grants").await;
        for grant in grants["grants"]
            .as_object()
            .into_iter()
            .flat_map(|g| g.values())
        {
            if grant["revoked"].as_bool() == Some(true) {
                continue;
            }
            if let Some(last) = grant["last_refresh_token_sha256"].as_str()
                && !held_hashes.contains(last)
            {
                counts.peer_lost += 1;
            }
        }
        counts
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let lines = n.logs();
                let tail = lines.len().saturating_sub(40);
                format!("--- {} ---\n{}", n.name, lines[tail..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every connection was refreshed more than `rounds`
    /// times (or its grant was revoked), or `within` passes.
    async fn wait_refreshed(&self, rounds: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let done = {
                let state = self.proxy.state.lock().unwrap();
                self.initial.iter().all(|(_, initial)| {
                    let mut token = initial;
                    let mut length = 0;
                    while let Some(next) = state.rotations.get(token) {
                        if state.reused.contains(token) {
                            return true;
                        }
                        token = next;
                        length += 1;
                    }
                    length >= rounds
                })
            };
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The checks every scenario ends with. With `allow_unknown`, grants
    /// lost to answers the scenario destroys on purpose (the proxy's
    /// resets, a kill between answer and journal) are allowed, up to the
    /// outcomes tokenvault itself counted as unknown.
    async fn check(&mut self, scenario: &str, readers: &ReaderStats, allow_unknown: bool) {
        // The books are closed on a stopped service: SIGTERM lets every
        // provider call in flight finish and store its outcome (a refresh
        // the proxy saw answered is then in the database or in a journal).
        for node in &mut self.nodes {
            node.stop();
        }
        let counts = self.counts().await;
        let unknown = self.unknown_outcomes();
        let (lost_on_the_wire, lost_in_a_crash) = self.unknown_outcomes_by_reason();
        report(format!(
            "{scenario}: connections={} refreshes={} revoked={} (unexplained {}, peer says {}) lost={} (unexplained {}, peer says {}) wrongly_needs_reauth={} unknown_outcomes={} (on the wire {}, in a crash {}) statuses={:?} reads={} reads_5xx_with_valid_token={} reads_500={} reads_5xx={:?}",
            self.initial.len(),
            counts.refreshed,
            counts.revoked,
            counts.revoked_unexplained,
            counts.peer_grants_revoked,
            counts.lost,
            counts.lost_unexplained,
            counts.peer_lost,
            counts.wrongly_needs_reauth,
            unknown,
            lost_on_the_wire,
            lost_in_a_crash,
            counts.statuses,
            readers.total.load(Ordering::Relaxed),
            readers.unexpected.load(Ordering::Relaxed),
            readers.internal.load(Ordering::Relaxed),
            readers.unavailable.lock().unwrap(),
        ));
        for detail in &counts.details {
            report(format!("{scenario}: {detail}"));
        }
        let logs = self.logs();
        if allow_unknown {
            assert!(
                counts.revoked_unexplained + counts.lost_unexplained <= unknown,
                "{scenario}: {} revoked and {} lost beyond the {unknown} outcomes counted unknown\n{logs}",
                counts.revoked_unexplained,
                counts.lost_unexplained
            );
        } else {
            assert_eq!(counts.revoked, 0, "{scenario}: grants revoked\n{logs}");
            assert_eq!(
                counts.peer_grants_revoked, 0,
                "{scenario}: the peer revoked grants\n{logs}"
            );
            assert_eq!(counts.lost, 0, "{scenario}: rotated tokens lost\n{logs}");
            assert_eq!(
                counts.peer_lost, 0,
                "{scenario}: the peer issued refresh tokens the database does not hold\n{logs}"
            );
        }
        assert_eq!(
            counts.wrongly_needs_reauth, 0,
            "{scenario}: connections wrongly needs_reauth\n{logs}"
        );
        assert_eq!(
            readers.internal.load(Ordering::Relaxed),
            0,
            "{scenario}: readers got 500s\n{logs}"
        );
        assert_eq!(
            readers.unexpected.load(Ordering::Relaxed),
            0,
            "{scenario}: readers got a 5xx while a valid token existed: {:?}\n{logs}",
            readers.unavailable.lock().unwrap()
        );
    }
}

#[derive(Default)]
struct Stored {
    rows: Vec<StoredRow>,
    statuses: BTreeMap<String, usize>,
    leased: usize,
}

struct StoredRow {
    user: String,
    refresh_token: String,
    status: String,
}

#[derive(Default)]
struct Counts {
    refreshed: u64,
    revoked: usize,
    revoked_unexplained: usize,
    peer_grants_revoked: u64,
    lost: usize,
    lost_unexplained: usize,
    /// Live grants whose newest refresh token (by the peer) is not stored.
    peer_lost: usize,
    wrongly_needs_reauth: usize,
    statuses: BTreeMap<String, usize>,
    leased: usize,
    details: Vec<String>,
}

/// What token readers saw.
#[derive(Default)]
struct ReaderStats {
    total: AtomicU64,
    internal: AtomicU64,
    /// A 5xx other than `database_unavailable` (the one an outage of the
    /// database explains): the token was valid, the reader should have had it.
    unexpected: AtomicU64,
    unavailable: Mutex<BTreeMap<String, u64>>,
    last_db_error: Mutex<Option<Instant>>,
    last_ok: Mutex<Option<Instant>>,
}

/// Token readers running against every node until stopped.
struct Readers {
    stats: Arc<ReaderStats>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Readers {
    fn stats(&self) -> &ReaderStats {
        &self.stats
    }

    async fn stop(self) -> Arc<ReaderStats> {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.stats
    }
}

impl Chaos {
    fn start_readers(&self) -> Readers {
        let stats = Arc::new(ReaderStats::default());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let bases = self.nodes.iter().map(Node::base).collect();
        let task = spawn_readers(bases, self.users.clone(), Arc::clone(&stats), stopping);
        Readers { stats, stop, task }
    }
}

/// Whether the connection's stored access token is valid for a few more
/// seconds (by the status API, which reads the database).
async fn valid_token_stored(client: &reqwest::Client, base: &str, user: &str) -> bool {
    let Ok(response) = client
        .get(format!("{base}/v1/users/{user}/connections/{CLIENT}"))
        .bearer_auth(API_KEY)
        .send()
        .await
    else {
        return false;
    };
    let body: Value = response.json().await.unwrap_or_default();
    body["expires_at"]
        .as_str()
        .and_then(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .is_some_and(|at| at > chrono::Utc::now() + chrono::Duration::seconds(2))
        && body["status"] == "connected"
}

/// Reads tokens of random users from random running nodes until `stop`.
fn spawn_readers(
    bases: Vec<String>,
    users: Vec<String>,
    stats: Arc<ReaderStats>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap();
        let mut n = 0usize;
        while !*stop.borrow() {
            n += 1;
            let base = &bases[n % bases.len()];
            let user = &users[(n * 7919) % users.len()];
            let response = client
                .get(format!("{base}/v1/users/{user}/connections/{CLIENT}/token"))
                .bearer_auth(API_KEY)
                .send()
                .await;
            let Ok(response) = response else {
                // That node is down (killed or stopped): no answer at all.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            stats.total.fetch_add(1, Ordering::Relaxed);
            let status = response.status().as_u16();
            if status == 200 {
                *stats.last_ok.lock().unwrap() = Some(Instant::now());
            } else if status >= 500 {
                let body: Value = response.json().await.unwrap_or_default();
                let code = body["error"].as_str().unwrap_or("?").to_owned();
                let mut label = format!("{status} {code}");
                if status == 500 {
                    stats.internal.fetch_add(1, Ordering::Relaxed);
                } else if code == "database_unavailable" {
                    *stats.last_db_error.lock().unwrap() = Some(Instant::now());
                } else if valid_token_stored(&client, base, user).await {
                    // The stored token was still valid: it should have been
                    // handed out.
                    stats.unexpected.fetch_add(1, Ordering::Relaxed);
                } else {
                    label.push_str(" (no valid token stored)");
                }
                *stats.unavailable.lock().unwrap().entry(label).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn shared_database() -> String {
    tokenvault::testing::fresh_postgres_url().await
}

fn shared_redis() -> String {
    std::env::var("TOKENVAULT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

// --- scenarios --------------------------------------------------------------

/// The case that revoked 48 of 210 grants: a backlog, instance A at 1
/// refresh/s claiming under a 30 s lease, instance B at 50/s started 3 s
/// later. B's clock is also 3 s ahead (clock skew between instances).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_with_unequal_rate_limits_and_skewed_clocks_revokes_nothing() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        rates: vec![1, 50],
        access_ttl: 30,
        clock_offsets: vec![0, 3000],
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, shared_redis(), &setup).await;
    chaos.start(0).await;
    // Node 0 runs the flows; the scheduler then finds them all due at once.
    chaos.connect(size(210, 3), setup.access_ttl).await;
    chaos.peer.hook("reset", json!({})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos.start(1).await;
    let readers = chaos.start_readers();
    let all = chaos.wait_refreshed(1, Duration::from_secs(90)).await;
    let stats = readers.stop().await;
    assert!(all, "not every connection was refreshed\n{}", chaos.logs());
    chaos
        .check("backlog 1/s vs 50/s, skewed clock", &stats, false)
        .await;
}

/// Both instances at 3/s, a provider answering in 6 s, the second instance
/// starting 10 s after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_and_a_late_instance_at_equal_rates_revoke_nothing() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        rates: vec![3, 3],
        access_ttl: 30,
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, shared_redis(), &setup).await;
    chaos.start(0).await;
    chaos
        .proxy
        .rules(vec![Rule::always(Action::Delay(Duration::from_millis(
            6000,
        )))]);
    chaos.connect(size(60, 4), setup.access_ttl).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    chaos.start(1).await;
    let stats = Arc::new(ReaderStats::default());
    let all = chaos.wait_refreshed(1, Duration::from_secs(120)).await;
    assert!(all, "not every connection was refreshed\n{}", chaos.logs());
    chaos
        .check("3/s + 3/s, 6 s provider, late instance", &stats, false)
        .await;
}

/// An instance paused (SIGSTOP) for longer than the lease while it holds
/// claimed rows and provider calls in flight, then resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_paused_past_the_lease_revokes_nothing() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        rates: vec![2, 50],
        access_ttl: 30,
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, shared_redis(), &setup).await;
    chaos.start(0).await;
    chaos
        .proxy
        .rules(vec![Rule::always(Action::Delay(Duration::from_millis(
            400,
        )))]);
    chaos.connect(size(80, 3), setup.access_ttl).await;
    // Node 0 starts working through the backlog at 2/s…
    let deadline = Instant::now() + Duration::from_secs(60);
    while chaos.counts().await.refreshed < 2 {
        assert!(Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and is frozen mid-work — with a refresh at the provider, whose answer
    // arrives while it is stopped — for longer than its 30 s lease, while
    // node 1 takes over what it can.
    while chaos.proxy.state.lock().unwrap().in_flight == 0 {
        assert!(Instant::now() < deadline, "no refresh in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    chaos.nodes[0].signal("-STOP");
    chaos.start(1).await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    chaos.nodes[0].signal("-CONT");
    let all = chaos.wait_refreshed(1, Duration::from_secs(90)).await;
    // Let node 0 finish what it resumed with.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(all, "not every connection was refreshed\n{}", chaos.logs());
    chaos
        .check("SIGSTOP past the lease", &ReaderStats::default(), false)
        .await;
}

/// kill -9 of a random instance at random moments, repeatedly, under reads
/// and scheduled refreshes of 20-second tokens; each killed instance is
/// restarted on its data directory (its journal is replayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_at_random_moments_loses_no_token() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        rates: vec![50, 50, 50],
        access_ttl: 20,
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, shared_redis(), &setup).await;
    for n in 0..3 {
        chaos.start(n).await;
    }
    chaos
        .proxy
        .rules(vec![Rule::always(Action::Delay(Duration::from_millis(
            150,
        )))]);
    chaos.connect(size(60, 3), setup.access_ttl).await;
    let readers = chaos.start_readers();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let kills = size(8, 5);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(2000 + next() % 4000)).await;
        let victim = (next() % 3) as usize;
        chaos.nodes[victim].kill();
        tokio::time::sleep(Duration::from_millis(500 + next() % 1500)).await;
        chaos.start(victim).await;
    }
    // Everything due gets refreshed by the survivors and the restarted.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stats = readers.stop().await;
    report(format!("kill -9: {kills} kills"));
    // A kill can land between the provider's answer and its journaling:
    // that is the unknowable case, counted by the restarted instance.
    chaos.check("kill -9 loop", &stats, true).await;
}

/// PostgreSQL stopped for 20 s and then for 60 s while 40 connections with
/// 20-second tokens refresh on two instances and readers keep asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outages_lose_nothing_and_heal_within_five_seconds() {
    let _serial = SERIAL.lock().await;
    let pg = PgCluster::start();
    let setup = Setup {
        rates: vec![50, 50],
        access_ttl: 20,
        ..Setup::default()
    };
    let mut chaos = Chaos::new(pg.url(), shared_redis(), &setup).await;
    chaos.start(0).await;
    chaos.start(1).await;
    chaos.connect(40, setup.access_ttl).await;
    let readers = chaos.start_readers();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A key kept in the database, its verdict cached by a first use.
    let stored_key = stored_api_key(&pg.url());
    let checked = reqwest::Client::new()
        .get(format!("{}/v1/ping", chaos.nodes[1].base()))
        .bearer_auth(&stored_key)
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 200);
    for outage in [20, size(60, 2) as u64] {
        pg.down();
        let stopped_at = Instant::now();
        if outage == 20 {
            every_route_answers_without_a_500(&chaos.nodes[1].base(), &[&stored_key, API_KEY])
                .await;
        }
        // The API during the outage: a clear 503 with a stable code, never
        // a 500 (connect sessions live in Redis here and keep working).
        let response = reqwest::Client::new()
            .get(format!(
                "{}/v1/users/fan-0/connections",
                chaos.nodes[1].base()
            ))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "database_unavailable");
        let ready = reqwest::get(format!("{}/readyz", chaos.nodes[0].base()))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503, "readyz flips for the database");
        tokio::time::sleep(Duration::from_secs(outage).saturating_sub(stopped_at.elapsed())).await;
        pg.up();
        let back = Instant::now();
        // Reads heal within 5 s of the database returning.
        loop {
            let healed = (*readers.stats().last_ok.lock().unwrap()).is_some_and(|ok| ok > back)
                && (*readers.stats().last_db_error.lock().unwrap())
                    .is_none_or(|err| err < back + Duration::from_secs(5));
            if healed {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "reads not healed 5 s after a {outage} s outage\n{}",
                chaos.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report(format!(
            "postgres {outage} s outage: reads healed {:.1} s after it returned",
            back.elapsed().as_secs_f64()
        ));
        for node in &chaos.nodes {
            let ready = reqwest::get(format!("{}/readyz", node.base()))
                .await
                .unwrap();
            assert_eq!(ready.status(), 200);
        }
        // A while of normal work after the outage (a round of refreshes).
        tokio::time::sleep(Duration::from_secs(size(6, 2) as u64)).await;
    }
    let stats = readers.stop().await;
    chaos
        .check(
            &format!("postgres stopped 20 s and {} s", size(60, 2)),
            &stats,
            false,
        )
        .await;
}

/// `tokenvault api-keys create` against `database_url`: a key whose
/// verdict the service must look up (and then caches).
fn stored_api_key(database_url: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenvault"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATABASE_URL", database_url)
        .args([
            "api-keys",
            "create",
            "--name",
            "outage-sweep",
            "--scope",
            "admin",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Every route, with each key, while the database is down: an answer
/// that needs the database is 503 `database_unavailable` (flows, whose
/// state is in Redis here, keep working), never a 500.
async fn every_route_answers_without_a_500(base: &str, keys: &[&str]) {
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let action = "01a24188-9329-72c7-827d-388826b0e927";
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/ping".into(), None),
        ("GET", "/v1/integrations".into(), None),
        ("GET", format!("/v1/integrations/{CLIENT}/token"), None),
        ("POST", format!("/v1/integrations/{CLIENT}/reset"), None),
        ("GET", "/v1/users/nobody/connections".into(), None),
        (
            "GET",
            format!("/v1/users/nobody/connections/{CLIENT}"),
            None,
        ),
        (
            "GET",
            format!("/v1/users/nobody/connections/{CLIENT}/token"),
            None,
        ),
        (
            "POST",
            format!("/v1/users/nobody/connections/{CLIENT}/refresh"),
            None,
        ),
        (
            "GET",
            format!("/v1/users/nobody/connections/{CLIENT}/profile"),
            None,
        ),
        (
            "DELETE",
            format!("/v1/users/nobody/connections/{CLIENT}"),
            None,
        ),
        (
            "PUT",
            format!("/v1/users/nobody/connections/{CLIENT}"),
            Some(json!({"access_token": "at", "refresh_token": "rt", "expires_at": in_an_hour})),
        ),
        ("GET", format!("/v1/proxy/{CLIENT}/nobody/me"), None),
        (
            "POST",
            "/v1/bulk-actions".into(),
            Some(
                json!({"integration": CLIENT, "users": ["nobody"], "request": {"method": "GET", "path": "me"}}),
            ),
        ),
        ("GET", format!("/v1/bulk-actions/{action}"), None),
        ("GET", format!("/v1/bulk-actions/{action}/items"), None),
        ("POST", format!("/v1/bulk-actions/{action}/cancel"), None),
        (
            "POST",
            "/v1/connect-sessions".into(),
            Some(json!({"user_id": "nobody", "integration": CLIENT})),
        ),
        (
            "POST",
            "/v1/connect-sessions/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/confirm".into(),
            Some(
                json!({"confirm_code": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "user_id": "nobody"}),
            ),
        ),
        (
            "POST",
            "/v1/device-sessions".into(),
            Some(json!({"user_id": "nobody", "integration": CLIENT})),
        ),
        ("GET", format!("/v1/device-sessions/{action}"), None),
    ];
    let http = reqwest::Client::new();
    let mut unavailable = 0;
    for key in keys {
        for (method, path, body) in &routes {
            let mut request = http
                .request(method.parse().unwrap(), format!("{base}{path}"))
                .bearer_auth(key);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let code = serde_json::from_str::<Value>(&text).unwrap_or_default()["error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // (The app token needs no database; the peer refuses this
            // client the client-credentials grant: its 502 is relayed.)
            assert!(
                status < 500
                    || code == "database_unavailable"
                    || (status == 502 && code == "provider_error"),
                "{method} {path} during a PostgreSQL outage: {status} {text}"
            );
            unavailable += usize::from(code == "database_unavailable");
        }
    }
    assert!(
        unavailable >= 10,
        "only {unavailable} answers said the database is unavailable"
    );
}

/// Redis (the state store) stopped for 20 s: flows answer 503
/// `state_store_unavailable`, tokens keep flowing, `/readyz` says degraded
/// but stays 200, and flows work again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_flows_only() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let setup = Setup {
        access_ttl: 20,
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, redis.url(), &setup).await;
    chaos.start(0).await;
    chaos.start(1).await;
    chaos.connect(20, setup.access_ttl).await;
    let readers = chaos.start_readers();
    redis.down();
    let down_at = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/connect-sessions", chaos.nodes[0].base()))
        .bearer_auth(API_KEY)
        .json(&json!({"user_id": "newcomer", "integration": CLIENT}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "state_store_unavailable");
    let ready = reqwest::get(format!("{}/readyz", chaos.nodes[1].base()))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a state-store outage keeps instances in the balancer"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down_at.elapsed())).await;
    redis.up();
    let back = Instant::now();
    loop {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/connect-sessions", chaos.nodes[1].base()))
            .bearer_auth(API_KEY)
            .json(&json!({"user_id": "newcomer", "integration": CLIENT}))
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "flows did not heal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = readers.stop().await;
    assert!(stats.total.load(Ordering::Relaxed) > 100);
    chaos.check("redis stopped 20 s", &stats, false).await;
}

/// Answers lost on the wire: the proxy forwards some refresh requests and
/// then resets the connection instead of answering (the provider rotated;
/// tokenvault cannot know), and one provider is slower than the HTTP
/// timeout. Each such refresh is counted as an unknown outcome; nothing
/// else is lost, and no connection turns needs_reauth except those grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_counted_as_unknown_and_nothing_else_is_lost() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        access_ttl: 20,
        // The scenario is about lost answers: a breaker opened by the
        // injected failures would only slow it down.
        extra_config: "breaker_failure_threshold = 20\n".into(),
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, shared_redis(), &setup).await;
    chaos.start(0).await;
    chaos.start(1).await;
    chaos.connect(size(30, 3), setup.access_ttl).await;
    chaos.proxy.rules(vec![
        Rule {
            probability: 0.05,
            ..Rule::always(Action::ResetBefore)
        },
        Rule {
            probability: 0.05,
            ..Rule::always(Action::Status(503, None))
        },
        Rule {
            probability: 0.03,
            ..Rule::always(Action::Status(429, Some(1)))
        },
        Rule {
            count: Some(3),
            ..Rule::always(Action::ResetAfter)
        },
        // A provider that hangs (never sees the request).
        Rule {
            count: Some(2),
            ..Rule::always(Action::Stall(Duration::from_secs(25)))
        },
        // Slower than the 20 s HTTP timeout: the answer comes too late.
        Rule {
            count: Some(1),
            ..Rule::always(Action::Delay(Duration::from_secs(21)))
        },
    ]);
    let stats = Arc::new(ReaderStats::default());
    let all = chaos
        .wait_refreshed(1, Duration::from_secs(size(120, 2) as u64))
        .await;
    let proxy = chaos.proxy.stats();
    report(format!("lost answers: proxy {proxy}"));
    assert!(all, "not every connection was refreshed\n{}", chaos.logs());
    chaos
        .check(
            "lost answers and a provider slower than the timeout",
            &stats,
            true,
        )
        .await;
    assert!(
        chaos.unknown_outcomes() >= 4,
        "the lost answers were counted"
    );
}

/// SIGTERM with a large claimed backlog at 1 refresh/s: the process exits
/// within the grace, gives every claimed row not yet at the provider back
/// at once, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_claimed_backlog_exits_within_the_grace() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        rates: vec![1],
        access_ttl: 30,
        extra_config: "shutdown_grace_secs = 20\nscheduler_batch = 100\n".into(),
        ..Setup::default()
    };
    let mut chaos = Chaos::new(shared_database().await, shared_redis(), &setup).await;
    chaos.start(0).await;
    chaos.connect(100, setup.access_ttl).await;
    // Wait for the backlog: the scheduler claims what its budget allows
    // and starts refreshing at 1/s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while chaos.counts().await.refreshed < 2 {
        assert!(Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leased_before = chaos.counts().await.leased;
    let started = Instant::now();
    chaos.nodes[0].signal("-TERM");
    let process = chaos.nodes[0].process.as_mut().unwrap();
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "still running 25 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let exited = chaos.nodes[0].process.take().unwrap();
    let lines = exited.stderr.lock().unwrap().clone();
    chaos.nodes[0].past_logs.extend(lines);
    report(format!(
        "SIGTERM with {leased_before} claimed rows at 1/s: exited in {:.2} s ({status})",
        took.as_secs_f64()
    ));
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let counts = chaos.counts().await;
    assert_eq!(counts.leased, 0, "no lease left held");
    chaos
        .check(
            "SIGTERM with a claimed backlog",
            &ReaderStats::default(),
            false,
        )
        .await;
}
