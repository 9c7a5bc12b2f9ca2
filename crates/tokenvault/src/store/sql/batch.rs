//! Batched write-backs: the one operation whose shape differs between the
//! backends. SQLite runs in-process, so one transaction of single-row
//! statements is what a batch saves; PostgreSQL gets every row in one
//! `UNNEST` statement (one round trip).

use std::collections::{HashMap, HashSet};

use sqlx::{Postgres, Sqlite};

use super::{Backend, POSTGRES, SQLITE, bind_update, insert_event, insert_history};
use crate::store::record::UpdateColumns;
use crate::store::{BatchUpdate, ConnectionUpdate, LeaseRenewal, StoreError, to_millis};

impl Backend for Sqlite {
    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/sqlite")
    }

    async fn write_batch(
        pool: &sqlx::Pool<Self>,
        updates: &[BatchUpdate],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let mut tx = pool.begin().await?;
        let mut written = Vec::with_capacity(updates.len());
        for entry in updates {
            let version: Option<(i64,)> = bind_update(
                sqlx::query_as(SQLITE.update_version),
                UpdateColumns::new(&entry.update),
                entry.id,
                entry.expected_version,
            )
            .fetch_optional(&mut *tx)
            .await?;
            if version.is_some() {
                for event in &entry.update.emit {
                    insert_event(SQLITE.insert_event, event)
                        .execute(&mut *tx)
                        .await?;
                }
                for history in &entry.update.history {
                    insert_history(SQLITE.insert_history, history, history.kind)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            written.push(version.map(|(version,)| version));
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn renew_batch(
        pool: &sqlx::Pool<Self>,
        owner: &str,
        renewals: &[LeaseRenewal],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = pool.begin().await?;
        let mut renewed = Vec::with_capacity(renewals.len());
        for renewal in renewals {
            let done = sqlx::query(SQLITE.renew_lease)
                .bind(to_millis(renewal.lease_until))
                .bind(renewal.id.to_string())
                .bind(owner)
                .bind(renewal.expected_version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            renewed.push(done == 1);
        }
        tx.commit().await?;
        Ok(renewed)
    }
}

impl Backend for Postgres {
    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/postgres")
    }

    /// [`UPDATE_BATCH`] for every row, in statements of at most
    /// [`MAX_STATEMENT_BYTES`] each, with the written rows' events, in one
    /// transaction.
    async fn write_batch(
        pool: &sqlx::Pool<Self>,
        updates: &[BatchUpdate],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let mut chunks = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, entry) in updates.iter().enumerate() {
            let size = encoded_size(&entry.update);
            if i > start && bytes + size > MAX_STATEMENT_BYTES {
                chunks.push(&updates[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        chunks.push(&updates[start..]);
        let with_events = updates
            .iter()
            .any(|entry| !entry.update.emit.is_empty() || !entry.update.history.is_empty());
        let mut written: Vec<(String, i64)> = Vec::with_capacity(updates.len());
        if chunks.len() == 1 && !with_events {
            written = batch_query(updates).fetch_all(pool).await?;
        } else {
            let mut tx = pool.begin().await?;
            for chunk in chunks {
                written.extend(batch_query(chunk).fetch_all(&mut *tx).await?);
            }
            if with_events {
                let ids: HashSet<&str> = written.iter().map(|(id, _)| id.as_str()).collect();
                for entry in updates {
                    if ids.contains(entry.id.to_string().as_str()) {
                        for event in &entry.update.emit {
                            insert_event(POSTGRES.insert_event, event)
                                .execute(&mut *tx)
                                .await?;
                        }
                        for history in &entry.update.history {
                            insert_history(POSTGRES.insert_history, history, history.kind)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
            }
            tx.commit().await?;
        }
        let versions: HashMap<String, i64> = written.into_iter().collect();
        Ok(updates
            .iter()
            .map(|entry| versions.get(&entry.id.to_string()).copied())
            .collect())
    }

    /// [`RENEW_BATCH`]: one statement, one commit. The in-flight renewals
    /// of a tick are one per refresh slot at most, far below
    /// [`MAX_STATEMENT_BYTES`]; R4's renewal of every row still waiting may
    /// carry a whole claim and then pay the Nagle delay described there,
    /// which once every third of a lease does not matter.
    async fn renew_batch(
        pool: &sqlx::Pool<Self>,
        owner: &str,
        renewals: &[LeaseRenewal],
    ) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<String> = renewals.iter().map(|r| r.id.to_string()).collect();
        let versions: Vec<i64> = renewals.iter().map(|r| r.expected_version).collect();
        let until: Vec<i64> = renewals.iter().map(|r| to_millis(r.lease_until)).collect();
        let renewed: Vec<(String,)> = sqlx::query_as(RENEW_BATCH)
            .bind(owner)
            .bind(&ids)
            .bind(versions)
            .bind(until)
            .fetch_all(pool)
            .await?;
        let renewed: HashSet<String> = renewed.into_iter().map(|(id,)| id).collect();
        Ok(ids.iter().map(|id| renewed.contains(id)).collect())
    }
}

/// [`super::Dialect::renew_lease`] for many rows: the rows travel as arrays
/// joined to the table on id and expected version. The version is left
/// alone, as in the single-row statement.
const RENEW_BATCH: &str = "UPDATE connections AS c SET lease_expires_at = v.lease_until \
     FROM UNNEST($2::uuid[], $3::int8[], $4::int8[]) AS v(id, expected, lease_until) \
     WHERE c.id = v.id AND c.version = v.expected AND c.lease_owner = $1 \
     RETURNING c.id::text";

/// Compare-and-swap of many rows in one statement: the rows travel as one
/// array per column, joined to the table on id and expected version.
const UPDATE_BATCH: &str = "UPDATE connections AS c SET status = v.status, scopes = v.scopes, \
     token_type = v.token_type, expires_at = v.expires_at, next_refresh_at = v.next_refresh_at, \
     refresh_attempts = v.refresh_attempts, last_error_code = v.last_error_code, \
     last_error_message = v.last_error_message, last_refreshed_at = v.last_refreshed_at, \
     access_token = v.access_token, refresh_token = v.refresh_token, metadata = v.metadata::jsonb, \
     lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at, updated_at = v.updated_at, \
     failing_since = v.failing_since, version = c.version + 1 \
     FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], \
     $8::int4[], $9::text[], $10::text[], $11::int8[], $12::bytea[], $13::bytea[], $14::text[], \
     $15::text[], $16::int8[], $17::int8[], $18::int8[]) \
     AS v(id, expected, status, scopes, token_type, expires_at, next_refresh_at, refresh_attempts, \
     last_error_code, last_error_message, last_refreshed_at, access_token, refresh_token, metadata, \
     lease_owner, lease_expires_at, updated_at, failing_since) \
     WHERE c.id = v.id AND c.version = v.expected \
     RETURNING c.id::text, c.version";

/// Largest batched statement sent in one piece. sqlx 0.9.0 no longer sets
/// `TCP_NODELAY` (launchbadge/sqlx#4335, fixed upstream by #4336 but not
/// released) and offers no option to set it: a bigger message leaves the
/// client in more than one write, Nagle's algorithm holds the last one
/// back until the server's delayed ACK, and the statement takes 40 ms
/// more (measured: 60+ rows at ~45 ms, 50 rows at 2–9 ms). Remove this
/// split when sqlx sets `TCP_NODELAY` again.
const MAX_STATEMENT_BYTES: usize = 7 * 1024;

/// Roughly what one row adds to [`UPDATE_BATCH`]'s parameters.
fn encoded_size(update: &ConnectionUpdate) -> usize {
    let text = |s: Option<&str>| s.map_or(0, str::len);
    let blob = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
    // 18 array elements with a 4-byte length each, 8 bytes per number.
    18 * 4
        + 36
        + 8 * 8
        + update.status.as_str().len()
        + update.scopes.len() * 16
        + update.token_type.as_str().len()
        + text(update.last_error.as_ref().map(|e| e.code.as_str()))
        + text(update.last_error.as_ref().map(|e| e.message.as_str()))
        + blob(&update.access_token)
        + blob(&update.refresh_token)
        + 64
        + text(update.lease.as_ref().map(|l| l.owner.as_str()))
}

/// One [`UPDATE_BATCH`] statement for `updates`.
fn batch_query(
    updates: &[BatchUpdate],
) -> sqlx::query::QueryAs<'static, Postgres, (String, i64), sqlx::postgres::PgArguments> {
    let n = updates.len();
    let mut ids = Vec::with_capacity(n);
    let mut expected = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut scopes = Vec::with_capacity(n);
    let mut token_type = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut next_refresh_at = Vec::with_capacity(n);
    let mut refresh_attempts = Vec::with_capacity(n);
    let mut error_code = Vec::with_capacity(n);
    let mut error_message = Vec::with_capacity(n);
    let mut last_refreshed_at = Vec::with_capacity(n);
    let mut access_token = Vec::with_capacity(n);
    let mut refresh_token = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut lease_owner = Vec::with_capacity(n);
    let mut lease_expires_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut failing_since = Vec::with_capacity(n);
    for entry in updates {
        let c = UpdateColumns::new(&entry.update);
        ids.push(entry.id.to_string());
        expected.push(entry.expected_version);
        status.push(c.status);
        scopes.push(c.scopes);
        token_type.push(c.token_type);
        expires_at.push(c.expires_at);
        next_refresh_at.push(c.next_refresh_at);
        refresh_attempts.push(c.refresh_attempts);
        error_code.push(c.last_error_code.map(str::to_owned));
        error_message.push(c.last_error_message.map(str::to_owned));
        last_refreshed_at.push(c.last_refreshed_at);
        access_token.push(c.access_token.map(<[u8]>::to_vec));
        refresh_token.push(c.refresh_token.map(<[u8]>::to_vec));
        metadata.push(c.metadata);
        lease_owner.push(c.lease_owner.map(str::to_owned));
        lease_expires_at.push(c.lease_expires_at);
        updated_at.push(c.updated_at);
        failing_since.push(c.failing_since);
    }
    sqlx::query_as::<_, (String, i64)>(UPDATE_BATCH)
        .bind(ids)
        .bind(expected)
        .bind(status)
        .bind(scopes)
        .bind(token_type)
        .bind(expires_at)
        .bind(next_refresh_at)
        .bind(refresh_attempts)
        .bind(error_code)
        .bind(error_message)
        .bind(last_refreshed_at)
        .bind(access_token)
        .bind(refresh_token)
        .bind(metadata)
        .bind(lease_owner)
        .bind(lease_expires_at)
        .bind(updated_at)
        .bind(failing_since)
}
