//! The one error type of this crate.

use std::path::PathBuf;

/// Why a delegation could not be built, read or verified.
///
/// Parsing failures (`InvalidText` … `ProofGraphTooLarge`) say the bytes are not
/// a delegation archive we understand; verification failures (`BlockCidMismatch`
/// … `CapabilityEscalation`, see [`Error::is_verification_failure`]) say the
/// archive is well formed but must not be trusted. Messages name CIDs, DIDs and
/// abilities (all public), never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The proof text is neither the `mAYIEA…` identity-CID form nor padded base64.
    #[error("not a delegation proof text: {reason}")]
    InvalidText {
        /// What is wrong with the text.
        reason: &'static str,
    },
    /// The bytes are not DAG-CBOR (malformed, non-minimal, indefinite, duplicate keys, …).
    #[error("invalid DAG-CBOR at byte {offset}: {reason}")]
    Cbor {
        /// Offset of the offending item within its block.
        offset: usize,
        /// What rule was broken.
        reason: &'static str,
    },
    /// A CID is malformed or of an unsupported version.
    #[error("invalid CID: {reason}")]
    InvalidCid {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The archive is not a well-formed CARv1.
    #[error("invalid CAR archive: {reason}")]
    Car {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A block the archive needs (its root or the delegation it names) is not in it.
    #[error("block {cid} is not in the archive")]
    MissingBlock {
        /// The CID that was looked up.
        cid: String,
    },
    /// The archive's root is not the `{"ucan@0.9.1": link}` variant ucanto writes.
    #[error("not a ucanto delegation archive: {reason}")]
    NotADelegationArchive {
        /// What is wrong with the root.
        reason: &'static str,
    },
    /// A block is DAG-CBOR but not a UCAN 0.9.1 as dag-ucan reads it.
    #[error("malformed UCAN block {cid}: {reason}")]
    MalformedUcan {
        /// The block's CID.
        cid: String,
        /// Which field is missing or of the wrong type.
        reason: String,
    },
    /// An ability is not lowercase, or has no `/` and is not `*`.
    #[error("invalid ability {ability:?}: abilities are lowercase and contain `/` (or are `*`)")]
    InvalidAbility {
        /// The rejected ability.
        ability: String,
    },
    /// A capability's `with` is not a URI.
    #[error("invalid capability resource {with:?}: not a URI")]
    InvalidResource {
        /// The rejected resource.
        with: String,
    },
    /// A principal (issuer or audience) is not a DID we can encode or decode.
    #[error("invalid principal: {reason}")]
    InvalidPrincipal {
        /// What is wrong with it.
        reason: String,
    },
    /// A key or DID was rejected by `delibera-identity`.
    #[error(transparent)]
    Identity(#[from] delibera_identity::Error),
    /// The archive's proofs nest too deeply or fan out too far to walk safely.
    #[error("the proof graph is too large (more than {limit} delegations)")]
    ProofGraphTooLarge {
        /// The limit that was hit.
        limit: usize,
    },
    /// A block's bytes do not hash to its CID.
    #[error("block {cid} does not hash to its CID")]
    BlockCidMismatch {
        /// The CID the block was stored under.
        cid: String,
    },
    /// A CID uses a multihash we cannot check (only sha2-256 and identity are supported).
    #[error("unsupported multihash 0x{code:x} in {cid}")]
    UnsupportedHash {
        /// The CID.
        cid: String,
        /// Its multihash code.
        code: u64,
    },
    /// A block decodes but is not in canonical DAG-CBOR form (e.g. map keys out of order).
    #[error("block {cid} is not canonical DAG-CBOR")]
    NonCanonicalBlock {
        /// The block's CID.
        cid: String,
    },
    /// The Ed25519 signature does not verify over the rebuilt signed payload.
    #[error("invalid signature on {cid} (issuer {issuer})")]
    InvalidSignature {
        /// The delegation's CID.
        cid: String,
        /// Its issuer.
        issuer: String,
    },
    /// The signature is not an Ed25519 varsig (`ed a1 03 40` ‖ 64 bytes).
    #[error("unsupported or malformed signature on {cid}: {reason}")]
    UnsupportedSignature {
        /// The delegation's CID.
        cid: String,
        /// What was found instead.
        reason: String,
    },
    /// The issuer is not an Ed25519 did:key, so its signature cannot be checked.
    #[error(
        "cannot verify a signature by {issuer} on {cid}: only Ed25519 did:key issuers are supported"
    )]
    UnverifiableIssuer {
        /// The delegation's CID.
        cid: String,
        /// Its issuer.
        issuer: String,
    },
    /// The delegation expired (`exp` ≤ now).
    #[error("delegation {cid} expired at {expiration} (now {now})")]
    Expired {
        /// The delegation's CID.
        cid: String,
        /// Its `exp`.
        expiration: u64,
        /// The clock used.
        now: u64,
    },
    /// The delegation is not valid yet (now ≤ `nbf`).
    #[error("delegation {cid} is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The delegation's CID.
        cid: String,
        /// Its `nbf`.
        not_before: u64,
        /// The clock used.
        now: u64,
    },
    /// A proof was delegated to someone other than the issuer that cites it.
    #[error("proof {proof} is delegated to {audience}, but it is cited by {issuer}")]
    AudienceMismatch {
        /// The proof's CID.
        proof: String,
        /// The proof's audience.
        audience: String,
        /// The issuer of the delegation that cites the proof.
        issuer: String,
    },
    /// A capability could only come from a proof that the archive does not contain.
    #[error("delegation {cid} cites proof {proof}, which is not in the archive")]
    MissingProof {
        /// The citing delegation's CID.
        cid: String,
        /// The absent proof's CID.
        proof: String,
    },
    /// A capability is neither self-issued nor covered by any valid proof.
    #[error("delegation {cid} claims {can} on {with}, which none of its proofs grants")]
    CapabilityEscalation {
        /// The delegation's CID.
        cid: String,
        /// The claimed ability.
        can: String,
        /// The claimed resource.
        with: String,
    },
    /// A configured space proof does not fit the agent key it comes with.
    #[error("the space proof does not fit: {reason}")]
    UnusableSpaceProof {
        /// Why it cannot be used.
        reason: String,
    },
    /// Reading or writing the local space key failed.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The local space's directory or files could not be made owner-only.
    #[error(transparent)]
    DataDir(#[from] delibera_data_dir::Error),
    /// The local space key is missing, but a space was made here before.
    #[error(
        "the local space key {} is missing, but this data dir made space {space_did}: restore \
         the file (a new key would make a new space, and the delegations already handed out \
         name the old one)",
        path.display()
    )]
    SpaceKeyMissing {
        /// The key file.
        path: PathBuf,
        /// The space the data dir recorded.
        space_did: String,
    },
    /// The local space key file exists but does not hold a key.
    #[error(
        "the local space key {} is damaged ({reason}): restore it from a backup (a new key \
         would make a new space, and the delegations already handed out name the old one)",
        path.display()
    )]
    SpaceKeyDamaged {
        /// The key file.
        path: PathBuf,
        /// Why it could not be read as a key.
        reason: String,
    },
    /// The local space key is not the key of the space the data dir recorded.
    #[error(
        "the local space key {} is of space {found}, but this data dir made space {recorded}: \
         restore the original key file",
        path.display()
    )]
    SpaceKeyMismatch {
        /// The key file.
        path: PathBuf,
        /// The space the data dir recorded.
        recorded: String,
        /// The space of the key found.
        found: String,
    },
}

impl Error {
    /// True for errors that mean "well formed, but must not be trusted": a bad
    /// hash, signature, time bound, audience chain or capability.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::BlockCidMismatch { .. }
                | Self::UnsupportedHash { .. }
                | Self::NonCanonicalBlock { .. }
                | Self::InvalidSignature { .. }
                | Self::UnsupportedSignature { .. }
                | Self::UnverifiableIssuer { .. }
                | Self::Expired { .. }
                | Self::NotYetValid { .. }
                | Self::AudienceMismatch { .. }
                | Self::MissingProof { .. }
                | Self::CapabilityEscalation { .. }
        )
    }

    /// True for time-bound failures, which a later (or earlier) clock may cure.
    pub fn is_time_bound(&self) -> bool {
        matches!(self, Self::Expired { .. } | Self::NotYetValid { .. })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
