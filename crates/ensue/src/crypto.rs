//! Value encryption compatible with the TypeScript worker's `local-crypto.ts`.
//!
//! Stored form: `aes256gcm:` + standard padded base64 of
//! `iv (12 bytes) ‖ AES-256-GCM ciphertext ‖ tag (16 bytes)`, no associated data.
//! The AES key is `HMAC-SHA256(key = keyBytes, message = "delibera-ensue-cache-v1")`,
//! where `keyBytes` is the agent's private-key string decoded exactly as Node's
//! `Buffer.from(s, 'base64')` decodes it (the whole string, the multibase `M`
//! included), or as `Buffer.from(s, 'hex')` when that gives under 16 bytes.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The prefix of every encrypted value.
pub const ENCRYPTED_PREFIX: &str = "aes256gcm:";

/// The HMAC message that turns key material into the AES key.
const KDF_MESSAGE: &[u8] = b"delibera-ensue-cache-v1";

/// Length of the random IV in front of every ciphertext.
pub const IV_LENGTH: usize = 12;

/// Length of the GCM tag at the end of every ciphertext.
pub const TAG_LENGTH: usize = 16;

/// Below this many bytes of base64 output the TypeScript worker decodes the key as hex.
const MIN_BASE64_KEY_BYTES: usize = 16;

/// The AES-256 key that seals and unseals Ensue values. Zeroized on drop,
/// never printed.
#[derive(Clone)]
pub struct CacheKey {
    aes_key: Zeroizing<[u8; 32]>,
}

impl CacheKey {
    /// Derives the key from a private-key string as the TypeScript worker does (e.g.
    /// `STORACHA_AGENT_PRIVATE_KEY`, `MgCY…`).
    pub fn from_private_key(private_key: &str) -> Result<Self> {
        Self::from_key_material(&key_material(private_key))
    }

    /// Derives the key from raw key material (`keyBytes`).
    pub fn from_key_material(key_material: &[u8]) -> Result<Self> {
        if key_material.is_empty() {
            return Err(Error::EmptyEncryptionKey);
        }
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key_material)
            .map_err(|_| Error::EmptyEncryptionKey)?;
        mac.update(KDF_MESSAGE);
        let mut aes_key = Zeroizing::new([0u8; 32]);
        aes_key.copy_from_slice(&mac.finalize().into_bytes());
        Ok(Self { aes_key })
    }

    /// The derived AES key, for checking the derivation against known answers.
    pub fn aes_key_bytes(&self) -> &[u8; 32] {
        &self.aes_key
    }

    /// Encrypts `plaintext` (the TypeScript worker seals `JSON.stringify(value)`) with
    /// a fresh random IV.
    pub fn seal(&self, plaintext: &str) -> Result<String> {
        let mut iv = [0u8; IV_LENGTH];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
        self.seal_with_iv(plaintext, iv)
    }

    /// Encrypts with a caller-chosen IV. Only for known-answer tests: reusing
    /// an IV under the same key breaks GCM, so real writes use [`seal`](Self::seal).
    pub fn seal_with_iv(&self, plaintext: &str, iv: [u8; IV_LENGTH]) -> Result<String> {
        // GCM refuses plaintexts over 64 GiB; nothing else can fail.
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&iv), plaintext.as_bytes())
            .map_err(|_| Error::PlaintextTooLarge)?;
        let mut payload = Vec::with_capacity(IV_LENGTH + ciphertext.len());
        payload.extend_from_slice(&iv);
        payload.extend_from_slice(&ciphertext);
        Ok(format!(
            "{ENCRYPTED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(payload)
        ))
    }

    /// Decrypts an `aes256gcm:` value.
    ///
    /// Fails with a typed error when the value is not sealed, not base64, too
    /// short, sealed under another key or tampered with; never returns garbage.
    pub fn unseal(&self, stored: &str) -> Result<String> {
        let payload = stored
            .strip_prefix(ENCRYPTED_PREFIX)
            .ok_or(Error::NotSealed)?;
        let is_base64_text = payload.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '+' | '/' | '-' | '_' | '=')
                || c.is_whitespace()
        });
        if !is_base64_text {
            return Err(Error::CiphertextNotBase64);
        }
        // Canonical padded base64 (what both implementations write) decodes
        // the same either way; the strict decoder is just faster.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap_or_else(|_| node_base64_decode(payload));
        if bytes.len() < IV_LENGTH + TAG_LENGTH {
            return Err(Error::CiphertextTooShort { len: bytes.len() });
        }
        let (iv, ciphertext) = bytes.split_at(IV_LENGTH);
        let plaintext = self
            .cipher()
            .decrypt(Nonce::from_slice(iv), ciphertext)
            .map_err(|_| Error::DecryptionFailed)?;
        String::from_utf8(plaintext).map_err(|_| Error::PlaintextNotUtf8)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.aes_key.as_ref().into())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheKey(<redacted>)")
    }
}

