//! A request budget per client: a fixed one-minute window per key, the
//! limiter every server of this workspace puts in front of its costly routes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window a [`PerMinuteLimiter`] counts in.
pub const LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Keys remembered before finished windows are forgotten, so a flood of
/// client addresses cannot grow the map without bound.
const MAX_TRACKED_KEYS: usize = 10_000;

/// Counts requests per key (a client's IP address, or `None` for callers
/// that share one budget) in fixed one-minute windows.
#[derive(Debug)]
pub struct PerMinuteLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl PerMinuteLimiter {
    /// Allows `per_minute` requests per key per minute; 0 allows any number.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request under `key`; `Err(retry_after)` when the key's
    /// budget for this window is spent. The wait is whole seconds rounded
    /// up (at least one), so a client that waits as told gets in.
    pub fn check(&self, key: Option<IpAddr>) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > MAX_TRACKED_KEYS {
            windows.retain(|_, (start, _)| now.duration_since(*start) < LIMIT_WINDOW);
        }
        let (start, count) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= LIMIT_WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= self.per_minute {
            let left = LIMIT_WINDOW.saturating_sub(now.duration_since(*start));
            let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(Duration::from_secs(seconds.max(1)));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_budget_for_a_minute() {
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let limiter = PerMinuteLimiter::new(2);
        let start = Instant::now();
        assert!(limiter.check_at(a, start).is_ok());
        assert!(limiter.check_at(a, start).is_ok());
        assert_eq!(limiter.check_at(a, start), Err(LIMIT_WINDOW));
        assert!(limiter.check_at(b, start).is_ok());
        assert!(limiter.check_at(None, start).is_ok());

        // Part-way through the window the wait rounds up; after it, the
        // budget is whole again.
        let later = start + Duration::from_millis(59_500);
        assert_eq!(limiter.check_at(a, later), Err(Duration::from_secs(1)));
        let next = start + LIMIT_WINDOW;
        assert!(limiter.check_at(a, next).is_ok());
        assert!(limiter.check_at(a, next).is_ok());
        assert!(limiter.check_at(a, next).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = PerMinuteLimiter::new(0);
        assert!((0..1000).all(|_| limiter.check(None).is_ok()));
    }
}
