//! Bulk actions: one provider API request for each of many users (a music
//! pre-save on release day: save the track to every fan's library), run
//! durably at a bounded rate.
//!
//! An action and its items are persisted before anything is sent. Workers
//! ([`BulkWorker`]) run an action from its `not_before` on, on one instance
//! at a time (a lease on the action row), at most `rate_per_second` sends
//! in any one-second window, each item through [`Vault::request_with`]
//! (refresh when needed, once more after a provider 401). Outcomes follow
//! the lifecycle's rules: 2xx succeeds; 429 waits `Retry-After` and tries
//! again; 5xx, network failures and an unavailable token endpoint back off
//! with jitter, up to [`BulkSettings::max_failures`]; other provider
//! answers fail with their status; a user without a usable connection is
//! skipped (nothing is sent).
//!
//! **At most once per success.** An item is marked `running` (committed)
//! right before its request is sent and its outcome is committed when the
//! answer arrives; a succeeded item is never picked again, across crashes
//! and restarts. A graceful stop lets requests in flight finish and record
//! their outcome. Only a hard crash (SIGKILL, power loss) can leave items
//! `running` with their outcome unknown: the next runner sends them again
//! when the method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS: a
//! repeat does no harm, by HTTP's definition) and fails them as
//! `interrupted` otherwise, and counts them in the item's `interrupted`.

mod records;
mod runner;
mod spec;
mod store;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

pub use records::{
    ActionState, BulkActionRecord, BulkActionView, BulkItem, ItemOutcome, ItemState,
};
pub use runner::{BulkSettings, BulkWorker, RunEnd};
use spec::parse_request;
pub use spec::{
    BulkRequest, BulkSpec, BulkSpecInput, RequestInput, StoredSpec, Targets, UsersByStatus,
    UsersInput,
};
pub use store::{BulkStore, CancelOutcome, NewBulkAction, SqlBulkStore, TargetRows};

use crate::domain::{ConnectionStatus, IntegrationKey, UserId};
use crate::events::EventType;
use crate::store::StoreError;
use crate::vault::Vault;

/// Highest `rate_per_second` accepted.
pub const MAX_RATE_PER_SECOND: f64 = 10_000.0;

