#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod agent_env;
mod deployer;
mod env_var;
mod error;
mod health;
mod role;
mod spec;

pub use agent_env::{
    AgentDocuments, AgentEnv, AgentIdentity, DEFAULT_ENSUE_URL, DEFAULT_LLM_BASE_URL,
    DEFAULT_POLL_INTERVAL, DEFAULT_ROUND_DEADLINE, MAX_POLL_INTERVAL, StorachaGrant, Voter,
    WorkerBounds, is_loopback, vars,
};
pub use deployer::Deployer;
pub use env_var::{EnvVar, env_keys, validate_env_key, validate_env_list};
pub use error::{BoxError, Error, Result};
pub use health::{HealthGate, HealthProgress, HealthReport, OnHealthProgress};
pub use role::AgentRole;
pub use spec::{
    AgentSpec, DEFAULT_COORDINATOR_IMAGE, DEFAULT_WORKER_IMAGE, Deployment, DeploymentName,
    DeploymentStatus, ImageRef,
};

// Types that appear in public signatures.
pub use delibera_identity::{AccountId, Did};
pub use url::Url;
