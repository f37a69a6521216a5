//! NEP-413 signed messages: what a NEAR wallet's `signMessage` returns, and
//! the request credential `Authorization: NEP413 <base64url JSON>` built from
//! one, so a browser user proves which account sends a request without
//! holding any secret of the server.
//!
//! The signature covers `sha256(borsh(u32 2^31 + 413) ‖ borsh({message,
//! nonce, recipient, callbackUrl}))`, as near-api-js and the wallets compute
//! it. A request credential's `message` is
//! `<METHOD> <path>\n<hex SHA-256 of the body>\n<unix milliseconds>`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use delibera_identity::{AccountId, Keypair, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The borsh prefix that keeps a NEP-413 payload from ever being a valid
/// transaction: `2^31 + 413`.
pub const NEP413_TAG: u32 = (1 << 31) + 413;

/// The `Authorization` scheme of a request credential.
pub const NEP413_SCHEME: &str = "NEP413";

/// A message signed by a NEAR account's key, as a wallet's `signMessage`
/// returns it (and as the request credential carries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMessage {
    /// The account the signer claims to act for.
    pub account_id: AccountId,
    /// The key that signed; only an access key of `account_id` proves it.
    pub public_key: PublicKey,
    /// Ed25519 over [`SignedMessage::payload_hash`].
    pub signature: Signature,
    /// The text that was signed.
    pub message: String,
    /// 32 bytes chosen by the signer, so no two signatures are alike.
    pub nonce: [u8; 32],
    /// Who the message is for; a verifier accepts only its own name.
    pub recipient: String,
    /// NEP-413's optional callback URL (part of the signed payload).
    pub callback_url: Option<String>,
}

/// The JSON form inside the header: what wallets return, field for field.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    account_id: String,
    public_key: String,
    signature: String,
    message: String,
    nonce: String,
    recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    callback_url: Option<String>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        what: "NEP-413 credential",
        reason: reason.into(),
    }
}

/// Base64 as wallets and browsers write it: standard or URL-safe alphabet,
/// padded or not.
fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>> {
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| invalid(format!("{what} is not base64")))
}

impl SignedMessage {
    /// Signs `message` for `recipient` as `account_id` with `key`, as a
    /// wallet's `signMessage` does (no callback URL).
    pub fn sign(
        key: &Keypair,
        account_id: AccountId,
        message: impl Into<String>,
        nonce: [u8; 32],
        recipient: impl Into<String>,
    ) -> Self {
        let message = message.into();
        let recipient = recipient.into();
        let signature = key.sign(&payload_hash(&message, &nonce, &recipient, None));
        Self {
            account_id,
            public_key: key.public_key(),
            signature,
            message,
            nonce,
            recipient,
            callback_url: None,
        }
    }

    /// SHA-256 of the tagged borsh payload: the bytes the key signs.
    pub fn payload_hash(&self) -> [u8; 32] {
        payload_hash(
            &self.message,
            &self.nonce,
            &self.recipient,
            self.callback_url.as_deref(),
        )
    }

    /// Checks the signature against `public_key`. It says nothing about
    /// whether the key belongs to `account_id`: ask the chain for that.
    pub fn verify_signature(&self) -> Result<()> {
        self.public_key
            .verify(&self.payload_hash(), &self.signature)
            .map_err(|_| invalid("the signature does not match the message and key"))
    }

    /// Reads the wallet's JSON (`{accountId, publicKey, signature, message,
    /// nonce, recipient[, callbackUrl]}`).
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let envelope: Envelope = serde_json::from_slice(json).map_err(|error| {
            invalid(format!(
                "not the JSON a wallet's signMessage returns ({error})"
            ))
        })?;
        let account_id = AccountId::parse(&envelope.account_id)
            .map_err(|error| invalid(format!("accountId: {error}")))?;
        let public_key = PublicKey::from_near_str(&envelope.public_key)
            .map_err(|error| invalid(format!("publicKey: {error}")))?;
        let signature = Signature::from_bytes(&decode_base64(&envelope.signature, "signature")?)
            .map_err(|error| invalid(format!("signature: {error}")))?;
        let nonce: [u8; 32] = decode_base64(&envelope.nonce, "nonce")?
            .try_into()
            .map_err(|_| invalid("nonce must be 32 bytes"))?;
        Ok(Self {
            account_id,
            public_key,
            signature,
            message: envelope.message,
            nonce,
            recipient: envelope.recipient,
            callback_url: envelope.callback_url,
        })
    }

    /// The wallet's JSON form.
    pub fn to_json(&self) -> String {
        let envelope = Envelope {
            account_id: self.account_id.to_string(),
            public_key: self.public_key.to_near_string(),
            signature: STANDARD.encode(self.signature.as_bytes()),
            message: self.message.clone(),
            nonce: STANDARD.encode(self.nonce),
            recipient: self.recipient.clone(),
            callback_url: self.callback_url.clone(),
        };
        serde_json::to_string(&envelope).expect("strings serialize")
    }

    /// Reads an `Authorization` header value `NEP413 <base64url JSON>`.
    pub fn from_authorization(value: &str) -> Result<Self> {
        let (scheme, credential) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| invalid("expected `NEP413 <base64url JSON>`"))?;
        if !scheme.eq_ignore_ascii_case(NEP413_SCHEME) {
            return Err(invalid(format!("the scheme is {scheme}, not NEP413")));
        }
        Self::from_json(&decode_base64(credential.trim(), "the credential")?)
    }

    /// The `Authorization` header value: `NEP413 <base64url JSON>`.
    pub fn to_authorization(&self) -> String {
        format!("{NEP413_SCHEME} {}", URL_SAFE_NO_PAD.encode(self.to_json()))
    }
}

