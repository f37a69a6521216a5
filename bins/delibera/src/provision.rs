//! `delibera provision coordinator|worker …`: start a provisioning job on a
//! protocol-api server and, with `--wait`, follow it step by step until it
//! needs the wallet (or ends), showing progress on stderr. The steps come
//! pushed over the job's event stream (resumed after a dropped connection);
//! a server without one is polled.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{Outcome, block_on};

/// The statuses a job moves through, in order (the API's status values).
const STEPS: [&str; 9] = [
    "generating_identity",
    "creating_space",
    "provisioning_ensue",
    "preparing_phala",
    "deploying_phala",
    "waiting_for_url",
    "awaiting_near_signature",
    "registering",
    "complete",
];

#[derive(Subcommand)]
pub(crate) enum ProvisionCommand {
    /// Provision a coordinator (identity, Storacha delegation, Ensue org, deployment).
    Coordinator {
        /// Human-readable name.
        #[arg(long)]
        display_name: String,
        /// NEAR account that will sign the registry transaction.
        #[arg(long)]
        near_account: String,
        /// Minimum workers for quorum.
        #[arg(long)]
        min_workers: Option<u32>,
        /// Maximum workers allowed.
        #[arg(long)]
        max_workers: Option<u32>,
        /// Factory-created coordinator contract.
        #[arg(long)]
        contract_address: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Provision a managed worker for a registered coordinator.
    Worker {
        /// DID of the coordinator to join.
        #[arg(long)]
        coordinator_did: String,
        /// Human-readable name.
        #[arg(long)]
        display_name: String,
        /// NEAR account for the registry transaction.
        #[arg(long)]
        near_account: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
pub(crate) struct Common {
    /// The protocol-api base URL.
    #[arg(
        long,
        env = "PROTOCOL_API_URL",
        default_value = "http://127.0.0.1:3005"
    )]
    api: String,
    /// Follow the job until it awaits the wallet signature, completes or fails.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

pub(crate) fn run(command: ProvisionCommand) -> anyhow::Result<Outcome> {
    let (path, body, common) = match command {
        ProvisionCommand::Coordinator {
            display_name,
            near_account,
            min_workers,
            max_workers,
            contract_address,
            common,
        } => {
            let mut body = json!({ "displayName": display_name, "nearAccount": near_account });
            if let Some(min) = min_workers {
                body["minWorkers"] = json!(min);
            }
            if let Some(max) = max_workers {
                body["maxWorkers"] = json!(max);
            }
            if let Some(address) = contract_address {
                body["contractAddress"] = json!(address);
            }
            ("/api/provision/coordinator", body, common)
        }
        ProvisionCommand::Worker {
            coordinator_did,
            display_name,
            near_account,
            common,
        } => (
            "/api/provision/worker",
            json!({ "coordinatorDid": coordinator_did, "displayName": display_name, "nearAccount": near_account }),
            common,
        ),
    };
    block_on(provision(path, body, common))
}

async fn provision(path: &str, body: Value, common: Common) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let base = common.api.trim_end_matches('/');
    let started = call(http.post(format!("{base}{path}")).json(&body)).await?;
    let job_id = started["jobId"]
        .as_str()
        .context("the server's answer has no jobId")?
        .to_owned();
    if !common.wait {
        println!("{started}");
        return Ok(Outcome::Success);
    }

    let bar = ProgressBar::new(STEPS.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(common.timeout);
    let follow = Follow {
        base,
        job_id: &job_id,
        bar: &bar,
        deadline,
        timeout: common.timeout,
    };
    match follow.pushed().await? {
        Some(outcome) => Ok(outcome),
        // A server without the event stream: ask every half second.
        None => follow.polled(&http).await,
    }
}

/// Following one job until it needs the wallet or ends.
struct Follow<'a> {
    base: &'a str,
    job_id: &'a str,
    bar: &'a ProgressBar,
    deadline: tokio::time::Instant,
    timeout: u64,
}

impl Follow<'_> {
    /// Shows `job`; the outcome once it needs the wallet or ended.
    fn show(&self, job: &Value) -> Option<Outcome> {
        let status = job["status"].as_str().unwrap_or_default();
        if let Some(index) = STEPS.iter().position(|step| *step == status) {
            self.bar.set_position(index as u64 + 1);
        }
        self.bar.set_message(format!(
            "{status}: {}",
            job["step"].as_str().unwrap_or_default()
        ));
        match status {
            "awaiting_near_signature" | "complete" => {
                self.bar.finish();
                println!("{job}");
                Some(Outcome::Success)
            }
            "failed" => {
                self.bar.abandon();
                println!("{job}");
                eprintln!(
                    "delibera: job {} failed: {}",
                    self.job_id,
                    job["error"].as_str().unwrap_or("no reason given")
                );
                Some(Outcome::Exit(1))
            }
            _ => None,
        }
    }

