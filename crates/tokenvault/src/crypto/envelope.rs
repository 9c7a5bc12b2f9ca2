use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

use super::CryptoError;
use super::keyring::{KeyId, KeyProvider, parse_wrapped};
use crate::domain::{AccessToken, ConnectionId, DeviceSessionId, RefreshToken};

/// A per-connection AES-256 key. Lives unwrapped only in memory.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self(Zeroizing::new(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(Zeroizing::new(key))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(****)")
    }
}

/// A data key encrypted under a master key. The blob carries its own format
/// version and KEK id; `key_id` repeats the latter for indexing and counting.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    key_id: KeyId,
    blob: Vec<u8>,
}

impl WrappedKey {
    pub fn from_parts(key_id: KeyId, blob: Vec<u8>) -> Self {
        Self { key_id, blob }
    }

    /// Rebuilds from a stored blob, reading the KEK id out of it.
    pub fn from_blob(blob: Vec<u8>) -> Result<Self, CryptoError> {
        let (id, _, _) = parse_wrapped(&blob)?;
        let key_id = KeyId::parse(id).ok_or(CryptoError::Malformed("invalid key id"))?;
        Ok(Self { key_id, blob })
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    pub fn into_blob(self) -> Vec<u8> {
        self.blob
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({}, {} bytes)", self.key_id, self.blob.len())
    }
}

/// Which secret of a connection a blob holds; part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AccessToken,
    RefreshToken,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
        }
    }
}

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Associated data for a token blob: format version, connection and field.
pub fn token_aad(connection: ConnectionId, field: Field) -> Vec<u8> {
    format!(
        "tokenvault/token/v{SEAL_VERSION}/{connection}/{}",
        field.as_str()
    )
    .into_bytes()
}

/// Context that binds a wrapped data key to its connection.
pub fn wrap_context(connection: ConnectionId) -> Vec<u8> {
    connection.to_string().into_bytes()
}

/// Associated data for a device session's sealed `device_code`.
pub fn device_code_aad(session: DeviceSessionId) -> Vec<u8> {
    format!("tokenvault/device_code/v{SEAL_VERSION}/{session}").into_bytes()
}

/// Context that binds a device session's wrapped data key to that session
/// (prefixed, so it can never equal a connection's context).
pub fn device_wrap_context(session: DeviceSessionId) -> Vec<u8> {
    format!("device_session/{session}").into_bytes()
}

/// Encrypts with a random 96-bit nonce: `[version][nonce][ciphertext+tag]`.
pub fn seal(key: &DataKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system's random source failed");
    let ciphertext = Aes256Gcm::new(key.expose().into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of a token cannot fail");
    let mut blob = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    blob.push(SEAL_VERSION);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    blob
}

pub fn open(
    key: &DataKey,
    blob: &[u8],
    aad: &[u8],
    what: impl FnOnce() -> String,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (&version, rest) = blob
        .split_first()
        .ok_or(CryptoError::Malformed("empty sealed blob"))?;
    if version != SEAL_VERSION {
        return Err(CryptoError::UnsupportedVersion(version));
    }
    if rest.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Malformed("sealed blob truncated"));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("length checked");
    Aes256Gcm::new(key.expose().into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt { what: what() })
}

/// A connection's secrets as they are stored.
#[derive(Clone)]
pub struct SealedTokens {
    pub data_key: WrappedKey,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
}

impl fmt::Debug for SealedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedTokens")
            .field("data_key", &self.data_key)
            .field(
                "access_token",
                &format_args!("{} bytes", self.access_token.len()),
            )
            .field("refresh_token", &self.refresh_token.as_ref().map(Vec::len))
            .finish()
    }
}

/// A device session's `device_code` as it is stored: sealed under the
/// session's own data key, which is stored wrapped.
#[derive(Clone)]
pub struct SealedDeviceCode {
    pub data_key: WrappedKey,
    pub device_code: Vec<u8>,
}

impl fmt::Debug for SealedDeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedDeviceCode")
            .field("data_key", &self.data_key)
            .field(
                "device_code",
                &format_args!("{} bytes", self.device_code.len()),
            )
            .finish()
    }
}

/// Seals and opens connection tokens through a [`KeyProvider`].
#[derive(Clone)]
pub struct Envelope {
    keys: Arc<dyn KeyProvider>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Envelope(active={})", self.keys.active_key_id())
    }
}

impl Envelope {
    pub fn new(keys: Arc<dyn KeyProvider>) -> Self {
        Self { keys }
    }

