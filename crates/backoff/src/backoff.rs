//! Exponential backoff with a cap, a bounded number of attempts and jitter.

use std::time::Duration;

use rand::Rng;

/// How much randomness a [`Backoff`] adds to each step, so that many clients
/// failing together do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly the exponential step.
    None,
    /// "Equal jitter": a uniform delay between half the step and the whole
    /// step, so it never exceeds the cap.
    #[default]
    Equal,
    /// The step plus a uniform extra of up to `percent` % of it; the delay
    /// may exceed the cap by that much (`percent: 25` adds up to a quarter).
    Additive {
        /// The largest extra, in percent of the step.
        percent: u32,
    },
}

impl Jitter {
    /// The delay for an exponential `step`.
    pub fn apply(self, step: Duration) -> Duration {
        match self {
            Jitter::None => step,
            Jitter::Equal => {
                let half = step / 2;
                half + random_up_to(step - half)
            }
            Jitter::Additive { percent } => step + random_up_to(step.saturating_mul(percent) / 100),
        }
    }
}

/// A uniform random duration in `0..=max` (nanosecond resolution).
pub fn random_up_to(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
}

/// When a failed operation is tried again: the wait before retry `n` is
/// `initial × 2^(n-1)`, capped, with [`Jitter`], for at most `max_attempts`
/// attempts in all (the first one included).
///
/// Retries are counted from 1: retry 1 follows the first failed attempt.
/// A server's `Retry-After` replaces the computed delay, unless it asks for
/// more than the cap: then the caller gives up instead of waiting that long.
///
/// ```
/// use std::time::Duration;
/// use delibera_backoff::{Backoff, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
///     .with_max_attempts(4)
///     .with_jitter(Jitter::None);
/// assert_eq!(backoff.retry_delay(1, None), Some(Duration::from_millis(100)));
/// assert_eq!(backoff.retry_delay(3, None), Some(Duration::from_millis(400)));
/// assert_eq!(backoff.retry_delay(4, None), None); // four attempts made
/// let asked = Some(Duration::from_millis(300));
/// assert_eq!(backoff.retry_delay(1, asked), asked);
/// assert_eq!(backoff.retry_delay(1, Some(Duration::from_secs(60))), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    max_attempts: u32,
    jitter: Jitter,
}

