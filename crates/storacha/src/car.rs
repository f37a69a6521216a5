//! CARv1 archives: `varint(header length)` ‖ DAG-CBOR header ‖ sections of
//! `varint(length)` ‖ binary CID ‖ block.

use std::collections::BTreeMap;

use delibera_identity::multicodec::{decode_varint, encode_varint};

use crate::{Cid, Error, Result, Value};

/// One block of an archive: its CID and bytes (not checked against each other;
/// verification does that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The CID the block is stored under.
    pub cid: Cid,
    /// The block's bytes.
    pub bytes: Vec<u8>,
}

/// A CARv1 file: roots and blocks in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Car {
    /// The header's roots.
    pub roots: Vec<Cid>,
    /// The blocks, in the order they appear.
    pub blocks: Vec<Block>,
}

impl Car {
    /// Writes the archive as @ipld/car's buffer writer does.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Value::Map(BTreeMap::from([
            (
                "roots".to_owned(),
                Value::Array(self.roots.iter().cloned().map(Value::Link).collect()),
            ),
            ("version".to_owned(), Value::Integer(1)),
        ]));
        // A header of links and a small integer always encodes.
        let header = header.to_dag_cbor().unwrap_or_default();
        let mut out = Vec::new();
        encode_varint(header.len() as u64, &mut out);
        out.extend_from_slice(&header);
        for block in &self.blocks {
            encode_varint(
                (block.cid.as_bytes().len() + block.bytes.len()) as u64,
                &mut out,
            );
            out.extend_from_slice(block.cid.as_bytes());
            out.extend_from_slice(&block.bytes);
        }
        out
    }

    /// Reads a CARv1 (version 1 header with at least one root).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut at = 0;
        let header = section(bytes, &mut at)?;
        let header = Value::from_dag_cbor(header)?;
        let header = header.as_map().ok_or(Error::Car {
            reason: "the header is not a map",
        })?;
        if header.get("version") != Some(&Value::Integer(1)) {
            return Err(Error::Car {
                reason: "not a version 1 CAR",
            });
        }
        let Some(Value::Array(root_values)) = header.get("roots") else {
            return Err(Error::Car {
                reason: "the header has no roots array",
            });
        };
        let roots = root_values
            .iter()
            .map(|value| match value {
                Value::Link(cid) => Ok(cid.clone()),
                _ => Err(Error::Car {
                    reason: "a root is not a link",
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        if roots.is_empty() {
            return Err(Error::Car {
                reason: "the header has no roots",
            });
        }
        let mut blocks = Vec::new();
        while at < bytes.len() {
            let body = section(bytes, &mut at)?;
            let (cid, used) = Cid::read_prefix(body)?;
            blocks.push(Block {
                cid,
                bytes: body.get(used..).unwrap_or_default().to_vec(),
            });
        }
        Ok(Self { roots, blocks })
    }

    /// The first block stored under `cid`.
    pub fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.blocks
            .iter()
            .find(|block| &block.cid == cid)
            .map(|block| block.bytes.as_slice())
    }
}

/// Reads one length-prefixed section starting at `*at`, advancing past it.
fn section<'a>(bytes: &'a [u8], at: &mut usize) -> Result<&'a [u8]> {
    let rest = bytes.get(*at..).unwrap_or_default();
    let (length, used) = decode_varint(rest).ok_or(Error::Car {
        reason: "bad section length varint",
    })?;
    let start = *at + used;
    let end = usize::try_from(length)
        .ok()
        .and_then(|length| start.checked_add(length))
        .filter(|&end| end <= bytes.len() && end > start)
        .ok_or(Error::Car {
            reason: "truncated or empty section",
        })?;
    *at = end;
    Ok(bytes.get(start..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::DAG_CBOR;

    #[test]
    fn round_trips_and_writes_the_58_byte_header() {
        let block = b"\xa0".to_vec();
        let cid = Cid::sha256(DAG_CBOR, &block);
        let car = Car {
            roots: vec![cid.clone()],
            blocks: vec![Block { cid, bytes: block }],
        };
        let bytes = car.to_bytes();
        assert_eq!(bytes[0], 0x3a);
        assert_eq!(Car::from_bytes(&bytes).unwrap(), car);
    }

    #[test]
    fn rejects_truncation_and_bad_headers() {
        let block = b"\xa0".to_vec();
        let cid = Cid::sha256(DAG_CBOR, &block);
        let bytes = Car {
            roots: vec![cid.clone()],
            blocks: vec![Block { cid, bytes: block }],
        }
        .to_bytes();
        // 59 bytes (varint + 58-byte header) is a valid CAR without blocks.
        for end in (0..bytes.len()).filter(|&end| end != 59) {
            assert!(Car::from_bytes(&bytes[..end]).is_err(), "{end}");
        }
        let no_roots = Car::default().to_bytes();
        assert!(matches!(
            Car::from_bytes(&no_roots),
            Err(Error::Car {
                reason: "the header has no roots"
            })
        ));
    }
}
