//! The load benchmark: the release `protocol-api` binary, in production
//! mode, against fakes of NEAR, Phala Cloud and Ensue served by this
//! process; each scenario drives one route from a fixed number of
//! keep-alive connections and prints one row: throughput, latency, and the
//! server's CPU time per request (from `/proc/<pid>/stat`, so a loaded
//! machine changes it far less than it changes throughput).
//!
//! `cargo bench -p protocol-api --bench load [-- OPTIONS] [SCENARIO…]`: a
//! scenario runs when its name contains one of the words given (all run
//! when none is; `_` stands for `-`). Options, each also an environment
//! variable: `--route WORD` (another filter), `--secs N` / `LOAD_SECONDS`
//! (5), `--warmup-secs N` / `LOAD_WARMUP_SECONDS` (1), `--connections N` /
//! `LOAD_CONNECTIONS` (32), `--server PATH` / `LOAD_SERVER` (another
//! `protocol-api` binary, e.g. one built from an older commit),
//! `--database-url URL` / `LOAD_DATABASE_URL` (keep the jobs in this
//! PostgreSQL server, in a schema made for the run, instead of SQLite). See
//! `docs/benchmarks.md`.

mod client;
mod fakes;
mod floor;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::json;

use crate::client::{Call, Pool, Samples};
use crate::fakes::{Fakes, RegistrySize, UpstreamCalls};
use crate::floor::Floor;
use crate::server::ServerProcess;

/// Concurrent provisioning requests of the burst scenario.
const BURST_POSTS: usize = 200;

/// How long a registry change may take to show through the server (a
/// server that caches registry reads shows it once its entries expire).
const REGISTRY_SWITCH_DEADLINE: Duration = Duration::from_secs(30);

/// What to run, from the command line and the environment.
struct Settings {
    connections: usize,
    duration: Duration,
    warmup: Duration,
    server: PathBuf,
    database_url: Option<String>,
    filters: Vec<String>,
}

fn env_number(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(text) => number(name, &text),
        Err(_) => default,
    }
}

fn number(name: &str, text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|_| panic!("{name} {text:?} is not a number"))
}

impl Settings {
    /// The environment's settings, then the command line's over them;
    /// `None` when not started by `cargo bench` (which passes `--bench`),
    /// so `cargo test --benches` runs nothing heavy.
    fn parse() -> Option<Self> {
        let mut settings = Self {
            connections: env_number("LOAD_CONNECTIONS", 32.0) as usize,
            duration: Duration::from_secs_f64(env_number("LOAD_SECONDS", 5.0)),
            warmup: Duration::from_secs_f64(env_number("LOAD_WARMUP_SECONDS", 1.0)),
            server: std::env::var_os("LOAD_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_protocol-api"))),
            database_url: std::env::var("LOAD_DATABASE_URL").ok(),
            filters: Vec::new(),
        };
        let mut benching = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => benching = true,
                "--route" => {
                    let filter = value();
                    settings.filters.push(filter);
                }
                "--secs" => settings.duration = Duration::from_secs_f64(number(&arg, &value())),
                "--warmup-secs" => {
                    settings.warmup = Duration::from_secs_f64(number(&arg, &value()));
                }
                "--connections" => settings.connections = number(&arg, &value()) as usize,
                "--server" => settings.server = PathBuf::from(value()),
                "--database-url" => settings.database_url = Some(value()),
                flag if flag.starts_with("--") => panic!("unknown option {flag}"),
                _ => settings.filters.push(arg),
            }
        }
        for filter in &mut settings.filters {
            *filter = filter.replace('_', "-");
        }
        benching.then_some(settings)
    }

    /// A word naming a scenario exactly selects that one alone; any other
    /// word selects every scenario whose name contains it.
    fn selects(&self, scenario: Scenario) -> bool {
        self.filters.is_empty()
            || self.filters.iter().any(|filter| {
                let exact = Scenario::ALL.iter().any(|other| other.name() == filter);
                if exact {
                    scenario.name() == filter
                } else {
                    scenario.name().contains(filter.as_str())
                }
            })
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Root,
    StatusUnknown,
    StatusExisting,
    WorkersRegistered,
    AgentsEndpoints,
    ProvisionWorker,
    RootDuringBurst,
    Floor(Floor),
}

