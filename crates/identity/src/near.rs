//! NEAR key string helpers (`ed25519:<base58>`), shared by public and secret keys.

use crate::{Error, Result};

/// Strips an optional `ed25519:` prefix; near-api-js reads a bare string as
/// Ed25519 too. Any other key type is refused by name.
pub(crate) fn strip_key_type(text: &str) -> Result<&str> {
    match text.split_once(':') {
        None => Ok(text),
        Some((key_type, rest)) if key_type.eq_ignore_ascii_case("ed25519") => Ok(rest),
        Some((key_type, _)) => Err(Error::UnsupportedNearKeyType {
            key_type: key_type.to_owned(),
        }),
    }
}

pub(crate) fn decode_base58(text: &str, what: &'static str) -> Result<Vec<u8>> {
    bs58::decode(text)
        .into_vec()
        .map_err(|_| Error::InvalidEncoding {
            what,
            encoding: "base58",
        })
}
