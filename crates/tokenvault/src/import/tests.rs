//! Unit tests of grant validation and of the newer-than check.

use super::validate::validate;
use super::write::holds_newer;
use super::*;
use crate::domain::{ConnectionId, ConnectionStatus, Scopes, TokenType, UserId};
use crate::store::ConnectionRecord;

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
