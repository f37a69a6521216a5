//! The two families of coordination documents, and reading either.
//!
//! The `delibera` family is this crate's own ([`TaskDefinition`],
//! [`WorkerResult`], [`Tally`]). The `reference` family is what the
//! TypeScript agents write under the same keys: a task config
//! `{type, parameters, timeout}`, a WorkerResult
//! `{workerId, taskType, output:{value, vote?, reasoning?, data:{parameters}, computedAt}, processingTime}`
//! and a Tally `{aggregatedValue, approved, rejected, decision, workerCount, workers, timestamp, proposalId}`.
//! Agents read both families and write the one [`DocumentFamily`] selects, so
//! both kinds of agent can deliberate in one round.
//!
//! The reference documents written here carry a few extra fields
//! (`roundId`, `proposalId`, …) that the TypeScript agents ignore and that
//! let this crate keep telling rounds apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use delibera_identity::Did;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{Decision, Error, Result, Tally, TaskDefinition, Vote, VotingConfig, WorkerResult};

/// How long a worker gives a reference task that names no deadline: the
/// TypeScript coordinator waits 120 s for its workers, whatever the task's `timeout`.
pub const REFERENCE_TASK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The task type this crate's agents answer and publish: a vote.
pub const VOTE_TASK_TYPE: &str = "vote";

/// Which family of documents an agent writes (it reads both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentFamily {
    /// This crate's documents (the default).
    #[default]
    Delibera,
    /// The TypeScript agents' documents.
    Reference,
}

impl DocumentFamily {
    /// `delibera` or `reference`.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentFamily::Delibera => "delibera",
            DocumentFamily::Reference => "reference",
        }
    }
}

impl std::fmt::Display for DocumentFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DocumentFamily {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "delibera" => Ok(DocumentFamily::Delibera),
            "reference" => Ok(DocumentFamily::Reference),
            other => Err(Error::Config {
                reason: format!("expected `delibera` or `reference`, got {other:?}"),
            }),
        }
    }
}

/// The TypeScript agents' task config: the value of
/// `coordination/config/task_definition` in the reference family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceTask {
    /// `vote`, `count`, `multiply`, `random`, …
    #[serde(rename = "type")]
    pub task_type: String,
    /// Free-form; a vote's text is `proposal`, its approvals needed `voting_config.quorum`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    /// Milliseconds the task may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

impl ReferenceTask {
    /// `task` as a reference vote: its parameters (an object; any other value
    /// is kept under `value`) plus `proposal` (the title and description, the
    /// text a TypeScript worker votes on), `voting_config` (`quorum` =
    /// approvals needed, `minVotes`) and what this crate needs back:
    /// `proposalId`, `roundId`, `title`, `description`, `deadline`. `timeout`
    /// is the time left until the deadline.
    pub fn from_task(task: &TaskDefinition) -> Self {
        let mut parameters = match &task.parameters {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_owned(), other.clone())]),
        };
        let proposal = if task.description.is_empty() {
            task.title.clone()
        } else {
            format!("{}\n\n{}", task.title, task.description)
        };
        parameters.insert("proposal".into(), Value::String(proposal));
        parameters.insert("proposalId".into(), task.proposal_id.clone().into());
        parameters.insert("roundId".into(), task.round_id.clone().into());
        parameters.insert("title".into(), task.title.clone().into());
        parameters.insert("description".into(), task.description.clone().into());
        parameters.insert("deadline".into(), task.deadline.to_rfc3339().into());
        let mut voting = Map::new();
        if let Some(needed) = task.voting.approvals_needed {
            voting.insert("quorum".into(), needed.into());
        }
        if let Some(min) = task.voting.explicit_min_votes() {
            voting.insert("minVotes".into(), min.into());
        }
        if !voting.is_empty() {
            parameters.insert("voting_config".into(), Value::Object(voting));
        }
        let timeout = (task.deadline - Utc::now()).num_milliseconds().max(0);
        Self {
            task_type: VOTE_TASK_TYPE.to_owned(),
            parameters: Value::Object(parameters),
            timeout: u64::try_from(timeout).ok(),
        }
    }
}

