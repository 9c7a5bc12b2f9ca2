//! [`EventOutbox`] on [`SqlStore`]: the `webhook_outbox` table.

use chrono::{DateTime, Utc};

use super::{POSTGRES, SQLITE, SqlStore, insert_event};
use crate::store::{
    EventOutbox, OutboxEvent, PendingEvent, StoreError, from_millis, to_millis, with_pool,
};

#[async_trait::async_trait]
impl EventOutbox for SqlStore {
    async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        with_pool!(self, |pool, dialect| {
            let mut tx = pool.begin().await?;
            for event in events {
                insert_event(dialect.insert_event, event)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn claim_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        let rows: Vec<(String, String, String, i32, i64)> = with_pool!(self, |pool, dialect| {
            sqlx::query_as(dialect.claim_events)
                .bind(owner)
                .bind(to_millis(lease_until))
                .bind(to_millis(now))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        let mut events = rows
            .into_iter()
            .map(|(id, event_type, payload, attempts, created_at)| {
                Ok(PendingEvent {
                    id: uuid::Uuid::parse_str(&id)
                        .map_err(|e| StoreError::Corrupt(format!("event id: {e}")))?,
                    event_type,
                    payload,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    created_at: from_millis(created_at)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING does not keep the subquery's order.
        events.sort_by_key(|event| (event.created_at, event.id));
        Ok(events)
    }

    async fn event_delivered(
        &self,
        id: uuid::Uuid,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool, dialect| {
            sqlx::query(dialect.event_delivered)
                .bind(id.to_string())
                .bind(owner)
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn event_failed(
        &self,
        id: uuid::Uuid,
        owner: &str,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool, dialect| {
            sqlx::query(dialect.event_failed)
                .bind(id.to_string())
                .bind(owner)
                .bind(to_millis(retry_at.unwrap_or(now)))
                .bind(retry_at.is_none().then(|| to_millis(now)))
                .bind(error)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn count_pending_events(&self) -> Result<u64, StoreError> {
        let (count,): (i64,) = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(count as u64)
    }
}