/// Whether `value` is in the encrypted form (starts with `aes256gcm:`).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(ENCRYPTED_PREFIX)
}

/// The TypeScript worker's `keyBytes`: Node's lenient base64 of the whole string, or
/// Node's lenient hex when that gives under 16 bytes.
pub fn key_material(private_key: &str) -> Zeroizing<Vec<u8>> {
    let from_base64 = Zeroizing::new(node_base64_decode(private_key));
    if from_base64.len() >= MIN_BASE64_KEY_BYTES {
        from_base64
    } else {
        Zeroizing::new(node_hex_decode(private_key))
    }
}

/// Node's `Buffer.from(text, 'base64')`, byte for byte (Node 20's
/// `src/base64-inl.h`): both alphabets, characters outside them skipped,
/// decoding stops at the first `=`, and a final partial group yields what its
/// whole bytes hold.
pub fn node_base64_decode(text: &str) -> Vec<u8> {
    // Node reads a JavaScript string by UTF-16 code unit, keeping the low
    // byte; for ASCII text that is the text's own bytes.
    let src: std::borrow::Cow<'_, [u8]> = if text.is_ascii() {
        text.as_bytes().into()
    } else {
        text.encode_utf16()
            .map(|unit| unit as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    // The buffer Node allocates (`base64ByteLength`): padding off, then 3/4.
    let mut unpadded = src.len();
    if unpadded > 0 && src.get(unpadded - 1) == Some(&b'=') {
        unpadded -= 1;
    }
    if unpadded > 1 && src.get(unpadded - 1) == Some(&b'=') {
        unpadded -= 1;
    }
    let dst_len = unpadded * 3 / 4;
    let mut dst = vec![0u8; dst_len];
    let k = base64_decode_fast(&mut dst, &src);
    dst.truncate(k);
    dst
}

/// `base64_decoded_size`: the size computed from the source alone.
fn base64_decoded_size(src: &[u8]) -> usize {
    if src.len() < 2 {
        return 0;
    }
    let mut size = src.len();
    if src.get(size - 1) == Some(&b'=') {
        size -= 1;
        if src.get(size - 1) == Some(&b'=') {
            size -= 1;
        }
    }
    if size > 1 {
        (size / 4) * 3 + (size % 4).div_ceil(2)
    } else {
        0
    }
}

/// `unbase64`: the sextet of a character, or 255 when it is not in either alphabet.
fn unbase64(c: u8) -> u8 {
    match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => 255,
    }
}

/// `base64_decode_fast`: whole groups of four legal characters at a time,
/// the slow path for anything else. Returns the number of bytes written.
fn base64_decode_fast(dst: &mut [u8], src: &[u8]) -> usize {
    let available = dst.len().min(base64_decoded_size(src));
    let max_k = available / 3 * 3;
    let mut max_i = src.len() / 4 * 4;
    let mut i = 0;
    let mut k = 0;
    while i < max_i && k < max_k {
        let group = [
            unbase64(src[i]),
            unbase64(src[i + 1]),
            unbase64(src[i + 2]),
            unbase64(src[i + 3]),
        ];
        if group.iter().any(|&sextet| sextet & 0x80 != 0) {
            if !base64_decode_group_slow(dst, src, &mut i, &mut k) {
                return k;
            }
            max_i = i + (src.len() - i) / 4 * 4;
        } else {
            dst[k] = (group[0] << 2) | (group[1] >> 4);
            dst[k + 1] = (group[1] << 4) | (group[2] >> 2);
            dst[k + 2] = (group[2] << 6) | group[3];
            k += 3;
            i += 4;
        }
    }
    if i < src.len() && k < dst.len() {
        base64_decode_group_slow(dst, src, &mut i, &mut k);
    }
    k
}

