//! Ensue requests per round and wall time, for N = 10 and 100 workers on the
//! local Ensue server, at two worker polling intervals.
//!
//! `cargo bench -p delibera-coordination --bench round`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use delibera_coordination::{
    Ballot, Coordinator, CoordinatorConfig, Proposal, Result, TaskDefinition, TaskHandler, Worker,
    WorkerConfig,
};
use delibera_ensue::{EnsueClient, EnsueConfig, MAX_BATCH, Memory};
use delibera_ensue_local::{Config, LocalEnsue};
use delibera_identity::{Did, Keypair};

/// Counts the HTTP requests a `Memory` call costs against Ensue (MCP dialect:
/// one per call, `get_many` one per batch of 100; `upsert` is counted through
/// its `update`/`create` calls).
struct Counting<M> {
    inner: M,
    requests: AtomicU64,
}

impl<M> Counting<M> {
    fn new(inner: M) -> Self {
        Self {
            inner,
            requests: AtomicU64::new(0),
        }
    }

    fn count(&self, n: usize) {
        self.requests.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn take(&self) -> u64 {
        self.requests.swap(0, Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl<M: Memory> Memory for Counting<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.count(1);
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.count(1);
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.count(1);
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.count(keys.len().div_ceil(MAX_BATCH).max(1));
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.count(1);
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.count(1);
        self.inner.delete(key).await
    }
}

/// Approves at once: the bench measures coordination, not deciding.
struct Approving;

#[async_trait::async_trait]
impl TaskHandler for Approving {
    async fn handle(&self, _task: &TaskDefinition) -> Result<Ballot> {
        Ok(Ballot::approve("bench"))
    }
}

struct Measured {
    wall: Duration,
    coordinator_requests: u64,
    worker_requests: u64,
}

async fn one_round(
    coordinator: &Coordinator,
    coordinator_memory: &Counting<Arc<dyn Memory>>,
    worker_memory: &Counting<Arc<dyn Memory>>,
    dids: &[Did],
    round: usize,
) -> Measured {
    coordinator_memory.take();
    worker_memory.take();
    let started = Instant::now();
    let tally = coordinator
        .run_round(
            &Proposal::new(format!("bench-{round}"), "Benchmark proposal"),
            dids,
            Duration::from_secs(60),
        )
        .await
        .expect("the round completes");
    let wall = started.elapsed();
    assert_eq!(tally.abstained, 0, "every worker answers");
    Measured {
        wall,
        coordinator_requests: coordinator_memory.take(),
        worker_requests: worker_memory.take(),
    }
}

async fn bench(workers: usize, poll: Duration, rounds: usize) {
    let server = LocalEnsue::start(Config::default())
        .await
        .expect("local Ensue starts");
    let config = EnsueConfig::new(server.api_key().expose())
        .with_base_url(server.url())
        .expect("a valid URL");
    let client: Arc<dyn Memory> = Arc::new(EnsueClient::new(config).expect("a client"));
    let worker_memory = Arc::new(Counting::new(client.clone()));
    let coordinator_memory = Arc::new(Counting::new(client));

    let dids: Vec<Did> = (0..workers)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Keypair::from_seed(&seed).did()
        })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = dids
        .iter()
        .map(|did| {
            let worker = Worker::new(did.clone(), worker_memory.clone(), Arc::new(Approving))
                .with_config(WorkerConfig::polling(poll, poll / 2));
            let mut stopped = stopped.clone();
            tokio::spawn(worker.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    let coordinator = Coordinator::with_config(
        coordinator_memory.clone() as Arc<dyn Memory>,
        CoordinatorConfig {
            poll_interval: poll / 2,
            ..CoordinatorConfig::default()
        },
    );

    // A first round creates every key; later rounds show the steady state.
    let mut measured = Vec::new();
    for round in 0..=rounds {
        measured.push(
            one_round(
                &coordinator,
                &coordinator_memory,
                &worker_memory,
                &dids,
                round,
            )
            .await,
        );
    }
    let _ = stop.send(true);
    for task in tasks {
        task.await.expect("worker loop ends");
    }
    server.stop().await.expect("server stops");

    let first = &measured[0];
    let steady = &measured[1..];
    let n = steady.len() as f64;
    let mean = |f: &dyn Fn(&Measured) -> f64| steady.iter().map(f).sum::<f64>() / n;
    println!(
        "N={workers:>3} poll={:>4}ms | first round: {:>7.1} ms, {:>5} coordinator + {:>5} worker requests \
         | steady (mean of {rounds}): {:>7.1} ms, {:>7.1} coordinator + {:>7.1} worker requests ({:.1}/worker)",
        poll.as_millis(),
        first.wall.as_secs_f64() * 1e3,
        first.coordinator_requests,
        first.worker_requests,
        mean(&|m| m.wall.as_secs_f64() * 1e3),
        mean(&|m| m.coordinator_requests as f64),
        mean(&|m| m.worker_requests as f64),
        mean(&|m| m.worker_requests as f64) / workers as f64,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        for poll in [Duration::from_millis(100), Duration::from_millis(500)] {
            for workers in [10, 100] {
                bench(workers, poll, 3).await;
            }
        }
    });
}
