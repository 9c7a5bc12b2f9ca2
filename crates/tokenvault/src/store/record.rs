use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{StoreError, from_millis, to_millis};
use crate::crypto::{SealedTokens, WrappedKey};
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationKey, Scopes, TokenType, UserId};

/// Why the last refresh (or flow) failed, as shown in the status API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct LastError {
    pub code: String,
    pub message: String,
}

/// What happened to a connection, as its history records it. Routine
/// scheduled refreshes are not recorded (the row keeps the last one).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The user connected for the first time.
    Created,
    /// The user connected again: the grant replaced the previous one.
    Reconnected,
    /// Tokens were imported from another system.
    Imported,
    /// A refresh was asked for through the API (or the provider's API
    /// refused the token through the proxy) and succeeded.
    RefreshForced,
    /// A refresh run failed and is retried with backoff: recorded for the
    /// first failed run of a streak and for the one that turns the
    /// connection to `error`.
    RefreshFailed,
    /// A connection in `error` refreshed successfully again.
    Recovered,
    /// The provider refused the grant: the user must connect again.
    NeedsReauth,
    /// The access token expired and there is no way to refresh it.
    Expired,
    /// Revoked through the API; tokens erased.
    Revoked,
}

impl HistoryKind {
    pub const ALL: [HistoryKind; 9] = [
        Self::Created,
        Self::Reconnected,
        Self::Imported,
        Self::RefreshForced,
        Self::RefreshFailed,
        Self::Recovered,
        Self::NeedsReauth,
        Self::Expired,
        Self::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Reconnected => "reconnected",
            Self::Imported => "imported",
            Self::RefreshForced => "refresh_forced",
            Self::RefreshFailed => "refresh_failed",
            Self::Recovered => "recovered",
            Self::NeedsReauth => "needs_reauth",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

/// One entry of a connection's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub id: uuid::Uuid,
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub integration: IntegrationKey,
    pub kind: HistoryKind,
    /// The connection's status after the change.
    pub status: ConnectionStatus,
    /// How a failure was classified (`transient`, `rate_limited`, …).
    pub error_class: Option<String>,
    /// The provider's error code (`invalid_grant`, `http_503`, …).
    pub error_code: Option<String>,
    /// The failure as the status API shows it (secrets scrubbed).
    pub error_message: Option<String>,
    pub at: DateTime<Utc>,
}

impl HistoryEntry {
    /// An entry about `connection_id` of (user, integration), at `at`.
    pub fn new(
        kind: HistoryKind,
        connection_id: ConnectionId,
        user_id: &UserId,
        integration: &IntegrationKey,
        status: ConnectionStatus,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4(),
            connection_id,
            user_id: user_id.clone(),
            integration: integration.clone(),
            kind,
            status,
            error_class: None,
            error_code: None,
            error_message: None,
            at,
        }
    }

    /// An entry about a stored connection.
    pub fn about(
        kind: HistoryKind,
        record: &ConnectionRecord,
        status: ConnectionStatus,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            kind,
            record.id,
            &record.user_id,
            &record.integration,
            status,
            at,
        )
    }

    /// The same entry about a failure.
    pub fn with_error(mut self, class: Option<&str>, error: &LastError) -> Self {
        self.error_class = class.map(str::to_owned);
        self.error_code = Some(error.code.clone());
        self.error_message = Some(error.message.clone());
        self
    }

    /// Where the next page of a newest-first history listing starts.
    pub fn cursor(&self) -> HistoryCursor {
        HistoryCursor {
            at: self.at,
            id: self.id,
        }
    }
}

/// Position in a connection's history (newest first): the page after it
/// holds strictly older entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub at: DateTime<Utc>,
    pub id: uuid::Uuid,
}

/// Connections of one integration in one status, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub integration: IntegrationKey,
    pub status: ConnectionStatus,
    pub count: u64,
    /// Of those, how many are in a streak of failed refreshes.
    pub failing: u64,
    /// Of those, how many are due for a refresh before the asked instant.
    pub due: u64,
}

/// Who may refresh a connection right now, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub expires_at: DateTime<Utc>,
}

/// A webhook event to deliver, written to the outbox in the same transaction
/// as the change it describes (see [`crate::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: uuid::Uuid,
    pub event_type: String,
    /// The exact JSON body that will be signed and sent.
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// An outbox event leased to a delivery worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub id: uuid::Uuid,
    pub event_type: String,
    pub payload: String,
    /// Delivery attempts made before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// An integration whose client credentials the provider rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MisconfiguredIntegration {
    pub integration: IntegrationKey,
    /// Fingerprint of the configuration that was rejected; a different one
    /// means the operator changed it.
    pub config_fingerprint: String,
    pub error: LastError,
    pub since: DateTime<Utc>,
}

