//! UCAN principals: issuers and audiences, which are not always did:key.

use std::fmt;
use std::str::FromStr;

use delibera_identity::Did;
use delibera_identity::multicodec::{ED25519_PUB, decode_varint, encode_varint};
use multibase::Base;

use crate::{Error, Result};

/// Multicodec that dag-ucan puts in front of a non-key DID (`did:web:…`, `did:mailto:…`).
const DID_CORE: u64 = 0x0d1d;
/// Key codecs dag-ucan accepts in a principal besides Ed25519 (their DIDs can be
/// named and compared, but their signatures cannot be checked here).
const OTHER_KEY_CODES: [u64; 7] = [0x1205, 0x1200, 0x1201, 0x1202, 0xe7, 0xea, 0xeb];

/// The issuer or audience of a UCAN.
///
/// Inside a block an Ed25519 `did:key` is stored as its multicodec key bytes
/// (`ed 01` ‖ key) and any other DID as `9d 1a` ‖ UTF-8 of what follows `did:`.
/// Two principals are equal when their DID strings are.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    did: String,
    bytes: Vec<u8>,
    ed25519: Option<Did>,
}

impl Principal {
    /// Parses a DID string: `did:key:z6Mk…` or any other `did:<method>:<id>`.
    pub fn parse(text: &str) -> Result<Self> {
        let Some(rest) = text.strip_prefix("did:") else {
            return Err(invalid(format!("not a DID: {text:?}")));
        };
        let Some((method, identifier)) = rest.split_once(':') else {
            return Err(invalid(format!("not a DID: {text:?}")));
        };
        let method_is_valid = !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !method_is_valid || identifier.is_empty() {
            return Err(invalid(format!("not a DID: {text:?}")));
        }
        if method == "key" {
            let key_bytes = match multibase::decode(identifier) {
                Ok((Base::Base58Btc, bytes)) => bytes,
                _ => return Err(invalid(format!("not a base58btc did:key: {text:?}"))),
            };
            return Self::from_key_bytes(&key_bytes);
        }
        let mut bytes = Vec::with_capacity(rest.len() + 2);
        encode_varint(DID_CORE, &mut bytes);
        bytes.extend_from_slice(rest.as_bytes());
        Ok(Self {
            did: text.to_owned(),
            bytes,
            ed25519: None,
        })
    }

    /// Decodes the binary form stored in a UCAN block's `iss` / `aud`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let Some((code, used)) = decode_varint(bytes) else {
            return Err(invalid(
                "principal bytes lack a multicodec prefix".to_owned(),
            ));
        };
        if code == DID_CORE {
            let rest = std::str::from_utf8(bytes.get(used..).unwrap_or_default())
                .map_err(|_| invalid("non-UTF-8 DID in principal bytes".to_owned()))?;
            let principal = Self::parse(&format!("did:{rest}"))?;
            if principal.bytes != bytes {
                // e.g. `did:key:` smuggled in as a non-key DID.
                return Err(invalid("non-canonical principal bytes".to_owned()));
            }
            return Ok(principal);
        }
        Self::from_key_bytes(bytes)
    }

    fn from_key_bytes(bytes: &[u8]) -> Result<Self> {
        let Some((code, used)) = decode_varint(bytes) else {
            return Err(invalid("key bytes lack a multicodec prefix".to_owned()));
        };
        if code == ED25519_PUB {
            let did = delibera_identity::PublicKey::from_multicodec_bytes(bytes)?.did();
            return Ok(Self::from(did));
        }
        if OTHER_KEY_CODES.contains(&code) && bytes.len() > used {
            return Ok(Self {
                did: format!("did:key:{}", multibase::encode(Base::Base58Btc, bytes)),
                bytes: bytes.to_vec(),
                ed25519: None,
            });
        }
        Err(invalid(format!(
            "unsupported principal codec 0x{code:x} ({})",
            delibera_identity::multicodec::codec_name(code)
        )))
    }

    /// The DID string.
    pub fn as_str(&self) -> &str {
        &self.did
    }

    /// The binary form written into UCAN blocks.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The Ed25519 did:key, when this principal is one (only those can be verified).
    pub fn ed25519(&self) -> Option<&Did> {
        self.ed25519.as_ref()
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidPrincipal { reason }
}

impl From<Did> for Principal {
    fn from(did: Did) -> Self {
        Self {
            did: did.as_str().to_owned(),
            bytes: did.public_key().to_multicodec_bytes().to_vec(),
            ed25519: Some(did),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did)
    }
}

impl FromStr for Principal {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.did)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_key_and_did_web_round_trip_through_bytes() {
        let key =
            Principal::parse("did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX").unwrap();
        assert_eq!(key.as_bytes().len(), 34);
        assert_eq!(key.as_bytes()[..2], [0xed, 0x01]);
        assert!(key.ed25519().is_some());
        assert_eq!(Principal::from_bytes(key.as_bytes()).unwrap(), key);

        let web = Principal::parse("did:web:up.storacha.network").unwrap();
        assert_eq!(
            hex::encode(web.as_bytes()),
            "9d1a7765623a75702e73746f72616368612e6e6574776f726b"
        );
        assert!(web.ed25519().is_none());
        assert_eq!(Principal::from_bytes(web.as_bytes()).unwrap(), web);
    }

    #[test]
    fn rejects_non_dids_and_unknown_codecs() {
        for text in ["", "did:", "did:web", "DID:web:x", "did:Web:x", "https://x"] {
            assert!(Principal::parse(text).is_err(), "{text}");
        }
        assert!(Principal::from_bytes(&[]).is_err());
        assert!(Principal::from_bytes(&[0x55, 1, 2]).is_err());
        // A did:key hidden behind the non-key prefix is not canonical.
        let mut smuggled = vec![0x9d, 0x1a];
        smuggled.extend_from_slice(b"key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX");
        assert!(Principal::from_bytes(&smuggled).is_err());
    }
}
