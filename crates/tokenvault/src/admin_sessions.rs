//! Admin console sessions: an operator who signed in with an admin-scope
//! API key holds a random session cookie; the database keeps only the
//! cookie's SHA-256, the API key's digest (so that revoking the key ends
//! the session) and the session's CSRF token. Shared by every instance
//! through the connection database (table `admin_sessions`).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::store::{Database, Pool, StoreError, from_millis, to_millis, with_pool};

/// A session as stored (nothing in it opens the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    /// The API key's id (`config` for a bootstrap key).
    pub key_id: String,
    /// Lowercase hex SHA-256 of the whole API key.
    pub key_digest: String,
    /// Sent back by every state-changing form.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A session just opened: the cookie value goes to the browser once.
pub struct OpenedSession {
    pub cookie: SecretString,
    pub session: AdminSession,
}

impl fmt::Debug for OpenedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes from the OS, base64url (43 characters).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the table keys a session by: the cookie's digest.
fn id_digest(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// Whether `raw` is shaped like a cookie [`open`] makes (43 base64url
/// characters): anything else is refused without a database round trip.
pub fn is_well_formed(raw: &str) -> bool {
    raw.len() == 43
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new session for the key (`key_digest`) lasting `ttl` (not yet stored).
pub fn open(
    key_id: &str,
    key_digest: &str,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> OpenedSession {
    OpenedSession {
        cookie: SecretString::from(random_token()),
        session: AdminSession {
            key_id: key_id.to_owned(),
            key_digest: key_digest.to_owned(),
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + ttl,
        },
    }
}

/// Storage for admin sessions.
#[async_trait::async_trait]
pub trait AdminSessionStore: Send + Sync + 'static {
    async fn insert(&self, opened: &OpenedSession) -> Result<(), StoreError>;
    /// The live session whose cookie is `cookie` (expired ones are `None`).
    async fn find(
        &self,
        cookie: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AdminSession>, StoreError>;
    /// Ends the session; `false` when there was none.
    async fn delete(&self, cookie: &str) -> Result<bool, StoreError>;
    /// Ends every session opened with the key (digest); returns how many.
    async fn delete_for_key(&self, key_digest: &str) -> Result<u64, StoreError>;
    /// Deletes sessions expired before `now`.
    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The `admin_sessions` table; the same SQL runs on both backends.
#[derive(Clone, Debug)]
pub struct SqlAdminSessionStore {
    pool: Pool,
}

impl SqlAdminSessionStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Shares the pool of an open database.
    pub fn on(database: &Database) -> Arc<dyn AdminSessionStore> {
        Arc::new(Self::new(database.pool()))
    }
}

#[async_trait::async_trait]
impl AdminSessionStore for SqlAdminSessionStore {
    async fn insert(&self, opened: &OpenedSession) -> Result<(), StoreError> {
        let s = &opened.session;
        with_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO admin_sessions (id_digest, key_id, key_digest, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(id_digest(opened.cookie.expose_secret()))
        .bind(&s.key_id)
        .bind(&s.key_digest)
        .bind(&s.csrf_token)
        .bind(to_millis(s.created_at))
        .bind(to_millis(s.expires_at))
        .execute(pool)
        .await
        .map(drop)?
        });
        Ok(())
    }

    async fn find(
        &self,
        cookie: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AdminSession>, StoreError> {
        if !is_well_formed(cookie) {
            return Ok(None);
        }
        let row: Option<(String, String, String, i64, i64)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT key_id, key_digest, csrf_token, created_at, expires_at \
                 FROM admin_sessions WHERE id_digest = $1 AND expires_at > $2",
            )
            .bind(id_digest(cookie))
            .bind(to_millis(now))
            .fetch_optional(pool)
            .await?
        });
        row.map(|(key_id, key_digest, csrf_token, created_at, expires_at)| {
            Ok(AdminSession {
                key_id,
                key_digest,
                csrf_token,
                created_at: from_millis(created_at)?,
                expires_at: from_millis(expires_at)?,
            })
        })
        .transpose()
    }

    async fn delete(&self, cookie: &str) -> Result<bool, StoreError> {
        if !is_well_formed(cookie) {
            return Ok(false);
        }
        let deleted = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM admin_sessions WHERE id_digest = $1"
        )
        .bind(id_digest(cookie))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(deleted > 0)
    }

    async fn delete_for_key(&self, key_digest: &str) -> Result<u64, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query(
            "DELETE FROM admin_sessions WHERE key_digest = $1"
        )
        .bind(key_digest)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query(
            "DELETE FROM admin_sessions WHERE expires_at <= $1"
        )
        .bind(to_millis(now))
        .execute(pool)
        .await?
        .rows_affected()))
    }
}
