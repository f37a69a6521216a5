//! The real `protocol-api` binary as a child process in local mode, started
//! on fixed ports over one data dir and killed with SIGKILL (no shutdown, no
//! flush), as a crash or an OOM kill would.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocol_api::seal::SecretBox;
use protocol_api::store::Database;

/// The key sealing the child's secrets, so the test can read its database.
pub const SECRET_KEY: &str = "70726f636573732d746573742d7365616c696e672d6b65792d30313233343536";

pub struct ServerProcess {
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    api_port: u16,
    ensue_port: u16,
    /// The API's base URL.
    pub api: String,
}

/// A free port below Linux's ephemeral range (32768 and up), so no agent the
/// server starts on port 0 can be given it while the server is down.
fn free_low_port(taken: &[u16]) -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl ServerProcess {
    /// A server over `data_dir`, not started yet.
    pub fn new(data_dir: &Path) -> Self {
        let api_port = free_low_port(&[]);
        let ensue_port = free_low_port(&[api_port]);
        Self {
            child: None,
            data_dir: data_dir.to_owned(),
            log: data_dir.with_extension("log"),
            api_port,
            ensue_port,
            api: format!("http://127.0.0.1:{api_port}"),
        }
    }

    /// Starts the binary, with the default log filter, and waits until it answers.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_protocol-api"))
            // Only what is set here: the caller's environment must not leak in.
            .env_clear()
            .env("DELIBERA_MODE", "local")
            .env("DATA_DIR", &self.data_dir)
            .env("HOST", "127.0.0.1")
            .env("PORT", self.api_port.to_string())
            .env("ENSUE_LOCAL_ADDR", format!("127.0.0.1:{}", self.ensue_port))
            .env("PROTOCOL_API_SECRET_KEY", SECRET_KEY)
            .env("PROTOCOL_API_ADMIN_TOKEN", "process-test-admin-token")
            .env("PROVISION_RATE_PER_MINUTE", "0")
            .env("HEALTH_TIMEOUT_SECS", "120")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if http.get(format!("{}/", self.api)).send().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never answered:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the server logged, across its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The server's database, opened beside it (or after it was killed).
    pub fn database(&self) -> Database {
        let secrets = SecretBox::open_or_create(&self.data_dir, Some(SECRET_KEY), None).unwrap();
        Database::open(&self.data_dir.join("jobs.sqlite"), secrets).unwrap()
    }

    /// The embedded Ensue's store (open it only while the server is down).
    pub fn ensue_store(&self) -> delibera_ensue_local::Store {
        delibera_ensue_local::Store::open(
            self.data_dir
                .join("ensue")
                .join(delibera_ensue_local::DATABASE_FILE),
        )
        .unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client with a deadline on every request and no pooled
/// connections (a killed server leaves dead ones behind).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}