    pub fn keys(&self) -> &Arc<dyn KeyProvider> {
        &self.keys
    }

    /// Seals tokens for a new grant under a fresh data key.
    pub async fn seal_new(
        &self,
        connection: ConnectionId,
        access: &AccessToken,
        refresh: Option<&RefreshToken>,
    ) -> Result<SealedTokens, CryptoError> {
        let key = DataKey::generate();
        let data_key = self.keys.wrap(&key, &wrap_context(connection)).await?;
        Ok(SealedTokens {
            data_key,
            access_token: seal(
                &key,
                access.expose().as_bytes(),
                &token_aad(connection, Field::AccessToken),
            ),
            refresh_token: refresh.map(|token| {
                seal(
                    &key,
                    token.expose().as_bytes(),
                    &token_aad(connection, Field::RefreshToken),
                )
            }),
        })
    }

    /// Seals refreshed tokens under the connection's existing data key, so a
    /// refresh never races a key rotation over the wrapped key.
    pub async fn reseal(
        &self,
        connection: ConnectionId,
        data_key: &WrappedKey,
        access: &AccessToken,
        refresh: Option<&RefreshToken>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), CryptoError> {
        let key = self
            .keys
            .unwrap(data_key, &wrap_context(connection))
            .await?;
        Ok((
            seal(
                &key,
                access.expose().as_bytes(),
                &token_aad(connection, Field::AccessToken),
            ),
            refresh.map(|token| {
                seal(
                    &key,
                    token.expose().as_bytes(),
                    &token_aad(connection, Field::RefreshToken),
                )
            }),
        ))
    }

    /// Opens the access token alone (a token read): the refresh token stays
    /// sealed.
    pub async fn open_access(
        &self,
        connection: ConnectionId,
        data_key: &WrappedKey,
        access: &[u8],
    ) -> Result<AccessToken, CryptoError> {
        Ok(self.open(connection, data_key, access, None).await?.0)
    }

    pub async fn open(
        &self,
        connection: ConnectionId,
        data_key: &WrappedKey,
        access: &[u8],
        refresh: Option<&[u8]>,
    ) -> Result<(AccessToken, Option<RefreshToken>), CryptoError> {
        let key = self
            .keys
            .unwrap(data_key, &wrap_context(connection))
            .await?;
        let open_field = |blob: &[u8], field: Field| {
            let plain = open(&key, blob, &token_aad(connection, field), || {
                format!("the {} of connection {connection}", field.as_str())
            })?;
            String::from_utf8(plain.to_vec())
                .map_err(|_| CryptoError::Malformed("token is not UTF-8"))
        };
        let access = AccessToken::new(open_field(access, Field::AccessToken)?);
        let refresh = refresh
            .map(|blob| open_field(blob, Field::RefreshToken).map(RefreshToken::new))
            .transpose()?;
        Ok((access, refresh))
    }

    /// Seals a device session's `device_code` under a fresh data key; the
    /// blob only opens for the same session id.
    pub async fn seal_device_code(
        &self,
        session: DeviceSessionId,
        device_code: &SecretString,
    ) -> Result<SealedDeviceCode, CryptoError> {
        let key = DataKey::generate();
        let data_key = self.keys.wrap(&key, &device_wrap_context(session)).await?;
        Ok(SealedDeviceCode {
            data_key,
            device_code: seal(
                &key,
                device_code.expose_secret().as_bytes(),
                &device_code_aad(session),
            ),
        })
    }

    pub async fn open_device_code(
        &self,
        session: DeviceSessionId,
        data_key: &WrappedKey,
        blob: &[u8],
    ) -> Result<SecretString, CryptoError> {
        let key = self
            .keys
            .unwrap(data_key, &device_wrap_context(session))
            .await?;
        let plain = open(&key, blob, &device_code_aad(session), || {
            format!("the device_code of device session {session}")
        })?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| CryptoError::Malformed("device code is not UTF-8"))?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// Re-wraps a data key under the active master key (rotation).
    pub async fn rewrap(
        &self,
        connection: ConnectionId,
        data_key: &WrappedKey,
    ) -> Result<WrappedKey, CryptoError> {
        let context = wrap_context(connection);
        let key = self.keys.unwrap(data_key, &context).await?;
        self.keys.wrap(&key, &context).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyRing;
    use base64::Engine;

    fn envelope(spec: &str) -> Envelope {
        Envelope::new(Arc::new(KeyRing::parse(spec, "test").unwrap()))
    }

    fn key_spec(id: &str, byte: u8) -> String {
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        )
    }

