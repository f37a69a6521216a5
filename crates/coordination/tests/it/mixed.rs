//! Mixed fleets: this crate's agents and the TypeScript agents in one round,
//! with documents written from the TypeScript agents' documented examples
//! (`tests/fixtures/reference_*.json`).

use std::sync::Arc;
use std::time::Duration;

use delibera_coordination::{
    Coordinator, Decision, DocumentFamily, PollOutcome, Proposal, ReceivedTask, ReferenceTally,
    ReferenceTask, ReferenceWorkerResult, ResultDocument, Tally, TallyDocument, Vote, Worker,
    WorkerOutcomeStatus,
};
use delibera_ensue::{InMemory, Memory};
use delibera_identity::Did;
use serde_json::{Value, json};

use crate::common::*;

const TASK: &str = include_str!("../fixtures/reference_task_definition.json");
const TASK_DOUBLE_ENCODED: &str =
    include_str!("../fixtures/reference_task_definition_double_encoded.json");
const RESULT: &str = include_str!("../fixtures/reference_worker_result.json");
const TALLY: &str = include_str!("../fixtures/reference_tally.json");
/// The DID in the fixtures' `workerId`.
const FIXTURE_DID: &str = "did:key:z6MkAbc";

const TASK_KEY: &str = "coordination/config/task_definition";

