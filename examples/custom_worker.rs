//! A worker with its own `TaskHandler`: rejects any proposal whose `amount`
//! parameter exceeds a budget. Configured like a deployed agent:
//! `STORACHA_AGENT_PRIVATE_KEY`, `ENSUE_API_KEY` (and optionally `ENSUE_URL`).
//!
//! `cargo run --example custom_worker`

use std::sync::Arc;

use delibera_coordination::{Ballot, Error, Result, TaskDefinition, TaskHandler, Worker};
use delibera_ensue::EnsueClient;
use delibera_identity::Keypair;

/// Votes by one rule: the requested amount must fit the budget.
struct BudgetGuard {
    budget: f64,
}

#[delibera_coordination::async_trait]
impl TaskHandler for BudgetGuard {
    async fn handle(&self, task: &TaskDefinition) -> Result<Ballot> {
        let amount = task.parameters["amount"]
            .as_f64()
            .ok_or_else(|| Error::handler("the proposal has no numeric `amount`"))?;
        Ok(if amount <= self.budget {
            Ballot::approve(format!("{amount} fits the budget of {}", self.budget))
        } else {
            Ballot::reject(format!("{amount} exceeds the budget of {}", self.budget))
        })
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let key = std::env::var("STORACHA_AGENT_PRIVATE_KEY")?;
    let did = Keypair::from_ucanto_str(key.trim())?.did();
    let memory = Arc::new(EnsueClient::from_env()?);
    println!("worker {did} polling; Ctrl-C to stop");

    let worker = Worker::new(did, memory, Arc::new(BudgetGuard { budget: 10_000.0 }));
    worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
