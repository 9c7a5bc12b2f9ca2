//! The background refresher: each tick claims due connections (O(due),
//! leased, so several instances share the work without overlap), refreshes
//! them with bounded concurrency through the same single-flight path as
//! on-demand reads, and reschedules them with jitter. It also applies the
//! retention policy and reloads shared integration health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot, watch};

use super::{TokenError, TokenOutcome, chrono};
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey};
use crate::store::{
    BatchUpdate, ConnectionRecord, ConnectionStore, ConnectionUpdate, LeaseRenewal, StoreError,
};
use crate::vault::Vault;

/// Most rows one batched write-back carries.
const WRITE_BATCH: usize = 256;

type WriteRequest = (
    BatchUpdate,
    oneshot::Sender<(Result<i64, StoreError>, ConnectionUpdate)>,
);

type RenewRequest = (LeaseRenewal, oneshot::Sender<Result<bool, StoreError>>);

/// A tick's batched writes: the write-back of refreshed tokens, and the
/// in-flight leases each refresh takes right before its provider call
/// (R3). Each refresh hands its request over and waits for its own answer;
/// each writer takes whatever has queued up meanwhile as one
/// [`ConnectionStore::update_batch`] or [`ConnectionStore::renew_leases`]
/// (group commit: no waiting when idle, bigger batches under load). One
/// commit per renewal made the renewals PostgreSQL's busiest statement:
/// measured at 2.5 ms each under B2's load, 80 % of a refresh slot's time.
pub(crate) struct WriteBack {
    requests: mpsc::UnboundedSender<WriteRequest>,
    renewals: mpsc::UnboundedSender<RenewRequest>,
}

const WRITE_BACK: &str = "the batched write-back";
const RENEWAL: &str = "the batched lease renewal";

/// What each request of a batch that failed (or of a writer that stopped)
/// is answered: the database was unavailable to it.
fn batch_failed(target: &str, reason: String) -> StoreError {
    StoreError::Unavailable {
        backend: "database",
        target: target.into(),
        reason,
    }
}

/// What [`WriteBack::run`] reads.
pub(crate) struct WriteBackQueues {
    requests: mpsc::UnboundedReceiver<WriteRequest>,
    renewals: mpsc::UnboundedReceiver<RenewRequest>,
}

impl WriteBack {
    fn channel() -> (Self, WriteBackQueues) {
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (renewals, renewals_rx) = mpsc::unbounded_channel();
        (
            Self { requests, renewals },
            WriteBackQueues {
                requests: requests_rx,
                renewals: renewals_rx,
            },
        )
    }

