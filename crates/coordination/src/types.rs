//! The JSON documents coordinators and workers exchange through Ensue.
//!
//! Field names are camelCase and stable: they are the wire format other
//! implementations read (see the crate README for the full table).

use chrono::{DateTime, Utc};
use delibera_identity::Did;
use serde::{Deserialize, Serialize};

/// What a coordinator asks its workers to vote on: the value of
/// `coordination/config/task_definition` and of the proposal archive's `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    /// The proposal being decided.
    pub proposal_id: String,
    /// Identifies this round; results carry it back so a result from an earlier
    /// round is never counted in a later one.
    pub round_id: String,
    /// Short title of the proposal.
    pub title: String,
    /// Full text of the proposal.
    #[serde(default)]
    pub description: String,
    /// Free-form parameters (amounts, rules for the rule-based voter, …).
    #[serde(default)]
    pub parameters: serde_json::Value,
    /// How votes are counted.
    #[serde(default)]
    pub voting: VotingConfig,
    /// When the coordinator stops waiting for results.
    pub deadline: DateTime<Utc>,
}

/// How a round's votes are counted.
///
/// Two different numbers are both called "quorum" by the clients of this
/// protocol, so each has its own field:
///
/// - `minVotes` — votes that must be cast (approved + rejected) for the
///   round to count at all; fewer gives [`Decision::NoQuorum`]. `quorum` is
///   the older name of the same number, still read and written.
/// - `approvalsNeeded` — approvals that approve the proposal, whatever the
///   rejections (the TypeScript agents' `parameters.voting_config.quorum`).
///
/// Without `approvalsNeeded` the decision is a majority of the votes cast (a
/// tie rejects), and `minVotes` defaults to a strict majority of the round's
/// workers. With `approvalsNeeded` the decision is `approved >= approvalsNeeded`,
/// and `minVotes` defaults to 0 (the TypeScript rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VotingConfig {
    /// Older name of [`min_votes`](Self::min_votes); used when that is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// Votes that must be cast for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_votes: Option<u32>,
    /// Approvals that approve the proposal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_needed: Option<u32>,
}

impl VotingConfig {
    /// The explicit minimum of votes cast: `minVotes`, else `quorum`.
    pub fn explicit_min_votes(&self) -> Option<u32> {
        self.min_votes.or(self.quorum)
    }

    /// The votes that must be cast in a round of `worker_count` workers.
    pub fn min_votes_for(&self, worker_count: u32) -> u32 {
        match (self.explicit_min_votes(), self.approvals_needed) {
            (Some(min), _) => min,
            (None, Some(_)) => 0,
            (None, None) => worker_count / 2 + 1,
        }
    }

    /// The decision for these counts in a round of `worker_count` workers.
    pub fn decide(&self, approved: u32, rejected: u32, worker_count: u32) -> Decision {
        if approved.saturating_add(rejected) < self.min_votes_for(worker_count) {
            return Decision::NoQuorum;
        }
        let approves = match self.approvals_needed {
            Some(needed) => approved >= needed,
            None => approved > rejected,
        };
        if approves {
            Decision::Approved
        } else {
            Decision::Rejected
        }
    }
}

/// What a coordinator puts up for a vote; [`TaskDefinition`] adds the round's
/// id and deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    /// The proposal's id (also the archive prefix `coordination/proposals/{id}/`).
    pub proposal_id: String,
    /// Short title.
    pub title: String,
    /// Full text.
    #[serde(default)]
    pub description: String,
    /// Free-form parameters handed to every worker's handler.
    #[serde(default)]
    pub parameters: serde_json::Value,
    /// How votes are counted.
    #[serde(default)]
    pub voting: VotingConfig,
}