/// A task definition read from memory, in whichever family it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedTask {
    /// The task, in this crate's terms (a reference task is translated).
    pub task: TaskDefinition,
    /// The reference config, when the task was written in that family.
    pub reference: Option<ReferenceTask>,
    /// Whether `task.round_id` was derived from the document's text because
    /// it named none (a TypeScript coordinator's task); such an id cannot tell
    /// two rounds of the same task apart.
    pub round_id_derived: bool,
}

impl ReceivedTask {
    /// Reads the value of `coordination/config/task_definition`: a
    /// [`TaskDefinition`], or a [`ReferenceTask`], either possibly
    /// JSON-encoded a second time (as the TypeScript coordinator may store it).
    ///
    /// A reference task becomes a [`TaskDefinition`] with: `proposalId`,
    /// `roundId`, `title`, `description` and `deadline` from its parameters
    /// when present; otherwise the id empty, the round id a hash of the text,
    /// the title `parameters.proposal` (else the task type), and the deadline
    /// [`REFERENCE_TASK_WAIT`] from now. `voting_config.quorum` becomes
    /// `approvalsNeeded` and `voting_config.minVotes` `minVotes`.
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::malformed("task definition", &e, text))?;
        let value = match value {
            Value::String(inner) => serde_json::from_str(&inner)
                .map_err(|e| Error::malformed("task definition", &e, text))?,
            other => other,
        };
        if value.get("type").is_none() {
            let task = TaskDefinition::deserialize(&value)
                .map_err(|e| Error::malformed("task definition", &e, text))?;
            return Ok(Self {
                task,
                reference: None,
                round_id_derived: false,
            });
        }
        let reference = ReferenceTask::deserialize(&value)
            .map_err(|e| Error::malformed("task definition", &e, text))?;
        let parameters = &reference.parameters;
        let text_field = |name: &str| parameters.get(name).and_then(Value::as_str);
        let proposal_id = match parameters.get("proposalId") {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => String::new(),
        };
        let (round_id, round_id_derived) = match text_field("roundId") {
            Some(round) => (round.to_owned(), false),
            None => (derived_round_id(&value), true),
        };
        let proposal = text_field("proposal");
        let (title, description) = match (text_field("title"), proposal) {
            (Some(title), _) => (
                title.to_owned(),
                text_field("description").unwrap_or_default().to_owned(),
            ),
            (None, Some(proposal)) => (proposal.to_owned(), String::new()),
            (None, None) => (reference.task_type.clone(), String::new()),
        };
        let count = |name: &str| {
            parameters
                .get("voting_config")
                .and_then(|config| config.get(name))
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let deadline = text_field("deadline")
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or_else(|| {
                Utc::now() + chrono::Duration::from_std(REFERENCE_TASK_WAIT).unwrap_or_default()
            });
        let task = TaskDefinition {
            proposal_id,
            round_id,
            title,
            description,
            parameters: reference.parameters.clone(),
            voting: VotingConfig {
                quorum: None,
                min_votes: count("minVotes"),
                approvals_needed: count("quorum"),
            },
            deadline,
        };
        Ok(Self {
            task,
            reference: Some(reference),
            round_id_derived,
        })
    }

    /// The family the task was written in.
    pub fn family(&self) -> DocumentFamily {
        match self.reference {
            Some(_) => DocumentFamily::Reference,
            None => DocumentFamily::Delibera,
        }
    }
}

/// `reference-` and 16 hex digits of the SHA-256 of the task's canonical JSON.
fn derived_round_id(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("reference-{hex}")
}

/// `output.data` of a [`ReferenceWorkerResult`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceOutputData {
    /// The task's parameters, echoed.
    #[serde(default)]
    pub parameters: Value,
}

