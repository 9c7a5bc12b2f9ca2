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

mod runner;
mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use runner::{BulkSettings, BulkWorker, RunEnd};
pub use store::{BulkStore, CancelOutcome, NewBulkAction, SqlBulkStore, TargetRows};

use crate::api::{ApiPath, ApiRequest};
use crate::domain::{ConnectionStatus, IntegrationKey, UserId};
use crate::events::EventType;
use crate::store::StoreError;
use crate::vault::Vault;

/// Highest `rate_per_second` accepted.
pub const MAX_RATE_PER_SECOND: f64 = 10_000.0;

/// What `POST /v1/bulk-actions` (and `tokenvault bulk run`) take.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BulkSpecInput {
    /// A configured integration with an `api_base_url`.
    pub integration: String,
    pub users: UsersInput,
    pub request: RequestInput,
    /// RFC 3339 time before which nothing is sent (default: now).
    #[serde(default)]
    pub not_before: Option<String>,
    /// Sends per second for this action (default: the integration's
    /// `rate_limit_per_second`, else 50).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
}

/// The users to act for: a list of ids, or every connection with a status.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum UsersInput {
    List(Vec<String>),
    Select(UsersByStatus),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct UsersByStatus {
    /// Every connection of the integration with this status when the action
    /// is created (`connected`).
    pub status: String,
}

/// The request sent for each user, relative to the integration's API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RequestInput {
    /// GET, HEAD, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// Below the integration's `api_base_url`, e.g. `me/tracks`.
    pub path: String,
    /// Query parameters (values are strings, numbers or booleans), or a
    /// percent-encoded query string.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub query: Option<Value>,
    /// Sent as JSON.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub body: Option<Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A validated request, stored with the action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BulkRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

impl BulkRequest {
    /// The request as [`Vault::request_with`] takes it.
    pub fn to_api_request(&self) -> Result<ApiRequest, BulkError> {
        let method = Method::from_str(&self.method)
            .map_err(|_| BulkError::invalid("request.method", "not an HTTP method"))?;
        let path = ApiPath::parse(&self.path)
            .map_err(|err| BulkError::invalid("request.path", err.to_string()))?;
        let mut request = ApiRequest::new(method, path);
        request.query = self.query.clone();
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        for (name, value) in &self.headers {
            let name = HeaderName::from_str(name).map_err(|_| {
                BulkError::invalid("request.headers", format!("{name:?} is not a header name"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                BulkError::invalid(
                    "request.headers",
                    format!("the value of {name} is not a header value"),
                )
            })?;
            request.headers.insert(name, value);
        }
        Ok(request)
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        )
    }
}

/// Who an action is for, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Users(Vec<UserId>),
    Status(ConnectionStatus),
}

/// A validated action, ready to create.
#[derive(Debug, Clone)]
pub struct BulkSpec {
    pub integration: IntegrationKey,
    pub targets: Targets,
    pub request: BulkRequest,
    pub not_before: Option<DateTime<Utc>>,
    pub rate_per_second: Option<f64>,
}

/// What is stored as the action's `spec` column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredSpec {
    pub request: BulkRequest,
    /// `{"status": "connected"}` or `{"count": N}` for a list.
    pub users: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum ActionState {
    Active,
    Completed,
    Cancelled,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl FromStr for ActionState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "active" => Ok(Self::Active),
            "completed" => Ok(Self::Completed),
            "cancelled" => Ok(Self::Cancelled),
            _ => Err(()),
        }
    }
}

/// An item's state. `succeeded`, `failed`, `skipped` and `cancelled` are
/// final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum ItemState {
    /// Waiting for its turn (or its retry time).
    Pending,
    /// Its request is at the provider.
    Running,
    /// The provider answered 2xx.
    Succeeded,
    /// The provider refused it, or it kept failing; see `status` and `error`.
    Failed,
    /// Nothing was sent: the user has no usable connection
    /// (`not_connected`, `needs_reauth`).
    Skipped,
    /// The action was cancelled before the item ran.
    Cancelled,
}

