//! The coordinator's voting round.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use delibera_backoff::{Backoff, Jitter};
use delibera_ensue::{MAX_BATCH, Memory};
use delibera_identity::Did;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::worker::{honoured_retry_after, iso_now};
use crate::{
    DocumentFamily, Error, Proposal, ReferenceTally, ReferenceTask, ReferenceWorkerResult, Result,
    ResultDocument, Tally, TaskDefinition, VOTE_TASK_TYPE, WorkerOutcome, WorkerOutcomeStatus,
    WorkerResult,
};
use delibera_ensue::keys::{self, CoordinatorStatus, ProposalField, WorkerField, WorkerStatus};

/// The longest a round may wait; longer deadlines are cut to this.
pub const MAX_ROUND_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest pause between sweeps while Ensue keeps failing (unless a
/// rate limit asks for longer).
const SWEEP_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The archive `status` of a proposal whose round is done.
const PROPOSAL_DONE: &str = "completed";

/// The most proposal ids `coordination/proposals/_index` keeps (the oldest
/// drop out), so listing the archive stays a bounded read.
pub const MAX_INDEXED_PROPOSALS: usize = 1000;

/// Timing and fan-out of a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Pause between two sweeps over the workers that have not answered.
    pub poll_interval: Duration,
    /// Keys per `get_many`, `create_memory` and `delete_memory` call; Ensue
    /// accepts at most [`MAX_BATCH`] (100), and larger values are cut to it.
    pub batch_size: usize,
    /// How many `get_many` calls may be in flight at once.
    pub read_concurrency: usize,
    /// How many write calls (batches, or single writes) may be in flight at once.
    pub write_concurrency: usize,
    /// How many times a write is tried before the round fails.
    pub write_attempts: u32,
    /// First backoff after a failed write; doubles up to 5 s, plus up to a
    /// quarter of random jitter.
    pub backoff_base: Duration,
}

impl CoordinatorConfig {
    /// The backoff between the tries of a write.
    fn write_backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, Duration::from_secs(5))
            .with_max_attempts(self.write_attempts)
            .with_jitter(Jitter::Additive { percent: 25 })
    }

    /// The pauses between sweeps while reading the statuses fails: from the
    /// poll interval, doubling to [`SWEEP_BACKOFF_CAP`].
    fn sweep_backoff(&self) -> Backoff {
        Backoff::new(
            self.poll_interval,
            SWEEP_BACKOFF_CAP.max(self.poll_interval),
        )
        .with_jitter(Jitter::Additive { percent: 25 })
    }

    /// Keys per batch call: `batch_size`, between 1 and [`MAX_BATCH`].
    fn batch(&self) -> usize {
        self.batch_size.clamp(1, MAX_BATCH)
    }
}

impl Default for CoordinatorConfig {
    /// Sweeps every second, 100 keys per read, 4 reads and 8 writes in flight.
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            read_concurrency: 4,
            write_concurrency: 8,
            write_attempts: 8,
            backoff_base: Duration::from_millis(200),
        }
    }
}

/// Runs voting rounds over an [`Arc<dyn Memory>`]; one round at a time.
pub struct Coordinator {
    memory: Arc<dyn Memory>,
    config: CoordinatorConfig,
    /// The family of the task definition and tally it writes.
    documents: DocumentFamily,
    /// The proposal of the round in progress.
    running: Mutex<Option<String>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("config", &self.config)
            .field("documents", &self.documents)
            .field("running", &*self.running())
            .finish_non_exhaustive()
    }
}

/// Marks the coordinator idle however the round ends.
struct RunningGuard<'a>(&'a Coordinator);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        *self.0.running() = None;
    }
}

/// What the coordinator learned about one worker during the wait.
struct Answer {
    outcome: WorkerOutcome,
    result: Option<Counted>,
}

/// A result counted in the tally.
struct Counted {
    result: WorkerResult,
    /// The worker's `timestamp`, archived beside the result.
    timestamp: String,
    /// The result as the worker wrote it, when it wrote the reference shape
    /// (archived verbatim, as a TypeScript coordinator would).
    reference: Option<(ReferenceWorkerResult, String)>,
}

impl Coordinator {
    /// A coordinator over `memory` with default timing.
    pub fn new(memory: Arc<dyn Memory>) -> Self {
        Self::with_config(memory, CoordinatorConfig::default())
    }

    /// A coordinator over `memory` with `config`.
    pub fn with_config(memory: Arc<dyn Memory>, config: CoordinatorConfig) -> Self {
        Self {
            memory,
            config,
            documents: DocumentFamily::default(),
            running: Mutex::new(None),
        }
    }