/// `output` of a [`ReferenceWorkerResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceOutput {
    /// For a vote, 1 approved and 0 rejected; otherwise the computed number.
    pub value: Value,
    /// The vote, for a vote task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<Vote>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The parameters the worker answered.
    #[serde(default)]
    pub data: ReferenceOutputData,
    /// When the answer was computed.
    #[serde(with = "js_time")]
    pub computed_at: DateTime<Utc>,
}

/// The TypeScript agents' WorkerResult: `coordination/tasks/{did}/result` in
/// the reference family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceWorkerResult {
    /// The worker's DID.
    pub worker_id: String,
    /// The task type answered (absent when the task had none).
    #[serde(default)]
    pub task_type: String,
    /// The answer.
    pub output: ReferenceOutput,
    /// Milliseconds the task took.
    pub processing_time: u64,
    /// The round answered (written by this crate's workers; TypeScript ones
    /// echo it in `output.data.parameters.roundId` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<String>,
    /// The proposal answered (written by this crate's workers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<String>,
}

impl ReferenceWorkerResult {
    /// `result` in the reference shape, answering a task of `task_type` with `parameters`.
    pub fn from_result(result: &WorkerResult, task_type: &str, parameters: Value) -> Self {
        Self {
            worker_id: result.worker_did.to_string(),
            task_type: task_type.to_owned(),
            output: ReferenceOutput {
                value: Value::from(u8::from(result.vote == Vote::Approved)),
                vote: Some(result.vote),
                reasoning: Some(result.reasoning.clone()),
                data: ReferenceOutputData { parameters },
                computed_at: result.finished_at,
            },
            processing_time: result.processing_time_ms,
            round_id: Some(result.round_id.clone()).filter(|id| !id.is_empty()),
            proposal_id: Some(result.proposal_id.clone()).filter(|id| !id.is_empty()),
        }
    }

    /// This result as a [`WorkerResult`] of `task` by `worker_did`, or `None`
    /// when it carries no vote (a TypeScript worker answering a non-vote task).
    pub fn to_result(&self, worker_did: Did, task: &TaskDefinition) -> Option<WorkerResult> {
        let vote = self.output.vote?;
        let took =
            chrono::Duration::milliseconds(i64::try_from(self.processing_time).unwrap_or(i64::MAX));
        Some(WorkerResult {
            worker_did,
            proposal_id: task.proposal_id.clone(),
            round_id: task.round_id.clone(),
            vote,
            reasoning: self.output.reasoning.clone().unwrap_or_default(),
            started_at: self
                .output
                .computed_at
                .checked_sub_signed(took)
                .unwrap_or(self.output.computed_at),
            finished_at: self.output.computed_at,
            processing_time_ms: self.processing_time,
        })
    }

    /// The round this result names: `roundId`, else the echoed
    /// `output.data.parameters.roundId`; `None` for a TypeScript coordinator's task.
    pub fn round_id(&self) -> Option<&str> {
        self.round_id.as_deref().or_else(|| {
            self.output
                .data
                .parameters
                .get("roundId")
                .and_then(Value::as_str)
        })
    }
}

/// A worker result read from memory, in whichever family it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultDocument {
    /// This crate's [`WorkerResult`].
    Delibera(WorkerResult),
    /// The TypeScript agents' WorkerResult.
    Reference(ReferenceWorkerResult),
}

impl ResultDocument {
    /// Reads the value of `coordination/tasks/{did}/result`: a document with
    /// `workerId` is a reference result, anything else this crate's.
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::malformed("worker result", &e, text))?;
        let document = if value.get("workerId").is_some() {
            ResultDocument::Reference(
                ReferenceWorkerResult::deserialize(&value)
                    .map_err(|e| Error::malformed("worker result", &e, text))?,
            )
        } else {
            ResultDocument::Delibera(
                WorkerResult::deserialize(&value)
                    .map_err(|e| Error::malformed("worker result", &e, text))?,
            )
        };
        Ok(document)
    }
}

