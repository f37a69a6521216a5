//! The shutdown signal of an agent (or server) binary.

use std::future::Future;

/// Resolves on Ctrl-C (SIGINT), or on SIGTERM on Unix (what `docker stop` and a
/// CVM's shutdown send): the `shutdown` future for [`Agent::serve`] in an agent
/// binary.
///
/// The handlers are installed when this is *called*, not when the future is
/// first polled, so call it before announcing readiness: a signal that arrives
/// in between is then a clean shutdown, not the default kill. Must be called
/// inside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        // A handler that cannot be installed just never fires; the other still does.
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                () = received(interrupt) => {}
                () = received(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
