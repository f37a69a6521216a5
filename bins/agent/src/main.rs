//! `delibera-agent [worker|coordinator]`: the agent a CVM runs, configured by
//! its environment (see `delibera_deploy::vars`). Without a role argument the
//! role comes from `AGENT_ROLE`, so one image serves both roles. Prints one
//! JSON line (`did`, `role`, `port`) once listening; errors are one line on
//! stderr with exit code 2.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::process::ExitCode;

use delibera_agent::AgentRole;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: delibera-agent [worker|coordinator]  (configured by its environment; without a role, AGENT_ROLE)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let role = match (args.next(), args.next()) {
        (None, None) => None,
        (Some(flag), None) if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        (Some(role), None) => match role.parse::<AgentRole>() {
            Ok(role) => Some(role),
            Err(error) => return fail(&error),
        },
        _ => return fail(&USAGE),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error),
    };
    let served = runtime.block_on(delibera_agent::run_from_process_env(role, |agent, address| {
        println!(
            "{}",
            serde_json::json!({"did": agent.did(), "role": agent.env().role, "port": address.port()})
        );
    }));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("delibera-agent: {error}");
    ExitCode::from(2)
}
