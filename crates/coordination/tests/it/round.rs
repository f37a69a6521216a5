//! Coordinator rounds with real worker loops over shared memory.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use delibera_coordination::{
    Coordinator, Decision, Proposal, Tally, TaskHandler, Vote, WorkerOutcomeStatus, WorkerResult,
};
use delibera_ensue::{EnsueClient, EnsueConfig, InMemory, Memory};
use delibera_ensue_local::{Config, LocalEnsue};
use delibera_identity::Did;

use crate::common::*;

/// Generous: rounds end as soon as every worker answered.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

/// For rounds with a silent worker, which always last this long. Nothing in
/// their tallies depends on it: the coordinator's sweeps wait for the live
/// workers' answers ([`SweepsAfterAnswers`]) and the live workers get the
/// task whatever time it is ([`LateDeadline`]).
const SILENT_DEADLINE: Duration = Duration::from_millis(200);

/// A round of `coordinator` over `workers`, under the test deadline.
async fn round(
    coordinator: &Coordinator,
    proposal: &Proposal,
    workers: &[Did],
    deadline: Duration,
) -> Tally {
    within(
        &format!("the round of {}", proposal.proposal_id),
        coordinator.run_round(proposal, workers, deadline),
    )
    .await
    .unwrap()
}

/// The keys of the seed's tables a finished round must leave, spelled as the
/// seed spells them (this is the spec check, so no key builder is used).
fn seed_keys(proposal: &str, answered: &[Did], failed: &[Did]) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = [
        "coordination/coordinator/status",
        "coordination/coordinator/proposal_id",
        "coordination/coordinator/tally",
        "coordination/config/task_definition",
        "coordination/proposals/_index",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for name in ["config", "status", "tally"] {
        keys.insert(format!("coordination/proposals/{proposal}/{name}"));
    }
    for did in answered {
        for name in ["status", "result", "timestamp"] {
            keys.insert(format!("coordination/tasks/{did}/{name}"));
        }
        for name in ["result", "timestamp"] {
            keys.insert(format!(
                "coordination/proposals/{proposal}/workers/{did}/{name}"
            ));
        }
    }
    for did in failed {
        for name in ["status", "error", "timestamp"] {
            keys.insert(format!("coordination/tasks/{did}/{name}"));
        }
    }
    keys
}

async fn value(memory: &dyn Memory, key: &str) -> String {
    memory
        .get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is missing"))
}

/// Runs a 5-worker round (3 approve, 2 reject) over `memory` and checks every
/// key and value the seed's tables describe.
async fn five_workers_write_the_seed_keys(memory: Arc<dyn Memory>) {
    let votes = [
        Vote::Approved,
        Vote::Rejected,
        Vote::Approved,
        Vote::Approved,
        Vote::Rejected,
    ];
    let dids: Vec<Did> = (1..=5).map(did).collect();
    let workers: Vec<_> = dids
        .iter()
        .zip(votes)
        .map(|(did, vote)| {
            spawn_worker(
                did.clone(),
                memory.clone(),
                Arc::new(Fixed(vote)),
                fast_worker_config(),
            )
        })
        .collect();
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let proposal = Proposal::new("prop-7", "Fund the indexer").with_description("12 months");

    let tally = round(&coordinator, &proposal, &dids, ROUND_DEADLINE).await;
    for worker in workers {
        worker.stop().await;
    }

    assert_eq!((tally.approved, tally.rejected, tally.abstained), (3, 2, 0));
    assert_eq!(tally.decision, Decision::Approved);
    assert_eq!(tally.quorum, 3, "strict majority of 5");
    assert_eq!(tally.worker_count, 5);
    assert_eq!(tally.results.len(), 5);

    let written: BTreeSet<String> = memory.list_keys("").await.unwrap().into_iter().collect();
    assert_eq!(written, seed_keys("prop-7", &dids, &[]));

    let m = memory.as_ref();
    // The last round's status stays until the next round starts.
    assert_eq!(
        value(m, "coordination/coordinator/status").await,
        "completed"
    );
    assert_eq!(
        value(m, "coordination/proposals/_index").await,
        r#"["prop-7"]"#
    );
    assert_eq!(
        value(m, "coordination/coordinator/proposal_id").await,
        "prop-7"
    );
    assert_eq!(
        value(m, "coordination/proposals/prop-7/status").await,
        "completed"
    );
    let stored: Tally =
        serde_json::from_str(&value(m, "coordination/coordinator/tally").await).unwrap();
    assert_eq!(stored, tally);
    assert_eq!(
        value(m, "coordination/proposals/prop-7/tally").await,
        value(m, "coordination/coordinator/tally").await
    );
    assert_eq!(
        value(m, "coordination/proposals/prop-7/config").await,
        value(m, "coordination/config/task_definition").await
    );
    for (did, vote) in dids.iter().zip(votes) {
        assert_eq!(
            value(m, &format!("coordination/tasks/{did}/status")).await,
            "completed"
        );
        let result: WorkerResult =
            serde_json::from_str(&value(m, &format!("coordination/tasks/{did}/result")).await)
                .unwrap();
        assert_eq!(&result.worker_did, did);
        assert_eq!(result.vote, vote);
        assert_eq!(result.round_id, tally.round_id);
        let timestamp = value(m, &format!("coordination/tasks/{did}/timestamp")).await;
        chrono::DateTime::parse_from_rfc3339(&timestamp).unwrap();
        let archived: WorkerResult = serde_json::from_str(
            &value(
                m,
                &format!("coordination/proposals/prop-7/workers/{did}/result"),
            )
            .await,
        )
        .unwrap();
        assert_eq!(archived, result);
        assert_eq!(
            value(
                m,
                &format!("coordination/proposals/prop-7/workers/{did}/timestamp")
            )
            .await,
            timestamp
        );
    }
}