/// What a request credential's message claims about the request it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The HTTP method, as sent (`PUT`).
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Lowercase hex SHA-256 of the body (of nothing, for an empty body).
    pub body_sha256: String,
    /// When it was signed, in Unix milliseconds.
    pub unix_ms: u64,
}

impl SignedRequest {
    /// The claim for a request: the method, the path (its query, if any, is
    /// not part of it), the body's digest and the time.
    pub fn new(method: &str, path: &str, body: &[u8], unix_ms: u64) -> Self {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            body_sha256: hex_sha256(body),
            unix_ms,
        }
    }

    /// The message to sign: `<METHOD> <path>\n<hex SHA-256 of the body>\n<unix ms>`.
    pub fn message(&self) -> String {
        format!(
            "{} {}\n{}\n{}",
            self.method, self.path, self.body_sha256, self.unix_ms
        )
    }

    /// Reads a signed message back into its claim.
    pub fn parse(message: &str) -> Result<Self> {
        let shape =
            || invalid("message is not `<METHOD> <path>\\n<hex SHA-256 of the body>\\n<unix ms>`");
        let mut lines = message.split('\n');
        let (Some(request_line), Some(digest), Some(time), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(shape());
        };
        let (method, path) = request_line.split_once(' ').ok_or_else(shape)?;
        let is_hex = digest.len() == 64
            && digest
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if method.is_empty() || !path.starts_with('/') || path.contains(' ') || !is_hex {
            return Err(shape());
        }
        let unix_ms = time.parse().map_err(|_| shape())?;
        Ok(Self {
            method: method.to_owned(),
            path: path.to_owned(),
            body_sha256: digest.to_owned(),
            unix_ms,
        })
    }
}

/// SHA-256 of `borsh(u32 NEP413_TAG) ‖ borsh({message, nonce, recipient,
/// callbackUrl})`.
fn payload_hash(
    message: &str,
    nonce: &[u8; 32],
    recipient: &str,
    callback_url: Option<&str>,
) -> [u8; 32] {
    fn string(hasher: &mut Sha256, text: &str) {
        // Header values and wallet messages are far below 4 GiB.
        let length = u32::try_from(text.len()).unwrap_or(u32::MAX);
        hasher.update(length.to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let mut hasher = Sha256::new();
    hasher.update(NEP413_TAG.to_le_bytes());
    string(&mut hasher, message);
    hasher.update(nonce);
    string(&mut hasher, recipient);
    match callback_url {
        None => hasher.update([0]),
        Some(url) => {
            hasher.update([1]);
            string(&mut hasher, url);
        }
    }
    hasher.finalize().into()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_2_to_the_31_plus_413() {
        assert_eq!(NEP413_TAG, 2_147_484_061);
    }

    #[test]
    fn a_request_message_round_trips_and_drops_the_query() {
        let claim = SignedRequest::new("DELETE", "/api/workers/w?x=1", b"", 1_764_504_000_000);
        assert_eq!(claim.path, "/api/workers/w");
        assert_eq!(
            claim.body_sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(SignedRequest::parse(&claim.message()).unwrap(), claim);
        for bad in [
            "",
            "PUT /x",
            "PUT /x\nabc\n1",
            "PUT x\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n1",
            "PUT /x\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nsoon",
            "PUT /x\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n1\nmore",
        ] {
            assert!(SignedRequest::parse(bad).is_err(), "{bad:?}");
        }
    }
}
