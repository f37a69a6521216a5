//! What idle local agents cost: 400 workers (by default) run in this process
//! as the local deployer runs them, each polling its status every 3–5 s
//! against an embedded Ensue on a SQLite file in the same process, under the
//! protocol API's default log filter. After a warm-up, the process's CPU time
//! (user + system, from `/proc/self/stat`) over the measured window is
//! printed as a share of one core, with the requests the server answered.
//! The server runs on its own runtime (threads named `ensue-local`), the
//! agents on another (`agents`), so the per-thread times split the cost
//! between the two sides.
//!
//! `cargo bench -p delibera-agent --bench idle [-- <agents> <seconds>]`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use delibera_agent::{LocalDeployer, StaticWorkers};
use delibera_deploy::{AgentEnv, AgentIdentity, AgentRole, AgentSpec, Deployer, DeploymentName};
use delibera_ensue_local::axum::extract::Request;
use delibera_ensue_local::axum::middleware::{self, Next};
use delibera_ensue_local::{ApiKey, AppState, BOOTSTRAP_ORG, Limits, Store, app};
use delibera_identity::Keypair;
use delibera_serve::Server;
use tokio::net::TcpListener;

/// Let every agent start, publish its identity and settle into its polling.
const WARM_UP: Duration = Duration::from_secs(10);

/// The kernel's `USER_HZ`: clock ticks per second in `/proc/*/stat` (100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND)
}

/// Threads idle this long are kept, so per-thread CPU times are not lost
/// with an exiting blocking thread during the window.
const KEEP_THREADS: Duration = Duration::from_secs(3600);

/// User + system CPU time of this process's threads, summed by thread name.
fn cpu_by_thread_name() -> HashMap<String, Duration> {
    let mut by_name = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        *by_name.entry(name).or_insert(Duration::ZERO) +=
            Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND);
    }
    by_name
}

fn share_of(
    before: &HashMap<String, Duration>,
    after: &HashMap<String, Duration>,
    name: &str,
    elapsed: Duration,
) -> f64 {
    let spent = after.get(name).copied().unwrap_or_default()
        - before
            .get(name)
            .copied()
            .unwrap_or_default()
            .min(after.get(name).copied().unwrap_or_default());
    spent.as_secs_f64() / elapsed.as_secs_f64() * 100.0
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: nothing heavy then.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("idle: run with `cargo bench -p delibera-agent --bench idle`");
        return;
    }
    let agents: usize = args
        .first()
        .map_or(400, |n| n.parse().expect("a number of agents"));
    let seconds: u64 = args
        .get(1)
        .map_or(30, |n| n.parse().expect("a number of seconds"));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,protocol_api=info,delibera_serve=info",
        ))
        .with_writer(std::io::stderr)
        .init();
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ensue-local")
        .thread_keep_alive(KEEP_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("agents")
        .thread_keep_alive(KEEP_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(
        server_runtime.handle(),
        agents,
        Duration::from_secs(seconds),
    ));
}

async fn run(server_runtime: &tokio::runtime::Handle, agents: usize, window: Duration) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path().join("ensue.sqlite3")).expect("the store opens");
    let key = ApiKey::generate();
    store.add_key(BOOTSTRAP_ORG, &key).await.expect("a key");
    let requests = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&requests);
    let router = app(AppState::new(store).with_limits(Limits::default())).layer(
        middleware::from_fn(move |request: Request, next: Next| {
            counted.fetch_add(1, Ordering::Relaxed);
            next.run(request)
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let url = format!("http://{}/", listener.local_addr().expect("an address"));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_runtime.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        Server::new(router)
            .run(listener, async move {
                let _ = server_stopped.await;
            })
            .await
    });

    let deployer = LocalDeployer::new(Arc::new(StaticWorkers::default()));
    let coordinator = Keypair::from_seed(&[0xc0; 32]).did();
    let mut ids = Vec::with_capacity(agents);
    for n in 0..agents {
        let mut seed = [7u8; 32];
        seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let keypair = Keypair::from_seed(&seed);
        let mut env = AgentEnv::new(
            AgentRole::Worker,
            AgentIdentity::from_keypair(&keypair),
            format!("Idle worker {n}"),
            key.expose(),
        );
        env.ensue_url = url.parse().expect("the server's URL");
        env.coordinator_did = Some(coordinator.clone());
        let name = DeploymentName::derive(env.role, &env.display_name, &format!("{n:016x}"));
        let deployment = deployer
            .deploy(&AgentSpec::new(name, env))
            .await
            .expect("the agent starts");
        ids.push(deployment.id);
    }

    tokio::time::sleep(WARM_UP).await;
    let served_before = requests.load(Ordering::Relaxed);
    let cpu_before = cpu_time();
    let threads_before = cpu_by_thread_name();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = cpu_time() - cpu_before;
    let threads_after = cpu_by_thread_name();
    let elapsed = started.elapsed();
    let served = requests.load(Ordering::Relaxed) - served_before;

    let share = cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    println!(
        "{agents} idle agents over {:.1} s: {:.1}% of one core ({:.2} s CPU), {served} requests \
         ({:.1}/s), {:.0} µs of CPU per poll (client and server); server threads {:.1}%, \
         agent threads {:.1}% of one core",
        elapsed.as_secs_f64(),
        share,
        cpu.as_secs_f64(),
        served as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / served.max(1) as f64,
        share_of(&threads_before, &threads_after, "ensue-local", elapsed),
        share_of(&threads_before, &threads_after, "agents", elapsed),
    );

    for id in ids {
        deployer.teardown(&id).await.expect("the agent stops");
    }
    let _ = stop_server.send(());
    let _ = server.await;
}
