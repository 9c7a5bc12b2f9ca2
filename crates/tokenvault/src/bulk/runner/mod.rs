//! Runs bulk actions: claims them under a lease, paces their sends, records
//! each item's outcome.

mod pacer;
mod send;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::{
    ActionState, BulkActionRecord, BulkActionView, BulkActions, BulkError, BulkItem, BulkSpec,
    ItemOutcome, ItemState,
};
use crate::refresh::chrono;
use crate::store::StoreError;
use pacer::Pacer;

/// Knobs of [`BulkWorker`].
#[derive(Debug, Clone)]
pub struct BulkSettings {
    /// Requests in flight per running action.
    pub concurrency: usize,
    /// How long an action's lease lasts; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often an idle worker looks for runnable actions.
    pub poll: Duration,
    /// Actions one worker runs at once.
    pub max_running: usize,
    /// Transient failures (5xx, network, token endpoint down) before an
    /// item fails.
    pub max_failures: u32,
    /// 429 answers before an item fails.
    pub max_rate_limited: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// For a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            lease_ttl: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            max_running: 4,
            max_failures: 5,
            max_rate_limited: 50,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            default_retry_after: Duration::from_secs(5),
        }
    }
}

/// Why [`BulkWorker::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every item reached a final state.
    Completed,
    Cancelled,
    /// Shutdown: requests in flight finished and the lease was released;
    /// any instance can go on with the rest.
    Stopped,
    /// Another instance holds the action now.
    LeaseLost,
}

/// Claims runnable actions and runs them; every instance may run one.
#[derive(Clone)]
pub struct BulkWorker {
    actions: BulkActions,
    settings: BulkSettings,
}

impl BulkWorker {
    pub fn new(actions: BulkActions, settings: BulkSettings) -> Self {
        Self { actions, settings }
    }

    /// The lease owner: this process's vault owner id.
    pub fn owner(&self) -> &str {
        self.actions.vault().owner()
    }