    /// Renews `renewal`'s lease in the next batch of renewals.
    pub(super) async fn renew(&self, renewal: LeaseRenewal) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        if self.renewals.send((renewal, answer)).is_err() {
            return Err(batch_failed(RENEWAL, "it stopped".into()));
        }
        answered
            .await
            .expect("the renewer answers every request it takes")
    }

    /// Writes `entry` in the next batch; hands the update back for retries.
    pub(super) async fn write(
        &self,
        entry: BatchUpdate,
    ) -> (Result<i64, StoreError>, ConnectionUpdate) {
        let (answer, answered) = oneshot::channel();
        let closed = |update| (Err(batch_failed(WRITE_BACK, "it stopped".into())), update);
        if let Err(mpsc::error::SendError((entry, _))) = self.requests.send((entry, answer)) {
            return closed(entry.update);
        }
        // The writer runs in the same task as every refresh of the tick and
        // answers each request it took before it stops.
        answered
            .await
            .expect("the write-back answers every request it takes")
    }

    /// Runs until every [`WriteBack`] is dropped.
    async fn run(store: Arc<dyn ConnectionStore>, owner: &str, queues: WriteBackQueues) {
        tokio::join!(
            Self::write_backs(Arc::clone(&store), queues.requests),
            Self::renew_leases(store, owner, queues.renewals)
        );
    }

    async fn renew_leases(
        store: Arc<dyn ConnectionStore>,
        owner: &str,
        mut receiver: mpsc::UnboundedReceiver<RenewRequest>,
    ) {
        let mut pending = Vec::new();
        while receiver.recv_many(&mut pending, WRITE_BATCH).await > 0 {
            let (renewals, answers): (Vec<LeaseRenewal>, Vec<_>) = pending.drain(..).unzip();
            match store.renew_leases(owner, &renewals).await {
                Ok(renewed) => {
                    for (renewed, answer) in renewed.into_iter().zip(answers) {
                        let _ = answer.send(Ok(renewed));
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    for answer in answers {
                        let _ = answer.send(Err(batch_failed(RENEWAL, reason.clone())));
                    }
                }
            }
        }
    }

    async fn write_backs(
        store: Arc<dyn ConnectionStore>,
        mut receiver: mpsc::UnboundedReceiver<WriteRequest>,
    ) {
        let mut pending = Vec::new();
        while receiver.recv_many(&mut pending, WRITE_BATCH).await > 0 {
            let (entries, answers): (Vec<BatchUpdate>, Vec<_>) = pending.drain(..).unzip();
            match store.update_batch(&entries).await {
                Ok(results) => {
                    for ((result, entry), answer) in results.into_iter().zip(entries).zip(answers) {
                        let _ = answer.send((result, entry.update));
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    for (entry, answer) in entries.into_iter().zip(answers) {
                        let err = batch_failed(WRITE_BACK, reason.clone());
                        let _ = answer.send((Err(err), entry.update));
                    }
                }
            }
        }
    }
}

/// What a claimed refresh needs to write through the tick's batch: its
/// refresh slot, given back before the write so that waiting for the
/// batch does not hold up the next provider call.
pub(crate) struct Batch<'a> {
    pub writer: &'a WriteBack,
    pub permit: Option<SemaphorePermit<'a>>,
    /// Turns true when the process stops: a refresh not yet at the
    /// provider gives its row back instead.
    pub stopping: watch::Receiver<bool>,
}

/// `record` after `update` was written at `version`.
pub(super) fn applied(
    record: &ConnectionRecord,
    update: &ConnectionUpdate,
    version: i64,
) -> ConnectionRecord {
    ConnectionRecord {
        status: update.status,
        scopes: update.scopes.clone(),
        token_type: update.token_type,
        expires_at: update.expires_at,
        next_refresh_at: update.next_refresh_at,
        refresh_attempts: update.refresh_attempts,
        last_error: update.last_error.clone(),
        last_refreshed_at: update.last_refreshed_at,
        failing_since: update.failing_since,
        version,
        access_token: update.access_token.clone(),
        refresh_token: update.refresh_token.clone(),
        metadata: update.metadata.clone(),
        lease: update.lease.clone(),
        updated_at: update.updated_at,
        ..record.clone()
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Pause between ticks when the last one found less than a full batch.
    pub tick: Duration,
    /// Rows claimed per tick.
    pub batch: u32,
    /// Refreshes in flight at once (per instance).
    pub concurrency: usize,
    /// Disconnected and expired rows untouched this long are deleted;
    /// `None` keeps them forever.
    pub retention: Option<Duration>,
    /// Connection history entries older than this are deleted; `None`
    /// keeps them forever.
    pub history_retention: Option<Duration>,
    pub retention_every: Duration,
    /// How often shared integration health (misconfigured verdicts) is reloaded.
    pub health_sync_every: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            batch: 100,
            concurrency: 16,
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            history_retention: Some(Duration::from_secs(90 * 24 * 3600)),
            retention_every: Duration::from_secs(3600),
            health_sync_every: Duration::from_secs(5),
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub claimed: usize,
    pub refreshed: usize,
    pub failed: usize,
    pub expired: usize,
    /// Claimed but left alone (already fresh, integration gone, leased elsewhere).
    pub skipped: usize,
}

enum Handled {
    Refreshed,
    Failed,
    Expired,
    Skipped,
}

/// Ticks a spawned scheduler runs at once: while one claims its batch or
/// waits for its slowest refresh and last write-back, the other keeps the
/// refresh slots busy. They share the slots, so at most
/// `concurrency` refreshes are in flight in all.
const TICKS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct Scheduler {
    vault: Vault,
    settings: SchedulerSettings,
    /// Refreshes between claim and write-back, across concurrent ticks.
    slots: Arc<Semaphore>,
    /// Claimed rows not yet handled, per integration, across ticks: what
    /// the rate budget still has to get through within the lease.
    queued: Arc<DashMap<IntegrationKey, usize>>,
    /// Turns true when the process stops (never, for a scheduler that was
    /// not spawned).
    stopping: watch::Receiver<bool>,
    _never_stops: Arc<watch::Sender<bool>>,
}

/// Counts a claimed row in [`Scheduler::queued`] until dropped.
struct Queued<'a> {
    queued: &'a DashMap<IntegrationKey, usize>,
    key: IntegrationKey,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(mut count) = self.queued.get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
    }
}

