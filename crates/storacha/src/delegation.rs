//! UCAN 0.9.1 delegations as @ipld/dag-ucan and @ucanto/core write them, their
//! archives and text forms.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, general_purpose};
use delibera_identity::Keypair;
use multibase::Base;

use crate::car::{Block, Car};
use crate::cid::{CAR, DAG_CBOR, IDENTITY};
use crate::{Capability, Cid, Error, Principal, Result, Value};

/// The UCAN version ucanto writes.
pub const UCAN_VERSION: &str = "0.9.1";
/// The key of the archive's root variant block.
const VARIANT_KEY: &str = "ucan@0.9.1";
/// The first segment of every Ed25519 signed payload:
/// base64url of `{"alg":"EdDSA","typ":"JWT","ucv":"0.9.1"}`.
const JWT_HEADER: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsInVjdiI6IjAuOS4xIn0";
/// Varsig prefix of an Ed25519 signature: `varint(0xd0ed)` ‖ `varint(64)`.
pub(crate) const ED25519_VARSIG_PREFIX: [u8; 4] = [0xed, 0xa1, 0x03, 0x40];
/// Bounds on an archive's proof graph, so a hostile archive cannot make
/// extraction recurse or fan out without limit.
const MAX_PROOF_DEPTH: usize = 32;
const MAX_DELEGATIONS: usize = 512;

/// Base64 that accepts the padded and the unpadded form, as Node's decoder does.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signed UCAN 0.9.1 delegation, with the parent delegations (proofs) it embeds.
///
/// Built with [`Delegation::builder`] or read with [`Delegation::parse`] /
/// [`Delegation::from_archive`]. A read delegation keeps its original block
/// bytes, so re-archiving it never changes its CID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub(crate) cid: Cid,
    pub(crate) bytes: Vec<u8>,
    pub(crate) canonical: bool,
    pub(crate) issuer: Principal,
    pub(crate) audience: Principal,
    pub(crate) capabilities: Vec<Capability>,
    pub(crate) expiration: Option<u64>,
    pub(crate) not_before: Option<u64>,
    pub(crate) nonce: Option<String>,
    pub(crate) facts: Vec<BTreeMap<String, Value>>,
    pub(crate) proof_links: Vec<Cid>,
    pub(crate) proofs: Vec<Delegation>,
    pub(crate) signature: Vec<u8>,
}

/// Everything a new delegation needs besides its issuer's key.
#[derive(Clone, Debug)]
pub struct DelegationBuilder {
    audience: Principal,
    capabilities: Vec<Capability>,
    expiration: Option<u64>,
    not_before: Option<u64>,
    nonce: Option<String>,
    facts: Vec<BTreeMap<String, Value>>,
    proofs: Vec<Delegation>,
}

impl DelegationBuilder {
    /// Expiry in unix seconds; `None` (the default) is "never" (`exp: null`).
    pub fn expiration(mut self, expiration: Option<u64>) -> Self {
        self.expiration = expiration;
        self
    }

    /// Not-before in unix seconds (`0` is the same as none, as in ucanto).
    pub fn not_before(mut self, not_before: u64) -> Self {
        self.not_before = Some(not_before);
        self
    }

    /// A nonce. Avoid the empty string: ucanto writes it into the block but
    /// leaves it out of the signed payload.
    pub fn nonce(mut self, nonce: impl Into<String>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// Adds a fact (a map of arbitrary IPLD data).
    pub fn fact(mut self, fact: BTreeMap<String, Value>) -> Self {
        self.facts.push(fact);
        self
    }

    /// Adds a proof: it is cited in `prf` and its blocks are embedded in the archive.
    pub fn proof(mut self, proof: Delegation) -> Self {
        self.proofs.push(proof);
        self
    }

    /// Signs with `issuer` and encodes the block. Does not verify the chain (see
    /// [`Delegation::verify`]), so a broken chain can be built on purpose.
    pub fn sign(self, issuer: &Keypair) -> Result<Delegation> {
        let mut delegation = Delegation {
            cid: Cid::sha256(DAG_CBOR, &[]),
            bytes: Vec::new(),
            canonical: true,
            issuer: Principal::from(issuer.did()),
            audience: self.audience,
            capabilities: self.capabilities,
            expiration: self.expiration,
            not_before: self.not_before,
            nonce: self.nonce,
            facts: self.facts,
            proof_links: self.proofs.iter().map(|proof| proof.cid.clone()).collect(),
            proofs: self.proofs,
            signature: Vec::new(),
        };
        let signature = issuer.sign(delegation.signed_payload().as_bytes());
        let mut varsig = ED25519_VARSIG_PREFIX.to_vec();
        varsig.extend_from_slice(signature.as_bytes());
        delegation.signature = varsig;
        delegation.bytes = delegation.to_block_value().to_dag_cbor()?;
        delegation.cid = Cid::sha256(DAG_CBOR, &delegation.bytes);
        Ok(delegation)
    }
}

impl Delegation {
    /// Starts a delegation to `audience` of `capabilities` (no expiry, no proofs).
    pub fn builder(audience: Principal, capabilities: Vec<Capability>) -> DelegationBuilder {
        DelegationBuilder {
            audience,
            capabilities,
            expiration: None,
            not_before: None,
            nonce: None,
            facts: Vec::new(),
            proofs: Vec::new(),
        }
    }