    #[tokio::test]
    async fn round_trip_and_fresh_nonces() {
        let env = envelope(&key_spec("k1", 1));
        let id = ConnectionId::new();
        let at = AccessToken::new("AT-secret-value-1234");
        let rt = RefreshToken::new("RT-secret-value-5678");
        let sealed = env.seal_new(id, &at, Some(&rt)).await.unwrap();
        let (access, refresh) = env
            .open(
                id,
                &sealed.data_key,
                &sealed.access_token,
                sealed.refresh_token.as_deref(),
            )
            .await
            .unwrap();
        assert_eq!(access, at);
        assert_eq!(refresh, Some(rt));
        assert_eq!(sealed.access_token[0], SEAL_VERSION);
        let again = env.seal_new(id, &at, None).await.unwrap();
        assert_ne!(again.access_token, sealed.access_token, "nonce reuse");
    }

    #[tokio::test]
    async fn blobs_are_bound_to_connection_and_field() {
        let env = envelope(&key_spec("k1", 1));
        let a = ConnectionId::new();
        let b = ConnectionId::new();
        let at = AccessToken::new("AT-secret-value-1234");
        let rt = RefreshToken::new("RT-secret-value-5678");
        let sealed = env.seal_new(a, &at, Some(&rt)).await.unwrap();

        // Whole row material (data key + blob) moved to another connection.
        let err = env
            .open(b, &sealed.data_key, &sealed.access_token, None)
            .await
            .unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt { .. }), "{err}");

        // Refresh blob presented as the access token of the same connection.
        let swapped = sealed.refresh_token.clone().unwrap();
        let err = env
            .open(a, &sealed.data_key, &swapped, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot decrypt the access_token of connection {a}: the blob is corrupted, was copied from another connection or field, or was sealed under a different key"
            )
        );

        // A flipped bit is caught.
        let mut tampered = sealed.access_token.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(
            env.open(a, &sealed.data_key, &tampered, None)
                .await
                .is_err()
        );
        // An unknown format version is named.
        let mut future = sealed.access_token.clone();
        future[0] = 9;
        assert!(matches!(
            env.open(a, &sealed.data_key, &future, None).await,
            Err(CryptoError::UnsupportedVersion(9))
        ));
    }

    #[tokio::test]
    async fn device_codes_round_trip_and_are_bound_to_their_session() {
        let env = envelope(&key_spec("k1", 1));
        let a = DeviceSessionId::new();
        let b = DeviceSessionId::new();
        let code = SecretString::from("DC-secret-device-code-1234");
        let sealed = env.seal_device_code(a, &code).await.unwrap();
        assert!(
            !sealed.device_code.windows(10).any(|w| w == b"DC-secret-"),
            "sealed, not stored in the clear"
        );
        assert!(!format!("{sealed:?}").contains("DC-secret"));
        let opened = env
            .open_device_code(a, &sealed.data_key, &sealed.device_code)
            .await
            .unwrap();
        assert_eq!(opened.expose_secret(), code.expose_secret());
        // Moved to another session: neither the wrapped key nor the blob opens.
        assert!(
            env.open_device_code(b, &sealed.data_key, &sealed.device_code)
                .await
                .is_err()
        );
        // A connection with the same UUID cannot unwrap the session's key.
        let as_connection = ConnectionId::parse(&a.to_string()).unwrap();
        assert!(
            env.open(as_connection, &sealed.data_key, &sealed.device_code, None)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn rewrap_moves_to_the_active_key_and_keeps_tokens_readable() {
        let old = envelope(&key_spec("k1", 1));
        let id = ConnectionId::new();
        let at = AccessToken::new("AT-secret-value-1234");
        let sealed = old.seal_new(id, &at, None).await.unwrap();
        let both = envelope(&format!("{},{}", key_spec("k2", 2), key_spec("k1", 1)));
        let rewrapped = both.rewrap(id, &sealed.data_key).await.unwrap();
        assert_eq!(rewrapped.key_id().as_str(), "k2");
        let only_new = envelope(&key_spec("k2", 2));
        let (access, _) = only_new
            .open(id, &rewrapped, &sealed.access_token, None)
            .await
            .unwrap();
        assert_eq!(access, at);
        assert_eq!(
            WrappedKey::from_blob(rewrapped.blob().to_vec()).unwrap(),
            rewrapped
        );
    }
}