impl Scenario {
    const ALL: [Scenario; 12] = [
        Scenario::Root,
        Scenario::StatusUnknown,
        Scenario::StatusExisting,
        Scenario::WorkersRegistered,
        Scenario::AgentsEndpoints,
        Scenario::ProvisionWorker,
        Scenario::RootDuringBurst,
        Scenario::Floor(Floor::Tcp),
        Scenario::Floor(Floor::Hyper),
        Scenario::Floor(Floor::Axum),
        Scenario::Floor(Floor::Layer),
        Scenario::Floor(Floor::Serve),
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Root => "root",
            Scenario::StatusUnknown => "status-miss",
            Scenario::StatusExisting => "status-hit",
            Scenario::WorkersRegistered => "workers-registered",
            Scenario::AgentsEndpoints => "agents-endpoints",
            Scenario::ProvisionWorker => "provision-worker",
            Scenario::RootDuringBurst => "root-during-burst",
            Scenario::Floor(Floor::Tcp) => "floor-tcp",
            Scenario::Floor(Floor::Hyper) => "floor-hyper",
            Scenario::Floor(Floor::Axum) => "floor-axum",
            Scenario::Floor(Floor::Layer) => "floor-layer",
            Scenario::Floor(Floor::Serve) => "floor-serve",
        }
    }

    fn route(self) -> String {
        match self {
            Scenario::Root => "GET /".into(),
            Scenario::StatusUnknown => "GET /api/provision/status/{unknown id}".into(),
            Scenario::StatusExisting => "GET /api/provision/status/{failed job}".into(),
            Scenario::WorkersRegistered => format!(
                "GET /api/workers/registered ({} workers)",
                fakes::ROSTER_WORKERS
            ),
            Scenario::AgentsEndpoints => format!(
                "GET /api/agents/endpoints ({} agents)",
                fakes::LARGE_REGISTRY_AGENTS
            ),
            Scenario::ProvisionWorker => "POST /api/provision/worker".into(),
            Scenario::RootDuringBurst => format!("GET / during {BURST_POSTS} POSTs"),
            Scenario::Floor(Floor::Tcp) => "GET / from bare sockets (the same body)".into(),
            Scenario::Floor(Floor::Hyper) => "GET / from bare hyper (the same body)".into(),
            Scenario::Floor(Floor::Axum) => {
                "GET / from an axum router of one route on bare hyper (the same body)".into()
            }
            Scenario::Floor(Floor::Layer) => {
                "GET / from that router behind the request layer, on bare hyper".into()
            }
            Scenario::Floor(Floor::Serve) => {
                "GET / from that router on delibera-serve (default edges)".into()
            }
        }
    }
}

/// A row's numbers.
struct Row {
    scenario: Scenario,
    samples: Samples,
    elapsed: Duration,
    /// Server CPU time over the timed window.
    cpu: Duration,
    /// Upstream calls over the timed window.
    upstream: UpstreamCalls,
    /// What else the row has to say.
    note: String,
    /// The server's resident-memory high-water mark since it started.
    peak_rss_mib: f64,
}

const HEADER: &str = "| scenario | route | requests | req/s | p50 ms | p99 ms | CPU µs/req | NEAR calls/req | peak RSS so far MiB | note |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|";

