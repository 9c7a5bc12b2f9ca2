//! API-key authentication and scopes for `/v1`.
//!
//! Keys come from the database (`tokenvault api-keys create`) or, as
//! bootstrap keys with the admin scope, from `TOKENVAULT_API_KEYS`. Each
//! route needs the scope of the group it is declared in
//! ([`super::api`]); scopes nest, so an admin key may do anything a manage
//! key may.

use crate::http::error::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokenvault::api_keys::{ApiKeyStore, Scope};

use super::error::ApiError;

/// How long a key lookup is trusted before the database is asked again:
/// a revoked key stops working on every instance within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Beyond this many cached verdicts the cache starts over (bounds memory
/// under a flood of random keys).
const KEY_CACHE_CAPACITY: usize = 10_000;
/// `last_used_at` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Who is calling: the key's id (`config` for a bootstrap key) and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub scope: Scope,
}

#[derive(Clone)]
enum Verdict {
    Valid(Caller),
    Revoked,
    Unknown,
}

/// SHA-256 of a whole API key.
pub type KeyDigest = [u8; 32];

/// Verifies presented keys. Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiKeys {
    /// Digests of the configured bootstrap keys (compared in constant time).
    bootstrap: Arc<Vec<[u8; 32]>>,
    store: Option<Arc<dyn ApiKeyStore>>,
    cache: Arc<Mutex<HashMap<KeyDigest, (Verdict, Instant)>>>,
    touched: Arc<Mutex<HashMap<String, Instant>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("this API key was revoked")]
    Revoked,
    #[error("cannot check the API key: {0}")]
    Unavailable(String),
}

impl ApiKeys {
    pub fn new(bootstrap: &[SecretString], store: Option<Arc<dyn ApiKeyStore>>) -> Self {
        Self {
            bootstrap: Arc::new(
                bootstrap
                    .iter()
                    .map(|key| digest(key.expose_secret()))
                    .collect(),
            ),
            store,
            ..Self::default()
        }
    }

    /// Resolves a presented key to its caller.
    pub async fn verify(&self, presented: &str) -> Result<Caller, AuthError> {
        self.verify_digest(digest(presented)).await
    }

