//! Ensue requests per round and wall time on the local Ensue server over
//! real HTTP: N = 10 and 100 workers at two fast polling intervals, and
//! N = 1,000 workers at the agents' default timing (workers poll every 3–5 s,
//! the coordinator sweeps every second) on a SQLite file as local mode keeps it.
//!
//! Requests are counted at the server, by the API key that sent them (the
//! coordinator and the workers use two keys of one organisation). "lag" is
//! how long the round took to end after the slowest worker wrote `completed`;
//! the coordinator should need at most one sweep interval plus 2 s.
//!
//! `cargo bench -p delibera-coordination --bench round`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use delibera_coordination::{
    Ballot, Coordinator, CoordinatorConfig, Proposal, Result, TaskDefinition, TaskHandler, Worker,
    WorkerConfig,
};
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_ensue_local::axum::extract::Request;
use delibera_ensue_local::axum::middleware::{self, Next};
use delibera_ensue_local::axum::response::Response;
use delibera_ensue_local::{ApiKey, AppState, BOOTSTRAP_ORG, Limits, Store, app};
use delibera_identity::{Did, Keypair};
use delibera_serve::Server;
use tokio::net::TcpListener;

/// Requests the server answered, by who sent them.
#[derive(Default)]
struct Counts {
    coordinator: AtomicU64,
    workers: AtomicU64,
}

impl Counts {
    fn take(&self) -> (u64, u64) {
        (
            self.coordinator.swap(0, Ordering::Relaxed),
            self.workers.swap(0, Ordering::Relaxed),
        )
    }
}

/// A local Ensue whose every request is counted by API key.
struct CountingServer {
    url: String,
    coordinator_key: ApiKey,
    worker_key: ApiKey,
    counts: Arc<Counts>,
    stop: tokio::sync::oneshot::Sender<()>,
    _dir: Option<tempfile::TempDir>,
}