impl Scheduler {
    pub fn new(vault: Vault, settings: SchedulerSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let (never, stopping) = watch::channel(false);
        Self {
            vault,
            settings,
            slots,
            queued: Arc::new(DashMap::new()),
            stopping,
            _never_stops: Arc::new(never),
        }
    }

    /// How many more rows this instance may claim: what the rate budgets
    /// of the configured integrations get through within half a lease,
    /// less what is already queued (R4). Unlimited integrations leave the
    /// batch size as the bound.
    fn claim_budget(&self) -> u32 {
        let window = self.vault.settings().lease_ttl / 2;
        let mut budget = 0usize;
        for integration in self.vault.integrations().all() {
            let key = integration.key();
            let Some(health) = self.vault.health(key) else {
                continue;
            };
            let Some(per_window) = health.refreshes_within(window) else {
                return self.settings.batch;
            };
            let queued = self.queued.get(key).map_or(0, |q| *q);
            budget = budget.saturating_add(per_window.saturating_sub(queued));
        }
        u32::try_from(budget)
            .unwrap_or(u32::MAX)
            .min(self.settings.batch)
    }

    /// Admits a claimed row into the queue of its integration if the rate
    /// budget can reach it within half a lease; `None` when it cannot.
    fn admit(&self, record: &ConnectionRecord) -> Option<Queued<'_>> {
        let window = self.vault.settings().lease_ttl / 2;
        let limit = self
            .vault
            .health(&record.integration)
            .and_then(|health| health.refreshes_within(window))
            .unwrap_or(usize::MAX);
        let mut count = self.queued.entry(record.integration.clone()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Queued {
            queued: &self.queued,
            key: record.integration.clone(),
        })
    }

    /// Claims one batch of due connections and handles it.
    pub async fn tick(&self) -> Result<TickReport, StoreError> {
        // R5: answers this process (or a dead one) journaled go first; no
        // new claims until they are stored.
        if !self.vault.drain_journal().await {
            return Ok(TickReport::default());
        }
        if *self.stopping.borrow() {
            return Ok(TickReport::default());
        }
        let limit = self.claim_budget();
        if limit == 0 {
            return Ok(TickReport::default());
        }
        let now = self.vault.clock().now();
        let lease_until = now + chrono(self.vault.settings().lease_ttl);
        // Before the claim: a write of this process after this point may
        // not be in the claimed copy.
        let seq = self.vault.local().seq();
        let claimed = self
            .vault
            .store()
            .claim_due(
                now,
                limit,
                self.vault.owner(),
                self.vault.takeover_before(now),
                lease_until,
            )
            .await;
        self.vault.observe_db(&claimed);
        let claimed = claimed?;
        let mut report = TickReport {
            claimed: claimed.len(),
            ..TickReport::default()
        };
        let mut admitted = Vec::with_capacity(claimed.len());
        for record in claimed {
            match self.admit(&record) {
                Some(queued) => admitted.push((record, queued)),
                None => {
                    // More than the rate budget reaches within the lease:
                    // give it back for another instance (or a later tick).
                    self.vault.release(&record).await;
                    report.skipped += 1;
                }
            }
        }
        let waiting: Mutex<HashMap<ConnectionId, i64>> = Mutex::new(
            admitted
                .iter()
                .map(|(record, _)| (record.id, record.version))
                .collect(),
        );
        let (writer, requests) = WriteBack::channel();
        let handled_all = tokio::sync::Notify::new();
        let handling = async {
            let writer = writer;
            // The slots bound the refreshes between claim and write-back; a
            // refresh waiting for its batched write no longer holds one.
            let mut handled: FuturesUnordered<_> = admitted
                .into_iter()
                .map(|(record, queued)| {
                    self.handle(record, queued, seq, &self.slots, &writer, &waiting)
                })
                .collect();
            while let Some(outcome) = handled.next().await {
                match outcome {
                    Handled::Refreshed => report.refreshed += 1,
                    Handled::Failed => report.failed += 1,
                    Handled::Expired => report.expired += 1,
                    Handled::Skipped => report.skipped += 1,
                }
            }
            handled_all.notify_one();
        };
        tokio::join!(
            handling,
            self.renew_waiting(&waiting, &handled_all),
            WriteBack::run(Arc::clone(self.vault.store()), self.vault.owner(), requests)
        );
        Ok(report)
    }

    /// Renews the leases of claimed rows still waiting for a refresh slot,
    /// every third of a lease, until the tick has handled them all (R4). A
    /// row whose renewal fails moved meanwhile: it is dropped from the
    /// waiting set, and its refresh will find that out before presenting.
    async fn renew_waiting(
        &self,
        waiting: &Mutex<HashMap<ConnectionId, i64>>,
        handled_all: &tokio::sync::Notify,
    ) {
        let period = (self.vault.settings().lease_ttl / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = handled_all.notified() => return,
                () = tokio::time::sleep(period) => {}
            }
            let lease_until = self.vault.clock().now() + chrono(self.vault.settings().lease_ttl);
            let renewals: Vec<LeaseRenewal> = waiting
                .lock()
                .unwrap()
                .iter()
                .map(|(&id, &expected_version)| LeaseRenewal {
                    id,
                    expected_version,
                    lease_until,
                })
                .collect();
            let renewed = self
                .vault
                .store()
                .renew_leases(self.vault.owner(), &renewals)
                .await;
            self.vault.observe_db(&renewed);
            let renewed = renewed.unwrap_or_else(|_| vec![false; renewals.len()]);
            let mut waiting = waiting.lock().unwrap();
            for (renewal, renewed) in renewals.iter().zip(renewed) {
                if !renewed {
                    waiting.remove(&renewal.id);
                }
            }
        }
    }

    async fn handle(
        &self,
        record: ConnectionRecord,
        _queued: Queued<'_>,
        seq: u64,
        slots: &Semaphore,
        writer: &WriteBack,
        waiting: &Mutex<HashMap<ConnectionId, i64>>,
    ) -> Handled {
        let vault = &self.vault;
        let mut stopping = self.stopping.clone();
        let permit = tokio::select! {
            permit = slots.acquire() => Some(permit.expect("the semaphore is never closed")),
            () = super::stopped(&mut stopping) => None,
        };
        let Some(permit) = permit else {
            // Stopping: rows not started go back at once.
            waiting.lock().unwrap().remove(&record.id);
            vault.release(&record).await;
            return Handled::Skipped;
        };
        waiting.lock().unwrap().remove(&record.id);
        let now = vault.clock().now();
        let Some(integration) = vault.integrations().get(&record.integration) else {
            // Removed from the configuration: look again in an hour.
            vault
                .postpone(&record, now + chrono::Duration::hours(1))
                .await;
            return Handled::Skipped;
        };
        let tokens = match vault.open(&record).await {
            Ok(Some(tokens)) if record.status.is_refreshable() => tokens,
            Ok(_) => {
                vault.release(&record).await;
                return Handled::Skipped;
            }
            Err(err) => {
                tracing::error!(connection = %record.id, error = %err, "cannot open a due connection's tokens");
                vault
                    .postpone(&record, now + chrono::Duration::hours(1))
                    .await;
                return Handled::Failed;
            }
        };
        if !tokens.can_refresh() {
            return match tokens.expires_at {
                Some(_) if tokens.is_expired(now) => {
                    vault.mark_expired(&record).await;
                    Handled::Expired
                }
                Some(expires_at) => {
                    vault.postpone(&record, expires_at).await;
                    Handled::Skipped
                }
                None => {
                    vault.postpone(&record, now).await;
                    Handled::Skipped
                }
            };
        }
        let id = record.id;
        let batch = Batch {
            writer,
            permit: Some(permit),
            stopping: self.stopping.clone(),
        };
        match vault
            .refresh_claimed(record, tokens, &integration, seq, batch)
            .await
        {
            Ok(Some(issued)) if issued.outcome == TokenOutcome::Refreshed => Handled::Refreshed,
            Ok(_) => Handled::Skipped,
            Err(TokenError::NeedsReauth {
                status: ConnectionStatus::Expired,
                ..
            }) => Handled::Expired,
            Err(err) => {
                tracing::debug!(connection = %id, error = %err, "scheduled refresh did not complete");
                Handled::Failed
            }
        }
    }

    /// Applies the retention policies once: old disconnected and expired
    /// connections, then old history entries. Answers how many of each
    /// were deleted.
    pub async fn purge(&self) -> Result<(u64, u64), StoreError> {
        let now = self.vault.clock().now();
        let connections = match self.settings.retention {
            Some(retention) => {
                self.vault
                    .store()
                    .purge(
                        &[ConnectionStatus::Disconnected, ConnectionStatus::Expired],
                        now - chrono(retention),
                    )
                    .await?
            }
            None => 0,
        };
        let history = match self.settings.history_retention {
            Some(retention) => {
                self.vault
                    .database()
                    .purge_history(now - chrono(retention))
                    .await?
            }
            None => 0,
        };
        Ok((connections, history))
    }

    /// Runs ticks until `shutdown` turns true. Then no tick claims again,
    /// claimed rows not yet at the provider are given back at once, and
    /// only the provider calls already in flight finish (and store their
    /// outcome) before it returns. [`TICKS_IN_FLIGHT`] ticks run at once, sharing the refresh
    /// slots; the first also applies retention and reloads integration
    /// health.
    pub fn spawn(mut self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        self.stopping = shutdown.clone();
        tokio::spawn(async move {
            let loops = (0..TICKS_IN_FLIGHT).map(|n| self.run(n == 0, shutdown.clone()));
            futures::future::join_all(loops).await;
        })
    }

    async fn run(&self, maintains: bool, mut shutdown: watch::Receiver<bool>) {
        let mut last_purge: Option<Instant> = None;
        let mut last_sync: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if maintains
                && last_sync.is_none_or(|at| at.elapsed() >= self.settings.health_sync_every)
            {
                if let Err(err) = self.vault.sync_integration_health().await {
                    tracing::warn!(error = %err, "reloading integration health failed");
                }
                last_sync = Some(Instant::now());
            }
            if maintains
                && last_purge.is_none_or(|at| at.elapsed() >= self.settings.retention_every)
            {
                match self.purge().await {
                    Ok((0, 0)) => {}
                    Ok((connections, history)) => tracing::info!(
                        connections,
                        history,
                        "retention: deleted old disconnected/expired connections and history entries"
                    ),
                    Err(err) => tracing::warn!(error = %err, "retention purge failed"),
                }
                last_purge = Some(Instant::now());
            }
            let full = match self.tick().await {
                Ok(report) => {
                    if report.claimed > 0 {
                        tracing::debug!(?report, "refresh tick");
                    }
                    report.claimed as u32 >= self.settings.batch
                }
                Err(err) => {
                    tracing::warn!(error = %err, "refresh tick failed");
                    false
                }
            };
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.tick) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}
