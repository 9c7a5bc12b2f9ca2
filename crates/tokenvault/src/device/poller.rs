//! The background loop that polls providers for pending device sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::{DeviceFlow, DeviceSession};
use crate::store::StoreError;

/// How a [`DevicePoller`] runs.
#[derive(Debug, Clone)]
pub struct PollerSettings {
    /// How often due sessions are looked for. Polls happen at most this much
    /// later than a session's interval allows.
    pub tick: Duration,
    /// Most polls in flight at once on this instance.
    pub concurrency: usize,
    /// How long a claim keeps other instances off a session; longer than a
    /// poll plus storing the grant can take (the OAuth client gives up after
    /// 20 s). A crashed instance's sessions are picked up after this.
    pub lease: Duration,
    /// Finished sessions are deleted this long after they finished.
    pub retention: Duration,
    /// How often finished sessions past retention are deleted.
    pub purge_every: Duration,
}

impl Default for PollerSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            concurrency: 16,
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_every: Duration::from_secs(3600),
        }
    }
}

/// Claims due sessions with a lease and polls them, at most
/// [`PollerSettings::concurrency`] at a time. Run one per instance; they
/// share the work through the table.
pub struct DevicePoller {
    flow: DeviceFlow,
    settings: PollerSettings,
    owner: String,
    permits: Arc<Semaphore>,
}

impl DevicePoller {
    pub fn new(flow: DeviceFlow, settings: PollerSettings) -> Self {
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Self {
            flow,
            settings,
            owner: format!("device-poller/{}", uuid::Uuid::new_v4()),
            permits,
        }
    }

    /// Claims under `owner` (default: a random `device-poller/<uuid>`); the
    /// service uses its instance id, so every lease it holds is findable.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The lease owner name this poller claims sessions under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims as many due sessions as there are free slots and starts
    /// polling each in `tasks`; returns how many it claimed.
    pub async fn tick(&self, tasks: &mut JoinSet<()>) -> Result<usize, StoreError> {
        let free = self.permits.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let now = self.flow.clock().now();
        let lease = chrono::Duration::from_std(self.settings.lease)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        let claimed = self
            .flow
            .store()
            .claim_due(
                now,
                u32::try_from(free).unwrap_or(u32::MAX),
                &self.owner,
                now + lease,
            )
            .await?;
        let count = claimed.len();
        for session in claimed {
            // Only this loop takes permits, and it claimed at most `free`.
            let permit = Arc::clone(&self.permits)
                .try_acquire_owned()
                .expect("claimed no more sessions than free slots");
            let flow = self.flow.clone();
            let owner = self.owner.clone();
            tasks.spawn(async move {
                poll_and_record(&flow, &owner, session).await;
                drop(permit);
            });
        }
        Ok(count)
    }

    /// Runs the loop on the Tokio runtime until the handle is shut down or
    /// dropped.
    pub fn spawn(self) -> DevicePollerHandle {
        let (stop, mut stopped) = watch::channel(false);
        let (quiet, quiet_ticks) = watch::channel(None);
        let task = tokio::spawn(async move {
            tracing::info!(owner = %self.owner, "device poller started");
            let mut tasks = JoinSet::new();
            let mut ticker = tokio::time::interval(self.settings.tick);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last_purge: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    // A stop request, or the handle was dropped.
                    _ = stopped.changed() => break,
                }
                while let Some(done) = tasks.try_join_next() {
                    if let Err(err) = done {
                        tracing::error!(error = %err, "a device poll task failed");
                    }
                }
                let started = Instant::now();
                if let Err(err) = self.tick(&mut tasks).await {
                    tracing::warn!(error = %err, "claiming due device sessions failed");
                }
                // Claimed polls run as tasks until a later tick joins them:
                // no task left means this tick found nothing due and no poll
                // is in flight.
                if tasks.is_empty() {
                    quiet.send_replace(Some(started));
                }
                if last_purge.is_none_or(|at| at.elapsed() >= self.settings.purge_every) {
                    last_purge = Some(Instant::now());
                    self.purge().await;
                }
            }
            // In-flight polls record their outcome, which releases their leases.
            while tasks.join_next().await.is_some() {}
            tracing::info!(owner = %self.owner, "device poller stopped");
        });
        DevicePollerHandle {
            stop,
            task,
            quiet_ticks,
        }
    }

    async fn purge(&self) {
        let Ok(retention) = chrono::Duration::from_std(self.settings.retention) else {
            return;
        };
        let before = self.flow.clock().now() - retention;
        match self.flow.store().purge_finished(before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "deleted finished device sessions"),
            Err(err) => tracing::warn!(error = %err, "purging device sessions failed"),
        }
    }
}

async fn poll_and_record(flow: &DeviceFlow, owner: &str, session: DeviceSession) {
    let outcome = flow.poll(&session).await;
    let now = flow.clock().now();
    match flow
        .store()
        .finish_poll(session.id, owner, &outcome, now)
        .await
    {
        Ok(true) if outcome.status.is_finished() => tracing::info!(
            session = %session.id,
            integration = %session.integration,
            status = %outcome.status,
            error = outcome.last_error.as_ref().map(|e| e.code.as_str()),
            "device session finished"
        ),
        Ok(true) => tracing::debug!(
            session = %session.id,
            interval = outcome.interval_secs,
            "device session still pending"
        ),
        Ok(false) => tracing::warn!(
            session = %session.id,
            status = %outcome.status,
            "lost the lease on a device session before recording its poll"
        ),
        Err(err) => tracing::error!(
            session = %session.id,
            error = %err,
            "recording a device poll failed; the session is polled again when its lease expires"
        ),
    }
}

/// Stops a spawned [`DevicePoller`]. Dropping the handle stops it too,
/// without waiting.
pub struct DevicePollerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// When the last tick started that found nothing due with no poll in
    /// flight.
    quiet_ticks: watch::Receiver<Option<Instant>>,
}

impl DevicePollerHandle {
    /// Waits until a tick that started at or after `instant` found no
    /// session due and no poll in flight: nothing that was due by then is
    /// being polled. Never returns while sessions keep being polled. False
    /// if the poller stopped first.
    pub async fn quiet_since(&self, instant: Instant) -> bool {
        let mut ticks = self.quiet_ticks.clone();
        ticks
            .wait_for(|last| last.is_some_and(|started| started >= instant))
            .await
            .is_ok()
    }

    /// Stops claiming sessions, waits for the polls in flight to record their
    /// outcome (releasing their leases), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "the device poller task failed");
        }
    }
}