    fn too_late(&self, status: &str) -> anyhow::Error {
        self.bar.abandon();
        anyhow::anyhow!(
            "job {} is still {status} after {} s",
            self.job_id,
            self.timeout
        )
    }

    /// Follows the server's event stream, reconnecting after the last event
    /// seen when a connection drops; `None` when the server has no stream.
    async fn pushed(&self) -> anyhow::Result<Option<Outcome>> {
        // No total timeout: the stream lives as long as the job moves.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let url = format!("{}/api/provision/status/{}/events", self.base, self.job_id);
        let mut last_event_id: Option<String> = None;
        let mut status = String::from("unknown");
        loop {
            let mut request = http.get(&url).header("accept", "text/event-stream");
            if let Some(id) = &last_event_id {
                request = request.header("last-event-id", id);
            }
            let response = tokio::time::timeout_at(self.deadline, request.send())
                .await
                .map_err(|_| self.too_late(&status))?
                .context("the protocol-api server did not answer")?;
            let is_stream = response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("text/event-stream"));
            if !response.status().is_success() || !is_stream {
                if last_event_id.is_none() {
                    return Ok(None);
                }
                bail!(
                    "the server stopped answering job {}'s event stream ({})",
                    self.job_id,
                    response.status()
                );
            }
            let mut events = response.bytes_stream().eventsource();
            while let Some(event) = tokio::time::timeout_at(self.deadline, events.next())
                .await
                .map_err(|_| self.too_late(&status))?
            {
                let Ok(event) = event else {
                    // The connection broke mid-stream: resume after the last event.
                    break;
                };
                if event.event != "status" {
                    if event.event == "error" {
                        let error: Value = serde_json::from_str(&event.data).unwrap_or_default();
                        bail!(
                            "the server cannot show job {}: {}",
                            self.job_id,
                            error["error"].as_str().unwrap_or("no error message")
                        );
                    }
                    continue;
                }
                if !event.id.is_empty() {
                    last_event_id = Some(event.id.clone());
                }
                let job: Value =
                    serde_json::from_str(&event.data).context("a status event that is not JSON")?;
                status = job["status"].as_str().unwrap_or_default().to_owned();
                if let Some(outcome) = self.show(&job) {
                    return Ok(Some(outcome));
                }
            }
            if tokio::time::Instant::now() >= self.deadline {
                return Err(self.too_late(&status));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks for the status every half second.
    async fn polled(&self, http: &reqwest::Client) -> anyhow::Result<Outcome> {
        let status_url = format!("{}/api/provision/status/{}", self.base, self.job_id);
        loop {
            let job = call(http.get(&status_url)).await?;
            if let Some(outcome) = self.show(&job) {
                return Ok(outcome);
            }
            if tokio::time::Instant::now() >= self.deadline {
                return Err(self.too_late(job["status"].as_str().unwrap_or_default()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Sends a request; a non-2xx answer becomes an error carrying the server's `error` text.
async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .context("the protocol-api server did not answer")?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("the server answered {status} without JSON"))?;
    if !status.is_success() {
        bail!(
            "the server answered {status}: {}",
            body["error"].as_str().unwrap_or("no error message")
        );
    }
    Ok(body)
}