/// A new grant to store.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub id: ConnectionId,
    pub user_id: UserId,
    pub integration: IntegrationKey,
    pub status: ConnectionStatus,
    pub scopes: Scopes,
    pub token_type: TokenType,
    pub expires_at: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub sealed: SealedTokens,
    pub metadata: Value,
    pub now: DateTime<Utc>,
    /// Outbox events written in the same transaction (`connection.created`)
    /// when the grant is the pair's first connection.
    pub emit: Vec<OutboxEvent>,
    /// Written instead of `emit` when the grant replaced an existing row
    /// (`connection.reconnected`): the upsert alone knows which happened.
    pub emit_on_replace: Vec<OutboxEvent>,
    /// History entries written in the same transaction. A
    /// [`HistoryKind::Created`] entry is stored as
    /// [`HistoryKind::Reconnected`] when the grant replaced an existing row.
    pub history: Vec<HistoryEntry>,
}

/// One stored connection. Tokens stay sealed here; the vault opens them.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    pub id: ConnectionId,
    pub user_id: UserId,
    pub integration: IntegrationKey,
    pub status: ConnectionStatus,
    pub scopes: Scopes,
    pub token_type: TokenType,
    pub expires_at: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    /// Consecutive failed refresh runs.
    pub refresh_attempts: u32,
    pub last_error: Option<LastError>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Start of the current streak of failed refresh runs.
    pub failing_since: Option<DateTime<Utc>>,
    pub version: i64,
    /// `None` once erased (disconnected).
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub data_key: WrappedKey,
    pub metadata: Value,
    pub lease: Option<Lease>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The mutable part of a row, written whole by a compare-and-swap update.
/// Start from [`ConnectionRecord::to_update`] and change what you mean to.
#[derive(Debug, Clone)]
pub struct ConnectionUpdate {
    pub status: ConnectionStatus,
    pub scopes: Scopes,
    pub token_type: TokenType,
    pub expires_at: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub refresh_attempts: u32,
    pub last_error: Option<LastError>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub metadata: Value,
    pub lease: Option<Lease>,
    pub updated_at: DateTime<Utc>,
    /// Outbox events written in the same transaction as this update.
    pub emit: Vec<OutboxEvent>,
    /// History entries written in the same transaction as this update.
    pub history: Vec<HistoryEntry>,
}

/// One entry of [`super::ConnectionStore::update_batch`].
#[derive(Debug, Clone)]
pub struct BatchUpdate {
    pub id: ConnectionId,
    pub expected_version: i64,
    pub update: ConnectionUpdate,
}

/// One entry of [`super::ConnectionStore::renew_leases`]: extend the
/// lease of row `id` to `lease_until` if the row is still at
/// `expected_version` and leased to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRenewal {
    pub id: ConnectionId,
    pub expected_version: i64,
    pub lease_until: DateTime<Utc>,
}

