//! PKCE (RFC 7636) and `state` generation.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

/// The only PKCE method this client emits.
pub const PKCE_METHOD_S256: &str = "S256";

/// A PKCE verifier/challenge pair.
///
/// The verifier is 43 characters of base64url (RFC 7636 §4.1 unreserved
/// charset) encoding 32 random bytes, i.e. 256 bits of entropy. Store the
/// verifier server-side with the `state`; send only the challenge.
#[derive(Clone)]
pub struct Pkce {
    verifier: SecretString,
    challenge: String,
}

impl Pkce {
    /// Generates a fresh verifier from the OS-seeded CSPRNG and its S256 challenge.
    pub fn generate() -> Self {
        let verifier = random_urlsafe(32);
        let challenge = s256_challenge(&verifier);
        Self {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }

    /// Rebuilds the pair from a stored verifier.
    pub fn from_verifier(verifier: SecretString) -> Self {
        let challenge = s256_challenge(verifier.expose_secret());
        Self {
            verifier,
            challenge,
        }
    }

    /// The secret verifier, sent with the code exchange.
    pub fn verifier(&self) -> &SecretString {
        &self.verifier
    }

    /// `BASE64URL(SHA256(verifier))`, sent in the authorization request.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// Always `"S256"`.
    pub fn method(&self) -> &'static str {
        PKCE_METHOD_S256
    }
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &"[redacted]")
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// `BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))` without padding.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A URL-safe random `state` value with 256 bits of entropy (43 characters).
pub fn random_state() -> String {
    random_urlsafe(32)
}

fn random_urlsafe(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_unreserved(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        let pkce = Pkce::from_verifier(SecretString::from(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ));
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(pkce.method(), "S256");
    }

    #[test]
    fn generated_verifier_shape() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        let v = a.verifier().expose_secret();
        assert!((43..=128).contains(&v.len()));
        assert!(v.chars().all(is_unreserved));
        assert_ne!(v, b.verifier().expose_secret());
        assert_eq!(a.challenge(), s256_challenge(v));
        assert!(!format!("{a:?}").contains(v));
    }

    #[test]
    fn state_shape() {
        let s = random_state();
        assert!(s.len() >= 22); // ≥ 128 bits in base64url
        assert!(s.chars().all(is_unreserved));
        assert_ne!(s, random_state());
    }
}
