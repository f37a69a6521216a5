//! The contracts' panic texts, in one place.
//!
//! Copied from the contracts' `require!` / `expect` calls
//! (leomanza/near-shade-coordination `registry-contract/src/lib.rs`, the
//! DID-keyed version, and `coordinator-contract/src/lib.rs` with the worker
//! roster). The local registry returns exactly these; on chain an `expect`
//! text may arrive prefixed with the panic location, so match with `contains`.

/// `register_coordinator` / `register_worker`: the coordinator DID lacks `did:`.
pub const COORDINATOR_DID_PREFIX: &str = "coordinator_did must start with 'did:'";
/// `register_worker`: the worker DID lacks `did:`.
pub const WORKER_DID_PREFIX: &str = "worker_did must start with 'did:'";
/// `register_coordinator`: `min_workers > max_workers`.
pub const MIN_ABOVE_MAX: &str = "min_workers must be <= max_workers";
/// `register_coordinator`: `max_workers == 0`.
pub const MAX_WORKERS_ZERO: &str = "max_workers must be > 0";
/// A DID names no coordinator.
pub const COORDINATOR_NOT_FOUND: &str = "Coordinator not found";
/// `register_worker`: the coordinator is deactivated.
pub const COORDINATOR_NOT_ACTIVE: &str = "Coordinator is not active";
/// A DID names no worker.
pub const WORKER_NOT_FOUND: &str = "Worker not found";
/// Upsert of a record registered by another account.
pub const ONLY_REGISTRANT_OR_ADMIN: &str = "Only the original registrant or admin can update";
/// `update_worker_endpoint` by a stranger.
pub const ONLY_WORKER_OWNER_UPDATE: &str = "Only worker owner or admin can update endpoint";
/// `deactivate_worker` by a stranger.
pub const ONLY_WORKER_OWNER_DEACTIVATE: &str = "Only worker owner or admin can deactivate";
/// `deactivate_coordinator` by a stranger.
pub const ONLY_COORDINATOR_OWNER_DEACTIVATE: &str =
    "Only coordinator owner or admin can deactivate";
/// Roster `register_worker` by neither the owner nor a registered coordinator.
pub const ONLY_OWNER_OR_COORDINATOR_REGISTERS: &str =
    "Only owner or registered coordinator can register workers";

/// Roster owner-only methods (`remove_worker`, …) called by someone else.
pub fn only_owner(owner: &str, caller: &str) -> String {
    format!("Only owner can call this function. Owner: {owner}, Caller: {caller}")
}
