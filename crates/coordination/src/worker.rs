//! The worker polling loop: poll the status key, run the task, write the result.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use delibera_backoff::{Backoff, Jitter, random_up_to};
use delibera_ensue::Memory;
use delibera_identity::Did;
use tokio::time::Instant;

use crate::shutdown::ShutdownSignal;
use crate::{
    Ballot, DocumentFamily, Error, ReceivedTask, ReferenceWorkerResult, Result, TaskDefinition,
    TaskHandler, VOTE_TASK_TYPE, WorkerResult,
};
use delibera_ensue::keys::{self, WorkerField, WorkerStatus};

/// The longest wait a rate limit's `Retry-After` is honoured for by a
/// worker's poll or a coordinator's sweep; a longer one is cut to this.
const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// How long `error` asked to be left alone (a rate limit's `Retry-After`),
/// up to [`MAX_HONOURED_RETRY_AFTER`]: a worker asked to wait a day would
/// miss every round. Zero when it asked nothing.
pub(crate) fn honoured_retry_after(error: &Error) -> Duration {
    let asked = match error {
        Error::Memory(memory) => memory.retry_after(),
        _ => None,
    };
    asked.unwrap_or_default().min(MAX_HONOURED_RETRY_AFTER)
}

/// Timing of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Shortest pause between two status reads.
    pub poll_interval: Duration,
    /// Random extra pause added to each poll (`0..=poll_jitter`), so workers spread out.
    pub poll_jitter: Duration,
    /// Longest a handler may run; the task's own deadline may cut it shorter.
    pub task_timeout: Duration,
    /// First backoff after an Ensue error; doubles up to `backoff_max`, plus
    /// up to a quarter of random jitter.
    pub backoff_base: Duration,
    /// Longest backoff between polls while Ensue keeps failing (before jitter).
    pub backoff_max: Duration,
    /// How many times the final `result`/`status` writes are tried.
    pub write_attempts: u32,
    /// On shutdown, how long a running handler may still take before the task is failed.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    /// 3–5 s polling, 2 min per task, backoff up to 1 min.
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(3),
            poll_jitter: Duration::from_secs(2),
            task_timeout: Duration::from_secs(120),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            write_attempts: 6,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl WorkerConfig {
    /// The backoff after failed polls (which never give up) and between the
    /// tries of a final write (at most `write_attempts`).
    fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, self.backoff_max)
            .with_max_attempts(self.write_attempts)
            .with_jitter(Jitter::Additive { percent: 25 })
    }

    /// A config polling every `interval` (plus up to `jitter`), other values default.
    pub fn polling(interval: Duration, jitter: Duration) -> Self {
        Self {
            poll_interval: interval,
            poll_jitter: jitter,
            backoff_base: interval,
            ..Self::default()
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PollOutcome {
    /// The status was not `pending`.
    Idle,
    /// `pending`, but the task definition was missing (the coordinator is mid-write).
    NoTask,
    /// `pending` for a round this worker already ran; not run again.
    AlreadyRan {
        /// The round's id.
        round_id: String,
    },
    /// The task ran and `completed` was written.
    Completed(Box<WorkerResult>),
    /// The task ran, but meanwhile the coordinator started another round: the
    /// stale answer was dropped so it cannot overwrite the new `pending`.
    Superseded {
        /// The round that was run.
        round_id: String,
    },
    /// The task failed and `failed` was written with this error text.
    Failed {
        /// The round's id, when the task definition could be read.
        round_id: Option<String>,
        /// The error written to the `error` key.
        error: String,
    },
}

/// A worker: polls its status key and runs its [`TaskHandler`] on each new round.
pub struct Worker {
    did: Did,
    /// `coordination/tasks/{did}/status`, read on every poll: built once.
    status_key: String,
    memory: Arc<dyn Memory>,
    handler: Arc<dyn TaskHandler>,
    config: WorkerConfig,
    documents: DocumentFamily,
    last_round: Option<String>,
    /// The status this worker wrote when it finished `last_round`
    /// (`completed` or `failed`), if it finished it.
    last_round_answer: Option<WorkerStatus>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("did", &self.did)
            .field("config", &self.config)
            .field("documents", &self.documents)
            .field("last_round", &self.last_round)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker `did` over `memory`, voting with `handler`, with default timing.
    pub fn new(did: Did, memory: Arc<dyn Memory>, handler: Arc<dyn TaskHandler>) -> Self {
        Self {
            status_key: keys::worker(&did, WorkerField::Status),
            did,
            memory,
            handler,
            config: WorkerConfig::default(),
            documents: DocumentFamily::default(),
            last_round: None,
            last_round_answer: None,
        }
    }

    /// Replaces the timing.
    pub fn with_config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Selects the family of the results it writes to tasks of this crate's
    /// family. A reference task (a TypeScript coordinator's, or one written
    /// in that family) is always answered in the reference shape, which every
    /// coordinator reads; a result of this crate's shape would be worthless
    /// to a TypeScript coordinator.
    pub fn with_documents(mut self, documents: DocumentFamily) -> Self {
        self.documents = documents;
        self
    }

    /// The worker's DID.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// Polls until `shutdown` resolves.
    ///
    /// Ensue errors are logged and retried with exponential backoff; they never
    /// end the loop. A task running when `shutdown` resolves gets
    /// [`WorkerConfig::shutdown_grace`] to finish, then is written as `failed`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut shutdown = ShutdownSignal::new(shutdown.as_mut());
        let mut failures: u32 = 0;
        tracing::info!(did = %self.did, "worker polling");
        while !shutdown.fired() {
            let delay = match self.poll(&mut shutdown).await {
                Ok(_) => {
                    failures = 0;
                    self.config.poll_interval + random_up_to(self.config.poll_jitter)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    // Never sooner than a rate limit asked.
                    let delay = self
                        .config
                        .backoff()
                        .delay(failures)
                        .max(honoured_retry_after(&error));
                    tracing::warn!(did = %self.did, %error, ?delay, "poll failed; backing off");
                    delay
                }
            };
            tokio::select! {
                () = shutdown.wait() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(did = %self.did, "worker stopped");
    }

    /// Reads the status once and, on a new `pending` round, runs it to the end.
    pub async fn poll_once(&mut self) -> Result<PollOutcome> {
        let mut never = std::pin::pin!(std::future::pending::<()>());
        self.poll(&mut ShutdownSignal::new(never.as_mut())).await
    }

    async fn poll(&mut self, shutdown: &mut ShutdownSignal<'_>) -> Result<PollOutcome> {
        let status = self.memory.get(&self.status_key).await?;
        if status
            .as_deref()
            .and_then(|s| s.parse::<WorkerStatus>().ok())
            != Some(WorkerStatus::Pending)
        {
            return Ok(PollOutcome::Idle);
        }
        let Some(text) = self.memory.get(&keys::task_definition()).await? else {
            tracing::warn!(did = %self.did, "pending but no task definition yet");
            return Ok(PollOutcome::NoTask);
        };
        let received = match ReceivedTask::parse(&text) {
            Ok(received) => received,
            Err(error) => {
                let error = error.to_string();
                self.write_failure(&error, self.documents).await?;
                return Ok(PollOutcome::Failed {
                    round_id: None,
                    error,
                });
            }
        };
        let answer_family = match received.family() {
            DocumentFamily::Reference => DocumentFamily::Reference,
            DocumentFamily::Delibera => self.documents,
        };
        let task = &received.task;
        // A derived round id names the task's text, not the round: the same
        // task may be set again, and `pending` then means a new round.
        if !received.round_id_derived && self.last_round.as_deref() == Some(task.round_id.as_str())
        {
            // `pending` again for a round this worker answered: the
            // coordinator's status write was repeated after the answer (a
            // retried batch). Its result is still there; the status saying
            // so is written again, or the coordinator would never read it.
            if let Some(answer) = self.last_round_answer {
                tracing::info!(did = %self.did, round = %task.round_id, status = answer.as_str(),
                    "the round was set pending again after this worker answered it; answering again");
                self.write_with_retry(&self.status_key, answer.as_str())
                    .await?;
            }
            return Ok(PollOutcome::AlreadyRan {
                round_id: task.round_id.clone(),
            });
        }
        self.write(
            &keys::worker(&self.did, WorkerField::Status),
            WorkerStatus::Processing.as_str(),
        )
        .await?;
        // From here on this round counts as run, whatever happens next.
        self.last_round = Some(task.round_id.clone());
        self.last_round_answer = None;
        tracing::info!(did = %self.did, proposal = %task.proposal_id, round = %task.round_id, "running task");

        let started_at = Utc::now();
        let outcome = self.run_handler(task, shutdown).await;
        let finished_at = Utc::now();
        if self.superseded(&task.round_id).await {
            tracing::warn!(did = %self.did, round = %task.round_id, "a newer round started while this one ran; dropping the answer");
            return Ok(PollOutcome::Superseded {
                round_id: task.round_id.clone(),
            });
        }
        match outcome {
            Ok(ballot) => {
                let processing_time_ms =
                    u64::try_from((finished_at - started_at).num_milliseconds().max(0))
                        .unwrap_or(0);
                let result = WorkerResult {
                    worker_did: self.did.clone(),
                    proposal_id: task.proposal_id.clone(),
                    round_id: task.round_id.clone(),
                    vote: ballot.vote,
                    reasoning: ballot.reasoning,
                    started_at,
                    finished_at,
                    processing_time_ms,
                };
                let json = match answer_family {
                    DocumentFamily::Delibera => serde_json::to_string(&result),
                    DocumentFamily::Reference => {
                        serde_json::to_string(&reference_answer(&received, &result))
                    }
                }
                .map_err(|error| Error::handler(format!("cannot encode result: {error}")))?;
                self.write_with_retry(&keys::worker(&self.did, WorkerField::Result), &json)
                    .await?;
                self.write_with_retry(
                    &keys::worker(&self.did, WorkerField::Timestamp),
                    &timestamp_now(answer_family),
                )
                .await?;
                self.write_with_retry(
                    &keys::worker(&self.did, WorkerField::Status),
                    WorkerStatus::Completed.as_str(),
                )
                .await?;
                self.last_round_answer = Some(WorkerStatus::Completed);
                tracing::info!(did = %self.did, vote = %result.vote, "task completed");
                Ok(PollOutcome::Completed(Box::new(result)))
            }
            Err(error) => {
                let error = error.to_string();
                tracing::warn!(did = %self.did, %error, "task failed");
                self.write_failure(&error, answer_family).await?;
                self.last_round_answer = Some(WorkerStatus::Failed);
                Ok(PollOutcome::Failed {
                    round_id: Some(task.round_id.clone()),
                    error,
                })
            }
        }
    }

    /// Runs the handler on its own task (so a panic is caught) under the deadline.
    async fn run_handler(
        &self,
        task: &TaskDefinition,
        shutdown: &mut ShutdownSignal<'_>,
    ) -> Result<Ballot> {
        let until_deadline = (task.deadline - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let limit = self.config.task_timeout.min(until_deadline);
        let ends_at = Instant::now() + limit;
        let handler = Arc::clone(&self.handler);
        let owned = task.clone();
        let mut join = tokio::spawn(async move { handler.handle(&owned).await });

        let timed_out = || Error::HandlerTimeout {
            after_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        };
        let joined = tokio::select! {
            joined = tokio::time::timeout_at(ends_at, &mut join) => joined.map_err(|_| timed_out()),
            () = shutdown.wait() => {
                let grace_ends = (Instant::now() + self.config.shutdown_grace).min(ends_at);
                tokio::time::timeout_at(grace_ends, &mut join).await.map_err(|_| Error::ShutDown)
            }
        };
        match joined {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join_error)) => Err(if join_error.is_panic() {
                Error::HandlerPanicked {
                    message: panic_message(join_error.into_panic()),
                }
            } else {
                Error::ShutDown
            }),
            Err(error) => {
                join.abort();
                Err(error)
            }
        }
    }

    /// Whether the published task is now a different round than `round_id`.
    /// A failed read counts as not superseded: losing an answer is worse.
    async fn superseded(&self, round_id: &str) -> bool {
        let Ok(Some(text)) = self.memory.get(&keys::task_definition()).await else {
            return false;
        };
        ReceivedTask::parse(&text).is_ok_and(|received| received.task.round_id != round_id)
    }

    async fn write_failure(&self, error: &str, family: DocumentFamily) -> Result<()> {
        self.write_with_retry(&keys::worker(&self.did, WorkerField::Error), error)
            .await?;
        self.write_with_retry(
            &keys::worker(&self.did, WorkerField::Timestamp),
            &timestamp_now(family),
        )
        .await?;
        self.write_with_retry(
            &keys::worker(&self.did, WorkerField::Status),
            WorkerStatus::Failed.as_str(),
        )
        .await
    }

    async fn write(&self, key: &str, value: &str) -> Result<()> {
        Ok(self.memory.upsert(key, value).await?)
    }

    /// Writes a final key, retrying transient failures so a finished vote is not lost.
    async fn write_with_retry(&self, key: &str, value: &str) -> Result<()> {
        let backoff = self.config.backoff();
        let mut attempt = 1;
        loop {
            let error = match self.memory.upsert(key, value).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let Some(delay) = backoff.retry_delay(attempt, None) else {
                return Err(error.into());
            };
            tracing::warn!(did = %self.did, key, %error, ?delay, "write failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// The answer in the reference shape: the task's type and parameters echoed
/// (a vote, with this crate's parameters, when the task was of this crate's family).
fn reference_answer(received: &ReceivedTask, result: &WorkerResult) -> ReferenceWorkerResult {
    let mut answer = match &received.reference {
        Some(reference) => ReferenceWorkerResult::from_result(
            result,
            &reference.task_type,
            reference.parameters.clone(),
        ),
        None => ReferenceWorkerResult::from_result(
            result,
            VOTE_TASK_TYPE,
            received.task.parameters.clone(),
        ),
    };
    if received.round_id_derived {
        // The derived id means nothing to the TypeScript coordinator that set the task.
        answer.round_id = None;
    }
    answer
}

/// The `timestamp` key's value: ISO-8601 in this crate's family, epoch
/// milliseconds in the reference family (what its `/api/task/status` parses).
fn timestamp_now(family: DocumentFamily) -> String {
    match family {
        DocumentFamily::Delibera => iso_now(),
        DocumentFamily::Reference => Utc::now().timestamp_millis().to_string(),
    }
}

/// Now, as ISO-8601 with milliseconds and `Z` (the form JavaScript's `toISOString` gives).
pub(crate) fn iso_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
