//! Arbitrary input is a typed error, never a panic: random bytes, truncations and
//! bit flips of every vector archive, in both text forms and as raw CAR bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use delibera_storacha::{Car, Delegation, Value};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

fn archives() -> Vec<(String, String, Vec<u8>)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ucan.json"
    ))
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    fixture["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vector| {
            let base64 = vector["archiveBase64"].as_str().unwrap().to_owned();
            let identity = vector["identityCid"].as_str().unwrap().to_owned();
            let raw = STANDARD.decode(&base64).unwrap();
            (base64, identity, raw)
        })
        .collect()
}

/// Runs every reader over `bytes`; whatever parses is also verified and re-written.
fn exercise_bytes(bytes: &[u8]) {
    let _ = Value::from_dag_cbor(bytes);
    let _ = Car::from_bytes(bytes);
    if let Ok(delegation) = Delegation::from_archive(bytes) {
        let _ = delegation.verification_errors(NOW);
        let _ = delegation.signed_payload();
        let _ = delegation.to_identity_cid();
    }
}

fn exercise_text(text: &str) {
    if let Ok(delegation) = Delegation::parse(text) {
        let _ = delegation.verification_errors(NOW);
        let _ = delegation.to_base64();
    }
}

fn flip(bytes: &mut [u8], positions: &[(usize, u8)]) {
    for &(position, bit) in positions {
        if !bytes.is_empty() {
            let at = position % bytes.len();
            bytes[at] ^= 1 << (bit % 8);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_and_text(bytes in proptest::collection::vec(any::<u8>(), 0..600), text in ".{0,200}") {
        exercise_bytes(&bytes);
        exercise_text(&text);
        exercise_text(&format!("m{}", STANDARD.encode(&bytes)));
        exercise_text(&STANDARD.encode(&bytes));
    }

    #[test]
    fn truncated_archives(vector in 0usize..4, cut in any::<prop::sample::Index>()) {
        let (base64, identity, raw) = &archives()[vector];
        let end = cut.index(raw.len() + 1);
        exercise_bytes(&raw[..end]);
        exercise_text(&base64[..cut.index(base64.len() + 1)]);
        exercise_text(&identity[..cut.index(identity.len() + 1)]);
        exercise_text(&STANDARD.encode(&raw[..end]));
    }

    #[test]
    fn bit_flipped_archives(
        vector in 0usize..4,
        positions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let (_, identity, raw) = &archives()[vector];
        let mut flipped = raw.clone();
        flip(&mut flipped, &positions);
        exercise_bytes(&flipped);
        exercise_text(&STANDARD.encode(&flipped));

        let mut text = identity.clone().into_bytes();
        flip(&mut text, &positions);
        if let Ok(text) = String::from_utf8(text) {
            exercise_text(&text);
        }
    }
}

#[test]
fn a_hostile_proof_graph_is_bounded() {
    // Each level cites the one below twice: 13 levels unfold into 8191 delegations.
    use delibera_identity::Keypair;
    use delibera_storacha::{Capability, Principal};
    let key = Keypair::from_seed(&[9; 32]);
    let capability = Capability::new("upload/add", key.did().as_str()).unwrap();
    let mut delegation = Delegation::builder(Principal::from(key.did()), vec![capability.clone()])
        .sign(&key)
        .unwrap();
    for _ in 0..12 {
        delegation = Delegation::builder(Principal::from(key.did()), vec![capability.clone()])
            .proof(delegation.clone())
            .proof(delegation)
            .sign(&key)
            .unwrap();
    }
    let archive = delegation.archive();
    assert!(matches!(
        Delegation::from_archive(&archive),
        Err(delibera_storacha::Error::ProofGraphTooLarge { .. })
    ));
}