    /// Selects the family of the task definition and tally it writes. It
    /// reads worker results of both families either way; but a TypeScript
    /// worker reads only a reference task definition, so a fleet with one
    /// needs [`DocumentFamily::Reference`] here.
    pub fn with_documents(mut self, documents: DocumentFamily) -> Self {
        self.documents = documents;
        self
    }

    /// Whether a round is running.
    pub fn is_busy(&self) -> bool {
        self.running().is_some()
    }

    fn running(&self) -> MutexGuard<'_, Option<String>> {
        // Each critical section is one assignment, so a poisoned value is whole.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one round of `proposal` over `workers`, waiting at most `deadline`
    /// (capped at [`MAX_ROUND_DEADLINE`]).
    ///
    /// Writes the task definition, `coordinator/proposal_id`, `coordinator/status
    /// = coordinating`, the archive `config` and `status`, then sets every
    /// worker of the snapshot `pending`; sweeps their statuses (in `get_many`
    /// batches, a bounded number in flight) until all are `completed`/`failed`
    /// or the deadline passes; then `tallying`, the tally (also archived), each
    /// answering worker's archived `result` and `timestamp`, the archive
    /// `status = completed`, the proposal's id in `proposals/_index` and
    /// `coordinator/status = completed` (until the next round; a failed
    /// round leaves `idle`).
    ///
    /// The per-worker writes go in batches of up to [`MAX_BATCH`] items: the
    /// `pending` statuses are replaced (one `delete_memory` and one
    /// `create_memory` call per batch, as the service has no batch update)
    /// and the archive is created; an item that fails alone is written again
    /// on its own (update, or create when missing), so a round costs the
    /// coordinator about 4 calls per 100 workers plus its sweeps.
    ///
    /// Each round has a fresh `roundId` that workers copy into their results;
    /// a result with another round's id is never counted, so nothing from an
    /// earlier round leaks into this one.
    pub async fn run_round(
        &self,
        proposal: &Proposal,
        workers: &[Did],
        deadline: Duration,
    ) -> Result<Tally> {
        {
            let mut running = self.running();
            if let Some(proposal_id) = running.as_ref() {
                return Err(Error::RoundInProgress {
                    proposal_id: proposal_id.clone(),
                });
            }
            *running = Some(proposal.proposal_id.clone());
        }
        let _guard = RunningGuard(self);
        let result = self.round(proposal, workers, deadline).await;
        if result.is_err() {
            // Best effort: a failed round must not leave the coordinator looking busy.
            let _ = self
                .memory
                .upsert(
                    &keys::coordinator_status(),
                    CoordinatorStatus::Idle.as_str(),
                )
                .await;
        }
        result
    }

