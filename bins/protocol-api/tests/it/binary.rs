//! The `protocol-api` binary itself, as users run it (`cargo run -p
//! protocol-api`), in an empty environment but for its settings: started on a
//! data dir where an earlier run left a job mid-way, it resumes that job.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use protocol_api::jobs::{Job, NewJob};
use protocol_api::seal::SecretBox;
use protocol_api::store::Database;
use serde_json::Value;

use crate::common::{DEADLINE, http};

/// The key sealing the jobs' secrets, handed to the binary in its env.
const SECRET_KEY: [u8; 32] = [7; 32];

/// The running binary, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    url: String,
    /// Its output so far, and the lines it prints from now on.
    printed: Vec<String>,
    output: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the binary on `data_dir` with only its own settings in its
    /// environment, and waits until it says where it listens.
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_protocol-api"))
            .env_clear()
            .env("DATA_DIR", data_dir)
            .env("PORT", "0")
            .env("ENSUE_LOCAL_ADDR", "127.0.0.1:0")
            .env("PROTOCOL_API_SECRET_KEY", hex::encode(SECRET_KEY))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, seen) = mpsc::channel();
        for output in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    let _ = lines.send(line);
                }
            });
        }
        let mut log = Vec::new();
        let started = std::time::Instant::now();
        let address = loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            let line = seen.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the binary did not say where it listens within {DEADLINE:?}:\n{}",
                    log.join("\n")
                )
            });
            let address = listening_address(&line);
            log.push(line);
            if let Some(address) = address {
                break address;
            }
        };
        Server {
            child,
            url: format!("http://{address}"),
            printed: log,
            output: seen,
        }
    }

    /// Every line it printed up to now.
    fn printed(&mut self) -> &[String] {
        self.printed.extend(self.output.try_iter());
        &self.printed
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr=` of the "listening" log line, colours or not.
fn listening_address(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    if !plain.contains("Delibera Protocol API listening") {
        return None;
    }
    let (_, rest) = plain.split_once("addr=")?;
    Some(rest.split_whitespace().next()?.to_owned())
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence ends with its first letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// What an earlier run leaves when it stops right after accepting a job: the
/// job stored, no step of it done, beside the registry and Ensue stores that
/// run made.
async fn job_left_by_an_earlier_run(data_dir: &Path) -> Job {
    std::fs::create_dir_all(data_dir).unwrap();
    delibera_near::LocalRegistry::open(
        data_dir.join("registry.sqlite"),
        protocol_api::compose::LOCAL_SERVER_ACCOUNT.parse().unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(data_dir.join("ensue")).unwrap();
    delibera_ensue_local::Store::open(
        data_dir
            .join("ensue")
            .join(delibera_ensue_local::DATABASE_FILE),
    )
    .unwrap();
    let database = Database::open(
        &data_dir.join("jobs.sqlite"),
        SecretBox::from_key(&SECRET_KEY),
    )
    .unwrap();
    let job = Job::new(
        NewJob {
            role: delibera_deploy::AgentRole::Coordinator,
            display_name: "Left Mid Way".into(),
            near_account: "mydao.testnet".parse().unwrap(),
            coordinator_did: None,
            min_workers: Some(1),
            max_workers: Some(3),
            contract_address: None,
        },
        chrono::Utc::now(),
    );
    database.jobs().insert(&job).await.unwrap();
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_resumes_a_job_an_earlier_run_left_mid_way() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let job = job_left_by_an_earlier_run(&data_dir).await;
    assert_eq!(job.status.as_str(), "generating_identity");

    let mut server = tokio::task::spawn_blocking(move || Server::start(&data_dir))
        .await
        .unwrap();
    let http = http();
    let status_url = format!("{}/api/provision/status/{}", server.url, job.id);
    let mut last = Value::Null;
    let resumed = tokio::time::timeout(DEADLINE, async {
        loop {
            last = http
                .get(&status_url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_ne!(last["status"], "failed", "{last}");
            if last["status"] == "awaiting_near_signature" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        resumed.is_ok(),
        "the job was not resumed to the wallet step within {DEADLINE:?}; last seen: {last}"
    );
    let ready = last;
    assert_eq!(ready["displayName"], "Left Mid Way");
    assert!(ready["storachaPrivateKey"].is_string(), "{ready}");
    // The agent it deployed answers with the job's identity.
    let health: Value = http
        .get(ready["phalaEndpoint"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["did"], ready["coordinatorDid"]);

    // The id reads the secrets above, so the log names the job by its tag.
    let tag = protocol_api::jobs::JobTag::of(job.id).to_string();
    let printed = server.printed().join("\n");
    assert!(
        printed.contains(&format!("job={tag}")),
        "no line names the job by its tag {tag}:\n{printed}"
    );
    assert!(
        !printed.contains(&job.id.to_string()) && !printed.contains(&job.id.simple().to_string()),
        "the job id was logged:\n{printed}"
    );
    drop(server);
}
