//! `delibera-agent [worker|coordinator]`: the agent a CVM runs, configured by
//! its env (see `delibera_deploy::vars`). Without a role argument the role
//! comes from `AGENT_ROLE`, so one image serves both roles.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use delibera_agent::{Agent, AgentEnv, AgentRole, shutdown_signal};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: delibera-agent [worker|coordinator]   (configured by its environment; AGENT_ROLE when no role is given)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let role = match (args.next().as_deref(), args.next()) {
        (None, None) => None,
        (Some("-h" | "--help"), None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        (Some(role), None) => match role.parse::<AgentRole>() {
            Ok(role) => Some(role),
            Err(error) => {
                eprintln!("{error}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("delibera-agent: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(role: Option<AgentRole>) -> anyhow::Result<()> {
    let env = delibera_agent_env(role)?;
    let port = env.port;
    // Installed before anything can take long, so an early signal is a clean stop.
    let shutdown = shutdown_signal();
    let agent = Agent::new(env)?;
    // All interfaces: inside a container the gateway connects from outside.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    println!(
        "{{\"did\":\"{}\",\"role\":\"{}\",\"port\":{}}}",
        agent.did(),
        agent.env().role,
        listener.local_addr()?.port()
    );
    agent.serve(listener, shutdown).await?;
    Ok(())
}

/// The process env, with the role argument standing in for an unset
/// `AGENT_ROLE` (and refusing one that says otherwise).
fn delibera_agent_env(role: Option<AgentRole>) -> anyhow::Result<AgentEnv> {
    let from_env = std::env::var(delibera_agent::vars::AGENT_ROLE)
        .ok()
        .filter(|value| !value.trim().is_empty());
    if let (Some(argument), Some(configured)) = (role, &from_env)
        && configured.trim() != argument.as_str()
    {
        anyhow::bail!(
            "the argument says {argument} but {} says {configured}",
            delibera_agent::vars::AGENT_ROLE
        );
    }
    Ok(AgentEnv::from_lookup(|name| {
        if name == delibera_agent::vars::AGENT_ROLE && from_env.is_none() {
            return role.map(|role| role.as_str().to_owned());
        }
        std::env::var(name).ok()
    })?)
}
