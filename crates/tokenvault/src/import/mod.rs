//! Importing grants obtained elsewhere (a legacy token store) so that
//! tokenvault keeps them fresh from then on.
//!
//! An import is idempotent: a connection that already holds exactly the
//! imported grant is left alone (no write, no new data key, no event). A
//! different grant replaces the stored one in a single compare-and-swap
//! write, which also records `connection.created`; nothing is ever
//! half-written. Tokens tokenvault itself refreshed after the grant was
//! exported are newer than the export, so re-running an old export keeps
//! them ([`ImportAction::KeptNewer`]) unless forced.

mod validate;
mod wire;
mod write;

#[cfg(feature = "utoipa")]
pub use wire::scopes_schema;
pub use wire::{GrantBody, ImportLine, WireToken, json_kind};

#[cfg(test)]
mod tests;

use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

use crate::domain::IntegrationKey;
use crate::store::StoreError;
use crate::vault::{ConnectionView, VaultError};

/// Longest access or refresh token accepted, in bytes. Real tokens (JWTs
/// included) stay far below; anything longer is a broken export.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest `metadata` object accepted, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest scope list accepted, space-separated, in bytes.
pub const MAX_SCOPES_BYTES: usize = 4 * 1024;
/// How far ahead an expiry may lie. Further out is a unit mix-up
/// (milliseconds read as seconds) rather than a real token.
pub const MAX_EXPIRY_AHEAD: Duration = Duration::days(3650);

/// A grant as a legacy store kept it.
#[derive(Debug, Clone)]
pub struct ImportedGrant {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// `None`: the token does not expire (or the legacy store did not know).
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    /// A JSON object, stored as the connection's metadata.
    pub metadata: Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Validate and compare with the stored connection, write nothing.
    pub dry_run: bool,
    /// Replace even a connection tokenvault has refreshed since (see
    /// [`ImportAction::KeptNewer`]).
    pub force: bool,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    /// There was no connection; one was stored.
    Created,
    /// The connection held another grant (or none, or erased tokens); it was
    /// replaced.
    Replaced,
    /// The connection already held exactly this grant; nothing was written.
    Unchanged,
    /// Nothing was written: tokenvault refreshed this connection since it
    /// was stored and its tokens do not expire before the imported ones, so
    /// the imported grant is the older one (writing it back would put a
    /// spent refresh token in place of a live one).
    KeptNewer,
}

impl ImportAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
            Self::KeptNewer => "kept_newer",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOutcome {
    pub action: ImportAction,
    /// The connection as stored afterwards (in a dry run: as it would be).
    pub connection: ConnectionView,
}

/// Why a grant cannot be imported. Messages never contain token values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGrant {
    #[error("{field} {problem}")]
    Token {
        field: &'static str,
        problem: String,
    },
    #[error("expires_at {0}")]
    ExpiresAt(String),
    #[error(
        "the access token expired at {} and there is no refresh token to renew it; importing it would store a dead connection",
        .expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )]
    Expired { expires_at: DateTime<Utc> },
    #[error("scopes: {0}")]
    Scopes(String),
    #[error("metadata {0}")]
    Metadata(String),
}

impl InvalidGrant {
    /// A stable machine-readable code (the HTTP API's error code).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Token { .. } => "invalid_token",
            Self::ExpiresAt(_) => "invalid_expires_at",
            Self::Expired { .. } => "token_expired",
            Self::Scopes(_) => "invalid_scopes",
            Self::Metadata(_) => "invalid_metadata",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Invalid(#[from] InvalidGrant),
    #[error("integration {0} is not configured")]
    UnknownIntegration(IntegrationKey),
    #[error("the connection is being refreshed or changed right now and did not settle; try again")]
    Busy,
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<StoreError> for ImportError {
    fn from(err: StoreError) -> Self {
        Self::Vault(VaultError::Store(err))
    }
}
