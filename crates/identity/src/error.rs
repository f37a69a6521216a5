//! The one error type of this crate.

/// Why a key, DID or signature was rejected.
///
/// Messages never contain secret material: a rejected private key is described,
/// never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a DID at all (it must look like `did:<method>:<id>`).
    #[error("not a DID: expected `did:<method>:<id>`, got {input:?}")]
    NotADid {
        /// The rejected text (DIDs are public, so it is safe to show).
        input: String,
    },
    /// A well-formed DID of a method other than `did:key`.
    #[error("unsupported DID method `{method}`: only did:key is supported")]
    NotDidKey {
        /// The method that was found, e.g. `web`.
        method: String,
    },
    /// The multibase prefix is not the one this format uses.
    #[error("wrong multibase encoding for {what}: expected {expected}, found {found}")]
    WrongMultibase {
        /// What was being parsed.
        what: &'static str,
        /// The encoding the format requires, e.g. `base58btc ('z')`.
        expected: &'static str,
        /// The encoding (or prefix character) that was found.
        found: String,
    },
    /// The characters are not valid in the encoding the format uses.
    #[error("invalid {encoding} in {what}")]
    InvalidEncoding {
        /// What was being parsed.
        what: &'static str,
        /// The encoding that failed, e.g. `base58btc`.
        encoding: &'static str,
    },
    /// The key is tagged with a multicodec other than `ed25519-pub`.
    #[error("unsupported key codec {name} (0x{code:x}): only ed25519-pub (0xed) is supported")]
    UnsupportedKeyCodec {
        /// The multicodec code found in front of the key.
        code: u64,
        /// Its multicodec table name, or `unknown`.
        name: &'static str,
    },
    /// The decoded bytes have the wrong length.
    #[error("wrong length for {what}: expected {expected} bytes, got {actual}")]
    WrongLength {
        /// What was being parsed.
        what: &'static str,
        /// The length the format requires.
        expected: usize,
        /// The length that was found.
        actual: usize,
    },
    /// The 32 bytes are not a valid Ed25519 public key (not a point on the curve).
    #[error("invalid Ed25519 public key: the bytes are not a curve point")]
    InvalidPublicKey,
    /// The bytes are not a ucanto Ed25519 private key (`80 26` ‖ seed ‖ `ed 01` ‖ public key).
    #[error("not a ucanto Ed25519 private key: {reason}")]
    NotUcantoPrivateKey {
        /// Which part of the layout is wrong.
        reason: &'static str,
    },
    /// A secret key carries a public half that is not the one its seed derives.
    #[error("the {format} private key's public half does not match its seed")]
    KeyMismatch {
        /// Which key format, e.g. `ucanto` or `NEAR`.
        format: &'static str,
    },
    /// A NEAR key string of a curve other than Ed25519.
    #[error("unsupported NEAR key type `{key_type}`: only ed25519 is supported")]
    UnsupportedNearKeyType {
        /// The key type prefix found, e.g. `secp256k1`.
        key_type: String,
    },
    /// A NEAR account id broke one of NEAR's naming rules.
    #[error("invalid NEAR account id {account_id:?}: {rule}")]
    InvalidAccountId {
        /// The rejected text (account ids are public).
        account_id: String,
        /// The rule it broke.
        rule: crate::AccountIdRule,
    },
    /// The signature does not verify for this message and public key.
    #[error("signature verification failed")]
    InvalidSignature,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
