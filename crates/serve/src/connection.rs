//! One connection's activity: whether a request is in flight, since when it
//! has been idle or reading a head, and the deadline that follows.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Edges;

/// Why the edge closed a connection that had no request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request's head did not arrive in time.
    HeaderRead,
    /// The connection sat idle between requests for too long.
    Idle,
}

#[derive(Debug)]
struct Phase {
    /// Requests whose response has not been sent in full.
    in_flight: usize,
    /// When the current wait (for a head, or idle) began.
    since: Instant,
    /// Whether the wait is for a head: a new connection, or bytes after an
    /// idle pause. Otherwise the connection is idle.
    reading_head: bool,
    /// When the connection task's timer next looks at the phase (`None`
    /// before it first does). A change only wakes the task if it makes a
    /// deadline earlier than this; otherwise the timer's next look finds it.
    next_check: Option<Instant>,
}

/// What the accept loop, the connection task and the request handler share
/// about one connection.
///
/// A request changes the phase three times (bytes arrive, the head is
/// parsed, the response is sent) and none of these touches a timer or wakes
/// the connection task in the common case: the task keeps one timer, set no
/// later than the earliest deadline the phase could reach before the timer
/// fires, and a change wakes it only when it brings a deadline before that.
#[derive(Debug)]
pub(crate) struct Tracker {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    phase: Mutex<Phase>,
    changed: Notify,
    shed: AtomicBool,
    shed_requested: Notify,
}

impl Tracker {
    pub(crate) fn new(edges: &Edges) -> Self {
        Self {
            header_read_timeout: edges.header_read_timeout,
            idle_timeout: edges.idle_timeout,
            phase: Mutex::new(Phase {
                in_flight: 0,
                since: Instant::now(),
                // A new connection owes its first head within the header timeout.
                reading_head: true,
                next_check: None,
            }),
            changed: Notify::new(),
            shed: AtomicBool::new(false),
            shed_requested: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // Every critical section leaves the phase whole, so a poisoned lock is usable.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the connection task if `deadline` comes before its next check.
    fn deadline_moved(&self, phase: &Phase, deadline: Instant) {
        if phase.next_check.is_none_or(|check| deadline < check) {
            // A stored permit if the task is not waiting: nothing is missed.
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: after an idle pause they start the next head.
    fn bytes_read(&self) {
        let mut phase = self.phase();
        if phase.in_flight == 0 && !phase.reading_head {
            phase.reading_head = true;
            phase.since = Instant::now();
            let deadline = phase.since + self.header_read_timeout;
            self.deadline_moved(&phase, deadline);
        }
    }

    /// A head was parsed: no deadline of this module runs while it is
    /// answered (the task's next check finds it so).
    pub(crate) fn request_started(&self) {
        self.phase().in_flight += 1;
    }

    /// A response was sent (or abandoned): the idle wait starts.
    pub(crate) fn request_finished(&self) {
        let mut phase = self.phase();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        if phase.in_flight == 0 {
            phase.reading_head = false;
            phase.since = Instant::now();
            let deadline = phase.since + self.idle_timeout;
            self.deadline_moved(&phase, deadline);
        }
    }

    /// Since when the connection has had nothing in flight, if it has not.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        let phase = self.phase();
        (phase.in_flight == 0).then_some(phase.since)
    }

    /// Whether a request is being answered.
    pub(crate) fn is_busy(&self) -> bool {
        self.phase().in_flight > 0
    }

    /// The expiry due at `now`, if any; otherwise when to look again,
    /// recorded so that changes know whether they must wake the task.
    fn check(&self, now: Instant) -> Result<Instant, Expiry> {
        let mut phase = self.phase();
        let deadline = if phase.in_flight > 0 {
            None
        } else if phase.reading_head {
            Some((phase.since + self.header_read_timeout, Expiry::HeaderRead))
        } else {
            Some((phase.since + self.idle_timeout, Expiry::Idle))
        };
        if let Some((deadline, expiry)) = deadline
            && now >= deadline
        {
            return Err(expiry);
        }
        // No wait that starts after `now` can end before `now` plus the
        // shorter timeout, so changes until then need not wake the task.
        let horizon = now + self.header_read_timeout.min(self.idle_timeout);
        let next = deadline.map_or(horizon, |(deadline, _)| deadline.min(horizon));
        phase.next_check = Some(next);
        Ok(next)
    }

    /// Resolves when the header-read or idle deadline passes with no request
    /// in flight. One timer for the connection's whole life.
    pub(crate) async fn expired(&self) -> Expiry {
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            let changed = self.changed.notified();
            match self.check(Instant::now()) {
                Err(expiry) => return expiry,
                Ok(next) => timer.as_mut().reset(next),
            }
            tokio::select! {
                () = changed => {}
                () = timer.as_mut() => {}
            }
        }
    }

    /// Asks the connection to close to make room for a new one. Returns
    /// false if it was asked already.
    pub(crate) fn request_shed(&self) -> bool {
        let first = !self.shed.swap(true, Ordering::SeqCst);
        self.shed_requested.notify_one();
        first
    }

    /// Whether [`request_shed`](Self::request_shed) was called.
    pub(crate) fn is_shed(&self) -> bool {
        self.shed.load(Ordering::SeqCst)
    }

    /// Resolves once the connection is asked to close.
    pub(crate) async fn shed_requested(&self) {
        while !self.is_shed() {
            self.shed_requested.notified().await;
        }
    }
}

/// Marks a request in flight until dropped (when the response body is done).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Tracker>);

impl InFlight {
    pub(crate) fn start(tracker: Arc<Tracker>) -> Self {
        tracker.request_started();
        Self(tracker)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A TCP stream that tells its [`Tracker`] when bytes arrive.
pub(crate) struct TrackedStream {
    stream: TcpStream,
    tracker: Arc<Tracker>,
}

impl TrackedStream {
    pub(crate) fn new(stream: TcpStream, tracker: Arc<Tracker>) -> Self {
        Self { stream, tracker }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
