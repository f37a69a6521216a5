//! The rate limit on `POST /auth/agent-register`: every registration makes an
//! organisation that lives in the data directory for good, so their pace is
//! bounded.

use std::net::IpAddr;
use std::time::Duration;

use delibera_serve::PerMinuteLimiter;

/// The default [`RegistrationLimit::per_minute`]: far more than a local
/// Protocol API asks for (one per coordinator it provisions), far less than a
/// script filling the disk with organisations.
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u32 = 60;

/// Whose registrations a [`RegistrationLimit`] counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RegistrationScope {
    /// All callers share one budget (the default: a local server's callers
    /// are all on one machine anyway).
    #[default]
    Global,
    /// Each client IP address has a budget of its own. The address comes
    /// from axum's `ConnectInfo<SocketAddr>`, which [`run`](crate::run)
    /// provides; a router served some other way needs
    /// `into_make_service_with_connect_info::<SocketAddr>()`, or its
    /// requests share one budget, as under [`RegistrationScope::Global`].
    PerClientIp,
}

/// How many organisations `POST /auth/agent-register` creates per minute;
/// the next caller gets HTTP 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrationLimit {
    /// Registrations accepted per minute (counted in fixed one-minute
    /// windows); 0 accepts any number.
    pub per_minute: u32,
    /// Whose registrations count together.
    pub scope: RegistrationScope,
}

impl RegistrationLimit {
    /// `per_minute` registrations per minute, from all callers together.
    pub fn global(per_minute: u32) -> Self {
        Self {
            per_minute,
            scope: RegistrationScope::Global,
        }
    }

    /// `per_minute` registrations per minute from each client IP address.
    pub fn per_client_ip(per_minute: u32) -> Self {
        Self {
            per_minute,
            scope: RegistrationScope::PerClientIp,
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Self {
        Self::global(0)
    }
}

impl Default for RegistrationLimit {
    /// [`DEFAULT_REGISTRATIONS_PER_MINUTE`] from all callers together.
    fn default() -> Self {
        Self::global(DEFAULT_REGISTRATIONS_PER_MINUTE)
    }
}

/// Counts registrations per budget, as [`RegistrationLimit::scope`] says.
#[derive(Debug)]
pub(crate) struct RegistrationLimiter {
    scope: RegistrationScope,
    counts: PerMinuteLimiter,
}

impl RegistrationLimiter {
    pub(crate) fn new(limit: RegistrationLimit) -> Self {
        Self {
            scope: limit.scope,
            counts: PerMinuteLimiter::new(limit.per_minute),
        }
    }

    /// Counts one registration from `client`; `Err(retry_after)` when its
    /// budget for this window is spent.
    pub(crate) fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let budget = match self.scope {
            RegistrationScope::Global => None,
            RegistrationScope::PerClientIp => client,
        };
        self.counts.check(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_scope() {
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));

        let per_ip = RegistrationLimiter::new(RegistrationLimit::per_client_ip(2));
        assert!(per_ip.check(a).is_ok());
        assert!(per_ip.check(a).is_ok());
        let wait = per_ip.check(a).unwrap_err();
        assert!(
            (Duration::from_secs(1)..=delibera_serve::LIMIT_WINDOW).contains(&wait),
            "{wait:?}"
        );
        assert!(per_ip.check(b).is_ok());

        let global = RegistrationLimiter::new(RegistrationLimit::global(1));
        assert!(global.check(a).is_ok());
        assert!(global.check(b).is_err());

        let unlimited = RegistrationLimiter::new(RegistrationLimit::unlimited());
        assert!((0..1000).all(|_| unlimited.check(a).is_ok()));
    }
}
