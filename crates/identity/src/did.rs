//! `did:key` identifiers for Ed25519 keys.

use std::fmt;
use std::str::FromStr;

use multibase::Base;

use crate::{Error, PublicKey, Result, Signature};

const PREFIX: &str = "did:key:";

/// A `did:key` naming an Ed25519 public key: `did:key:z6Mk…`, the multibase
/// base58btc form of `ed 01` ‖ 32-byte key.
///
/// Equality and hashing follow the key, so two spellings of one DID cannot
/// exist (the text form is canonical).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Did {
    key: PublicKey,
    text: String,
}

impl Did {
    /// The DID of a public key.
    pub fn from_public_key(key: PublicKey) -> Self {
        let text = format!(
            "{PREFIX}{}",
            multibase::encode(Base::Base58Btc, key.to_multicodec_bytes())
        );
        Self { key, text }
    }

    /// Parses `did:key:z6Mk…`, naming what is wrong when it is not one.
    pub fn parse(input: &str) -> Result<Self> {
        let Some(rest) = input.strip_prefix("did:") else {
            return Err(Error::NotADid {
                input: input.to_owned(),
            });
        };
        let Some((method, identifier)) = rest.split_once(':') else {
            return Err(Error::NotADid {
                input: input.to_owned(),
            });
        };
        let method_is_valid = !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !method_is_valid || identifier.is_empty() {
            return Err(Error::NotADid {
                input: input.to_owned(),
            });
        }
        if method != "key" {
            return Err(Error::NotDidKey {
                method: method.to_owned(),
            });
        }
        let bytes = match multibase::decode(identifier) {
            Ok((Base::Base58Btc, bytes)) => bytes,
            Ok((base, _)) => {
                return Err(Error::WrongMultibase {
                    what: "did:key",
                    expected: "base58btc ('z')",
                    found: format!("{base:?} ('{}')", base.code()),
                });
            }
            Err(multibase::Error::UnknownBase(code)) => {
                return Err(Error::WrongMultibase {
                    what: "did:key",
                    expected: "base58btc ('z')",
                    found: format!("unknown prefix {code:?}"),
                });
            }
            Err(_) => {
                return Err(Error::InvalidEncoding {
                    what: "did:key",
                    encoding: "base58btc",
                });
            }
        };
        let key = PublicKey::from_multicodec_bytes(&bytes).map_err(|error| match error {
            Error::WrongLength { actual, .. } => Error::WrongLength {
                what: "did:key Ed25519 public key",
                expected: 32,
                actual,
            },
            other => other,
        })?;
        let did = Self::from_public_key(key);
        // base58btc has one spelling per byte string; refuse anything the
        // decoder tolerated but that is not the canonical text.
        if did.text != input {
            return Err(Error::InvalidEncoding {
                what: "did:key",
                encoding: "canonical base58btc",
            });
        }
        Ok(did)
    }

    /// The DID's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The public key the DID names.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// Checks a signature made by this DID's key.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        self.key.verify(message, signature)
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Did").field(&self.text).finish()
    }
}

impl FromStr for Did {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl AsRef<str> for Did {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl serde::Serialize for Did {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Did {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}
