//! The background refresher: each tick claims due connections (O(due),
//! leased, so several instances share the work without overlap), refreshes
//! them with bounded concurrency through the same single-flight path as
//! on-demand reads, and reschedules them with jitter. It also applies the
//! retention policy and reloads shared integration health.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot, watch};

use super::{TokenError, TokenOutcome, chrono};
use crate::domain::ConnectionStatus;
use crate::store::{BatchUpdate, ConnectionRecord, ConnectionStore, ConnectionUpdate, StoreError};
use crate::vault::Vault;

/// Most rows one batched write-back carries.
const WRITE_BATCH: usize = 256;

type WriteRequest = (
    BatchUpdate,
    oneshot::Sender<(Result<i64, StoreError>, ConnectionUpdate)>,
);

/// A tick's batched write-back of refreshed tokens: each refresh hands its
/// compare-and-swap update over and waits for its own answer; the writer
/// takes whatever has queued up meanwhile as one
/// [`ConnectionStore::update_batch`] (group commit: no waiting when idle,
/// bigger batches under load).
pub(crate) struct WriteBack {
    requests: mpsc::UnboundedSender<WriteRequest>,
}

impl WriteBack {
    fn channel() -> (Self, mpsc::UnboundedReceiver<WriteRequest>) {
        let (requests, receiver) = mpsc::unbounded_channel();
        (Self { requests }, receiver)
    }

    /// Writes `entry` in the next batch; hands the update back for retries.
    pub(super) async fn write(
        &self,
        entry: BatchUpdate,
    ) -> (Result<i64, StoreError>, ConnectionUpdate) {
        let (answer, answered) = oneshot::channel();
        let closed = |update| {
            let err = StoreError::Unavailable {
                backend: "database",
                target: "the batched write-back".into(),
                reason: "it stopped".into(),
            };
            (Err(err), update)
        };
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
    async fn run(
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
                        let err = StoreError::Unavailable {
                            backend: "database",
                            target: "the batched write-back".into(),
                            reason: reason.clone(),
                        };
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
}

impl Scheduler {
    pub fn new(vault: Vault, settings: SchedulerSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Self {
            vault,
            settings,
            slots,
        }
    }

    /// Claims one batch of due connections and handles it.
    pub async fn tick(&self) -> Result<TickReport, StoreError> {
        let now = self.vault.clock().now();
        let lease_until = now + chrono(self.vault.settings().lease_ttl);
        // Before the claim: a write of this process after this point may
        // not be in the claimed copy.
        let seq = self.vault.local().seq();
        let leased_at = Instant::now();
        let claimed = self
            .vault
            .store()
            .claim_due(now, self.settings.batch, self.vault.owner(), lease_until)
            .await?;
        let mut report = TickReport {
            claimed: claimed.len(),
            ..TickReport::default()
        };
        let (writer, requests) = WriteBack::channel();
        let handling = async {
            let writer = writer;
            // The slots bound the refreshes between claim and write-back; a
            // refresh waiting for its batched write no longer holds one.
            let mut handled: FuturesUnordered<_> = claimed
                .into_iter()
                .map(|record| self.handle(record, seq, leased_at, &self.slots, &writer))
                .collect();
            while let Some(outcome) = handled.next().await {
                match outcome {
                    Handled::Refreshed => report.refreshed += 1,
                    Handled::Failed => report.failed += 1,
                    Handled::Expired => report.expired += 1,
                    Handled::Skipped => report.skipped += 1,
                }
            }
        };
        tokio::join!(
            handling,
            WriteBack::run(Arc::clone(self.vault.store()), requests)
        );
        Ok(report)
    }

    async fn handle(
        &self,
        record: ConnectionRecord,
        seq: u64,
        leased_at: Instant,
        slots: &Semaphore,
        writer: &WriteBack,
    ) -> Handled {
        let permit = slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let vault = &self.vault;
        let now = vault.clock().now();
        let Some(integration) = vault.integrations().get(&record.integration).cloned() else {
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
        };
        match vault
            .refresh_claimed(record, tokens, &integration, seq, leased_at, batch)
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

    /// Applies the retention policy once.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let Some(retention) = self.settings.retention else {
            return Ok(0);
        };
        let before = self.vault.clock().now() - chrono(retention);
        self.vault
            .store()
            .purge(
                &[ConnectionStatus::Disconnected, ConnectionStatus::Expired],
                before,
            )
            .await
    }

    /// Runs ticks until `shutdown` turns true; the ticks in progress finish
    /// (their refreshes complete and release their leases) before it
    /// returns. [`TICKS_IN_FLIGHT`] ticks run at once, sharing the refresh
    /// slots; the first also applies retention and reloads integration
    /// health.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
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
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(
                        purged,
                        "retention: deleted old disconnected/expired connections"
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
