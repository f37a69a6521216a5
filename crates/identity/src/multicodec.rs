//! Multicodec codes and unsigned-varint (LEB128) encoding, as multiformats uses them.
//!
//! Exposed because other Delibera crates (UCAN principals, CIDs) need the same
//! few codes and the same varint rules.

/// `ed25519-pub`: the tag in front of a did:key's public key.
pub const ED25519_PUB: u64 = 0xed;
/// `ed25519-priv`: the tag in front of a ucanto private key's seed.
pub const ED25519_PRIV: u64 = 0x1300;

/// The multicodec table name of a key codec, for error messages.
pub fn codec_name(code: u64) -> &'static str {
    match code {
        0xe7 => "secp256k1-pub",
        0xea => "bls12_381-g1-pub",
        0xeb => "bls12_381-g2-pub",
        0xec => "x25519-pub",
        0xed => "ed25519-pub",
        0x1200 => "p256-pub",
        0x1201 => "p384-pub",
        0x1202 => "p521-pub",
        0x1205 => "rsa-pub",
        0x1300 => "ed25519-priv",
        0x1306 => "secp256k1-priv",
        0x0d1d => "did-core (non-key DID)",
        _ => "unknown",
    }
}

/// Appends `value` as an unsigned varint (LEB128, 7 bits per byte, low first).
pub fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned varint from the start of `bytes`.
///
/// Returns the value and how many bytes it took, or `None` when the varint is
/// truncated, longer than 9 bytes (the multiformats limit) or not minimally
/// encoded.
pub fn decode_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(9) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero byte after the first would be a non-minimal encoding.
            if byte == 0 && i > 0 {
                return None;
            }
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_encode_as_multiformats_does() {
        let mut out = Vec::new();
        encode_varint(ED25519_PUB, &mut out);
        assert_eq!(out, [0xed, 0x01]);
        out.clear();
        encode_varint(ED25519_PRIV, &mut out);
        assert_eq!(out, [0x80, 0x26]);
        out.clear();
        encode_varint(0xd0ed, &mut out);
        assert_eq!(out, [0xed, 0xa1, 0x03]);
    }

    #[test]
    fn decode_round_trips_and_rejects_bad_input() {
        for value in [
            0u64,
            1,
            0x7f,
            0x80,
            0xed,
            0x1300,
            u32::MAX as u64,
            (1 << 63) - 1,
        ] {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            assert_eq!(decode_varint(&out), Some((value, out.len())));
        }
        assert_eq!(decode_varint(&[]), None);
        assert_eq!(decode_varint(&[0x80]), None, "truncated");
        assert_eq!(decode_varint(&[0x81, 0x00]), None, "non-minimal");
        assert_eq!(decode_varint(&[0xff; 10]), None, "too long");
    }
}
