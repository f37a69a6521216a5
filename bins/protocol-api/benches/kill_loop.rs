//! The kill loop of `tests/it/kill_loop.rs`, long: 300 SIGKILLs of the real
//! binary in local mode at random instants while 24 jobs are provisioned and
//! registered. It asserts what the test does (no job failed, no revealed
//! value changed, no ghost job, no orphan agent, no leaked Ensue org) and,
//! with that many kills, that they found jobs in every in-flight step.
//!
//! Run with `cargo bench -p protocol-api --bench kill_loop` (a few minutes).

use protocol_api::jobs::JobStatus;

// Shared with the integration tests (which use more of the harness), so
// its items are `pub` for sibling modules only.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/process.rs"]
mod process;

#[allow(unreachable_pub)]
#[path = "../tests/it/kill_loop.rs"]
mod kill_loop;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let hit = runtime.block_on(kill_loop::run(kill_loop::Plan {
        kills: 300,
        coordinators: 8,
        workers: 16,
    }));
    let missed: Vec<&str> = JobStatus::ALL
        .into_iter()
        .filter(|status| !status.is_terminal() && *status != JobStatus::AwaitingNearSignature)
        .map(JobStatus::as_str)
        .filter(|status| !hit.contains_key(status))
        .collect();
    assert!(missed.is_empty(), "no kill found a job at {missed:?}");
    println!("300 kills: no job failed, nothing leaked; kills found jobs at {hit:?}");
}
