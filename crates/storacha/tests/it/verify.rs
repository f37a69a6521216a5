//! One test per verification failure, each asserting its own `Error` variant.

use delibera_identity::Keypair;
use delibera_storacha::{Block, Capability, Car, Cid, DAG_CBOR, Delegation, Error, Principal};

const NOW: u64 = 1_800_000_000;

fn space() -> Keypair {
    Keypair::from_seed(&[1; 32])
}
fn coordinator() -> Keypair {
    Keypair::from_seed(&[2; 32])
}
fn worker() -> Keypair {
    Keypair::from_seed(&[3; 32])
}

fn caps(abilities: &[&str], with: &Keypair) -> Vec<Capability> {
    abilities
        .iter()
        .map(|can| Capability::new(*can, with.did().as_str()).unwrap())
        .collect()
}

/// space → coordinator of `abilities` on the space, valid until `expiration`.
fn space_to_coordinator(abilities: &[&str], expiration: Option<u64>) -> Delegation {
    Delegation::builder(
        Principal::from(coordinator().did()),
        caps(abilities, &space()),
    )
    .expiration(expiration)
    .sign(&space())
    .unwrap()
}

/// coordinator → worker of `abilities` on the space, citing `proof`.
fn coordinator_to_worker(abilities: &[&str], proof: Delegation) -> Delegation {
    Delegation::builder(Principal::from(worker().did()), caps(abilities, &space()))
        .expiration(Some(1_990_000_000))
        .proof(proof)
        .sign(&coordinator())
        .unwrap()
}

/// Flips the first occurrence of `needle` in `haystack` to `replacement` (same length).
fn patch(haystack: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    assert_eq!(needle.len(), replacement.len());
    let at = haystack
        .windows(needle.len())
        .position(|window| window == needle)
        .unwrap();
    let mut out = haystack.to_vec();
    out[at..at + needle.len()].copy_from_slice(replacement);
    out
}

#[test]
fn a_valid_chain_verifies_at_every_instant_inside_its_bounds() {
    let chain = coordinator_to_worker(
        &["space/blob/add", "upload/add"],
        space_to_coordinator(&["space/blob/add", "upload/*"], Some(2_000_000_000)),
    );
    for now in [0, NOW, 1_989_999_999] {
        chain.verify(now).unwrap();
    }
    assert!(chain.verification_errors(NOW).is_empty());
}

#[test]
fn a_tampered_signature_byte_is_invalid_signature() {
    let delegation = space_to_coordinator(&["upload/add"], None);
    let mut block = delegation.block_bytes().to_vec();
    // The raw signature starts right after `a7 61 73 58 44 ed a1 03 40`.
    block[9] ^= 0x01;
    let cid = Cid::sha256(DAG_CBOR, &block);
    let tampered = Delegation::from_archive(&rebuild_archive(&cid, &block)).unwrap();
    assert!(matches!(
        tampered.verify(NOW),
        Err(Error::InvalidSignature { .. })
    ));
}

/// An archive holding just `block` under `cid`, with a variant root naming it.
fn rebuild_archive(cid: &Cid, block: &[u8]) -> Vec<u8> {
    let mut variant = vec![0xa1, 0x6a];
    variant.extend_from_slice(b"ucan@0.9.1");
    variant.extend_from_slice(&[0xd8, 0x2a, 0x58, 0x25, 0x00]);
    variant.extend_from_slice(cid.as_bytes());
    let variant_cid = Cid::sha256(DAG_CBOR, &variant);
    Car {
        roots: vec![variant_cid.clone()],
        blocks: vec![
            Block {
                cid: cid.clone(),
                bytes: block.to_vec(),
            },
            Block {
                cid: variant_cid,
                bytes: variant,
            },
        ],
    }
    .to_bytes()
}

#[test]
fn a_tampered_capability_breaks_the_hash_or_the_signature() {
    let delegation = space_to_coordinator(&["upload/add"], None);

    // Bytes changed in place: the block no longer hashes to its CID.
    let archive = patch(&delegation.archive(), b"upload/add", b"upload/del");
    let tampered = Delegation::from_archive(&archive).unwrap();
    assert_eq!(tampered.capabilities()[0].can(), "upload/del");
    assert!(matches!(
        tampered.verify(NOW),
        Err(Error::BlockCidMismatch { .. })
    ));

    // Re-hashed under a new CID: the signature no longer covers the payload.
    let block = patch(delegation.block_bytes(), b"upload/add", b"upload/del");
    let cid = Cid::sha256(DAG_CBOR, &block);
    let tampered = Delegation::from_archive(&rebuild_archive(&cid, &block)).unwrap();
    assert!(matches!(
        tampered.verify(NOW),
        Err(Error::InvalidSignature { .. })
    ));
}

