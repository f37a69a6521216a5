//! Running an agent as a process: what the `delibera-agent` binary (and
//! `delibera agent`) do.

use std::net::{Ipv4Addr, SocketAddr};

use delibera_deploy::{AgentEnv, AgentRole, vars};

use crate::{Agent, Error, Result, shutdown_signal};

/// The process environment as an agent reads it; `role`, when given (a
/// command-line argument), stands in for an unset `AGENT_ROLE` and must agree
/// with a set one.
pub fn env_from_process(role: Option<AgentRole>) -> Result<AgentEnv> {
    let configured = std::env::var(vars::AGENT_ROLE)
        .ok()
        .filter(|value| !value.trim().is_empty());
    if let (Some(argument), Some(configured)) = (role, &configured)
        && configured.trim() != argument.as_str()
    {
        return Err(Error::config(format!(
            "the role argument says {argument} but {} says {configured}",
            vars::AGENT_ROLE
        )));
    }
    Ok(AgentEnv::from_lookup(|name| {
        if name == vars::AGENT_ROLE && configured.is_none() {
            return role.map(|role| role.as_str().to_owned());
        }
        std::env::var(name).ok()
    })?)
}

/// Runs the agent the process environment describes (see
/// [`env_from_process`]) on all interfaces at its `PORT` until SIGINT or
/// SIGTERM; `on_listening` is called once the port is bound.
pub async fn run_from_process_env(
    role: Option<AgentRole>,
    on_listening: impl FnOnce(&Agent, SocketAddr),
) -> Result<()> {
    let env = env_from_process(role)?;
    // Installed before anything can take long, so an early signal is a clean stop.
    let shutdown = shutdown_signal();
    let port = env.port;
    let agent = Agent::new(env)?;
    // All interfaces: inside a container the gateway connects from outside.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .await
        .map_err(Error::Serve)?;
    on_listening(&agent, listener.local_addr().map_err(Error::Serve)?);
    agent.serve(listener, shutdown).await
}