impl Proposal {
    /// A proposal with empty parameters and the default quorum.
    pub fn new(proposal_id: impl Into<String>, title: impl Into<String>) -> Self {
        Self {
            proposal_id: proposal_id.into(),
            title: title.into(),
            description: String::new(),
            parameters: serde_json::Value::Null,
            voting: VotingConfig::default(),
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the parameters.
    pub fn with_parameters(mut self, parameters: serde_json::Value) -> Self {
        self.parameters = parameters;
        self
    }

    /// Sets an explicit quorum (votes that must be cast; written as `quorum`).
    pub fn with_quorum(mut self, quorum: u32) -> Self {
        self.voting.quorum = Some(quorum);
        self
    }

    /// Sets the votes that must be cast for a decision (`minVotes`).
    pub fn with_min_votes(mut self, min_votes: u32) -> Self {
        self.voting.min_votes = Some(min_votes);
        self
    }

    /// Sets the approvals that approve the proposal (`approvalsNeeded`).
    pub fn with_approvals_needed(mut self, approvals_needed: u32) -> Self {
        self.voting.approvals_needed = Some(approvals_needed);
        self
    }
}

/// A worker's vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Vote {
    /// For the proposal.
    Approved,
    /// Against the proposal.
    Rejected,
}

impl std::fmt::Display for Vote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vote::Approved => "Approved",
            Vote::Rejected => "Rejected",
        })
    }
}

/// What a [`TaskHandler`](crate::TaskHandler) decides: a vote and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    /// The vote.
    pub vote: Vote,
    /// The reasons, in words.
    pub reasoning: String,
}

impl Ballot {
    /// A ballot approving the proposal.
    pub fn approve(reasoning: impl Into<String>) -> Self {
        Self {
            vote: Vote::Approved,
            reasoning: reasoning.into(),
        }
    }

    /// A ballot rejecting the proposal.
    pub fn reject(reasoning: impl Into<String>) -> Self {
        Self {
            vote: Vote::Rejected,
            reasoning: reasoning.into(),
        }
    }
}

/// A worker's answer: the value of `coordination/tasks/{did}/result` and of the
/// archive's `workers/{did}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerResult {
    /// The worker that voted.
    pub worker_did: Did,
    /// The proposal voted on.
    pub proposal_id: String,
    /// The round this result answers (see [`TaskDefinition::round_id`]).
    pub round_id: String,
    /// The vote.
    pub vote: Vote,
    /// Why.
    pub reasoning: String,
    /// When the handler started.
    pub started_at: DateTime<Utc>,
    /// When the handler finished.
    pub finished_at: DateTime<Utc>,
    /// `finished_at - started_at`, in milliseconds.
    pub processing_time_ms: u64,
}

/// The round's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// Enough votes cast, and more approvals than rejections (or, with
    /// `approvalsNeeded`, at least that many approvals).
    Approved,
    /// Enough votes cast, and the proposal not approved (a tie keeps the status quo).
    Rejected,
    /// Fewer votes cast than the minimum (`minVotes`).
    NoQuorum,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Approved => "Approved",
            Decision::Rejected => "Rejected",
            Decision::NoQuorum => "NoQuorum",
        })
    }
}

/// How one worker of the round's snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkerOutcomeStatus {
    /// Wrote a result for this round.
    Completed,
    /// Reported `failed` (handler error, panic or timeout).
    Failed,
    /// Did not answer before the deadline.
    Silent,
}

/// One worker's line in a [`Tally`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerOutcome {
    /// The worker.
    pub worker_did: Did,
    /// How it ended.
    pub status: WorkerOutcomeStatus,
    /// Its vote, when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<Vote>,
    /// Its reasoning, when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Its error message, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The aggregated vote: the value of `coordination/coordinator/tally` and of
