//! A worker with its own `TaskHandler`: rejects any proposal whose `amount`
//! parameter exceeds a budget. Configured like a deployed agent, by its env
//! (`AGENT_ROLE=worker`, `STORACHA_AGENT_PRIVATE_KEY`, `ENSUE_API_KEY`, and
//! optionally `ENSUE_URL`, `AGENT_PUBLIC_URL`…), and served by the agent
//! runtime with the handler swapped in.
//!
//! `cargo run --example custom_worker`

use std::sync::Arc;

use delibera::agent::{Agent, AgentEnv, shutdown_signal};
use delibera::coordination::{Ballot, Error, Result, TaskDefinition, TaskHandler};

/// Votes by one rule: the requested amount must fit the budget.
struct BudgetGuard {
    budget: f64,
}

#[delibera::coordination::async_trait]
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
    let env = AgentEnv::from_env()?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", env.port)).await?;
    let agent = Agent::new(env)?.with_handler(Arc::new(BudgetGuard { budget: 10_000.0 }));
    println!("worker {} polling; Ctrl-C to stop", agent.did());
    agent.serve(listener, shutdown_signal()).await?;
    Ok(())
}
