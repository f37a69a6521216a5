//! `delibera agent worker|coordinator`: the agent runtime a CVM (or any host) runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use delibera_coordination::{Agent, AgentConfig, AgentRole, StaticWorkers, WorkerDirectory};
use delibera_identity::Did;
use delibera_near::{
    AccountId, NearRpc, RegistryContract, TESTNET_REGISTRY_CONTRACT_ID, TESTNET_RPC_URL,
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{Outcome, print_json};

/// Runs an agent configured by the deployer's env: `STORACHA_AGENT_PRIVATE_KEY`,
/// `ENSUE_API_KEY`, `ENSUE_URL`, `PORT`, `COORDINATOR_DID`, `AGENT_DISPLAY_NAME`,
/// `AGENT_PUBLIC_URL`, `POLL_INTERVAL_MS`, `TASK_HANDLER` (`rules`|`llm`, with
/// `LLM_MODEL`, `LLM_BASE_URL`, `LLM_API_KEY`), `ROUND_DEADLINE_SECS`.
#[derive(Subcommand)]
pub(crate) enum AgentCommand {
    /// Poll Ensue for tasks and vote on them; serves `GET /` health.
    Worker,
    /// Run proposal rounds over the workers registered for this coordinator;
    /// serves `GET /`, `POST /api/coordinate`, `GET /api/coordinate/status`
    /// and `GET /api/proposals/{id}`.
    Coordinator(CoordinatorArgs),
}

#[derive(Args)]
pub(crate) struct CoordinatorArgs {
    /// Use these workers (comma-separated DIDs) instead of the NEAR registry.
    #[arg(long, env = "DELIBERA_WORKERS", value_delimiter = ',')]
    workers: Vec<String>,
    /// NEAR RPC URL of the registry.
    #[arg(long, env = "NEAR_RPC_URL", default_value = TESTNET_RPC_URL)]
    rpc_url: String,
    /// The registry contract whose `get_workers_for_coordinator` lists the workers.
    #[arg(long, env = "REGISTRY_CONTRACT_ID", default_value = TESTNET_REGISTRY_CONTRACT_ID)]
    registry: String,
}

pub(crate) fn run(command: AgentCommand) -> anyhow::Result<Outcome> {
    crate::block_on(serve(command))
}

async fn serve(command: AgentCommand) -> anyhow::Result<Outcome> {
    let role = match command {
        AgentCommand::Worker => AgentRole::Worker,
        AgentCommand::Coordinator(_) => AgentRole::Coordinator,
    };
    let config = AgentConfig::from_env(role)?;
    let port = config.port;
    let mut agent = Agent::new(config)?;
    if let AgentCommand::Coordinator(args) = command {
        agent = agent.with_directory(directory(args)?);
    }
    // All interfaces: inside a container the gateway connects from outside.
    let shutdown = delibera_coordination::shutdown_signal();
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    let address = listener.local_addr()?;
    print_json(&json!({"did": agent.did(), "role": role, "port": address.port()}));
    agent.serve(listener, shutdown).await?;
    Ok(Outcome::Success)
}

fn directory(args: CoordinatorArgs) -> anyhow::Result<Arc<dyn WorkerDirectory>> {
    if !args.workers.is_empty() {
        let workers = args
            .workers
            .iter()
            .map(|did| {
                did.trim()
                    .parse::<Did>()
                    .with_context(|| format!("invalid worker DID {did:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Arc::new(StaticWorkers(workers)));
    }
    let rpc = NearRpc::new([args.rpc_url.as_str()]).context("invalid --rpc-url")?;
    let contract: AccountId = args.registry.parse().context("invalid --registry")?;
    Ok(Arc::new(RegistryContract::new(rpc, contract)))
}
