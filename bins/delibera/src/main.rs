//! `delibera`: the Delibera command-line tool.
//!
//! Every command prints one JSON document (or raw text where a format demands
//! it) on stdout; errors go to stderr as one line with a non-zero exit.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;
mod delegation;
mod devnet;
mod ensue;
mod ensue_serve;
mod key;
mod near;
mod phala;
mod provision;

#[derive(Parser)]
#[command(name = "delibera", version, about = "Delibera protocol tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ed25519 identities: create keys, show DIDs, sign and verify.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Run an agent (worker or coordinator) configured by its env, as in a CVM.
    Agent(agent::AgentArgs),
    /// UCAN delegations for Storacha: create and inspect (verify) proofs.
    #[command(subcommand)]
    Delegation(delegation::DelegationCommand),
    /// Ensue memory: seal/unseal values, get/put/list/delete keys.
    #[command(subcommand)]
    Ensue(ensue::EnsueCommand),
    /// Phala Cloud: encrypt env vars for a CVM, print agent compose files.
    #[command(subcommand)]
    Phala(phala::PhalaCommand),
    /// NEAR: sign a function call offline, call a contract view method.
    #[command(subcommand)]
    Near(near::NearCommand),
    /// Provision a coordinator or worker through a running protocol-api.
    #[command(subcommand)]
    Provision(provision::ProvisionCommand),
    /// Stand-ins for Phala Cloud, NEAR and hosted Ensue: rehearse production here.
    #[command(subcommand)]
    Devnet(devnet::DevnetCommand),
}

/// What a command asks `main` to do once it finished without an error.
enum Outcome {
    /// Exit 0.
    Success,
    /// Exit with this code (a negative answer that is not an error, e.g. a bad signature).
    Exit(u8),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Key(command) => key::run(command),
        Command::Agent(command) => agent::run(command),
        Command::Delegation(command) => delegation::run(command),
        Command::Ensue(command) => ensue::run(command),
        Command::Phala(command) => phala::run(command),
        Command::Near(command) => near::run(command),
        Command::Provision(command) => provision::run(command),
        Command::Devnet(command) => devnet::run(command),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(error) => {
            // One line: the chain of causes joined, never a backtrace.
            eprintln!("delibera: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns `arg`, or all of stdin (trimmed) when `arg` is `-`.
fn arg_or_stdin(arg: &str) -> anyhow::Result<String> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text.trim().to_owned())
    } else {
        Ok(arg.to_owned())
    }
}

/// Runs a future to completion on a fresh runtime, for the commands that talk
/// to a service. Commands that do not need one never start a runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
        .block_on(future)
}

/// Prints one compact JSON document followed by a newline.
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