fn worker_key(did: &Did, field: &str) -> String {
    format!("coordination/tasks/{did}/{field}")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

async fn value(memory: &dyn Memory, key: &str) -> String {
    memory
        .get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is missing"))
}

async fn wait_for_pending(memory: &dyn Memory, did: &Did) {
    let key = worker_key(did, "status");
    until(&format!("{did} to be set pending"), || async {
        memory.get(&key).await.unwrap().as_deref() == Some("pending")
    })
    .await;
}

/// Writes `result` as a TypeScript worker does once its task is done:
/// the result, the epoch-millisecond timestamp, then `completed`.
async fn write_typescript_answer(memory: &dyn Memory, did: &Did, result: &str) {
    memory
        .upsert(&worker_key(did, "result"), result)
        .await
        .unwrap();
    memory
        .upsert(&worker_key(did, "timestamp"), "1736071200000")
        .await
        .unwrap();
    memory
        .upsert(&worker_key(did, "status"), "completed")
        .await
        .unwrap();
}

/// A TypeScript worker's one answer: waits for `pending`, reads the task
/// definition as the TypeScript worker does and answers `vote` echoing the
/// task's type and parameters.
async fn typescript_worker_votes(memory: Arc<dyn Memory>, did: Did, vote: Vote) {
    wait_for_pending(memory.as_ref(), &did).await;
    let task = json(&value(memory.as_ref(), TASK_KEY).await);
    let approved = vote == Vote::Approved;
    let result = json!({
        "workerId": did.as_str(),
        "taskType": task["type"],
        "output": {
            "value": u8::from(approved),
            "vote": vote.to_string(),
            "reasoning": "the TypeScript worker's reasons",
            "data": {"parameters": task["parameters"]},
            "computedAt": "2025-01-05T10:00:00.000Z",
        },
        "processingTime": 12,
    });
    write_typescript_answer(memory.as_ref(), &did, &result.to_string()).await;
}

/// A worker loop of this crate writing `family`, stopped by the returned sender.
fn spawn_our_worker(
    memory: Arc<dyn Memory>,
    did: Did,
    vote: Vote,
    family: DocumentFamily,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(did, memory, Arc::new(Fixed(vote)))
        .with_config(fast_worker_config())
        .with_documents(family);
    tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    stop
}

/// `text` read as `T` and written again is the same JSON.
fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(text: &str) {
    let original = json(text);
    let read: T = serde_json::from_value(original.clone()).unwrap();
    assert_eq!(serde_json::to_value(read).unwrap(), original, "{text}");
}

#[test]
fn the_fixture_documents_round_trip_through_the_reference_types() {
    round_trips::<ReferenceTask>(TASK);
    round_trips::<ReferenceWorkerResult>(RESULT);
    round_trips::<ReferenceTally>(TALLY);
    let TallyDocument::Reference(tally) = TallyDocument::parse(TALLY).unwrap() else {
        panic!("the reference tally was read as ours");
    };
    assert_eq!((tally.approved, tally.proposal_id), (1, 7));
    assert_eq!(tally.decision(), Decision::Approved);
    let ResultDocument::Reference(result) = ResultDocument::parse(RESULT).unwrap() else {
        panic!("the reference result was read as ours");
    };
    assert_eq!(result.output.vote, Some(Vote::Approved));
    assert_eq!(result.round_id(), None);
}

#[test]
fn both_encodings_of_a_typescript_task_read_as_one_task() {
    let plain = ReceivedTask::parse(TASK).unwrap();
    let double = ReceivedTask::parse(TASK_DOUBLE_ENCODED).unwrap();
    assert_eq!(plain.family(), DocumentFamily::Reference);
    assert_eq!(plain.task.title, "Fund the indexer with 5000 USDC");
    assert_eq!(plain.task.round_id, double.task.round_id);
    assert!(plain.round_id_derived);
    assert_eq!(plain.task.voting.approvals_needed, None);
    let with_quorum =
        r#"{"type":"vote","parameters":{"proposal":"x","voting_config":{"quorum":2}}}"#;
    let read = ReceivedTask::parse(with_quorum).unwrap();
    assert_eq!(read.task.voting.approvals_needed, Some(2));
    assert_eq!(read.task.voting.explicit_min_votes(), None);
}

#[tokio::test]
async fn our_worker_answers_a_typescript_task_definition_in_the_typescript_shape() {
    let fixture = json(RESULT);
    for family in [DocumentFamily::Delibera, DocumentFamily::Reference] {
        for task in [TASK, TASK_DOUBLE_ENCODED] {
            let memory = Arc::new(InMemory::new());
            let did = did(1);
            let mut worker =
                Worker::new(did.clone(), memory.clone(), Arc::new(Fixed(Vote::Approved)))
                    .with_documents(family);
            memory.upsert(TASK_KEY, task).await.unwrap();
            // The same task set twice is two rounds, as for a TypeScript worker.
            for round in 1..=2 {
                memory
                    .upsert(&worker_key(&did, "status"), "pending")
                    .await
                    .unwrap();
                let outcome = worker.poll_once().await.unwrap();
                assert!(
                    matches!(outcome, PollOutcome::Completed(_)),
                    "{family} round {round}: {outcome:?}"
                );
                let written = json(&value(memory.as_ref(), &worker_key(&did, "result")).await);
                // Exactly the TypeScript WorkerResult's fields, nothing of ours.
                assert_eq!(keys_of(&written), keys_of(&fixture), "{written}");
                assert_eq!(keys_of(&written["output"]), keys_of(&fixture["output"]));
                assert_eq!(written["workerId"], did.as_str());
                assert_eq!(written["taskType"], "vote");
                // What the TypeScript coordinator counts: `output.vote`, and `value` 1 for approved.
                assert_eq!(written["output"]["vote"], "Approved");
                assert_eq!(written["output"]["value"], 1);
                assert_eq!(
                    written["output"]["data"]["parameters"],
                    fixture["output"]["data"]["parameters"]
                );
                assert!(written["processingTime"].is_u64());
                let computed_at = written["output"]["computedAt"].as_str().unwrap();
                assert!(
                    computed_at.ends_with('Z') && computed_at.len() == 24,
                    "{computed_at}"
                );
                let timestamp = value(memory.as_ref(), &worker_key(&did, "timestamp")).await;
                assert!(
                    timestamp.parse::<u64>().is_ok(),
                    "epoch ms, got {timestamp}"
                );
                assert_eq!(
                    value(memory.as_ref(), &worker_key(&did, "status")).await,
                    "completed"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_round_with_a_recorded_typescript_worker_result_counts_its_vote() {
    for family in [DocumentFamily::Delibera, DocumentFamily::Reference] {
        let memory: Arc<dyn Memory> = Arc::new(InMemory::new());
        let typescript = did(9);
        let ours = did(1);
        let recorded = RESULT.trim().replace(FIXTURE_DID, typescript.as_str());
        let stop = spawn_our_worker(memory.clone(), ours.clone(), Vote::Approved, family);
        let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config())
            .with_documents(family);
        let answering = {
            let memory = memory.clone();
            let typescript = typescript.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                wait_for_pending(memory.as_ref(), &typescript).await;
                write_typescript_answer(memory.as_ref(), &typescript, &recorded).await;
            })
        };
        let proposal = Proposal::new("7", "Fund the indexer");
        let tally = within(
            "the round",
            coordinator.run_round(
                &proposal,
                &[typescript.clone(), ours.clone()],
                Duration::from_secs(30),
            ),
        )
        .await
        .unwrap();
        within("the TypeScript answer", answering).await.unwrap();
        let _ = stop.send(());

        assert_eq!(
            (tally.approved, tally.abstained),
            (2, 0),
            "{family}: {tally:?}"
        );
        assert_eq!(tally.decision, Decision::Approved);
        let line = tally
            .workers
            .iter()
            .find(|line| line.worker_did == typescript)
            .unwrap();
        assert_eq!(line.status, WorkerOutcomeStatus::Completed);
        assert_eq!(line.vote, Some(Vote::Approved));
        assert_eq!(line.reasoning.as_deref(), Some("Within budget"));
        // Archived verbatim, as a TypeScript coordinator would.
        let archived = value(
            memory.as_ref(),
            &format!("coordination/proposals/7/workers/{typescript}/result"),
        )
        .await;
        assert_eq!(archived, recorded);
        // Its answer's time, written in epoch ms, is archived as ISO-8601,
        // which is what the archive holds whoever wrote the answer.
        let archived_at = value(
            memory.as_ref(),
            &format!("coordination/proposals/7/workers/{typescript}/timestamp"),
        )
        .await;
        assert_eq!(archived_at, "2025-01-05T10:00:00.000Z");
        let written = value(memory.as_ref(), "coordination/coordinator/tally").await;
        match (family, TallyDocument::parse(&written).unwrap()) {
            (DocumentFamily::Delibera, TallyDocument::Delibera(read)) => assert_eq!(read, tally),
            (DocumentFamily::Reference, TallyDocument::Reference(read)) => {
                assert_eq!(
                    (read.approved, read.worker_count, read.proposal_id),
                    (2, 2, 7)
                );
                assert_eq!(read.decision, Vote::Approved);
                assert!(
                    read.workers
                        .iter()
                        .all(|w| w.output.vote == Some(Vote::Approved))
                );
            }
            (family, read) => panic!("{family} coordinator wrote {read:?}"),
        }
    }
}

/// One TypeScript worker approves, two of ours reject (one writing each family).
async fn mixed_round(proposal: Proposal) -> (Tally, Value, Value) {
    let memory: Arc<dyn Memory> = Arc::new(InMemory::new());
    let typescript = did(9);
    let workers = [typescript.clone(), did(1), did(2)];
    let stops = [
        spawn_our_worker(
            memory.clone(),
            did(1),
            Vote::Rejected,
            DocumentFamily::Delibera,
        ),
        spawn_our_worker(
            memory.clone(),
            did(2),
            Vote::Rejected,
            DocumentFamily::Reference,
        ),
    ];
    let answering = tokio::spawn(typescript_worker_votes(
        memory.clone(),
        typescript,
        Vote::Approved,
    ));
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config())
        .with_documents(DocumentFamily::Reference);
    let tally = within(
        "the mixed round",
        coordinator.run_round(&proposal, &workers, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    within("the TypeScript answer", answering).await.unwrap();
    for stop in stops {
        let _ = stop.send(());
    }
    let task = json(&value(memory.as_ref(), TASK_KEY).await);
    let written = json(&value(memory.as_ref(), "coordination/coordinator/tally").await);
    (tally, task, written)
}

#[tokio::test]
async fn a_mixed_round_decides_by_approvals_needed_or_by_min_votes() {
    // Approvals needed (the TypeScript rule): one approval of one needed approves.
    let (tally, task, written) =
        mixed_round(Proposal::new("11", "Fund the indexer").with_approvals_needed(1)).await;
    assert_eq!((tally.approved, tally.rejected, tally.abstained), (1, 2, 0));
    assert_eq!(tally.decision, Decision::Approved, "{tally:?}");
    assert_eq!((tally.quorum, tally.approvals_needed), (0, Some(1)));
    assert_eq!(task["type"], "vote");
    assert_eq!(task["parameters"]["proposal"], "Fund the indexer");
    assert_eq!(task["parameters"]["voting_config"], json!({"quorum": 1}));
    assert_eq!(written["decision"], "Approved");
    assert_eq!(written["aggregatedValue"], 1);
    assert_eq!(written["workerCount"], 3);
    assert_eq!(written["proposalId"], 11);
    assert!(
        written["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["workerId"].is_string() && w["output"]["vote"].is_string())
    );

    // Votes cast, then a majority: three votes, two against.
    let (tally, task, written) =
        mixed_round(Proposal::new("12", "Fund the indexer").with_min_votes(3)).await;
    assert_eq!((tally.approved, tally.rejected), (1, 2));
    assert_eq!(tally.decision, Decision::Rejected, "{tally:?}");
    assert_eq!((tally.quorum, tally.approvals_needed), (3, None));
    assert_eq!(task["parameters"]["voting_config"], json!({"minVotes": 3}));
    assert_eq!(written["decision"], "Rejected");

    // More votes required than workers: no quorum, which the reference
    // tally writes as `Rejected` with the full outcome beside it.
    let (tally, _, written) =
        mixed_round(Proposal::new("13", "Fund the indexer").with_min_votes(4)).await;
    assert_eq!(tally.decision, Decision::NoQuorum, "{tally:?}");
    assert_eq!(written["decision"], "Rejected");
    assert_eq!(written["outcome"], "NoQuorum");
}

#[tokio::test]
async fn a_typescript_worker_given_our_task_definition_abstains_with_the_reason() {
    // A TypeScript worker finds no `type` in this crate's task definition and
    // answers a random number without a vote (and, `type` being undefined, no `taskType`).
    let memory: Arc<dyn Memory> = Arc::new(InMemory::new());
    let typescript = did(9);
    let answering = {
        let memory = memory.clone();
        let typescript = typescript.clone();
        tokio::spawn(async move {
            wait_for_pending(memory.as_ref(), &typescript).await;
            let result = json!({
                "workerId": typescript.as_str(),
                "output": {"value": 42, "data": {}, "computedAt": "2025-01-05T10:00:00.000Z"},
                "processingTime": 3,
            });
            write_typescript_answer(memory.as_ref(), &typescript, &result.to_string()).await;
        })
    };
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let tally = within(
        "the round",
        coordinator.run_round(
            &Proposal::new("p", "Fund it").with_min_votes(0),
            std::slice::from_ref(&typescript),
            Duration::from_secs(30),
        ),
    )
    .await
    .unwrap();
    within("the TypeScript answer", answering).await.unwrap();
    assert_eq!(tally.abstained_workers, vec![typescript]);
    let error = tally.workers[0].error.as_deref().unwrap();
    assert!(error.contains("carries no vote"), "{error}");
}
