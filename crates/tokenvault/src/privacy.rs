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

/// Shortest value [`Scrubber`] removes: shorter "secrets" (test values,
/// `"x"`) would blank out ordinary words.
pub const MIN_SCRUBBED_LEN: usize = 4;

/// What replaces a secret in provider text.
pub const REDACTED: &str = "[redacted]";

/// Removes the secrets a request carried from the text its answer brought
/// back. Providers echo their inputs in error descriptions and bodies
/// ("backend failed for refresh_token=…"); every path that keeps provider
/// text (errors stored as `last_error`, API bodies, webhooks, logs, bulk
/// item excerpts) runs it through the scrubber of the request that produced
/// it, before cutting it short, so that no part of a secret survives.
///
/// Each secret is removed as sent and in the encodings a provider may echo
/// it in: form/percent-encoded, JSON-escaped and base64 (HTTP Basic).
#[derive(Clone, Default)]
pub struct Scrubber {
    // Longest first, so a secret that contains another is removed whole.
    needles: Vec<zeroize::Zeroizing<String>>,
}

impl Scrubber {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one secret (and its encodings).
    pub fn add(&mut self, secret: &str) {
        if secret.len() < MIN_SCRUBBED_LEN {
            return;
        }
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let percent = form.replace('+', "%20");
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or_default()
            .to_owned();
        let slash_escaped = json.replace('/', "\\/");
        use base64::Engine as _;
        let base64 = base64::engine::general_purpose::STANDARD.encode(secret);
        for variant in [
            secret.to_owned(),
            form,
            percent,
            json,
            slash_escaped,
            base64,
        ] {
            if variant.len() >= MIN_SCRUBBED_LEN && !self.needles.iter().any(|n| **n == variant) {
                self.needles.push(zeroize::Zeroizing::new(variant));
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// [`Scrubber::add`], chained.
    pub fn with(mut self, secret: &str) -> Self {
        self.add(secret);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        // A needle is whole UTF-8, so replacing it keeps the text UTF-8.
        String::from_utf8(self.scrub_bytes(text.as_bytes()))
            .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
    }

    /// Every secret in `bytes` (a body that may not be UTF-8) replaced by
    /// [`REDACTED`].
    pub fn scrub_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        if self.needles.is_empty() {
            return bytes.to_vec();
        }
        let mut out = bytes.to_vec();
        for needle in &self.needles {
            let needle = needle.as_bytes();
            if out.windows(needle.len()).any(|w| w == needle) {
                let mut next = Vec::with_capacity(out.len());
                let mut i = 0;
                while i < out.len() {
                    if out[i..].starts_with(needle) {
                        next.extend_from_slice(REDACTED.as_bytes());
                        i += needle.len();
                    } else {
                        next.push(out[i]);
                        i += 1;
                    }
                }
                out = next;
            }
        }
        out
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} needles)", self.needles.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_removed_in_every_encoding_a_provider_echoes() {
        let secret = "rt/abc+def=ghi \"q\"";
        let scrubber = Scrubber::new().with(secret);
        use base64::Engine as _;
        let encoded = [
            secret.to_owned(),
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
            "rt%2Fabc%2Bdef%3Dghi%20%22q%22".to_owned(),
            "rt/abc+def=ghi \\\"q\\\"".to_owned(),
            "rt\\/abc+def=ghi \\\"q\\\"".to_owned(),
            base64::engine::general_purpose::STANDARD.encode(secret),
        ];
        for form in encoded {
            let text = format!("backend failed for refresh_token={form}; retry");
            let scrubbed = scrubber.scrub(&text);
            assert_eq!(
                scrubbed, "backend failed for refresh_token=[redacted]; retry",
                "{form}"
            );
            let bytes = scrubber.scrub_bytes(text.as_bytes());
            assert_eq!(bytes, scrubbed.as_bytes(), "{form}");
        }
    }

    #[test]
    fn a_secret_containing_another_is_removed_whole_and_short_values_are_kept() {
        let scrubber = Scrubber::new().with("abcd").with("abcdefgh").with("xy");
        assert_eq!(
            scrubber.scrub("[abcdefgh] [abcd] xy"),
            "[[redacted]] [[redacted]] xy"
        );
        assert!(Scrubber::new().with("abc").is_empty());
    }

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