async fn failing_worker_is_listed_as_abstained_with_its_error(memory: Arc<dyn Memory>) {
    let dids: Vec<Did> = (1..=3).map(did).collect();
    let handlers: [Arc<dyn TaskHandler>; 3] = [
        Arc::new(Fixed(Vote::Approved)),
        Arc::new(Failing),
        Arc::new(Fixed(Vote::Approved)),
    ];
    let workers: Vec<_> = dids
        .iter()
        .zip(handlers)
        .map(|(did, handler)| {
            spawn_worker(did.clone(), memory.clone(), handler, fast_worker_config())
        })
        .collect();
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let tally = round(
        &coordinator,
        &Proposal::new("p-fail", "t"),
        &dids,
        ROUND_DEADLINE,
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }

    assert_eq!((tally.approved, tally.rejected, tally.abstained), (2, 0, 1));
    assert_eq!(tally.decision, Decision::Approved);
    assert_eq!(tally.abstained_workers, vec![dids[1].clone()]);
    let failed = tally
        .workers
        .iter()
        .find(|w| w.worker_did == dids[1])
        .unwrap();
    assert_eq!(failed.status, WorkerOutcomeStatus::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("handler failed: cannot decide: data source unavailable")
    );
    let written: BTreeSet<String> = memory.list_keys("").await.unwrap().into_iter().collect();
    let answered = [dids[0].clone(), dids[2].clone()];
    assert_eq!(written, seed_keys("p-fail", &answered, &[dids[1].clone()]));
    assert_eq!(
        value(
            memory.as_ref(),
            &format!("coordination/tasks/{}/status", dids[1])
        )
        .await,
        "failed"
    );
}

/// The coordinator's and the live workers' views of `memory` for a round in
/// which only `answering` answer.
fn silent_round_views(
    memory: &Arc<dyn Memory>,
    answering: &[Did],
) -> (Coordinator, Arc<dyn Memory>) {
    let coordinator_view: Arc<dyn Memory> = Arc::new(SweepsAfterAnswers {
        inner: memory.clone(),
        answering: answering.to_vec(),
    });
    let coordinator = Coordinator::with_config(coordinator_view, fast_coordinator_config());
    let workers_view: Arc<dyn Memory> = Arc::new(LateDeadline {
        inner: memory.clone(),
    });
    (coordinator, workers_view)
}

