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

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

use crate::domain::{
    AccessToken, ConnectionStatus, IntegrationKey, RefreshToken, Scopes, TokenSet, TokenType,
    UserId,
};
use crate::events::EventType;
use crate::store::{ConnectionRecord, StoreError};
use crate::vault::{ConnectionView, Vault, VaultError, jittered_refresh_at};

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
/// Write attempts lost to concurrent writers before giving up.
const MAX_CONFLICTS: u32 = 10;

/// The earliest plausible expiry; anything before is corrupt data.
fn earliest_expiry() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).expect("2000-01-01 is representable")
}

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

fn check_token(field: &'static str, token: &str) -> Result<(), InvalidGrant> {
    let problem = |problem: String| InvalidGrant::Token { field, problem };
    if token.is_empty() {
        return Err(problem("must not be empty".into()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(problem(format!(
            "is {} bytes long; at most {MAX_TOKEN_BYTES} are allowed",
            token.len()
        )));
    }
    // RFC 6749 tokens are visible ASCII; anything else is a broken export
    // (a trailing newline, a quoting accident) and would not survive an
    // Authorization header. Only the position is reported, never the text.
    if let Some(position) = token.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        // Every byte before `position` is ASCII, so it is a char boundary.
        let found = token[position..].chars().next().unwrap_or_default();
        let kind = if found.is_whitespace() {
            "whitespace"
        } else if found.is_control() {
            "a control character"
        } else {
            "a non-ASCII character"
        };
        return Err(problem(format!(
            "contains {kind} at byte {position}; tokens are visible ASCII characters only"
        )));
    }
    Ok(())
}

/// Checks a grant and turns it into what would be stored. Expiry is cut to
/// milliseconds, the stored precision, so re-importing compares equal.
fn validate(grant: ImportedGrant, now: DateTime<Utc>) -> Result<(TokenSet, Value), InvalidGrant> {
    check_token("access_token", grant.access_token.expose_secret())?;
    if let Some(refresh) = &grant.refresh_token {
        check_token("refresh_token", refresh.expose_secret())?;
    }
    let expires_at = grant
        .expires_at
        .map(|at| {
            let at = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
            let shown = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if at < earliest_expiry() {
                Err(InvalidGrant::ExpiresAt(format!(
                    "{shown} is before 2000-01-01; the exported time is corrupt"
                )))
            } else if at > now + MAX_EXPIRY_AHEAD {
                Err(InvalidGrant::ExpiresAt(format!(
                    "{shown} is more than 10 years ahead; was a time in milliseconds given as seconds?"
                )))
            } else {
                Ok(at)
            }
        })
        .transpose()?;
    if let Some(at) = expires_at
        && at <= now
        && grant.refresh_token.is_none()
    {
        return Err(InvalidGrant::Expired { expires_at: at });
    }
    let scopes =
        Scopes::try_from_list(&grant.scopes).map_err(|e| InvalidGrant::Scopes(e.to_string()))?;
    let formatted = scopes.format(" ").len();
    if formatted > MAX_SCOPES_BYTES {
        return Err(InvalidGrant::Scopes(format!(
            "{formatted} bytes of scopes; at most {MAX_SCOPES_BYTES} are allowed"
        )));
    }
    if !grant.metadata.is_object() {
        return Err(InvalidGrant::Metadata("must be a JSON object".into()));
    }
    if crate::store::holds_nul(&grant.metadata) {
        return Err(InvalidGrant::Metadata(
            "holds a NUL character (\\u0000), which cannot be stored".into(),
        ));
    }
    let size = grant.metadata.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(InvalidGrant::Metadata(format!(
            "is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are allowed"
        )));
    }
    let tokens = TokenSet {
        access_token: AccessToken::from(grant.access_token),
        refresh_token: grant.refresh_token.map(RefreshToken::from),
        token_type: TokenType::Bearer,
        scopes,
        expires_at,
    };
    Ok((tokens, grant.metadata))
}

/// Whether the stored connection holds tokens newer than `imported`: it is
/// live, tokenvault refreshed it itself since it was stored (a stored grant
/// has no `last_refreshed_at`), and the imported token does not expire later.
fn holds_newer(record: &ConnectionRecord, imported: &TokenSet) -> bool {
    let live = matches!(
        record.status,
        ConnectionStatus::Connected | ConnectionStatus::Error
    ) && record.access_token.is_some();
    let imported_later = matches!(
        (imported.expires_at, record.expires_at),
        (Some(new), Some(old)) if new > old
    );
    live && record.last_refreshed_at.is_some() && !imported_later
}

