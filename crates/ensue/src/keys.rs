//! The coordination key layout, and the status values stored under it.
//!
//! Every key string of the layout is built here and only here:
//!
//! | key | builder |
//! |---|---|
//! | `coordination/coordinator/status` | [`coordinator_status`] |
//! | `coordination/coordinator/proposal_id` | [`coordinator_proposal_id`] |
//! | `coordination/coordinator/tally` | [`coordinator_tally`] |
//! | `coordination/config/task_definition` | [`task_definition`] |
//! | `coordination/tasks/{workerDid}/{status,result,timestamp,error}` | [`worker`], [`WorkerField`] |
//! | `coordination/proposals/{proposalId}/{config,status,tally}` | [`proposal`], [`ProposalField`] |
//! | `coordination/proposals/{proposalId}/workers/{workerDid}/{result,timestamp}` | [`proposal_worker`] |
//! | `coordination/proposals/_index` | [`proposal_index`] |
//! | `agent/{did}/{display_name,endpoint,manifesto,preferences,decisions}` | [`agent`], [`AgentField`] |
//!
//! ```
//! use delibera_ensue::keys::{self, WorkerField, WorkerStatus};
//! use delibera_identity::Did;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let did: Did = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH".parse()?;
//! assert_eq!(
//!     keys::worker(&did, WorkerField::Status),
//!     "coordination/tasks/did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH/status",
//! );
//! assert_eq!("pending".parse::<WorkerStatus>()?, WorkerStatus::Pending);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::str::FromStr;

use delibera_identity::Did;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The root of all coordination state.
const COORDINATION: &str = "coordination";
const COORDINATOR: &str = "coordinator";
const CONFIG: &str = "config";
const TASKS: &str = "tasks";
const PROPOSALS: &str = "proposals";
const WORKERS: &str = "workers";
const AGENT: &str = "agent";

/// `coordination/`: every coordination key starts with it.
pub fn coordination_prefix() -> String {
    format!("{COORDINATION}/")
}

/// `coordination/coordinator/status`: a [`CoordinatorStatus`].
pub fn coordinator_status() -> String {
    format!("{COORDINATION}/{COORDINATOR}/status")
}

/// `coordination/coordinator/proposal_id`: the proposal being coordinated.
pub fn coordinator_proposal_id() -> String {
    format!("{COORDINATION}/{COORDINATOR}/proposal_id")
}

/// `coordination/coordinator/tally`: the JSON tally after aggregation.
pub fn coordinator_tally() -> String {
    format!("{COORDINATION}/{COORDINATOR}/tally")
}

/// `coordination/config/task_definition`: the current task config (JSON).
pub fn task_definition() -> String {
    format!("{COORDINATION}/{CONFIG}/task_definition")
}

/// `coordination/tasks/`: the parent of every worker's keys.
pub fn tasks_prefix() -> String {
    format!("{COORDINATION}/{TASKS}/")
}

/// A per-worker key under `coordination/tasks/{workerDid}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerField {
    /// `status`: a [`WorkerStatus`].
    Status,
    /// `result`: the `WorkerResult` JSON (vote, reasoning, timing).
    Result,
    /// `timestamp`: ISO time of completion.
    Timestamp,
    /// `error`: the error message when the task failed.
    Error,
}

impl WorkerField {
    /// Every field, in the order the key layout lists them.
    pub const ALL: [WorkerField; 4] = [
        WorkerField::Status,
        WorkerField::Result,
        WorkerField::Timestamp,
        WorkerField::Error,
    ];

    /// The key suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerField::Status => "status",
            WorkerField::Result => "result",
            WorkerField::Timestamp => "timestamp",
            WorkerField::Error => "error",
        }
    }
}

/// `coordination/tasks/{workerDid}/`.
pub fn worker_prefix(worker: &Did) -> String {
    format!("{}{worker}/", tasks_prefix())
}

/// `coordination/tasks/{workerDid}/{field}`.
pub fn worker(worker: &Did, field: WorkerField) -> String {
    format!("{}{}", worker_prefix(worker), field.as_str())
}

/// Splits a key built by [`worker`] back into the worker and the field
/// (e.g. to find the workers in a `list_keys` of [`tasks_prefix`]).
pub fn parse_worker_key(key: &str) -> Option<(Did, WorkerField)> {
    let rest = key.strip_prefix(&tasks_prefix())?;
    let (did, suffix) = rest.rsplit_once('/')?;
    let field = WorkerField::ALL
        .into_iter()
        .find(|field| field.as_str() == suffix)?;
    Some((did.parse().ok()?, field))
}

