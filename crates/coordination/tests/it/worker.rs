//! The worker loop on its own: one poll at a time, timeouts and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use delibera_coordination::{
    Error, PollOutcome, TaskDefinition, TaskHandler, Vote, Worker, WorkerConfig,
};
use delibera_ensue::{InMemory, Memory};
use delibera_identity::Did;

use crate::common::*;

fn task(round_id: &str, deadline: Duration) -> TaskDefinition {
    TaskDefinition {
        proposal_id: "p".into(),
        round_id: round_id.into(),
        title: "Fund it".into(),
        description: String::new(),
        parameters: serde_json::Value::Null,
        voting: Default::default(),
        deadline: chrono::Utc::now() + chrono::Duration::from_std(deadline).unwrap(),
    }
}

/// Publishes `task` and marks `did` pending, as a coordinator would.
async fn assign(memory: &InMemory, did: &Did, task: &TaskDefinition) {
    memory
        .upsert(
            "coordination/config/task_definition",
            &serde_json::to_string(task).unwrap(),
        )
        .await
        .unwrap();
    memory
        .upsert(&format!("coordination/tasks/{did}/status"), "pending")
        .await
        .unwrap();
}

async fn read(memory: &InMemory, did: &Did, name: &str) -> Option<String> {
    memory
        .get(&format!("coordination/tasks/{did}/{name}"))
        .await
        .unwrap()
}

fn worker(memory: &InMemory, handler: Arc<dyn TaskHandler>, config: WorkerConfig) -> Worker {
    Worker::new(did(1), Arc::new(memory.clone()), handler).with_config(config)
}

