//! Sealing secrets at rest with the server key (AES-256-GCM).
//!
//! Layout of a sealed value: `nonce(12) ‖ ciphertext ‖ tag(16)`, with a fresh
//! random nonce per seal. The key comes from `PROTOCOL_API_SECRET_KEY` (64 hex
//! characters) or is generated once into `<data dir>/server-secret.key` with
//! 0600 permissions, so a restart can still open what it sealed. A key file
//! that has gone missing while sealed data exists is never made anew: a new
//! key could open none of it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_FILE: &str = "server-secret.key";

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The configured key is not 32 bytes of hex.
    #[error("PROTOCOL_API_SECRET_KEY must be 64 hex characters (32 bytes)")]
    BadKey,
    /// The key file could not be read or created.
    #[error("server key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file could not be written or its permissions tightened.
    #[error(transparent)]
    DataDir(#[from] delibera_data_dir::Error),
    /// The key file exists but does not hold a key.
    #[error(
        "server key file {path} does not hold 64 hex characters: it is damaged; restore it from \
         a backup, or set PROTOCOL_API_SECRET_KEY to the key that sealed the stored secrets"
    )]
    KeyFileDamaged {
        /// The key file.
        path: String,
    },
    /// The key file is missing, but secrets sealed with it are stored.
    #[error(
        "server key file {path} is missing, but {sealed_data} holds secrets sealed with it; \
         restore the file, or set PROTOCOL_API_SECRET_KEY to the key that sealed them (a new \
         key could open none of them)"
    )]
    KeyFileMissing {
        /// The key file.
        path: String,
        /// What holds the sealed secrets.
        sealed_data: String,
    },
    /// The sealed value was tampered with or sealed under another key.
    #[error("a sealed secret could not be opened (wrong server key or corrupted data)")]
    Open,
}

/// Seals and opens secrets with the server key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
    /// Which box this is (its clones share it), for [`SealCache`].
    id: u64,
}

/// Numbers the boxes made by this process.
static NEXT_BOX: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key redacted>)")
    }
}

impl SecretBox {
    /// A box over a raw 32-byte key.
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
            id: NEXT_BOX.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The configured hex key, else the key file in `data_dir`. A missing
    /// key file is created with a new key, unless `sealed_data` names what
    /// already holds secrets sealed with the old one: then it is refused.
    pub fn open_or_create(
        data_dir: &Path,
        configured_hex: Option<&str>,
        sealed_data: Option<&str>,
    ) -> Result<Self, SealError> {
        if let Some(hex_key) = configured_hex {
            return Self::from_hex(hex_key);
        }
        let path = data_dir.join(KEY_FILE);
        let shown = || path.display().to_string();
        let key_file_error = |source| SealError::KeyFile {
            path: shown(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                delibera_data_dir::tighten_file(&path)?;
                Self::from_hex(text.trim()).map_err(|_| SealError::KeyFileDamaged { path: shown() })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(sealed_data) = sealed_data {
                    return Err(SealError::KeyFileMissing {
                        path: shown(),
                        sealed_data: sealed_data.to_owned(),
                    });
                }
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(key.as_mut());
                let hex_key = Zeroizing::new(hex::encode(key.as_ref()));
                delibera_data_dir::write_private_file(&path, hex_key.as_bytes())?;
                Ok(Self::from_key(&key))
            }
            Err(error) => Err(key_file_error(error)),
        }
    }

    /// A box over a key given as 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(hex::decode(text).map_err(|_| SealError::BadKey)?);
        let key: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self::from_key(key))
    }

    /// Seals `plaintext` under a fresh nonce (from the thread's CSPRNG,
    /// seeded from the OS: a system call per seal bought nothing).
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut out[NONCE_LEN..])
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens what [`SecretBox::seal`] produced.
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }
}

/// A value's last seal, kept beside the value: sealing it again unchanged,
/// with the same box, gives back the same bytes instead of encoding and
/// encrypting it anew (a job's secrets change at two of its steps, and are
/// saved at every one). Clones share it; a changed value is sealed anew.
pub struct SealCache<T>(Arc<Mutex<Option<LastSeal<T>>>>);

struct LastSeal<T> {
    value: T,
    sealed_by: u64,
    sealed: Arc<[u8]>,
}

impl<T> Clone for SealCache<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for SealCache<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }
}

impl<T> std::fmt::Debug for SealCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealCache(<redacted>)")
    }
}

