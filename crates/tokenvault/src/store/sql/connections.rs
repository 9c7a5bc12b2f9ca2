//! [`ConnectionStore`] on [`SqlStore`]: the rows, compare-and-swap writes
//! and refresh leases.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Backend, POSTGRES, SQLITE, SqlStore, bind_update, insert_event, insert_history};
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, UserId};
use crate::store::record::{RawRow, UpdateColumns, storable_json};
use crate::store::{
    BatchUpdate, ConnectionRecord, ConnectionStore, ConnectionUpdate, HistoryKind, LeaseRenewal,
    ListCursor, ListFilter, NewConnection, StatusCount, StoreError, migrate_error, to_millis,
    with_pool,
};

/// One pass over the table for the whole summary.
const SUMMARY: &str = "SELECT integration, status, COUNT(*), \
     SUM(CASE WHEN failing_since IS NOT NULL THEN 1 ELSE 0 END), \
     SUM(CASE WHEN next_refresh_at IS NOT NULL AND next_refresh_at < $1 \
     AND status IN ('connected', 'error') THEN 1 ELSE 0 END) \
     FROM connections GROUP BY integration, status ORDER BY integration, status";

/// Rows as records; one unreadable row fails the read.
fn records(rows: Vec<RawRow>) -> Result<Vec<ConnectionRecord>, StoreError> {
    rows.into_iter().map(TryInto::try_into).collect()
}