    async fn round(
        &self,
        proposal: &Proposal,
        workers: &[Did],
        deadline: Duration,
    ) -> Result<Tally> {
        let mut snapshot: Vec<Did> = workers.to_vec();
        snapshot.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        snapshot.dedup();
        if snapshot.is_empty() {
            return Err(Error::NoWorkers);
        }
        let deadline = deadline.min(MAX_ROUND_DEADLINE);
        let ends_at = Instant::now() + deadline;
        let task = TaskDefinition {
            proposal_id: proposal.proposal_id.clone(),
            round_id: uuid::Uuid::new_v4().to_string(),
            title: proposal.title.clone(),
            description: proposal.description.clone(),
            parameters: proposal.parameters.clone(),
            voting: proposal.voting.clone(),
            // Cannot fail: the deadline is capped at a week.
            deadline: Utc::now() + chrono::Duration::from_std(deadline).unwrap_or_default(),
        };
        let task_json = match self.documents {
            DocumentFamily::Delibera => encode(&task)?,
            DocumentFamily::Reference => encode(&ReferenceTask::from_task(&task))?,
        };
        let id = task.proposal_id.as_str();
        tracing::info!(proposal = id, round = %task.round_id, workers = snapshot.len(), "round starts");

        self.write(&keys::task_definition(), &task_json).await?;
        self.write(&keys::coordinator_proposal_id(), id).await?;
        self.write(
            &keys::coordinator_status(),
            CoordinatorStatus::Coordinating.as_str(),
        )
        .await?;
        self.write_batch(
            vec![
                (keys::proposal(id, ProposalField::Config), task_json.clone()),
                (
                    keys::proposal(id, ProposalField::Status),
                    CoordinatorStatus::Coordinating.as_str().to_owned(),
                ),
            ],
            Batch::Create,
        )
        .await?;
        let pending: Vec<(String, String)> = snapshot
            .iter()
            .map(|did| {
                (
                    keys::worker(did, WorkerField::Status),
                    WorkerStatus::Pending.as_str().to_owned(),
                )
            })
            .collect();
        self.write_batch(pending, Batch::Replace).await?;

        let mut answers = self.collect_answers(&task, &snapshot, ends_at).await;

        self.write(
            &keys::coordinator_status(),
            CoordinatorStatus::Tallying.as_str(),
        )
        .await?;
        let mut outcomes = Vec::with_capacity(snapshot.len());
        let mut results = Vec::new();
        let mut reference_results = Vec::new();
        let mut archive = Vec::with_capacity(2 * snapshot.len() + 1);
        for did in &snapshot {
            let answer = answers.remove(did).unwrap_or_else(|| Answer {
                outcome: WorkerOutcome {
                    worker_did: did.clone(),
                    status: WorkerOutcomeStatus::Silent,
                    vote: None,
                    reasoning: None,
                    error: None,
                },
                result: None,
            });
            if let Some(counted) = answer.result {
                let (reference, archived) = match counted.reference {
                    Some((reference, text)) => (reference, text),
                    None => (
                        ReferenceWorkerResult::from_result(
                            &counted.result,
                            VOTE_TASK_TYPE,
                            task.parameters.clone(),
                        ),
                        encode(&counted.result)?,
                    ),
                };
                archive.push((
                    keys::proposal_worker(id, did, WorkerField::Result),
                    archived,
                ));
                archive.push((
                    keys::proposal_worker(id, did, WorkerField::Timestamp),
                    archived_timestamp(&counted.timestamp),
                ));
                results.push(counted.result);
                reference_results.push(reference);
            }
            outcomes.push(answer.outcome);
        }
        let tally = Tally::count(&task, outcomes, results, Utc::now());
        let tally_json = match self.documents {
            DocumentFamily::Delibera => encode(&tally)?,
            DocumentFamily::Reference => {
                encode(&ReferenceTally::from_tally(&tally, reference_results))?
            }
        };
        self.write(&keys::coordinator_tally(), &tally_json).await?;
        archive.push((keys::proposal(id, ProposalField::Tally), tally_json));
        self.write_batch(archive, Batch::Create).await?;
        self.write(&keys::proposal(id, ProposalField::Status), PROPOSAL_DONE)
            .await?;
        self.index_proposal(id).await?;
        // `completed` stays until the next round, so readers see the last result.
        self.write(
            &keys::coordinator_status(),
            CoordinatorStatus::Completed.as_str(),
        )
        .await?;
        tracing::info!(
            proposal = id,
            decision = %tally.decision,
            approved = tally.approved,
            rejected = tally.rejected,
            abstained = tally.abstained,
            "round tallied"
        );
        Ok(tally)
    }

