//! `delibera devnet …`: stand-ins for Phala Cloud, NEAR and hosted Ensue, to
//! rehearse a production deployment on this machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use delibera_devnet::{Devnet, DevnetConfig};
use serde_json::json;

use crate::{Outcome, print_json};

#[derive(Subcommand)]
pub(crate) enum DevnetCommand {
    /// Start the stand-ins: Phala Cloud on PORT_BASE (`/api/v1`, and the CVMs'
    /// gateway at `/gateway`), NEAR JSON-RPC on PORT_BASE+1, hosted Ensue on
    /// PORT_BASE+2. Prints one JSON line with their URLs, then serves until
    /// SIGINT or SIGTERM.
    Up(UpArgs),
    /// Accounts on the NEAR stand-in.
    #[command(subcommand)]
    Account(AccountCommand),
}

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where the stand-ins keep their state (SQLite files, keys).
    #[arg(long)]
    data_dir: PathBuf,
    /// The first of the three ports.
    #[arg(long, default_value_t = 8100)]
    port_base: u16,
    /// Write the settings of a Protocol API in production mode against this
    /// devnet to this file (`KEY=VALUE` lines).
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// How long a CVM takes to boot, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    boot_delay_ms: u64,
    /// How often NEAR makes a block, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    block_ms: u64,
    /// An OCI archive of the agent image (`scripts/build-image.sh`): CVMs run
    /// its entry point as a child process, and the settings (`--env-file`)
    /// name it by digest, so a rehearsal runs the artifact production runs.
    #[arg(long)]
    image_archive: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum AccountCommand {
    /// Create a funded account with a full-access key (the faucet); prints
    /// `{"accountId", "privateKey"}`.
    Create {
        /// The account id, e.g. `bob.devnet`.
        name: String,
        /// The NEAR stand-in's RPC URL.
        #[arg(long)]
        rpc: String,
    },
}

pub(crate) fn run(command: DevnetCommand) -> anyhow::Result<Outcome> {
    match command {
        DevnetCommand::Up(args) => crate::block_on(up(args)),
        DevnetCommand::Account(AccountCommand::Create { name, rpc }) => {
            crate::block_on(create_account(&name, &rpc))
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<Outcome> {
    let shutdown = delibera_agent::shutdown_signal();
    let mut config = DevnetConfig::new(&args.data_dir, args.port_base);
    config.boot_delay = Duration::from_millis(args.boot_delay_ms);
    config.block_time = Duration::from_millis(args.block_ms.max(1));
    config.image_archive = args.image_archive.clone();
    let devnet = Devnet::start(config)
        .await
        .context("cannot start the devnet")?;
    if let Some(path) = &args.env_file {
        devnet
            .write_env_file(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print_json(&json!({
        "phala": devnet.phala().api_url(),
        "gateway": devnet.phala().public_url_template(),
        "near": devnet.near().url(),
        "ensue": devnet.ensue().url(),
        "envFile": args.env_file,
        "userAccountId": devnet.user().account_id,
        "agentImage": devnet.agent_image(),
    }));
    shutdown.await;
    devnet.stop().await.context("stopping the devnet")?;
    Ok(Outcome::Success)
}

async fn create_account(name: &str, rpc: &str) -> anyhow::Result<Outcome> {
    let request =
        delibera_jsonrpc::Request::new(1, "devnet_create_account", json!({ "account_id": name }));
    let response = reqwest::Client::new()
        .post(rpc)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("cannot reach the NEAR stand-in at {rpc}"))?;
    let body = response.bytes().await?;
    let answer = delibera_jsonrpc::read_response(&body, Some("application/json"), &request.id)
        .context("the NEAR stand-in's answer is not JSON-RPC")?;
    match answer.into_result() {
        Ok(result) => {
            print_json(&result);
            Ok(Outcome::Success)
        }
        Err(error) => anyhow::bail!("the faucet refused: {error}"),
    }
}