    /// Runs until `shutdown` turns true; then lets every running action
    /// finish its requests in flight and release its lease.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                if *shutdown.borrow() {
                    break;
                }
                while running.len() < self.settings.max_running {
                    match self.claim().await {
                        Ok(Some(action)) => {
                            let worker = self.clone();
                            let stop = shutdown.clone();
                            running.spawn(async move {
                                let id = action.id;
                                match worker.run_leased(action, stop).await {
                                    Ok(end) => tracing::info!(action = %id, end = ?end, "bulk action run ended"),
                                    Err(err) => tracing::error!(action = %id, error = %err, "bulk action run failed"),
                                }
                            });
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::warn!(error = %err, "claiming a bulk action failed");
                            break;
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    () = stop_requested(&mut shutdown) => {}
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            while running.join_next().await.is_some() {}
        })
    }

    async fn claim(&self) -> Result<Option<BulkActionRecord>, StoreError> {
        let now = self.actions.vault().clock().now();
        self.actions
            .store()
            .claim_action(self.owner(), now, now + chrono(self.settings.lease_ttl))
            .await
    }

    /// Persists an action already leased to this worker, so that no other
    /// runner (a `serve` instance on the same database) starts it before
    /// [`BulkWorker::run`] does here.
    pub async fn create(&self, spec: BulkSpec) -> Result<BulkActionView, BulkError> {
        let until = self.actions.vault().clock().now() + chrono(self.settings.lease_ttl);
        self.actions
            .create(spec, Some((self.owner().to_owned(), until)))
            .await
    }

    /// Runs action `id` here until it completes, is cancelled, another
    /// runner takes it over, or `shutdown` turns true. While a live runner
    /// elsewhere holds it, waits for that lease to end (and returns how the
    /// action ended if it ends there). An action already finished returns
    /// its end at once. Leases belong to the process (its vault's owner id),
    /// so within one process run an action from one place: here, or the
    /// [`BulkWorker::spawn`] loop.
    pub async fn run(
        &self,
        id: uuid::Uuid,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunEnd, BulkError> {
        let store = self.actions.store();
        loop {
            let now = self.actions.vault().clock().now();
            let until = now + chrono(self.settings.lease_ttl);
            if let Some(action) = store.take_action(id, self.owner(), now, until).await? {
                return Ok(self.run_leased(action, shutdown).await?);
            }
            let action = store.get(id).await?.ok_or(BulkError::NotFound)?;
            let wait = match action.state {
                ActionState::Completed => return Ok(RunEnd::Completed),
                ActionState::Cancelled => return Ok(RunEnd::Cancelled),
                // Held by a live runner: look again when its lease would
                // run out (it is renewed while that runner lives).
                ActionState::Active => action
                    .lease_until
                    .and_then(|until| (until - now).to_std().ok())
                    .unwrap_or_default()
                    .clamp(self.settings.poll, self.settings.lease_ttl),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop_requested(&mut shutdown) => return Ok(RunEnd::Stopped),
            }
        }
    }

    /// Runs one action we hold the lease of until it completes, is
    /// cancelled, the lease is lost, or `shutdown` turns true.
    async fn run_leased(
        &self,
        action: BulkActionRecord,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunEnd, StoreError> {
        let store = Arc::clone(self.actions.store());
        let clock = Arc::clone(self.actions.vault().clock());
        let id = action.id;
        let owner = self.owner().to_owned();
        let request = action
            .spec
            .request
            .to_api_request()
            .map_err(|err| StoreError::Corrupt(format!("bulk action {id}: {err}")))?;
        let interrupted = store
            .recover_interrupted(id, action.spec.request.is_idempotent(), clock.now())
            .await?;
        if interrupted > 0 {
            tracing::warn!(action = %id, interrupted, resent = action.spec.request.is_idempotent(), "items were in flight when their previous runner stopped");
        }
        let pacer = Arc::new(Pacer::new(action.rate_per_second));
        // A runner before us (stopped, crashed, or on another instance) may
        // have used this window already, and the provider counts those
        // requests too: start a window later. The margin covers clock skew
        // between instances.
        if let Some(last) = store.last_sent(id).await? {
            let recent = pacer.window + Duration::from_secs(2);
            if (clock.now() - last).to_std().unwrap_or_default() < recent {
                pacer.hold(pacer.window).await;
            }
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let store = Arc::clone(&store);
            let clock = Arc::clone(&clock);
            let lost = Arc::clone(&lost);
            let owner = owner.clone();
            let ttl = self.settings.lease_ttl;
            tokio::spawn(async move {
                let mut renewed_at = Instant::now();
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store
                        .renew_action(id, &owner, clock.now() + chrono(ttl))
                        .await
                    {
                        Ok(true) => renewed_at = Instant::now(),
                        Ok(false) => break,
                        // Keep sending only while the lease surely holds.
                        Err(err) if renewed_at.elapsed() < ttl * 2 / 3 => {
                            tracing::warn!(action = %id, error = %err, "renewing the bulk action lease failed; retrying");
                        }
                        Err(err) => {
                            tracing::error!(action = %id, error = %err, "cannot renew the bulk action lease; stopping");
                            break;
                        }
                    }
                }
                lost.store(true, Ordering::SeqCst);
            })
        };
        let concurrency = self.settings.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let batch = u32::try_from(concurrency * 2).unwrap_or(u32::MAX);
        let end = 'run: loop {
            if *shutdown.borrow() {
                break RunEnd::Stopped;
            }
            if lost.load(Ordering::SeqCst) {
                break RunEnd::LeaseLost;
            }
            let now = clock.now();
            let due = match store.due_items(id, now, batch).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(action = %id, error = %err, "reading due bulk items failed");
                    pause(&mut shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if due.is_empty() {
                if permits.available_permits() == concurrency
                    && self.try_complete(&action, &owner).await?
                {
                    break RunEnd::Completed;
                }
                let wait = match store.next_due(id).await? {
                    Some(at) => (at - clock.now()).to_std().unwrap_or_default(),
                    None => Duration::from_millis(50),
                };
                pause(
                    &mut shutdown,
                    wait.clamp(Duration::from_millis(10), Duration::from_millis(250)),
                )
                .await;
                continue;
            }
            for item in due {
                let permit = tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
                    () = stop_requested(&mut shutdown) => continue 'run,
                };
                tokio::select! {
                    () = pacer.turn() => {}
                    () = stop_requested(&mut shutdown) => continue 'run,
                }
                if lost.load(Ordering::SeqCst) {
                    continue 'run;
                }
                let attempt = i32::try_from(item.attempts + 1).unwrap_or(i32::MAX);
                if !store.start_item(id, item.seq, attempt, clock.now()).await? {
                    continue; // cancelled meanwhile
                }
                let worker = self.clone();
                let request = request.clone();
                let pacer = Arc::clone(&pacer);
                let action = action.clone();
                let lost = Arc::clone(&lost);
                tokio::spawn(async move {
                    let outcome = worker.send(&action, &item, request, pacer).await;
                    if !worker.record(&action, &item, attempt, &outcome).await {
                        // The outcome could not be written: stop so a later
                        // run recovers the item instead of this one waiting
                        // forever for it.
                        lost.store(true, Ordering::SeqCst);
                    }
                    drop(permit);
                });
            }
        };
        // Requests in flight finish and record their outcome.
        let _ = permits.acquire_many(concurrency as u32).await;
        renewer.abort();
        let end = match end {
            RunEnd::LeaseLost => match store.get(id).await?.map(|a| a.state) {
                Some(ActionState::Cancelled) => RunEnd::Cancelled,
                _ => RunEnd::LeaseLost,
            },
            RunEnd::Stopped => {
                store.release_action(id, &owner).await?;
                RunEnd::Stopped
            }
            other => other,
        };
        Ok(end)
    }

    async fn try_complete(
        &self,
        action: &BulkActionRecord,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let store = self.actions.store();
        let counts = store.counts(action.id).await?;
        if counts[&ItemState::Pending] + counts[&ItemState::Running] > 0 {
            return Ok(false);
        }
        let now = self.actions.vault().clock().now();
        let event = self
            .actions
            .completed_event(action, ActionState::Completed, &counts, now);
        let completed = store
            .complete(action.id, owner, now, event.as_ref())
            .await?;
        if completed {
            tracing::info!(action = %action.id, ?counts, "bulk action completed");
        }
        Ok(completed)
    }

    /// Writes the outcome; database hiccups are retried for about 30 s
    /// because losing a success would send it again after a restart.
    async fn record(
        &self,
        action: &BulkActionRecord,
        item: &BulkItem,
        attempt: i32,
        outcome: &ItemOutcome,
    ) -> bool {
        let store = self.actions.store();
        let mut delay = Duration::from_millis(100);
        for _ in 0..9 {
            let now = self.actions.vault().clock().now();
            match store
                .finish_item(action.id, item.seq, attempt, outcome, now)
                .await
            {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::warn!(action = %action.id, seq = item.seq, "the bulk item was taken over before its outcome was recorded");
                    return true;
                }
                Err(err) => {
                    tracing::warn!(action = %action.id, seq = item.seq, error = %err, "recording a bulk item outcome failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        false
    }
}

async fn pause(shutdown: &mut watch::Receiver<bool>, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = stop_requested(shutdown) => {}
    }
}

/// Resolves once a stop is requested; never, when the sender is gone
/// (an embedder that dropped it never asks to stop).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
