//! Where a server process drives its jobs: a runtime of its own whose
//! threads run at a lower scheduling priority than the ones answering
//! requests, so a burst of provisioning never makes the API wait behind job
//! steps. A step's CPU (keys, signatures, rows) goes to what the requests
//! leave; the jobs lose nothing when the API is idle.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The drivers' nice value: requests (0) get about ten times their share of
/// a busy CPU.
const DRIVER_NICENESS: i32 = 10;

/// Runs `future` on the drivers' runtime (made on first use), or on the
/// caller's if that runtime cannot be made.
pub(super) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("job-driver")
            .on_thread_start(lower_this_threads_priority)
            .enable_all()
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, "no runtime of their own for the job drivers; they share the requests'")
            })
            .ok()
    });
    match runtime {
        Some(runtime) => runtime.spawn(future),
        None => tokio::spawn(future),
    }
}

fn lower_this_threads_priority() {
    // Per thread on Linux: `setpriority` with a thread id.
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), DRIVER_NICENESS) {
        tracing::debug!(%error, "a job driver thread keeps the normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drivers_run_on_threads_of_lower_priority_than_the_callers() {
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let (thread, nice) = spawn(async {
            let thread = std::thread::current().name().map(str::to_owned);
            let nice =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            (thread, nice)
        })
        .await
        .unwrap();
        assert_eq!(thread.as_deref(), Some("job-driver"));
        assert_eq!(nice, DRIVER_NICENESS.max(own), "caller at {own}");
    }
}