#[tokio::test]
async fn idle_and_missing_statuses_do_nothing() {
    let memory = InMemory::new();
    let mut worker = worker(
        &memory,
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    assert_eq!(worker.poll_once().await.unwrap(), PollOutcome::Idle);
    memory
        .upsert(&format!("coordination/tasks/{}/status", did(1)), "idle")
        .await
        .unwrap();
    assert_eq!(worker.poll_once().await.unwrap(), PollOutcome::Idle);
    assert_eq!(memory.snapshot().len(), 1, "polling never writes");
}

#[tokio::test]
async fn pending_without_a_task_definition_waits() {
    let memory = InMemory::new();
    memory
        .upsert(&format!("coordination/tasks/{}/status", did(1)), "pending")
        .await
        .unwrap();
    let mut worker = worker(
        &memory,
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    assert_eq!(worker.poll_once().await.unwrap(), PollOutcome::NoTask);
    assert_eq!(
        read(&memory, &did(1), "status").await.as_deref(),
        Some("pending")
    );
}

#[tokio::test]
async fn the_same_round_is_never_run_twice() {
    let memory = InMemory::new();
    let handler = Arc::new(Slow::new(Duration::ZERO));
    let mut worker = worker(&memory, handler.clone(), fast_worker_config());
    let round = task("round-a", Duration::from_secs(60));
    assign(&memory, &did(1), &round).await;

    let PollOutcome::Completed(result) = worker.poll_once().await.unwrap() else {
        panic!("expected a completed task");
    };
    assert_eq!(
        (result.round_id.as_str(), result.vote),
        ("round-a", Vote::Approved)
    );
    assert_eq!(
        read(&memory, &did(1), "status").await.as_deref(),
        Some("completed")
    );

    // Someone sets `pending` again for the same round (the coordinator's
    // batch write repeated after the answer): not run again, and the
    // answer's status written again so the coordinator reads the result.
    assign(&memory, &did(1), &round).await;
    assert_eq!(
        worker.poll_once().await.unwrap(),
        PollOutcome::AlreadyRan {
            round_id: "round-a".into()
        }
    );
    assert_eq!(
        read(&memory, &did(1), "status").await.as_deref(),
        Some("completed")
    );
    assert!(
        read(&memory, &did(1), "result")
            .await
            .unwrap()
            .contains("round-a")
    );
    // A new round runs.
    assign(&memory, &did(1), &task("round-b", Duration::from_secs(60))).await;
    assert!(matches!(
        worker.poll_once().await.unwrap(),
        PollOutcome::Completed(_)
    ));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_handler_over_its_timeout_is_failed() {
    let memory = InMemory::new();
    let config = WorkerConfig {
        task_timeout: Duration::from_millis(30),
        ..fast_worker_config()
    };
    // A handler that never finishes: only the timeout can end it.
    let mut worker = worker(&memory, Arc::new(AfterGate(Gate::closed())), config);
    assign(&memory, &did(1), &task("r", Duration::from_secs(60))).await;

    let outcome = within("the poll", worker.poll_once()).await.unwrap();
    let expected = Error::HandlerTimeout { after_ms: 30 }.to_string();
    assert_eq!(
        outcome,
        PollOutcome::Failed {
            round_id: Some("r".into()),
            error: expected.clone()
        }
    );
    assert_eq!(
        read(&memory, &did(1), "status").await.as_deref(),
        Some("failed")
    );
    assert_eq!(read(&memory, &did(1), "error").await, Some(expected));
    assert!(read(&memory, &did(1), "timestamp").await.is_some());
    assert_eq!(read(&memory, &did(1), "result").await, None);
}

#[tokio::test]
async fn the_task_deadline_caps_the_handler_time() {
    let memory = InMemory::new();
    let mut worker = worker(
        &memory,
        Arc::new(AfterGate(Gate::closed())),
        fast_worker_config(),
    );
    // The round's deadline has already passed.
    assign(&memory, &did(1), &task("late", Duration::ZERO)).await;
    let outcome = within("the poll", worker.poll_once()).await.unwrap();
    assert_eq!(
        outcome,
        PollOutcome::Failed {
            round_id: Some("late".into()),
            error: Error::HandlerTimeout { after_ms: 0 }.to_string()
        }
    );
}

#[tokio::test]
async fn a_malformed_task_definition_is_failed() {
    let memory = InMemory::new();
    memory
        .upsert("coordination/config/task_definition", "{\"title\": 3}")
        .await
        .unwrap();
    memory
        .upsert(&format!("coordination/tasks/{}/status", did(1)), "pending")
        .await
        .unwrap();
    let mut worker = worker(
        &memory,
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    let outcome = worker.poll_once().await.unwrap();
    assert!(
        matches!(&outcome, PollOutcome::Failed { round_id: None, error } if error.starts_with("malformed task definition")),
        "{outcome:?}"
    );
    assert_eq!(
        read(&memory, &did(1), "status").await.as_deref(),
        Some("failed")
    );
}

/// Starts a worker with `grace` whose handler is held by `gate` (and calls
/// `noticed` when the loop sees the shutdown), assigns it a round, signals
/// shutdown once the handler runs, and returns the final status and error.
async fn shut_down_during_a_task(
    grace: Duration,
    gate: Gate,
    noticed: impl FnOnce() + Send + 'static,
) -> (Option<String>, Option<String>) {
    let memory = InMemory::new();
    let config = WorkerConfig {
        shutdown_grace: grace,
        ..fast_worker_config()
    };
    let running = spawn_worker_noticing_shutdown(
        did(1),
        Arc::new(memory.clone()),
        Arc::new(AfterGate(gate)),
        config,
        noticed,
    );
    assign(&memory, &did(1), &task("r", Duration::from_secs(60))).await;
    until("the handler to start", || async {
        read(&memory, &did(1), "status").await.as_deref() == Some("processing")
    })
    .await;
    running.stop().await;
    (
        read(&memory, &did(1), "status").await,
        read(&memory, &did(1), "error").await,
    )
}

#[tokio::test]
async fn shutdown_lets_the_task_in_hand_finish_within_the_grace() {
    // The handler finishes only once the loop has seen the shutdown: the
    // answer can only be written by the grace path.
    let gate = Gate::closed();
    let opener = gate.clone();
    let (status, error) = shut_down_during_a_task(DEADLINE, gate, move || opener.open()).await;
    assert_eq!((status.as_deref(), error), (Some("completed"), None));
}

#[tokio::test]
async fn shutdown_fails_the_task_in_hand_after_the_grace() {
    // The handler never finishes, so only the grace running out ends it.
    let (status, error) =
        shut_down_during_a_task(Duration::from_millis(10), Gate::closed(), || {}).await;
    assert_eq!(status.as_deref(), Some("failed"));
    assert_eq!(error, Some(Error::ShutDown.to_string()));
}

#[tokio::test]
async fn the_loop_backs_off_on_ensue_errors_and_then_runs_the_task() {
    let store = InMemory::new();
    let flaky = Arc::new(Flaky::new(store.clone(), 5));
    assign(&store, &did(1), &task("r", Duration::from_secs(60))).await;
    let running = spawn_worker(
        did(1),
        flaky.clone(),
        Arc::new(Fixed(Vote::Rejected)),
        fast_worker_config(),
    );
    until("the task to be completed", || async {
        read(&store, &did(1), "status").await.as_deref() == Some("completed")
    })
    .await;
    running.stop().await;
    assert_eq!(flaky.served.load(Ordering::SeqCst), 5);
}

/// Publishes a new round while the handler runs (it finishes only then).
#[tokio::test]
async fn an_answer_to_a_round_superseded_while_running_is_dropped() {
    let memory = InMemory::new();
    let gate = Gate::closed();
    let mut worker = worker(
        &memory,
        Arc::new(AfterGate(gate.clone())),
        fast_worker_config(),
    );
    assign(&memory, &did(1), &task("old", Duration::from_secs(60))).await;
    let publisher = tokio::spawn({
        let memory = memory.clone();
        async move {
            until("the old round's handler to start", || async {
                read(&memory, &did(1), "status").await.as_deref() == Some("processing")
            })
            .await;
            assign(&memory, &did(1), &task("new", Duration::from_secs(60))).await;
            gate.open();
        }
    });
    let outcome = within("the old round's poll", worker.poll_once())
        .await
        .unwrap();
    within("the publisher", publisher).await.unwrap();
    assert_eq!(
        outcome,
        PollOutcome::Superseded {
            round_id: "old".into()
        }
    );
    // The new round's `pending` survived, so the next poll runs it.
    assert_eq!(
        read(&memory, &did(1), "status").await.as_deref(),
        Some("pending")
    );
    let PollOutcome::Completed(result) = within("the new round's poll", worker.poll_once())
        .await
        .unwrap()
    else {
        panic!("the new round runs");
    };
    assert_eq!(result.round_id, "new");
}
