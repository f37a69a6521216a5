//! Sealed environment variables: the `encrypted_env` blob of `POST /cvms`.
//!
//! Wire format (the `encryptEnvVars` of `@phala/dstack-sdk` 0.5.7), lowercase hex without `0x` of
//!
//! ```text
//! ephemeral_x25519_public(32) ‖ iv(12) ‖ AES-256-GCM ciphertext ‖ tag(16)
//! ```
//!
//! where the AES key is the raw X25519 shared secret (no KDF) and the plaintext is
//! the UTF-8 of `JSON.stringify({env: [{key, value}, …]})`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use delibera_deploy::EnvVar;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const KEY_LENGTH: usize = 32;
const IV_LENGTH: usize = 12;
const TAG_LENGTH: usize = 16;

/// The exact plaintext the JS SDK encrypts: `JSON.stringify({env: vars})`.
///
/// serde_json's compact writer escapes exactly what `JSON.stringify` escapes
/// (`"`, `\`, the short forms `\b \f \n \r \t`, other C0 controls as lowercase
/// `\u00xx`) and writes all other characters, non-ASCII included, as raw UTF-8.
pub fn env_plaintext(vars: &[EnvVar]) -> Zeroizing<Vec<u8>> {
    #[derive(Serialize)]
    struct Payload<'a> {
        env: &'a [EnvVar],
    }
    // Serializing strings into a Vec cannot fail.
    Zeroizing::new(serde_json::to_vec(&Payload { env: vars }).unwrap_or_default())
}

/// Encrypts `vars` for a CVM whose env-encryption public key is `pubkey_hex`
/// (`app_env_encrypt_pubkey`; 64 hex characters, `0x` allowed), with a fresh
/// ephemeral key and IV from the OS.
///
/// ```
/// use delibera_phala::{EnvVar, encrypt_env};
///
/// # fn main() -> delibera_phala::Result<()> {
/// let pubkey = "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13";
/// let blob = encrypt_env(pubkey, &[EnvVar::new("API_KEY", "secret")])?;
/// // 32-byte ephemeral key, 12-byte IV, the plaintext and a 16-byte tag, as hex.
/// let plaintext_len = r#"{"env":[{"key":"API_KEY","value":"secret"}]}"#.len();
/// assert_eq!(blob.len(), 2 * (32 + 12 + plaintext_len + 16));
/// # Ok(())
/// # }
/// ```
pub fn encrypt_env(pubkey_hex: &str, vars: &[EnvVar]) -> Result<String> {
    let mut ephemeral_secret = Zeroizing::new([0u8; KEY_LENGTH]);
    let mut iv = [0u8; IV_LENGTH];
    OsRng.fill_bytes(ephemeral_secret.as_mut());
    OsRng.fill_bytes(&mut iv);
    encrypt_env_with(pubkey_hex, vars, *ephemeral_secret, iv)
}

/// [`encrypt_env`] with the randomness supplied: the ephemeral X25519 private
/// scalar and the AES-GCM IV. Only for reproducing known-answer vectors; reusing
/// either value across calls breaks the encryption.
pub fn encrypt_env_with(
    pubkey_hex: &str,
    vars: &[EnvVar],
    ephemeral_secret: [u8; KEY_LENGTH],
    iv: [u8; IV_LENGTH],
) -> Result<String> {
    let remote = parse_encryption_pubkey(pubkey_hex)?;
    let ephemeral = StaticSecret::from(ephemeral_secret);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&remote);
    if !shared.was_contributory() {
        // A low-order "public key" makes the shared secret all zeros: anyone could decrypt.
        return Err(Error::InvalidEncryptionKey {
            reason: "it is a low-order point (the shared secret would be public)",
        });
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(shared.as_bytes()));
    let plaintext = env_plaintext(vars);
    let sealed = cipher
        .encrypt(Nonce::from_slice(&iv), plaintext.as_slice())
        .map_err(|_| Error::InvalidEnv {
            reason: "the env is too large for AES-GCM".to_owned(),
        })?;

    let mut blob = Vec::with_capacity(KEY_LENGTH + IV_LENGTH + sealed.len());
    blob.extend_from_slice(ephemeral_public.as_bytes());
    blob.extend_from_slice(&iv);
    blob.extend_from_slice(&sealed);
    Ok(hex::encode(blob))
}

/// Decrypts an `encrypted_env` blob with the app's X25519 private key: what the
/// CVM's KMS does. Useful for fakes and tests of the whole deploy path.
pub fn decrypt_env(private_key: &[u8; KEY_LENGTH], encrypted_hex: &str) -> Result<Vec<EnvVar>> {
    let blob = hex::decode(strip_0x(encrypted_hex.trim()))
        .map_err(|_| Error::Decrypt { reason: "not hex" })?;
    if blob.len() < KEY_LENGTH + IV_LENGTH + TAG_LENGTH {
        return Err(Error::Decrypt {
            reason: "shorter than ephemeral key, IV and tag",
        });
    }
    let (ephemeral_public, rest) = blob.split_at(KEY_LENGTH);
    let (iv, sealed) = rest.split_at(IV_LENGTH);
    let ephemeral_public: [u8; KEY_LENGTH] =
        ephemeral_public.try_into().map_err(|_| Error::Decrypt {
            reason: "bad ephemeral key length",
        })?;
    let secret = StaticSecret::from(*private_key);
    let shared = secret.diffie_hellman(&PublicKey::from(ephemeral_public));
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(shared.as_bytes()));
    let plaintext =
        Zeroizing::new(cipher.decrypt(Nonce::from_slice(iv), sealed).map_err(|_| {
            Error::Decrypt {
                reason: "authentication failed (wrong key or tampered data)",
            }
        })?);

    #[derive(Deserialize)]
    struct Payload {
        env: Vec<EnvVar>,
    }
    serde_json::from_slice::<Payload>(&plaintext)
        .map(|payload| payload.env)
        .map_err(|_| Error::Decrypt {
            reason: "the plaintext is not {\"env\":[{\"key\",\"value\"}]}",
        })
}

/// The X25519 public key of `private_key`, as the 64-character hex the API uses.
pub fn encryption_pubkey_hex(private_key: &[u8; KEY_LENGTH]) -> String {
    hex::encode(PublicKey::from(&StaticSecret::from(*private_key)).as_bytes())
}

fn parse_encryption_pubkey(pubkey_hex: &str) -> Result<PublicKey> {
    let bytes = hex::decode(strip_0x(pubkey_hex.trim()))
        .map_err(|_| Error::InvalidEncryptionKey { reason: "not hex" })?;
    let bytes: [u8; KEY_LENGTH] = bytes.try_into().map_err(|_| Error::InvalidEncryptionKey {
        reason: "not 32 bytes (64 hex characters)",
    })?;
    Ok(PublicKey::from(bytes))
}

fn strip_0x(text: &str) -> &str {
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text)
}
