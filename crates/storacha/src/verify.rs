//! Chain verification, following @ucanto/validator's rules.

use delibera_identity::Signature;
use delibera_identity::multicodec::decode_varint;

use crate::delegation::ED25519_VARSIG_PREFIX;
use crate::{Capability, Delegation, Error, Result};

/// How many proof checks one verification may make before giving up, so a
/// hostile archive with many overlapping capabilities cannot make it explode.
const MAX_STEPS: usize = 10_000;

impl Delegation {
    /// Verifies the delegation and its whole proof chain at `now` (unix seconds),
    /// returning the first failure.
    ///
    /// Checks, as @ucanto/validator does: every block hashes to its CID (and is
    /// canonical DAG-CBOR); every signature verifies against its did:key issuer;
    /// `exp` > now and `nbf` < now; and every capability is either self-issued
    /// (`with` is the issuer's DID) or covered by a proof delegated to this
    /// issuer, recursively.
    pub fn verify(&self, now: u64) -> Result<()> {
        match self.verification_errors(now).into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Every verification failure at `now` (empty when the chain is valid): the
    /// delegation's own integrity problems, then one error per capability that
    /// cannot be authorized.
    pub fn verification_errors(&self, now: u64) -> Vec<Error> {
        let mut errors = self.integrity_errors(now);
        let mut steps = MAX_STEPS;
        for capability in &self.capabilities {
            if let Err(error) = self.authorize(capability, now, &mut steps) {
                errors.push(error);
            }
        }
        errors
    }

    /// Checks that `claimed` is authorized by this delegation's chain (not that
    /// this delegation grants it: see [`Capability::covers`] for that).
    fn authorize(&self, claimed: &Capability, now: u64, steps: &mut usize) -> Result<()> {
        if *steps == 0 {
            return Err(Error::ProofGraphTooLarge { limit: MAX_STEPS });
        }
        *steps -= 1;
        if claimed.with() == self.issuer.as_str() {
            return Ok(());
        }
        let mut first_failure = None;
        for proof in &self.proofs {
            let mut covering = proof
                .capabilities
                .iter()
                .filter(|capability| capability.covers(claimed))
                .peekable();
            if covering.peek().is_none() {
                continue;
            }
            let result = if proof.audience != self.issuer {
                Err(Error::AudienceMismatch {
                    proof: proof.cid.to_string(),
                    audience: proof.audience.to_string(),
                    issuer: self.issuer.to_string(),
                })
            } else if let Some(error) = proof.integrity_errors(now).into_iter().next() {
                Err(error)
            } else {
                let mut last = Ok(());
                for capability in covering {
                    last = proof.authorize(capability, now, steps);
                    if last.is_ok() {
                        break;
                    }
                }
                last
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) => {
                    first_failure.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_failure {
            return Err(error);
        }
        let missing = self
            .proof_links
            .iter()
            .find(|link| !self.proofs.iter().any(|proof| &proof.cid == *link));
        Err(match missing {
            Some(link) => Error::MissingProof {
                cid: self.cid.to_string(),
                proof: link.to_string(),
            },
            None => Error::CapabilityEscalation {
                cid: self.cid.to_string(),
                can: claimed.can().to_owned(),
                with: claimed.with().to_owned(),
            },
        })
    }

    /// This block's own checks: hash, canonical form, signature, time bounds.
    fn integrity_errors(&self, now: u64) -> Vec<Error> {
        let mut errors = Vec::new();
        if let Err(error) = self.cid.verify_block(&self.bytes) {
            errors.push(error);
        }
        if !self.canonical {
            errors.push(Error::NonCanonicalBlock {
                cid: self.cid.to_string(),
            });
        }
        if let Err(error) = self.check_signature() {
            errors.push(error);
        }
        if let Some(expiration) = self.expiration.filter(|&exp| exp <= now) {
            errors.push(Error::Expired {
                cid: self.cid.to_string(),
                expiration,
                now,
            });
        }
        if let Some(not_before) = self.not_before.filter(|&nbf| now <= nbf) {
            errors.push(Error::NotYetValid {
                cid: self.cid.to_string(),
                not_before,
                now,
            });
        }
        errors
    }

    fn check_signature(&self) -> Result<()> {
        let Some(did) = self.issuer.ed25519() else {
            return Err(Error::UnverifiableIssuer {
                cid: self.cid.to_string(),
                issuer: self.issuer.to_string(),
            });
        };
        let raw = self
            .signature
            .strip_prefix(ED25519_VARSIG_PREFIX.as_slice())
            .filter(|raw| raw.len() == 64)
            .ok_or_else(|| Error::UnsupportedSignature {
                cid: self.cid.to_string(),
                reason: describe_varsig(&self.signature),
            })?;
        let signature = Signature::from_bytes(raw)?;
        did.verify(self.signed_payload().as_bytes(), &signature)
            .map_err(|_| Error::InvalidSignature {
                cid: self.cid.to_string(),
                issuer: self.issuer.to_string(),
            })
    }
}

fn describe_varsig(bytes: &[u8]) -> String {
    match decode_varint(bytes) {
        Some((0xd0ed, _)) => "an Ed25519 varsig of the wrong length".to_owned(),
        Some((code, _)) => format!("varsig algorithm 0x{code:x} is not Ed25519"),
        None => "not a varsig".to_owned(),
    }
}
