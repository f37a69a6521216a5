//! Ed25519 key pairs and their text forms (ucanto and NEAR).

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use multibase::Base;
use zeroize::{Zeroize, Zeroizing};

use crate::multicodec::{self, ED25519_PRIV, ED25519_PUB};
use crate::{Did, Error, PublicKey, Result, Signature};

/// Length of an Ed25519 seed (the secret scalar's source).
pub const SEED_LENGTH: usize = 32;
/// Length of the raw ucanto key: `80 26` ‖ seed ‖ `ed 01` ‖ public key.
const UCANTO_KEY_LENGTH: usize = 68;
/// Length of a NEAR secret key: seed ‖ public key.
const NEAR_SECRET_LENGTH: usize = 64;

/// An Ed25519 key pair: the identity of a coordinator, worker or Storacha space.
///
/// The secret is zeroized when the value is dropped, and neither `Debug` nor
/// any error message ever shows it; `Debug` prints the DID.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh key pair from the operating system's random number generator.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The key pair derived from a 32-byte seed (RFC 8032), as ucanto's
    /// `Signer.derive` and near-api-js do.
    pub fn from_seed(seed: &[u8; SEED_LENGTH]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.signing.verifying_key())
    }

    /// The `did:key` of this key pair.
    pub fn did(&self) -> Did {
        self.public_key().did()
    }

    /// Signs `message` (plain RFC 8032 Ed25519, as ucanto and near-api-js sign).
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message).into()
    }

    /// Checks a signature against this key pair's public key.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        self.public_key().verify(message, signature)
    }

    /// The ucanto private-key string that `storacha key create` prints and
    /// `STORACHA_AGENT_PRIVATE_KEY` holds: `M` + padded base64 of
    /// `80 26` ‖ seed ‖ `ed 01` ‖ public key.
    pub fn to_ucanto_string(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(UCANTO_KEY_LENGTH));
        multicodec::encode_varint(ED25519_PRIV, &mut raw);
        raw.extend_from_slice(self.signing.as_bytes());
        multicodec::encode_varint(ED25519_PUB, &mut raw);
        raw.extend_from_slice(self.public_key().as_bytes());
        Zeroizing::new(multibase::encode(Base::Base64Pad, raw.as_slice()))
    }

    /// Parses a ucanto private-key string.
    ///
    /// Unlike ucanto's own decoder, this also checks that the public half
    /// matches the seed: a mismatched key would sign as one DID and claim another.
    pub fn from_ucanto_str(text: &str) -> Result<Self> {
        let raw = match multibase::decode(text.trim()) {
            Ok((Base::Base64Pad, bytes)) => Zeroizing::new(bytes),
            Ok((base, mut bytes)) => {
                bytes.zeroize();
                return Err(Error::WrongMultibase {
                    what: "ucanto private key",
                    expected: "base64pad ('M')",
                    found: format!("{base:?} ('{}')", base.code()),
                });
            }
            Err(multibase::Error::UnknownBase(code)) => {
                return Err(Error::WrongMultibase {
                    what: "ucanto private key",
                    expected: "base64pad ('M')",
                    found: format!("unknown prefix {code:?}"),
                });
            }
            Err(_) => {
                return Err(Error::InvalidEncoding {
                    what: "ucanto private key",
                    encoding: "base64pad",
                });
            }
        };
        if raw.len() != UCANTO_KEY_LENGTH {
            return Err(Error::WrongLength {
                what: "ucanto private key",
                expected: UCANTO_KEY_LENGTH,
                actual: raw.len(),
            });
        }
        if raw[..2] != [0x80, 0x26] {
            return Err(Error::NotUcantoPrivateKey {
                reason: "it does not start with the ed25519-priv (0x1300) tag",
            });
        }
        if raw[34..36] != [0xed, 0x01] {
            return Err(Error::NotUcantoPrivateKey {
                reason: "the public half is not tagged ed25519-pub (0xed)",
            });
        }
        let mut seed = Zeroizing::new([0u8; SEED_LENGTH]);
        seed.copy_from_slice(&raw[2..34]);
        let keypair = Self::from_seed(&seed);
        if keypair.public_key().as_bytes()[..] != raw[36..] {
            return Err(Error::KeyMismatch { format: "ucanto" });
        }
        Ok(keypair)
    }

    /// The NEAR secret key string: `ed25519:` + base58 of seed ‖ public key.
    pub fn to_near_secret_string(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; NEAR_SECRET_LENGTH]);
        raw[..32].copy_from_slice(self.signing.as_bytes());
        raw[32..].copy_from_slice(self.public_key().as_bytes());
        Zeroizing::new(format!(
            "ed25519:{}",
            bs58::encode(raw.as_slice()).into_string()
        ))
    }

    /// Parses a NEAR secret key string (`ed25519:<base58 of 64 bytes>`).
    ///
    /// near-api-js ignores the second half; we refuse a secret whose public
    /// half is not derived from its seed, because it names another account key.
    pub fn from_near_secret_str(text: &str) -> Result<Self> {
        let encoded = crate::near::strip_key_type(text.trim())?;
        let raw = Zeroizing::new(crate::near::decode_base58(encoded, "NEAR secret key")?);
        if raw.len() != NEAR_SECRET_LENGTH {
            return Err(Error::WrongLength {
                what: "NEAR secret key",
                expected: NEAR_SECRET_LENGTH,
                actual: raw.len(),
            });
        }
        let mut seed = Zeroizing::new([0u8; SEED_LENGTH]);
        seed.copy_from_slice(&raw[..32]);
        let keypair = Self::from_seed(&seed);
        if keypair.public_key().as_bytes()[..] != raw[32..] {
            return Err(Error::KeyMismatch { format: "NEAR" });
        }
        Ok(keypair)
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("did", &self.did().as_str())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Keypair {
    fn eq(&self, other: &Self) -> bool {
        // Comparing public keys is enough (a public key has one seed in practice)
        // and avoids a non-constant-time comparison of secrets.
        self.public_key() == other.public_key()
    }
}

impl Eq for Keypair {}
