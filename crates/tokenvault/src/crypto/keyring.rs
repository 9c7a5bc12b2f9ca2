use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::CryptoError;
use super::envelope::{DataKey, WrappedKey};

/// Name of a master key, recorded beside every data key it wraps.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A key-encryption key. Its bytes never print.
pub struct MasterKey {
    id: KeyId,
    key: Zeroizing<[u8; 32]>,
}

impl MasterKey {
    pub fn new(id: KeyId, key: [u8; 32]) -> Self {
        Self {
            id,
            key: Zeroizing::new(key),
        }
    }

    pub fn generate(id: KeyId) -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self::new(id, key)
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// `id:base64` — the form `TOKENVAULT_MASTER_KEYS` and the key file take.
    pub fn to_spec(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.id, STANDARD.encode(*self.key)))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, ****)", self.id)
    }
}

/// A master-key specification was unusable; the message names its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {problem}")]
pub struct KeyError {
    pub source_name: String,
    pub problem: String,
}

/// Where master keys come from. The local [`KeyRing`] is the default; a cloud
/// KMS can implement this to keep KEKs out of the process.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// New data keys are wrapped under this key.
    fn active_key_id(&self) -> KeyId;
    /// Every key that can still unwrap.
    fn key_ids(&self) -> Vec<KeyId>;
    async fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<WrappedKey, CryptoError>;
    async fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, CryptoError>;
}

/// Master keys held in memory, the first one active.
pub struct KeyRing {
    keys: Vec<MasterKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter()).finish()
    }
}

const WRAP_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

