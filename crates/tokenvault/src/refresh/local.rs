//! What this process knows about its own writes: a [`ConnectionStore`]
//! wrapper every write of a [`Vault`](crate::vault::Vault) goes through.
//!
//! It keeps two things:
//! - a short-lived **cache of fresh tokens** (`token_cache`), so a token
//!   read does not go to the database every time. An entry lives at most
//!   the configured TTL, and every write this process makes to a connection
//!   drops that connection's entry; a write by *another* instance is seen
//!   here at most one TTL later. Readers still check the cached token
//!   against their `min_ttl` (a cached token that is no longer valid enough
//!   is never handed out: the caller refreshes as without a cache).
//! - a **write sequence**: which connections this process wrote since a
//!   point in time, so the scheduler can tell whether a row it claimed is
//!   still as claimed without reading it again.
//!
//! Every method of the trait is forwarded; the mutating ones invalidate
//! first. The other jobs of the database (outbox, key rotation, integration
//! health) do not change what a token read returns and bypass it.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, TokenSet, UserId};
use crate::store::{
    BatchUpdate, ConnectionRecord, ConnectionStore, ConnectionUpdate, LeaseRenewal, ListCursor,
    ListFilter, NewConnection, StatusCount, StoreError,
};

/// Cached token entries kept at most (per process).
pub const TOKEN_CACHE_CAPACITY: usize = 65_536;
/// Connections remembered as written; past this the memory is reset and
/// every older question answers "written" (the safe answer).
const WRITTEN_CAPACITY: usize = 100_000;

/// A fresh token set as it was read from the database (without its
/// refresh token), shared with every reader it is handed to.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub record: Arc<ConnectionRecord>,
    pub tokens: Arc<TokenSet>,
}

struct Entry {
    cached: Arc<CachedToken>,
    at: Instant,
}

struct State {
    /// Bumped by every write to a connection.
    seq: u64,
    tokens: HashMap<u64, Entry>,
    by_id: HashMap<ConnectionId, u64>,
    written: HashMap<ConnectionId, u64>,
    /// Writes before this sequence number are forgotten.
    written_floor: u64,
}

/// See the module documentation.
pub struct LocalStore {
    inner: Arc<dyn ConnectionStore>,
    ttl: Duration,
    hasher: RandomState,
    state: RwLock<State>,
}

impl LocalStore {
    /// Wraps `inner`; `token_cache` zero disables the token cache.
    pub fn new(inner: Arc<dyn ConnectionStore>, token_cache: Duration) -> Self {
        Self {
            inner,
            ttl: token_cache,
            hasher: RandomState::new(),
            state: RwLock::new(State {
                seq: 0,
                tokens: HashMap::new(),
                by_id: HashMap::new(),
                written: HashMap::new(),
                written_floor: 0,
            }),
        }
    }

    pub fn inner(&self) -> &Arc<dyn ConnectionStore> {
        &self.inner
    }

    fn key(&self, user: &str, integration: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        user.hash(&mut hasher);
        integration.hash(&mut hasher);
        hasher.finish()
    }

    /// The current write sequence number: pass it to
    /// [`LocalStore::cache_token`] or [`LocalStore::written_since`] later.
    pub(crate) fn seq(&self) -> u64 {
        self.state.read().unwrap().seq
    }

    /// Whether this process wrote connection `id` after `seq` was read.
    pub(crate) fn written_since(&self, id: ConnectionId, seq: u64) -> bool {
        let state = self.state.read().unwrap();
        seq < state.written_floor || state.written.get(&id).is_some_and(|at| *at > seq)
    }

    /// A cached token set for (user, integration) younger than the TTL.
    pub(crate) fn cached_token(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Option<Arc<CachedToken>> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = self.key(user.as_str(), integration.as_str());
        let state = self.state.read().unwrap();
        let entry = state.tokens.get(&key)?;
        (entry.at.elapsed() < self.ttl
            && entry.cached.record.user_id == *user
            && entry.cached.record.integration == *integration)
            .then(|| Arc::clone(&entry.cached))
    }

    /// Caches a token set read when the sequence number was `seq`, unless
    /// this process wrote to any connection since (the read may predate
    /// that write).
    pub(crate) fn cache_token(
        &self,
        seq: u64,
        record: &Arc<ConnectionRecord>,
        tokens: &Arc<TokenSet>,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let key = self.key(record.user_id.as_str(), record.integration.as_str());
        let mut state = self.state.write().unwrap();
        if state.seq != seq {
            return;
        }
        if state.tokens.len() >= TOKEN_CACHE_CAPACITY && !state.tokens.contains_key(&key) {
            let ttl = self.ttl;
            state.tokens.retain(|_, entry| entry.at.elapsed() < ttl);
            let State { tokens, by_id, .. } = &mut *state;
            by_id.retain(|_, key| tokens.contains_key(key));
            if state.tokens.len() >= TOKEN_CACHE_CAPACITY {
                return;
            }
        }
        let cached = Arc::new(CachedToken {
            record: Arc::clone(record),
            tokens: Arc::clone(tokens),
        });
        state.by_id.insert(record.id, key);
        if let Some(old) = state.tokens.insert(
            key,
            Entry {
                cached,
                at: Instant::now(),
            },
        ) && old.cached.record.id != record.id
        {
            state.by_id.remove(&old.cached.record.id);
        }
    }

