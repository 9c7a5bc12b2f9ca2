//! Checks a grant before anything is stored: token shape, expiry, scopes
//! and metadata.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{
    ImportedGrant, InvalidGrant, MAX_EXPIRY_AHEAD, MAX_METADATA_BYTES, MAX_SCOPES_BYTES,
    MAX_TOKEN_BYTES,
};
use crate::domain::{AccessToken, RefreshToken, Scopes, TokenSet, TokenType};

/// The earliest plausible expiry; anything before is corrupt data.
fn earliest_expiry() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).expect("2000-01-01 is representable")
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
pub(super) fn validate(
    grant: ImportedGrant,
    now: DateTime<Utc>,
) -> Result<(TokenSet, Value), InvalidGrant> {
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
