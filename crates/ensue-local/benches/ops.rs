//! Get and upsert operations per second through the real `delibera-ensue`
//! client over loopback, sequential and 32-way concurrent, against a server
//! on a SQLite file (WAL, `synchronous = FULL`) and one in memory.
//!
//! Run with `cargo bench -p delibera-ensue-local --bench ops`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use delibera_backoff::Backoff;
use delibera_ensue::{Dialect, EnsueClient, EnsueConfig, Memory};
use delibera_ensue_local::{Config, LocalEnsue};
use tokio::task::JoinSet;

const KEYS: usize = 256;
const SEQUENTIAL_OPS: usize = 2_000;
const CONCURRENCY: usize = 32;
const OPS_PER_TASK: usize = 200;

#[derive(Clone, Copy)]
enum Op {
    Get,
    Upsert,
}

fn key(i: usize) -> String {
    format!("coordination/tasks/w{:03}/status", i % KEYS)
}

async fn one(memory: &EnsueClient, op: Op, i: usize) {
    let outcome = match op {
        Op::Get => memory.get(&key(i)).await.map(drop),
        Op::Upsert => memory.upsert(&key(i), &format!("value {i}")).await,
    };
    if let Err(error) = outcome {
        panic!("benchmark operation failed: {error}");
    }
}

async fn sequential(memory: &EnsueClient, op: Op) -> f64 {
    let start = Instant::now();
    for i in 0..SEQUENTIAL_OPS {
        one(memory, op, i).await;
    }
    rate(SEQUENTIAL_OPS, start.elapsed())
}

async fn concurrent(memory: &Arc<EnsueClient>, op: Op) -> f64 {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..CONCURRENCY {
        let memory = Arc::clone(memory);
        tasks.spawn(async move {
            for i in 0..OPS_PER_TASK {
                one(&memory, op, task * OPS_PER_TASK + i).await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            panic!("benchmark task failed: {error}");
        }
    }
    rate(CONCURRENCY * OPS_PER_TASK, start.elapsed())
}

fn rate(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

async fn bench(label: &str, config: Config) {
    let server = match LocalEnsue::start(config).await {
        Ok(server) => server,
        Err(error) => panic!("cannot start the server: {error}"),
    };
    let client_config =
        match EnsueConfig::new(server.api_key().expose()).with_base_url(server.url()) {
            Ok(config) => config
                .with_dialect(Dialect::Mcp)
                .with_retry(Backoff::none()),
            Err(error) => panic!("bad server URL: {error}"),
        };
    let memory = match EnsueClient::new(client_config) {
        Ok(client) => Arc::new(client),
        Err(error) => panic!("cannot build the client: {error}"),
    };
    // Every key exists, so an upsert is one update round trip.
    for i in 0..KEYS {
        one(&memory, Op::Upsert, i).await;
    }
    println!(
        "{label:<28} sequential get {:>8.0} ops/s   upsert {:>8.0} ops/s",
        sequential(&memory, Op::Get).await,
        sequential(&memory, Op::Upsert).await,
    );
    println!(
        "{label:<28} {CONCURRENCY}-way get     {:>8.0} ops/s   upsert {:>8.0} ops/s",
        concurrent(&memory, Op::Get).await,
        concurrent(&memory, Op::Upsert).await,
    );
    if let Err(error) = server.stop().await {
        panic!("cannot stop the server: {error}");
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that a smoke run.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("ops: pass --bench (cargo bench) to measure");
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("cannot build a runtime: {error}"),
    };
    runtime.block_on(async {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("cannot make a temporary directory: {error}"),
        };
        bench(
            "sqlite file (WAL, FULL)",
            Config::default().with_data_dir(dir.path()),
        )
        .await;
        bench("in memory", Config::default()).await;
    });
}