/// the archive's `tally`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// The proposal.
    pub proposal_id: String,
    /// The round.
    pub round_id: String,
    /// Votes for.
    pub approved: u32,
    /// Votes against.
    pub rejected: u32,
    /// Workers that failed or stayed silent (listed in `abstainedWorkers`).
    pub abstained: u32,
    /// The outcome.
    pub decision: Decision,
    /// The quorum applied (votes that had to be cast).
    pub quorum: u32,
    /// The approvals that approved, when the task set `approvalsNeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_needed: Option<u32>,
    /// Size of the round's worker snapshot.
    pub worker_count: u32,
    /// The DIDs counted as abstained.
    pub abstained_workers: Vec<Did>,
    /// Every worker of the snapshot, in DID order.
    pub workers: Vec<WorkerOutcome>,
    /// The full results of the workers that completed, in DID order.
    pub results: Vec<WorkerResult>,
    /// When the tally was made.
    pub timestamp: DateTime<Utc>,
}

impl Tally {
    /// Counts `outcomes` (one per worker of the snapshot) under the task's
    /// [`VotingConfig`].
    pub fn count(
        task: &TaskDefinition,
        mut outcomes: Vec<WorkerOutcome>,
        mut results: Vec<WorkerResult>,
        timestamp: DateTime<Utc>,
    ) -> Self {
        outcomes.sort_by(|a, b| a.worker_did.as_str().cmp(b.worker_did.as_str()));
        results.sort_by(|a, b| a.worker_did.as_str().cmp(b.worker_did.as_str()));
        let worker_count = u32::try_from(outcomes.len()).unwrap_or(u32::MAX);
        let votes = |wanted: Vote| {
            let n = outcomes.iter().filter(|o| o.vote == Some(wanted)).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        let approved = votes(Vote::Approved);
        let rejected = votes(Vote::Rejected);
        let abstained_workers: Vec<Did> = outcomes
            .iter()
            .filter(|o| o.vote.is_none())
            .map(|o| o.worker_did.clone())
            .collect();
        let quorum = task.voting.min_votes_for(worker_count);
        let decision = task.voting.decide(approved, rejected, worker_count);
        Self {
            proposal_id: task.proposal_id.clone(),
            round_id: task.round_id.clone(),
            approved,
            rejected,
            abstained: u32::try_from(abstained_workers.len()).unwrap_or(u32::MAX),
            decision,
            quorum,
            approvals_needed: task.voting.approvals_needed,
            worker_count,
            abstained_workers,
            workers: outcomes,
            results,
            timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(n: u8, vote: Option<Vote>) -> WorkerOutcome {
        let did = delibera_identity::Keypair::from_seed(&[n; 32]).did();
        WorkerOutcome {
            worker_did: did,
            status: if vote.is_some() {
                WorkerOutcomeStatus::Completed
            } else {
                WorkerOutcomeStatus::Silent
            },
            vote,
            reasoning: None,
            error: None,
        }
    }

    fn task(quorum: Option<u32>) -> TaskDefinition {
        TaskDefinition {
            proposal_id: "p".into(),
            round_id: "r".into(),
            title: "t".into(),
            description: String::new(),
            parameters: serde_json::Value::Null,
            voting: VotingConfig {
                quorum,
                ..VotingConfig::default()
            },
            deadline: Utc::now(),
        }
    }

    fn decide(quorum: Option<u32>, votes: &[Option<Vote>]) -> Tally {
        let outcomes = (1u8..)
            .zip(votes)
            .map(|(n, vote)| outcome(n, *vote))
            .collect();
        Tally::count(&task(quorum), outcomes, Vec::new(), Utc::now())
    }

    #[test]
    fn a_tie_keeps_the_status_quo() {
        let tally = decide(None, &[Some(Vote::Approved), Some(Vote::Rejected)]);
        assert_eq!((tally.quorum, tally.decision), (2, Decision::Rejected));
    }

    #[test]
    fn default_quorum_is_a_strict_majority_of_the_snapshot() {
        let approved = Some(Vote::Approved);
        let tally = decide(None, &[approved, approved, None, None]);
        assert_eq!((tally.quorum, tally.decision), (3, Decision::NoQuorum));
        let tally = decide(None, &[approved, approved, None]);
        assert_eq!((tally.quorum, tally.decision), (2, Decision::Approved));
        assert_eq!(tally.abstained_workers.len(), 1);
    }

    #[test]
    fn an_explicit_quorum_overrides_the_majority() {
        let approved = Some(Vote::Approved);
        let tally = decide(Some(1), &[approved, None, None, None]);
        assert_eq!((tally.quorum, tally.decision), (1, Decision::Approved));
    }

    #[test]
    fn approvals_needed_and_min_votes_are_separate_rules() {
        let rules = |min_votes, approvals_needed| VotingConfig {
            quorum: None,
            min_votes,
            approvals_needed,
        };
        // (approved, rejected, snapshot) → decision.
        let majority = rules(None, None);
        assert_eq!(majority.decide(2, 1, 4), Decision::Approved);
        assert_eq!(majority.decide(1, 1, 4), Decision::NoQuorum);
        assert_eq!(majority.decide(1, 2, 3), Decision::Rejected);
        let approvals = rules(None, Some(2));
        assert_eq!(approvals.decide(2, 5, 7), Decision::Approved);
        assert_eq!(approvals.decide(1, 0, 7), Decision::Rejected);
        assert_eq!(approvals.min_votes_for(7), 0);
        let both = rules(Some(4), Some(2));
        assert_eq!(both.decide(2, 1, 7), Decision::NoQuorum);
        assert_eq!(both.decide(2, 2, 7), Decision::Approved);
        let min_votes = rules(Some(2), None);
        assert_eq!(min_votes.decide(1, 1, 9), Decision::Rejected);
        // `quorum` is the older name of `minVotes`, which wins when both are set.
        let legacy = VotingConfig {
            quorum: Some(3),
            ..VotingConfig::default()
        };
        assert_eq!(legacy.min_votes_for(9), 3);
        assert_eq!(
            VotingConfig {
                min_votes: Some(1),
                ..legacy
            }
            .min_votes_for(9),
            1
        );
    }

    #[test]
    fn the_delibera_documents_round_trip_and_read_as_their_family() {
        let tally = decide(Some(1), &[Some(Vote::Approved), None]);
        let text = serde_json::to_string(&tally).unwrap();
        assert_eq!(serde_json::from_str::<Tally>(&text).unwrap(), tally);
        assert_eq!(
            crate::TallyDocument::parse(&text).unwrap(),
            crate::TallyDocument::Delibera(tally)
        );
        let mut task = task(Some(2));
        task.voting.approvals_needed = Some(1);
        let text = serde_json::to_string(&task).unwrap();
        assert!(text.contains("\"approvalsNeeded\":1"), "{text}");
        let received = crate::ReceivedTask::parse(&text).unwrap();
        assert_eq!(received.task, task);
        assert_eq!(received.family(), crate::DocumentFamily::Delibera);
        let result = WorkerResult {
            worker_did: delibera_identity::Keypair::from_seed(&[1; 32]).did(),
            proposal_id: "p".into(),
            round_id: "r".into(),
            vote: Vote::Rejected,
            reasoning: "no".into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            processing_time_ms: 0,
        };
        let text = serde_json::to_string(&result).unwrap();
        assert_eq!(
            crate::ResultDocument::parse(&text).unwrap(),
            crate::ResultDocument::Delibera(result)
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let tally = decide(Some(1), &[Some(Vote::Approved), None]);
        let json = serde_json::to_value(&tally).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "abstained",
                "abstainedWorkers",
                "approved",
                "decision",
                "proposalId",
                "quorum",
                "rejected",
                "results",
                "roundId",
                "timestamp",
                "workerCount",
                "workers"
            ]
        );
        let statuses: Vec<&serde_json::Value> = json["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| &w["status"])
            .collect();
        assert!(statuses.contains(&&serde_json::json!("silent")));
        assert!(statuses.contains(&&serde_json::json!("completed")));
        let task = serde_json::to_value(task(None)).unwrap();
        let mut fields: Vec<&str> = task
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "deadline",
                "description",
                "parameters",
                "proposalId",
                "roundId",
                "title",
                "voting"
            ]
        );
    }
}
