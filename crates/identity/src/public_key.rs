//! Ed25519 public keys and signatures.

use std::fmt;

use ed25519_dalek::{Verifier, VerifyingKey};

use crate::multicodec::{self, ED25519_PUB};
use crate::{Did, Error, Result};

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LENGTH: usize = 32;
/// Length of a raw Ed25519 signature.
pub const SIGNATURE_LENGTH: usize = 64;

/// An Ed25519 public key, known to be a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads a raw 32-byte public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let array: &[u8; PUBLIC_KEY_LENGTH] = bytes.try_into().map_err(|_| Error::WrongLength {
            what: "Ed25519 public key",
            expected: PUBLIC_KEY_LENGTH,
            actual: bytes.len(),
        })?;
        VerifyingKey::from_bytes(array)
            .map(Self)
            .map_err(|_| Error::InvalidPublicKey)
    }

    /// Reads a multicodec-tagged key (`ed 01` ‖ 32 bytes), the form inside a
    /// did:key and inside a UCAN's `iss`/`aud` fields.
    pub fn from_multicodec_bytes(bytes: &[u8]) -> Result<Self> {
        let (code, used) = multicodec::decode_varint(bytes).ok_or(Error::InvalidEncoding {
            what: "multicodec key",
            encoding: "unsigned varint",
        })?;
        if code != ED25519_PUB {
            return Err(Error::UnsupportedKeyCodec {
                code,
                name: multicodec::codec_name(code),
            });
        }
        Self::from_bytes(&bytes[used..])
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LENGTH] {
        self.0.as_bytes()
    }

    /// The multicodec-tagged form: `ed 01` ‖ 32 bytes.
    pub fn to_multicodec_bytes(&self) -> [u8; 34] {
        let mut out = [0u8; 34];
        out[..2].copy_from_slice(&[0xed, 0x01]);
        out[2..].copy_from_slice(self.as_bytes());
        out
    }

    /// The did:key that names this key.
    pub fn did(&self) -> Did {
        Did::from_public_key(*self)
    }

    /// Checks an Ed25519 signature (RFC 8032) over `message`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify(message, &signature)
            .map_err(|_| Error::InvalidSignature)
    }

    /// The NEAR text form, `ed25519:<base58>`.
    pub fn to_near_string(&self) -> String {
        format!("ed25519:{}", bs58::encode(self.as_bytes()).into_string())
    }

    /// Parses the NEAR text form. Like near-api-js, a string without a key
    /// type prefix is read as Ed25519.
    pub fn from_near_str(text: &str) -> Result<Self> {
        let encoded = crate::near::strip_key_type(text)?;
        let bytes = crate::near::decode_base58(encoded, "NEAR public key")?;
        Self::from_bytes(&bytes)
    }

    pub(crate) fn from_verifying_key(key: VerifyingKey) -> Self {
        Self(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey")
            .field(&self.did().as_str())
            .finish()
    }
}

/// A raw 64-byte Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; SIGNATURE_LENGTH]);

impl Signature {
    /// Wraps 64 raw signature bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let array: [u8; SIGNATURE_LENGTH] = bytes.try_into().map_err(|_| Error::WrongLength {
            what: "Ed25519 signature",
            expected: SIGNATURE_LENGTH,
            actual: bytes.len(),
        })?;
        Ok(Self(array))
    }

    /// The raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LENGTH] {
        self.0
    }

    /// The raw 64 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LENGTH] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

impl From<ed25519_dalek::Signature> for Signature {
    fn from(signature: ed25519_dalek::Signature) -> Self {
        Self(signature.to_bytes())
    }
}
