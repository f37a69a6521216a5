//! Arbitrary input is a typed error, never a panic: random bytes, truncations and
//! bit flips of every vector archive, in both text forms and as raw CAR bytes.
//! And a truncated or bit-flipped vector never verifies as a delegation.

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

/// Runs every reader over `bytes` (none may panic) and returns the delegation
/// read, its rewritten forms computed too.
fn read_bytes(bytes: &[u8]) -> delibera_storacha::Result<Delegation> {
    let _ = Value::from_dag_cbor(bytes);
    let _ = Car::from_bytes(bytes);
    let read = Delegation::from_archive(bytes);
    if let Ok(delegation) = &read {
        let _ = delegation.signed_payload();
        let _ = delegation.to_identity_cid();
    }
    read
}

/// Reads `text` in either text form (which must not panic) and returns the
/// delegation read, rewritten too.
fn read_text(text: &str) -> delibera_storacha::Result<Delegation> {
    let read = Delegation::parse(text);
    if let Ok(delegation) = &read {
        let _ = delegation.to_base64();
    }
    read
}

/// Whatever reads is also verified, which must not panic either.
fn exercise_bytes(bytes: &[u8]) {
    if let Ok(delegation) = read_bytes(bytes) {
        let _ = delegation.verification_errors(NOW);
    }
}

fn exercise_text(text: &str) {
    if let Ok(delegation) = read_text(text) {
        let _ = delegation.verification_errors(NOW);
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
    fn truncated_archives_never_verify(vector in 0usize..4, cut in any::<prop::sample::Index>()) {
        let (base64, identity, raw) = &archives()[vector];
        let original = &originals()[vector];
        let end = cut.index(raw.len() + 1);
        tampering_is_detected(original, read_bytes(&raw[..end]), "truncated archive")?;
        let text = &base64[..cut.index(base64.len() + 1)];
        tampering_is_detected(original, read_text(text), "truncated base64")?;
        let text = &identity[..cut.index(identity.len() + 1)];
        tampering_is_detected(original, read_text(text), "truncated identity CID")?;
        exercise_text(&STANDARD.encode(&raw[..end]));
    }

    #[test]
    fn bit_flipped_archives_never_verify(
        vector in 0usize..4,
        positions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let (_, identity, raw) = &archives()[vector];
        let original = &originals()[vector];

        let mut flipped = raw.clone();
        flip(&mut flipped, &positions);
        tampering_is_detected(original, read_bytes(&flipped), "raw archive")?;
        tampering_is_detected(original, read_text(&STANDARD.encode(&flipped)), "base64 archive")?;

        let mut text = identity.clone().into_bytes();
        flip(&mut text, &positions);
        if let Ok(text) = String::from_utf8(text) {
            tampering_is_detected(original, read_text(&text), "identity CID")?;
        }
    }
}

/// Each vector read as it is, checked to verify: what tampering must not forge.
fn originals() -> &'static [Delegation] {
    static ORIGINALS: std::sync::OnceLock<Vec<Delegation>> = std::sync::OnceLock::new();
    ORIGINALS.get_or_init(|| {
        archives()
            .iter()
            .map(|(_, _, raw)| {
                let original = Delegation::from_archive(raw).unwrap();
                assert!(
                    original.verification_errors(NOW).is_empty(),
                    "the vector verifies"
                );
                original
            })
            .collect()
    })
}

/// A tampered input (bits flipped, or cut short) is refused when read, or
/// reads as a delegation that fails verification. Only an input that still
/// means the very same delegation (a change the encoding does not carry, such
/// as a padding bit) may verify.
fn tampering_is_detected(
    original: &Delegation,
    read: delibera_storacha::Result<Delegation>,
    form: &str,
) -> Result<(), TestCaseError> {
    match read {
        Err(_) => Ok(()),
        Ok(delegation) if delegation == *original => Ok(()),
        Ok(delegation) => {
            prop_assert!(
                !delegation.verification_errors(NOW).is_empty(),
                "a tampered {} verified: {:?}",
                form,
                delegation
            );
            Ok(())
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
