//! One-time OAuth `state` records.
//!
//! Starting a flow stores a [`StateRecord`] under a fresh random
//! [`StateKey`]; the key travels through the provider as the `state`
//! parameter, and the callback — possibly on another instance — consumes the
//! record with [`StateStore::take`], which hands it out at most once.
//!
//! Two implementations share the contract: [`RedisStateStore`] (when
//! `TOKENVAULT_REDIS_URL` is set) and [`SqlStateStore`] on the connection
//! database (table `oauth_states`, created by the store's migrations).

mod redis;
mod sql;

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use self::redis::{RedisOptions, RedisStateStore};
pub use self::sql::SqlStateStore;
use crate::domain::{IntegrationKey, UserId};

/// Failures of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store is down, unreachable or timed out. The HTTP layer answers
    /// 503 `state_store_unavailable`.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read back.
    #[error("stored state record is unreadable: {0}")]
    Corrupt(String),
    /// The store's URL is malformed (a configuration error, at start-up only).
    #[error("invalid state store URL: {0}")]
    InvalidUrl(String),
}

/// The opaque `state` value: 32 random bytes (256 bits) from the OS, base64url
/// without padding (43 characters, URL-safe).
///
/// `Debug` and `Display` show only the first 8 characters, as logs do; use
/// [`StateKey::as_str`] to put the full value into the authorization URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StateKey(String);

impl StateKey {
    /// Length of a generated key in characters.
    pub const LEN: usize = 43;
    /// How many characters `Debug`/`Display` (and so logs) show.
    pub const LOG_PREFIX: usize = 8;

    /// A fresh key from the operating system's CSPRNG.
    ///
    /// # Panics
    /// If the OS random source fails, as [`rand::rng`] would.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts a value shaped like a generated key (43 base64url characters),
    /// e.g. the `state` a callback received; anything else is `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::is_well_formed(raw).then(|| Self(raw.to_owned()))
    }

    /// Whether `raw` could be a key this module generated. Stores answer
    /// `None` for anything else without a round trip.
    pub fn is_well_formed(raw: &str) -> bool {
        raw.len() == Self::LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The full value, for the authorization URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 characters, the only part that may be logged.
    pub fn log_prefix(&self) -> &str {
        &self.0[..Self::LOG_PREFIX.min(self.0.len())]
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateKey({}…)", self.log_prefix())
    }
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.log_prefix())
    }
}

/// What the callback needs to finish a flow. Stored as JSON; the PKCE
/// verifier is a per-flow secret and is stored, a client secret never is
/// (there is no field for one).
#[derive(Clone, Serialize, Deserialize)]
pub struct StateRecord {
    pub integration: IntegrationKey,
    pub user_id: UserId,
    #[serde(with = "verifier_serde")]
    pub code_verifier: Option<SecretString>,
    pub redirect_uri: String,
    pub connect_session: Option<String>,
    pub redirect_to: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Provider-specific authorization parameters the application passed on
    /// (Wix's installer `token`); omitted from storage when empty.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub provider_params: std::collections::BTreeMap<String, String>,
    /// Checked connection parameter values (the session's, then the
    /// callback's); omitted from storage when empty.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub connection_params: std::collections::BTreeMap<String, String>,
    /// SHA-256 (hex) of the nonce in the cookie set on the browser that
    /// opened the connect link; the callback needs the same cookie, so a
    /// flow cannot be finished by another browser (account-linking CSRF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_binding: Option<String>,
    /// Confirm mode: the callback does not store the connection; it sends
    /// the browser to the app with a one-time confirmation code, and the
    /// app's backend confirms the flow for its logged-in user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    /// Only in the record a confirm-mode callback leaves behind (kept under
    /// the confirmation code): the authorization code, exchanged when the
    /// app confirms.
    #[serde(
        default,
        with = "verifier_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub authorization_code: Option<SecretString>,
    /// Callback parameters kept for the confirmation (Wix's `instanceId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// A connect session that lets the user pick: the integrations offered
    /// (`integration` is the first of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<IntegrationKey>,
    /// A connect session whose link shows a page (the integration, the
    /// access asked for, a button) instead of going straight to the provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub show_page: bool,
    /// A connect session that renews an existing connection (its page says
    /// "reconnect"); the flow updates that connection in place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconnect: bool,
    /// Opened in a popup by `connect.js` on this origin (an allowed
    /// redirect origin, checked by the caller): the flow ends on the result
    /// page, which posts the outcome to the opener on this origin only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub popup_origin: Option<String>,
    /// Only in the record a flow leaves behind for its result page: how
    /// the flow went (kept under [`FlowOutcome::key_for`] the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<FlowOutcome>,
}

