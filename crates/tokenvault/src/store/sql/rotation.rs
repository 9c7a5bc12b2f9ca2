//! [`KeyRotationStore`] on [`SqlStore`]: re-wrapping data keys in place.

use std::collections::BTreeMap;

use super::{POSTGRES, SQLITE, SqlStore};
use crate::crypto::WrappedKey;
use crate::domain::ConnectionId;
use crate::store::{KeyRotationStore, StoreError, with_pool};

#[async_trait::async_trait]
impl KeyRotationStore for SqlStore {
    async fn list_keys_to_rotate(
        &self,
        active: &str,
        after: Option<ConnectionId>,
        limit: u32,
    ) -> Result<Vec<(ConnectionId, WrappedKey)>, StoreError> {
        // The nil UUID sorts before every v7 id, so "after nothing" is a
        // plain comparison.
        let after = after.map_or_else(|| uuid::Uuid::nil().to_string(), |id| id.to_string());
        let rows: Vec<(String, Vec<u8>)> = with_pool!(self, |pool, dialect| {
            sqlx::query_as(dialect.list_keys_to_rotate)
                .bind(&after)
                .bind(active)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(id, blob)| {
                let id =
                    ConnectionId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let key =
                    WrappedKey::from_blob(blob).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((id, key))
            })
            .collect()
    }

    async fn replace_wrapped_key(
        &self,
        id: ConnectionId,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool, dialect| {
            sqlx::query(dialect.replace_wrapped_key)
                .bind(new.blob())
                .bind(new.key_id().as_str())
                .bind(id.to_string())
                .bind(old.blob())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn count_by_key(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT kek_id, COUNT(*) FROM connections GROUP BY kek_id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, count)| (id, count as u64))
            .collect())
    }
}
