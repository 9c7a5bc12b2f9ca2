//! API-key authentication for `/v1`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Accepted keys, held as SHA-256 digests so the comparison is constant-time
/// over equal-length values and no key sits in memory in the clear.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Arc<Vec<[u8; 32]>>,
}

impl ApiKeys {
    pub fn new(keys: &[SecretString]) -> Self {
        Self {
            digests: Arc::new(keys.iter().map(|key| digest(key.expose_secret())).collect()),
        }
    }

    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.digests.iter().fold(false, |found, key| {
            found | constant_time_eq(key, &presented)
        })
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Rejects requests without a valid `Authorization: Bearer <key>`.
pub async fn require_api_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => Err(ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer <key>`",
        )),
        Some(key) if keys.accepts(key) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::unauthorized("invalid API key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(&[SecretString::from("tvk_one"), SecretString::from("tvk_two")]);
        assert!(keys.accepts("tvk_one") && keys.accepts("tvk_two"));
        assert!(!keys.accepts("tvk_three") && !keys.accepts("") && !keys.accepts("tvk_on"));
        assert!(!ApiKeys::default().accepts("anything"));
    }
}