/// The TypeScript agents' Tally: `coordination/coordinator/tally` in the
/// reference family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceTally {
    /// The approvals, or the sum of the values when nobody voted.
    pub aggregated_value: Value,
    /// Votes for.
    pub approved: u32,
    /// Votes against.
    pub rejected: u32,
    /// `Approved` or `Rejected` (a round without enough votes is `Rejected`
    /// here; `outcome` says `NoQuorum`).
    pub decision: Vote,
    /// Results counted.
    pub worker_count: u32,
    /// The counted results.
    pub workers: Vec<ReferenceWorkerResult>,
    /// When the tally was made.
    #[serde(with = "js_time")]
    pub timestamp: DateTime<Utc>,
    /// The on-chain proposal id, 0 when there is none.
    pub proposal_id: u64,
    /// Display names by DID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_names: Option<BTreeMap<String, String>>,
    /// The round (written by this crate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<String>,
    /// The full decision, `NoQuorum` included (written by this crate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Decision>,
    /// Votes that had to be cast (written by this crate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_votes: Option<u32>,
    /// Approvals that approve, when set (written by this crate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_needed: Option<u32>,
}

impl ReferenceTally {
    /// `tally` in the reference shape; `workers` are the counted results in that shape.
    pub fn from_tally(tally: &Tally, workers: Vec<ReferenceWorkerResult>) -> Self {
        let decision = match tally.decision {
            Decision::Approved => Vote::Approved,
            Decision::Rejected | Decision::NoQuorum => Vote::Rejected,
        };
        Self {
            aggregated_value: tally.approved.into(),
            approved: tally.approved,
            rejected: tally.rejected,
            decision,
            worker_count: u32::try_from(workers.len()).unwrap_or(u32::MAX),
            workers,
            timestamp: tally.timestamp,
            proposal_id: tally.proposal_id.parse().unwrap_or(0),
            worker_names: None,
            round_id: Some(tally.round_id.clone()),
            outcome: Some(tally.decision),
            min_votes: Some(tally.quorum),
            approvals_needed: tally.approvals_needed,
        }
    }

    /// The decision, `NoQuorum` included when this crate wrote the tally.
    pub fn decision(&self) -> Decision {
        self.outcome.unwrap_or(match self.decision {
            Vote::Approved => Decision::Approved,
            Vote::Rejected => Decision::Rejected,
        })
    }
}

/// A tally read from memory, in whichever family it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum TallyDocument {
    /// This crate's [`Tally`].
    Delibera(Tally),
    /// The TypeScript agents' Tally.
    Reference(ReferenceTally),
}

impl TallyDocument {
    /// Reads the value of `coordination/coordinator/tally` (or an archived
    /// tally): a document with `aggregatedValue` is a reference tally.
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::malformed("tally", &e, text))?;
        Ok(if value.get("aggregatedValue").is_some() {
            TallyDocument::Reference(
                ReferenceTally::deserialize(&value)
                    .map_err(|e| Error::malformed("tally", &e, text))?,
            )
        } else {
            TallyDocument::Delibera(
                Tally::deserialize(&value).map_err(|e| Error::malformed("tally", &e, text))?,
            )
        })
    }

    /// The decision.
    pub fn decision(&self) -> Decision {
        match self {
            TallyDocument::Delibera(tally) => tally.decision,
            TallyDocument::Reference(tally) => tally.decision(),
        }
    }

    /// Votes for and against.
    pub fn votes(&self) -> (u32, u32) {
        match self {
            TallyDocument::Delibera(tally) => (tally.approved, tally.rejected),
            TallyDocument::Reference(tally) => (tally.approved, tally.rejected),
        }
    }
}

/// Times as JavaScript's `toISOString` writes them (milliseconds, `Z`), the
/// form the TypeScript agents write and compare.
mod js_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        at: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(deserializer)
    }
}
