use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Why an identifier was rejected; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} contains {found:?} at position {position}; allowed are {allowed}")]
    BadChar {
        kind: &'static str,
        found: char,
        position: usize,
        allowed: &'static str,
    },
    #[error("{kind} must start with {rule}")]
    BadStart {
        kind: &'static str,
        rule: &'static str,
    },
    #[error("{kind} is not a valid UUID")]
    NotUuid { kind: &'static str },
}

/// The length and character rules shared by the string identifiers.
struct Rules {
    kind: &'static str,
    max_len: usize,
    allowed: &'static str,
    is_allowed: fn(char) -> bool,
}

impl Rules {
    fn check(&self, raw: &str) -> Result<(), IdError> {
        let kind = self.kind;
        if raw.is_empty() {
            return Err(IdError::Empty { kind });
        }
        if raw.len() > self.max_len {
            return Err(IdError::TooLong {
                kind,
                len: raw.chars().count(),
                max: self.max_len,
            });
        }
        match raw
            .chars()
            .enumerate()
            .find(|(_, c)| !(self.is_allowed)(*c))
        {
            Some((position, found)) => Err(IdError::BadChar {
                kind,
                found,
                position,
                allowed: self.allowed,
            }),
            None => Ok(()),
        }
    }
}

/// The application's own identifier for its end user. Opaque to us, but
/// bounded so it is safe in URLs, logs (hashed) and index keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 128;
    const RULES: Rules = Rules {
        kind: "user id",
        max_len: Self::MAX_LEN,
        allowed: "ASCII letters, digits and - _ . @ : + =",
        is_allowed: |c| c.is_ascii_alphanumeric() || "-_.@:+=".contains(c),
    };
    /// [`Self::RULES`] as an ECMA-262 regular expression, for API schemas.
    pub const PATTERN: &'static str = "^[A-Za-z0-9._@:+=-]{1,128}$";

    pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
        let raw = raw.into();
        Self::RULES.check(&raw)?;
        Ok(Self(raw))
    }

    /// How this user appears in logs: a keyed hash, see [`crate::privacy`].
    pub fn log_tag(&self) -> crate::privacy::UserTag<'_> {
        crate::privacy::UserTag(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a configured integration (`spotify`, `google-mail`, `acme-oidc`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IntegrationKey(String);

impl IntegrationKey {
    pub const MAX_LEN: usize = 64;
    const RULES: Rules = Rules {
        kind: "integration key",
        max_len: Self::MAX_LEN,
        allowed: "lowercase ASCII letters, digits, - and _",
        is_allowed: |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_',
    };
    /// [`Self::RULES`] plus the leading letter, as an ECMA-262 regular
    /// expression, for API schemas.
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_-]{0,63}$";

    pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
        let raw = raw.into();
        Self::RULES.check(&raw)?;
        if !raw.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(IdError::BadStart {
                kind: Self::RULES.kind,
                rule: "a lowercase letter",
            });
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of the per-integration environment variables the seeds use:
    /// `google-mail` → `GOOGLE_MAIL` (`GOOGLE_MAIL_CLIENT_ID`, …).
    pub fn env_prefix(&self) -> String {
        self.0.to_ascii_uppercase().replace('-', "_")
    }
}

/// Schemas for API documents: a string with the parse rules as pattern.
#[cfg(feature = "utoipa")]
mod schema {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    use super::{IntegrationKey, UserId};

    fn string(description: &str, pattern: &str, max_len: usize) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .pattern(Some(pattern))
            .min_length(Some(1))
            .max_length(Some(max_len))
            .into()
    }

    impl utoipa::PartialSchema for UserId {
        fn schema() -> RefOr<Schema> {
            string(
                "The application's own identifier for its end user.",
                UserId::PATTERN,
                UserId::MAX_LEN,
            )
        }
    }
    impl utoipa::ToSchema for UserId {}

    impl utoipa::PartialSchema for IntegrationKey {
        fn schema() -> RefOr<Schema> {
            string(
                "The name of a configured integration (`spotify`, `google-mail`).",
                IntegrationKey::PATTERN,
                IntegrationKey::MAX_LEN,
            )
        }
    }
    impl utoipa::ToSchema for IntegrationKey {}
}