#[test]
fn an_expired_delegation_is_expired_and_exp_equal_to_now_counts() {
    let delegation = space_to_coordinator(&["upload/add"], Some(NOW));
    match delegation.verify(NOW) {
        Err(Error::Expired {
            expiration, now, ..
        }) => assert_eq!((expiration, now), (NOW, NOW)),
        other => panic!("{other:?}"),
    }
    delegation.verify(NOW - 1).unwrap();

    // An expired proof makes the chain fail the same way.
    let chain = coordinator_to_worker(&["upload/add"], delegation);
    let error = chain.verify(NOW).unwrap_err();
    assert!(matches!(error, Error::Expired { .. }), "{error}");
    assert!(error.is_time_bound() && error.is_verification_failure());
}

#[test]
fn a_delegation_before_its_not_before_is_not_yet_valid() {
    let delegation = Delegation::builder(
        Principal::from(coordinator().did()),
        caps(&["upload/add"], &space()),
    )
    .not_before(NOW)
    .sign(&space())
    .unwrap();
    assert!(matches!(
        delegation.verify(NOW),
        Err(Error::NotYetValid {
            not_before: NOW,
            ..
        })
    ));
    assert!(matches!(
        delegation.verify(NOW - 10),
        Err(Error::NotYetValid { .. })
    ));
    delegation.verify(NOW + 1).unwrap();
}

