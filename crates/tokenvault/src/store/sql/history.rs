//! [`ConnectionHistory`] on [`SqlStore`]: the `connection_events` table.

use chrono::{DateTime, Utc};

use super::SqlStore;
use crate::domain::{ConnectionId, IntegrationKey, UserId};
use crate::store::{
    ConnectionHistory, HistoryCursor, HistoryEntry, HistoryKind, StoreError, from_millis,
    to_millis, with_pool,
};

/// Newest first; the index on (user_id, integration, created_at, id)
/// serves it backwards, so a page costs O(page).
const SQLITE: &str = "SELECT id, connection_id, kind, status, error_class, error_code, \
     error_message, created_at FROM connection_events WHERE user_id = $1 AND integration = $2 \
     AND (created_at, id) < ($3, $4) ORDER BY created_at DESC, id DESC LIMIT $5";

/// PostgreSQL keeps ids as `uuid`: compared as such, answered as text.
const POSTGRES: &str = "SELECT id::text, connection_id::text, kind, status, error_class, \
     error_code, error_message, created_at FROM connection_events WHERE user_id = $1 \
     AND integration = $2 AND (created_at, id) < ($3, $4::uuid) \
     ORDER BY created_at DESC, id DESC LIMIT $5";

const PURGE_HISTORY: &str = "DELETE FROM connection_events WHERE created_at < $1";

type HistoryRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// Past every real entry: a first page starts here.
const NEWEST: (i64, &str) = (i64::MAX, "ffffffff-ffff-ffff-ffff-ffffffffffff");

#[async_trait::async_trait]
impl ConnectionHistory for SqlStore {
    async fn history(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        before: Option<&HistoryCursor>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = before.map(|cursor| cursor.id.to_string());
        let (at, id) = match (before, &id) {
            (Some(cursor), Some(id)) => (to_millis(cursor.at), id.as_str()),
            _ => NEWEST,
        };
        let rows: Vec<HistoryRow> = with_pool!(self, |pool, select| {
            sqlx::query_as(*select)
                .bind(user.as_str())
                .bind(integration.as_str())
                .bind(at)
                .bind(id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|row| entry(user, integration, row))
            .collect()
    }

    async fn purge_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query(PURGE_HISTORY)
            .bind(to_millis(before))
            .execute(pool)
            .await?
            .rows_affected()))
    }

    async fn kinds_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<HistoryKind, u64>, StoreError> {
        // Served by the index on created_at.
        let rows: Vec<(String, i64)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT kind, COUNT(*) FROM connection_events WHERE created_at >= $1 GROUP BY kind"
        )
        .bind(to_millis(since))
        .fetch_all(pool)
        .await?);
        let mut counts: std::collections::BTreeMap<HistoryKind, u64> =
            HistoryKind::ALL.into_iter().map(|kind| (kind, 0)).collect();
        for (kind, count) in rows {
            let kind = HistoryKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("connection event kind {kind:?}")))?;
            counts.insert(kind, u64::try_from(count).unwrap_or(0));
        }
        Ok(counts)
    }

    async fn refreshed_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError> {
        let (count,): (i64,) = with_pool!(self, |pool| sqlx::query_as(
            "SELECT COUNT(*) FROM connections WHERE last_refreshed_at >= $1"
        )
        .bind(to_millis(since))
        .fetch_one(pool)
        .await?);
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

fn entry(
    user: &UserId,
    integration: &IntegrationKey,
    (id, connection_id, kind, status, error_class, error_code, error_message, at): HistoryRow,
) -> Result<HistoryEntry, StoreError> {
    let corrupt =
        |what: &str, value: &str| StoreError::Corrupt(format!("connection event {what} {value:?}"));
    Ok(HistoryEntry {
        id: uuid::Uuid::parse_str(&id).map_err(|_| corrupt("id", &id))?,
        connection_id: ConnectionId::parse(&connection_id)
            .map_err(|_| corrupt("connection id", &connection_id))?,
        user_id: user.clone(),
        integration: integration.clone(),
        kind: HistoryKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        status: status.parse().map_err(|_| corrupt("status", &status))?,
        error_class,
        error_code,
        error_message,
        at: from_millis(at)?,
    })
}
