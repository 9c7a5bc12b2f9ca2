//! The store logic, written once and instantiated per backend. The backends
//! differ only in SQL text ([`Dialect`]): PostgreSQL keeps ids as `uuid` and
//! metadata as `jsonb`, casting to and from text at the boundary, and claims
//! due rows with `FOR UPDATE SKIP LOCKED`.

/// Per-backend SQL. Placeholders are `$N` in both (SQLite accepts them).
pub(super) struct Dialect {
    /// SELECT list producing a `RawRow`.
    pub columns: &'static str,
    /// Appended to an id parameter (`::uuid` on PostgreSQL).
    pub id_cast: &'static str,
    pub select_by_key: &'static str,
    pub select_by_id: &'static str,
    pub select_by_user: &'static str,
    pub upsert: &'static str,
    pub update: &'static str,
    /// `update` answering only the new version (batched write-backs).
    pub update_version: &'static str,
    pub claim_due: &'static str,
    pub acquire_lease: &'static str,
    pub renew_lease: &'static str,
    pub release_lease: &'static str,
    pub replace_wrapped_key: &'static str,
    pub list_keys_to_rotate: &'static str,
    pub insert_event: &'static str,
    pub claim_events: &'static str,
    pub event_delivered: &'static str,
    pub event_failed: &'static str,
}

/// Binds an update's columns, then the row's id and expected version, in the
/// order of the dialects' `update` and `update_version` statements.
macro_rules! bind_update {
    ($query:expr, $c:expr, $id:expr, $version:expr) => {
        $query
            .bind($c.status)
            .bind($c.scopes)
            .bind($c.token_type)
            .bind($c.expires_at)
            .bind($c.next_refresh_at)
            .bind($c.refresh_attempts)
            .bind($c.last_error_code)
            .bind($c.last_error_message)
            .bind($c.last_refreshed_at)
            .bind($c.access_token)
            .bind($c.refresh_token)
            .bind($c.metadata)
            .bind($c.lease_owner)
            .bind($c.lease_expires_at)
            .bind($c.updated_at)
            .bind($id.to_string())
            .bind($version)
            .bind($c.failing_since)
    };
}
pub(crate) use bind_update;

/// Column list of `RETURNING`/`SELECT` for a dialect; a macro so that the
/// dialect's statements can be `concat!`ed at compile time.
macro_rules! returning_columns {
    (sqlite) => {
        "id, user_id, integration, status, scopes, token_type, expires_at, next_refresh_at, \
         refresh_attempts, last_error_code, last_error_message, last_refreshed_at, failing_since, version, \
         access_token, refresh_token, data_key, metadata, lease_owner, lease_expires_at, \
         created_at, updated_at"
    };
    (postgres) => {
        "id::text AS id, user_id, integration, status, scopes, token_type, expires_at, next_refresh_at, \
         refresh_attempts, last_error_code, last_error_message, last_refreshed_at, failing_since, version, \
         access_token, refresh_token, data_key, metadata::text AS metadata, lease_owner, lease_expires_at, \
         created_at, updated_at"
    };
}
pub(super) use returning_columns;

