//! The refresh journal's side of the vault: draining answers the database
//! refused, the takeover grace that protects them (R5, R6), and whether the
//! database is reachable.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::domain::{ConnectionStatus, TokenSet};
use crate::store::{ConnectionRecord, StoreError};
use crate::vault::Vault;

use super::*;

/// The refresh journal's side of the vault: draining answers the database
/// refused, and the takeover grace that protects them (R5, R6).
impl Vault {
    pub(crate) fn journal(&self) -> &journal::Journal {
        &self.inner.journal
    }

    /// The instant before which another owner's expired lease may be taken
    /// over: `now`, unless the database became reachable (or this process
    /// started) less than [`RefreshSettings::takeover_grace`] ago.
    pub(crate) fn takeover_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match *self.inner.db_reachable_since.lock().unwrap() {
            Some(at) if at.elapsed() >= self.settings().takeover_grace => now,
            _ => DateTime::UNIX_EPOCH,
        }
    }

    pub(crate) fn observe_db<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.db_reachable(),
            Err(err) => self.db_failed(err),
        }
    }

    pub(crate) fn db_reachable(&self) {
        self.inner
            .db_reachable_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }

    pub(crate) fn db_failed(&self, err: &StoreError) {
        if err.is_unavailable() {
            *self.inner.db_reachable_since.lock().unwrap() = None;
        }
    }

    /// Stores the answers the refresh journal holds (this process's that
    /// the database refused, and those a dead process left), and settles
    /// the calls a dead process left unanswered. True when nothing is left.
    pub async fn drain_journal(&self) -> bool {
        let journal = self.journal();
        if journal.is_drained() {
            return true;
        }
        let Ok(_draining) = self.inner.draining.try_lock() else {
            return false;
        };
        for answered in journal.pending() {
            let (id, update) = match (answered.id(), answered.to_update()) {
                (Ok(id), Ok(update)) => (id, update),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::error!(error = %err, "an unreadable refresh journal entry is skipped");
                    if let Ok(id) = answered.id() {
                        journal.stored(id);
                    }
                    continue;
                }
            };
            let written = self.store().update(id, answered.version(), &update).await;
            self.observe_db(&written);
            match written {
                Ok(_) => {
                    journal.stored(id);
                    metrics::counter!("tokenvault_refresh_journal_replayed_total", "outcome" => "stored").increment(1);
                    tracing::info!(connection = %id, "stored a refreshed token from the refresh journal");
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound) => {
                    // Reconnected, disconnected or taken over meanwhile: the
                    // row's newer state wins, as for any lost write.
                    journal.stored(id);
                    metrics::counter!("tokenvault_refresh_journal_replayed_total", "outcome" => "conflict").increment(1);
                    tracing::warn!(connection = %id, "a journaled refresh could not be stored: the connection changed meanwhile");
                }
                Err(err) if err.is_unavailable() => {
                    tracing::warn!(connection = %id, error = %err, "the refresh journal cannot be stored yet");
                    return false;
                }
                Err(err) => {
                    // Not an outage: retrying would block this instance's
                    // scheduler forever on one entry.
                    journal.stored(id);
                    metrics::counter!("tokenvault_refresh_journal_replayed_total", "outcome" => "failed").increment(1);
                    tracing::error!(connection = %id, error = %err, "a journaled refresh cannot be stored; the provider's answer is lost");
                }
            }
        }
        for unsettled in journal.unsettled() {
            let read = self.store().get_by_id(unsettled.id).await;
            self.observe_db(&read);
            let Ok(current) = read else {
                return false;
            };
            if let Some(record) = current
                && record.version == unsettled.version
                && record
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.owner == unsettled.owner)
            {
                // The dead holder's call has no answer anywhere: release
                // its in-flight lease so the connection is refreshed again
                // now rather than when that lease runs out.
                let mut update = record.to_update(self.clock().now());
                update.lease = None;
                let written = self
                    .store()
                    .update(record.id, record.version, &update)
                    .await;
                self.observe_db(&written);
                if let Err(err) = written
                    && err.is_unavailable()
                {
                    return false;
                }
            }
            journal.resolve_unsettled(unsettled.id);
            metrics::counter!("tokenvault_refresh_outcome_unknown_total", "reason" => "crash")
                .increment(1);
            tracing::warn!(connection = %unsettled.id, owner = %unsettled.owner, "refresh outcome unknown: a stopped process presented this connection's refresh token and left no answer");
        }
        journal.is_drained()
    }

    /// Keeps draining the journal in the background until it is empty
    /// (one such task at a time).
    pub fn spawn_journal_drainer(&self) {
        use std::sync::atomic::Ordering;
        if self.journal().is_drained() || self.inner.drainer_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let vault = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                if vault.drain_journal().await {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            vault.inner.drainer_running.store(false, Ordering::Release);
            // An answer journaled after the last look starts a new drainer.
            if !vault.journal().is_drained() {
                vault.spawn_journal_drainer();
            }
        });
    }
}

/// The opened tokens of a connection that can still hand some out.
/// Which sealed tokens [`usable`] opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// A read: the refresh token stays sealed (`refresh_token: None`).
    AccessOnly,
    /// A refresh: both.
    Both,
}

pub(super) async fn usable(
    vault: &Vault,
    record: &ConnectionRecord,
    opening: Opening,
) -> Result<TokenSet, TokenError> {
    match record.status {
        ConnectionStatus::Disconnected => return Err(TokenError::NotConnected),
        status @ (ConnectionStatus::NeedsReauth | ConnectionStatus::Expired) => {
            return Err(TokenError::NeedsReauth {
                status,
                last_error: record.last_error.clone(),
            });
        }
        ConnectionStatus::Connected | ConnectionStatus::Error => {}
    }
    let opened = match opening {
        Opening::AccessOnly => vault.open_access(record).await?,
        Opening::Both => vault.open(record).await?,
    };
    opened.ok_or(TokenError::NotConnected)
}
