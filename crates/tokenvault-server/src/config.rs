//! Configuration: defaults < `tokenvault.toml` (or `--config`/`TOKENVAULT_CONFIG`)
//! < `TOKENVAULT_*` environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;
use tokenvault::domain::IntegrationKey;
use tokenvault::integrations::IntegrationConfig;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Lenient: generates a master key file, allows http redirect URIs on localhost.
    #[default]
    Development,
    /// Strict: master keys must be supplied, redirect URIs must be https.
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, human-readable otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The file this configuration was read from, if any.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    pub environment: Environment,
    pub bind: SocketAddr,
    /// Where the embedded defaults live: the SQLite file and the dev key file.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` (default: `<data_dir>/tokenvault.db`) or `postgres://…`.
    pub database_url: Option<String>,
    pub database_max_connections: u32,
    /// Apply migrations when `serve` starts (otherwise run `tokenvault migrate`).
    pub migrate_on_start: bool,
    /// `k2:base64,k1:base64`, first = active. Overrides the key file.
    pub master_keys: Option<SecretString>,
    /// Default `<data_dir>/master.key`; generated on first start in development.
    pub master_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Keys accepted on `/v1` as `Authorization: Bearer <key>`
    /// (`TOKENVAULT_API_KEYS`, comma-separated).
    #[serde(deserialize_with = "secret_list")]
    pub api_keys: Vec<SecretString>,
    /// Base URL browsers reach this service at (connect URLs are built on
    /// it). Default `http://<bind>`.
    pub public_url: Option<Url>,
    /// `redis://…`: keeps OAuth state in Redis instead of the database.
    pub redis_url: Option<String>,
    /// How long a connect URL and an OAuth state stay valid.
    pub state_ttl_secs: u64,
    /// Origins `redirect_to` may point at (e.g. `https://app.example.com`).
    #[serde(deserialize_with = "string_list")]
    pub allowed_redirect_origins: Vec<String>,
    /// What a connect link shows by default: `direct` (straight to the
    /// provider) or `page` (the Connect UI page first). A session may ask
    /// for either; picker and reconnect sessions always show the page.
    pub connect_ui: ConnectUi,
    /// The application's name on the Connect UI pages.
    pub ui_app_name: String,
    /// An `https:` (or `data:`) URL of the application's logo, shown on the pages.
    pub ui_logo_url: Option<Url>,
    /// The pages' accent colour, `#rrggbb`.
    pub ui_accent_color: String,
    /// Where the pages send users who need help.
    pub ui_support_url: Option<Url>,
    /// A TOML file that adds providers or overrides fields of built-in ones.
    pub providers_file: Option<PathBuf>,
    /// `[integrations.<key>]` tables; `<KEY>_CLIENT_ID`, `_CLIENT_SECRET` and
    /// `_REDIRECT_URI` in the environment override (or, for a built-in
    /// provider key, enable) them.
    pub integrations: BTreeMap<IntegrationKey, IntegrationConfig>,
    /// Where signed webhook events are POSTed; unset = no events recorded.
    pub webhook_url: Option<Url>,
    /// HMAC key of the `Tokenvault-Signature` header; required with webhook_url.
    pub webhook_secret: Option<SecretString>,
    /// Events to send (default: all but `connection.refreshed`).
    #[serde(deserialize_with = "string_list")]
    pub webhook_events: Vec<String>,
    /// Run the background refresher in this instance.
    pub scheduler_enabled: bool,
    /// Milliseconds between scheduler ticks when there is no backlog.
    pub scheduler_tick_ms: u64,
    /// Connections claimed per tick.
    pub scheduler_batch: u32,
    /// Refreshes in flight at once, per instance.
    pub scheduler_concurrency: usize,
    /// Milliseconds a fresh token read from the database may be served from
    /// this instance's memory; 0 disables the cache. Another instance's
    /// refresh or disconnect is seen here up to this much later.
    pub token_cache_ms: u64,
    /// Token-endpoint calls per second per integration and instance
    /// (an integration's `rate_limit_per_second` overrides it); 0 = unlimited.
    pub refresh_rate_limit_per_second: u32,
    /// Days after which disconnected and expired connections are deleted; 0 keeps them.
    pub retention_days: u64,
    /// Days a connection's history entries are kept; 0 keeps them forever.
    pub history_retention_days: u64,
    /// Consecutive provider failures that open an integration's circuit.
    pub breaker_failure_threshold: u32,
    /// Seconds an open circuit waits before trial calls.
    pub breaker_open_secs: u64,
    /// Successful trial calls that close the circuit.
    pub breaker_success_threshold: u32,
    /// HMAC key under which user ids appear in logs (8 hex chars). Give every
    /// instance the same value so their logs correlate; unset = a random key
    /// per process.
    pub log_salt: Option<SecretString>,
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// A request still running after this many seconds is answered 503
    /// `request_timeout` (must exceed the refresh wait, 25 s).
    pub request_timeout_secs: u64,
    /// An HTTP/1.1 client that has not sent a whole request head this many
    /// seconds after connecting (or after its previous answer: this also
    /// ends idle keep-alive connections) is disconnected: slow-header
    /// clients cannot hold connections.
    pub header_read_timeout_secs: u64,
    /// Any connection (HTTP/2 too) without a request in progress for this
    /// many seconds is closed.
    pub keep_alive_idle_secs: u64,
    /// Most client connections open at once; 0 = as many as the file
    /// descriptor limit leaves room for (it minus 128 and the database
    /// pool). At the cap, a new connection replaces the oldest one that
    /// has no request in progress; with none, it gets 503
    /// `too_many_connections`.
    pub max_connections: usize,
    /// The longest provider `Retry-After` the API proxy waits out before
    /// retrying; a longer one is relayed to the caller as the 429 it is.
    pub proxy_max_retry_after_secs: u64,
    /// Seconds an instance that presented a refresh token keeps every other
    /// instance off that connection while the provider call is unresolved
    /// (it stalled, was paused, or lost the database). Must exceed the
    /// provider HTTP timeout (20 s) by far. docs/refresh-protocol.md, R3.
    pub refresh_in_flight_lease_secs: u64,
    /// Seconds after start-up, or after the database comes back, during
    /// which this instance takes over no other instance's expired lease
    /// (R6: a live holder stores its journaled answers first).
    pub refresh_takeover_grace_secs: u64,
    /// Where provider answers are journaled before they are stored
    /// (default `<data_dir>/refresh-journal`); give each instance its own
    /// persistent directory, or a shared one (each process locks its file).
    pub refresh_journal_dir: Option<PathBuf>,
    /// On SIGTERM: seconds to finish provider calls and requests in flight
    /// before exiting anyway.
    pub shutdown_grace_secs: u64,
    /// Test only: milliseconds added to this instance's clock (simulates
    /// clock skew between instances).
    pub test_clock_offset_ms: i64,
    /// Run bulk actions on this instance (every instance may; an action runs
    /// on one instance at a time, under a lease).
    pub bulk_enabled: bool,
    /// Provider calls in flight per running bulk action.
    pub bulk_concurrency: usize,
    /// Most users one bulk action may name (or select by status).
    pub bulk_max_items: usize,
    /// Where Prometheus scrapes `GET /metrics` (its own listener, no API
    /// key); `"off"` or empty disables metrics.
    #[serde(deserialize_with = "optional_addr")]
    pub metrics_bind: Option<SocketAddr>,
}

