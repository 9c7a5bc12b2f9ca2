//! Builds the library's parts from configuration, once, at start-up.

use std::sync::Arc;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use std::time::Duration;
use tokenvault::api_keys::{ApiKeyStore, SqlApiKeyStore};
use tokenvault::bulk::{BulkActions, BulkSettings, SqlBulkStore};
use tokenvault::connect::ConnectFlow;
use tokenvault::crypto::{Envelope, KeyRing};
use tokenvault::device::{
    DeviceFlow, DevicePoller, DevicePollerHandle, PollerSettings, SqlDeviceSessionStore,
};
use tokenvault::domain::{Clock, SystemClock};
use tokenvault::events::{EventType, Events};
use tokenvault::oauth::{OAuthClient, OAuthClientConfig};
use tokenvault::oauth_state::{RedisOptions, RedisStateStore, SqlStateStore, StateStore};
use tokenvault::open::{OpenError, OpenOptions};
use tokenvault::providers::Catalog;
use tokenvault::refresh::journal::Journal;
use tokenvault::refresh::{BreakerSettings, RefreshSettings, Scheduler, SchedulerSettings};
use tokenvault::store::{Database, PoolOptions, Store};
use tokio::sync::watch;

use crate::app::Leases;
use crate::config::{Config, Environment};
use crate::http::{ApiKeys, AppParts, AppState, FlowSettings};
use tokenvault::admin_sessions::SqlAdminSessionStore;

/// Where the master keys came from; `keys retire` edits a key file but can
/// only advise on an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(std::path::PathBuf),
}

pub fn load_key_ring(config: &Config) -> anyhow::Result<(KeyRing, KeySource)> {
    if let Some(spec) = &config.master_keys {
        let ring = KeyRing::parse(spec.expose_secret(), "TOKENVAULT_MASTER_KEYS")?;
        return Ok((ring, KeySource::Env));
    }
    let path = config.master_key_file();
    if config.environment == Environment::Production && !path.exists() {
        bail!(
            "production requires master keys: set TOKENVAULT_MASTER_KEYS (e.g. from `tokenvault keys generate`) or TOKENVAULT_MASTER_KEY_FILE pointing at an existing key file"
        );
    }
    let (ring, created) = KeyRing::load_or_create_file(&path)?;
    if created {
        let banner = format!(
            "WARNING: generated a development master key in {}.\n\
             WARNING: Every token is encrypted under it: losing it loses every connection.\n\
             WARNING: Production must supply its own keys (TOKENVAULT_MASTER_KEYS) from a secret manager.",
            path.display()
        );
        eprintln!("{banner}");
        tracing::warn!(path = %path.display(), "generated a development master key; production must supply its own");
    }
    Ok((ring, KeySource::File(path)))
}

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_database(config).await?.store())
}

/// The API-key table, migrated first when `migrate_on_start` is on (so
/// `api-keys create` works on a fresh install before the first `serve`).
pub async fn open_api_key_store(config: &Config) -> anyhow::Result<Arc<dyn ApiKeyStore>> {
    let database = open_database(config).await?;
    if config.migrate_on_start {
        database.store().migrate().await?;
    }
    Ok(SqlApiKeyStore::on(&database))
}

fn pool_options(config: &Config) -> PoolOptions {
    PoolOptions {
        max_connections: config.database_max_connections,
        ..PoolOptions::default()
    }
}

async fn open_database(config: &Config) -> anyhow::Result<Database> {
    Database::open(&config.database_url(), &pool_options(config))
        .await
        .context("opening the database (TOKENVAULT_DATABASE_URL)")
}

pub fn envelope(ring: KeyRing) -> Envelope {
    Envelope::new(Arc::new(ring))
}

/// The system clock moved by a fixed offset (test-only clock skew).
struct OffsetClock(chrono::Duration);

impl Clock for OffsetClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.0
    }
}

/// Everything `serve` needs, built once (the operator commands use it too).
pub async fn build_state(config: &Config) -> anyhow::Result<AppState> {
    build_state_with(config, None, &Leases::default()).await
}

