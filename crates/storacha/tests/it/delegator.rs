//! The two `Delegator` implementations.

use std::sync::Arc;

use delibera_identity::{Did, Keypair};
use delibera_storacha::{
    Capability, ConfiguredDelegator, Delegation, Delegator, Error, FixedClock,
    LOCAL_SPACE_DID_FILE, LOCAL_SPACE_KEY_FILE, LocalSpaceDelegator, Principal,
    SPACE_ACCESS_ABILITIES, SPACE_ACCESS_LIFETIME_SECS,
};

const NOW: u64 = 1_800_000_000;
/// `storacha delegation create`'s default abilities, as a coordinator's proof would carry.
const SPACE_ACCESS: [&str; 9] = [
    "assert/*",
    "space/*",
    "blob/*",
    "index/*",
    "store/*",
    "upload/*",
    "access/*",
    "filecoin/*",
    "usage/*",
];

fn space() -> Keypair {
    Keypair::from_seed(&[1; 32])
}
fn coordinator() -> Keypair {
    Keypair::from_seed(&[2; 32])
}
fn worker() -> Did {
    Keypair::from_seed(&[3; 32]).did()
}

fn coordinator_proof() -> Delegation {
    let with = space().did().to_string();
    let capabilities = SPACE_ACCESS
        .iter()
        .map(|can| Capability::new(*can, with.as_str()).unwrap())
        .collect();
    Delegation::builder(Principal::from(coordinator().did()), capabilities)
        .sign(&space())
        .unwrap()
}

fn assert_grants_space_access(delegation: &Delegation, space: &Did, agent: &Did) {
    assert_eq!(delegation.audience(), &Principal::from(agent.clone()));
    let abilities: Vec<_> = delegation
        .capabilities()
        .iter()
        .map(Capability::can)
        .collect();
    assert_eq!(abilities, SPACE_ACCESS_ABILITIES);
    for capability in delegation.capabilities() {
        assert_eq!(capability.with(), space.as_str());
        // `space/content/decrypt` is delegated without `nb`, as the reference does.
        assert!(capability.nb().is_none());
    }
    assert_eq!(
        delegation.expiration(),
        Some(NOW + SPACE_ACCESS_LIFETIME_SECS)
    );
    delegation.verify(NOW).unwrap();
    assert!(matches!(
        delegation.verify(NOW + SPACE_ACCESS_LIFETIME_SECS),
        Err(Error::Expired { .. })
    ));
}

#[tokio::test]
async fn configured_delegator_embeds_its_proof_and_the_chain_verifies() {
    let proof = coordinator_proof();
    let delegator = ConfiguredDelegator::from_strings(
        &coordinator().to_ucanto_string(),
        &format!("  {}\n", proof.to_identity_cid()),
    )
    .unwrap()
    .with_clock(Arc::new(FixedClock(NOW)));
    assert_eq!(delegator.space_did(), &space().did());

    let granted = delegator.delegate_space_access(&worker()).await.unwrap();
    assert_eq!(granted.space_did, space().did());
    assert!(granted.proof.starts_with("mAYIEA"));
    let from_cid = Delegation::parse(&granted.proof).unwrap();
    let from_base64 = Delegation::parse(&granted.proof_base64).unwrap();
    assert_eq!(from_cid, from_base64);
    assert_eq!(from_cid.issuer().as_str(), coordinator().did().as_str());
    assert_eq!(from_cid.proofs(), [proof]);
    assert_grants_space_access(&from_cid, &space().did(), &worker());
}

#[tokio::test]
async fn configured_delegator_works_through_the_port_trait_object() {
    let delegator: Arc<dyn Delegator> = Arc::new(
        ConfiguredDelegator::new(coordinator(), coordinator_proof())
            .unwrap()
            .with_clock(Arc::new(FixedClock(NOW))),
    );
    let granted = delegator.delegate_space_access(&worker()).await.unwrap();
    Delegation::parse(&granted.proof)
        .unwrap()
        .verify(NOW)
        .unwrap();
}

