//! Master-key rotation: re-wrap every data key under the active master key,
//! in batches, while the service keeps serving. Token blobs are untouched, so
//! readers never see a half-rotated row; a row changed concurrently is simply
//! picked up by the next run. Re-running is always safe (resumable).

use crate::crypto::{CryptoError, Envelope};
use crate::domain::ConnectionId;
use crate::store::{KeyRotationStore, StoreError};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Rows now wrapped by the active key.
    pub rewrapped: u64,
    /// Rows replaced by a new grant while being rotated (already current).
    pub changed_concurrently: u64,
    /// Rows that could not be unwrapped (e.g. their key is missing).
    pub failed: Vec<(ConnectionId, String)>,
    /// Rows still not under the active key after this run.
    pub remaining: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the key provider failed: {0}")]
    KeyProvider(String),
    #[error(
        "master key `{0}` is the active key; make another key active (first in the list) before retiring it"
    )]
    RetireActive(String),
    #[error("master key `{0}` is not in the key ring")]
    UnknownKey(String),
    #[error("{count} connections still use master key `{id}`; run `tokenvault keys rotate` first")]
    StillInUse { id: String, count: u64 },
}

/// Re-wraps every data key not under the active master key. `progress` is
/// called after each batch with the number of rows processed so far.
pub async fn rotate(
    store: &dyn KeyRotationStore,
    envelope: &Envelope,
    batch_size: u32,
    mut progress: impl FnMut(u64),
) -> Result<RotationReport, RotationError> {
    let active = envelope.keys().active_key_id();
    let mut report = RotationReport::default();
    let mut after = None;
    let mut processed = 0u64;
    loop {
        let batch = store
            .list_keys_to_rotate(active.as_str(), after, batch_size)
            .await?;
        let Some((last, _)) = batch.last() else { break };
        after = Some(*last);
        for (id, old) in batch {
            match envelope.rewrap(id, &old).await {
                Ok(new) => {
                    if store.replace_wrapped_key(id, &old, &new).await? {
                        report.rewrapped += 1;
                    } else {
                        report.changed_concurrently += 1;
                    }
                }
                Err(
                    err @ (CryptoError::UnknownKey(_)
                    | CryptoError::Decrypt { .. }
                    | CryptoError::Malformed(_)
                    | CryptoError::UnsupportedVersion(_)),
                ) => {
                    report.failed.push((id, err.to_string()));
                }
                Err(CryptoError::Provider(reason)) => {
                    return Err(RotationError::KeyProvider(reason));
                }
            }
            processed += 1;
        }
        progress(processed);
    }
    let counts = store.count_by_key().await?;
    report.remaining = counts
        .iter()
        .filter(|(id, _)| id.as_str() != active.as_str())
        .map(|(_, count)| count)
        .sum();
    Ok(report)
}

/// Checks that `id` can be removed from the key ring: not active, and no row
/// uses it any more.
pub async fn check_retirable(
    store: &dyn KeyRotationStore,
    envelope: &Envelope,
    id: &str,
) -> Result<(), RotationError> {
    let keys = envelope.keys();
    if keys.active_key_id().as_str() == id {
        return Err(RotationError::RetireActive(id.to_owned()));
    }
    if !keys.key_ids().iter().any(|key| key.as_str() == id) {
        return Err(RotationError::UnknownKey(id.to_owned()));
    }
    let count = store.count_by_key().await?.get(id).copied().unwrap_or(0);
    if count > 0 {
        return Err(RotationError::StillInUse {
            id: id.to_owned(),
            count,
        });
    }
    Ok(())
}
