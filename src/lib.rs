//! Delibera: AI agents (one coordinator, many workers) that deliberate and vote
//! on DAO proposals, coordinate through Ensue shared memory, run inside Phala
//! TEEs and are registered on NEAR.
//!
//! This umbrella crate re-exports the workspace's library crates so examples
//! and applications can depend on one crate. See `docs/architecture.md`.

pub use delibera_agent as agent;
pub use delibera_backoff as backoff;
pub use delibera_coordination as coordination;
pub use delibera_data_dir as data_dir;
pub use delibera_deploy as deploy;
pub use delibera_devnet as devnet;
pub use delibera_ensue as ensue;
pub use delibera_ensue_local as ensue_local;
pub use delibera_identity as identity;
pub use delibera_jsonrpc as jsonrpc;
pub use delibera_near as near;
pub use delibera_phala as phala;
pub use delibera_serve as serve;
pub use delibera_storacha as storacha;