#[async_trait::async_trait]
impl ConnectionStore for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool| migrator(pool).run(pool).await).map_err(migrate_error)
    }

    async fn upsert(&self, c: NewConnection) -> Result<ConnectionRecord, StoreError> {
        let row: RawRow = with_pool!(self, |pool, dialect| {
            let query = sqlx::query_as::<_, RawRow>(dialect.upsert)
                .bind(c.id.to_string())
                .bind(c.user_id.as_str())
                .bind(c.integration.as_str())
                .bind(c.status.as_str())
                .bind(c.scopes.format(" "))
                .bind(c.token_type.as_str())
                .bind(c.expires_at.map(to_millis))
                .bind(c.next_refresh_at.map(to_millis))
                .bind(c.sealed.access_token.as_slice())
                .bind(c.sealed.refresh_token.as_deref())
                .bind(c.sealed.data_key.blob())
                .bind(c.sealed.data_key.key_id().as_str())
                .bind(storable_json(&c.metadata))
                .bind(to_millis(c.now));
            if c.emit.is_empty() && c.emit_on_replace.is_empty() && c.history.is_empty() {
                query.fetch_one(pool).await?
            } else {
                // The events commit with the row or not at all.
                let mut tx = pool.begin().await?;
                let row: RawRow = query.fetch_one(&mut *tx).await?;
                // The conflict branch of the upsert bumped the version: the
                // grant replaced an existing connection.
                let replaced = row.version > 1;
                let events = if replaced {
                    &c.emit_on_replace
                } else {
                    &c.emit
                };
                for event in events {
                    insert_event(dialect.insert_event, event)
                        .execute(&mut *tx)
                        .await?;
                }
                for entry in &c.history {
                    let kind = match entry.kind {
                        HistoryKind::Created if replaced => HistoryKind::Reconnected,
                        kind => kind,
                    };
                    insert_history(dialect.insert_history, entry, kind)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                row
            }
        });
        row.try_into()
    }

    async fn get(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = with_pool!(self, |pool, dialect| {
            sqlx::query_as::<_, RawRow>(dialect.select_by_key)
                .bind(user.as_str())
                .bind(integration.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(TryInto::try_into).transpose()
    }

    async fn get_by_id(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = with_pool!(self, |pool, dialect| {
            sqlx::query_as::<_, RawRow>(dialect.select_by_id)
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.map(TryInto::try_into).transpose()
    }

    async fn list_by_user(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError> {
        records(with_pool!(self, |pool, dialect| {
            sqlx::query_as::<_, RawRow>(dialect.select_by_user)
                .bind(user.as_str())
                .fetch_all(pool)
                .await?
        }))
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        records(with_pool!(self, |pool, dialect| {
            let mut query = sqlx::QueryBuilder::new(format!(
                "SELECT {} FROM connections WHERE TRUE",
                dialect.columns
            ));
            if let Some(integration) = &filter.integration {
                query
                    .push(" AND integration = ")
                    .push_bind(integration.as_str().to_owned());
            }
            if let Some(status) = filter.status {
                query.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(prefix) = &filter.user_id_prefix {
                // A range, so the index serves it: user ids are ASCII below
                // DEL, so every id starting with the prefix sorts before
                // prefix + DEL (byte order on both backends).
                query
                    .push(" AND user_id >= ")
                    .push_bind(prefix.clone())
                    .push(" AND user_id < ")
                    .push_bind(format!("{prefix}\u{7f}"));
            }
            if let Some(after) = after {
                query
                    .push(" AND (user_id, integration) > (")
                    .push_bind(after.user_id.as_str().to_owned())
                    .push(", ")
                    .push_bind(after.integration.as_str().to_owned())
                    .push(")");
            }
            query
                .push(" ORDER BY user_id, integration LIMIT ")
                .push_bind(i64::from(limit));
            query.build_query_as::<RawRow>().fetch_all(pool).await?
        }))
    }

    async fn summary(&self, due_before: DateTime<Utc>) -> Result<Vec<StatusCount>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64)> = with_pool!(self, |pool| {
            sqlx::query_as(SUMMARY)
                .bind(to_millis(due_before))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(integration, status, total, failing, due)| {
                let corrupt = |what: &str, value: &str| {
                    StoreError::Corrupt(format!("connection {what} {value:?}"))
                };
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(StatusCount {
                    integration: IntegrationKey::parse(&integration)
                        .map_err(|_| corrupt("integration", &integration))?,
                    status: status.parse().map_err(|_| corrupt("status", &status))?,
                    count: count(total),
                    failing: count(failing),
                    due: count(due),
                })
            })
            .collect()
    }

    async fn update(
        &self,
        id: ConnectionId,
        expected_version: i64,
        update: &ConnectionUpdate,
    ) -> Result<ConnectionRecord, StoreError> {
        let row: Option<RawRow> = with_pool!(self, |pool, dialect| {
            let query = bind_update(
                sqlx::query_as::<_, RawRow>(dialect.update),
                UpdateColumns::new(update),
                id,
                expected_version,
            );
            if update.emit.is_empty() && update.history.is_empty() {
                query.fetch_optional(pool).await?
            } else {
                let mut tx = pool.begin().await?;
                let row = query.fetch_optional(&mut *tx).await?;
                if row.is_some() {
                    for event in &update.emit {
                        insert_event(dialect.insert_event, event)
                            .execute(&mut *tx)
                            .await?;
                    }
                    for entry in &update.history {
                        insert_history(dialect.insert_history, entry, entry.kind)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                row
            }
        });
        match row {
            Some(row) => row.try_into(),
            None => Err(self.missed(id, expected_version).await?),
        }
    }

    async fn update_batch(
        &self,
        updates: &[BatchUpdate],
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let written = with_pool!(self, |pool| Backend::write_batch(pool, updates).await?);
        let mut answers = Vec::with_capacity(updates.len());
        for (entry, version) in updates.iter().zip(written) {
            answers.push(match version {
                Some(version) => Ok(version),
                None => Err(self.missed(entry.id, entry.expected_version).await?),
            });
        }
        Ok(answers)
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        takeover_before: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        records(with_pool!(self, |pool, dialect| {
            sqlx::query_as::<_, RawRow>(dialect.claim_due)
                .bind(owner)
                .bind(to_millis(lease_until))
                .bind(to_millis(now))
                .bind(i64::from(limit))
                .bind(to_millis(takeover_before))
                .fetch_all(pool)
                .await?
        }))
    }

    async fn acquire_lease(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        takeover_before: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = with_pool!(self, |pool, dialect| {
            sqlx::query_as::<_, RawRow>(dialect.acquire_lease)
                .bind(owner)
                .bind(to_millis(lease_until))
                .bind(id.to_string())
                .bind(to_millis(takeover_before))
                .bind(expected_version)
                .fetch_optional(pool)
                .await?
        });
        row.map(TryInto::try_into).transpose()
    }

    async fn renew_lease(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool, dialect| {
            sqlx::query(dialect.renew_lease)
                .bind(to_millis(lease_until))
                .bind(id.to_string())
                .bind(owner)
                .bind(expected_version)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn renew_leases(
        &self,
        owner: &str,
        renewals: &[LeaseRenewal],
    ) -> Result<Vec<bool>, StoreError> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        Ok(with_pool!(self, |pool| Backend::renew_batch(
            pool, owner, renewals
        )
        .await?))
    }

    async fn release_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool, dialect| {
            sqlx::query(dialect.release_lease)
                .bind(id.to_string())
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn delete(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM connections WHERE user_id = $1 AND integration = $2")
                .bind(user.as_str())
                .bind(integration.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn count_by_status(&self) -> Result<BTreeMap<ConnectionStatus, u64>, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT status, COUNT(*) FROM connections GROUP BY status")
                .fetch_all(pool)
                .await?
        });
        let mut counts: BTreeMap<ConnectionStatus, u64> =
            ConnectionStatus::ALL.into_iter().map(|s| (s, 0)).collect();
        for (status, count) in rows {
            let status = status
                .parse::<ConnectionStatus>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            counts.insert(status, count as u64);
        }
        Ok(counts)
    }

    async fn count_due_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let (count,): (i64,) = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT COUNT(*) FROM connections WHERE next_refresh_at IS NOT NULL \
                 AND next_refresh_at <= $1 AND status IN ('connected', 'error')",
            )
            .bind(to_millis(before))
            .fetch_one(pool)
            .await?
        });
        Ok(count as u64)
    }

    async fn purge(
        &self,
        statuses: &[ConnectionStatus],
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if statuses.is_empty() {
            return Ok(0);
        }
        Ok(with_pool!(self, |pool| {
            let mut query = sqlx::QueryBuilder::new("DELETE FROM connections WHERE updated_at < ");
            query.push_bind(to_millis(before)).push(" AND status IN (");
            let mut separated = query.separated(", ");
            for status in statuses {
                separated.push_bind(status.as_str());
            }
            query.push(")");
            query.build().execute(pool).await?.rows_affected()
        }))
    }
}

impl SqlStore {
    /// Why a compare-and-swap wrote nothing: the row moved on, or is gone.
    async fn missed(&self, id: ConnectionId, expected: i64) -> Result<StoreError, StoreError> {
        Ok(if self.get_by_id(id).await?.is_some() {
            StoreError::Conflict { id, expected }
        } else {
            StoreError::NotFound
        })
    }
}

/// The backend's migrations, chosen by the pool's type.
fn migrator<DB: Backend>(_pool: &sqlx::Pool<DB>) -> sqlx::migrate::Migrator {
    DB::migrator()
}
