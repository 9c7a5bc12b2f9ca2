//! [`SqlBulkStore`]: the bulk tables on SQLite or PostgreSQL. One SQL text
//! serves both backends except where they differ (expanding a JSON array of
//! user ids); the differences live in [`Dialect`].

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::rows::{ActionRow, ItemRow, action, action_columns, item, item_columns};
use super::{BulkStore, CancelOutcome, NewBulkAction, TargetRows};
use crate::bulk::{BulkActionRecord, BulkItem, ItemOutcome, ItemState};
use crate::store::{
    Database, OutboxEvent, Pool, StoreError, from_millis, insert_event, to_millis, with_pool,
};

/// The SQL that differs between the backends.
struct Dialect {
    insert_users: &'static str,
    insert_event: &'static str,
}

const SQLITE: Dialect = Dialect {
    insert_users: "INSERT INTO bulk_items (action_id, seq, user_id, state, next_attempt_at, updated_at) \
         SELECT $1, CAST(key AS INTEGER) + 1, value, 'pending', $2, $3 FROM json_each($4)",
    insert_event: "INSERT INTO webhook_outbox (id, event_type, payload, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $4)",
};

const POSTGRES: Dialect = Dialect {
    insert_users: "INSERT INTO bulk_items (action_id, seq, user_id, state, next_attempt_at, updated_at) \
         SELECT $1, ord, u, 'pending', $2, $3 FROM jsonb_array_elements_text($4::jsonb) WITH ORDINALITY AS t(u, ord)",
    insert_event: "INSERT INTO webhook_outbox (id, event_type, payload, created_at, next_attempt_at) VALUES ($1::uuid, $2, $3, $4, $4)",
};

/// The two tables on SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct SqlBulkStore {
    pool: Pool,
}

impl SqlBulkStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Shares the pool of an open database.
    pub fn on(database: &Database) -> Arc<dyn BulkStore> {
        Arc::new(Self::new(database.pool()))
    }
}

