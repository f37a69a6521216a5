//! Content identifiers (CIDv1, and CIDv0 where a link uses one).

use std::fmt;
use std::str::FromStr;

use delibera_identity::multicodec::{decode_varint, encode_varint};
use multibase::Base;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Multicodec of DAG-CBOR blocks (UCANs, the archive variant, CAR headers).
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec of a CAR file, used by the `mAYIEA…` identity-CID text form.
pub const CAR: u64 = 0x0202;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (the digest is the data itself).
pub const IDENTITY: u64 = 0x00;

/// A CID: its binary form, with the parts it encodes.
///
/// Text form ([`fmt::Display`]) is base32-lower multibase (`bafy…`) for CIDv1 and
/// plain base58btc (`Qm…`) for CIDv0, as multiformats prints them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid {
    bytes: Vec<u8>,
    version: u8,
    codec: u64,
    hash_code: u64,
    digest_start: usize,
}

impl Cid {
    /// The CIDv1 of `block` with `codec` and a sha2-256 multihash.
    pub fn sha256(codec: u64, block: &[u8]) -> Self {
        Self::v1(codec, SHA2_256, &Sha256::digest(block))
    }

    /// A CIDv1 from its parts.
    pub fn v1(codec: u64, hash_code: u64, digest: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(digest.len() + 8);
        encode_varint(1, &mut bytes);
        encode_varint(codec, &mut bytes);
        encode_varint(hash_code, &mut bytes);
        encode_varint(digest.len() as u64, &mut bytes);
        let digest_start = bytes.len();
        bytes.extend_from_slice(digest);
        Self {
            bytes,
            version: 1,
            codec,
            hash_code,
            digest_start,
        }
    }

    /// Parses a binary CID that fills `bytes` exactly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (cid, used) = Self::read_prefix(bytes)?;
        if used != bytes.len() {
            return Err(Error::InvalidCid {
                reason: "trailing bytes after the CID",
            });
        }
        Ok(cid)
    }

    /// Reads a binary CID from the start of `bytes`; returns it and its length.
    pub fn read_prefix(bytes: &[u8]) -> Result<(Self, usize)> {
        // CIDv0 is a bare sha2-256 multihash.
        if bytes.first() == Some(&0x12) && bytes.get(1) == Some(&0x20) {
            let end = 34;
            let Some(whole) = bytes.get(..end) else {
                return Err(Error::InvalidCid {
                    reason: "truncated CIDv0",
                });
            };
            return Ok((
                Self {
                    bytes: whole.to_vec(),
                    version: 0,
                    codec: 0x70,
                    hash_code: SHA2_256,
                    digest_start: 2,
                },
                end,
            ));
        }
        let mut at = 0;
        let mut next = |what: &'static str| -> Result<u64> {
            let (value, used) = decode_varint(bytes.get(at..).unwrap_or_default())
                .ok_or(Error::InvalidCid { reason: what })?;
            at += used;
            Ok(value)
        };
        let version = next("bad version varint")?;
        if version != 1 {
            return Err(Error::InvalidCid {
                reason: "unsupported CID version",
            });
        }
        let codec = next("bad codec varint")?;
        let hash_code = next("bad multihash code varint")?;
        let length = next("bad multihash length varint")?;
        let digest_start = at;
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| digest_start.checked_add(length))
            .filter(|&end| end <= bytes.len())
            .ok_or(Error::InvalidCid {
                reason: "truncated multihash digest",
            })?;
        Ok((
            Self {
                bytes: bytes.get(..end).unwrap_or_default().to_vec(),
                version: 1,
                codec,
                hash_code,
                digest_start,
            },
            end,
        ))
    }

    /// Parses the text form (`bafy…` base32 CIDv1, any multibase CIDv1, or `Qm…` CIDv0).
    pub fn parse(text: &str) -> Result<Self> {
        if text.starts_with("Qm") {
            let bytes = bs58_decode(text)?;
            return Self::from_bytes(&bytes);
        }
        let (_, bytes) = multibase::decode(text).map_err(|_| Error::InvalidCid {
            reason: "not multibase text",
        })?;
        Self::from_bytes(&bytes)
    }

    /// The binary form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// 0 or 1.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The content multicodec (0x71 DAG-CBOR, 0x70 DAG-PB, 0x0202 CAR, …).
    pub fn codec(&self) -> u64 {
        self.codec
    }

    /// The multihash code (0x12 sha2-256, 0x00 identity, …).
    pub fn hash_code(&self) -> u64 {
        self.hash_code
    }

    /// The multihash digest (for the identity hash, the data itself).
    pub fn digest(&self) -> &[u8] {
        self.bytes.get(self.digest_start..).unwrap_or_default()
    }

    /// Checks that `block` is the content this CID names.
    pub fn verify_block(&self, block: &[u8]) -> Result<()> {
        let matches = match self.hash_code {
            SHA2_256 => Sha256::digest(block).as_slice() == self.digest(),
            IDENTITY => block == self.digest(),
            code => {
                return Err(Error::UnsupportedHash {
                    cid: self.to_string(),
                    code,
                });
            }
        };
        if matches {
            Ok(())
        } else {
            Err(Error::BlockCidMismatch {
                cid: self.to_string(),
            })
        }
    }
}

fn bs58_decode(text: &str) -> Result<Vec<u8>> {
    // multibase's base58btc is the Bitcoin alphabet CIDv0 uses.
    multibase::Base::Base58Btc
        .decode(text)
        .map_err(|_| Error::InvalidCid {
            reason: "invalid base58btc",
        })
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version == 0 {
            f.write_str(&Base::Base58Btc.encode(&self.bytes))
        } else {
            f.write_str(&multibase::encode(Base::Base32Lower, &self.bytes))
        }
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v1_and_v0_text() {
        for text in [
            "bafyreiagmkb4n3bbmld2slyu2jn6w5gyl7j6gtc2lj2sufpcglt7pgfzei",
            "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
        ] {
            let cid = Cid::parse(text).unwrap();
            assert_eq!(cid.to_string(), text);
            assert_eq!(Cid::from_bytes(cid.as_bytes()).unwrap(), cid);
        }
        let cid =
            Cid::parse("bafyreiagmkb4n3bbmld2slyu2jn6w5gyl7j6gtc2lj2sufpcglt7pgfzei").unwrap();
        assert_eq!(
            (cid.codec(), cid.hash_code(), cid.digest().len()),
            (DAG_CBOR, SHA2_256, 32)
        );
    }

    #[test]
    fn rejects_truncated_and_trailing_bytes() {
        let cid = Cid::sha256(DAG_CBOR, b"x");
        let bytes = cid.as_bytes();
        for end in 0..bytes.len() {
            assert!(Cid::from_bytes(&bytes[..end]).is_err(), "{end}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            Cid::from_bytes(&longer),
            Err(Error::InvalidCid { .. })
        ));
    }

    #[test]
    fn verify_block_checks_the_digest() {
        let cid = Cid::sha256(DAG_CBOR, b"block");
        assert!(cid.verify_block(b"block").is_ok());
        assert!(matches!(
            cid.verify_block(b"other"),
            Err(Error::BlockCidMismatch { .. })
        ));
        let identity = Cid::v1(CAR, IDENTITY, b"data");
        assert!(identity.verify_block(b"data").is_ok());
    }
}
