//! The IPLD data model subset UCANs use, its canonical DAG-CBOR codec and the
//! DAG-JSON writer that produces the signed payload.
//!
//! Hand-written on purpose: the format is small, and byte-exactness with
//! cborg/@ipld/dag-cbor matters more than generality.

use std::collections::BTreeMap;

use base64::Engine;

use crate::{Cid, Error, Result};

/// CBOR tag of an IPLD link.
const CID_TAG: u64 = 42;
/// Nesting deeper than this is rejected rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// An IPLD value: what capabilities' `nb` caveats and facts can hold.
///
/// Floats are not supported (UCANs do not need them); a block containing one is
/// rejected when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer in CBOR's range (−2⁶⁴ … 2⁶⁴−1).
    Integer(i128),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A UTF-8 string.
    Text(String),
    /// A list.
    Array(Vec<Value>),
    /// A map with string keys (the only keys DAG-CBOR allows).
    Map(BTreeMap<String, Value>),
    /// A link to another block.
    Link(Cid),
}

impl Value {
    /// Encodes as canonical DAG-CBOR (length-first key order, shortest integers).
    pub fn to_dag_cbor(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        encode(self, &mut out)?;
        Ok(out)
    }

    /// Decodes one DAG-CBOR value that must fill `bytes` exactly.
    ///
    /// Rejects everything DAG-CBOR forbids (indefinite lengths, non-minimal
    /// integers and lengths, duplicate map keys, non-string keys, tags other than
    /// 42, undefined, simple values) and floats. Key order is not checked here,
    /// as the JavaScript decoder does not check it; compare
    /// [`Value::to_dag_cbor`] with the input for canonicity.
    pub fn from_dag_cbor(bytes: &[u8]) -> Result<Self> {
        let mut decoder = Decoder { bytes, at: 0 };
        let value = decoder.value(0)?;
        if decoder.at != bytes.len() {
            return Err(decoder.error("trailing bytes after the value"));
        }
        Ok(value)
    }

    /// Writes DAG-JSON as @ipld/dag-json does: no whitespace, keys in
    /// JavaScript (UTF-16) order, `JSON.stringify` string escaping, links as
    /// `{"/":"bafy…"}` and bytes as `{"/":{"bytes":"<base64, unpadded>"}}`.
    pub fn to_dag_json(&self) -> String {
        let mut out = String::new();
        write_json(self, &mut out);
        out
    }

    /// The map entries, if this is a map.
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Self::Map(map) => Some(map),
            _ => None,
        }
    }

    /// The text, if this is a string.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<u64> for Value {
    fn from(number: u64) -> Self {
        Self::Integer(i128::from(number))
    }
}

impl From<Cid> for Value {
    fn from(cid: Cid) -> Self {
        Self::Link(cid)
    }
}

// ---- encoding ----