impl Row {
    fn print(&self) {
        let requests = self.samples.answered();
        let per_request = |total: f64| {
            if requests == 0 {
                f64::NAN
            } else {
                total / requests as f64
            }
        };
        let mut note = self.note.clone();
        let problems = [
            (self.samples.unexpected, "unexpected statuses"),
            (self.samples.failed, "failed requests"),
            (self.upstream.unexpected, "unexpected upstream calls"),
        ];
        for (count, what) in problems {
            if count > 0 {
                note.push_str(&format!(" **{count} {what}**"));
            }
        }
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2} | {:.1} | {} |",
            self.scenario.name(),
            self.scenario.route(),
            requests,
            requests as f64 / self.elapsed.as_secs_f64(),
            self.samples.percentile_ms(0.50),
            self.samples.percentile_ms(0.99),
            per_request(self.cpu.as_micros() as f64),
            per_request(self.upstream.near as f64),
            self.peak_rss_mib,
            note.trim(),
        );
    }
}

/// The running server and what the scenarios share.
struct Bench {
    settings: Settings,
    server: ServerProcess,
    fakes: Fakes,
    /// A job that has failed at its deploy step, for the status lookups.
    existing_job: Option<String>,
    /// The run's temporary directory.
    dir: PathBuf,
}

impl Bench {
    fn worker_request(&self) -> Call {
        Call::post_json(
            "/api/provision/worker",
            &json!({
                "coordinatorDid": self.fakes.coordinator_did(),
                "displayName": "Load Bench Worker",
                "nearAccount": "bench-owner.testnet",
            }),
            StatusCode::ACCEPTED,
        )
    }

    async fn pool(&self, connections: usize) -> Pool {
        Pool::connect(self.server.addr(), connections).await
    }

