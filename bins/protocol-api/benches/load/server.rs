//! The server under test: the `protocol-api` binary as a child process, its
//! CPU time and memory read from `/proc`, and its job database read to know
//! when the background work of accepted jobs is done.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol_api::jobs::JobStatus;
use rusqlite::{Connection, OpenFlags};

use crate::floor::{Floor, SERVE_FLOOR};

/// How long the server may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long accepted jobs may take to finish their background steps.
const SETTLE_DEADLINE: Duration = Duration::from_secs(300);

/// Where the server keeps its jobs.
pub(crate) enum JobDatabase {
    /// The SQLite file in its data dir (the default).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`DATABASE_URL`, with the schema it uses).
    Postgres(String),
}

/// The server process; killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// `None` for a floor server, which keeps no jobs.
    database: Option<JobDatabase>,
    log: PathBuf,
    clock_ticks_per_second: u64,
}

/// A free port on the loopback interface (the server binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl ServerProcess {
    /// Starts `binary` over `data_dir` with only the settings in `env` (and
    /// `RUST_LOG` if the benchmark was given one), its output in `log`; its
    /// jobs in the SQLite file there, or in `postgres` (a URL naming the
    /// schema) with a server key of its own.
    pub(crate) fn start(
        binary: &Path,
        data_dir: &Path,
        postgres: Option<&str>,
        log: &Path,
        env: &[(&'static str, String)],
    ) -> Self {
        let port = free_port();
        let output = File::create(log).expect("the server's log file");
        let mut command = Command::new(binary);
        command
            .env_clear()
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATA_DIR", data_dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the log file again"))
            .stderr(output);
        for passed in ["RUST_LOG", "TOKIO_WORKER_THREADS"] {
            if let Some(value) = std::env::var_os(passed) {
                command.env(passed, value);
            }
        }
        let database = match postgres {
            Some(url) => {
                let key: [u8; 32] = rand::random();
                command
                    .env("DATABASE_URL", url)
                    .env("PROTOCOL_API_SECRET_KEY", hex::encode(key));
                JobDatabase::Postgres(url.to_owned())
            }
            None => JobDatabase::Sqlite(data_dir.join(protocol_api::compose::DATABASE_FILE)),
        };
        Self::spawn(command, port, Some(database), log)
    }

    /// Starts this bench binary as the `floor` server answering `body`
    /// ([`crate::floor`]), its output in `log`.
    pub(crate) fn start_floor(floor: Floor, body: &str, log: &Path) -> Self {
        let port = free_port();
        let output = File::create(log).expect("the floor's log file");
        let mut command = Command::new(std::env::current_exe().expect("this bench's path"));
        command
            .args([SERVE_FLOOR, floor.name(), &port.to_string(), body])
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the log file again"))
            .stderr(output);
        Self::spawn(command, port, None, log)
    }

    fn spawn(mut command: Command, port: u16, database: Option<JobDatabase>, log: &Path) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {:?}: {error}", command.get_program()));
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            database,
            log: log.to_owned(),
            clock_ticks_per_second: rustix::param::clock_ticks_per_second(),
        }
    }

    /// Where the server listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server accepts connections; panics, showing its log,
    /// if it exits or takes longer than [`START_DEADLINE`].
    pub(crate) async fn wait_until_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("the server's status") {
                panic!("the server exited ({status}):\n{}", self.log_text());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "the server did not listen within {START_DEADLINE:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn proc_file(&self, name: &str) -> String {
        let path = format!("/proc/{}/{name}", self.child.id());
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {path}: {error}"))
    }

    /// The CPU time the server has used so far, user and system, over all
    /// its threads (including those that have exited).
    pub(crate) fn cpu_time(&self) -> Duration {
        let total = stat_ticks(&self.proc_file("stat"));
        Duration::from_micros(total * 1_000_000 / self.clock_ticks_per_second)
    }

    /// The CPU time each group of the server's live threads has used so
    /// far, by thread name as the kernel keeps it (its first 15 bytes:
    /// `job-driver`, `job-store-write`, and the runtime's workers under
    /// `tokio-rt-worker`), in order of name.
    /// Threads that have exited are not counted.
    pub(crate) fn cpu_time_by_thread(&self) -> Vec<(String, Duration)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut groups: std::collections::BTreeMap<String, u64> = Default::default();
        for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            // A thread that exits between the listing and the reads is skipped.
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("stat")),
            ) else {
                continue;
            };
            *groups.entry(name.trim().to_owned()).or_default() += stat_ticks(&stat);
        }
        groups
            .into_iter()
            .map(|(name, ticks)| {
                (
                    name,
                    Duration::from_micros(ticks * 1_000_000 / self.clock_ticks_per_second),
                )
            })
            .collect()
    }

    /// The resolution of [`ServerProcess::cpu_time`]: one clock tick.
    pub(crate) fn clock_ticks_per_second(&self) -> u64 {
        self.clock_ticks_per_second
    }

    fn status_kib(&self, field: &str) -> u64 {
        self.proc_file("status")
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.child.id()))
    }

    /// Resident memory now, in MiB.
    pub(crate) fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") as f64 / 1024.0
    }

    /// The most resident memory the server has had, in MiB.
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") as f64 / 1024.0
    }

    /// Jobs whose background steps are still to run, read from the job
    /// database (a reader costs the server nothing).
    async fn jobs_in_flight(&self) -> Result<u64, String> {
        let runner_owned: Vec<String> = JobStatus::ALL
            .into_iter()
            .filter(|status| status.is_runner_owned())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        let query = format!(
            "SELECT count(*) FROM jobs WHERE status IN ({})",
            runner_owned.join(",")
        );
        match &self.database {
            None => Ok(0),
            Some(JobDatabase::Sqlite(path)) => {
                let connection = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|error| format!("{}: {error}", path.display()))?;
                connection
                    .query_row(&query, [], |row| row.get(0))
                    .map_err(|error| format!("{}: {error}", path.display()))
            }
            Some(JobDatabase::Postgres(url)) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .map_err(|error| format!("PostgreSQL: {error}"))?;
                tokio::spawn(connection);
                let count: i64 = client
                    .query_one(&query, &[])
                    .await
                    .map_err(|error| format!("PostgreSQL: {error}"))?
                    .get(0);
                Ok(count.unsigned_abs())
            }
        }
    }

    /// Waits until every accepted job has run its background steps (here:
    /// failed at the deploy), polling the job database.
    pub(crate) async fn wait_until_jobs_settle(&self) {
        let started = Instant::now();
        loop {
            let in_flight = self
                .jobs_in_flight()
                .await
                .unwrap_or_else(|error| panic!("reading the job database: {error}"));
            if in_flight == 0 {
                return;
            }
            assert!(
                started.elapsed() < SETTLE_DEADLINE,
                "{in_flight} jobs still running after {SETTLE_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User and system clock ticks in a `/proc` `stat` line (a process's or a
/// thread's).
fn stat_ticks(stat: &str) -> u64 {
    // The fields after the command name, which is in parentheses and may
    // itself hold spaces: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a /proc stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks = |field: usize| -> u64 { fields[field - 3].parse().expect("a tick count") };
    ticks(14) + ticks(15)
}