fn write_head(major: u8, value: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    // Shortest form, as DAG-CBOR requires.
    if value < 24 {
        out.push(major | value as u8);
    } else if value <= u64::from(u8::MAX) {
        out.extend_from_slice(&[major | 24, value as u8]);
    } else if value <= u64::from(u16::MAX) {
        out.push(major | 25);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= u64::from(u32::MAX) {
        out.push(major | 26);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn encode(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Integer(number) => {
            let (major, magnitude) = if *number >= 0 {
                (0, u64::try_from(*number))
            } else {
                (1, u64::try_from(-1 - *number))
            };
            let magnitude = magnitude.map_err(|_| Error::Cbor {
                offset: out.len(),
                reason: "integer outside the CBOR range",
            })?;
            write_head(major, magnitude, out);
        }
        Value::Bytes(bytes) => {
            write_head(2, bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
        Value::Text(text) => write_text(text, out),
        Value::Array(items) => {
            write_head(4, items.len() as u64, out);
            for item in items {
                encode(item, out)?;
            }
        }
        Value::Map(map) => {
            write_head(5, map.len() as u64, out);
            for (key, item) in canonical_order(map) {
                write_text(key, out);
                encode(item, out)?;
            }
        }
        Value::Link(cid) => {
            write_head(6, CID_TAG, out);
            write_head(2, cid.as_bytes().len() as u64 + 1, out);
            // The multibase "identity" prefix byte DAG-CBOR puts in front of a binary CID.
            out.push(0x00);
            out.extend_from_slice(cid.as_bytes());
        }
    }
    Ok(())
}

fn write_text(text: &str, out: &mut Vec<u8>) {
    write_head(3, text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// DAG-CBOR map order: shorter keys first, then bytewise.
pub(crate) fn canonical_order(map: &BTreeMap<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    entries
}

// ---- decoding ----

struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Decoder<'_> {
    fn error(&self, reason: &'static str) -> Error {
        Error::Cbor {
            offset: self.at,
            reason,
        }
    }

    fn take(&mut self, count: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.error("truncated"))?;
        let slice = self.bytes.get(self.at..end).unwrap_or_default();
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8> {
        let [byte] = self.array::<1>()?;
        Ok(byte)
    }

    /// Reads an item head: (major type, argument).
    fn head(&mut self) -> Result<(u8, u64)> {
        let first = self.byte()?;
        let major = first >> 5;
        let info = first & 0x1f;
        let value = match info {
            0..=23 => u64::from(info),
            24 => {
                let value = u64::from(self.byte()?);
                if value < 24 {
                    return Err(self.error("non-minimal integer"));
                }
                value
            }
            25 => {
                let value = u64::from(u16::from_be_bytes(self.array()?));
                if value <= u64::from(u8::MAX) {
                    return Err(self.error("non-minimal integer"));
                }
                value
            }
            26 if major == 7 => return Err(self.error("floats are not supported")),
            26 => {
                let value = u64::from(u32::from_be_bytes(self.array()?));
                if value <= u64::from(u16::MAX) {
                    return Err(self.error("non-minimal integer"));
                }
                value
            }
            27 if major == 7 => return Err(self.error("floats are not supported")),
            27 => {
                let value = u64::from_be_bytes(self.array()?);
                if value <= u64::from(u32::MAX) {
                    return Err(self.error("non-minimal integer"));
                }
                value
            }
            31 => return Err(self.error("indefinite lengths are not allowed")),
            _ => return Err(self.error("reserved additional information")),
        };
        Ok((major, value))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let start = self.at;
        let slice = self.take(N)?;
        <[u8; N]>::try_from(slice).map_err(|_| Error::Cbor {
            offset: start,
            reason: "truncated",
        })
    }

    fn length(&mut self, value: u64) -> Result<usize> {
        // Every item takes at least one byte, so a length beyond the input is a lie;
        // checking it first keeps a forged length from allocating.
        usize::try_from(value)
            .ok()
            .filter(|&length| length <= self.bytes.len().saturating_sub(self.at))
            .ok_or_else(|| self.error("length exceeds the input"))
    }

    fn text(&mut self, value: u64) -> Result<String> {
        let length = self.length(value)?;
        let start = self.at;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Cbor {
            offset: start,
            reason: "invalid UTF-8 in a string",
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        let start = self.at;
        let (major, argument) = self.head()?;
        Ok(match major {
            0 => Value::Integer(i128::from(argument)),
            1 => Value::Integer(-1 - i128::from(argument)),
            2 => {
                let length = self.length(argument)?;
                Value::Bytes(self.take(length)?.to_vec())
            }
            3 => Value::Text(self.text(argument)?),
            4 => {
                let length = self.length(argument)?;
                let mut items = Vec::with_capacity(length);
                for _ in 0..length {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            5 => {
                let length = self.length(argument)?;
                let mut map = BTreeMap::new();
                for _ in 0..length {
                    let key_start = self.at;
                    let (key_major, key_argument) = self.head()?;
                    if key_major != 3 {
                        return Err(Error::Cbor {
                            offset: key_start,
                            reason: "map keys must be strings",
                        });
                    }
                    let key = self.text(key_argument)?;
                    let item = self.value(depth + 1)?;
                    if map.insert(key, item).is_some() {
                        return Err(Error::Cbor {
                            offset: key_start,
                            reason: "duplicate map key",
                        });
                    }
                }
                Value::Map(map)
            }
            6 => {
                if argument != CID_TAG {
                    return Err(Error::Cbor {
                        offset: start,
                        reason: "only tag 42 (CID) is allowed",
                    });
                }
                let (inner_major, inner_argument) = self.head()?;
                if inner_major != 2 {
                    return Err(self.error("a CID must be a byte string"));
                }
                let length = self.length(inner_argument)?;
                let bytes = self.take(length)?;
                match bytes.split_first() {
                    Some((0x00, cid)) => Value::Link(Cid::from_bytes(cid)?),
                    _ => {
                        return Err(Error::Cbor {
                            offset: start,
                            reason: "a CID must start with the 0x00 prefix",
                        });
                    }
                }
            }
            _ => match argument {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                _ => {
                    return Err(Error::Cbor {
                        offset: start,
                        reason: "unsupported simple value",
                    });
                }
            },
        })
    }
}

// ---- DAG-JSON ----

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Integer(number) => out.push_str(&number.to_string()),
        Value::Bytes(bytes) => {
            out.push_str(r#"{"/":{"bytes":""#);
            out.push_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes));
            out.push_str(r#""}}"#);
        }
        Value::Text(text) => write_json_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Map(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // JavaScript compares strings by UTF-16 code units.
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
        Value::Link(cid) => {
            out.push_str(r#"{"/":""#);
            out.push_str(&cid.to_string());
            out.push_str(r#""}"#);
        }
    }
}

/// Escapes like `JSON.stringify`: only `"`, `\` and control characters.
pub(crate) fn write_json_string(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
        )
    }

    #[test]
    fn integers_use_the_shortest_form() {
        let cases: [(i128, &str); 9] = [
            (0, "00"),
            (23, "17"),
            (24, "1818"),
            (255, "18ff"),
            (256, "190100"),
            (2_000_000_000, "1a77359400"),
            (1 << 32, "1b0000000100000000"),
            (-1, "20"),
            (-25, "3818"),
        ];
        for (number, hex) in cases {
            let bytes = Value::Integer(number).to_dag_cbor().unwrap();
            assert_eq!(hex::encode(&bytes), hex);
            assert_eq!(
                Value::from_dag_cbor(&bytes).unwrap(),
                Value::Integer(number)
            );
        }
    }

    #[test]
    fn maps_are_written_length_first() {
        let value = map(&[
            ("prf", Value::Array(vec![])),
            ("s", Value::Null),
            ("att", Value::Null),
            ("v", Value::Null),
        ]);
        let bytes = value.to_dag_cbor().unwrap();
        assert_eq!(hex::encode(&bytes), "a46173f66176f663617474f66370726680");
        assert_eq!(Value::from_dag_cbor(&bytes).unwrap(), value);
    }

    #[test]
    fn rejects_what_dag_cbor_forbids() {
        let cases = [
            ("1817", "non-minimal integer"),
            ("190017", "non-minimal integer"),
            ("9fff", "indefinite lengths are not allowed"),
            ("a2616100616101", "duplicate map key"),
            ("a10000", "map keys must be strings"),
            ("fb3ff0000000000000", "floats are not supported"),
            ("f7", "unsupported simple value"),
            ("c074", "only tag 42 (CID) is allowed"),
            ("d82a4401711220", "a CID must start with the 0x00 prefix"),
            ("1901", "truncated"),
            ("6261", "length exceeds the input"),
            ("0000", "trailing bytes after the value"),
            ("62c328", "invalid UTF-8 in a string"),
            ("5bffffffffffffffff", "length exceeds the input"),
        ];
        for (hex, expected) in cases {
            match Value::from_dag_cbor(&hex::decode(hex).unwrap()) {
                Err(Error::Cbor { reason, .. }) => assert_eq!(reason, expected, "{hex}"),
                other => panic!("{hex}: {other:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let bytes = vec![0x81; 100_000];
        assert!(matches!(
            Value::from_dag_cbor(&bytes),
            Err(Error::Cbor {
                reason: "nested too deeply",
                ..
            })
        ));
    }

    #[test]
    fn dag_json_sorts_keys_and_escapes_like_json_stringify() {
        let value = map(&[
            ("with", Value::from("a\"b\\c\n\u{1}é")),
            ("can", Value::Bytes(vec![1, 2, 3, 4])),
            (
                "nb",
                Value::Array(vec![Value::Integer(-5), Value::Null, Value::Bool(true)]),
            ),
        ]);
        assert_eq!(
            value.to_dag_json(),
            r#"{"can":{"/":{"bytes":"AQIDBA"}},"nb":[-5,null,true],"with":"a\"b\\c\n\u0001é"}"#
        );
    }
}
