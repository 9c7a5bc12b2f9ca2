use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{AccessToken, RefreshToken, Scopes};

/// How the access token is presented to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TokenType {
    #[default]
    Bearer,
    Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown token type {0:?}; expected Bearer or MAC")]
pub struct UnknownTokenType(pub String);

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::Mac => "MAC",
        }
    }
}

impl FromStr for TokenType {
    type Err = UnknownTokenType;
    /// Case-insensitive: providers send `bearer`, `Bearer` and `BEARER`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bearer" => Ok(Self::Bearer),
            "mac" => Ok(Self::Mac),
            _ => Err(UnknownTokenType(s.to_owned())),
        }
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider granted: the plaintext view of one connection's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub token_type: TokenType,
    pub scopes: Scopes,
    /// `None` when the provider said nothing about expiry (GitHub OAuth apps,
    /// WordPress.com): such tokens are valid until revoked.
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenSet {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// True when the token expires within `buffer` of `now` (or already has).
    pub fn needs_refresh(&self, now: DateTime<Utc>, buffer: Duration) -> bool {
        self.expires_at.is_some_and(|at| now + buffer >= at)
    }

    pub fn can_refresh(&self) -> bool {
        self.refresh_token.is_some()
    }

    /// The value of the `Authorization` header for an API call. A secret itself.
    pub fn authorization_header(&self) -> SecretString {
        SecretString::from(format!(
            "{} {}",
            self.token_type.as_str(),
            self.access_token.expose()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn set(expires_at: Option<DateTime<Utc>>, refresh: bool) -> TokenSet {
        TokenSet {
            access_token: AccessToken::new("AT-abcdefghijklmnop"),
            refresh_token: refresh.then(|| RefreshToken::new("RT-abcdefghijklmnop")),
            token_type: TokenType::Bearer,
            scopes: Scopes::parse("a b", " "),
            expires_at,
        }
    }

    #[test]
    fn token_type_is_case_insensitive() {
        for raw in ["bearer", "Bearer", "BEARER", " bearer "] {
            assert_eq!(raw.parse::<TokenType>().unwrap(), TokenType::Bearer);
        }
        assert_eq!("mac".parse::<TokenType>().unwrap(), TokenType::Mac);
        assert!("basic".parse::<TokenType>().is_err());
    }

    #[test]
    fn expiry_and_refresh_window() {
        let now = Utc::now();
        let tokens = set(Some(now + Duration::seconds(100)), true);
        assert!(!tokens.is_expired(now));
        assert!(tokens.is_expired(now + Duration::seconds(100)));
        assert!(!tokens.needs_refresh(now, Duration::seconds(99)));
        assert!(tokens.needs_refresh(now, Duration::seconds(100)));
        assert!(tokens.can_refresh());

        let forever = set(None, false);
        assert!(!forever.is_expired(now + Duration::days(3650)));
        assert!(!forever.needs_refresh(now, Duration::days(3650)));
        assert!(!forever.can_refresh());
    }

    #[test]
    fn header_and_debug() {
        let tokens = set(None, true);
        assert_eq!(
            tokens.authorization_header().expose_secret(),
            "Bearer AT-abcdefghijklmnop"
        );
        let debug = format!("{tokens:?}");
        assert!(!debug.contains("abcdefghijklmnop"), "{debug}");
    }
}
