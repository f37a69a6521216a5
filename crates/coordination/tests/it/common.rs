//! Shared test helpers: handlers, memory wrappers and worker spawning.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use delibera_coordination::{
    Ballot, CoordinatorConfig, Error, Result, TaskDefinition, TaskHandler, Vote, Worker,
    WorkerConfig,
};
use delibera_ensue::Memory;
use delibera_identity::{Did, Keypair};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
        self.task.await.unwrap();
    }
}

/// Starts a worker loop on its own task.
pub fn spawn_worker(
    did: Did,
    memory: Arc<dyn Memory>,
    handler: Arc<dyn TaskHandler>,
    config: WorkerConfig,
) -> RunningWorker {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(did, memory, handler).with_config(config);
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
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
}

/// Drops every write of `value` to `key`: simulates a late writer from an
/// earlier round that always wins the race.
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
        self.inner.delete(key).await
    }
}
