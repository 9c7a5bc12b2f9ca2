use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// The only form in which a secret may appear in logs or errors: the first and
/// last four characters of a long secret, nothing of a short one.
pub fn mask(secret: &str) -> String {
    let count = secret.chars().count();
    if count >= 16 {
        let head: String = secret.chars().take(4).collect();
        let tail: String = secret.chars().skip(count - 4).collect();
        format!("{head}…{tail}")
    } else {
        "****".to_owned()
    }
}

macro_rules! secret_token {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $ty(SecretString);

        impl $ty {
            pub fn new(raw: impl Into<String>) -> Self {
                Self(SecretString::from(raw.into()))
            }

            /// The token itself: only for building a request or sealing it.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }

            pub fn masked(&self) -> String {
                mask(self.expose())
            }
        }

        impl From<SecretString> for $ty {
            fn from(secret: SecretString) -> Self {
                Self(secret)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.masked())
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.masked())
            }
        }

        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.expose() == other.expose()
            }
        }

        impl Eq for $ty {}
    };
}

secret_token!(
    /// A bearer credential for the provider's API. Distinct from [`RefreshToken`]
    /// so the two can never be swapped by accident.
    AccessToken
);
secret_token!(
    /// The long-lived credential that mints new access tokens.
    RefreshToken
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_secrets_show_only_their_ends() {
        let token = AccessToken::new("AT-0123456789abcdefXYZ");
        assert_eq!(format!("{token}"), "AT-0…fXYZ");
        assert_eq!(format!("{token:?}"), "AccessToken(AT-0…fXYZ)");
        assert_eq!(
            format!("{:?}", RefreshToken::new("short")),
            "RefreshToken(****)"
        );
        assert_eq!(mask("exactly-15-char"), "****");
        assert_eq!(mask("exactly-16-chars"), "exac…hars");
    }

    proptest! {
        #[test]
        fn a_mask_never_reveals_more_than_eight_characters(secret in "\\PC{0,80}") {
            let masked = mask(&secret);
            let revealed = masked.chars().filter(|c| *c != '…' && *c != '*').count();
            prop_assert!(revealed <= 8);
            // Whatever is revealed comes from the ends, never the middle.
            if secret.chars().count() >= 16 {
                let chars: Vec<char> = secret.chars().collect();
                let head: String = chars[..4].iter().collect();
                let tail: String = chars[chars.len() - 4..].iter().collect();
                prop_assert_eq!(masked, format!("{head}…{tail}"));
            } else {
                prop_assert_eq!(masked, "****");
            }
        }
    }
}