impl KeyRing {
    pub fn new(keys: Vec<MasterKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError {
                source_name: "key ring".into(),
                problem: "no master key configured".into(),
            });
        }
        Ok(Self { keys })
    }

    /// Parses `k2:base64,k1:base64` (commas or newlines; `#` starts a comment
    /// line in a key file). `source_name` is the variable or file named in errors.
    pub fn parse(spec: &str, source_name: &str) -> Result<Self, KeyError> {
        let fail = |problem: String| KeyError {
            source_name: source_name.to_owned(),
            problem,
        };
        let mut keys: Vec<MasterKey> = Vec::new();
        let entries = spec
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        for (index, entry) in entries.enumerate() {
            let position = index + 1;
            let Some((id, encoded)) = entry.split_once(':') else {
                return Err(fail(format!(
                    "entry {position} is not of the form `id:base64key`"
                )));
            };
            let id = KeyId::parse(id.trim()).ok_or_else(|| {
                fail(format!(
                    "entry {position}: key id must be 1-{} characters of letters, digits, - or _",
                    KeyId::MAX_LEN
                ))
            })?;
            let bytes = Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| {
                fail(format!(
                    "entry {position} (`{id}`): the key is not valid base64"
                ))
            })?);
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                fail(format!(
                    "entry {position} (`{id}`): a master key must be 32 bytes (AES-256), this one is {}",
                    bytes.len()
                ))
            })?;
            if keys.iter().any(|existing| existing.id == id) {
                return Err(fail(format!("key id `{id}` appears more than once")));
            }
            keys.push(MasterKey::new(id, key));
        }
        Self::new(keys).map_err(|_| fail("no master key given".into()))
    }

    /// Reads the key file, or creates it with one fresh key when it does not
    /// exist. Returns whether it was created, so the caller can warn loudly.
    pub fn load_or_create_file(path: &Path) -> Result<(Self, bool), KeyError> {
        let source_name = path.display().to_string();
        let fail = |problem: String| KeyError {
            source_name: source_name.clone(),
            problem,
        };
        match std::fs::read_to_string(path) {
            Ok(content) => Ok((Self::parse(&content, &source_name)?, false)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let id = KeyId::parse(&format!("k{}", chrono::Utc::now().format("%Y%m%d")))
                    .expect("generated key id is valid");
                let key = MasterKey::generate(id);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| fail(format!("cannot create directory: {e}")))?;
                }
                let content = Zeroizing::new(format!(
                    "# tokenvault master keys, first = active. Generated for development.\n{}\n",
                    key.to_spec().as_str()
                ));
                write_private(path, content.as_bytes())
                    .map_err(|e| fail(format!("cannot write key file: {e}")))?;
                Ok((Self::new(vec![key])?, true))
            }
            Err(err) => Err(fail(format!("cannot read key file: {err}"))),
        }
    }

    pub fn active(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|key| key.id.as_str() == id)
    }

    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    fn wrap_sync(&self, key: &DataKey, context: &[u8]) -> WrappedKey {
        let kek = self.active();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let aad = wrap_aad(&kek.id, context);
        let ciphertext = Aes256Gcm::new((&*kek.key).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: key.expose(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        // Self-describing: version, key id, nonce, ciphertext+tag.
        let id = kek.id.as_str().as_bytes();
        let mut blob = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
        blob.push(WRAP_VERSION);
        blob.push(id.len() as u8);
        blob.extend_from_slice(id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        WrappedKey::from_parts(kek.id.clone(), blob)
    }

    fn unwrap_sync(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, CryptoError> {
        let (id, nonce, ciphertext) = parse_wrapped(wrapped.blob())?;
        let kek = self
            .get(id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let aad = wrap_aad(&kek.id, context);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("length checked");
        let plain = Zeroizing::new(
            Aes256Gcm::new((&*kek.key).into())
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Decrypt {
                    what: "the data key".into(),
                })?,
        );
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("data key is not 32 bytes"))?;
        Ok(DataKey::from_bytes(key))
    }
}

fn wrap_aad(kek: &KeyId, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + context.len());
    aad.extend_from_slice(b"tokenvault/dek/v1/");
    aad.extend_from_slice(kek.as_str().as_bytes());
    aad.push(b'/');
    aad.extend_from_slice(context);
    aad
}

/// Splits a wrapped-key blob into (key id, nonce, ciphertext).
pub(super) fn parse_wrapped(blob: &[u8]) -> Result<(&str, &[u8], &[u8]), CryptoError> {
    let (&version, rest) = blob
        .split_first()
        .ok_or(CryptoError::Malformed("empty wrapped key"))?;
    if version != WRAP_VERSION {
        return Err(CryptoError::UnsupportedVersion(version));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(CryptoError::Malformed("wrapped key truncated"))?;
    let id_len = id_len as usize;
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(CryptoError::Malformed("wrapped key truncated"));
    }
    let id = std::str::from_utf8(&rest[..id_len])
        .map_err(|_| CryptoError::Malformed("key id is not UTF-8"))?;
    let nonce = &rest[id_len..id_len + NONCE_LEN];
    Ok((id, nonce, &rest[id_len + NONCE_LEN..]))
}

#[async_trait::async_trait]
impl KeyProvider for KeyRing {
    fn active_key_id(&self) -> KeyId {
        self.active().id.clone()
    }

    fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|key| key.id.clone()).collect()
    }

    async fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<WrappedKey, CryptoError> {
        Ok(self.wrap_sync(key, context))
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, CryptoError> {
        self.unwrap_sync(wrapped, context)
    }
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, byte: u8) -> String {
        format!("{id}:{}", STANDARD.encode([byte; 32]))
    }

    #[test]
    fn first_key_is_active_and_all_can_unwrap() {
        let ring = KeyRing::parse(
            &format!("{} , {}", spec("k2", 2), spec("k1", 1)),
            "TOKENVAULT_MASTER_KEYS",
        )
        .unwrap();
        assert_eq!(ring.active().id().as_str(), "k2");
        assert_eq!(ring.keys().len(), 2);
        let debug = format!("{ring:?}");
        assert!(!debug.contains(&STANDARD.encode([2u8; 32])), "{debug}");
    }

    #[test]
    fn malformed_keys_name_the_variable() {
        let var = "TOKENVAULT_MASTER_KEYS";
        let cases = [
            ("k1", "not of the form"),
            ("k1:!!!notbase64", "not valid base64"),
            (
                &format!("k1:{}", STANDARD.encode([0u8; 16])),
                "must be 32 bytes (AES-256), this one is 16",
            ),
            (
                &format!("{},{}", spec("k1", 1), spec("k1", 2)),
                "`k1` appears more than once",
            ),
            (
                &format!("bad id:{}", STANDARD.encode([0u8; 32])),
                "key id must be",
            ),
            ("", "no master key given"),
        ];
        for (input, expected) in cases {
            let err = KeyRing::parse(input, var).unwrap_err().to_string();
            assert!(err.starts_with("TOKENVAULT_MASTER_KEYS: "), "{err}");
            assert!(err.contains(expected), "{input:?} gave {err}");
        }
    }

    #[tokio::test]
    async fn wrap_binds_key_id_and_context() {
        let ring = KeyRing::parse(&spec("k1", 1), "test").unwrap();
        let dek = DataKey::generate();
        let wrapped = ring.wrap(&dek, b"conn-a").await.unwrap();
        assert_eq!(wrapped.key_id().as_str(), "k1");
        assert_eq!(
            ring.unwrap(&wrapped, b"conn-a").await.unwrap().expose(),
            dek.expose()
        );
        assert!(matches!(
            ring.unwrap(&wrapped, b"conn-b").await,
            Err(CryptoError::Decrypt { .. })
        ));

        // A ring without k1 reports which key is missing.
        let other = KeyRing::parse(&spec("k9", 9), "test").unwrap();
        let err = other.unwrap(&wrapped, b"conn-a").await.unwrap_err();
        assert!(err.to_string().contains("`k1`"), "{err}");
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/master.key");
        let (created_ring, created) = KeyRing::load_or_create_file(&path).unwrap();
        assert!(created);
        let (loaded_ring, created_again) = KeyRing::load_or_create_file(&path).unwrap();
        assert!(!created_again);
        assert_eq!(
            created_ring.active().to_spec().as_str(),
            loaded_ring.active().to_spec().as_str()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