impl<T: Clone + PartialEq> SealCache<T> {
    /// `value` sealed by `secret_box`, its plaintext made by `encode`: the
    /// last seal if it was of an equal value by the same box, else a new one.
    pub fn seal<E>(
        &self,
        value: &T,
        secret_box: &SecretBox,
        encode: impl FnOnce(&T) -> Result<Zeroizing<Vec<u8>>, E>,
    ) -> Result<Arc<[u8]>, E> {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(last) = last
            .as_ref()
            .filter(|last| last.sealed_by == secret_box.id && last.value == *value)
        {
            return Ok(last.sealed.clone());
        }
        let sealed: Arc<[u8]> = secret_box.seal(&encode(value)?).into();
        *last = Some(LastSeal {
            value: value.clone(),
            sealed_by: secret_box.id,
            sealed: sealed.clone(),
        });
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_is_reused_only_for_an_equal_value_and_the_same_box() {
        let secret_box = SecretBox::from_key(&[7; 32]);
        let cache = SealCache::default();
        let encode =
            |value: &String| -> Result<_, ()> { Ok(Zeroizing::new(value.as_bytes().to_vec())) };
        let first = cache
            .seal(&"MgCY-one".to_owned(), &secret_box, encode)
            .unwrap();
        let again = cache
            .clone()
            .seal(&"MgCY-one".to_owned(), &secret_box.clone(), encode)
            .unwrap();
        assert_eq!(first, again, "unchanged: the same sealed bytes");
        let changed = cache
            .seal(&"MgCY-two".to_owned(), &secret_box, encode)
            .unwrap();
        assert_eq!(secret_box.open(&changed).unwrap().as_slice(), b"MgCY-two");
        let same_key_other_box = SecretBox::from_key(&[7; 32]);
        let resealed = cache
            .seal(&"MgCY-two".to_owned(), &same_key_other_box, encode)
            .unwrap();
        assert_ne!(resealed, changed, "another box seals anew");
        let other_key = SecretBox::from_key(&[8; 32]);
        let foreign = cache
            .seal(&"MgCY-two".to_owned(), &other_key, encode)
            .unwrap();
        assert_eq!(other_key.open(&foreign).unwrap().as_slice(), b"MgCY-two");
    }

    #[test]
    fn seal_round_trips_with_fresh_nonces() {
        let secret_box = SecretBox::from_key(&[7; 32]);
        let a = secret_box.seal(b"MgCY...");
        let b = secret_box.seal(b"MgCY...");
        assert_ne!(a, b, "a fresh nonce per seal");
        assert_eq!(secret_box.open(&a).unwrap().as_slice(), b"MgCY...");
    }

    #[test]
    fn tampered_short_or_foreign_values_do_not_open() {
        let secret_box = SecretBox::from_key(&[7; 32]);
        let mut sealed = secret_box.seal(b"secret");
        *sealed.last_mut().unwrap() ^= 1;
        assert!(matches!(secret_box.open(&sealed), Err(SealError::Open)));
        assert!(matches!(secret_box.open(&[0; 10]), Err(SealError::Open)));
        let other = SecretBox::from_key(&[8; 32]);
        assert!(matches!(
            other.open(&secret_box.seal(b"x")),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn key_file_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = SecretBox::open_or_create(dir.path(), None, None).unwrap();
        let sealed = first.seal(b"kept across restarts");
        let second = SecretBox::open_or_create(dir.path(), None, None).unwrap();
        assert_eq!(
            second.open(&sealed).unwrap().as_slice(),
            b"kept across restarts"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn configured_key_must_be_32_bytes_of_hex() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SecretBox::open_or_create(dir.path(), Some("abcd"), None),
            Err(SealError::BadKey)
        ));
        assert!(matches!(
            SecretBox::open_or_create(dir.path(), Some(&"zz".repeat(32)), None),
            Err(SealError::BadKey)
        ));
        let key = "11".repeat(32);
        let configured = SecretBox::open_or_create(dir.path(), Some(&key), None).unwrap();
        assert_eq!(
            configured
                .open(&SecretBox::from_key(&[0x11; 32]).seal(b"x"))
                .unwrap()
                .as_slice(),
            b"x"
        );
    }

    #[test]
    fn a_missing_key_file_is_not_made_anew_over_sealed_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE).display().to_string();
        let refused =
            SecretBox::open_or_create(dir.path(), None, Some("/data/jobs.sqlite")).unwrap_err();
        assert!(
            matches!(&refused, SealError::KeyFileMissing { path: p, sealed_data } if *p == path && sealed_data == "/data/jobs.sqlite"),
            "{refused:?}"
        );
        assert!(refused.to_string().contains(&path), "{refused}");
        assert!(
            !dir.path().join(KEY_FILE).exists(),
            "no new key was written"
        );

        std::fs::write(dir.path().join(KEY_FILE), b"").unwrap();
        let damaged = SecretBox::open_or_create(dir.path(), None, None).unwrap_err();
        assert!(
            matches!(&damaged, SealError::KeyFileDamaged { path: p } if *p == path),
            "{damaged:?}"
        );
    }
}
