//! The limits a server keeps at its edge, and the connection cap they give
//! under the process's file-descriptor limit.

use std::time::Duration;

use crate::{Error, Result};

/// How long a client may take to send a request's head (from accepting the
/// connection, or from the first byte after an idle keep-alive pause).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait, idle, for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send a request's whole body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors left out of the connection cap, for database files,
/// outgoing HTTP, listeners and other servers in the same process.
pub const DEFAULT_FD_RESERVE: u64 = 256;
/// How long requests in flight may take to finish once shutdown starts.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The connection cap where the file-descriptor limit cannot be read.
pub const CONNECTIONS_WITHOUT_FD_LIMIT: usize = 1024;
/// The longest timeout or shutdown grace an edge accepts: a day is already
/// no limit at all for one request, and a deadline this far out still fits
/// the clock's range (a much larger one overflows it).
pub const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The limits of one server's edge. The defaults are what an operator would
/// choose for a public API: a 10 s header read, 60 s idle keep-alive, a 30 s
/// body read, connections capped below the file-descriptor limit with 256
/// descriptors to spare, no early body limit, and a 10 s shutdown grace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Edges {
    /// From accepting a connection, or from the first byte after an idle
    /// pause, until the request's head is complete.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// From the request's head until its body has been read in full.
    pub body_read_timeout: Duration,
    /// This server's own connection cap; `None` derives it from the
    /// file-descriptor limit. Either way the whole process stays under
    /// that limit less [`fd_reserve`](Self::fd_reserve).
    pub max_connections: Option<usize>,
    /// File descriptors the connection cap leaves to everything else.
    pub fd_reserve: u64,
    /// A request whose `Content-Length` is larger than this is answered 413
    /// before its body is read (before `100 Continue`); `None` leaves body
    /// limits to the router.
    pub max_body_bytes: Option<usize>,
    /// How long requests in flight may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for Edges {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: None,
            fd_reserve: DEFAULT_FD_RESERVE,
            max_body_bytes: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Edges {
    /// Sets [`header_read_timeout`](Self::header_read_timeout).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`body_read_timeout`](Self::body_read_timeout).
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, connections: Option<usize>) -> Self {
        self.max_connections = connections;
        self
    }

    /// Sets [`fd_reserve`](Self::fd_reserve).
    pub fn with_fd_reserve(mut self, reserve: u64) -> Self {
        self.fd_reserve = reserve;
        self
    }

    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    pub fn with_max_body_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Refuses limits that would close every connection at once or accept
    /// none, and timeouts longer than [`LONGEST_TIMEOUT`].
    pub fn validate(&self) -> Result<()> {
        let timeouts = [
            ("header read timeout", self.header_read_timeout),
            ("idle timeout", self.idle_timeout),
            ("body read timeout", self.body_read_timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, timeout)| timeout.is_zero()) {
            return Err(Error::InvalidEdges {
                reason: format!("the {name} must be more than zero"),
            });
        }
        let grace = ("shutdown grace", self.shutdown_grace);
        if let Some((name, _)) = timeouts
            .iter()
            .chain([&grace])
            .find(|(_, timeout)| *timeout > LONGEST_TIMEOUT)
        {
            return Err(Error::InvalidEdges {
                reason: format!(
                    "the {name} must be at most {} seconds (a day)",
                    LONGEST_TIMEOUT.as_secs()
                ),
            });
        }
        if self.max_connections == Some(0) {
            return Err(Error::InvalidEdges {
                reason: "the connection cap must be at least 1 (leave it unset to derive it from the file-descriptor limit)".into(),
            });
        }
        Ok(())
    }

    /// The caps these edges give under the process's current
    /// file-descriptor limit (read now, with `getrlimit(RLIMIT_NOFILE)`).
    pub fn capacity(&self) -> Capacity {
        self.capacity_under(fd_limit())
    }

    /// The caps these edges give under `fd_limit` (`None`: unknown).
    pub fn capacity_under(&self, fd_limit: Option<u64>) -> Capacity {
        let process = match fd_limit {
            Some(limit) => connections_under(limit, self.fd_reserve),
            None => self.max_connections.unwrap_or(CONNECTIONS_WITHOUT_FD_LIMIT),
        };
        Capacity {
            fd_limit,
            process,
            server: self.max_connections.unwrap_or(process).min(process),
        }
    }
}

/// Connection caps: how many connections this server keeps, and how many
/// all the servers of the process keep together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capacity {
    /// The soft `RLIMIT_NOFILE` the caps were derived from, if it could be read.
    pub fd_limit: Option<u64>,
    /// Connections of every server in the process together.
    pub process: usize,
    /// Connections of this server.
    pub server: usize,
}

/// The connections that fit under `fd_limit` with `reserve` descriptors to
/// spare; half the limit when the reserve would take more than half.
fn connections_under(fd_limit: u64, reserve: u64) -> usize {
    let connections = if fd_limit > reserve.saturating_mul(2) {
        fd_limit - reserve
    } else {
        fd_limit / 2
    };
    usize::try_from(connections).unwrap_or(usize::MAX).max(1)
}

/// The soft limit on open file descriptors, if this platform has one.
fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _hard)) => Some(soft),
            Err(error) => {
                tracing::warn!(%error, "could not read the file-descriptor limit");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_free() {
        assert_eq!(connections_under(1024, 256), 768);
        assert_eq!(connections_under(65_536, 256), 65_280);
        // A reserve larger than half the limit would leave too little.
        assert_eq!(connections_under(256, 256), 128);
        assert_eq!(connections_under(1, 256), 1);
    }

    #[test]
    fn a_server_cap_never_exceeds_the_process_cap() {
        let edges = Edges::default().with_max_connections(Some(5_000));
        let capacity = edges.capacity_under(Some(1024));
        assert_eq!((capacity.process, capacity.server), (768, 768));
        let edges = Edges::default().with_max_connections(Some(100));
        assert_eq!(edges.capacity_under(Some(1024)).server, 100);
        assert_eq!(Edges::default().capacity_under(None).server, 1024);
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(Edges::default().validate().is_ok());
        let zero = Edges::default().with_idle_timeout(Duration::ZERO);
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("idle timeout")
        );
        let none = Edges::default().with_max_connections(Some(0));
        assert!(none.validate().is_err());
    }

    #[test]
    fn timeouts_beyond_a_day_are_refused() {
        let longest = Edges::default()
            .with_header_read_timeout(LONGEST_TIMEOUT)
            .with_idle_timeout(LONGEST_TIMEOUT)
            .with_body_read_timeout(LONGEST_TIMEOUT)
            .with_shutdown_grace(LONGEST_TIMEOUT);
        assert!(longest.validate().is_ok());
        let huge = Duration::from_secs(u64::MAX);
        for (name, edges) in [
            (
                "header read timeout",
                Edges::default().with_header_read_timeout(huge),
            ),
            ("idle timeout", Edges::default().with_idle_timeout(huge)),
            (
                "body read timeout",
                Edges::default().with_body_read_timeout(huge),
            ),
            ("shutdown grace", Edges::default().with_shutdown_grace(huge)),
        ] {
            let refusal = edges.validate().unwrap_err().to_string();
            assert!(refusal.contains(name), "{refusal}");
        }
    }
}
