//! A coordinator running one round over the workers named on the command line,
//! against the Ensue of `ENSUE_API_KEY` (and optionally `ENSUE_URL`).
//!
//! `cargo run --example coordinator_round -- <proposal-id> <title> <worker-did>...`

use std::sync::Arc;
use std::time::Duration;

use delibera::coordination::{Coordinator, Proposal};
use delibera::deploy::{DEFAULT_ENSUE_URL, vars};
use delibera::ensue::{EnsueClient, EnsueConfig};
use delibera::identity::Did;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: coordinator_round <proposal-id> <title> <worker-did>...";
    let proposal_id = args.next().ok_or(usage)?;
    let title = args.next().ok_or(usage)?;
    let workers = args
        .map(|did| did.parse())
        .collect::<Result<Vec<Did>, _>>()?;
    if workers.is_empty() {
        return Err(usage.into());
    }

    let api_key = std::env::var(vars::ENSUE_API_KEY)?;
    let url = std::env::var(vars::ENSUE_URL).unwrap_or_else(|_| DEFAULT_ENSUE_URL.to_owned());
    let memory = EnsueClient::new(EnsueConfig::new(api_key).with_base_url(&url)?)?;
    let coordinator = Coordinator::new(Arc::new(memory));
    let proposal = Proposal::new(proposal_id, title);
    // Workers poll every 3-5 s, so give them a few polls' worth of time.
    let tally = coordinator
        .run_round(&proposal, &workers, Duration::from_secs(60))
        .await?;
    println!("{}", serde_json::to_string_pretty(&tally)?);
    Ok(())
}
