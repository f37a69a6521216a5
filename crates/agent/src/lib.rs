#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod dashboard;
mod directory;
mod documents;
mod error;
mod local_deployer;
mod process;
mod runtime;
mod shutdown;

pub use directory::{RegistryWorkers, StaticWorkers, WorkerDirectory, WorkerListing};
pub use error::{Error, Result};
pub use local_deployer::{
    DeploymentJournal, JournalEntry, LocalDeployer, LocalDeploymentRecord, LostAgent, RestoreReport,
};
pub use process::{env_from_process, run_from_process_env};
pub use runtime::Agent;
pub use shutdown::shutdown_signal;

// The HTTP edges an agent serves with, and who may call it from a browser.
pub use delibera_serve::{CorsPolicy, Edges};

// The contract an agent is configured by.
pub use delibera_deploy::{AgentEnv, AgentRole, vars};
