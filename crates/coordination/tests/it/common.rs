//! Shared test helpers: handlers, memory wrappers and worker spawning.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use delibera_coordination::{
    Ballot, CoordinatorConfig, Error, Result, TaskDefinition, TaskHandler, Vote, Worker,
    WorkerConfig,
};
use delibera_ensue::Memory;
use delibera_identity::{Did, Keypair};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Every wait in these tests gives up after this long, so a broken behaviour
/// fails with a message instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `future`, or fails naming `what` once [`DEADLINE`] has passed.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

/// Polls `condition` every 5 ms until it holds, or fails naming `what`.
pub async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A one-way gate: closed until [`Gate::open`], then open for good.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn closed() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the gate is open (never, if nobody opens it).
    pub async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while waiting.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Approves once its gate opens: a handler whose finishing is an event the
/// test decides, not a race against a timer.
pub struct AfterGate(pub Gate);

#[async_trait::async_trait]
impl TaskHandler for AfterGate {
    async fn handle(&self, _task: &TaskDefinition) -> Result<Ballot> {
        self.0.passed().await;
        Ok(Ballot::approve("the gate opened"))
    }
}

/// A deterministic DID for worker `n`.
pub fn did(n: u8) -> Did {
    Keypair::from_seed(&[n; 32]).did()
}

/// Always votes `vote`.
pub struct Fixed(pub Vote);

#[async_trait::async_trait]
impl TaskHandler for Fixed {
    async fn handle(&self, task: &TaskDefinition) -> Result<Ballot> {
        Ok(Ballot {
            vote: self.0,
            reasoning: format!("fixed {} on {}", self.0, task.title),
        })
    }
}

/// Always fails.
pub struct Failing;

#[async_trait::async_trait]
impl TaskHandler for Failing {
    async fn handle(&self, _task: &TaskDefinition) -> Result<Ballot> {
        Err(Error::handler("cannot decide: data source unavailable"))
    }
}

/// Always panics.
pub struct Panicking;

#[async_trait::async_trait]
impl TaskHandler for Panicking {
    async fn handle(&self, _task: &TaskDefinition) -> Result<Ballot> {
        panic!("handler bug: index out of range")
    }
}

/// Sleeps, then approves; counts its calls.
pub struct Slow {
    pub delay: Duration,
    pub calls: AtomicUsize,
}

impl Slow {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl TaskHandler for Slow {
    async fn handle(&self, _task: &TaskDefinition) -> Result<Ballot> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(Ballot::approve("took my time"))
    }
}

/// Fast timing for tests: polls every 10 ms (+ up to 5 ms).
pub fn fast_worker_config() -> WorkerConfig {
    WorkerConfig {
        backoff_max: Duration::from_millis(50),
        ..WorkerConfig::polling(Duration::from_millis(10), Duration::from_millis(5))
    }
}

/// Fast timing for tests: sweeps every 10 ms, retries writes quickly.
pub fn fast_coordinator_config() -> CoordinatorConfig {
    CoordinatorConfig {
        poll_interval: Duration::from_millis(10),
        backoff_base: Duration::from_millis(5),
        write_attempts: 30,
        ..CoordinatorConfig::default()
    }
}

/// A running worker and the means to stop it.
pub struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningWorker {
    /// Signals shutdown and waits for the loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        within("the worker loop to stop", self.task).await.unwrap();
    }
}

/// Starts a worker loop on its own task.
pub fn spawn_worker(
    did: Did,
    memory: Arc<dyn Memory>,
    handler: Arc<dyn TaskHandler>,
    config: WorkerConfig,
) -> RunningWorker {
    spawn_worker_noticing_shutdown(did, memory, handler, config, || {})
}

/// Starts a worker loop whose shutdown signal calls `noticed` at the moment
/// the loop sees it, so a test can act on "the worker knows" as an event.
pub fn spawn_worker_noticing_shutdown(
    did: Did,
    memory: Arc<dyn Memory>,
    handler: Arc<dyn TaskHandler>,
    config: WorkerConfig,
    noticed: impl FnOnce() + Send + 'static,
) -> RunningWorker {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(did, memory, handler).with_config(config);
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
        noticed();
    }));
    RunningWorker { stop, task }
}

