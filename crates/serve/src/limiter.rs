//! A request budget per client: a fixed one-minute window per key, the
//! limiter every server of this workspace puts in front of its costly routes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window a [`PerMinuteLimiter`] counts in.
pub const LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Clients remembered at most, so a flood of client addresses cannot grow
/// the map without bound.
const MAX_TRACKED_KEYS: usize = 10_000;

/// Counts requests per client (an IPv4 address or an IPv6 /64, see
/// [`check`](Self::check); or `None` for callers that share one budget) in
/// fixed one-minute windows.
#[derive(Debug)]
pub struct PerMinuteLimiter {
    per_minute: u32,
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    /// Each client's window: when it started, and the requests counted in it.
    by_client: HashMap<Option<IpAddr>, (Instant, u32)>,
    /// When ended windows were last dropped from a full map.
    last_sweep: Option<Instant>,
}

impl PerMinuteLimiter {
    /// Allows `per_minute` requests per key per minute; 0 allows any number.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::default(),
        }
    }

    /// Counts one request under `key`; `Err(retry_after)` when the key's
    /// budget for this window is spent. The wait is whole seconds rounded
    /// up (at least one), so a client that waits as told gets in.
    ///
    /// An IPv6 address counts as its /64 (one client holds a whole /64 and
    /// can rotate through it), an IPv4-mapped IPv6 address as its IPv4
    /// address. While 10,000 clients are counted, ended windows are dropped
    /// at most once a window; a new client that finds no room waits for the
    /// next sweep, so no request rescans the map.
    pub fn check(&self, key: Option<IpAddr>) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let key = key.map(client_of);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let windows = &mut *windows;
        if windows.by_client.len() >= MAX_TRACKED_KEYS && !windows.by_client.contains_key(&key) {
            let next_sweep = windows.last_sweep.map(|at| at + LIMIT_WINDOW);
            if next_sweep.is_none_or(|due| now >= due) {
                windows
                    .by_client
                    .retain(|_, (start, _)| now.duration_since(*start) < LIMIT_WINDOW);
                windows.last_sweep = Some(now);
            }
            if windows.by_client.len() >= MAX_TRACKED_KEYS {
                let due = windows.last_sweep.map_or(now, |at| at + LIMIT_WINDOW);
                return Err(whole_seconds(due.saturating_duration_since(now)));
            }
        }
        let (start, count) = windows.by_client.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= LIMIT_WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= self.per_minute {
            let left = LIMIT_WINDOW.saturating_sub(now.duration_since(*start));
            return Err(whole_seconds(left));
        }
        *count += 1;
        Ok(())
    }
}

/// The client an address stands for: an IPv4 address (IPv4-mapped IPv6
/// included) as itself, an IPv6 address as its /64.
fn client_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// `wait` rounded up to whole seconds, at least one.
fn whole_seconds(wait: Duration) -> Duration {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(seconds.max(1))
}

/// The address of the client behind `trusted_proxies` proxies, each of
/// which appends the address it was called from to `X-Forwarded-For`: the
/// entry that many from the right (what the outermost trusted proxy saw),
/// since entries further left are whatever the client chose to send, bytes
/// that are no text included. With no trusted proxy, or a header too short
/// or unreadable at that entry (a request that bypassed the proxies), the
/// TCP peer's address.
pub fn client_ip(
    headers: &axum::http::HeaderMap,
    peer: Option<IpAddr>,
    trusted_proxies: u8,
) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer;
    }
    // Several headers are one list, in order (RFC 9110, section 5.3).
    let entries: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .collect();
    let index = entries.len().checked_sub(usize::from(trusted_proxies));
    index
        .and_then(|index| std::str::from_utf8(entries[index]).ok())
        .and_then(|entry| forwarded_address(entry.trim()))
        .or(peer)
}