#[async_trait::async_trait]
impl BulkStore for SqlBulkStore {
    async fn create(
        &self,
        action: &NewBulkAction,
        targets: TargetRows<'_>,
    ) -> Result<u64, StoreError> {
        let id = action.id.to_string();
        let now = to_millis(action.created_at);
        let not_before = to_millis(action.not_before);
        let (owner, until) = match &action.lease {
            Some((owner, until)) => (Some(owner.clone()), Some(to_millis(*until))),
            None => (None, None),
        };
        with_pool!(self, |pool, dialect| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO bulk_actions (id, integration, spec, not_before, rate_per_second, state, total, created_at, lease_owner, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, 'active', 0, $6, $7, $8)",
            )
            .bind(&id)
            .bind(action.integration.as_str())
            .bind(&action.spec)
            .bind(not_before)
            .bind(action.rate_per_second)
            .bind(now)
            .bind(&owner)
            .bind(until)
            .execute(&mut *tx)
            .await?;
            let inserted = match targets {
                TargetRows::Users(users) => {
                    let users = serde_json::to_string(users)
                        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
                    sqlx::query(dialect.insert_users)
                        .bind(&id)
                        .bind(not_before)
                        .bind(now)
                        .bind(users)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                }
                TargetRows::Status(status) => sqlx::query(
                    "INSERT INTO bulk_items (action_id, seq, user_id, state, next_attempt_at, updated_at) \
                     SELECT $1, ROW_NUMBER() OVER (ORDER BY user_id), user_id, 'pending', $2, $3 \
                     FROM connections WHERE integration = $4 AND status = $5",
                )
                .bind(&id)
                .bind(not_before)
                .bind(now)
                .bind(action.integration.as_str())
                .bind(status.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            sqlx::query("UPDATE bulk_actions SET total = $2 WHERE id = $1")
                .bind(&id)
                .bind(i64::try_from(inserted).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(inserted)
        })
    }

    async fn get(&self, id: uuid::Uuid) -> Result<Option<BulkActionRecord>, StoreError> {
        let row: Option<ActionRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            action_columns!(),
            " FROM bulk_actions WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?);
        row.map(action).transpose()
    }

    async fn recent(&self, limit: u32) -> Result<Vec<BulkActionRecord>, StoreError> {
        let rows: Vec<ActionRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            action_columns!(),
            " FROM bulk_actions ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(action).collect()
    }

    async fn counts(&self, id: uuid::Uuid) -> Result<BTreeMap<ItemState, u64>, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT state, COUNT(*) FROM bulk_items WHERE action_id = $1 GROUP BY state"
        )
        .bind(id.to_string())
        .fetch_all(pool)
        .await?);
        let mut counts: BTreeMap<ItemState, u64> =
            ItemState::ALL.into_iter().map(|s| (s, 0)).collect();
        for (state, n) in rows {
            let state = state
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("bulk item state {state:?}")))?;
            counts.insert(state, u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    async fn finished_since(
        &self,
        id: uuid::Uuid,
        since: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (n,): (i64,) = with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT COUNT(*) FROM bulk_items WHERE action_id = $1 AND finished_at IS NOT NULL AND finished_at >= $2"
        )
        .bind(id.to_string())
        .bind(to_millis(since))
        .fetch_one(pool)
        .await?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn items(
        &self,
        id: uuid::Uuid,
        state: Option<ItemState>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<BulkItem>, StoreError> {
        let rows: Vec<ItemRow> = with_pool!(self, |pool| {
            sqlx::query_as(concat!(
            "SELECT ",
            item_columns!(),
            " FROM bulk_items WHERE action_id = $1 AND (CAST($2 AS TEXT) IS NULL OR state = $2) AND seq > $3 ORDER BY seq LIMIT $4"
        ))
        .bind(id.to_string())
        .bind(state.map(ItemState::as_str))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
        });
        rows.into_iter().map(item).collect()
    }

    async fn cancel(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
        event: Option<&OutboxEvent>,
    ) -> Result<CancelOutcome, StoreError> {
        let id = id.to_string();
        let now = to_millis(now);
        with_pool!(self, |pool, dialect| {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE bulk_actions SET state = 'cancelled', finished_at = $2 WHERE id = $1 AND state = 'active'",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                let exists: Option<(String,)> =
                    sqlx::query_as("SELECT state FROM bulk_actions WHERE id = $1")
                        .bind(&id)
                        .fetch_optional(&mut *tx)
                        .await?;
                return Ok(if exists.is_some() {
                    CancelOutcome::Finished
                } else {
                    CancelOutcome::NotFound
                });
            }
            sqlx::query(
                "UPDATE bulk_items SET state = 'cancelled', finished_at = $2, updated_at = $2 WHERE action_id = $1 AND state = 'pending'",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if let Some(event) = event {
                insert_event(dialect.insert_event, event)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(CancelOutcome::Cancelled)
        })
    }

    async fn claim_action(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<BulkActionRecord>, StoreError> {
        // The outer WHERE repeats the conditions: under PostgreSQL's READ
        // COMMITTED a concurrent claimer re-checks them on the locked row.
        let row: Option<ActionRow> = with_pool!(self, |pool| {
            sqlx::query_as(concat!(
            "UPDATE bulk_actions SET lease_owner = $1, lease_until = $2, started_at = COALESCE(started_at, $3) \
             WHERE id = (SELECT id FROM bulk_actions WHERE state = 'active' AND not_before <= $3 \
                         AND (lease_until IS NULL OR lease_until < $3) ORDER BY not_before, id LIMIT 1) \
               AND state = 'active' AND (lease_until IS NULL OR lease_until < $3) \
             RETURNING ",
            action_columns!()
        ))
        .bind(owner)
        .bind(to_millis(lease_until))
        .bind(to_millis(now))
        .fetch_optional(pool)
        .await?
        });
        row.map(action).transpose()
    }

    async fn take_action(
        &self,
        id: uuid::Uuid,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<BulkActionRecord>, StoreError> {
        let row: Option<ActionRow> = with_pool!(self, |pool| {
            sqlx::query_as(concat!(
                "UPDATE bulk_actions SET lease_owner = $2, lease_until = $3, started_at = COALESCE(started_at, $4) \
                 WHERE id = $1 AND state = 'active' \
                   AND (lease_until IS NULL OR lease_until < $4 OR lease_owner = $2) \
                 RETURNING ",
                action_columns!()
            ))
            .bind(id.to_string())
            .bind(owner)
            .bind(to_millis(lease_until))
            .bind(to_millis(now))
            .fetch_optional(pool)
            .await?
        });
        row.map(action).transpose()
    }

    async fn renew_action(
        &self,
        id: uuid::Uuid,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE bulk_actions SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'active'"
        )
        .bind(id.to_string())
        .bind(owner)
        .bind(to_millis(lease_until))
        .execute(pool)
        .await?
        .rows_affected()
        });
        Ok(changed == 1)
    }

    async fn release_action(&self, id: uuid::Uuid, owner: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE bulk_actions SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2"
        )
        .bind(id.to_string())
        .bind(owner)
        .execute(pool)
        .await
        .map(|_| ())?
        });
        Ok(())
    }

    async fn recover_interrupted(
        &self,
        id: uuid::Uuid,
        resend: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let now = to_millis(now);
        let recovered = if resend {
            with_pool!(self, |pool| {
                sqlx::query(
                "UPDATE bulk_items SET state = 'pending', interrupted = interrupted + 1, next_attempt_at = $2, updated_at = $2 \
                 WHERE action_id = $1 AND state = 'running'"
            )
            .bind(id.to_string())
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
            })
        } else {
            with_pool!(self, |pool| {
                sqlx::query(
                "UPDATE bulk_items SET state = 'failed', interrupted = interrupted + 1, error_code = 'interrupted', \
                 error_message = 'the instance sending this request stopped before its outcome was recorded; the method is not idempotent, so it was not sent again', \
                 updated_at = $2, finished_at = $2 WHERE action_id = $1 AND state = 'running'"
            )
            .bind(id.to_string())
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
            })
        };
        Ok(recovered)
    }

    async fn due_items(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<BulkItem>, StoreError> {
        let rows: Vec<ItemRow> = with_pool!(self, |pool| {
            sqlx::query_as(concat!(
            "SELECT ",
            item_columns!(),
            " FROM bulk_items WHERE action_id = $1 AND state = 'pending' AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at, seq LIMIT $3"
        ))
        .bind(id.to_string())
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
        });
        rows.into_iter().map(item).collect()
    }

    async fn next_due(&self, id: uuid::Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (at,): (Option<i64>,) = with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT MIN(next_attempt_at) FROM bulk_items WHERE action_id = $1 AND state = 'pending'"
        )
        .bind(id.to_string())
        .fetch_one(pool)
        .await?
        });
        at.map(from_millis).transpose()
    }

    async fn last_sent(&self, id: uuid::Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (at,): (Option<i64>,) = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT MAX(updated_at) FROM bulk_items WHERE action_id = $1 AND attempts > 0",
            )
            .bind(id.to_string())
            .fetch_one(pool)
            .await?
        });
        at.map(from_millis).transpose()
    }

    async fn start_item(
        &self,
        id: uuid::Uuid,
        seq: i64,
        attempt: i32,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = with_pool!(self, |pool| sqlx::query(
            "UPDATE bulk_items SET state = 'running', attempts = $3, updated_at = $4 \
             WHERE action_id = $1 AND seq = $2 AND state = 'pending'"
        )
        .bind(id.to_string())
        .bind(seq)
        .bind(attempt)
        .bind(to_millis(now))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(changed == 1)
    }

    async fn finish_item(
        &self,
        id: uuid::Uuid,
        seq: i64,
        attempt: i32,
        outcome: &ItemOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let now_ms = to_millis(now);
        let finished = (outcome.state != ItemState::Pending).then_some(now_ms);
        let changed = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE bulk_items SET state = $4, status_code = $5, error_code = $6, error_message = $7, \
                 next_attempt_at = $8, rate_limited = rate_limited + $9, failures = failures + $10, \
                 updated_at = $11, finished_at = $12 \
             WHERE action_id = $1 AND seq = $2 AND state = 'running' AND attempts = $3"
        )
        .bind(id.to_string())
        .bind(seq)
        .bind(attempt)
        .bind(outcome.state.as_str())
        .bind(outcome.status_code.map(i32::from))
        .bind(outcome.error_code.as_deref())
        .bind(outcome.error_message.as_deref())
        .bind(to_millis(outcome.retry_at.unwrap_or(now)))
        .bind(i32::from(outcome.rate_limited))
        .bind(i32::from(outcome.failed_attempt))
        .bind(now_ms)
        .bind(finished)
        .execute(pool)
        .await?
        .rows_affected()
        });
        Ok(changed == 1)
    }

    async fn complete(
        &self,
        id: uuid::Uuid,
        owner: &str,
        now: DateTime<Utc>,
        event: Option<&OutboxEvent>,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        with_pool!(self, |pool, dialect| {
            let mut tx = pool.begin().await?;
            let (open,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM bulk_items WHERE action_id = $1 AND state IN ('pending', 'running')",
            )
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            if open > 0 {
                return Ok(false);
            }
            let changed = sqlx::query(
                "UPDATE bulk_actions SET state = 'completed', finished_at = $3, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND state = 'active' AND lease_owner = $2",
            )
            .bind(&id)
            .bind(owner)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(false);
            }
            if let Some(event) = event {
                insert_event(dialect.insert_event, event)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }
}
