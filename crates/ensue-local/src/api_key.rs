//! API keys: generated in the hosted service's `lmn_<hex>` form, stored only as digests.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The longest API key accepted from configuration.
const MAX_API_KEY_LEN: usize = 256;

/// A bearer API key.
///
/// `Debug` never shows it; [`ApiKey::expose`] is the one way to read it, so
/// every place that prints or sends a key is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A fresh random key, `lmn_` followed by 64 lowercase hex digits (the
    /// hosted service's keys match `lmn_[a-f0-9]*`).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        ApiKey(format!("lmn_{}", hex::encode(bytes)))
    }

    /// Accepts a configured key: 1–256 visible ASCII characters.
    ///
    /// # Examples
    ///
    /// ```
    /// use delibera_ensue_local::ApiKey;
    ///
    /// let key = ApiKey::new("lmn_local_test_key")?;
    /// assert_eq!(key.expose(), "lmn_local_test_key");
    /// assert!(!format!("{key:?}").contains("lmn_"));
    /// assert!(ApiKey::new("has a space").is_err());
    /// # Ok::<(), delibera_ensue_local::Error>(())
    /// ```
    pub fn new(text: impl Into<String>) -> Result<Self> {
        let text = text.into();
        if text.is_empty() {
            return Err(Error::InvalidApiKey {
                reason: "it is empty",
            });
        }
        if text.len() > MAX_API_KEY_LEN {
            return Err(Error::InvalidApiKey {
                reason: "it is longer than 256 characters",
            });
        }
        if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Error::InvalidApiKey {
                reason: "only visible ASCII characters are allowed (no spaces)",
            });
        }
        Ok(ApiKey(text))
    }

    /// The key's text, to put in an `Authorization: Bearer` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps instead of the key itself.
    pub(crate) fn digest(&self) -> [u8; 32] {
        digest_of(&self.0)
    }
}

/// The SHA-256 digest of a presented bearer token.
pub(crate) fn digest_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        ApiKey::new(text)
    }
}

/// A short random hex code, for claim tokens and verification codes.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_hosted_form_and_differ() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a, b);
        let hex_part = a.expose().strip_prefix("lmn_").unwrap();
        assert_eq!(hex_part.len(), 64);
        assert!(
            hex_part
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
    }

    #[test]
    fn configured_keys_are_checked() {
        assert!(ApiKey::new("").is_err());
        assert!(ApiKey::new("tab\there").is_err());
        assert!(ApiKey::new("x".repeat(257)).is_err());
        assert!(ApiKey::new("x".repeat(256)).is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let key = ApiKey::new("lmn_secret").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }
}
