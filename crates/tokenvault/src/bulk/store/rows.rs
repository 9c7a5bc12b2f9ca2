//! The columns read from `bulk_actions` and `bulk_items`, and their
//! conversion into records.

use crate::bulk::{BulkActionRecord, BulkItem};
use crate::domain::IntegrationKey;
use crate::store::{StoreError, from_millis};

macro_rules! action_columns {
    () => {
        "id, integration, spec, not_before, rate_per_second, state, total, created_at, started_at, finished_at, lease_owner, lease_until"
    };
}
pub(super) use action_columns;

pub(super) type ActionRow = (
    String,
    String,
    String,
    i64,
    f64,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

pub(super) fn action(row: ActionRow) -> Result<BulkActionRecord, StoreError> {
    let (
        id,
        integration,
        spec,
        not_before,
        rate_per_second,
        state,
        total,
        created_at,
        started_at,
        finished_at,
        lease_owner,
        lease_until,
    ) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("bulk action {id}: {what}"));
    Ok(BulkActionRecord {
        id: uuid::Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
        integration: IntegrationKey::parse(&integration).map_err(|_| corrupt("integration"))?,
        spec: serde_json::from_str(&spec).map_err(|_| corrupt("spec"))?,
        not_before: from_millis(not_before)?,
        rate_per_second,
        state: state.parse().map_err(|_| corrupt("state"))?,
        total: u64::try_from(total).unwrap_or(0),
        created_at: from_millis(created_at)?,
        started_at: started_at.map(from_millis).transpose()?,
        finished_at: finished_at.map(from_millis).transpose()?,
        lease_owner,
        lease_until: lease_until.map(from_millis).transpose()?,
    })
}

macro_rules! item_columns {
    () => {
        "seq, user_id, state, attempts, rate_limited, failures, interrupted, next_attempt_at, status_code, error_code, error_message, updated_at, finished_at"
    };
}
pub(super) use item_columns;

pub(super) type ItemRow = (
    i64,
    String,
    String,
    i32,
    i32,
    i32,
    i32,
    i64,
    Option<i32>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
);

pub(super) fn item(row: ItemRow) -> Result<BulkItem, StoreError> {
    let (
        seq,
        user_id,
        state,
        attempts,
        rate_limited,
        failures,
        interrupted,
        next_attempt_at,
        status_code,
        error_code,
        error_message,
        updated_at,
        finished_at,
    ) = row;
    Ok(BulkItem {
        seq,
        state: state
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("bulk item {seq}: state {state:?}")))?,
        user_id,
        attempts: attempts.max(0) as u32,
        rate_limited: rate_limited.max(0) as u32,
        failures: failures.max(0) as u32,
        interrupted: interrupted.max(0) as u32,
        next_attempt_at: from_millis(next_attempt_at)?,
        status_code: status_code.and_then(|s| u16::try_from(s).ok()),
        error_code,
        error_message,
        updated_at: from_millis(updated_at)?,
        finished_at: finished_at.map(from_millis).transpose()?,
    })
}
