#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod coordinator;
mod documents;
mod error;
mod handler;
mod llm;
mod rules;
mod shutdown;
mod types;
mod worker;

pub use coordinator::{Coordinator, CoordinatorConfig, MAX_INDEXED_PROPOSALS, MAX_ROUND_DEADLINE};
pub use documents::{
    DocumentFamily, REFERENCE_TASK_WAIT, ReceivedTask, ReferenceOutput, ReferenceOutputData,
    ReferenceTally, ReferenceTask, ReferenceWorkerResult, ResultDocument, TallyDocument,
    VOTE_TASK_TYPE,
};
pub use error::{Error, Result};
pub use handler::TaskHandler;
pub use llm::{LlmConfig, LlmVoter};
pub use rules::{RuleSet, RuleVoter, Threshold};
pub use types::{
    Ballot, Decision, Proposal, Tally, TaskDefinition, Vote, VotingConfig, WorkerOutcome,
    WorkerOutcomeStatus, WorkerResult,
};
pub use worker::{PollOutcome, Worker, WorkerConfig};

/// The attribute [`TaskHandler`] implementations need (`#[delibera_coordination::async_trait]`).
pub use async_trait::async_trait;