/// A per-proposal archive key under `coordination/proposals/{proposalId}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProposalField {
    /// `config`: the original task config.
    Config,
    /// `status`: the proposal's status.
    Status,
    /// `tally`: the aggregated vote result.
    Tally,
}

impl ProposalField {
    /// The key suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalField::Config => "config",
            ProposalField::Status => "status",
            ProposalField::Tally => "tally",
        }
    }
}

/// `coordination/proposals/{proposalId}/`.
pub fn proposal_prefix(proposal_id: &str) -> String {
    format!("{COORDINATION}/{PROPOSALS}/{proposal_id}/")
}

/// `coordination/proposals/{proposalId}/{field}`.
pub fn proposal(proposal_id: &str, field: ProposalField) -> String {
    format!("{}{}", proposal_prefix(proposal_id), field.as_str())
}

/// `coordination/proposals/{proposalId}/workers/{workerDid}/{result|timestamp}`:
/// a worker's archived result or completion time. Only
/// [`WorkerField::Result`] and [`WorkerField::Timestamp`] are archived.
pub fn proposal_worker(proposal_id: &str, worker: &Did, field: WorkerField) -> String {
    format!(
        "{}{WORKERS}/{worker}/{}",
        proposal_prefix(proposal_id),
        field.as_str()
    )
}

/// `coordination/proposals/{proposalId}/workers/`: the parent of a
/// proposal's archived worker keys.
pub fn proposal_workers_prefix(proposal_id: &str) -> String {
    format!("{}{WORKERS}/", proposal_prefix(proposal_id))
}

/// Splits a key built by [`proposal_worker`] back into the worker and the
/// field (e.g. to find the workers in a `list_keys` of
/// [`proposal_workers_prefix`]).
pub fn parse_proposal_worker_key(proposal_id: &str, key: &str) -> Option<(Did, WorkerField)> {
    let rest = key.strip_prefix(&proposal_workers_prefix(proposal_id))?;
    let (did, suffix) = rest.rsplit_once('/')?;
    let field = [WorkerField::Result, WorkerField::Timestamp]
        .into_iter()
        .find(|field| field.as_str() == suffix)?;
    Some((did.parse().ok()?, field))
}

/// `coordination/proposals/_index`: the JSON array of archived proposal ids,
/// oldest first (no proposal key collides with it: those have a field
/// after the id).
pub fn proposal_index() -> String {
    format!("{COORDINATION}/{PROPOSALS}/_index")
}

/// An agent identity key under `agent/{did}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentField {
    /// `display_name`: the human-readable worker name.
    DisplayName,
    /// `endpoint`: the worker's endpoint URL.
    Endpoint,
    /// `manifesto`: the worker's JSON `{agentId, name, role, values, guidelines}`.
    Manifesto,
    /// `preferences`: the worker's JSON `{agentId, votingWeights, knowledgeNotes, updatedAt}`.
    Preferences,
    /// `decisions`: the worker's JSON array of its latest votes.
    Decisions,
}

impl AgentField {
    /// The key suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentField::DisplayName => "display_name",
            AgentField::Endpoint => "endpoint",
            AgentField::Manifesto => "manifesto",
            AgentField::Preferences => "preferences",
            AgentField::Decisions => "decisions",
        }
    }
}

/// `agent/{did}/{field}`.
pub fn agent(did: &Did, field: AgentField) -> String {
    format!("{AGENT}/{did}/{}", field.as_str())
}

/// Declares a status enum whose values are exact strings, with `as_str`,
/// `Display`, `FromStr` and serde all using those strings.
macro_rules! status_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact string stored in Ensue.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::UnknownStatus {
                        kind: $kind,
                        value: text.to_owned(),
                    }),
                }
            }
        }
    };
}

status_enum! {
    /// A worker's status, stored at `coordination/tasks/{workerDid}/status`.
    WorkerStatus, "worker" {
        /// Waiting for work.
        Idle => "idle",
        /// The coordinator has assigned a task: start it.
        Pending => "pending",
        /// Working on the task.
        Processing => "processing",
        /// Done; the result is written.
        Completed => "completed",
        /// The task failed; the error is written.
        Failed => "failed",
    }
}

