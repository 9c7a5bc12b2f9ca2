//! What becomes of each line: checked in line order (JSON, names,
//! duplicates), then imported; a rejected line as the report shows it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::import::{ImportAction, ImportError, ImportOptions, ImportedGrant};
use tokenvault::vault::Vault;

use super::MAX_LINE_BYTES;
use super::reader::RawLine;
use tokenvault::import::{ImportLine, json_kind};

/// A rejected line as the report shows it. Never carries token values.
#[derive(Debug, Serialize)]
pub(super) struct Reject {
    pub(super) line: u64,
    error: &'static str,
    pub(super) reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    integration: Option<String>,
}
/// A line checked as far as can be done without the database.
pub(super) enum Prepared {
    Blank,
    Rejected(Reject),
    Ready {
        line: u64,
        user: UserId,
        integration: IntegrationKey,
        grant: ImportedGrant,
    },
}

/// Checks done in line order, before any import runs.
pub(super) struct Preparer {
    pub(super) vault: Vault,
    /// First line of every (user, integration) seen, keyed by a hash so
    /// memory stays small on huge files.
    pub(super) seen: HashMap<[u8; 16], u64>,
}

impl Preparer {
    pub(super) fn prepare(&mut self, number: u64, raw: RawLine) -> Prepared {
        let reject = |error, reason: String| {
            Prepared::Rejected(Reject {
                line: number,
                error,
                reason,
                user_id: None,
                integration: None,
            })
        };
        let bytes = match raw {
            RawLine::TooLong => {
                return reject(
                    "line_too_long",
                    format!("the line is longer than {MAX_LINE_BYTES} bytes"),
                );
            }
            RawLine::Text(bytes) => bytes,
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return reject("invalid_utf8", "the line is not valid UTF-8".into());
        };
        let text = if number == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            &text
        };
        let text = text.trim();
        if text.is_empty() {
            return Prepared::Blank;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(err) => {
                return reject(
                    "invalid_json",
                    format!(
                        "invalid JSON: {}",
                        err.to_string().replace(" at line 1 column ", " at column ")
                    ),
                );
            }
        };
        let Value::Object(fields) = &value else {
            return reject(
                "invalid_json",
                format!("the line is {}, not a JSON object", json_kind(&value)),
            );
        };
        // For the report, whatever the line says about whose it is.
        let named = |field: &str| {
            fields
                .get(field)
                .and_then(Value::as_str)
                .map(|s| s.chars().take(200).collect::<String>())
        };
        let (user_id, integration) = (named("user_id"), named("integration"));
        let reject = |error, reason: String| {
            Prepared::Rejected(Reject {
                line: number,
                error,
                reason,
                user_id: user_id.clone(),
                integration: integration.clone(),
            })
        };
        let parsed: ImportLine = match serde_path_to_error::deserialize(value) {
            Ok(parsed) => parsed,
            Err(err) => return reject("invalid_json", err.to_string()),
        };
        let (raw_user, raw_integration, body) = parsed.split();
        let user = match UserId::parse(raw_user) {
            Ok(user) => user,
            Err(err) => return reject("invalid_user_id", format!("user_id: {err}")),
        };
        let key = match IntegrationKey::parse(raw_integration) {
            Ok(key) => key,
            Err(err) => return reject("invalid_integration", format!("integration: {err}")),
        };
        if self.vault.integrations().get(&key).is_none() {
            return reject(
                "unknown_integration",
                format!("no integration named {:?} is configured", key.as_str()),
            );
        }
        let mut hash = Sha256::new();
        hash.update(user.as_str());
        hash.update([0]);
        hash.update(key.as_str());
        let digest: [u8; 16] = hash.finalize()[..16].try_into().expect("16 bytes");
        if let Some(first) = self.seen.get(&digest) {
            return reject(
                "duplicate",
                format!(
                    "line {first} already names this user_id and integration; only the first line for a connection is imported"
                ),
            );
        }
        self.seen.insert(digest, number);
        match body.into_grant() {
            Ok(grant) => Prepared::Ready {
                line: number,
                user,
                integration: key,
                grant,
            },
            Err(invalid) => reject(invalid.code(), invalid.to_string()),
        }
    }
}

/// What became of one line.
pub(super) enum Done {
    Blank,
    Imported {
        line: u64,
        action: ImportAction,
        last_refreshed_at: Option<DateTime<Utc>>,
    },
    Rejected(Reject),
    /// The database or the key ring failed: stop.
    Fatal {
        line: u64,
        error: anyhow::Error,
    },
    ReadFailed(std::io::Error),
}

pub(super) async fn finish(vault: Vault, prepared: Prepared, options: ImportOptions) -> Done {
    let (line, user, integration, grant) = match prepared {
        Prepared::Blank => return Done::Blank,
        Prepared::Rejected(reject) => return Done::Rejected(reject),
        Prepared::Ready {
            line,
            user,
            integration,
            grant,
        } => (line, user, integration, grant),
    };
    let reject = |error, reason: String| {
        Done::Rejected(Reject {
            line,
            error,
            reason,
            user_id: Some(user.as_str().to_owned()),
            integration: Some(integration.as_str().to_owned()),
        })
    };
    match vault.import_with(&user, &integration, grant, options).await {
        Ok(outcome) => Done::Imported {
            line,
            action: outcome.action,
            last_refreshed_at: outcome.connection.last_refreshed_at,
        },
        Err(ImportError::Invalid(invalid)) => reject(invalid.code(), invalid.to_string()),
        Err(err @ ImportError::UnknownIntegration(_)) => {
            reject("unknown_integration", err.to_string())
        }
        Err(err @ ImportError::Busy) => reject("connection_busy", err.to_string()),
        Err(ImportError::Vault(err)) => Done::Fatal {
            line,
            error: anyhow::Error::new(err),
        },
    }
}
