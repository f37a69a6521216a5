//! A whole deliberation in one process, offline: a local Ensue server, three
//! workers with different rule books and a coordinator running one round.
//!
//! `cargo run --example local_deliberation`

use std::sync::Arc;
use std::time::Duration;

use delibera::coordination::{
    Coordinator, CoordinatorConfig, Proposal, RuleSet, RuleVoter, Threshold, Vote, Worker,
    WorkerConfig,
};
use delibera::ensue::{EnsueClient, EnsueConfig, Memory};
use delibera::ensue_local::{Config, LocalEnsue};
use delibera::identity::Keypair;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = LocalEnsue::start(Config::default()).await?;
    let config = EnsueConfig::new(server.api_key().expose()).with_base_url(server.url())?;
    let memory: Arc<dyn Memory> = Arc::new(EnsueClient::new(config)?);
    println!("local Ensue at {}", server.url());

    // Three rule books: a budget hawk, a keyword screener and a default-no voter.
    let rule_books = [
        RuleSet {
            thresholds: vec![Threshold {
                field: "amount".into(),
                min: None,
                max: Some(10_000.0),
            }],
            ..RuleSet::default()
        },
        RuleSet {
            deny_keywords: vec!["rug".into(), "unaudited".into()],
            approve_keywords: vec!["open source".into()],
            ..RuleSet::default()
        },
        RuleSet {
            require_keywords: vec!["milestones".into()],
            default: Some(Vote::Rejected),
            ..RuleSet::default()
        },
    ];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let mut dids = Vec::new();
    for rules in rule_books {
        let did = Keypair::generate().did();
        let worker = Worker::new(
            did.clone(),
            memory.clone(),
            Arc::new(RuleVoter::with_fallback(rules)),
        )
        .with_config(WorkerConfig::polling(
            Duration::from_millis(200),
            Duration::from_millis(100),
        ));
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })));
        dids.push(did);
    }

    let coordinator = Coordinator::with_config(
        memory.clone(),
        CoordinatorConfig {
            poll_interval: Duration::from_millis(100),
            ..CoordinatorConfig::default()
        },
    );
    let proposal = Proposal::new("prop-1", "Fund an open source indexer")
        .with_description("Six months of hosting, paid in two milestones.")
        .with_parameters(serde_json::json!({"amount": 7500}));
    let tally = coordinator
        .run_round(&proposal, &dids, Duration::from_secs(30))
        .await?;

    for outcome in &tally.workers {
        let said = outcome
            .reasoning
            .as_deref()
            .or(outcome.error.as_deref())
            .unwrap_or("silent");
        println!("{}: {said}", outcome.worker_did);
    }
    println!(
        "decision: {} ({} approved, {} rejected)",
        tally.decision, tally.approved, tally.rejected
    );
    println!("{}", serde_json::to_string_pretty(&tally)?);

    let _ = stop.send(true);
    for worker in workers {
        worker.await?;
    }
    server.stop().await?;
    Ok(())
}