/// [`build_state`] with a replaced clock and lease durations (see
/// [`crate::app::Overrides`]).
pub async fn build_state_with(
    config: &Config,
    clock: Option<Arc<dyn Clock>>,
    leases: &Leases,
) -> anyhow::Result<AppState> {
    if let Some(salt) = &config.log_salt {
        tokenvault::privacy::set_log_salt(salt.expose_secret().as_bytes());
    }
    let (ring, _) = load_key_ring(config)?;
    // The console lists the ring's keys, the active one first.
    let active = ring.active().id().to_string();
    let mut master_key_ids = vec![active.clone()];
    master_key_ids.extend(
        ring.keys()
            .iter()
            .map(|key| key.id().to_string())
            .filter(|id| *id != active),
    );
    let catalog = load_catalog(config)?;
    let oauth = OAuthClient::new(OAuthClientConfig::default())?;
    let integrations_config =
        crate::integrations_env::integrations_config(config, &catalog, |name| {
            std::env::var(name).ok()
        })?;
    // One pool serves the connection, state, device-session, bulk and
    // API-key stores.
    let opened = tokenvault::open::open(OpenOptions {
        database_url: &config.database_url(),
        pool: pool_options(config),
        migrate: config.migrate_on_start,
        keys: ring,
        catalog: &catalog,
        integrations: &integrations_config,
        oauth: &oauth,
    })
    .await
    .map_err(|err| match err {
        OpenError::Database(err) => {
            anyhow::Error::new(err).context("opening the database (TOKENVAULT_DATABASE_URL)")
        }
        OpenError::Integrations(err) => anyhow::Error::new(err).context("resolving integrations"),
        other => other.into(),
    })?;
    let database = opened.database;
    let integrations = opened.integrations;
    let clock: Arc<dyn Clock> = match clock {
        Some(clock) => clock,
        None if config.test_clock_offset_ms == 0 => Arc::new(SystemClock),
        None => Arc::new(OffsetClock(chrono::Duration::milliseconds(
            config.test_clock_offset_ms,
        ))),
    };
    let states = state_store(config, &database, Arc::clone(&clock))?;
    // Timed whatever the backend.
    let states = crate::metrics::TimedStateStore::wrap(states);
    let owner = format!("instance-{}", uuid::Uuid::new_v4());
    let journal_dir = config.refresh_journal_dir();
    let journal = Journal::open(&journal_dir, &owner).with_context(|| {
        format!(
            "cannot open the refresh journal in {}",
            journal_dir.display()
        )
    })?;
    let refresh_settings = refresh_settings(config);
    let vault = opened
        .builder
        .owner(owner)
        .journal(journal)
        .clock(clock)
        .events(events(config)?)
        .refresh_settings(RefreshSettings {
            in_flight_lease: leases.refresh.unwrap_or(refresh_settings.in_flight_lease),
            ..refresh_settings
        })
        .breaker(BreakerSettings {
            failure_threshold: config.breaker_failure_threshold.max(1),
            open_for: Duration::from_secs(config.breaker_open_secs),
            success_threshold: config.breaker_success_threshold.max(1),
        })
        .start()
        .await
        .context("loading integration health")?;
    // A stopped process's journal found at start-up is stored (or kept
    // trying) before the scheduler claims anything.
    vault.spawn_journal_drainer();
    let device = DeviceFlow::new(
        SqlDeviceSessionStore::on(&database),
        vault.clone(),
        Arc::clone(&integrations),
    );
    let bulk = BulkActions::new(vault.clone(), SqlBulkStore::on(&database))
        .with_max_items(config.bulk_max_items);
    let settings = Arc::new(FlowSettings::from_config(config)?);
    let secure_cookie = config.is_production() || settings.public_url.scheme() == "https";
    let connect = ConnectFlow::new(vault.clone(), Arc::clone(&states), settings.state_ttl);
    Ok(AppState::new(AppParts {
        bulk,
        vault,
        api_keys: ApiKeys::new(&config.api_keys, Some(SqlApiKeyStore::on(&database))),
        catalog: Arc::new(catalog),
        integrations,
        states,
        oauth,
        settings,
        theme: crate::http::pages::Theme::from_config(config)?,
        console: crate::http::admin::Console::new(
            SqlAdminSessionStore::on(&database),
            SqlApiKeyStore::on(&database),
            master_key_ids,
            secure_cookie,
        ),
        connect,
        app_tokens: Default::default(),
        device,
        limits: crate::http::Limits::from_config(config),
    }))
}

/// Retries OIDC discovery of the integrations that were unavailable at
/// start-up (backoff up to 10 s) until every one resolved or the app
/// stops; a resolved one serves at once.
pub fn spawn_discovery_retries(
    state: &AppState,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            let Some(next) = state.integrations.next_retry() else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            for key in state
                .integrations
                .retry_unavailable(&state.catalog, &state.oauth)
                .await
            {
                state.vault.integration_added(&key);
            }
        }
    })
}