#[test]
fn a_proof_for_someone_else_is_a_broken_audience_chain() {
    // The worker re-delegates a proof that was given to the coordinator.
    let proof = space_to_coordinator(&["upload/add"], None);
    let stolen = Delegation::builder(
        Principal::parse("did:web:example.com").unwrap(),
        caps(&["upload/add"], &space()),
    )
    .proof(proof)
    .sign(&worker())
    .unwrap();
    match stolen.verify(NOW) {
        Err(Error::AudienceMismatch {
            audience, issuer, ..
        }) => {
            assert_eq!(audience, coordinator().did().to_string());
            assert_eq!(issuer, worker().did().to_string());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cited_proof_left_out_of_the_archive_is_a_missing_proof() {
    let proof = space_to_coordinator(&["upload/add"], None);
    let chain = coordinator_to_worker(&["upload/add"], proof.clone());
    let mut car = Car::from_bytes(&chain.archive()).unwrap();
    car.blocks.retain(|block| &block.cid != proof.cid());
    let without_proof = Delegation::from_archive(&car.to_bytes()).unwrap();
    assert_eq!(without_proof.proof_links(), [proof.cid().clone()]);
    assert!(without_proof.proofs().is_empty());
    match without_proof.verify(NOW) {
        Err(Error::MissingProof { proof: missing, .. }) => {
            assert_eq!(missing, proof.cid().to_string());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn claiming_more_than_the_proof_grants_is_escalation() {
    let proof = space_to_coordinator(&["upload/add", "upload/list"], None);
    // `space/blob/add` was never delegated to the coordinator.
    let chain = coordinator_to_worker(&["upload/add", "space/blob/add"], proof.clone());
    let errors = chain.verification_errors(NOW);
    assert_eq!(errors.len(), 1, "{errors:?}");
    match &errors[0] {
        Error::CapabilityEscalation { can, with, .. } => {
            assert_eq!(can, "space/blob/add");
            assert_eq!(with, &space().did().to_string());
        }
        other => panic!("{other:?}"),
    }

    // A `…/*` proof does not cover a sibling namespace, and no proof means no authority.
    let chain = coordinator_to_worker(&["uploads/add"], space_to_coordinator(&["upload/*"], None));
    assert!(matches!(
        chain.verify(NOW),
        Err(Error::CapabilityEscalation { .. })
    ));
    let unproven = Delegation::builder(
        Principal::from(worker().did()),
        caps(&["upload/add"], &space()),
    )
    .sign(&coordinator())
    .unwrap();
    assert!(matches!(
        unproven.verify(NOW),
        Err(Error::CapabilityEscalation { .. })
    ));
}

#[test]
fn caveats_must_be_kept_when_redelegating() {
    use delibera_storacha::Value;
    use std::collections::BTreeMap;

    let resource =
        |n: u8| BTreeMap::from([("resource".to_owned(), Value::Link(Cid::sha256(0x70, &[n])))]);
    let decrypt_one = |with: &Keypair, n: u8| {
        Capability::new("space/content/decrypt", with.did().as_str())
            .unwrap()
            .with_caveats(resource(n))
    };
    let proof = Delegation::builder(
        Principal::from(coordinator().did()),
        vec![decrypt_one(&space(), 1)],
    )
    .sign(&space())
    .unwrap();
    let same = Delegation::builder(
        Principal::from(worker().did()),
        vec![decrypt_one(&space(), 1)],
    )
    .proof(proof.clone())
    .sign(&coordinator())
    .unwrap();
    same.verify(NOW).unwrap();
    let other = Delegation::builder(
        Principal::from(worker().did()),
        vec![decrypt_one(&space(), 2)],
    )
    .proof(proof)
    .sign(&coordinator())
    .unwrap();
    assert!(matches!(
        other.verify(NOW),
        Err(Error::CapabilityEscalation { .. })
    ));
}

#[test]
fn non_key_issuers_and_non_canonical_blocks_are_reported() {
    // The same fields with `s` moved after `v`: decodes, but is not what ucanto writes.
    let delegation = space_to_coordinator(&["upload/add"], None);
    let block = delegation.block_bytes();
    let s_entry_len = 2 + 2 + 68; // `61 73` "s", `58 44`, 68 signature bytes
    let mut reordered = vec![block[0]];
    reordered.extend_from_slice(&block[1 + s_entry_len..1 + s_entry_len + 8]); // "v": "0.9.1"
    reordered.extend_from_slice(&block[1..1 + s_entry_len]);
    reordered.extend_from_slice(&block[1 + s_entry_len + 8..]);
    let cid = Cid::sha256(DAG_CBOR, &reordered);
    let parsed = Delegation::from_archive(&rebuild_archive(&cid, &reordered)).unwrap();
    assert!(matches!(
        parsed.verify(NOW),
        Err(Error::NonCanonicalBlock { .. })
    ));

    // A did:web issuer cannot be verified here.
    let mut block = delegation.block_bytes().to_vec();
    let issuer_bytes = space().did().public_key().to_multicodec_bytes();
    let at = block
        .windows(34)
        .position(|window| window == issuer_bytes)
        .unwrap();
    // `58 22` + 34 key bytes → `58 22` + `9d 1a` "web:" 28 bytes of host.
    let mut web = vec![0x9d, 0x1a];
    web.extend_from_slice(b"web:aaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    block[at..at + 34].copy_from_slice(&web);
    let cid = Cid::sha256(DAG_CBOR, &block);
    let parsed = Delegation::from_archive(&rebuild_archive(&cid, &block)).unwrap();
    assert_eq!(
        parsed.issuer().as_str(),
        "did:web:aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    );
    assert!(matches!(
        parsed.verify(NOW),
        Err(Error::UnverifiableIssuer { .. })
    ));
}

#[test]
fn malformed_archives_are_typed_parse_errors() {
    let delegation = space_to_coordinator(&["upload/add"], None);
    let reread = |block: Vec<u8>| {
        let cid = Cid::sha256(DAG_CBOR, &block);
        Delegation::from_archive(&rebuild_archive(&cid, &block))
    };

    let other_version = patch(delegation.block_bytes(), b"0.9.1", b"0.9.2");
    assert!(matches!(
        reread(other_version),
        Err(Error::MalformedUcan { reason, .. }) if reason.contains("0.9.2")
    ));
    // dag-ucan lowercases abilities on read, which would break the signature.
    let uppercase = patch(delegation.block_bytes(), b"upload/add", b"upload/ADD");
    assert!(matches!(
        reread(uppercase),
        Err(Error::InvalidAbility { ability }) if ability == "upload/ADD"
    ));
    let not_a_uri = patch(delegation.block_bytes(), b"did:key:", b"did key:");
    assert!(matches!(
        reread(not_a_uri),
        Err(Error::InvalidResource { .. })
    ));

    let archive = delegation.archive();
    let wrong_variant = patch(&archive, b"ucan@0.9.1", b"ucan@0.9.2");
    // The root block changed, so keep its CID consistent to reach the variant check.
    let mut car = Car::from_bytes(&wrong_variant).unwrap();
    let variant = car.blocks.pop().unwrap();
    let variant_cid = Cid::sha256(DAG_CBOR, &variant.bytes);
    car.roots = vec![variant_cid.clone()];
    car.blocks.push(Block {
        cid: variant_cid,
        bytes: variant.bytes,
    });
    assert!(matches!(
        Delegation::from_archive(&car.to_bytes()),
        Err(Error::NotADelegationArchive { .. })
    ));

    let mut car = Car::from_bytes(&archive).unwrap();
    car.blocks.pop();
    assert!(matches!(
        Delegation::from_archive(&car.to_bytes()),
        Err(Error::MissingBlock { .. })
    ));
    assert!(matches!(
        Delegation::parse("mAXESIA"),
        Err(Error::InvalidCid { .. } | Error::InvalidText { .. })
    ));
}