macro_rules! sql_store {
    ($store:ident, $db:ty, $dialect:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::ConnectionStore for $store {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                Self::migrator()
                    .run(&self.pool)
                    .await
                    .map_err($crate::store::migrate_error)
            }

            async fn upsert(&self, c: NewConnection) -> Result<ConnectionRecord, StoreError> {
                let now = to_millis(c.now);
                let query = sqlx::query_as::<_, RawRow>($dialect.upsert)
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
                    .bind(super::record::storable_json(&c.metadata))
                    .bind(now);
                let row: RawRow = if c.emit.is_empty() {
                    query.fetch_one(&self.pool).await?
                } else {
                    let mut tx = self.pool.begin().await?;
                    let row = query.fetch_one(&mut *tx).await?;
                    for event in &c.emit {
                        insert_event::<$db>($dialect.insert_event, event).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    row
                };
                row.try_into()
            }

            async fn get(&self, user: &UserId, integration: &IntegrationKey) -> Result<Option<ConnectionRecord>, StoreError> {
                sqlx::query_as::<_, RawRow>($dialect.select_by_key)
                    .bind(user.as_str())
                    .bind(integration.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn get_by_id(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError> {
                sqlx::query_as::<_, RawRow>($dialect.select_by_id)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn list_by_user(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError> {
                sqlx::query_as::<_, RawRow>($dialect.select_by_user)
                    .bind(user.as_str())
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn list(&self, filter: &ListFilter, after: Option<ConnectionId>, limit: u32) -> Result<Vec<ConnectionRecord>, StoreError> {
                let mut query = sqlx::QueryBuilder::<$db>::new(format!("SELECT {} FROM connections WHERE TRUE", $dialect.columns));
                if let Some(integration) = &filter.integration {
                    query.push(" AND integration = ").push_bind(integration.as_str().to_owned());
                }
                if let Some(status) = filter.status {
                    query.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(after) = after {
                    query.push(" AND id > ").push_bind(after.to_string()).push($dialect.id_cast);
                }
                query.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
                query
                    .build_query_as::<RawRow>()
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn update(&self, id: ConnectionId, expected_version: i64, update: &ConnectionUpdate) -> Result<ConnectionRecord, StoreError> {
                let c = UpdateColumns::new(update);
                let query = $crate::store::sql::bind_update!(
                    sqlx::query_as::<_, RawRow>($dialect.update),
                    c,
                    id,
                    expected_version
                );
                let row: Option<RawRow> = if update.emit.is_empty() {
                    query.fetch_optional(&self.pool).await?
                } else {
                    let mut tx = self.pool.begin().await?;
                    let row = query.fetch_optional(&mut *tx).await?;
                    if row.is_some() {
                        for event in &update.emit {
                            insert_event::<$db>($dialect.insert_event, event).execute(&mut *tx).await?;
                        }
                        tx.commit().await?;
                    }
                    row
                };
                match row {
                    Some(row) => row.try_into(),
                    None if self.get_by_id(id).await?.is_some() => Err(StoreError::Conflict { id, expected: expected_version }),
                    None => Err(StoreError::NotFound),
                }
            }

            async fn update_batch(&self, updates: &[BatchUpdate]) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
                if updates.is_empty() {
                    return Ok(Vec::new());
                }
                let written = self.write_batch(updates).await?;
                let mut answers = Vec::with_capacity(updates.len());
                for (entry, version) in updates.iter().zip(written) {
                    answers.push(match version {
                        Some(version) => Ok(version),
                        None if self.get_by_id(entry.id).await?.is_some() => {
                            Err(StoreError::Conflict { id: entry.id, expected: entry.expected_version })
                        }
                        None => Err(StoreError::NotFound),
                    });
                }
                Ok(answers)
            }

            async fn claim_due(&self, now: DateTime<Utc>, limit: u32, owner: &str, takeover_before: DateTime<Utc>, lease_until: DateTime<Utc>) -> Result<Vec<ConnectionRecord>, StoreError> {
                sqlx::query_as::<_, RawRow>($dialect.claim_due)
                    .bind(owner)
                    .bind(to_millis(lease_until))
                    .bind(to_millis(now))
                    .bind(i64::from(limit))
                    .bind(to_millis(takeover_before))
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn acquire_lease(&self, id: ConnectionId, owner: &str, expected_version: i64, takeover_before: DateTime<Utc>, lease_until: DateTime<Utc>) -> Result<Option<ConnectionRecord>, StoreError> {
                sqlx::query_as::<_, RawRow>($dialect.acquire_lease)
                    .bind(owner)
                    .bind(to_millis(lease_until))
                    .bind(id.to_string())
                    .bind(to_millis(takeover_before))
                    .bind(expected_version)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn renew_lease(&self, id: ConnectionId, owner: &str, expected_version: i64, lease_until: DateTime<Utc>) -> Result<bool, StoreError> {
                let done = sqlx::query($dialect.renew_lease)
                    .bind(to_millis(lease_until))
                    .bind(id.to_string())
                    .bind(owner)
                    .bind(expected_version)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError> {
                let done = sqlx::query($dialect.release_lease)
                    .bind(id.to_string())
                    .bind(owner)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete(&self, user: &UserId, integration: &IntegrationKey) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM connections WHERE user_id = $1 AND integration = $2")
                    .bind(user.as_str())
                    .bind(integration.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn count_by_status(&self) -> Result<BTreeMap<ConnectionStatus, u64>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM connections GROUP BY status")
                    .fetch_all(&self.pool)
                    .await?;
                let mut counts: BTreeMap<ConnectionStatus, u64> = ConnectionStatus::ALL.into_iter().map(|s| (s, 0)).collect();
                for (status, count) in rows {
                    let status = status.parse::<ConnectionStatus>().map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    counts.insert(status, count as u64);
                }
                Ok(counts)
            }

            async fn count_due_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let (count,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM connections WHERE next_refresh_at IS NOT NULL AND next_refresh_at <= $1 AND status IN ('connected', 'error')",
                )
                .bind(to_millis(before))
                .fetch_one(&self.pool)
                .await?;
                Ok(count as u64)
            }

            async fn list_keys_to_rotate(&self, active: &str, after: Option<ConnectionId>, limit: u32) -> Result<Vec<(ConnectionId, WrappedKey)>, StoreError> {
                // The nil UUID sorts before every v7 id, so "after nothing" is a plain comparison.
                let after = after.map(|id| id.to_string()).unwrap_or_else(|| uuid::Uuid::nil().to_string());
                let rows: Vec<(String, Vec<u8>)> = sqlx::query_as($dialect.list_keys_to_rotate)
                    .bind(after)
                    .bind(active)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|(id, blob)| {
                        let id = ConnectionId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        let key = WrappedKey::from_blob(blob).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        Ok((id, key))
                    })
                    .collect()
            }

            async fn replace_wrapped_key(&self, id: ConnectionId, old: &WrappedKey, new: &WrappedKey) -> Result<bool, StoreError> {
                let done = sqlx::query($dialect.replace_wrapped_key)
                    .bind(new.blob())
                    .bind(new.key_id().as_str())
                    .bind(id.to_string())
                    .bind(old.blob())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn count_by_key(&self) -> Result<BTreeMap<String, u64>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as("SELECT kek_id, COUNT(*) FROM connections GROUP BY kek_id")
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(|(id, count)| (id, count as u64)).collect())
            }

            async fn purge(&self, statuses: &[ConnectionStatus], before: DateTime<Utc>) -> Result<u64, StoreError> {
                if statuses.is_empty() {
                    return Ok(0);
                }
                let mut query = sqlx::QueryBuilder::<$db>::new("DELETE FROM connections WHERE updated_at < ");
                query.push_bind(to_millis(before)).push(" AND status IN (");
                let mut separated = query.separated(", ");
                for status in statuses {
                    separated.push_bind(status.as_str());
                }
                query.push(")");
                Ok(query.build().execute(&self.pool).await?.rows_affected())
            }

            async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                for event in events {
                    insert_event::<$db>($dialect.insert_event, event).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn claim_events(&self, now: DateTime<Utc>, limit: u32, owner: &str, lease_until: DateTime<Utc>) -> Result<Vec<PendingEvent>, StoreError> {
                let rows: Vec<(String, String, String, i32, i64)> = sqlx::query_as($dialect.claim_events)
                    .bind(owner)
                    .bind(to_millis(lease_until))
                    .bind(to_millis(now))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                let mut events = rows
                    .into_iter()
                    .map(|(id, event_type, payload, attempts, created_at)| {
                        Ok(PendingEvent {
                            id: uuid::Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(format!("event id: {e}")))?,
                            event_type,
                            payload,
                            attempts: u32::try_from(attempts).unwrap_or(0),
                            created_at: $crate::store::from_millis(created_at)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                // RETURNING does not keep the subquery's order.
                events.sort_by_key(|event| (event.created_at, event.id));
                Ok(events)
            }

            async fn event_delivered(&self, id: uuid::Uuid, owner: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let done = sqlx::query($dialect.event_delivered)
                    .bind(id.to_string())
                    .bind(owner)
                    .bind(to_millis(now))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn event_failed(&self, id: uuid::Uuid, owner: &str, retry_at: Option<DateTime<Utc>>, error: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let done = sqlx::query($dialect.event_failed)
                    .bind(id.to_string())
                    .bind(owner)
                    .bind(to_millis(retry_at.unwrap_or(now)))
                    .bind(retry_at.is_none().then(|| to_millis(now)))
                    .bind(error)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn count_pending_events(&self) -> Result<u64, StoreError> {
                let (count,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(count as u64)
            }

            async fn mark_misconfigured(&self, entry: &MisconfiguredIntegration, event: Option<&OutboxEvent>) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(
                    "INSERT INTO integration_health (integration, config_fingerprint, error_code, error_message, misconfigured_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (integration) DO UPDATE SET \
                     config_fingerprint = excluded.config_fingerprint, error_code = excluded.error_code, \
                     error_message = excluded.error_message, misconfigured_at = excluded.misconfigured_at \
                     WHERE integration_health.config_fingerprint <> excluded.config_fingerprint",
                )
                .bind(entry.integration.as_str())
                .bind(entry.config_fingerprint.as_str())
                .bind(entry.error.code.as_str())
                .bind(entry.error.message.as_str())
                .bind(to_millis(entry.since))
                .execute(&mut *tx)
                .await?;
                let newly = done.rows_affected() == 1;
                if newly && let Some(event) = event {
                    insert_event::<$db>($dialect.insert_event, event).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(newly)
            }

            async fn clear_misconfigured(&self, integration: &IntegrationKey) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM integration_health WHERE integration = $1")
                    .bind(integration.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_misconfigured(&self) -> Result<Vec<MisconfiguredIntegration>, StoreError> {
                let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
                    "SELECT integration, config_fingerprint, error_code, error_message, misconfigured_at \
                     FROM integration_health ORDER BY integration",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(integration, config_fingerprint, code, message, since)| {
                        Ok(MisconfiguredIntegration {
                            integration: IntegrationKey::parse(integration).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            config_fingerprint,
                            error: LastError { code, message },
                            since: $crate::store::from_millis(since)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

/// Binds one outbox row for [`Dialect::insert_event`].
pub(crate) fn insert_event<'q, DB: sqlx::Database>(
    sql: &'static str,
    event: &'q super::OutboxEvent,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(sql)
        .bind(event.id.to_string())
        .bind(event.event_type.as_str())
        .bind(event.payload.as_str())
        .bind(super::to_millis(event.created_at))
}
pub(super) use sql_store;

/// Builds a backend's [`Dialect`]. The statements are identical but for
/// the SELECT list, parameter casts and PostgreSQL's row locking.
macro_rules! dialect {
    (columns: $cols:tt, id_cast: $id:literal, json_cast: $json:literal, id_select: $id_select:literal, lock: $lock:literal) => {
        $crate::store::sql::Dialect {
            columns: $crate::store::sql::returning_columns!($cols),
            id_cast: $id,
            select_by_key: concat!(
                "SELECT ", $crate::store::sql::returning_columns!($cols),
                " FROM connections WHERE user_id = $1 AND integration = $2"
            ),
            select_by_id: concat!(
                "SELECT ", $crate::store::sql::returning_columns!($cols), " FROM connections WHERE id = $1", $id
            ),
            select_by_user: concat!(
                "SELECT ", $crate::store::sql::returning_columns!($cols),
                " FROM connections WHERE user_id = $1 ORDER BY integration"
            ),
            upsert: concat!(
                "INSERT INTO connections (id, user_id, integration, status, scopes, token_type, expires_at, \
                 next_refresh_at, access_token, refresh_token, data_key, kek_id, metadata, created_at, updated_at) \
                 VALUES ($1", $id, ", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13", $json, ", $14, $14) \
                 ON CONFLICT (user_id, integration) DO UPDATE SET \
                 id = excluded.id, status = excluded.status, scopes = excluded.scopes, \
                 token_type = excluded.token_type, expires_at = excluded.expires_at, \
                 next_refresh_at = excluded.next_refresh_at, refresh_attempts = 0, \
                 last_error_code = NULL, last_error_message = NULL, last_refreshed_at = NULL, failing_since = NULL, \
                 version = connections.version + 1, access_token = excluded.access_token, \
                 refresh_token = excluded.refresh_token, data_key = excluded.data_key, \
                 kek_id = excluded.kek_id, metadata = excluded.metadata, lease_owner = NULL, \
                 lease_expires_at = NULL, updated_at = excluded.updated_at \
                 RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            update: concat!(
                "UPDATE connections SET status = $1, scopes = $2, token_type = $3, expires_at = $4, \
                 next_refresh_at = $5, refresh_attempts = $6, last_error_code = $7, last_error_message = $8, \
                 last_refreshed_at = $9, access_token = $10, refresh_token = $11, metadata = $12", $json, ", \
                 lease_owner = $13, lease_expires_at = $14, updated_at = $15, failing_since = $18, version = version + 1 \
                 WHERE id = $16", $id, " AND version = $17 RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            update_version: concat!(
                "UPDATE connections SET status = $1, scopes = $2, token_type = $3, expires_at = $4, \
                 next_refresh_at = $5, refresh_attempts = $6, last_error_code = $7, last_error_message = $8, \
                 last_refreshed_at = $9, access_token = $10, refresh_token = $11, metadata = $12", $json, ", \
                 lease_owner = $13, lease_expires_at = $14, updated_at = $15, failing_since = $18, version = version + 1 \
                 WHERE id = $16", $id, " AND version = $17 RETURNING version"
            ),
            claim_due: concat!(
                "UPDATE connections SET lease_owner = $1, lease_expires_at = $2, version = version + 1 \
                 WHERE id IN (SELECT id FROM connections \
                 WHERE next_refresh_at IS NOT NULL AND next_refresh_at <= $3 AND status IN ('connected', 'error') \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $5) \
                 ORDER BY next_refresh_at LIMIT $4", $lock, ") RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            acquire_lease: concat!(
                "UPDATE connections SET lease_owner = $1, lease_expires_at = $2, version = version + 1 \
                 WHERE id = $3", $id, " AND version = $5 \
                 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at <= $4) \
                 RETURNING ", $crate::store::sql::returning_columns!($cols)
            ),
            // Not a version bump: the holder keeps the version its copy of
            // the row (and its refresh token) was validated at.
            renew_lease: concat!(
                "UPDATE connections SET lease_expires_at = $1 \
                 WHERE id = $2", $id, " AND lease_owner = $3 AND version = $4"
            ),
            release_lease: concat!(
                "UPDATE connections SET lease_owner = NULL, lease_expires_at = NULL, version = version + 1 \
                 WHERE id = $1", $id, " AND lease_owner = $2"
            ),
            replace_wrapped_key: concat!(
                "UPDATE connections SET data_key = $1, kek_id = $2 WHERE id = $3", $id, " AND data_key = $4"
            ),
            list_keys_to_rotate: concat!(
                "SELECT ", $id_select, ", data_key FROM connections WHERE id > $1", $id,
                " AND kek_id <> $2 ORDER BY id LIMIT $3"
            ),
            insert_event: concat!(
                "INSERT INTO webhook_outbox (id, event_type, payload, created_at, next_attempt_at) \
                 VALUES ($1", $id, ", $2, $3, $4, $4)"
            ),
            claim_events: concat!(
                "UPDATE webhook_outbox SET lease_owner = $1, lease_expires_at = $2 \
                 WHERE id IN (SELECT id FROM webhook_outbox \
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= $3 \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $3) \
                 ORDER BY next_attempt_at LIMIT $4", $lock, ") \
                 RETURNING ", $id_select, ", event_type, payload, attempts, created_at"
            ),
            event_delivered: concat!(
                "UPDATE webhook_outbox SET delivered_at = $3, attempts = attempts + 1, last_error = NULL, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", $id, " AND lease_owner = $2"
            ),
            event_failed: concat!(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $3, abandoned_at = $4, \
                 last_error = $5, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1", $id, " AND lease_owner = $2"
            ),
        }
    };
}
pub(super) use dialect;