impl CountingServer {
    async fn start(on_disk: bool) -> Self {
        let (store, dir) = if on_disk {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let store = Store::open(dir.path().join("ensue.sqlite3")).expect("the store opens");
            (store, Some(dir))
        } else {
            (Store::in_memory().expect("the store opens"), None)
        };
        let coordinator_key = ApiKey::generate();
        let worker_key = ApiKey::generate();
        for key in [&coordinator_key, &worker_key] {
            store.add_key(BOOTSTRAP_ORG, key).await.expect("a key");
        }
        // Rounds of 1,000 workers outgrow the default per-organisation quota.
        let state = AppState::new(store).with_limits(Limits::default().with_org_quota(0, 0));
        let counts = Arc::new(Counts::default());
        let coordinator_header = format!("Bearer {}", coordinator_key.expose());
        let counted = Arc::clone(&counts);
        let router = app(state).layer(middleware::from_fn(move |request: Request, next: Next| {
            let counts = Arc::clone(&counted);
            let from_coordinator = request
                .headers()
                .get("authorization")
                .is_some_and(|value| value.as_bytes() == coordinator_header.as_bytes());
            async move {
                let counter = if from_coordinator {
                    &counts.coordinator
                } else {
                    &counts.workers
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let response: Response = next.run(request).await;
                response
            }
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}/", listener.local_addr().expect("an address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(Server::new(router).run(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            coordinator_key,
            worker_key,
            counts,
            stop,
            _dir: dir,
        }
    }

    fn client(&self, key: &ApiKey) -> Arc<dyn Memory> {
        let config = EnsueConfig::new(key.expose())
            .with_base_url(self.url.as_str())
            .expect("a valid URL");
        Arc::new(EnsueClient::new(config).expect("a client"))
    }
}

/// Approves at once and notes when the last worker decided: the bench
/// measures coordination, not deciding.
struct Approving {
    last_decision: Mutex<Option<Instant>>,
}

#[async_trait::async_trait]
impl TaskHandler for Approving {
    async fn handle(&self, _task: &TaskDefinition) -> Result<Ballot> {
        *self
            .last_decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        Ok(Ballot::approve("bench"))
    }
}

struct Measured {
    wall: Duration,
    /// From the slowest worker's decision to the end of the round.
    lag: Duration,
    coordinator_requests: u64,
    worker_requests: u64,
}

async fn one_round(
    coordinator: &Coordinator,
    server: &CountingServer,
    handler: &Approving,
    dids: &[Did],
    round: usize,
) -> Measured {
    server.counts.take();
    let started = Instant::now();
    let tally = coordinator
        .run_round(
            &Proposal::new(format!("bench-{round}"), "Benchmark proposal"),
            dids,
            Duration::from_secs(120),
        )
        .await
        .expect("the round completes");
    let ended = Instant::now();
    assert_eq!(tally.abstained, 0, "every worker answers");
    let (coordinator_requests, worker_requests) = server.counts.take();
    let last_decision = handler
        .last_decision
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or(started);
    Measured {
        wall: ended - started,
        lag: ended.saturating_duration_since(last_decision),
        coordinator_requests,
        worker_requests,
    }
}

struct Setup {
    workers: usize,
    worker_config: WorkerConfig,
    coordinator_poll: Duration,
    on_disk: bool,
    rounds: usize,
}

async fn bench(setup: Setup) {
    let server = CountingServer::start(setup.on_disk).await;
    let worker_memory = server.client(&server.worker_key);
    let coordinator_memory = server.client(&server.coordinator_key);
    let handler = Arc::new(Approving {
        last_decision: Mutex::new(None),
    });

    let dids: Vec<Did> = (0..setup.workers)
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
            let worker = Worker::new(did.clone(), worker_memory.clone(), handler.clone())
                .with_config(setup.worker_config.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(worker.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    let coordinator = Coordinator::with_config(
        coordinator_memory,
        CoordinatorConfig {
            poll_interval: setup.coordinator_poll,
            ..CoordinatorConfig::default()
        },
    );

    // A first round creates every key; later rounds show the steady state.
    let mut measured = Vec::new();
    for round in 0..=setup.rounds {
        measured.push(one_round(&coordinator, &server, &handler, &dids, round).await);
    }
    let _ = stop.send(true);
    for task in tasks {
        task.await.expect("worker loop ends");
    }
    let _ = server.stop.send(());

    let workers = setup.workers;
    let first = &measured[0];
    let steady = &measured[1..];
    let n = steady.len() as f64;
    let mean = |f: &dyn Fn(&Measured) -> f64| steady.iter().map(f).sum::<f64>() / n;
    let worst_lag = measured.iter().map(|m| m.lag).max().unwrap_or_default();
    let allowed_lag = setup.coordinator_poll + Duration::from_secs(2);
    println!(
        "N={workers:>4} worker poll={:>4}+{:>4}ms sweep={:>4}ms {} | first round: {:>7.1} ms, \
         {:>5} coordinator ({:.2}/worker) + {:>5} worker requests | steady (mean of {}): {:>7.1} ms, \
         {:>7.1} coordinator ({:.2}/worker) + {:>7.1} worker requests ({:.1}/worker) | \
         worst lag after the slowest worker {:.0} ms (allowed {} ms: {})",
        setup.worker_config.poll_interval.as_millis(),
        setup.worker_config.poll_jitter.as_millis(),
        setup.coordinator_poll.as_millis(),
        if setup.on_disk { "file " } else { "in-memory" },
        first.wall.as_secs_f64() * 1e3,
        first.coordinator_requests,
        first.coordinator_requests as f64 / workers as f64,
        first.worker_requests,
        setup.rounds,
        mean(&|m| m.wall.as_secs_f64() * 1e3),
        mean(&|m| m.coordinator_requests as f64),
        mean(&|m| m.coordinator_requests as f64) / workers as f64,
        mean(&|m| m.worker_requests as f64),
        mean(&|m| m.worker_requests as f64) / workers as f64,
        worst_lag.as_secs_f64() * 1e3,
        allowed_lag.as_millis(),
        if worst_lag <= allowed_lag {
            "ok"
        } else {
            "TOO SLOW"
        },
    );
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: nothing heavy then.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("round: run with `cargo bench -p delibera-coordination --bench round`");
        return;
    }
    let only_large = std::env::args().any(|arg| arg == "large");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        if !only_large {
            for poll in [Duration::from_millis(100), Duration::from_millis(500)] {
                for workers in [10, 100] {
                    bench(Setup {
                        workers,
                        worker_config: WorkerConfig::polling(poll, poll / 2),
                        coordinator_poll: poll / 2,
                        on_disk: false,
                        rounds: 3,
                    })
                    .await;
                }
            }
        }
        let defaults = WorkerConfig::default();
        for on_disk in [false, true] {
            bench(Setup {
                workers: 1_000,
                worker_config: WorkerConfig::polling(defaults.poll_interval, defaults.poll_jitter),
                coordinator_poll: CoordinatorConfig::default().poll_interval,
                on_disk,
                rounds: 3,
            })
            .await;
        }
    });
}