    /// The CID of the UCAN block (`bafyrei…`).
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The UCAN block's bytes.
    pub fn block_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The issuer.
    pub fn issuer(&self) -> &Principal {
        &self.issuer
    }

    /// The audience.
    pub fn audience(&self) -> &Principal {
        &self.audience
    }

    /// The capabilities (`att`).
    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    /// Expiry in unix seconds, `None` for never.
    pub fn expiration(&self) -> Option<u64> {
        self.expiration
    }

    /// Not-before in unix seconds, when set.
    pub fn not_before(&self) -> Option<u64> {
        self.not_before
    }

    /// The nonce, when set.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// The facts.
    pub fn facts(&self) -> &[BTreeMap<String, Value>] {
        &self.facts
    }

    /// Every proof CID cited in `prf`, embedded or not.
    pub fn proof_links(&self) -> &[Cid] {
        &self.proof_links
    }

    /// The cited proofs whose blocks are available, in `prf` order.
    pub fn proofs(&self) -> &[Delegation] {
        &self.proofs
    }

    /// The signature in varsig form (`ed a1 03 40` ‖ 64 bytes for Ed25519).
    pub fn signature_bytes(&self) -> &[u8] {
        &self.signature
    }

    /// The exact string the issuer signs:
    /// `base64url(header) "." base64url(dag-json(payload))`.
    pub fn signed_payload(&self) -> String {
        let mut payload = BTreeMap::new();
        payload.insert(
            "att".to_owned(),
            Value::Array(self.capabilities.iter().map(Capability::to_value).collect()),
        );
        payload.insert("aud".to_owned(), Value::from(self.audience.as_str()));
        payload.insert("exp".to_owned(), exp_value(self.expiration));
        if !self.facts.is_empty() {
            payload.insert("fct".to_owned(), facts_value(&self.facts));
        }
        payload.insert("iss".to_owned(), Value::from(self.issuer.as_str()));
        // dag-ucan's formatter leaves out falsy nbf and nnc.
        if let Some(not_before) = self.not_before.filter(|&n| n != 0) {
            payload.insert("nbf".to_owned(), Value::from(not_before));
        }
        if let Some(nonce) = self.nonce.as_ref().filter(|n| !n.is_empty()) {
            payload.insert("nnc".to_owned(), Value::from(nonce.as_str()));
        }
        // Proofs are plain CID strings in the payload, not links.
        payload.insert(
            "prf".to_owned(),
            Value::Array(
                self.proof_links
                    .iter()
                    .map(|cid| Value::Text(cid.to_string()))
                    .collect(),
            ),
        );
        let json = Value::Map(payload).to_dag_json();
        format!("{JWT_HEADER}.{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// The DAG-CBOR block as dag-ucan's encoder writes it.
    fn to_block_value(&self) -> Value {
        let mut block = BTreeMap::new();
        block.insert("s".to_owned(), Value::Bytes(self.signature.clone()));
        block.insert("v".to_owned(), Value::from(UCAN_VERSION));
        block.insert(
            "att".to_owned(),
            Value::Array(self.capabilities.iter().map(Capability::to_value).collect()),
        );
        block.insert(
            "aud".to_owned(),
            Value::Bytes(self.audience.as_bytes().to_vec()),
        );
        block.insert("exp".to_owned(), exp_value(self.expiration));
        if !self.facts.is_empty() {
            block.insert("fct".to_owned(), facts_value(&self.facts));
        }
        block.insert(
            "iss".to_owned(),
            Value::Bytes(self.issuer.as_bytes().to_vec()),
        );
        if let Some(not_before) = self.not_before.filter(|&n| n != 0) {
            block.insert("nbf".to_owned(), Value::from(not_before));
        }
        if let Some(nonce) = &self.nonce {
            block.insert("nnc".to_owned(), Value::from(nonce.as_str()));
        }
        block.insert(
            "prf".to_owned(),
            Value::Array(self.proof_links.iter().cloned().map(Value::Link).collect()),
        );
        Value::Map(block)
    }

    /// Decodes one UCAN block (its proofs are not resolved here).
    fn decode_block(cid: &Cid, bytes: &[u8]) -> Result<Self> {
        let malformed = |reason: String| Error::MalformedUcan {
            cid: cid.to_string(),
            reason,
        };
        let value = Value::from_dag_cbor(bytes)?;
        let canonical = value.to_dag_cbor().is_ok_and(|again| again == bytes);
        let Value::Map(mut map) = value else {
            return Err(malformed("the block is not a map".to_owned()));
        };
        let mut take = |key: &str| map.remove(key);

        match take("v") {
            Some(Value::Text(version)) if version == UCAN_VERSION => {}
            Some(Value::Text(version)) => {
                return Err(malformed(format!("unsupported UCAN version {version:?}")));
            }
            _ => return Err(malformed("missing text `v`".to_owned())),
        }
        let Some(Value::Bytes(signature)) = take("s") else {
            return Err(malformed("missing bytes `s`".to_owned()));
        };
        let principal = |value: Option<Value>, field: &str| match value {
            Some(Value::Bytes(bytes)) => Principal::from_bytes(&bytes),
            _ => Err(malformed(format!("missing bytes `{field}`"))),
        };
        let issuer = principal(take("iss"), "iss")?;
        let audience = principal(take("aud"), "aud")?;
        let Some(Value::Array(att)) = take("att") else {
            return Err(malformed("missing array `att`".to_owned()));
        };
        let capabilities = att
            .iter()
            .map(|value| Capability::from_value(value, cid))
            .collect::<Result<Vec<_>>>()?;
        let expiration = match take("exp") {
            Some(Value::Null) => None,
            Some(Value::Integer(n)) => {
                Some(u64::try_from(n).map_err(|_| malformed("negative `exp`".to_owned()))?)
            }
            _ => return Err(malformed("missing integer or null `exp`".to_owned())),
        };
        let not_before = match take("nbf") {
            None => None,
            Some(Value::Integer(n)) => {
                Some(u64::try_from(n).map_err(|_| malformed("negative `nbf`".to_owned()))?)
            }
            Some(_) => return Err(malformed("`nbf` is not an integer".to_owned())),
        };
        let nonce = match take("nnc") {
            None => None,
            Some(Value::Text(nonce)) => Some(nonce),
            Some(_) => return Err(malformed("`nnc` is not text".to_owned())),
        };
        let facts = match take("fct") {
            None => Vec::new(),
            Some(Value::Array(facts)) => facts
                .into_iter()
                .map(|fact| match fact {
                    Value::Map(fact) => Ok(fact),
                    _ => Err(malformed("a fact is not a map".to_owned())),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(malformed("`fct` is not an array".to_owned())),
        };
        let Some(Value::Array(prf)) = take("prf") else {
            return Err(malformed("missing array `prf`".to_owned()));
        };
        let proof_links = prf
            .into_iter()
            .map(|link| match link {
                Value::Link(cid) => Ok(cid),
                _ => Err(malformed("a proof is not a link".to_owned())),
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(extra) = map.keys().next() {
            return Err(malformed(format!("unknown field `{extra}`")));
        }
        Ok(Self {
            cid: cid.clone(),
            bytes: bytes.to_vec(),
            canonical,
            issuer,
            audience,
            capabilities,
            expiration,
            not_before,
            nonce,
            facts,
            proof_links,
            proofs: Vec::new(),
            signature,
        })
    }

    /// The archive as `delegation.archive()` writes it: a CARv1 whose single root
    /// is the `{"ucan@0.9.1": link}` variant block, blocks in ucanto's order
    /// (proofs depth-first, then this UCAN, then the variant).
    pub fn archive(&self) -> Vec<u8> {
        let mut blocks = Vec::new();
        let mut seen = HashSet::new();
        self.collect_blocks(&mut blocks, &mut seen);
        let variant = Value::Map(BTreeMap::from([(
            VARIANT_KEY.to_owned(),
            Value::Link(self.cid.clone()),
        )]));
        // A one-link map always encodes.
        let variant = variant.to_dag_cbor().unwrap_or_default();
        let variant_cid = Cid::sha256(DAG_CBOR, &variant);
        blocks.push(Block {
            cid: variant_cid.clone(),
            bytes: variant,
        });
        Car {
            roots: vec![variant_cid],
            blocks,
        }
        .to_bytes()
    }

    fn collect_blocks(&self, blocks: &mut Vec<Block>, seen: &mut HashSet<Cid>) {
        for proof in &self.proofs {
            proof.collect_blocks(blocks, seen);
        }
        if seen.insert(self.cid.clone()) {
            blocks.push(Block {
                cid: self.cid.clone(),
                bytes: self.bytes.clone(),
            });
        }
    }

    /// The archive as Node's `Buffer.toString('base64')` prints it (padded
    /// standard base64): the form the TypeScript server hands to workers.
    pub fn to_base64(&self) -> String {
        base64_text(&self.archive())
    }

    /// The `mAYIEA…` form `storacha delegation create --base64` prints: a CIDv1
    /// (CAR codec, identity multihash over the archive) in multibase base64. The
    /// only form `@storacha/client/proof` `parse()` reads correctly.
    pub fn to_identity_cid(&self) -> String {
        identity_cid_text(&self.archive())
    }

    /// Reads either text form. Whitespace is ignored anywhere, as Node's base64
    /// decoder ignores it, so line-wrapped `… | base64` output reads too.
    pub fn parse(text: &str) -> Result<Self> {
        let text: String = text.split_ascii_whitespace().collect();
        let text = text.as_str();
        if text.starts_with('m') {
            let (_, bytes) = multibase::decode(text).map_err(|_| Error::InvalidText {
                reason: "invalid multibase base64",
            })?;
            let cid = Cid::from_bytes(&bytes)?;
            if cid.codec() != CAR || cid.hash_code() != IDENTITY {
                return Err(Error::InvalidText {
                    reason: "the CID is not an identity-hashed CAR",
                });
            }
            return Self::from_archive(cid.digest());
        }
        let bytes = LENIENT_BASE64
            .decode(text)
            .map_err(|_| Error::InvalidText {
                reason: "neither an `m…` identity CID nor base64",
            })?;
        Self::from_archive(&bytes)
    }

    /// Reads an archive as `Delegation.extract()` does: the root variant names the
    /// UCAN block; cited proofs present in the archive are attached, others are
    /// left as links.
    pub fn from_archive(bytes: &[u8]) -> Result<Self> {
        let car = Car::from_bytes(bytes)?;
        let mut index: HashMap<&Cid, &[u8]> = HashMap::new();
        for block in &car.blocks {
            index.entry(&block.cid).or_insert(block.bytes.as_slice());
        }
        let root = car.roots.first().ok_or(Error::Car {
            reason: "the header has no roots",
        })?;
        let variant = index.get(root).ok_or_else(|| Error::MissingBlock {
            cid: root.to_string(),
        })?;
        let variant = Value::from_dag_cbor(variant)?;
        let link = match variant.as_map() {
            Some(map) if map.len() == 1 => match map.get(VARIANT_KEY) {
                Some(Value::Link(link)) => link.clone(),
                _ => {
                    return Err(Error::NotADelegationArchive {
                        reason: "the root is not a `ucan@0.9.1` link",
                    });
                }
            },
            _ => {
                return Err(Error::NotADelegationArchive {
                    reason: "the root is not a one-entry variant map",
                });
            }
        };
        let mut budget = MAX_DELEGATIONS;
        Self::resolve(&link, &index, 0, &mut budget)
    }

    fn resolve(
        cid: &Cid,
        index: &HashMap<&Cid, &[u8]>,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Self> {
        if depth > MAX_PROOF_DEPTH || *budget == 0 {
            return Err(Error::ProofGraphTooLarge {
                limit: MAX_DELEGATIONS,
            });
        }
        *budget -= 1;
        let bytes = index.get(cid).ok_or_else(|| Error::MissingBlock {
            cid: cid.to_string(),
        })?;
        let mut delegation = Self::decode_block(cid, bytes)?;
        for link in &delegation.proof_links {
            if index.contains_key(link) {
                delegation
                    .proofs
                    .push(Self::resolve(link, index, depth + 1, budget)?);
            }
        }
        Ok(delegation)
    }
}

fn exp_value(expiration: Option<u64>) -> Value {
    expiration.map_or(Value::Null, Value::from)
}

fn facts_value(facts: &[BTreeMap<String, Value>]) -> Value {
    Value::Array(facts.iter().cloned().map(Value::Map).collect())
}

/// [`Delegation::to_base64`] of an archive already written.
pub(crate) fn base64_text(archive: &[u8]) -> String {
    general_purpose::STANDARD.encode(archive)
}

/// [`Delegation::to_identity_cid`] of an archive already written.
pub(crate) fn identity_cid_text(archive: &[u8]) -> String {
    let cid = Cid::v1(CAR, IDENTITY, archive);
    multibase::encode(Base::Base64, cid.as_bytes())
}
