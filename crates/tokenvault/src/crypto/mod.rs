//! Envelope encryption. Every connection has its own random 256-bit data key
//! (DEK); the DEK is stored wrapped by a master key (KEK) from the key ring.
//! Tokens are sealed with AES-256-GCM under the DEK, with associated data that
//! binds each blob to its connection and field, so a blob copied elsewhere
//! does not decrypt. Rotating the KEK re-wraps DEKs only; token blobs are
//! untouched.

mod envelope;
mod keyring;

pub use envelope::{
    DataKey, Envelope, Field, SealedDeviceCode, SealedTokens, WrappedKey, device_code_aad,
    device_wrap_context, open, seal, token_aad, wrap_context,
};
pub use keyring::{KeyError, KeyId, KeyProvider, KeyRing, MasterKey};

/// Failures while sealing or opening stored secrets.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "data key is wrapped by master key `{0}`, which is not in the key ring; add it to TOKENVAULT_MASTER_KEYS (or the key file) again"
    )]
    UnknownKey(String),
    #[error(
        "cannot decrypt {what}: the blob is corrupted, was copied from another connection or field, or was sealed under a different key"
    )]
    Decrypt { what: String },
    #[error("unsupported sealed blob format version {0}; this tokenvault is older than the data")]
    UnsupportedVersion(u8),
    #[error("malformed sealed blob: {0}")]
    Malformed(&'static str),
    #[error("key provider failed: {0}")]
    Provider(String),
}