/// Bulk-action failures at the API boundary.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no bulk action with this id")]
    NotFound,
    #[error("the bulk action is already {0}")]
    Finished(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BulkError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Creating, reading and cancelling actions (the API's side; [`BulkWorker`]
/// runs them).
#[derive(Clone)]
pub struct BulkActions {
    vault: Vault,
    store: Arc<dyn BulkStore>,
    max_items: usize,
}

impl BulkActions {
    pub fn new(vault: Vault, store: Arc<dyn BulkStore>) -> Self {
        Self {
            vault,
            store,
            max_items: 1_000_000,
        }
    }

    /// Caps the users one action may target.
    pub fn with_max_items(mut self, max_items: usize) -> Self {
        self.max_items = max_items;
        self
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn store(&self) -> &Arc<dyn BulkStore> {
        &self.store
    }

    /// Validates an input against the configured integrations.
    pub fn parse(&self, input: &BulkSpecInput) -> Result<BulkSpec, BulkError> {
        let integration = IntegrationKey::parse(input.integration.trim())
            .ok()
            .filter(|key| self.vault.integrations().get(key).is_some())
            .ok_or_else(|| {
                BulkError::invalid(
                    "integration",
                    format!("no integration named {:?} is configured", input.integration),
                )
            })?;
        let configured = self
            .vault
            .integrations()
            .get(&integration)
            .expect("checked");
        if configured.spec().api_base_url.is_none() {
            return Err(BulkError::invalid(
                "integration",
                format!(
                    "{integration} has no API base URL (api_base_url in its providers.toml entry)"
                ),
            ));
        }
        let targets = match &input.users {
            UsersInput::List(users) => {
                if users.is_empty() {
                    return Err(BulkError::invalid("users", "the list is empty"));
                }
                if users.len() > self.max_items {
                    return Err(BulkError::invalid(
                        "users",
                        format!(
                            "{} users; at most {} (bulk_max_items)",
                            users.len(),
                            self.max_items
                        ),
                    ));
                }
                let mut seen = std::collections::HashSet::with_capacity(users.len());
                let mut parsed = Vec::with_capacity(users.len());
                for (i, raw) in users.iter().enumerate() {
                    let user = UserId::parse(raw)
                        .map_err(|err| BulkError::invalid("users", format!("item {i}: {err}")))?;
                    if seen.insert(user.as_str().to_owned()) {
                        parsed.push(user);
                    }
                }
                Targets::Users(parsed)
            }
            UsersInput::Select(select) => {
                let status = ConnectionStatus::from_str(select.status.trim()).map_err(|_| {
                    BulkError::invalid(
                        "users.status",
                        format!("{:?} is not a connection status", select.status),
                    )
                })?;
                Targets::Status(status)
            }
        };
        let request = parse_request(&input.request)?;
        let not_before = input
            .not_before
            .as_deref()
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw.trim())
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|_| {
                        BulkError::invalid(
                            "not_before",
                            format!("{raw:?} is not an RFC 3339 time like 2026-12-01T00:00:00Z"),
                        )
                    })
            })
            .transpose()?;
        if let Some(rate) = input.rate_per_second
            && !(rate > 0.0 && rate <= MAX_RATE_PER_SECOND)
        {
            return Err(BulkError::invalid(
                "rate_per_second",
                format!("must be above 0 and at most {MAX_RATE_PER_SECOND}"),
            ));
        }
        Ok(BulkSpec {
            integration,
            targets,
            request,
            not_before,
            rate_per_second: input.rate_per_second,
        })
    }

    /// The rate an action runs at when the spec names none.
    fn default_rate(&self, integration: &IntegrationKey) -> f64 {
        self.vault
            .integrations()
            .get(integration)
            .and_then(|i| i.rate_limit_per_second())
            .or(self.vault.settings().rate_limit_per_second)
            .filter(|rate| *rate > 0)
            .map_or(50.0, f64::from)
    }

    /// Persists the action and its items. `lease`: created already held by
    /// this owner (for a runner in this process) until the given time.
    pub async fn create(
        &self,
        spec: BulkSpec,
        lease: Option<(String, DateTime<Utc>)>,
    ) -> Result<BulkActionView, BulkError> {
        let now = self.vault.clock().now();
        let users_summary = match &spec.targets {
            Targets::Users(users) => json!({"count": users.len()}),
            Targets::Status(status) => json!({"status": status.as_str()}),
        };
        let stored = StoredSpec {
            request: spec.request.clone(),
            users: users_summary,
        };
        let action = NewBulkAction {
            id: uuid::Uuid::now_v7(),
            rate_per_second: spec
                .rate_per_second
                .unwrap_or_else(|| self.default_rate(&spec.integration)),
            integration: spec.integration,
            spec: serde_json::to_string(&stored).expect("serializable"),
            not_before: spec.not_before.unwrap_or(now),
            created_at: now,
            lease,
        };
        let ids: Vec<String>;
        let rows = match &spec.targets {
            Targets::Users(users) => {
                ids = users.iter().map(|u| u.as_str().to_owned()).collect();
                TargetRows::Users(&ids)
            }
            Targets::Status(status) => TargetRows::Status(*status),
        };
        let inserted = self.store.create(&action, rows).await?;
        if inserted > self.max_items as u64 {
            // A status selection can only be counted by inserting it; undo
            // by cancelling (nothing has run).
            self.store.cancel(action.id, now, None).await?;
            return Err(BulkError::invalid(
                "users",
                format!(
                    "{inserted} connections match; at most {} (bulk_max_items)",
                    self.max_items
                ),
            ));
        }
        self.status(action.id).await
    }

    /// The newest `limit` actions as the API shows them, newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<BulkActionView>, BulkError> {
        let mut views = Vec::new();
        for record in self.store.recent(limit).await? {
            views.push(self.status(record.id).await?);
        }
        Ok(views)
    }

    /// The action with counts, rate and ETA.
    pub async fn status(&self, id: uuid::Uuid) -> Result<BulkActionView, BulkError> {
        let action = self.store.get(id).await?.ok_or(BulkError::NotFound)?;
        let counts = self.store.counts(id).await?;
        let now = self.vault.clock().now();
        let window = chrono::Duration::seconds(60);
        let since = action.started_at.map_or(now, |s| s.max(now - window));
        let finished_recently = self.store.finished_since(id, since).await?;
        let elapsed = (now - since).num_milliseconds() as f64 / 1000.0;
        let current_rate = if elapsed >= 1.0 {
            finished_recently as f64 / elapsed
        } else {
            0.0
        };
        let open = counts[&ItemState::Pending] + counts[&ItemState::Running];
        let eta_seconds = (action.state == ActionState::Active && open > 0).then(|| {
            let rate = if current_rate > 0.0 {
                current_rate
            } else {
                action.rate_per_second
            };
            let wait = (action.not_before - now).num_seconds().max(0) as f64;
            (wait + open as f64 / rate).ceil() as u64
        });
        Ok(view(&action, counts, current_rate, eta_seconds, now))
    }

    /// A page of items in order, optionally of one state.
    pub async fn items(
        &self,
        id: uuid::Uuid,
        state: Option<ItemState>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<BulkItem>, BulkError> {
        if self.store.get(id).await?.is_none() {
            return Err(BulkError::NotFound);
        }
        Ok(self.store.items(id, state, after, limit).await?)
    }

    /// Cancels: pending items will not run; requests in flight finish.
    pub async fn cancel(&self, id: uuid::Uuid) -> Result<BulkActionView, BulkError> {
        let action = self.store.get(id).await?.ok_or(BulkError::NotFound)?;
        let now = self.vault.clock().now();
        let mut counts = self.store.counts(id).await?;
        let pending = counts.insert(ItemState::Pending, 0).unwrap_or(0);
        *counts.entry(ItemState::Cancelled).or_default() += pending;
        let event = self.completed_event(&action, ActionState::Cancelled, &counts, now);
        match self.store.cancel(id, now, event.as_ref()).await? {
            CancelOutcome::Cancelled => self.status(id).await,
            CancelOutcome::NotFound => Err(BulkError::NotFound),
            CancelOutcome::Finished => {
                let state = self
                    .store
                    .get(id)
                    .await?
                    .map_or(ActionState::Completed, |a| a.state);
                Err(BulkError::Finished(state.as_str()))
            }
        }
    }

    /// The `bulk_action.completed` webhook event.
    pub(crate) fn completed_event(
        &self,
        action: &BulkActionRecord,
        state: ActionState,
        counts: &BTreeMap<ItemState, u64>,
        now: DateTime<Utc>,
    ) -> Option<crate::store::OutboxEvent> {
        self.vault.events().event(
            EventType::BulkActionCompleted,
            json!({
                "id": action.id,
                "integration": action.integration,
                "state": state.as_str(),
                "total": action.total,
                "counts": counts,
                "created_at": action.created_at,
                "finished_at": now,
            }),
            now,
        )
    }
}