impl ConnectionRecord {
    pub fn to_update(&self, now: DateTime<Utc>) -> ConnectionUpdate {
        ConnectionUpdate {
            status: self.status,
            scopes: self.scopes.clone(),
            token_type: self.token_type,
            expires_at: self.expires_at,
            next_refresh_at: self.next_refresh_at,
            refresh_attempts: self.refresh_attempts,
            last_error: self.last_error.clone(),
            last_refreshed_at: self.last_refreshed_at,
            failing_since: self.failing_since,
            access_token: self.access_token.clone(),
            refresh_token: self.refresh_token.clone(),
            metadata: self.metadata.clone(),
            lease: self.lease.clone(),
            updated_at: now,
            emit: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Whether `owner` may write now: no lease, an expired one, or its own.
    pub fn lease_allows(&self, owner: &str, now: DateTime<Utc>) -> bool {
        match &self.lease {
            None => true,
            Some(lease) => lease.owner == owner || lease.expires_at <= now,
        }
    }
}

/// A row as both backends return it (PostgreSQL casts uuid and jsonb to
/// text in its SELECT lists so one decoder serves both).
#[derive(sqlx::FromRow)]
pub(super) struct RawRow {
    pub id: String,
    pub user_id: String,
    pub integration: String,
    pub status: String,
    pub scopes: String,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    pub refresh_attempts: i32,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub last_refreshed_at: Option<i64>,
    pub failing_since: Option<i64>,
    pub version: i64,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub data_key: Vec<u8>,
    pub metadata: String,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn corrupt(field: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{field}: {err}"))
}

fn opt_time(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(from_millis).transpose()
}

impl TryFrom<RawRow> for ConnectionRecord {
    type Error = StoreError;

    fn try_from(row: RawRow) -> Result<Self, StoreError> {
        Ok(ConnectionRecord {
            id: ConnectionId::parse(&row.id).map_err(|e| corrupt("id", e))?,
            user_id: UserId::parse(row.user_id).map_err(|e| corrupt("user_id", e))?,
            integration: IntegrationKey::parse(row.integration)
                .map_err(|e| corrupt("integration", e))?,
            status: row.status.parse().map_err(|e| corrupt("status", e))?,
            scopes: Scopes::parse(&row.scopes, " "),
            token_type: row
                .token_type
                .parse()
                .map_err(|e| corrupt("token_type", e))?,
            expires_at: opt_time(row.expires_at)?,
            next_refresh_at: opt_time(row.next_refresh_at)?,
            refresh_attempts: u32::try_from(row.refresh_attempts)
                .map_err(|e| corrupt("refresh_attempts", e))?,
            last_error: match (row.last_error_code, row.last_error_message) {
                (Some(code), message) => Some(LastError {
                    code,
                    message: message.unwrap_or_default(),
                }),
                (None, _) => None,
            },
            last_refreshed_at: opt_time(row.last_refreshed_at)?,
            failing_since: opt_time(row.failing_since)?,
            version: row.version,
            access_token: row.access_token,
            refresh_token: row.refresh_token,
            data_key: WrappedKey::from_blob(row.data_key).map_err(|e| corrupt("data_key", e))?,
            metadata: serde_json::from_str(&row.metadata).map_err(|e| corrupt("metadata", e))?,
            lease: match (row.lease_owner, row.lease_expires_at) {
                (Some(owner), Some(expires_at)) => Some(Lease {
                    owner,
                    expires_at: from_millis(expires_at)?,
                }),
                _ => None,
            },
            created_at: from_millis(row.created_at)?,
            updated_at: from_millis(row.updated_at)?,
        })
    }
}

/// Column values shared by both backends' binders.
pub(super) struct UpdateColumns<'a> {
    pub status: &'static str,
    pub scopes: String,
    pub token_type: &'static str,
    pub expires_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    pub refresh_attempts: i32,
    pub last_error_code: Option<&'a str>,
    pub last_error_message: Option<&'a str>,
    pub last_refreshed_at: Option<i64>,
    pub failing_since: Option<i64>,
    pub access_token: Option<&'a [u8]>,
    pub refresh_token: Option<&'a [u8]>,
    pub metadata: String,
    pub lease_owner: Option<&'a str>,
    pub lease_expires_at: Option<i64>,
    pub updated_at: i64,
}

impl<'a> UpdateColumns<'a> {
    pub fn new(update: &'a ConnectionUpdate) -> Self {
        Self {
            status: update.status.as_str(),
            scopes: update.scopes.format(" "),
            token_type: update.token_type.as_str(),
            expires_at: update.expires_at.map(to_millis),
            next_refresh_at: update.next_refresh_at.map(to_millis),
            refresh_attempts: i32::try_from(update.refresh_attempts).unwrap_or(i32::MAX),
            last_error_code: update.last_error.as_ref().map(|e| e.code.as_str()),
            last_error_message: update.last_error.as_ref().map(|e| e.message.as_str()),
            last_refreshed_at: update.last_refreshed_at.map(to_millis),
            failing_since: update.failing_since.map(to_millis),
            access_token: update.access_token.as_deref(),
            refresh_token: update.refresh_token.as_deref(),
            metadata: storable_json(&update.metadata),
            lease_owner: update.lease.as_ref().map(|l| l.owner.as_str()),
            lease_expires_at: update.lease.as_ref().map(|l| to_millis(l.expires_at)),
            updated_at: to_millis(update.updated_at),
        }
    }
}

/// A JSON value as stored. PostgreSQL's `jsonb` (and `text`) cannot hold
/// the NUL character; provider data that carries one (in a value or a key)
/// loses it instead of failing the write. SQLite stores the same text, so
/// both backends keep the same metadata.
pub(crate) fn storable_json(value: &Value) -> String {
    if !holds_nul(value) {
        return value.to_string();
    }
    fn without_nul(value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(s.replace('\0', "")),
            Value::Array(items) => Value::Array(items.iter().map(without_nul).collect()),
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.replace('\0', ""), without_nul(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    without_nul(value).to_string()
}

/// Whether a NUL character is anywhere in `value`, in a string or a key.
pub(crate) fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod storable_tests {
    #[test]
    fn nul_characters_are_dropped_from_stored_json() {
        let value = serde_json::json!({"a\u{0}b": ["x\u{0}y", {"k": "\u{0}"}], "n": 1});
        assert_eq!(
            super::storable_json(&value),
            r#"{"ab":["xy",{"k":""}],"n":1}"#
        );
        let plain = serde_json::json!({"path": "C:\\u0000"});
        assert_eq!(super::storable_json(&plain), plain.to_string());
    }
}