/// A time-ordered (UUIDv7) identifier: keyset paging by id follows
/// creation order. `kind` names it in parse errors.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(Uuid);

        impl $ty {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn parse(raw: &str) -> Result<Self, IdError> {
                Uuid::parse_str(raw).map(Self).map_err(|_| IdError::NotUuid { kind: $kind })
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.0)
            }
        }

        impl FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// Identity of one stored authorization grant.
    ConnectionId,
    "connection id"
);
uuid_id!(
    /// Identity of one device authorization session (RFC 8628). Its text
    /// form is what the API hands out.
    DeviceSessionId,
    "device session id"
);

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }
        impl FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_id_impls!(UserId);
string_id_impls!(IntegrationKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_accepts_common_application_ids() {
        for ok in [
            "42",
            "user_1",
            "a.b@example.com",
            "auth0|x".replace('|', ":").as_str(),
            "u-9+tag=1",
        ] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn user_id_errors_say_what_is_wrong() {
        assert_eq!(
            UserId::parse("").unwrap_err().to_string(),
            "user id must not be empty"
        );
        let err = UserId::parse("a b").unwrap_err().to_string();
        assert!(err.contains("' '") && err.contains("position 1"), "{err}");
        let err = UserId::parse("x".repeat(129)).unwrap_err().to_string();
        assert!(err.contains("129") && err.contains("128"), "{err}");
        assert!(UserId::parse("../etc").is_err());
        assert!(UserId::parse("a/b").is_err());
    }

    #[test]
    fn integration_key_rules() {
        assert!(IntegrationKey::parse("google-mail").is_ok());
        assert!(IntegrationKey::parse("acme_oidc2").is_ok());
        assert!(IntegrationKey::parse("Spotify").is_err());
        assert!(IntegrationKey::parse("1spotify").is_err());
        assert!(IntegrationKey::parse("-x").is_err());
        assert!(IntegrationKey::parse("x".repeat(65)).is_err());
        assert_eq!(
            IntegrationKey::parse("google-search-console")
                .unwrap()
                .env_prefix(),
            "GOOGLE_SEARCH_CONSOLE"
        );
    }

    #[test]
    fn ids_deserialize_through_validation() {
        assert!(serde_json::from_str::<UserId>("\"ok\"").is_ok());
        let err = serde_json::from_str::<UserId>("\"no spaces\"").unwrap_err();
        assert!(err.to_string().contains("user id"));
    }

    #[test]
    fn connection_ids_are_time_ordered() {
        let a = ConnectionId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ConnectionId::new();
        assert!(a < b);
        assert_eq!(ConnectionId::parse(&a.to_string()).unwrap(), a);
    }

    /// The API documents' patterns must accept exactly what `parse` accepts;
    /// checked character by character against the pattern's class.
    #[test]
    fn schema_patterns_match_the_parse_rules() {
        fn class(pattern: &str, skip: usize) -> Vec<char> {
            let body = pattern.split('[').nth(1 + skip).unwrap();
            let body: Vec<char> = body[..body.find(']').unwrap()].chars().collect();
            let mut chars = Vec::new();
            let mut i = 0;
            while i < body.len() {
                if i + 2 < body.len() && body[i + 1] == '-' {
                    chars.extend(body[i]..=body[i + 2]);
                    i += 3;
                } else {
                    chars.push(body[i]);
                    i += 1;
                }
            }
            chars
        }
        let user = class(UserId::PATTERN, 0);
        let key_first = class(IntegrationKey::PATTERN, 0);
        let key_rest = class(IntegrationKey::PATTERN, 1);
        for c in (0u8..=127).map(char::from) {
            assert_eq!(
                UserId::parse(c.to_string()).is_ok(),
                user.contains(&c),
                "user id {c:?}"
            );
            assert_eq!(
                IntegrationKey::parse(c.to_string()).is_ok(),
                key_first.contains(&c),
                "integration key {c:?}"
            );
            assert_eq!(
                IntegrationKey::parse(format!("a{c}")).is_ok(),
                key_rest.contains(&c),
                "integration key a{c:?}"
            );
        }
        assert!(UserId::PATTERN.ends_with(&format!("{{1,{}}}$", UserId::MAX_LEN)));
        assert!(
            IntegrationKey::PATTERN.ends_with(&format!("{{0,{}}}$", IntegrationKey::MAX_LEN - 1))
        );
    }
}