impl ItemState {
    pub const ALL: [ItemState; 6] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

impl FromStr for ItemState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored action.
#[derive(Debug, Clone)]
pub struct BulkActionRecord {
    pub id: uuid::Uuid,
    pub integration: IntegrationKey,
    pub spec: StoredSpec,
    pub not_before: DateTime<Utc>,
    pub rate_per_second: f64,
    pub state: ActionState,
    pub total: u64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
}

/// A stored item.
#[derive(Debug, Clone, Serialize)]
pub struct BulkItem {
    pub seq: i64,
    pub user_id: String,
    pub state: ItemState,
    pub attempts: u32,
    pub rate_limited: u32,
    pub failures: u32,
    pub interrupted: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The result of one send, as [`BulkStore::finish_item`] writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutcome {
    pub state: ItemState,
    pub status_code: Option<u16>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// For `pending`: when to try again.
    pub retry_at: Option<DateTime<Utc>>,
    /// The answer was a 429.
    pub rate_limited: bool,
    /// A transient failure (counts towards `max_failures`).
    pub failed_attempt: bool,
}

/// An action as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BulkActionView {
    #[cfg_attr(feature = "utoipa", schema(value_type = String, format = Uuid))]
    pub id: uuid::Uuid,
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    pub integration: IntegrationKey,
    /// `scheduled` (before `not_before`), `running`, `completed` or
    /// `cancelled`.
    #[cfg_attr(feature = "utoipa", schema(examples("running")))]
    pub state: &'static str,
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub request: Value,
    pub total: u64,
    /// Items by state (every state is listed).
    pub counts: BTreeMap<ItemState, u64>,
    /// Configured sends per second.
    pub rate_per_second: f64,
    /// Items finished per second over the last minute.
    pub current_rate: f64,
    /// Seconds until every item is done at the current rate (or the
    /// configured one before any finished); null when done.
    pub eta_seconds: Option<u64>,
    pub not_before: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

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

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

fn parse_request(input: &RequestInput) -> Result<BulkRequest, BulkError> {
    let method = input.method.trim().to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(BulkError::invalid(
            "request.method",
            format!("{:?} is not one of {}", input.method, METHODS.join(", ")),
        ));
    }
    let path = ApiPath::parse(input.path.trim())
        .map_err(|err| BulkError::invalid("request.path", err.to_string()))?;
    let query = match &input.query {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(raw.trim_start_matches('?').to_owned()),
        Some(Value::Object(pairs)) => {
            let mut encoded = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in pairs {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(BulkError::invalid(
                            "request.query",
                            format!("{name}: values must be strings, numbers or booleans"),
                        ));
                    }
                };
                encoded.append_pair(name, &value);
            }
            Some(encoded.finish())
        }
        Some(_) => {
            return Err(BulkError::invalid(
                "request.query",
                "an object of parameters or a query string",
            ));
        }
    }
    .filter(|q| !q.is_empty());
    if let Some(q) = &query {
        crate::api::check_query(q)
            .map_err(|err| BulkError::invalid("request.query", err.to_string()))?;
    }
    if input.body.is_some() && matches!(method.as_str(), "GET" | "HEAD") {
        return Err(BulkError::invalid(
            "request.body",
            format!("a {method} request has no body"),
        ));
    }
    // Names and values are checked by `to_api_request` below.
    for name in input.headers.keys() {
        if HeaderName::from_str(name)
            .is_ok_and(|parsed| !crate::api::forwards_request_header(&parsed))
        {
            return Err(BulkError::invalid(
                "request.headers",
                format!("{name} is set by tokenvault or is hop-by-hop; it cannot be given"),
            ));
        }
    }
    let request = BulkRequest {
        method,
        path: path.as_str().to_owned(),
        query,
        headers: input
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        body: input.body.clone(),
    };
    request.to_api_request()?;
    Ok(request)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> RequestInput {
        RequestInput {
            method: method.into(),
            path: path.into(),
            query: None,
            body: None,
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn requests_are_validated() {
        let ok = parse_request(&RequestInput {
            query: Some(json!({"ids": "a,b", "limit": 5, "flag": true})),
            body: Some(json!({"ids": ["x"]})),
            ..request("put", "/me/tracks")
        })
        .unwrap();
        assert_eq!(ok.method, "PUT");
        assert_eq!(ok.path, "me/tracks");
        assert_eq!(ok.query.as_deref(), Some("flag=true&ids=a%2Cb&limit=5"));
        assert!(ok.is_idempotent());
        assert!(
            !parse_request(&request("POST", "x"))
                .unwrap()
                .is_idempotent()
        );

        for (input, field) in [
            (request("TRACE", "x"), "request.method"),
            (request("GET", "//evil/x"), "request.path"),
            (request("GET", "%2e%2e/admin"), "request.path"),
            (
                RequestInput {
                    query: Some(json!({"a": [1]})),
                    ..request("GET", "x")
                },
                "request.query",
            ),
            (
                RequestInput {
                    query: Some(json!("a=%0d%0a")),
                    ..request("GET", "x")
                },
                "request.query",
            ),
            (
                RequestInput {
                    body: Some(json!({})),
                    ..request("GET", "x")
                },
                "request.body",
            ),
            (
                RequestInput {
                    headers: BTreeMap::from([("Authorization".into(), "Bearer x".into())]),
                    ..request("GET", "x")
                },
                "request.headers",
            ),
            (
                RequestInput {
                    headers: BTreeMap::from([("x-a".into(), "line\nbreak".into())]),
                    ..request("GET", "x")
                },
                "request.headers",
            ),
        ] {
            match parse_request(&input) {
                Err(BulkError::Invalid { field: got, .. }) => assert_eq!(got, field, "{input:?}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        let first = retry_delay(1, base, cap);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let fourth = retry_delay(4, base, cap);
        assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600));
        assert!(retry_delay(30, base, cap) <= Duration::from_secs(72));
    }

    #[test]
    fn item_states_round_trip() {
        for state in ItemState::ALL {
            assert_eq!(state.as_str().parse::<ItemState>(), Ok(state));
        }
        assert!(ItemState::Succeeded.is_final() && !ItemState::Running.is_final());
    }
}
