//! `protocol-api`: reads the config, composes the ports for the mode, and serves.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use protocol_api::compose::{self, Composition};
use protocol_api::config::Config;
use tracing_subscriber::util::SubscriberInitExt;

// Many small short-lived allocations per request and per job step (JSON,
// sealed records, HTTP buffers) cost a quarter of a job's CPU in glibc's
// allocator; mimalloc serves them from thread-local pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    protocol_api::logging::subscriber(
        std::io::stdout,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
    )
    .init();
    let config = Config::parse();
    let Composition { state, local_ensue } = compose::compose(&config).await?;

    // On SQLite this process runs every job; on PostgreSQL every replica
    // carries on the jobs it accepts or claims under leases, and the one
    // holding the leader lock also runs the sweeps (expiry, teardowns,
    // announcements). A leader that loses the lock stops, so the sweeps
    // never run twice.
    let mut runner = tokio::spawn({
        let jobs = state.jobs.clone();
        let retention = Duration::from_secs(config.job_retention_hours * 3600);
        async move {
            let reason = jobs
                .run_while_leading(retention)
                .await
                .context("resuming jobs")?;
            Err::<(), _>(anyhow::anyhow!(
                "lost the leader lock ({reason}); stopping, so the replica leading next never \
                 sweeps beside this one"
            ))
        }
    });

    let shutdown = delibera_agent::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(config.bind_addr())
        .await
        .with_context(|| format!("binding {}", config.bind_addr()))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mode = state.mode_label, "Delibera Protocol API listening");
    if let Some(ensue) = &local_ensue {
        tracing::info!(url = ensue.url(), "embedded Ensue listening");
    }

    let jobs = state.jobs.clone();
    let served = protocol_api::run(listener, state, async {
        shutdown.await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
    });
    let outcome: anyhow::Result<()> = tokio::select! {
        served = served => served.map_err(Into::into),
        stopped = &mut runner => stopped.context("the job runner's task").and_then(|ran| ran),
    };
    // Whether it is shutting down or lost the leader lock, the process
    // hands its jobs over: another replica carries them on at once rather
    // than once their leases run out.
    match jobs.stop_working().await {
        Ok(0) => {}
        Ok(handed) => tracing::info!(
            handed,
            "stopped working on jobs; any replica may carry them on"
        ),
        Err(error) => {
            tracing::warn!(%error, "could not give up the job leases; they run out by themselves")
        }
    }
    outcome?;
    if let Some(ensue) = local_ensue {
        ensue.stop().await.context("stopping the embedded Ensue")?;
    }
    tracing::info!("stopped");
    Ok(())
}