/// How a connect session's flow went, for the page a reload shows again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowOutcome {
    pub status: FlowStatus,
    /// The error code when it failed (ours, or the provider's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The stored connection's id when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
}

/// Where a connect session's flow stands once its link was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    /// Sent to the provider; no callback yet.
    Started,
    Connected,
    /// The user refused consent at the provider.
    Denied,
    /// Anything else that ended it (the provider's error, a failed exchange).
    Failed,
    /// Confirm mode: the application confirms it.
    ConfirmationRequired,
}

impl FlowOutcome {
    /// The key of the outcome record of connect session `session_id`: a
    /// digest, so it is well-formed and tells nothing about the session's
    /// own key (which stays the only way in).
    pub fn key_for(session_id: &str) -> StateKey {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::digest(format!("tokenvault flow outcome\0{session_id}").as_bytes());
        StateKey(URL_SAFE_NO_PAD.encode(digest))
    }
}

impl StateRecord {
    /// A record at the start of a flow (a connect session).
    pub fn new(
        integration: IntegrationKey,
        user_id: UserId,
        redirect_uri: String,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            integration,
            user_id,
            code_verifier: None,
            redirect_uri,
            connect_session: None,
            redirect_to: None,
            scopes: Vec::new(),
            created_at,
            provider_params: Default::default(),
            connection_params: Default::default(),
            browser_binding: None,
            confirm: false,
            authorization_code: None,
            instance_id: None,
            offered: Vec::new(),
            show_page: false,
            reconnect: false,
            popup_origin: None,
            outcome: None,
        }
    }
}

impl StateRecord {
    /// The storage form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a StateRecord always serializes")
    }

    /// Reads the storage form back.
    pub fn from_json(raw: &str) -> Result<Self, StateError> {
        serde_json::from_str(raw).map_err(|err| StateError::Corrupt(err.to_string()))
    }
}

