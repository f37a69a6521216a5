//! Delays shared by the worker loop and the coordinator's retries.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `base × 2^(attempt-1)`, capped at `max`, plus up to a
/// quarter of random jitter so many agents do not retry in lockstep.
pub(crate) fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    let delay = base.saturating_mul(factor).min(max);
    delay + jitter(delay / 4)
}

/// A random duration in `0..=spread`.
pub(crate) fn jitter(spread: Duration) -> Duration {
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    if spread_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::thread_rng().gen_range(0..=spread_ms))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let first = backoff_delay(base, max, 1);
        assert!(first >= base && first <= base + base / 4);
        let third = backoff_delay(base, max, 3);
        assert!(third >= base * 4 && third <= base * 5);
        let huge = backoff_delay(base, max, 60);
        assert!(huge >= max && huge <= max + max / 4);
    }
}