impl Default for Backoff {
    /// 200 ms doubling up to 5 s, 3 attempts, equal jitter.
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Waits `initial` before the first retry, doubling up to `cap`; 3
    /// attempts in all and [`Jitter::Equal`] until changed.
    pub const fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial,
            cap,
            max_attempts: 3,
            jitter: Jitter::Equal,
        }
    }

    /// Never retry: one attempt.
    pub const fn none() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5)).with_max_attempts(1)
    }

    /// At most `max_attempts` attempts in all, the first one included (0
    /// counts as 1; `u32::MAX` for "keep trying").
    pub const fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = if max_attempts == 0 { 1 } else { max_attempts };
        self
    }

    /// The jitter added to each step.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The wait before the first retry, without jitter.
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest step, and the longest `Retry-After` waited for.
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// Attempts in all, the first one included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The jitter added to each step.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The exponential step before retry `retry` (from 1), capped, without jitter.
    pub fn step(&self, retry: u32) -> Duration {
        2u32.checked_pow(retry.saturating_sub(1))
            .and_then(|factor| self.initial.checked_mul(factor))
            .map_or(self.cap, |step| step.min(self.cap))
    }

    /// The wait before retry `retry` (from 1), with jitter, whatever
    /// [`max_attempts`](Self::max_attempts) says: for loops that never give up.
    pub fn delay(&self, retry: u32) -> Duration {
        self.jitter.apply(self.step(retry))
    }

    /// After `retry` failed attempts, the wait before the next one, or
    /// `None` to give up: when all [`max_attempts`](Self::max_attempts) are
    /// used, or when the server's `retry_after` is longer than the
    /// [`cap`](Self::cap). A `retry_after` within the cap is waited exactly.
    pub fn retry_delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry >= self.max_attempts {
            return None;
        }
        match retry_after {
            Some(asked) => (asked <= self.cap).then_some(asked),
            None => Some(self.delay(retry)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn exact(initial_ms: u32, cap_ms: u32) -> Backoff {
        Backoff::new(MS * initial_ms, MS * cap_ms).with_jitter(Jitter::None)
    }

    #[test]
    fn steps_double_from_the_initial_delay() {
        let backoff = exact(100, 10_000);
        let steps: Vec<Duration> = (1..=5).map(|retry| backoff.delay(retry)).collect();
        assert_eq!(steps, [MS * 100, MS * 200, MS * 400, MS * 800, MS * 1_600]);
        // Retry 0 is read as the first retry.
        assert_eq!(backoff.delay(0), MS * 100);
    }

    #[test]
    fn steps_stop_at_the_cap_and_never_overflow() {
        let backoff = exact(100, 1_000);
        assert_eq!(backoff.delay(4), MS * 800);
        assert_eq!(backoff.delay(5), MS * 1_000);
        assert_eq!(backoff.delay(60), MS * 1_000);
        assert_eq!(backoff.delay(u32::MAX), MS * 1_000);
        let huge = Backoff::new(Duration::MAX, Duration::MAX).with_jitter(Jitter::None);
        assert_eq!(huge.delay(3), Duration::MAX);
        assert_eq!(exact(2_000, 1_000).delay(1), MS * 1_000);
    }

    #[test]
    fn equal_jitter_stays_between_half_and_the_whole_step() {
        let backoff = Backoff::new(MS * 100, MS * 1_000);
        assert_eq!(backoff.jitter(), Jitter::Equal);
        for retry in 1..=10 {
            let step = backoff.step(retry);
            for _ in 0..50 {
                let delay = backoff.delay(retry);
                assert!(delay >= step / 2 && delay <= step, "{retry}: {delay:?}");
            }
        }
    }

    #[test]
    fn additive_jitter_adds_up_to_its_percentage() {
        let backoff =
            Backoff::new(MS * 100, MS * 1_000).with_jitter(Jitter::Additive { percent: 25 });
        for retry in [1, 3, 60] {
            let step = backoff.step(retry);
            for _ in 0..50 {
                let delay = backoff.delay(retry);
                assert!(
                    delay >= step && delay <= step + step / 4,
                    "{retry}: {delay:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_varies() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff.delay(1)).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn attempts_are_counted_with_the_first_included() {
        let backoff = exact(1, 10).with_max_attempts(3);
        assert!(backoff.retry_delay(1, None).is_some());
        assert!(backoff.retry_delay(2, None).is_some());
        assert_eq!(backoff.retry_delay(3, None), None);
        assert_eq!(Backoff::default().max_attempts(), 3);
        assert_eq!(exact(1, 10).with_max_attempts(0).max_attempts(), 1);
        let forever = exact(1, 10).with_max_attempts(u32::MAX);
        assert_eq!(forever.retry_delay(1_000_000, None), Some(MS * 10));
    }

    #[test]
    fn retry_after_replaces_the_step_up_to_the_cap() {
        let backoff = exact(100, 1_000).with_max_attempts(5);
        assert_eq!(backoff.retry_delay(1, Some(MS * 300)), Some(MS * 300));
        assert_eq!(backoff.retry_delay(1, Some(MS * 1_000)), Some(MS * 1_000));
        assert_eq!(
            backoff.retry_delay(3, Some(Duration::ZERO)),
            Some(Duration::ZERO)
        );
        assert_eq!(backoff.retry_delay(1, Some(MS * 1_001)), None);
        // Out of attempts, a Retry-After does not buy another one.
        assert_eq!(backoff.retry_delay(5, Some(MS)), None);
    }

    #[test]
    fn none_never_retries() {
        let none = Backoff::none();
        assert_eq!(none.max_attempts(), 1);
        assert_eq!(none.retry_delay(1, None), None);
        assert_eq!(none.retry_delay(1, Some(Duration::ZERO)), None);
    }

    #[test]
    fn random_up_to_stays_in_range() {
        assert_eq!(random_up_to(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(random_up_to(MS * 3) <= MS * 3);
        }
        assert!(random_up_to(Duration::MAX) <= Duration::MAX);
    }
}