    /// Makes the fake chain answer with the `size` registry, and waits
    /// until the server's answers show it.
    async fn use_registry(&self, size: RegistrySize) {
        self.fakes.set_registry(size);
        let mut pool = self.pool(1).await;
        let call = Call::get("/api/agents/endpoints", StatusCode::OK);
        let started = Instant::now();
        loop {
            let (status, body) = pool.once(&call).await;
            let answer: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
            let agents = answer["agents"].as_object().map(|agents| agents.len());
            if status == StatusCode::OK && agents == Some(size.agents()) {
                return;
            }
            assert!(
                started.elapsed() < REGISTRY_SWITCH_DEADLINE,
                "the server still lists {agents:?} agents ({status}), not {}",
                size.agents()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A worker job that has run up to its (failing) deploy.
    async fn existing_job(&mut self) -> String {
        if let Some(id) = &self.existing_job {
            return id.clone();
        }
        let mut pool = self.pool(1).await;
        let (status, body) = pool.once(&self.worker_request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
        let id = answer["jobId"].as_str().expect("a job id").to_owned();
        self.server.wait_until_jobs_settle().await;
        self.existing_job = Some(id.clone());
        id
    }

    /// Warms up, then measures `call` in a loop for the set duration.
    async fn closed_loop(&self, scenario: Scenario, call: Call) -> Row {
        self.closed_loop_on(&self.server, scenario, call).await
    }

    /// [`Self::closed_loop`] against `server`.
    async fn closed_loop_on(&self, server: &ServerProcess, scenario: Scenario, call: Call) -> Row {
        let mut pool = Pool::connect(server.addr(), self.settings.connections).await;
        pool.drive_for(&call, self.settings.warmup).await;
        let (cpu, upstream, started) = (server.cpu_time(), self.fakes.calls(), Instant::now());
        let samples = pool.drive_for(&call, self.settings.duration).await;
        Row {
            scenario,
            samples,
            elapsed: started.elapsed(),
            cpu: server.cpu_time() - cpu,
            upstream: self.fakes.calls() - upstream,
            note: String::new(),
            peak_rss_mib: server.peak_rss_mib(),
        }
    }

    /// `GET /` from a floor server answering the server's own `GET /` body.
    async fn floor(&self, floor: Floor) -> Row {
        let root = Call::get("/", StatusCode::OK);
        let (status, body) = self.pool(1).await.once(&root).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let body = String::from_utf8(body.to_vec()).expect("a JSON body");
        let log = self.dir.join(format!("floor-{}.log", floor.name()));
        let mut server = ServerProcess::start_floor(floor, &body, &log);
        server.wait_until_listening().await;
        let mut row = self
            .closed_loop_on(&server, Scenario::Floor(floor), root)
            .await;
        row.note = format!("{} bytes of body, as the server's", body.len());
        row
    }

    /// Provisioning: the timed window starts with no job in flight and its
    /// CPU time per job runs until every job it accepted has failed at the
    /// deploy, so it holds each job's background steps.
    async fn provision(&self) -> Row {
        let call = self.worker_request();
        let mut pool = self.pool(self.settings.connections).await;
        pool.drive_for(&call, self.settings.warmup).await;
        self.server.wait_until_jobs_settle().await;
        let (cpu, upstream, started) = (self.server.cpu_time(), self.fakes.calls(), Instant::now());
        let threads_before = self.server.cpu_time_by_thread();
        let samples = pool.drive_for(&call, self.settings.duration).await;
        let (elapsed, cpu_answering) = (started.elapsed(), self.server.cpu_time() - cpu);
        // Not taken before every accepted job has failed at its deploy, so
        // the figure holds their background steps too.
        self.server.wait_until_jobs_settle().await;
        let settled = started.elapsed();
        let cpu_with_jobs = self.server.cpu_time() - cpu;
        let threads_after = self.server.cpu_time_by_thread();
        let upstream = self.fakes.calls() - upstream;
        let accepted = samples.answered() as u64 - samples.unexpected;
        let per_job = |cpu: Duration| cpu.as_micros() as f64 / accepted.max(1) as f64;
        // Where a job's CPU goes: the requests' threads, the drivers'
        // threads and the store's writer (by thread name).
        let by_thread: Vec<String> = threads_after
            .iter()
            .map(|(name, after)| {
                let before = threads_before
                    .iter()
                    .find(|(earlier, _)| earlier == name)
                    .map_or(Duration::ZERO, |(_, before)| *before);
                (name, after.saturating_sub(before))
            })
            .filter(|(_, used)| !used.is_zero())
            .map(|(name, used)| format!("{name} {:.0}", per_job(used)))
            .collect();
        Row {
            scenario: Scenario::ProvisionWorker,
            note: format!(
                "CPU/req counts each accepted job's background steps: {accepted} jobs, all failed at the deploy {:.1} s after the load began ({} Phala provision calls); answering alone: {:.0} µs/req; µs/job by thread: {}",
                settled.as_secs_f64(),
                upstream.phala_provisions,
                per_job(cpu_answering),
                by_thread.join(", "),
            ),
            samples,
            elapsed,
            cpu: cpu_with_jobs,
            upstream,
            peak_rss_mib: self.server.peak_rss_mib(),
        }
    }

    /// `GET /` from the set connections while a burst of provisioning
    /// requests arrives at once on as many more; measured from the burst
    /// until every job it started has failed at the deploy.
    async fn burst(&self) -> Row {
        let root = Call::get("/", StatusCode::OK);
        let mut pool = self.pool(self.settings.connections).await;
        let mut burst_pool = self.pool(BURST_POSTS).await;
        pool.drive_for(&root, self.settings.warmup).await;
        self.server.wait_until_jobs_settle().await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (cpu, upstream, started) = (self.server.cpu_time(), self.fakes.calls(), Instant::now());
        let burst = async {
            let statuses = burst_pool.each_once(&self.worker_request()).await;
            let answered = started.elapsed();
            self.server.wait_until_jobs_settle().await;
            let settled = started.elapsed();
            let _ = stop.send(true);
            (statuses, answered, settled)
        };
        let (samples, (statuses, answered, settled)) =
            tokio::join!(pool.drive(&root, stopped), burst);
        let accepted = statuses
            .iter()
            .filter(|status| **status == Some(StatusCode::ACCEPTED))
            .count();
        Row {
            scenario: Scenario::RootDuringBurst,
            samples,
            elapsed: started.elapsed(),
            cpu: self.server.cpu_time() - cpu,
            upstream: self.fakes.calls() - upstream,
            note: format!(
                "{accepted}/{BURST_POSTS} POSTs accepted, all answered in {:.0} ms; their jobs done in {:.0} ms (CPU/req counts the jobs too)",
                answered.as_secs_f64() * 1000.0,
                settled.as_secs_f64() * 1000.0,
            ),
            peak_rss_mib: self.server.peak_rss_mib(),
        }
    }

    async fn run(&mut self, scenario: Scenario) -> Row {
        match scenario {
            Scenario::Root => {
                self.closed_loop(scenario, Call::get("/", StatusCode::OK))
                    .await
            }
            Scenario::StatusUnknown => {
                let path = format!("/api/provision/status/{}", uuid::Uuid::new_v4());
                self.closed_loop(scenario, Call::get(path, StatusCode::NOT_FOUND))
                    .await
            }
            Scenario::StatusExisting => {
                let path = format!("/api/provision/status/{}", self.existing_job().await);
                self.closed_loop(scenario, Call::get(path, StatusCode::OK))
                    .await
            }
            Scenario::WorkersRegistered => {
                self.use_registry(RegistrySize::Small).await;
                let call = Call::get("/api/workers/registered", StatusCode::OK);
                self.closed_loop(scenario, call).await
            }
            Scenario::AgentsEndpoints => {
                self.use_registry(RegistrySize::Large).await;
                let call = Call::get("/api/agents/endpoints", StatusCode::OK);
                let row = self.closed_loop(scenario, call).await;
                self.use_registry(RegistrySize::Small).await;
                row
            }
            Scenario::ProvisionWorker => self.provision().await,
            Scenario::RootDuringBurst => self.burst().await,
            Scenario::Floor(floor) => self.floor(floor).await,
        }
    }
}

fn main() {
    floor::serve_if_asked();
    let Some(settings) = Settings::parse() else {
        println!("the load benchmark runs under `cargo bench` only");
        return;
    };
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|scenario| settings.selects(*scenario))
        .collect();
    if scenarios.is_empty() {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        eprintln!(
            "no scenario matches {:?}; the scenarios are {}",
            settings.filters,
            names.join(", ")
        );
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let fakes = Fakes::start(dir.path()).await;
        let postgres = match &settings.database_url {
            Some(url) => Some(fresh_schema(url).await),
            None => None,
        };
        let mut server = ServerProcess::start(
            &settings.server,
            &dir.path().join("data"),
            postgres.as_deref(),
            &dir.path().join("server.log"),
            &[
                fakes.env(),
                &[
                    ("PROVISION_RATE_PER_MINUTE", "0".to_owned()),
                    ("CORS_ORIGINS", "https://app.example.com".to_owned()),
                ],
            ]
            .concat(),
        );
        server.wait_until_listening().await;
        println!(
            "protocol-api {} (pid {}), production mode against in-process fakes, jobs in {}; \
             {} connections, {:?} per scenario after {:?} of warm-up; CPU from /proc at {} ticks/s; \
             idle RSS {:.1} MiB; load average {}\n",
            settings.server.display(),
            server.pid(),
            if postgres.is_some() { "PostgreSQL" } else { "SQLite" },
            settings.connections,
            settings.duration,
            settings.warmup,
            server.clock_ticks_per_second(),
            server.rss_mib(),
            load_average(),
        );
        println!("{HEADER}");
        let mut bench = Bench {
            settings,
            server,
            fakes,
            existing_job: None,
            dir: dir.path().to_owned(),
        };
        for scenario in scenarios {
            bench.run(scenario).await.print();
        }
        // Other work on the machine moves throughput and latency far more
        // than CPU per request; the load average tells the reader how much.
        println!("\nload average at the end: {}", load_average());
    });
}

/// A schema made for this run on the PostgreSQL server at `url`, and the URL
/// that makes it the server's.
async fn fresh_schema(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connecting to the --database-url server: {error}"));
    tokio::spawn(connection);
    let schema = format!("load_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("a schema for the run");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}
