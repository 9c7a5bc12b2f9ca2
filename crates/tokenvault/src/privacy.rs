//! What identifies a user in logs: a keyed hash, never the id itself.
//!
//! User ids are often e-mail addresses or account numbers. Logs show
//! `HMAC-SHA256(log salt, user id)` cut to 8 hex characters: stable for one
//! salt (so an operator can follow one user through the logs, and compute
//! the tag of a user id they already know), meaningless without it. Give
//! every instance the same salt so their logs correlate; without one, each
//! process draws a random salt.

use std::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

static SALT: OnceLock<Vec<u8>> = OnceLock::new();

/// Sets the process-wide log salt. The first call wins (returns false after
/// that): tags must not change while the process runs.
pub fn set_log_salt(salt: &[u8]) -> bool {
    SALT.set(salt.to_vec()).is_ok()
}

fn salt() -> &'static [u8] {
    SALT.get_or_init(|| {
        let mut random = vec![0u8; 32];
        rand::rng().fill_bytes(&mut random);
        random
    })
}

/// The 8-hex-character tag of a user id under `salt`.
pub fn user_tag_with(salt: &[u8], user_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes keys of any length");
    mac.update(user_id.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..4])
}

/// Displays as the user id's tag under the process-wide salt.
#[derive(Clone, Copy)]
pub struct UserTag<'a>(pub &'a str);

impl fmt::Display for UserTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&user_tag_with(salt(), self.0))
    }
}

impl fmt::Debug for UserTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// At most the first 8 characters of an opaque secret-ish value (OAuth
/// state, connect-session id): enough to correlate, useless to replay.
pub fn truncated(value: &str) -> &str {
    let end = value
        .char_indices()
        .nth(8)
        .map_or(value.len(), |(index, _)| index);
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_8_hex_stable_per_salt_and_differ_across_salts() {
        let a = user_tag_with(b"salt-1", "alice@example.com");
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, user_tag_with(b"salt-1", "alice@example.com"));
        assert_ne!(a, user_tag_with(b"salt-2", "alice@example.com"));
        assert_ne!(a, user_tag_with(b"salt-1", "bob@example.com"));
        // Known answer (python3: hmac.new(b'salt-1', b'alice@example.com', 'sha256').hexdigest()[:8]).
        assert_eq!(a, "399bc46e");
    }

    #[test]
    fn truncation_keeps_eight_characters() {
        assert_eq!(truncated("abcdefghijkl"), "abcdefgh");
        assert_eq!(truncated("abc"), "abc");
        assert_eq!(truncated("ééééééééé"), "éééééééé");
    }
}