fn view(
    action: &BulkActionRecord,
    counts: BTreeMap<ItemState, u64>,
    current_rate: f64,
    eta_seconds: Option<u64>,
    now: DateTime<Utc>,
) -> BulkActionView {
    let state = match action.state {
        ActionState::Active if action.not_before > now && action.started_at.is_none() => {
            "scheduled"
        }
        ActionState::Active => "running",
        ActionState::Completed => "completed",
        ActionState::Cancelled => "cancelled",
    };
    BulkActionView {
        id: action.id,
        integration: action.integration.clone(),
        state,
        request: json!({
            "method": action.spec.request.method,
            "path": action.spec.request.path,
            "query": action.spec.request.query,
            "users": action.spec.users,
        }),
        total: action.total,
        counts,
        rate_per_second: action.rate_per_second,
        current_rate: (current_rate * 100.0).round() / 100.0,
        eta_seconds,
        not_before: action.not_before,
        created_at: action.created_at,
        started_at: action.started_at,
        finished_at: action.finished_at,
    }
}

/// Delay before retry `n` (1-based) of a transiently failing item: doubling
/// from `base`, capped, with ±20 % jitter so a burst of failures does not
/// come back as a burst.
pub(crate) fn retry_delay(n: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(cap);
    crate::events::jitter(exp, 0.2)
}
