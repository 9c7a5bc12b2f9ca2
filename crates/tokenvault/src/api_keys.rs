//! API keys for the service's `/v1` surface: generation, scopes, storage.
//!
//! A key is `tvk_<id>_<secret>`: the id (12 hex chars) names the key in
//! listings and logs; the secret is 256 random bits. Only the SHA-256 digest
//! of the whole key is stored — with that much entropy a slow password hash
//! buys nothing, and a leaked table yields no usable key.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::store::{Database, Pool, StoreError, from_millis, to_millis, with_pool};

/// What a key may do. Scopes nest: `admin` ⊃ `manage` ⊃ `read-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read tokens and connection status, list providers and integrations.
    ReadTokens,
    /// Also start connect/device sessions, force refreshes, revoke connections.
    Manage,
    /// Also import connections and reset integrations.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::ReadTokens, Scope::Manage, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadTokens => "read-tokens",
            Self::Manage => "manage",
            Self::Admin => "admin",
        }
    }

    /// Whether a key with this scope may call an endpoint that needs `required`.
    pub fn allows(self, required: Scope) -> bool {
        self >= required
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown scope {0:?}; use read-tokens, manage or admin")]
pub struct UnknownScope(String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == raw)
            .ok_or_else(|| UnknownScope(raw.to_owned()))
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly generated key: the secret is shown once, then only its digest
/// exists.
pub struct NewApiKey {
    pub key: SecretString,
    pub record: ApiKeyRecord,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("a key name is 1 to 64 printable characters, got {0:?}")]
    InvalidName(String),
    #[error("no API key with id {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The name rule, shared by the CLI and the store.
pub fn validate_name(name: &str) -> Result<(), ApiKeyError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ApiKeyError::InvalidName(name.to_owned()))
    }
}

/// Generates a key (not yet stored).
pub fn generate(name: &str, scope: Scope, now: DateTime<Utc>) -> Result<NewApiKey, ApiKeyError> {
    validate_name(name)?;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewApiKey {
        key: SecretString::from(format!("tvk_{id}_{secret}")),
        record: ApiKeyRecord {
            id,
            name: name.to_owned(),
            scope,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        },
    })
}

/// Lowercase hex SHA-256 of a presented or generated key.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Storage for API keys.
#[async_trait::async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores a generated key's digest and record.
    async fn insert(&self, key: &NewApiKey) -> Result<(), ApiKeyError>;
    /// The key whose whole-key digest matches, revoked or not.
    async fn find_by_digest(&self, digest: &str) -> Result<Option<ApiKeyRecord>, ApiKeyError>;
    /// Every key, oldest first.
    async fn list(&self) -> Result<Vec<ApiKeyRecord>, ApiKeyError>;
    /// Marks a key revoked; `Ok(false)` when it already was.
    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<bool, ApiKeyError>;
    /// Records a use.
    async fn touch(&self, id: &str, now: DateTime<Utc>) -> Result<(), ApiKeyError>;
}

/// The `api_keys` table; the same SQL runs on both backends.
#[derive(Clone, Debug)]
pub struct SqlApiKeyStore {
    pool: Pool,
}

impl SqlApiKeyStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Shares the pool of an open database.
    pub fn on(database: &Database) -> Arc<dyn ApiKeyStore> {
        Arc::new(Self::new(database.pool()))
    }
}

type Row = (String, String, String, i64, Option<i64>, Option<i64>);

fn record(row: Row) -> Result<ApiKeyRecord, ApiKeyError> {
    let (id, name, scope, created_at, last_used_at, revoked_at) = row;
    Ok(ApiKeyRecord {
        scope: scope
            .parse()
            .map_err(|err: UnknownScope| StoreError::Corrupt(format!("api key {id}: {err}")))?,
        id,
        name,
        created_at: from_millis(created_at)?,
        last_used_at: last_used_at.map(from_millis).transpose()?,
        revoked_at: revoked_at.map(from_millis).transpose()?,
    })
}

#[async_trait::async_trait]
impl ApiKeyStore for SqlApiKeyStore {
    async fn insert(&self, key: &NewApiKey) -> Result<(), ApiKeyError> {
        let r = &key.record;
        let digest = digest(key.key.expose_secret());
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO api_keys (id, name, scope, digest, created_at) VALUES ($1, $2, $3, $4, $5)"
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(r.scope.as_str())
        .bind(&digest)
        .bind(to_millis(r.created_at))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from)?);
        Ok(())
    }

    async fn find_by_digest(&self, digest: &str) -> Result<Option<ApiKeyRecord>, ApiKeyError> {
        const SQL: &str = "SELECT id, name, scope, created_at, last_used_at, revoked_at FROM api_keys WHERE digest = $1";
        let row: Option<Row> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(digest)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?);
        row.map(record).transpose()
    }

    async fn list(&self) -> Result<Vec<ApiKeyRecord>, ApiKeyError> {
        const SQL: &str = "SELECT id, name, scope, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id";
        let rows: Vec<Row> = with_pool!(self, |pool| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?);
        rows.into_iter().map(record).collect()
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<bool, ApiKeyError> {
        let exists: Option<(Option<i64>,)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT revoked_at FROM api_keys WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?);
        if exists.is_none() {
            return Err(ApiKeyError::NotFound(id.to_owned()));
        }
        let changed = with_pool!(self, |pool| sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
        )
        .bind(id)
        .bind(to_millis(now))
        .execute(pool)
        .await
        .map_err(StoreError::from)?
        .rows_affected());
        Ok(changed == 1)
    }

    async fn touch(&self, id: &str, now: DateTime<Utc>) -> Result<(), ApiKeyError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1"
        )
        .bind(id)
        .bind(to_millis(now))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        assert!(Scope::Admin.allows(Scope::Manage) && Scope::Admin.allows(Scope::ReadTokens));
        assert!(Scope::Manage.allows(Scope::ReadTokens) && !Scope::Manage.allows(Scope::Admin));
        assert!(!Scope::ReadTokens.allows(Scope::Manage));
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn generated_keys_are_distinct_and_well_formed() {
        let a = generate("ci", Scope::Manage, Utc::now()).unwrap();
        let b = generate("ci", Scope::Manage, Utc::now()).unwrap();
        let key = a.key.expose_secret();
        assert!(
            key.starts_with(&format!("tvk_{}_", a.record.id)),
            "{}",
            a.record.id
        );
        assert_eq!(key.len(), 4 + 12 + 1 + 43);
        assert_ne!(key, b.key.expose_secret());
        assert_ne!(digest(key), digest(b.key.expose_secret()));
        assert!(
            !format!("{a:?}").contains(key),
            "Debug must not print the key"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(generate("", Scope::Admin, Utc::now()).is_err());
        assert!(generate("  ", Scope::Admin, Utc::now()).is_err());
        assert!(generate("a\nb", Scope::Admin, Utc::now()).is_err());
        assert!(generate(&"x".repeat(65), Scope::Admin, Utc::now()).is_err());
        assert!(generate("billing backend", Scope::Admin, Utc::now()).is_ok());
    }
}
