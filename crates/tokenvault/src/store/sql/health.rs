//! [`IntegrationHealthStore`] on [`SqlStore`]: the `integration_health`
//! table.

use super::{POSTGRES, SQLITE, SqlStore, insert_event};
use crate::domain::IntegrationKey;
use crate::store::{
    IntegrationHealthStore, LastError, MisconfiguredIntegration, OutboxEvent, StoreError,
    from_millis, to_millis, with_pool,
};

/// Marks an integration unless it is already marked under the same
/// configuration fingerprint.
const MARK: &str = "INSERT INTO integration_health \
     (integration, config_fingerprint, error_code, error_message, misconfigured_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (integration) DO UPDATE SET \
     config_fingerprint = excluded.config_fingerprint, error_code = excluded.error_code, \
     error_message = excluded.error_message, misconfigured_at = excluded.misconfigured_at \
     WHERE integration_health.config_fingerprint <> excluded.config_fingerprint";

#[async_trait::async_trait]
impl IntegrationHealthStore for SqlStore {
    async fn mark_misconfigured(
        &self,
        entry: &MisconfiguredIntegration,
        event: Option<&OutboxEvent>,
    ) -> Result<bool, StoreError> {
        Ok(with_pool!(self, |pool, dialect| {
            let mut tx = pool.begin().await?;
            let newly = sqlx::query(MARK)
                .bind(entry.integration.as_str())
                .bind(entry.config_fingerprint.as_str())
                .bind(entry.error.code.as_str())
                .bind(entry.error.message.as_str())
                .bind(to_millis(entry.since))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if newly && let Some(event) = event {
                insert_event(dialect.insert_event, event)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            newly
        }))
    }

    async fn clear_misconfigured(&self, integration: &IntegrationKey) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM integration_health WHERE integration = $1")
                .bind(integration.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn list_misconfigured(&self) -> Result<Vec<MisconfiguredIntegration>, StoreError> {
        let rows: Vec<(String, String, String, String, i64)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT integration, config_fingerprint, error_code, error_message, misconfigured_at \
                 FROM integration_health ORDER BY integration",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(integration, config_fingerprint, code, message, since)| {
                Ok(MisconfiguredIntegration {
                    integration: IntegrationKey::parse(integration)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    config_fingerprint,
                    error: LastError { code, message },
                    since: from_millis(since)?,
                })
            })
            .collect()
    }
}
