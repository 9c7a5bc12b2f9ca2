//! The service's lifecycle: [`App::build`] wires every part from the
//! configuration and binds the listeners; [`App::run_until`] serves and runs
//! the background work until a shutdown future resolves, then stops in a
//! bounded time. `tokenvault serve` and the integration tests both start the
//! service this way; tests replace the clock, lease durations and tick
//! intervals through [`Overrides`] instead of waiting on wall-clock time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokenvault::bulk::BulkWorker;
use tokenvault::device::{DevicePoller, PollerSettings};
use tokenvault::domain::Clock;
use tokenvault::events::{WebhookDeliverer, WebhookSettings};
use tokenvault::refresh::Scheduler;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::listener::{self, ConnectionLimits};
use crate::{metrics, wiring};

/// What a test (or an embedding program) replaces in an app built from
/// configuration. `Default` changes nothing.
#[derive(Default)]
pub struct Overrides {
    /// Serve on this already-bound listener instead of binding `bind`
    /// (lets a test know its URL before the configuration is final).
    pub listener: Option<TcpListener>,
    /// The clock every part reads (default: the system clock, moved by
    /// `test_clock_offset_ms`).
    pub clock: Option<Arc<dyn Clock>>,
    pub leases: Leases,
    pub ticks: Ticks,
    /// Run no background work (refresh scheduler, bulk runner, webhook
    /// delivery, device poller, state purger): only the HTTP API.
    pub without_background_work: bool,
}

/// Lease durations; `None` keeps the configured or built-in value.
#[derive(Debug, Default, Clone, Copy)]
pub struct Leases {
    /// A refresh's in-flight lease (`refresh_in_flight_lease_secs`).
    pub refresh: Option<Duration>,
    /// A device-flow poll's claim on its session (30 s).
    pub device: Option<Duration>,
    /// A bulk action's lease on its runner (30 s, renewed every third).
    pub bulk: Option<Duration>,
    /// A webhook batch's claim (50 s).
    pub webhook: Option<Duration>,
}

/// Tick intervals of the background work; `None` keeps the configured or
/// built-in value.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ticks {
    /// The refresh scheduler's pause between claims (`scheduler_tick_ms`).
    pub scheduler: Option<Duration>,
    /// An idle bulk runner's look for runnable actions (1 s).
    pub bulk: Option<Duration>,
    /// An idle webhook deliverer's look for due events (500 ms).
    pub webhook: Option<Duration>,
    /// The device poller's look for due sessions (1 s).
    pub device: Option<Duration>,
    /// Deletion of expired OAuth states (60 s).
    pub state_purge: Option<Duration>,
}

/// A service wired and listening, not yet serving.
pub struct App {
    config: Config,
    state: AppState,
    listener: TcpListener,
    metrics: Option<(TcpListener, PrometheusHandle)>,
    overrides: RunOverrides,
}

/// The parts of [`Overrides`] used after the build.
struct RunOverrides {
    leases: Leases,
    ticks: Ticks,
    without_background_work: bool,
}

/// How a [`App::run_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Everything in flight finished within `shutdown_grace_secs`.
    pub within_grace: bool,
    /// Every refreshed token is stored (none left only in the journal).
    pub journal_drained: bool,
}

impl App {
    /// Opens the database (migrating it when `migrate_on_start`), resolves
    /// the integrations, builds the vault and every store, and binds the
    /// API listener (and the metrics listener when `metrics_bind` is set).
    pub async fn build(config: Config, overrides: Overrides) -> anyhow::Result<App> {
        // Before the state is built: start-up already sets integration gauges.
        let recorder = config.metrics_bind.map(|bind| (bind, metrics::install()));
        let state = wiring::build_state_with(&config, overrides.clock, &overrides.leases).await?;
        let listener = match overrides.listener {
            Some(listener) => listener,
            None => TcpListener::bind(config.bind)
                .await
                .with_context(|| format!("cannot listen on {}", config.bind))?,
        };
        let metrics = match recorder {
            Some((bind, handle)) => Some((
                TcpListener::bind(bind)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {bind}"))?,
                handle,
            )),
            None => None,
        };
        Ok(App {
            config,
            state,
            listener,
            metrics,
            overrides: RunOverrides {
                leases: overrides.leases,
                ticks: overrides.ticks,
                without_background_work: overrides.without_background_work,
            },
        })
    }