/// `base64_decode_group_slow`: one group of four legal characters, skipping
/// illegal ones. Returns whether decoding may continue.
fn base64_decode_group_slow(dst: &mut [u8], src: &[u8], i: &mut usize, k: &mut usize) -> bool {
    // Reads the next legal sextet; None means "stop decoding".
    let next = |i: &mut usize| -> Option<u8> {
        loop {
            let c = *src.get(*i)?;
            let sextet = unbase64(c);
            *i += 1;
            if sextet < 64 {
                return Some(sextet);
            }
            if c == b'=' || *i >= src.len() {
                return None;
            }
        }
    };
    // After each sextet Node checks for the end of input and a full buffer.
    let (src_len, dst_len) = (src.len(), dst.len());
    let room = |i: &usize, k: &usize| *i < src_len && *k < dst_len;

    let Some(first) = next(i) else { return false };
    if !room(i, k) {
        return false;
    }
    let Some(second) = next(i) else { return false };
    dst[*k] = ((first & 0x3f) << 2) | ((second & 0x30) >> 4);
    *k += 1;
    if !room(i, k) {
        return false;
    }
    let Some(third) = next(i) else { return false };
    dst[*k] = ((second & 0x0f) << 4) | ((third & 0x3c) >> 2);
    *k += 1;
    if !room(i, k) {
        return false;
    }
    let Some(fourth) = next(i) else { return false };
    dst[*k] = ((third & 0x03) << 6) | (fourth & 0x3f);
    *k += 1;
    room(i, k)
}

/// Node's `Buffer.from(text, 'hex')`: pairs of hex digits up to the first
/// pair that is not one; a trailing odd digit is dropped.
pub fn node_hex_decode(text: &str) -> Vec<u8> {
    let src: Vec<u8> = text.encode_utf16().map(|unit| unit as u8).collect();
    src.chunks_exact(2)
        .map_while(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            u8::try_from(high << 4 | low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_base64_leniency() {
        // Both alphabets, whitespace skipped, stop at the first '='.
        assert_eq!(node_base64_decode("+/+/"), node_base64_decode("-_-_"));
        assert_eq!(node_base64_decode("QU JD\nRA=="), b"ABCD");
        assert_eq!(node_base64_decode("QQ==QUJD"), b"A");
        // Partial final groups: two characters → one byte, three → two, one → none.
        assert_eq!(node_base64_decode("QUJDRA"), b"ABCD");
        assert_eq!(node_base64_decode("QUJDREU"), b"ABCDE");
        assert_eq!(node_base64_decode("QUJDR"), b"ABC");
        assert_eq!(node_base64_decode(""), b"");
        assert_eq!(node_base64_decode("!!!!"), b"");
    }

    #[test]
    fn node_hex_leniency() {
        assert_eq!(node_hex_decode("deadBEEF"), [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(node_hex_decode("abc"), [0xab]);
        assert_eq!(node_hex_decode("abzzcd"), [0xab]);
        assert!(node_hex_decode("zz").is_empty());
    }

    #[test]
    fn empty_key_material_is_rejected() {
        assert!(matches!(
            CacheKey::from_private_key(""),
            Err(Error::EmptyEncryptionKey)
        ));
        assert!(matches!(
            CacheKey::from_private_key("zz"),
            Err(Error::EmptyEncryptionKey)
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let key = CacheKey::from_key_material(b"0123456789abcdef").unwrap();
        assert_eq!(format!("{key:?}"), "CacheKey(<redacted>)");
    }
}