impl Vault {
    /// Imports a grant for (user, integration); see the module docs.
    pub async fn import(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        grant: ImportedGrant,
    ) -> Result<ImportOutcome, ImportError> {
        self.import_with(user, integration, grant, ImportOptions::default())
            .await
    }

    pub async fn import_with(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        grant: ImportedGrant,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImportError> {
        let result = self.import_inner(user, integration, grant, options).await;
        if !options.dry_run {
            let outcome = match &result {
                Ok(outcome) => outcome.action.as_str(),
                Err(ImportError::Invalid(_) | ImportError::UnknownIntegration(_)) => "rejected",
                Err(_) => "error",
            };
            metrics::counter!("tokenvault_imports_total", "outcome" => outcome).increment(1);
        }
        result
    }

    async fn import_inner(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        grant: ImportedGrant,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImportError> {
        let client = self
            .integrations()
            .get(integration)
            .cloned()
            .ok_or_else(|| ImportError::UnknownIntegration(integration.clone()))?;
        let buffer = Duration::from_std(client.refresh_buffer()).unwrap_or(Duration::MAX);
        let (tokens, metadata) = validate(grant, self.clock().now())?;
        // A refresh in flight holds the row's lease for at most lease_ttl;
        // wait it out, then decide against what it wrote.
        let settle_by =
            tokio::time::Instant::now() + self.settings().lease_ttl + StdDuration::from_secs(1);
        let mut conflicts = 0;
        loop {
            let now = self.clock().now();
            let Some(record) = self.store().get(user, integration).await? else {
                return self
                    .import_new(user, integration, &tokens, metadata, buffer, options)
                    .await;
            };
            let stored = self.open(&record).await?;
            if stored.as_ref() == Some(&tokens) && record.metadata == metadata {
                return Ok(self.imported(ImportAction::Unchanged, (&record).into()));
            }
            if !options.force && holds_newer(&record, &tokens) {
                return Ok(self.imported(ImportAction::KeptNewer, (&record).into()));
            }
            if !record.lease_allows(self.owner(), now) {
                if tokio::time::Instant::now() >= settle_by {
                    return Err(ImportError::Busy);
                }
                tokio::time::sleep(StdDuration::from_millis(100)).await;
                continue;
            }
            let mut update = record.to_update(now);
            update.status = ConnectionStatus::Connected;
            update.scopes = tokens.scopes.clone();
            update.token_type = tokens.token_type;
            update.expires_at = tokens.expires_at;
            update.next_refresh_at = jittered_refresh_at(&tokens, buffer, now);
            update.refresh_attempts = 0;
            update.last_error = None;
            // Not refreshed by tokenvault: marks the tokens as imported, for
            // the next import's newer-than check.
            update.last_refreshed_at = None;
            update.failing_since = None;
            update.metadata = metadata.clone();
            update.lease = None;
            if options.dry_run {
                let view = ConnectionView {
                    integration: integration.clone(),
                    status: update.status,
                    scopes: update.scopes.to_vec(),
                    expires_at: update.expires_at,
                    last_refreshed_at: None,
                    next_refresh_at: update.next_refresh_at,
                    last_error: None,
                    connected_at: record.created_at,
                    updated_at: now,
                };
                return Ok(self.imported(ImportAction::Replaced, view));
            }
            // The row keeps its id and data key; the tokens are sealed anew
            // under it, exactly as a refresh does.
            let (access, refresh) = self
                .envelope()
                .reseal(
                    record.id,
                    &record.data_key,
                    &tokens.access_token,
                    tokens.refresh_token.as_ref(),
                )
                .await
                .map_err(VaultError::from)?;
            update.access_token = Some(access);
            update.refresh_token = refresh;
            update.emit.extend(self.event(
                EventType::ConnectionCreated,
                record.id,
                user,
                integration,
                ConnectionStatus::Connected,
                None,
                now,
            ));
            match self
                .store()
                .update(record.id, record.version, &update)
                .await
            {
                Ok(stored) => {
                    return Ok(self.imported(ImportAction::Replaced, (&stored).into()));
                }
                // Someone wrote the row since we read it (a refresh, a
                // reconnect): decide again against what they wrote.
                Err(StoreError::Conflict { .. } | StoreError::NotFound)
                    if conflicts < MAX_CONFLICTS =>
                {
                    conflicts += 1;
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound) => {
                    return Err(ImportError::Busy);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn import_new(
        &self,
        user: &UserId,
        integration: &IntegrationKey,
        tokens: &TokenSet,
        metadata: Value,
        buffer: Duration,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImportError> {
        let now = self.clock().now();
        let next_refresh_at = jittered_refresh_at(tokens, buffer, now);
        if options.dry_run {
            let view = ConnectionView {
                integration: integration.clone(),
                status: ConnectionStatus::Connected,
                scopes: tokens.scopes.to_vec(),
                expires_at: tokens.expires_at,
                last_refreshed_at: None,
                next_refresh_at,
                last_error: None,
                connected_at: now,
                updated_at: now,
            };
            return Ok(self.imported(ImportAction::Created, view));
        }
        let record = self
            .insert_grant(user, integration, tokens, metadata, next_refresh_at, now)
            .await?;
        Ok(self.imported(ImportAction::Created, (&record).into()))
    }

    fn imported(&self, action: ImportAction, connection: ConnectionView) -> ImportOutcome {
        tracing::debug!(integration = %connection.integration, action = action.as_str(), "grant imported");
        ImportOutcome { action, connection }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ConnectionId;

    fn grant(expires_at: Option<DateTime<Utc>>, refresh: bool) -> ImportedGrant {
        ImportedGrant {
            access_token: SecretString::from("AT-legacy-0123456789"),
            refresh_token: refresh.then(|| SecretString::from("RT-legacy-0123456789")),
            expires_at,
            scopes: vec!["read".into(), "write".into()],
            metadata: serde_json::json!({"legacy_id": 7}),
        }
    }

    fn invalid(grant: ImportedGrant, now: DateTime<Utc>) -> InvalidGrant {
        validate(grant, now).expect_err("rejected")
    }

    #[test]
    fn a_sound_grant_passes_with_expiry_cut_to_milliseconds() {
        let now = Utc::now();
        let at = DateTime::parse_from_rfc3339("2030-01-02T03:04:05.123456789Z")
            .unwrap()
            .to_utc();
        let (tokens, metadata) = validate(grant(Some(at), true), now).unwrap();
        assert_eq!(
            tokens.expires_at.unwrap().to_rfc3339(),
            "2030-01-02T03:04:05.123+00:00"
        );
        assert_eq!(tokens.scopes.to_vec(), ["read", "write"]);
        assert_eq!(tokens.access_token.expose(), "AT-legacy-0123456789");
        assert_eq!(metadata["legacy_id"], 7);
    }

    #[test]
    fn broken_tokens_are_named_without_echoing_them() {
        let now = Utc::now();
        for (token, expected) in [
            ("", "access_token must not be empty"),
            ("abc def", "access_token contains whitespace at byte 3"),
            ("secret\n", "access_token contains whitespace at byte 6"),
            (
                "sec\u{1}ret",
                "access_token contains a control character at byte 3",
            ),
            (
                "sécret",
                "access_token contains a non-ASCII character at byte 1",
            ),
        ] {
            let mut bad = grant(None, true);
            bad.access_token = SecretString::from(token);
            let err = invalid(bad, now);
            assert_eq!(err.code(), "invalid_token");
            assert!(err.to_string().starts_with(expected), "{err}");
            if token.len() > 3 {
                assert!(!err.to_string().contains(token), "{err}");
            }
        }
        let mut long = grant(None, true);
        long.refresh_token = Some(SecretString::from("r".repeat(MAX_TOKEN_BYTES + 1)));
        assert_eq!(
            invalid(long, now).to_string(),
            "refresh_token is 16385 bytes long; at most 16384 are allowed"
        );
        let mut longest = grant(None, true);
        longest.access_token = SecretString::from("a".repeat(MAX_TOKEN_BYTES));
        assert!(validate(longest, now).is_ok());
    }

    #[test]
    fn absurd_or_dead_expiries_are_refused() {
        let now = Utc::now();
        let err = invalid(grant(Some(now + Duration::days(3651)), true), now);
        assert_eq!(err.code(), "invalid_expires_at");
        assert!(err.to_string().contains("milliseconds"), "{err}");
        let err = invalid(grant(DateTime::from_timestamp(0, 0), true), now);
        assert_eq!(err.code(), "invalid_expires_at");
        assert!(err.to_string().contains("before 2000-01-01"), "{err}");

        // Expired: fine with a refresh token (refreshed at once), dead without.
        let past = now - Duration::hours(1);
        assert!(validate(grant(Some(past), true), now).is_ok());
        let err = invalid(grant(Some(past), false), now);
        assert_eq!(err.code(), "token_expired");
        assert!(err.to_string().contains("no refresh token"), "{err}");
        // Still valid and not refreshable: stored, marked expired at expiry.
        assert!(validate(grant(Some(now + Duration::hours(1)), false), now).is_ok());
        assert!(validate(grant(None, false), now).is_ok());
    }

    #[test]
    fn scopes_and_metadata_are_checked() {
        let now = Utc::now();
        let mut bad = grant(None, true);
        bad.scopes = vec!["read".into(), "two words".into()];
        let err = invalid(bad, now);
        assert_eq!(err.code(), "invalid_scopes");
        assert!(err.to_string().contains("\"two words\""), "{err}");
        let mut many = grant(None, true);
        many.scopes = (0..1000).map(|i| format!("scope-{i}")).collect();
        assert_eq!(invalid(many, now).code(), "invalid_scopes");

        for metadata in [serde_json::json!([1]), serde_json::json!("x"), Value::Null] {
            let mut bad = grant(None, true);
            bad.metadata = metadata;
            assert_eq!(
                invalid(bad, now).to_string(),
                "metadata must be a JSON object"
            );
        }
        // PostgreSQL cannot store NUL: refused on every backend alike.
        for metadata in [
            serde_json::json!({"k": "a\u{0}b"}),
            serde_json::json!({"a\u{0}": 1}),
            serde_json::json!({"deep": [{"x": "\u{0}"}]}),
        ] {
            let mut bad = grant(None, true);
            bad.metadata = metadata;
            let err = invalid(bad, now);
            assert_eq!(err.code(), "invalid_metadata");
            assert!(err.to_string().contains("NUL"), "{err}");
        }
        let mut big = grant(None, true);
        big.metadata = serde_json::json!({"blob": "x".repeat(MAX_METADATA_BYTES)});
        let err = invalid(big, now);
        assert_eq!(err.code(), "invalid_metadata");
        assert!(err.to_string().contains("at most 16384"), "{err}");
    }

    fn record(
        status: ConnectionStatus,
        refreshed: bool,
        expires_at: DateTime<Utc>,
    ) -> ConnectionRecord {
        let now = Utc::now();
        ConnectionRecord {
            id: ConnectionId::new(),
            user_id: UserId::parse("u").unwrap(),
            integration: IntegrationKey::parse("x").unwrap(),
            status,
            scopes: Scopes::new(),
            token_type: TokenType::Bearer,
            expires_at: Some(expires_at),
            next_refresh_at: None,
            refresh_attempts: 0,
            last_error: None,
            last_refreshed_at: refreshed.then_some(now),
            failing_since: None,
            version: 1,
            access_token: Some(vec![1]),
            refresh_token: Some(vec![2]),
            data_key: crate::crypto::WrappedKey::from_parts(
                crate::crypto::KeyId::parse("k1").unwrap(),
                vec![0; 8],
            ),
            metadata: serde_json::json!({}),
            lease: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn only_tokens_tokenvault_refreshed_itself_count_as_newer() {
        let now = Utc::now();
        let stored_expiry = now + Duration::hours(1);
        let imported = |at: Option<DateTime<Utc>>| validate(grant(at, true), now).unwrap().0;
        let refreshed = record(ConnectionStatus::Connected, true, stored_expiry);
        assert!(holds_newer(&refreshed, &imported(Some(now))));
        assert!(holds_newer(&refreshed, &imported(Some(stored_expiry))));
        assert!(holds_newer(&refreshed, &imported(None)));
        assert!(
            !holds_newer(
                &refreshed,
                &imported(Some(stored_expiry + Duration::seconds(1)))
            ),
            "an export that expires later was refreshed after ours"
        );
        assert!(
            !holds_newer(
                &record(ConnectionStatus::Connected, false, stored_expiry),
                &imported(Some(now))
            ),
            "stored by an import or a flow: the import is authoritative"
        );
        for dead in [ConnectionStatus::NeedsReauth, ConnectionStatus::Expired] {
            assert!(!holds_newer(
                &record(dead, true, stored_expiry),
                &imported(Some(now))
            ));
        }
    }
}
