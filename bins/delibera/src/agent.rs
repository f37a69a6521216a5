//! `delibera agent [worker|coordinator]`: the agent runtime a CVM runs, the
//! same as the `delibera-agent` binary.

use clap::Args;
use delibera_agent::AgentRole;
use serde_json::json;

use crate::{Outcome, print_json};

/// Runs an agent configured by its environment (`AGENT_ROLE`,
/// `STORACHA_AGENT_PRIVATE_KEY`, `ENSUE_API_KEY`, `ENSUE_URL`, `PORT`,
/// `AGENT_PUBLIC_URL`, `NEAR_RPC_URL` and `REGISTRY_CONTRACT_ID` or
/// `DELIBERA_WORKERS` for a coordinator, …: see `delibera_deploy::vars`).
/// Prints one JSON line (`did`, `role`, `port`) once listening.
#[derive(Args)]
pub(crate) struct AgentArgs {
    /// `worker` or `coordinator`; without it, `AGENT_ROLE` decides.
    role: Option<AgentRole>,
}

pub(crate) fn run(args: AgentArgs) -> anyhow::Result<Outcome> {
    crate::block_on(delibera_agent::run_from_process_env(
        args.role,
        |agent, address| {
            print_json(
                &json!({"did": agent.did(), "role": agent.env().role, "port": address.port()}),
            );
        },
    ))?;
    Ok(Outcome::Success)
}