    /// Where the API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, when `metrics_bind` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(|(listener, _)| listener.local_addr().expect("bound"))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves the API and runs the background work until `shutdown`
    /// resolves (or the listener fails). Then the stop is bounded: background
    /// work takes nothing new (claimed rows not yet at a provider go back at
    /// once), requests and provider calls in flight get
    /// `shutdown_grace_secs` to finish and store their outcome, and the
    /// journal is drained into the database where it can be.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Stopped> {
        let App {
            config,
            state,
            listener,
            metrics,
            overrides,
        } = self;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, integrations = state.integrations.len(), "listening");
        let metrics = match metrics {
            Some((listener, handle)) => {
                let server = metrics::start(listener, handle, &state)?;
                tracing::info!(addr = %server.addr(), "metrics listening");
                Some(server)
            }
            None => None,
        };
        let (stop, stopping) = watch::channel(false);
        let background = if overrides.without_background_work {
            Background::default()
        } else {
            Background::start(&state, &config, &overrides, &stopping)?
        };
        let vault = state.vault.clone();
        let mut http_stopping = stopping.clone();
        let mut served = tokio::spawn(listener::serve(
            listener,
            http::router(state),
            ConnectionLimits::from_config(&config),
            async move {
                let _ = http_stopping.wait_for(|stop| *stop).await;
            },
        ));
        // Until the shutdown future, or the server failing on its own.
        let early_exit = tokio::select! {
            () = shutdown => None,
            result = &mut served => Some(result),
        };
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        tracing::info!(grace_secs = grace.as_secs(), "stopping");
        let _ = stop.send(true);
        let finishing = async {
            background.finish().await;
            if early_exit.is_none() {
                let _ = (&mut served).await;
            }
        };
        let within_grace = tokio::time::timeout(grace, finishing).await.is_ok();
        if !within_grace {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown grace over; exiting with work still in flight (leases of unresolved provider calls stay until they expire, journaled answers are stored at the next start)"
            );
        }
        // Answers the database refused are kept on disk in the journal (R5).
        let journal_drained = vault.drain_journal().await;
        if !journal_drained {
            tracing::warn!(
                "exiting with refreshed tokens not yet stored; the refresh journal keeps them for the next start"
            );
        }
        if let Some(metrics) = metrics {
            metrics.shutdown().await;
        }
        if let Some(result) = early_exit {
            result??;
        }
        tracing::info!("stopped");
        Ok(Stopped {
            within_grace,
            journal_drained,
        })
    }
}

/// The background tasks of one running app.
#[derive(Default)]
struct Background {
    poller: Option<tokenvault::device::DevicePollerHandle>,
    purger: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Background {
    fn start(
        state: &AppState,
        config: &Config,
        overrides: &RunOverrides,
        stopping: &watch::Receiver<bool>,
    ) -> anyhow::Result<Background> {
        let (leases, ticks) = (&overrides.leases, &overrides.ticks);
        let owner = state.vault.owner().to_owned();
        let defaults = PollerSettings::default();
        let poller = DevicePoller::new(
            state.device.clone(),
            PollerSettings {
                tick: ticks.device.unwrap_or(defaults.tick),
                lease: leases.device.unwrap_or(defaults.lease),
                ..defaults
            },
        )
        .with_owner(format!("{owner}/device"))
        .spawn();
        let purger = wiring::spawn_state_purger(
            state.states.clone(),
            state.console.sessions.clone(),
            state.vault.clock().clone(),
            ticks.state_purge.unwrap_or(Duration::from_secs(60)),
            stopping.clone(),
        );
        let mut workers = Vec::new();
        if config.scheduler_enabled {
            let mut settings = wiring::scheduler_settings(config);
            settings.tick = ticks.scheduler.unwrap_or(settings.tick);
            workers.push(Scheduler::new(state.vault.clone(), settings).spawn(stopping.clone()));
        }
        if config.bulk_enabled {
            let mut settings = wiring::bulk_settings(config);
            settings.poll = ticks.bulk.unwrap_or(settings.poll);
            settings.lease_ttl = leases.bulk.unwrap_or(settings.lease_ttl);
            workers.push(BulkWorker::new(state.bulk.clone(), settings).spawn(stopping.clone()));
        }
        if let (Some(url), Some(secret)) = (&config.webhook_url, &config.webhook_secret) {
            let mut settings = WebhookSettings::new(url.clone(), secret.clone());
            settings.poll_interval = ticks.webhook.unwrap_or(settings.poll_interval);
            settings.lease = leases.webhook.unwrap_or(settings.lease);
            let deliverer = WebhookDeliverer::new(
                Arc::clone(state.vault.database()) as Arc<dyn tokenvault::store::EventOutbox>,
                settings,
                Arc::clone(state.vault.clock()),
            )
            .context("building the webhook HTTP client")?
            .with_owner(format!("{owner}/webhooks"));
            workers.push(deliverer.spawn(stopping.clone()));
        }
        if !state.integrations.unavailable().is_empty() {
            workers.push(wiring::spawn_discovery_retries(state, stopping.clone()));
        }
        Ok(Background {
            poller: Some(poller),
            purger: Some(purger),
            workers,
        })
    }

    async fn finish(self) {
        if let Some(poller) = self.poller {
            poller.shutdown().await;
        }
        for task in self.workers.into_iter().chain(self.purger) {
            let _ = task.await;
        }
    }
}