/// One `X-Forwarded-For` entry as an address: bare (`203.0.113.7`, `2001:db8::1`)
/// or with a port, as some proxies write it (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| {
        entry
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|address| address.ip())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_entry_the_outermost_trusted_proxy_appended() {
        let peer: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let headers = |values: &[&str]| {
            let mut headers = axum::http::HeaderMap::new();
            for value in values {
                headers.append("x-forwarded-for", value.parse().unwrap());
            }
            headers
        };
        // No trusted proxy: the header is the client's to forge.
        assert_eq!(client_ip(&headers(&["203.0.113.7"]), peer, 0), peer);
        // One proxy: the entry it appended, whatever the client put before it.
        assert_eq!(
            client_ip(&headers(&["203.0.113.7"]), peer, 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(&headers(&["1.1.1.1, 203.0.113.7"]), peer, 1),
            ip("203.0.113.7")
        );
        // Two proxies, the list split over two headers.
        assert_eq!(
            client_ip(&headers(&["1.1.1.1, 203.0.113.7", "10.0.0.9"]), peer, 2),
            ip("203.0.113.7")
        );
        // With ports, IPv6.
        assert_eq!(
            client_ip(&headers(&["203.0.113.7:4711"]), peer, 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(&headers(&["[2001:db8::1]:4711"]), peer, 1),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(&headers(&["2001:db8::1"]), peer, 1),
            ip("2001:db8::1")
        );
        // Too short, missing, unreadable: the peer.
        assert_eq!(client_ip(&headers(&["203.0.113.7"]), peer, 2), peer);
        assert_eq!(client_ip(&headers(&[]), peer, 1), peer);
        assert_eq!(client_ip(&headers(&["unknown"]), peer, 1), peer);
        let binary = |bytes: &[u8]| {
            let mut headers = axum::http::HeaderMap::new();
            headers.append(
                "x-forwarded-for",
                axum::http::HeaderValue::from_bytes(bytes).unwrap(),
            );
            headers
        };
        assert_eq!(client_ip(&binary(b"\xff1.2.3.4"), peer, 1), peer);
        // Bytes the client sent before the proxy's entry change nothing.
        assert_eq!(
            client_ip(&binary(b"\xff1.2.3.4, 203.0.113.7"), peer, 1),
            ip("203.0.113.7")
        );
    }

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
    fn an_ipv6_64_is_one_client_and_an_ipv4_mapped_address_is_its_ipv4() {
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let limiter = PerMinuteLimiter::new(2);
        let start = Instant::now();
        assert!(limiter.check_at(ip("2001:db8:1:2::1"), start).is_ok());
        assert!(limiter.check_at(ip("2001:db8:1:2:aaaa::7"), start).is_ok());
        assert!(limiter.check_at(ip("2001:db8:1:2::ffff"), start).is_err());
        assert!(limiter.check_at(ip("2001:db8:1:3::1"), start).is_ok());

        assert!(limiter.check_at(ip("::ffff:10.0.0.1"), start).is_ok());
        assert!(limiter.check_at(ip("10.0.0.1"), start).is_ok());
        assert!(limiter.check_at(ip("::ffff:10.0.0.1"), start).is_err());
        assert!(limiter.check_at(ip("10.0.0.2"), start).is_ok());
    }

    #[test]
    fn a_full_table_is_swept_once_a_window_and_refuses_new_clients_meanwhile() {
        let client = |n: usize| Some(IpAddr::from([10, 1, (n >> 8) as u8, n as u8]));
        let newcomer = Some(IpAddr::from([192, 0, 2, 1]));
        let limiter = PerMinuteLimiter::new(5);
        let start = Instant::now();
        for n in 0..MAX_TRACKED_KEYS {
            assert!(limiter.check_at(client(n), start).is_ok());
        }
        // Full of live windows: the sweep frees nothing, so a new client
        // waits for the next one, and known clients go on.
        let second = start + Duration::from_secs(1);
        assert_eq!(
            limiter.check_at(newcomer, second),
            Err(Duration::from_secs(60))
        );
        assert!(limiter.check_at(client(0), second).is_ok());
        // Every window but one has ended, yet the next sweep is not due: no
        // rescan, still refused.
        let ended = start + LIMIT_WINDOW;
        assert_eq!(
            limiter.check_at(newcomer, ended),
            Err(Duration::from_secs(1))
        );
        // Once it is due, the sweep makes room.
        let due = second + LIMIT_WINDOW;
        assert!(limiter.check_at(newcomer, due).is_ok());
        assert!(limiter.check_at(client(1), due).is_ok());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = PerMinuteLimiter::new(0);
        assert!((0..1000).all(|_| limiter.check(None).is_ok()));
    }
}
