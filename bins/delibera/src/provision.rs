//! `delibera provision coordinator|worker …`: start a provisioning job on a
//! protocol-api server and, with `--wait`, follow it step by step until it
//! needs the wallet (or ends), showing progress on stderr.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
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
    let status_url = format!("{base}/api/provision/status/{job_id}");
    loop {
        let job = call(http.get(&status_url)).await?;
        let status = job["status"].as_str().unwrap_or_default().to_owned();
        if let Some(index) = STEPS.iter().position(|step| *step == status) {
            bar.set_position(index as u64 + 1);
        }
        bar.set_message(format!(
            "{status}: {}",
            job["step"].as_str().unwrap_or_default()
        ));
        match status.as_str() {
            "awaiting_near_signature" | "complete" => {
                bar.finish();
                println!("{job}");
                return Ok(Outcome::Success);
            }
            "failed" => {
                bar.abandon();
                println!("{job}");
                eprintln!(
                    "delibera: job {job_id} failed: {}",
                    job["error"].as_str().unwrap_or("no reason given")
                );
                return Ok(Outcome::Exit(1));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            bail!("job {job_id} is still {status} after {} s", common.timeout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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