async fn silent_worker_is_abstained_after_the_deadline(memory: Arc<dyn Memory>) {
    let dids: Vec<Did> = (1..=3).map(did).collect();
    let (coordinator, workers_view) = silent_round_views(&memory, &dids[..2]);
    // The third worker never runs.
    let workers: Vec<_> = dids[..2]
        .iter()
        .map(|did| {
            spawn_worker(
                did.clone(),
                workers_view.clone(),
                Arc::new(Fixed(Vote::Rejected)),
                fast_worker_config(),
            )
        })
        .collect();
    let tally = round(
        &coordinator,
        &Proposal::new("p-silent", "t"),
        &dids,
        SILENT_DEADLINE,
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }

    assert_eq!((tally.approved, tally.rejected, tally.abstained), (0, 2, 1));
    assert_eq!(tally.decision, Decision::Rejected);
    let silent = tally
        .workers
        .iter()
        .find(|w| w.worker_did == dids[2])
        .unwrap();
    assert_eq!(silent.status, WorkerOutcomeStatus::Silent);
    assert_eq!(
        value(
            memory.as_ref(),
            &format!("coordination/tasks/{}/status", dids[2])
        )
        .await,
        "pending",
        "the silent worker's status is left as the coordinator set it"
    );
}

async fn explicit_quorum_not_reached_gives_no_quorum(memory: Arc<dyn Memory>) {
    let dids: Vec<Did> = (1..=3).map(did).collect();
    let (coordinator, workers_view) = silent_round_views(&memory, &dids[..1]);
    let worker = spawn_worker(
        dids[0].clone(),
        workers_view,
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    let proposal = Proposal::new("p-quorum", "t").with_quorum(2);
    let tally = round(&coordinator, &proposal, &dids, SILENT_DEADLINE).await;
    worker.stop().await;
    assert_eq!((tally.approved, tally.abstained, tally.quorum), (1, 2, 2));
    assert_eq!(tally.decision, Decision::NoQuorum);
}

async fn handler_panic_is_failed_and_the_worker_keeps_polling(memory: Arc<dyn Memory>) {
    let dids: Vec<Did> = (1..=2).map(did).collect();
    let workers = [
        spawn_worker(
            dids[0].clone(),
            memory.clone(),
            Arc::new(Fixed(Vote::Approved)),
            fast_worker_config(),
        ),
        spawn_worker(
            dids[1].clone(),
            memory.clone(),
            Arc::new(Panicking),
            fast_worker_config(),
        ),
    ];
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    for proposal in ["p-panic-1", "p-panic-2"] {
        let tally = round(
            &coordinator,
            &Proposal::new(proposal, "t"),
            &dids,
            ROUND_DEADLINE,
        )
        .await;
        let panicked = tally
            .workers
            .iter()
            .find(|w| w.worker_did == dids[1])
            .unwrap();
        assert_eq!(panicked.status, WorkerOutcomeStatus::Failed, "{proposal}");
        assert_eq!(
            panicked.error.as_deref(),
            Some("handler panicked: handler bug: index out of range")
        );
        // A panicking worker answers every round: its loop survived.
        assert_eq!((tally.approved, tally.abstained), (1, 1));
    }
    for worker in workers {
        worker.stop().await;
    }
}

async fn ensue_500s_for_a_while_are_survived(backend: Arc<dyn Memory>) {
    let flaky = Arc::new(Flaky::new(backend.clone(), 40));
    let memory: Arc<dyn Memory> = flaky.clone();
    let dids: Vec<Did> = (1..=5).map(did).collect();
    let workers: Vec<_> = dids
        .iter()
        .map(|did| {
            spawn_worker(
                did.clone(),
                memory.clone(),
                Arc::new(Fixed(Vote::Approved)),
                fast_worker_config(),
            )
        })
        .collect();
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let tally = round(
        &coordinator,
        &Proposal::new("p-flaky", "t"),
        &dids,
        ROUND_DEADLINE,
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }
    assert_eq!(flaky.served.load(std::sync::atomic::Ordering::SeqCst), 40);
    assert_eq!((tally.approved, tally.abstained), (5, 0));
    let written: BTreeSet<String> = backend.list_keys("").await.unwrap().into_iter().collect();
    assert_eq!(written, seed_keys("p-flaky", &dids, &[]));
}

async fn two_consecutive_rounds_use_fresh_results(memory: Arc<dyn Memory>) {
    let dids: Vec<Did> = (1..=3).map(did).collect();
    // Rejects anything mentioning "mint": round 1 approves, round 2 rejects.
    let voter = Arc::new(delibera_coordination::RuleVoter::with_fallback(
        delibera_coordination::RuleSet {
            deny_keywords: vec!["mint".into()],
            ..Default::default()
        },
    ));
    let workers: Vec<_> = dids
        .iter()
        .map(|did| {
            spawn_worker(
                did.clone(),
                memory.clone(),
                voter.clone(),
                fast_worker_config(),
            )
        })
        .collect();
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let first = round(
        &coordinator,
        &Proposal::new("p-1", "Burn fees"),
        &dids,
        ROUND_DEADLINE,
    )
    .await;
    let second = round(
        &coordinator,
        &Proposal::new("p-2", "Mint rewards"),
        &dids,
        ROUND_DEADLINE,
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }

    assert_eq!((first.approved, first.decision), (3, Decision::Approved));
    assert_eq!((second.rejected, second.decision), (3, Decision::Rejected));
    assert_ne!(first.round_id, second.round_id);
    assert!(
        second
            .results
            .iter()
            .all(|r| r.round_id == second.round_id && r.proposal_id == "p-2")
    );
    // Both archives stay readable side by side.
    let first_archived: Tally =
        serde_json::from_str(&value(memory.as_ref(), "coordination/proposals/p-1/tally").await)
            .unwrap();
    assert_eq!(first_archived, first);
    assert_eq!(
        value(memory.as_ref(), "coordination/coordinator/proposal_id").await,
        "p-2"
    );
}

async fn a_result_from_an_earlier_round_is_never_counted(store: Arc<dyn Memory>) {
    let stale = did(9);
    // What a worker left from an earlier round: `completed` and its result.
    let old = WorkerResult {
        worker_did: stale.clone(),
        proposal_id: "p-0".into(),
        round_id: "an-earlier-round".into(),
        vote: Vote::Rejected,
        reasoning: "old".into(),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        processing_time_ms: 0,
    };
    let status_key = format!("coordination/tasks/{stale}/status");
    store.upsert(&status_key, "completed").await.unwrap();
    store
        .upsert(
            &format!("coordination/tasks/{stale}/result"),
            &serde_json::to_string(&old).unwrap(),
        )
        .await
        .unwrap();
    // The coordinator's `pending` for this worker is lost (a late writer won),
    // so the stale `completed` stays visible during the round.
    let memory: Arc<dyn Memory> = Arc::new(DropsWrite {
        inner: store.clone(),
        key: status_key.clone(),
        value: "pending".into(),
    });
    let dids = vec![did(1), stale.clone()];
    let (coordinator, workers_view) = silent_round_views(&memory, &dids[..1]);
    let worker = spawn_worker(
        dids[0].clone(),
        workers_view,
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    let tally = round(
        &coordinator,
        &Proposal::new("p-1", "t"),
        &dids,
        SILENT_DEADLINE,
    )
    .await;
    worker.stop().await;

    assert_eq!((tally.approved, tally.rejected, tally.abstained), (1, 0, 1));
    let outcome = tally
        .workers
        .iter()
        .find(|w| w.worker_did == stale)
        .unwrap();
    assert_eq!(outcome.status, WorkerOutcomeStatus::Silent);
    assert!(tally.results.iter().all(|r| r.round_id == tally.round_id));
}

/// A local Ensue server on 127.0.0.1:0 and a real `EnsueClient` for it.
async fn local_ensue() -> (LocalEnsue, Arc<dyn Memory>) {
    let server = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let config = EnsueConfig::new(server.api_key().expose())
        .with_base_url(server.url())
        .unwrap();
    let client = EnsueClient::new(config).unwrap();
    (server, Arc::new(client))
}

/// Runs a scenario over the in-memory store and over the local Ensue server.
macro_rules! on_both_backends {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn in_memory() {
                super::$scenario(std::sync::Arc::new(super::InMemory::new())).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn local_ensue_server() {
                let (server, memory) = super::local_ensue().await;
                super::$scenario(memory).await;
                super::within("the local Ensue to stop", server.stop())
                    .await
                    .unwrap();
            }
        }
    )+};
}

