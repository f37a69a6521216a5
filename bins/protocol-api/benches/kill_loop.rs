//! The kill loop of `tests/it/kill_loop.rs`, long: 300 SIGKILLs of the real
//! binary in local mode at random instants while 64 jobs are provisioned and
//! registered. It asserts what the test does (no job failed, no revealed
//! value changed, no ghost job, no orphan agent, no leaked Ensue org) and,
//! with that many kills (another 300 while a step was never found, up to
//! four loops), that they found jobs in every in-flight step.
//!
//! Run with `cargo bench -p protocol-api --bench kill_loop` (a few minutes).

use std::collections::BTreeMap;

use protocol_api::jobs::JobStatus;

// Shared with the integration tests (which use more of the harness), so
// its items are `pub` for sibling modules only.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/process.rs"]
mod process;

#[allow(unreachable_pub)]
#[path = "../tests/it/kill_loop.rs"]
mod kill_loop;

/// Loops of 300 kills run until the kills have found jobs in every
/// in-flight step; a step takes about a millisecond, so one loop may miss one.
const MAX_LOOPS: usize = 4;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let mut hit: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut missed = Vec::new();
    for loops in 1..=MAX_LOOPS {
        let found = runtime.block_on(kill_loop::run(kill_loop::Plan {
            kills: 300,
            // Only a provisioning POST's kill can land in its steps, so
            // enough jobs that each step is found by several kills.
            coordinators: 16,
            workers: 48,
        }));
        for (status, count) in found {
            *hit.entry(status).or_default() += count;
        }
        missed = JobStatus::ALL
            .into_iter()
            .filter(|status| !status.is_terminal() && *status != JobStatus::AwaitingNearSignature)
            .map(JobStatus::as_str)
            .filter(|status| !hit.contains_key(status))
            .collect();
        if missed.is_empty() {
            println!(
                "{} kills: no job failed, nothing leaked; kills found jobs at {hit:?}",
                loops * 300
            );
            return;
        }
    }
    panic!("after {MAX_LOOPS} loops of 300 kills none found a job at {missed:?}; found {hit:?}");
}