    /// [`Self::verify`] for a key known by its SHA-256 (an admin console
    /// session keeps only that): the same cache, so a revoked key stops
    /// opening its sessions within [`KEY_CACHE_TTL`].
    pub async fn verify_digest(&self, presented_digest: KeyDigest) -> Result<Caller, AuthError> {
        let bootstrap = self.bootstrap.iter().fold(false, |found, key| {
            found | constant_time_eq(key, &presented_digest)
        });
        if bootstrap {
            return Ok(Caller {
                key_id: "config".into(),
                scope: Scope::Admin,
            });
        }
        let verdict = match self.cached(&presented_digest) {
            Some(verdict) => verdict,
            None => {
                let verdict = self.look_up(&presented_digest).await?;
                self.remember(presented_digest, verdict.clone());
                verdict
            }
        };
        match verdict {
            Verdict::Valid(caller) => {
                self.touch(&caller.key_id);
                Ok(caller)
            }
            Verdict::Revoked => Err(AuthError::Revoked),
            Verdict::Unknown => Err(AuthError::Invalid),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Verdict> {
        let cache = self.cache.lock().expect("key cache poisoned");
        cache
            .get(digest)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(verdict, _)| verdict.clone())
    }

    fn remember(&self, digest: [u8; 32], verdict: Verdict) {
        let mut cache = self.cache.lock().expect("key cache poisoned");
        if cache.len() >= KEY_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(digest, (verdict, Instant::now()));
    }

    async fn look_up(&self, digest: &[u8; 32]) -> Result<Verdict, AuthError> {
        let Some(store) = &self.store else {
            return Ok(Verdict::Unknown);
        };
        let record = store
            .find_by_digest(&hex::encode(digest))
            .await
            .map_err(|err| AuthError::Unavailable(err.to_string()))?;
        Ok(match record {
            None => Verdict::Unknown,
            Some(record) if record.revoked_at.is_some() => Verdict::Revoked,
            Some(record) => Verdict::Valid(Caller {
                key_id: record.id,
                scope: record.scope,
            }),
        })
    }

    /// Records the use in the background, at most once a minute per key.
    fn touch(&self, key_id: &str) {
        let Some(store) = self.store.clone() else {
            return;
        };
        {
            let mut touched = self.touched.lock().expect("touch map poisoned");
            if touched
                .get(key_id)
                .is_some_and(|at| at.elapsed() < TOUCH_EVERY)
            {
                return;
            }
            if touched.len() >= KEY_CACHE_CAPACITY {
                touched.clear();
            }
            touched.insert(key_id.to_owned(), Instant::now());
        }
        let key_id = key_id.to_owned();
        tokio::spawn(async move {
            if let Err(err) = store.touch(&key_id, chrono::Utc::now()).await {
                tracing::debug!(key = %key_id, error = %err, "recording API key use failed");
            }
        });
    }

    /// Forgets every cached verdict, after a revocation made here: this
    /// instance stops trusting the key at once, others within
    /// [`KEY_CACHE_TTL`].
    pub fn forget_all(&self) {
        self.cache.lock().expect("key cache poisoned").clear();
    }
}

/// SHA-256 of a whole API key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization: Bearer <key>` value. The scheme
/// is case-insensitive (RFC 9110 §11.1): `bearer` and `BEARER` are Bearer.
fn bearer_credentials(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Refuses a request to `route` without a valid `Authorization: Bearer
/// <key>` (401) or whose key lacks the route's scope (403); otherwise adds
/// the [`Caller`] to the request's extensions.
pub async fn authorize(keys: &ApiKeys, route: &str, request: &mut Request) -> Result<(), ApiError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials)
        .filter(|key| !key.is_empty());
    let caller = match presented {
        None => Err(AuthError::Missing),
        Some(key) => keys.verify(key).await,
    }
    .map_err(|err| match err {
        AuthError::Unavailable(reason) => {
            tracing::error!(%reason, "API key lookup failed");
            ApiError::new(
                ErrorCode::DatabaseUnavailable,
                "cannot check the API key: the database is unavailable",
            )
        }
        other => ApiError::unauthorized(other.to_string()),
    })?;
    let needed = super::required_scope(request.method(), route);
    if !caller.scope.allows(needed) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this API key has the {} scope; {} {route} needs {needed}",
                caller.scope,
                request.method()
            ),
        ));
    }
    tracing::debug!(key = %caller.key_id, scope = %caller.scope, "authenticated");
    request.extensions_mut().insert(caller);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_keys_are_admin_and_nothing_else_passes_without_a_store() {
        let keys = ApiKeys::new(
            &[SecretString::from("tvk_one"), SecretString::from("tvk_two")],
            None,
        );
        for key in ["tvk_one", "tvk_two"] {
            assert_eq!(keys.verify(key).await.unwrap().scope, Scope::Admin);
        }
        for key in ["tvk_three", "", "tvk_on"] {
            assert!(matches!(keys.verify(key).await, Err(AuthError::Invalid)));
        }
        assert!(ApiKeys::default().verify("anything").await.is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_is_a_key() {
        for value in [
            "Bearer tvk_1",
            "bearer tvk_1",
            "BEARER tvk_1",
            "bEaReR   tvk_1 ",
        ] {
            assert_eq!(bearer_credentials(value), Some("tvk_1"), "{value:?}");
        }
        for value in ["Basic dXNlcjpwYXNz", "Bearertvk_1", "tvk_1", "", "Bearer"] {
            assert_eq!(bearer_credentials(value), None, "{value:?}");
        }
        assert_eq!(bearer_credentials("Bearer "), Some(""));
    }

    use super::super::required_scope;
    use axum::http::Method;

    #[test]
    fn reads_need_read_tokens_changes_need_manage_the_rest_admin() {
        let token = "/v1/users/{user_id}/connections/{integration}/token";
        assert_eq!(required_scope(&Method::GET, token), Scope::ReadTokens);
        assert_eq!(
            required_scope(&Method::POST, "/v1/connect-sessions"),
            Scope::Manage
        );
        assert_eq!(
            required_scope(
                &Method::DELETE,
                "/v1/users/{user_id}/connections/{integration}"
            ),
            Scope::Manage
        );
        assert_eq!(
            required_scope(
                &Method::PUT,
                "/v1/users/{user_id}/connections/{integration}"
            ),
            Scope::Admin
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/integrations/{key}/reset"),
            Scope::Admin
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/some-future-endpoint"),
            Scope::Admin
        );
    }
}