on_both_backends!(
    five_workers_write_the_seed_keys,
    failing_worker_is_listed_as_abstained_with_its_error,
    silent_worker_is_abstained_after_the_deadline,
    explicit_quorum_not_reached_gives_no_quorum,
    handler_panic_is_failed_and_the_worker_keeps_polling,
    ensue_500s_for_a_while_are_survived,
    two_consecutive_rounds_use_fresh_results,
    a_result_from_an_earlier_round_is_never_counted,
);

#[tokio::test]
async fn a_second_round_while_one_runs_is_refused() {
    // The first round is held at its first write until the second one was tried.
    let gate = Gate::closed();
    let memory: Arc<dyn Memory> = Arc::new(HeldUntil {
        inner: InMemory::new(),
        gate: gate.clone(),
    });
    let coordinator = Arc::new(Coordinator::with_config(memory, fast_coordinator_config()));
    let first = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            coordinator
                .run_round(&Proposal::new("p-1", "t"), &[did(1)], SILENT_DEADLINE)
                .await
        }
    });
    until("the first round to start", || async {
        coordinator.is_busy()
    })
    .await;
    let refused = within(
        "the refusal",
        coordinator.run_round(&Proposal::new("p-2", "t"), &[did(1)], SILENT_DEADLINE),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, delibera_coordination::Error::RoundInProgress { proposal_id } if proposal_id == "p-1"),
        "{refused}"
    );
    gate.open();
    // Nobody answers, so the first round ends at its deadline.
    let first = within("the first round", first).await.unwrap().unwrap();
    assert_eq!((first.proposal_id.as_str(), first.abstained), ("p-1", 1));
    assert!(!coordinator.is_busy());
}

