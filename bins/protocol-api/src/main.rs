//! `protocol-api`: reads the config, composes the ports for the mode, and serves.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use protocol_api::compose::{self, Composition};
use protocol_api::config::Config;
use tracing_subscriber::EnvFilter;

// Many small short-lived allocations per request and per job step (JSON,
// sealed records, HTTP buffers) cost a quarter of a job's CPU in glibc's
// allocator; mimalloc serves them from thread-local pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Warnings from every crate are shown by default: an agent that could
    // not be restored or a data file whose permissions were tightened is
    // reported by the library that found it.
    // Colour codes only for a terminal: in a log file they are noise, and
    // every request's span fields were formatted with them.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new("warn,protocol_api=info,tower_http=info,delibera_serve=info")
        }))
        .init();
    let config = Config::parse();
    let Composition { state, local_ensue } = compose::compose(&config).await?;

    // Jobs run in the one process that holds the store's runner lock: this
    // one at once on SQLite; on PostgreSQL the first replica, the others
    // serving meanwhile and taking over when it is gone.
    let mut runner = tokio::spawn({
        let jobs = state.jobs.clone();
        let retention = Duration::from_secs(config.job_retention_hours * 3600);
        async move {
            let reason = jobs
                .run_while_leading(retention)
                .await
                .context("resuming jobs")?;
            Err::<(), _>(anyhow::anyhow!(
                "lost the runner lock ({reason}); stopping, so the replica taking over never runs \
                 a job twice"
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

    let served = protocol_api::run(listener, state, async {
        shutdown.await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
    });
    tokio::select! {
        served = served => served?,
        stopped = &mut runner => {
            stopped.context("the job runner's task")??;
        }
    }
    if let Some(ensue) = local_ensue {
        ensue.stop().await.context("stopping the embedded Ensue")?;
    }
    tracing::info!("stopped");
    Ok(())
}
