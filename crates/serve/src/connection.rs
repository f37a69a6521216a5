//! One connection's activity: whether a request is in flight, since when it
//! has been idle or reading a head, and the deadline that follows.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

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
}

/// What the accept loop, the connection task and the request handler share
/// about one connection.
#[derive(Debug)]
pub(crate) struct Tracker {
    phase: Mutex<Phase>,
    changed: Notify,
    shed: AtomicBool,
    shed_requested: Notify,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self {
            phase: Mutex::new(Phase {
                in_flight: 0,
                since: Instant::now(),
                // A new connection owes its first head within the header timeout.
                reading_head: true,
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

    /// Bytes arrived: after an idle pause they start the next head.
    fn bytes_read(&self) {
        let mut phase = self.phase();
        if phase.in_flight == 0 && !phase.reading_head {
            phase.reading_head = true;
            phase.since = Instant::now();
            drop(phase);
            self.changed.notify_waiters();
        }
    }

    /// A head was parsed: no deadline of this module runs while it is answered.
    pub(crate) fn request_started(&self) {
        self.phase().in_flight += 1;
        self.changed.notify_waiters();
    }

    /// A response was sent (or abandoned): the idle wait starts.
    pub(crate) fn request_finished(&self) {
        let mut phase = self.phase();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        if phase.in_flight == 0 {
            phase.reading_head = false;
            phase.since = Instant::now();
        }
        drop(phase);
        self.changed.notify_waiters();
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

    fn deadline(&self, edges: &Edges) -> Option<(Instant, Expiry)> {
        let phase = self.phase();
        if phase.in_flight > 0 {
            None
        } else if phase.reading_head {
            Some((phase.since + edges.header_read_timeout, Expiry::HeaderRead))
        } else {
            Some((phase.since + edges.idle_timeout, Expiry::Idle))
        }
    }

    /// Resolves when the header-read or idle deadline passes with no request
    /// in flight.
    pub(crate) async fn expired(&self, edges: &Edges) -> Expiry {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the phase is read, so no change is missed.
            changed.as_mut().enable();
            match self.deadline(edges) {
                None => changed.await,
                Some((deadline, expiry)) => {
                    if Instant::now() >= deadline {
                        return expiry;
                    }
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
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