status_enum! {
    /// The coordinator's status, stored at `coordination/coordinator/status`.
    CoordinatorStatus, "coordinator" {
        /// No proposal in progress.
        Idle => "idle",
        /// Workers are deliberating.
        Coordinating => "coordinating",
        /// Results are being aggregated.
        Tallying => "tallying",
        /// The last round is tallied; stays until the next round starts.
        Completed => "completed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";

    fn did() -> Did {
        DID.parse().unwrap()
    }

    #[test]
    fn every_key_of_the_seed_tables() {
        assert_eq!(coordinator_status(), "coordination/coordinator/status");
        assert_eq!(
            coordinator_proposal_id(),
            "coordination/coordinator/proposal_id"
        );
        assert_eq!(coordinator_tally(), "coordination/coordinator/tally");
        assert_eq!(task_definition(), "coordination/config/task_definition");
        let suffixes: Vec<String> = WorkerField::ALL
            .into_iter()
            .map(|field| worker(&did(), field))
            .collect();
        assert_eq!(
            suffixes,
            ["status", "result", "timestamp", "error"]
                .map(|suffix| format!("coordination/tasks/{DID}/{suffix}"))
        );
        assert_eq!(
            proposal("42", ProposalField::Config),
            "coordination/proposals/42/config"
        );
        assert_eq!(
            proposal("42", ProposalField::Status),
            "coordination/proposals/42/status"
        );
        assert_eq!(
            proposal("42", ProposalField::Tally),
            "coordination/proposals/42/tally"
        );
        assert_eq!(
            proposal_worker("42", &did(), WorkerField::Result),
            format!("coordination/proposals/42/workers/{DID}/result")
        );
        assert_eq!(
            proposal_worker("42", &did(), WorkerField::Timestamp),
            format!("coordination/proposals/42/workers/{DID}/timestamp")
        );
        assert_eq!(
            agent(&did(), AgentField::DisplayName),
            format!("agent/{DID}/display_name")
        );
        assert_eq!(
            agent(&did(), AgentField::Endpoint),
            format!("agent/{DID}/endpoint")
        );
        assert_eq!(proposal_index(), "coordination/proposals/_index");
        for (field, suffix) in [
            (AgentField::Manifesto, "manifesto"),
            (AgentField::Preferences, "preferences"),
            (AgentField::Decisions, "decisions"),
        ] {
            assert_eq!(agent(&did(), field), format!("agent/{DID}/{suffix}"));
        }
        assert!(worker(&did(), WorkerField::Status).starts_with(&tasks_prefix()));
        assert!(tasks_prefix().starts_with(&coordination_prefix()));
    }

    #[test]
    fn worker_keys_parse_back() {
        for field in WorkerField::ALL {
            assert_eq!(
                parse_worker_key(&worker(&did(), field)),
                Some((did(), field))
            );
        }
        assert_eq!(
            parse_worker_key("coordination/tasks/not-a-did/status"),
            None
        );
        assert_eq!(
            parse_worker_key(&format!("coordination/tasks/{DID}/other")),
            None
        );
        assert_eq!(parse_worker_key(&coordinator_status()), None);
        for field in [WorkerField::Result, WorkerField::Timestamp] {
            let key = proposal_worker("42", &did(), field);
            assert!(key.starts_with(&proposal_workers_prefix("42")));
            assert_eq!(parse_proposal_worker_key("42", &key), Some((did(), field)));
            assert_eq!(parse_proposal_worker_key("4", &key), None);
        }
    }

    #[test]
    fn statuses_use_their_exact_strings_everywhere() {
        let worker_texts: Vec<&str> = WorkerStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            worker_texts,
            ["idle", "pending", "processing", "completed", "failed"]
        );
        let coordinator_texts: Vec<&str> =
            CoordinatorStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            coordinator_texts,
            ["idle", "coordinating", "tallying", "completed"]
        );
        for status in WorkerStatus::ALL {
            assert_eq!(status.to_string().parse::<WorkerStatus>().unwrap(), *status);
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(
                serde_json::from_str::<WorkerStatus>(&json).unwrap(),
                *status
            );
        }
        for status in CoordinatorStatus::ALL {
            assert_eq!(
                status.to_string().parse::<CoordinatorStatus>().unwrap(),
                *status
            );
        }
        assert!(matches!(
            "Pending".parse::<WorkerStatus>(),
            Err(Error::UnknownStatus { kind: "worker", .. })
        ));
    }
}