/// Starts the background task that polls providers for pending device
/// sessions (RFC 8628). `serve` runs one per instance; instances share the
/// work through the database. Shut the handle down to stop it.
pub fn spawn_device_poller(state: &AppState) -> DevicePollerHandle {
    DevicePoller::new(state.device.clone(), PollerSettings::default()).spawn()
}

pub fn load_catalog(config: &Config) -> anyhow::Result<Catalog> {
    let catalog = Catalog::builtin();
    let Some(path) = &config.providers_file else {
        return Ok(catalog);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading providers_file {}", path.display()))?;
    catalog
        .merge_toml_str(&text)
        .with_context(|| format!("providers_file {}", path.display()))
}

fn state_store(
    config: &Config,
    database: &Database,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn StateStore>> {
    Ok(match (&config.redis_url, database) {
        // Lazy: a Redis outage must not keep the service from starting; it
        // shows in /readyz and as 503 state_store_unavailable on the flows.
        (Some(url), _) => Arc::new(
            RedisStateStore::connect_lazy(url, &RedisOptions::default())
                .context("TOKENVAULT_REDIS_URL")?,
        ),
        (None, database) => SqlStateStore::on(database, clock),
    })
}

/// Deletes expired OAuth states from the database (Redis expires its keys
/// itself; there this is a no-op) and expired admin console sessions every
/// `every` until `shutdown` turns true.
pub fn spawn_state_purger(
    states: Arc<dyn StateStore>,
    console_sessions: Arc<dyn tokenvault::admin_sessions::AdminSessionStore>,
    clock: Arc<dyn Clock>,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            match states.purge_expired().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "purged expired OAuth states"),
                Err(err) => tracing::warn!(error = %err, "purging expired OAuth states failed"),
            }
            if let Err(err) = console_sessions.purge_expired(clock.now()).await {
                tracing::warn!(error = %err, "purging expired console sessions failed");
            }
        }
    })
}

pub fn refresh_settings(config: &Config) -> RefreshSettings {
    RefreshSettings {
        rate_limit_per_second: Some(config.refresh_rate_limit_per_second).filter(|r| *r > 0),
        token_cache: Duration::from_millis(config.token_cache_ms),
        in_flight_lease: Duration::from_secs(config.refresh_in_flight_lease_secs.max(1)),
        takeover_grace: Duration::from_secs(config.refresh_takeover_grace_secs),
        ..RefreshSettings::default()
    }
}

pub fn scheduler_settings(config: &Config) -> SchedulerSettings {
    SchedulerSettings {
        tick: Duration::from_millis(config.scheduler_tick_ms.max(10)),
        batch: config.scheduler_batch.max(1),
        concurrency: config.scheduler_concurrency.max(1),
        retention: Some(Duration::from_secs(config.retention_days * 24 * 3600))
            .filter(|d| !d.is_zero()),
        history_retention: Some(Duration::from_secs(
            config.history_retention_days * 24 * 3600,
        ))
        .filter(|d| !d.is_zero()),
        ..SchedulerSettings::default()
    }
}

/// Which events to record: none without a webhook URL (nobody would read
/// them), else `webhook_events` or the default set.
pub fn events(config: &Config) -> anyhow::Result<Events> {
    let Some(url) = &config.webhook_url else {
        return Ok(Events::disabled());
    };
    if config.webhook_secret.is_none() {
        bail!("TOKENVAULT_WEBHOOK_SECRET is required with TOKENVAULT_WEBHOOK_URL ({url})");
    }
    if config.webhook_events.is_empty() {
        return Ok(Events::enabled(EventType::default_set()));
    }
    let types = config
        .webhook_events
        .iter()
        .map(|name| name.parse::<EventType>())
        .collect::<Result<_, _>>()
        .context("TOKENVAULT_WEBHOOK_EVENTS")?;
    Ok(Events::enabled(types))
}

/// Starts the background refresher unless `scheduler_enabled = false`.
pub fn spawn_scheduler(
    state: &AppState,
    config: &Config,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    config
        .scheduler_enabled
        .then(|| Scheduler::new(state.vault.clone(), scheduler_settings(config)).spawn(shutdown))
}

/// The bulk runner's settings from the configuration.
pub fn bulk_settings(config: &Config) -> BulkSettings {
    BulkSettings {
        concurrency: config.bulk_concurrency.max(1),
        ..BulkSettings::default()
    }
}
