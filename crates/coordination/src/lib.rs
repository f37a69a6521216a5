#![doc = include_str!("../README.md")]

mod coordinator;
mod directory;
mod error;
mod handler;
mod llm;
mod local_deployer;
mod rules;
mod runtime;
mod shutdown;
mod types;
mod worker;

pub use coordinator::{Coordinator, CoordinatorConfig, MAX_ROUND_DEADLINE};
pub use directory::{RegistryWorkers, StaticWorkers, WorkerDirectory};
pub use error::{Error, Result};
pub use handler::TaskHandler;
pub use llm::{LlmConfig, LlmVoter};
pub use local_deployer::{DeploymentJournal, LocalDeployer, LocalDeploymentRecord};
pub use rules::{RuleSet, RuleVoter, Threshold};
pub use runtime::{
    Agent, AgentConfig, AgentRole, COORDINATOR_DID_ENV, DISPLAY_NAME_ENV, HandlerChoice,
    POLL_INTERVAL_ENV, PORT_ENV, PRIVATE_KEY_ENV, PUBLIC_URL_ENV, ROUND_DEADLINE_ENV,
    TASK_HANDLER_ENV, shutdown_signal,
};
pub use types::{
    Ballot, Decision, Proposal, Tally, TaskDefinition, Vote, VotingConfig, WorkerOutcome,
    WorkerOutcomeStatus, WorkerResult,
};
pub use worker::{PollOutcome, Worker, WorkerConfig};

/// The attribute [`TaskHandler`] implementations need (`#[delibera_coordination::async_trait]`).
pub use async_trait::async_trait;