#[tokio::test]
async fn a_round_without_workers_is_an_error() {
    let coordinator = Coordinator::new(Arc::new(InMemory::new()));
    let error = within(
        "the refusal",
        coordinator.run_round(&Proposal::new("p", "t"), &[], ROUND_DEADLINE),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, delibera_coordination::Error::NoWorkers),
        "{error}"
    );
    assert!(!coordinator.is_busy());
}

#[tokio::test]
async fn an_unbounded_deadline_is_capped_not_a_panic() {
    let memory: Arc<dyn Memory> = Arc::new(InMemory::new());
    let worker = spawn_worker(
        did(1),
        memory.clone(),
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let tally = round(
        &coordinator,
        &Proposal::new("p", "t"),
        &[did(1)],
        Duration::MAX,
    )
    .await;
    worker.stop().await;
    assert_eq!(tally.approved, 1);
    let task: delibera_coordination::TaskDefinition =
        serde_json::from_str(&value(memory.as_ref(), "coordination/config/task_definition").await)
            .unwrap();
    let allowed = chrono::Duration::from_std(delibera_coordination::MAX_ROUND_DEADLINE).unwrap();
    assert!(task.deadline <= chrono::Utc::now() + allowed);
}

#[tokio::test]
async fn the_proposal_index_lists_each_archived_proposal_once_and_stays_bounded() {
    let memory: Arc<dyn Memory> = Arc::new(InMemory::new());
    let full: Vec<String> = (0..delibera_coordination::MAX_INDEXED_PROPOSALS)
        .map(|n| format!("old-{n}"))
        .collect();
    memory
        .upsert(
            "coordination/proposals/_index",
            &serde_json::to_string(&full).unwrap(),
        )
        .await
        .unwrap();
    let worker = spawn_worker(
        did(1),
        memory.clone(),
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    for id in ["p-new", "p-new"] {
        round(
            &coordinator,
            &Proposal::new(id, "t"),
            &[did(1)],
            ROUND_DEADLINE,
        )
        .await;
    }
    worker.stop().await;
    let index: Vec<String> =
        serde_json::from_str(&value(memory.as_ref(), "coordination/proposals/_index").await)
            .unwrap();
    assert_eq!(index.len(), delibera_coordination::MAX_INDEXED_PROPOSALS);
    assert_eq!(index.first().map(String::as_str), Some("old-1"));
    assert_eq!(index.last().map(String::as_str), Some("p-new"));
    assert_eq!(index.iter().filter(|id| *id == "p-new").count(), 1);
}