#[test]
fn configured_delegator_rejects_a_proof_for_another_agent() {
    let proof = coordinator_proof();
    let error = ConfiguredDelegator::new(Keypair::from_seed(&[7; 32]), proof)
        .err()
        .unwrap();
    assert!(matches!(error, Error::UnusableSpaceProof { .. }), "{error}");

    // A proof whose capabilities name no did:key space.
    let web_only = Delegation::builder(
        Principal::from(coordinator().did()),
        vec![Capability::new("upload/add", "did:web:example.com").unwrap()],
    )
    .sign(&space())
    .unwrap();
    assert!(matches!(
        ConfiguredDelegator::new(coordinator(), web_only),
        Err(Error::UnusableSpaceProof { .. })
    ));
    // Garbage in either variable is a parse error, and the key is never echoed.
    let key = coordinator().to_ucanto_string();
    let error = ConfiguredDelegator::from_strings(&key, "not a proof")
        .err()
        .unwrap();
    assert!(matches!(error, Error::InvalidText { .. }));
    assert!(!error.to_string().contains(&key[1..30]));
}

#[tokio::test]
async fn local_space_delegator_creates_its_key_once_and_self_issues() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let first = LocalSpaceDelegator::open(&data_dir)
        .unwrap()
        .with_clock(Arc::new(FixedClock(NOW)));
    let key_path = data_dir.join(LOCAL_SPACE_KEY_FILE);
    let stored = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(
        Keypair::from_ucanto_str(stored.trim()).unwrap().did(),
        first.space_did()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let again = LocalSpaceDelegator::open(&data_dir).unwrap();
    assert_eq!(again.space_did(), first.space_did());

    let granted = first.delegate_space_access(&worker()).await.unwrap();
    assert_eq!(granted.space_did, first.space_did());
    let delegation = Delegation::parse(&granted.proof).unwrap();
    assert_eq!(delegation.issuer().as_str(), first.space_did().as_str());
    assert!(delegation.proof_links().is_empty());
    assert_grants_space_access(&delegation, &first.space_did(), &worker());
}

#[test]
fn a_lost_space_key_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let space = LocalSpaceDelegator::open(dir.path()).unwrap().space_did();
    let recorded = std::fs::read_to_string(dir.path().join(LOCAL_SPACE_DID_FILE)).unwrap();
    assert_eq!(recorded.trim(), space.as_str());

    let key_path = dir.path().join(LOCAL_SPACE_KEY_FILE);
    let original = std::fs::read(&key_path).unwrap();
    std::fs::remove_file(&key_path).unwrap();
    let error = LocalSpaceDelegator::open(dir.path()).err().unwrap();
    assert!(
        matches!(&error, Error::SpaceKeyMissing { path, space_did } if *path == key_path && space_did == space.as_str()),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&key_path.display().to_string()),
        "{message}"
    );
    assert!(!key_path.exists(), "no new space key was made");

    // Another space's key in its place is refused too.
    let other = Keypair::generate();
    std::fs::write(&key_path, other.to_ucanto_string().as_str()).unwrap();
    let error = LocalSpaceDelegator::open(dir.path()).err().unwrap();
    assert!(matches!(error, Error::SpaceKeyMismatch { .. }), "{error}");

    // A damaged key file (a truncated write, an editor's mistake) names the
    // file and is not replaced either.
    let truncated = &original[..original.len() / 2];
    std::fs::write(&key_path, truncated).unwrap();
    let error = LocalSpaceDelegator::open(dir.path()).err().unwrap();
    assert!(
        matches!(&error, Error::SpaceKeyDamaged { path, .. } if *path == key_path),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&key_path.display().to_string()),
        "{message}"
    );
    let truncated_text = String::from_utf8_lossy(truncated);
    assert!(
        !message.contains(truncated_text.trim()),
        "the key's text stays out of the message: {message}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), truncated);

    // The original key opens the space again.
    std::fs::write(&key_path, original).unwrap();
    assert_eq!(
        LocalSpaceDelegator::open(dir.path()).unwrap().space_did(),
        space
    );
}

#[test]
fn a_space_key_from_before_the_did_file_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate();
    std::fs::write(
        dir.path().join(LOCAL_SPACE_KEY_FILE),
        format!("{}\n", key.to_ucanto_string().as_str()),
    )
    .unwrap();
    let space = LocalSpaceDelegator::open(dir.path()).unwrap().space_did();
    assert_eq!(space, key.did());
    let recorded = std::fs::read_to_string(dir.path().join(LOCAL_SPACE_DID_FILE)).unwrap();
    assert_eq!(recorded.trim(), key.did().as_str());
}

#[test]
fn local_space_delegator_rejects_a_corrupt_key_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LOCAL_SPACE_KEY_FILE), "MgCYnot-a-key\n").unwrap();
    let error = LocalSpaceDelegator::open(dir.path()).err().unwrap();
    assert!(matches!(error, Error::SpaceKeyDamaged { .. }), "{error}");
}