    /// Number of cached token entries (tests, diagnostics).
    pub fn cached_tokens(&self) -> usize {
        self.state.read().unwrap().tokens.len()
    }

    /// Records a write to the given connections and drops their entries.
    fn wrote(&self, ids: &[ConnectionId], keys: &[(&str, &str)], remember: bool) {
        let hashed: Vec<u64> = keys.iter().map(|(u, i)| self.key(u, i)).collect();
        let mut state = self.state.write().unwrap();
        state.seq += 1;
        let seq = state.seq;
        for id in ids {
            if let Some(key) = state.by_id.remove(id) {
                state.tokens.remove(&key);
            }
            if remember {
                if state.written.len() >= WRITTEN_CAPACITY {
                    state.written.clear();
                    state.written_floor = seq;
                }
                state.written.insert(*id, seq);
            }
        }
        for key in hashed {
            if let Some(entry) = state.tokens.remove(&key) {
                state.by_id.remove(&entry.cached.record.id);
            }
        }
    }

    fn wrote_everything(&self) {
        let mut state = self.state.write().unwrap();
        state.seq += 1;
        state.tokens.clear();
        state.by_id.clear();
        state.written.clear();
        state.written_floor = state.seq;
    }
}

#[async_trait::async_trait]
impl ConnectionStore for LocalStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.wrote_everything();
        self.inner.migrate().await
    }

    async fn upsert(&self, connection: NewConnection) -> Result<ConnectionRecord, StoreError> {
        let (user, integration) = (connection.user_id.clone(), connection.integration.clone());
        self.wrote(
            &[connection.id],
            &[(user.as_str(), integration.as_str())],
            true,
        );
        let result = self.inner.upsert(connection).await;
        self.wrote(&[], &[(user.as_str(), integration.as_str())], false);
        result
    }

    async fn get(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        self.inner.get(user, integration).await
    }

    async fn get_by_id(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError> {
        self.inner.get_by_id(id).await
    }

    async fn list_by_user(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError> {
        self.inner.list_by_user(user).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        self.inner.list(filter, after, limit).await
    }

    async fn summary(&self, due_before: DateTime<Utc>) -> Result<Vec<StatusCount>, StoreError> {
        self.inner.summary(due_before).await
    }

    async fn update(
        &self,
        id: ConnectionId,
        expected_version: i64,
        update: &ConnectionUpdate,
    ) -> Result<ConnectionRecord, StoreError> {
        // Before (no reader caches the old row from now on) and after (a
        // reader that read before the write may have cached it meanwhile;
        // the sequence check keeps it out, this is belt and braces).
        self.wrote(&[id], &[], true);
        let result = self.inner.update(id, expected_version, update).await;
        self.wrote(&[id], &[], true);
        result
    }

    async fn update_batch(
        &self,
        updates: &[BatchUpdate],
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let ids: Vec<ConnectionId> = updates.iter().map(|entry| entry.id).collect();
        self.wrote(&ids, &[], true);
        let result = self.inner.update_batch(updates).await;
        self.wrote(&ids, &[], true);
        result
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        takeover_before: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let claimed = self
            .inner
            .claim_due(now, limit, owner, takeover_before, lease_until)
            .await?;
        // The claim only moves the lease and version; the claimer holds the
        // claimed rows, so they are not "written" for its purposes.
        let ids: Vec<ConnectionId> = claimed.iter().map(|record| record.id).collect();
        self.wrote(&ids, &[], false);
        Ok(claimed)
    }

    async fn acquire_lease(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        takeover_before: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        self.wrote(&[id], &[], true);
        let result = self
            .inner
            .acquire_lease(id, owner, expected_version, takeover_before, lease_until)
            .await;
        self.wrote(&[id], &[], true);
        result
    }

    async fn renew_lease(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Only the lease's expiry moves: tokens and version stay as cached.
        self.inner
            .renew_lease(id, owner, expected_version, lease_until)
            .await
    }

    async fn renew_leases(
        &self,
        owner: &str,
        renewals: &[LeaseRenewal],
    ) -> Result<Vec<bool>, StoreError> {
        // As `renew_lease`: only the leases' expiries move.
        self.inner.renew_leases(owner, renewals).await
    }

    async fn release_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError> {
        self.wrote(&[id], &[], true);
        let result = self.inner.release_lease(id, owner).await;
        self.wrote(&[id], &[], true);
        result
    }

    async fn delete(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<bool, StoreError> {
        self.wrote(&[], &[(user.as_str(), integration.as_str())], false);
        let result = self.inner.delete(user, integration).await;
        self.wrote(&[], &[(user.as_str(), integration.as_str())], false);
        result
    }

    async fn count_by_status(&self) -> Result<BTreeMap<ConnectionStatus, u64>, StoreError> {
        self.inner.count_by_status().await
    }

    async fn count_due_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.count_due_before(before).await
    }

    async fn purge(
        &self,
        statuses: &[ConnectionStatus],
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let purged = self.inner.purge(statuses, before).await;
        if !matches!(purged, Ok(0)) {
            self.wrote_everything();
        }
        purged
    }
}