/// A socket address, or `off` / empty for none.
fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let raw = String::deserialize(d)?;
    let raw = raw.trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{raw:?} is not a socket address like 127.0.0.1:9464 (or \"off\")"
        ))
    })
}

fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(secret_list(d)?
        .into_iter()
        .map(|item| secrecy::ExposeSecret::expose_secret(&item).to_owned())
        .collect())
}

/// Accepts a TOML list or a comma-separated string (from the environment).
fn secret_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Joined(String),
    }
    let items = match Raw::deserialize(d)? {
        Raw::List(items) => items,
        Raw::Joined(joined) => joined.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .map(SecretString::from)
        .collect())
}

/// What a connect link shows first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ConnectUi {
    /// Straight to the provider's consent screen.
    #[default]
    Direct,
    /// The Connect UI page: the app, the integration, the access asked for.
    Page,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            source_file: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_max_connections: 10,
            migrate_on_start: true,
            master_keys: None,
            master_key_file: None,
            log_format: LogFormat::Auto,
            api_keys: Vec::new(),
            public_url: None,
            redis_url: None,
            state_ttl_secs: 600,
            allowed_redirect_origins: Vec::new(),
            connect_ui: ConnectUi::Direct,
            ui_app_name: "the application".into(),
            ui_logo_url: None,
            ui_accent_color: "#2f5bd3".into(),
            ui_support_url: None,
            providers_file: None,
            integrations: BTreeMap::new(),
            webhook_url: None,
            webhook_secret: None,
            webhook_events: Vec::new(),
            scheduler_enabled: true,
            scheduler_tick_ms: 1000,
            scheduler_batch: 100,
            scheduler_concurrency: 16,
            token_cache_ms: 1000,
            refresh_rate_limit_per_second: 50,
            retention_days: 30,
            history_retention_days: 90,
            breaker_failure_threshold: 5,
            breaker_open_secs: 60,
            breaker_success_threshold: 3,
            log_salt: None,
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            keep_alive_idle_secs: 60,
            max_connections: 0,
            proxy_max_retry_after_secs: 10,
            refresh_in_flight_lease_secs: 300,
            refresh_takeover_grace_secs: 10,
            refresh_journal_dir: None,
            shutdown_grace_secs: 20,
            test_clock_offset_ms: 0,
            bulk_enabled: true,
            bulk_concurrency: 16,
            bulk_max_items: 1_000_000,
            metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

impl Config {
    /// `refresh_journal_dir`, or `<data_dir>/refresh-journal`.
    pub fn refresh_journal_dir(&self) -> PathBuf {
        self.refresh_journal_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("refresh-journal"))
    }

    /// Loads the layered configuration. An explicit `path` must exist; the
    /// default `tokenvault.toml` is optional.
    pub fn load(path: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let source_file = match path {
            Some(path) if !path.exists() => {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                ))));
            }
            Some(path) => Some(path.to_owned()),
            // Only the working directory's file: figment's `Toml::file`
            // would also climb to every parent directory and pick up a
            // stray `/tokenvault.toml` nobody meant for this process.
            None => Some(Path::new("tokenvault.toml"))
                .filter(|default| default.exists())
                .map(Path::to_owned),
        };
        let mut figment = Figment::new();
        if let Some(file) = &source_file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Self = figment
            .merge(Env::prefixed("TOKENVAULT_").ignore(&["config"]))
            .extract()
            .map_err(Box::new)?;
        Ok(Self {
            source_file,
            ..config
        })
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.data_dir.join("tokenvault.db").display())
        })
    }

    /// `public_url`, or `http://<bind>` (with `localhost` for a wildcard
    /// bind such as `0.0.0.0:8080`, which no browser can open).
    pub fn public_url(&self) -> Url {
        self.public_url.clone().unwrap_or_else(|| {
            let url = if self.bind.ip().is_unspecified() {
                format!("http://localhost:{}", self.bind.port())
            } else {
                format!("http://{}", self.bind)
            };
            Url::parse(&url).expect("a socket address makes a URL")
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    pub fn master_key_file(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}