    /// Appends `id` to `coordination/proposals/_index` (once), keeping the
    /// newest [`MAX_INDEXED_PROPOSALS`]. Only this coordinator writes the
    /// index, one round at a time, so reading and rewriting it is safe.
    async fn index_proposal(&self, id: &str) -> Result<()> {
        let key = keys::proposal_index();
        let mut index: Vec<String> = match self.memory.get(&key).await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
                tracing::warn!(%error, "the proposal index is not a JSON array of ids; starting it anew");
                Vec::new()
            }),
            None => Vec::new(),
        };
        if index.iter().any(|indexed| indexed == id) {
            return Ok(());
        }
        index.push(id.to_owned());
        let excess = index.len().saturating_sub(MAX_INDEXED_PROPOSALS);
        index.drain(..excess);
        self.write(&key, &encode(&index)?).await
    }

    /// Sweeps the unanswered workers until all answered or `ends_at`.
    async fn collect_answers(
        &self,
        task: &TaskDefinition,
        snapshot: &[Did],
        ends_at: Instant,
    ) -> HashMap<Did, Answer> {
        let mut answers = HashMap::new();
        let mut waiting: Vec<Did> = snapshot.to_vec();
        let mut failures: u32 = 0;
        loop {
            let mut pause = self.config.poll_interval;
            match self.sweep(task, &waiting).await {
                Ok(found) => {
                    failures = 0;
                    waiting.retain(|did| !found.contains_key(did));
                    answers.extend(found);
                }
                // Ensue may be down for a while: keep sweeping until the
                // deadline, further apart while it fails, and never sooner
                // than a rate limit asked.
                Err(error) => {
                    failures = failures.saturating_add(1);
                    pause = pause
                        .max(self.config.sweep_backoff().delay(failures))
                        .max(honoured_retry_after(&error));
                    tracing::warn!(%error, ?pause, "reading worker statuses failed");
                }
            }
            let now = Instant::now();
            if waiting.is_empty() || now >= ends_at {
                break;
            }
            tokio::time::sleep(pause.min(ends_at - now)).await;
        }
        answers
    }

    /// One read of `waiting`'s statuses, then of the finished ones' results.
    async fn sweep(&self, task: &TaskDefinition, waiting: &[Did]) -> Result<HashMap<Did, Answer>> {
        let status_keys: Vec<String> = waiting
            .iter()
            .map(|did| keys::worker(did, WorkerField::Status))
            .collect();
        let statuses = self.read_many(status_keys).await?;
        let finished: Vec<(&Did, WorkerStatus)> = waiting
            .iter()
            .filter_map(|did| {
                let status = statuses.get(&keys::worker(did, WorkerField::Status))?;
                match status.parse::<WorkerStatus>().ok()? {
                    found @ (WorkerStatus::Completed | WorkerStatus::Failed) => Some((did, found)),
                    _ => None,
                }
            })
            .collect();
        if finished.is_empty() {
            return Ok(HashMap::new());
        }
        let detail_keys: Vec<String> = finished
            .iter()
            .flat_map(|(did, status)| {
                let detail = match status {
                    WorkerStatus::Completed => keys::worker(did, WorkerField::Result),
                    _ => keys::worker(did, WorkerField::Error),
                };
                [detail, keys::worker(did, WorkerField::Timestamp)]
            })
            .collect();
        let details = self.read_many(detail_keys).await?;

        let mut answers = HashMap::new();
        for (did, status) in finished {
            let timestamp = details
                .get(&keys::worker(did, WorkerField::Timestamp))
                .cloned()
                .unwrap_or_else(iso_now);
            let mut outcome = WorkerOutcome {
                worker_did: did.clone(),
                status: WorkerOutcomeStatus::Failed,
                vote: None,
                reasoning: None,
                error: None,
            };
            if status == WorkerStatus::Failed {
                outcome.error = Some(
                    details
                        .get(&keys::worker(did, WorkerField::Error))
                        .cloned()
                        .unwrap_or_else(|| "failed without an error message".into()),
                );
                answers.insert(
                    did.clone(),
                    Answer {
                        outcome,
                        result: None,
                    },
                );
                continue;
            }
            let Some(text) = details.get(&keys::worker(did, WorkerField::Result)) else {
                continue; // `completed` before its result is visible: look again next sweep.
            };
            let counted = match ResultDocument::parse(text) {
                // A result of an earlier round: this round's answer is still to come.
                Ok(ResultDocument::Delibera(result)) if result.round_id != task.round_id => {
                    continue;
                }
                Ok(ResultDocument::Delibera(result)) if &result.worker_did != did => {
                    Err(format!("result signed as {}", result.worker_did))
                }
                Ok(ResultDocument::Delibera(result)) => Ok(Counted {
                    result,
                    timestamp,
                    reference: None,
                }),
                // A reference result without a round id answers a task that
                // named none; the `pending` this round wrote before it keeps
                // an earlier round's result from being read as `completed`.
                Ok(ResultDocument::Reference(result))
                    if result
                        .round_id()
                        .is_some_and(|round| round != task.round_id) =>
                {
                    continue;
                }
                Ok(ResultDocument::Reference(result)) if result.worker_id != did.as_str() => {
                    Err(format!("result signed as {}", result.worker_id))
                }
                Ok(ResultDocument::Reference(reference)) => {
                    match reference.to_result(did.clone(), task) {
                        Some(result) => Ok(Counted {
                            result,
                            timestamp,
                            reference: Some((reference, text.clone())),
                        }),
                        None => Err(format!(
                            "the result (task type {:?}) carries no vote: a TypeScript worker \
                             votes only on a reference task definition of type `vote`",
                            reference.task_type
                        )),
                    }
                }
                Err(error) => Err(error.to_string()),
            };
            match counted {
                Ok(counted) => {
                    outcome.status = WorkerOutcomeStatus::Completed;
                    outcome.vote = Some(counted.result.vote);
                    outcome.reasoning = Some(counted.result.reasoning.clone());
                    answers.insert(
                        did.clone(),
                        Answer {
                            outcome,
                            result: Some(counted),
                        },
                    );
                }
                Err(error) => {
                    outcome.error = Some(error);
                    answers.insert(
                        did.clone(),
                        Answer {
                            outcome,
                            result: None,
                        },
                    );
                }
            }
        }
        Ok(answers)
    }

    /// `get_many` in batches of `batch_size`, at most `read_concurrency` in flight.
    async fn read_many(&self, keys: Vec<String>) -> Result<HashMap<String, String>> {
        let batches: Vec<Vec<String>> = keys
            .chunks(self.config.batch())
            .map(<[String]>::to_vec)
            .collect();
        let memory = &self.memory;
        let mut reads = stream::iter(batches)
            .map(|batch| async move { memory.get_many(&batch).await })
            .buffer_unordered(self.config.read_concurrency.max(1));
        let mut values = HashMap::with_capacity(keys.len());
        while let Some(batch) = reads.next().await {
            values.extend(batch?);
        }
        Ok(values)
    }

    /// Writes every pair in batches of at most `batch_size`, at most
    /// `write_concurrency` batches in flight. A store without batches
    /// ([`Memory::max_batch`] of 1) has each existing key updated instead,
    /// which costs it one call rather than a delete and a create.
    async fn write_batch(&self, pairs: Vec<(String, String)>, batch: Batch) -> Result<()> {
        if batch == Batch::Replace && self.memory.max_batch() <= 1 {
            let mut writes = stream::iter(pairs)
                .map(|(key, value)| async move { self.write(&key, &value).await })
                .buffer_unordered(self.config.write_concurrency.max(1));
            while let Some(written) = writes.next().await {
                written?;
            }
            return Ok(());
        }
        let chunks: Vec<Vec<(String, String)>> = pairs
            .chunks(self.config.batch())
            .map(<[(String, String)]>::to_vec)
            .collect();
        let mut writes = stream::iter(chunks)
            .map(|chunk| async move { self.write_chunk(&chunk, batch).await })
            .buffer_unordered(self.config.write_concurrency.max(1));
        while let Some(written) = writes.next().await {
            written?;
        }
        Ok(())
    }

    /// Writes one batch, retrying a call that failed as a whole with backoff;
    /// then writes each item that failed alone on its own.
    async fn write_chunk(&self, chunk: &[(String, String)], batch: Batch) -> Result<()> {
        let outcomes = self
            .with_retries(
                || async {
                    if batch == Batch::Replace {
                        let keys: Vec<String> =
                            chunk.iter().map(|(key, _)| key.clone()).collect();
                        self.memory.delete_many(&keys).await?;
                    }
                    self.memory.create_many(chunk).await
                },
                |error, delay| {
                    tracing::warn!(keys = chunk.len(), %error, ?delay, "batch write failed; retrying");
                },
            )
            .await?;
        // A key another writer created meanwhile is updated; an item refused
        // for any other reason is tried again alone (and fails the round if it
        // still cannot be written). An item without an answer counts as failed.
        let mut outcomes = outcomes.into_iter();
        let singles: Vec<(String, String)> = chunk
            .iter()
            .filter(|(key, _)| match outcomes.next() {
                Some(Ok(())) => false,
                Some(Err(error)) => {
                    tracing::debug!(key, %error, "batch item failed; writing it alone");
                    true
                }
                None => true,
            })
            .cloned()
            .collect();
        let mut writes = stream::iter(singles)
            .map(|(key, value)| async move { self.write(&key, &value).await })
            .buffer_unordered(self.config.write_concurrency.max(1));
        while let Some(written) = writes.next().await {
            written?;
        }
        Ok(())
    }

    /// Upserts `key`, retrying transient failures with backoff.
    async fn write(&self, key: &str, value: &str) -> Result<()> {
        self.with_retries(
            || self.memory.upsert(key, value),
            |error, delay| tracing::warn!(key, %error, ?delay, "write failed; retrying"),
        )
        .await
    }

    /// Runs `call` until it succeeds, retrying retryable failures with the
    /// write backoff (`retrying` is told each one); the last failure is the
    /// error.
    async fn with_retries<T, F, Fut>(
        &self,
        call: F,
        retrying: impl Fn(&delibera_ensue::Error, Duration),
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = delibera_ensue::Result<T>>,
    {
        let backoff = self.config.write_backoff();
        let mut attempt = 1;
        loop {
            let error = match call().await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let delay = if error.is_retryable() {
                backoff.retry_delay(attempt, None)
            } else {
                None
            };
            let Some(delay) = delay else {
                return Err(error.into());
            };
            retrying(&error, delay);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// How a batch is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// Keys that usually do not exist yet (the proposal archive): created.
    Create,
    /// Keys that usually exist (the workers' statuses): deleted, then created,
    /// since the service updates only one key per call.
    Replace,
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::Config {
        reason: format!("cannot encode JSON: {error}"),
    })
}

/// A worker's answer time as the archive keeps it, ISO-8601: the reference
/// family's workers write epoch milliseconds, which are turned into it; any
/// other text is kept as written.
fn archived_timestamp(written: &str) -> String {
    written
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || written.to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}
