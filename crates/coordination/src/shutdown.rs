//! A shutdown signal that several `select!`s can wait on.

use std::future::Future;
use std::pin::Pin;

/// A shutdown future that can be awaited from several places, repeatedly.
pub(crate) struct ShutdownSignal<'a> {
    future: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    fired: bool,
}

impl<'a> ShutdownSignal<'a> {
    pub(crate) fn new(future: Pin<&'a mut (dyn Future<Output = ()> + Send)>) -> Self {
        Self {
            future,
            fired: false,
        }
    }

    /// Whether the signal has been seen.
    pub(crate) fn fired(&self) -> bool {
        self.fired
    }

    /// Resolves once shutdown is signalled (at once if it already was).
    ///
    /// Cancel-safe: the underlying future lives outside, so dropping this
    /// one in a `select!` loses nothing.
    pub(crate) async fn wait(&mut self) {
        if !self.fired {
            self.future.as_mut().await;
            self.fired = true;
        }
    }
}