/// Fails the first `failures` calls with an HTTP 500, then passes through.
pub struct Flaky<M> {
    pub inner: M,
    remaining: AtomicUsize,
    pub served: AtomicUsize,
}

impl<M> Flaky<M> {
    pub fn new(inner: M, failures: usize) -> Self {
        Self {
            inner,
            remaining: AtomicUsize::new(failures),
            served: AtomicUsize::new(0),
        }
    }

    fn fail(&self) -> delibera_ensue::Result<()> {
        let took = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if took.is_ok() {
            self.served.fetch_add(1, Ordering::SeqCst);
            return Err(delibera_ensue::Error::Server {
                status: 500,
                body: "upstream unavailable".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<M: Memory> Memory for Flaky<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.fail()?;
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.fail()?;
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.fail()?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.fail()?;
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.fail()?;
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.fail()?;
        self.inner.delete(key).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}

/// Drops every write of `value` to `key`, and every delete of `key` (which
/// the late writer undoes at once): simulates a late writer from an earlier
/// round that always wins the race.
pub struct DropsWrite<M> {
    pub inner: M,
    pub key: String,
    pub value: String,
}

impl<M> DropsWrite<M> {
    fn dropped(&self, key: &str, value: &str) -> bool {
        key == self.key && value == self.value
    }
}

#[async_trait::async_trait]
impl<M: Memory> Memory for DropsWrite<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        if self.dropped(key, value) {
            return Ok(());
        }
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        if self.dropped(key, value) {
            return Ok(());
        }
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        if key == self.key {
            return Ok(());
        }
        self.inner.delete(key).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}

/// The coordinator's view of `inner` for rounds with a silent worker: each
/// sweep of the workers' statuses first waits until every worker of
/// `answering` has finished in `inner`. So their answers are always in the
/// tally however slowly the machine runs them, while the silent worker keeps
/// the round open until its deadline: the outcome is decided by events.
pub struct SweepsAfterAnswers<M> {
    pub inner: M,
    pub answering: Vec<Did>,
}

impl<M: Memory> SweepsAfterAnswers<M> {
    async fn all_answered(&self) -> bool {
        for did in &self.answering {
            let status = self
                .inner
                .get(&format!("coordination/tasks/{did}/status"))
                .await
                .ok()
                .flatten();
            if !matches!(status.as_deref(), Some("completed" | "failed")) {
                return false;
            }
        }
        true
    }
}

#[async_trait::async_trait]
impl<M: Memory> Memory for SweepsAfterAnswers<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        let sweeps_statuses = keys
            .iter()
            .any(|key| key.starts_with("coordination/tasks/") && key.ends_with("/status"));
        if sweeps_statuses {
            until("the answering workers to finish", || self.all_answered()).await;
        }
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.inner.delete(key).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}

/// A worker's view of `inner` in which each round's deadline is [`DEADLINE`]
/// later than the coordinator set it: a worker that only gets to the task
/// after a short round deadline (a loaded machine) still answers it, instead
/// of failing it as timed out. Everything else passes through.
pub struct LateDeadline<M> {
    pub inner: M,
}

#[async_trait::async_trait]
impl<M: Memory> Memory for LateDeadline<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        let value = self.inner.get(key).await?;
        if key != "coordination/config/task_definition" {
            return Ok(value);
        }
        Ok(
            value.map(|text| match serde_json::from_str::<TaskDefinition>(&text) {
                Ok(mut task) => {
                    task.deadline += chrono::Duration::from_std(DEADLINE).unwrap();
                    serde_json::to_string(&task).unwrap()
                }
                Err(_) => text,
            }),
        )
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.inner.delete(key).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}

/// Every call waits until `gate` opens, then passes through: holds whoever
/// uses it (a coordinator mid-round) for as long as the test decides.
pub struct HeldUntil<M> {
    pub inner: M,
    pub gate: Gate,
}

#[async_trait::async_trait]
impl<M: Memory> Memory for HeldUntil<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.gate.passed().await;
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.gate.passed().await;
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.gate.passed().await;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.gate.passed().await;
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.gate.passed().await;
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.gate.passed().await;
        self.inner.delete(key).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}