impl fmt::Debug for StateRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateRecord")
            .field("integration", &self.integration)
            .field("user_id", &self.user_id)
            .field(
                "code_verifier",
                &self.code_verifier.as_ref().map(|_| "[redacted]"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("connect_session", &self.connect_session)
            .field("redirect_to", &self.redirect_to)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .field(
                "provider_params",
                &self.provider_params.keys().collect::<Vec<_>>(),
            )
            .field("connection_params", &self.connection_params)
            .field("browser_bound", &self.browser_binding.is_some())
            .field("confirm", &self.confirm)
            .field(
                "authorization_code",
                &self.authorization_code.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// `Option<SecretString>` as a plain JSON string or `null`: secrecy does not
/// serialize secrets unless told to, and here storing it is the point.
mod verifier_serde {
    use secrecy::{ExposeSecret as _, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<SecretString>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(secret) => serializer.serialize_some(secret.expose_secret()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(SecretString::from))
    }
}

/// Where flow state lives between the authorization redirect and the callback.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Stores `record` under `key` for `ttl`, replacing any record there.
    async fn put(
        &self,
        key: &StateKey,
        record: &StateRecord,
        ttl: Duration,
    ) -> Result<(), StateError>;

    /// Atomically removes and returns the record: of any number of concurrent
    /// takes of one key, exactly one gets `Some`. Unknown, already taken,
    /// expired or malformed keys give `None`.
    async fn take(&self, key: &str) -> Result<Option<StateRecord>, StateError>;

    /// The record under `key` without removing it (a page that shows a
    /// connect session before the user acts on it). Unknown, expired or
    /// malformed keys give `None`.
    async fn peek(&self, key: &str) -> Result<Option<StateRecord>, StateError>;

    /// Deletes expired records, returning how many; stores that expire
    /// records themselves (Redis) return 0.
    async fn purge_expired(&self) -> Result<u64, StateError>;

    /// Checks the store answers (readiness).
    async fn ping(&self) -> Result<(), StateError>;
}

/// A TTL in whole milliseconds, at least 1, saturating.
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn record() -> StateRecord {
        StateRecord {
            integration: IntegrationKey::parse("spotify").unwrap(),
            user_id: UserId::parse("user-1").unwrap(),
            code_verifier: Some(SecretString::from("verifier-abcdefghijklmnopqrstuvwxyz")),
            redirect_uri: "https://vault.example.com/oauth/callback".into(),
            connect_session: Some("cs_1".into()),
            redirect_to: None,
            scopes: vec!["user-read-email".into()],
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            provider_params: Default::default(),
            connection_params: [("shop".to_owned(), "acme".to_owned())].into(),
            browser_binding: Some("ab".repeat(32)),
            confirm: true,
            authorization_code: Some(SecretString::from("code-abcdefghijklmnop")),
            instance_id: None,
            offered: vec![IntegrationKey::parse("spotify").unwrap()],
            show_page: true,
            reconnect: true,
            popup_origin: Some("https://app.example.com".into()),
            outcome: Some(FlowOutcome {
                status: FlowStatus::Denied,
                code: Some("access_denied".into()),
                connection_id: None,
            }),
        }
    }

    #[test]
    fn keys_are_random_url_safe_and_256_bits() {
        let a = StateKey::generate();
        let b = StateKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), StateKey::LEN);
        assert_eq!(URL_SAFE_NO_PAD.decode(a.as_str()).unwrap().len(), 32);
        assert!(StateKey::is_well_formed(a.as_str()));
        assert_eq!(StateKey::parse(a.as_str()), Some(a.clone()));
        assert_eq!(
            url::form_urlencoded::byte_serialize(a.as_str().as_bytes()).collect::<String>(),
            a.as_str()
        );
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", "a".repeat(42)),
            &format!("{}/", "a".repeat(42)),
        ] {
            assert!(StateKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn keys_print_only_their_first_8_characters() {
        let key = StateKey::generate();
        let prefix = &key.as_str()[..8];
        for shown in [format!("{key}"), format!("{key:?}")] {
            assert!(shown.contains(prefix), "{shown}");
            assert!(!shown.contains(&key.as_str()[..9]), "{shown}");
        }
    }

    #[test]
    fn record_debug_hides_the_verifier() {
        let shown = format!("{:?}", record());
        assert!(!shown.contains("verifier-abc"), "{shown}");
        assert!(!shown.contains("code-abc"), "{shown}");
        assert!(!shown.contains(&"ab".repeat(32)), "{shown}");
        assert!(
            shown.contains("[redacted]") && shown.contains("spotify"),
            "{shown}"
        );
    }

    #[test]
    fn record_json_round_trips_and_has_no_client_secret() {
        let json = record().to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "authorization_code",
                "browser_binding",
                "code_verifier",
                "confirm",
                "connect_session",
                "connection_params",
                "created_at",
                "integration",
                "offered",
                "outcome",
                "popup_origin",
                "reconnect",
                "redirect_to",
                "redirect_uri",
                "scopes",
                "show_page",
                "user_id"
            ]
        );
        let back = StateRecord::from_json(&json).unwrap();
        assert_eq!(back.outcome, record().outcome);
        assert_eq!(back.offered, record().offered);
        assert_eq!(back.connection_params, record().connection_params);
        assert!(back.show_page);
        assert_eq!(
            back.code_verifier.unwrap().expose_secret(),
            "verifier-abcdefghijklmnopqrstuvwxyz"
        );
        assert_eq!(back.created_at, record().created_at);
        assert_eq!(back.user_id, record().user_id);
        let none = StateRecord {
            code_verifier: None,
            ..record()
        };
        assert!(
            StateRecord::from_json(&none.to_json())
                .unwrap()
                .code_verifier
                .is_none()
        );
        assert!(matches!(
            StateRecord::from_json("{}"),
            Err(StateError::Corrupt(_))
        ));
        assert!(matches!(
            StateRecord::from_json(&json.replace("user-1", "bad user")),
            Err(StateError::Corrupt(_))
        ));
    }

    #[test]
    fn ttls_round_to_at_least_one_millisecond() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 1);
        assert_eq!(ttl_millis(Duration::from_secs(600)), 600_000);
        assert_eq!(ttl_millis(Duration::MAX), i64::MAX);
    }
}
