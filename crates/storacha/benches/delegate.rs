//! What one space delegation costs, as the provisioning server makes one per
//! agent: `ConfiguredDelegator::delegate_space_access` with a proof chain of
//! one delegation, and its parts (signing, writing the archive, each text form).
//!
//! `cargo bench -p delibera-storacha --bench delegate`. A plain main (no
//! harness): each line is the median of five rounds of about 300 ms, in µs
//! per call on one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use delibera_identity::Keypair;
use delibera_storacha::{
    Capability, ConfiguredDelegator, Delegation, Delegator, Principal, SPACE_ACCESS_ABILITIES,
};

const ROUND: Duration = Duration::from_millis(300);

/// The median over five rounds of µs per call of `work`.
fn micros_per_call(mut work: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u32;
            while start.elapsed() < ROUND {
                work();
                calls += 1;
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

fn main() -> Result<(), delibera_storacha::Error> {
    let space = Keypair::from_seed(&[1; 32]);
    let coordinator = Keypair::from_seed(&[2; 32]);
    let agent = Keypair::from_seed(&[3; 32]).did();
    let capabilities = || {
        SPACE_ACCESS_ABILITIES
            .iter()
            .map(|can| Capability::new(*can, space.did().as_str()))
            .collect::<Result<Vec<_>, _>>()
    };
    let proof =
        Delegation::builder(Principal::from(coordinator.did()), capabilities()?).sign(&space)?;
    let delegator = ConfiguredDelegator::new(coordinator.clone(), proof.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");

    let granted = runtime.block_on(delegator.delegate_space_access(&agent))?;
    let delegation = Delegation::parse(&granted.proof)?;
    let capabilities = capabilities()?;
    println!("| step | µs per call |\n|---|---:|");
    let row = |name: &str, micros: f64| println!("| {name} | {micros:.1} |");
    row(
        "delegate_space_access (all of it)",
        micros_per_call(|| {
            black_box(runtime.block_on(delegator.delegate_space_access(black_box(&agent)))).ok();
        }),
    );
    row(
        "sign (payload, Ed25519 signature, block)",
        micros_per_call(|| {
            black_box(
                Delegation::builder(Principal::from(agent.clone()), capabilities.clone())
                    .proof(proof.clone())
                    .sign(&coordinator),
            )
            .ok();
        }),
    );
    let payload = delegation.signed_payload();
    row(
        "of which the Ed25519 signature of its payload",
        micros_per_call(|| {
            black_box(coordinator.sign(black_box(payload.as_bytes())));
        }),
    );
    row(
        "archive (CAR of the chain)",
        micros_per_call(|| {
            black_box(delegation.archive());
        }),
    );
    row(
        "to_identity_cid (archive, multibase)",
        micros_per_call(|| {
            black_box(delegation.to_identity_cid());
        }),
    );
    row(
        "to_base64 (archive, base64)",
        micros_per_call(|| {
            black_box(delegation.to_base64());
        }),
    );
    Ok(())
}
