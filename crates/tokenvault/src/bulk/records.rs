//! Stored actions and items: their states, records and send outcomes, and
//! an action as the API shows it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoredSpec;
use crate::domain::IntegrationKey;

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

/// The result of one send, as [`BulkStore::finish_item`](super::BulkStore::finish_item) writes it.
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
