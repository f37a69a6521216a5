//! The accept loop, the connection cap and the per-connection task.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{DeadlineBody, UntilSent};
use crate::connection::{InFlight, TrackedStream, Tracker};
use crate::rejection::json_rejection;
use crate::{Capacity, Edges, Error, Rejection, Result};

/// Open connections (not asked to close) of every [`Server`] in this
/// process, held against the process-wide cap: all of them share one
/// file-descriptor limit.
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// How often a warning about the same condition may be logged.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// How long `accept` pauses after the process ran out of descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// An axum [`Router`] served over HTTP/1.1 with bounded [`Edges`].
///
/// Every request carries [`ConnectInfo<SocketAddr>`] (the peer's address).
#[derive(Debug, Clone)]
pub struct Server {
    router: Router,
    edges: Edges,
    render: fn(Rejection) -> Response<Body>,
}

impl Server {
    /// Serves `router` with the default [`Edges`] and [`json_rejection`].
    pub fn new(router: Router) -> Self {
        Self {
            router,
            edges: Edges::default(),
            render: json_rejection,
        }
    }

    /// Replaces the edges.
    pub fn with_edges(mut self, edges: Edges) -> Self {
        self.edges = edges;
        self
    }

    /// Renders the edge's own answers in the server's error shape.
    pub fn with_rejection_response(mut self, render: fn(Rejection) -> Response<Body>) -> Self {
        self.render = render;
        self
    }

    /// Serves on `listener` until `shutdown` resolves; then stops accepting,
    /// closes idle connections, lets requests in flight finish within the
    /// shutdown grace, and closes what is left.
    pub async fn run<F>(self, listener: TcpListener, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.edges.validate()?;
        let addr = listener.local_addr().map_err(Error::Listener)?;
        let capacity = self.edges.capacity();
        tracing::info!(
            %addr,
            fd_limit = capacity.fd_limit,
            connection_cap = capacity.server,
            process_connection_cap = capacity.process,
            header_read_timeout = ?self.edges.header_read_timeout,
            idle_timeout = ?self.edges.idle_timeout,
            body_read_timeout = ?self.edges.body_read_timeout,
            "serving HTTP with bounded edges"
        );
        let refusal = raw_response(render_rejection(self.render, Rejection::AtCapacity)).await;
        let shared = Arc::new(Shared {
            router: self.router,
            edges: self.edges,
            render: self.render,
            connections: Mutex::default(),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        });
        {
            let mut servers = servers();
            servers.retain(|server| server.strong_count() > 0);
            servers.push(Arc::downgrade(&shared));
        }
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut at_capacity_warning = Throttle::default();
        let mut accept_warning = Throttle::default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // Shutdown first; then finished connections are reaped before
                // more are accepted, so a flood cannot pile up finished tasks.
                biased;
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        if let Some(full) = shared.full(&capacity) {
                            let made_room = match full {
                                Full::Server => shared.shed_longest_waiting(),
                                Full::Process => shed_longest_waiting_in_process(),
                            };
                            if made_room {
                                at_capacity_warning.warn(|suppressed| tracing::warn!(
                                    %addr, connection_cap = capacity.server, suppressed,
                                    "connection cap reached: closing the longest-waiting idle connection"
                                ));
                            } else {
                                at_capacity_warning.warn(|suppressed| tracing::warn!(
                                    %addr, connection_cap = capacity.server, suppressed,
                                    "connection cap reached with every connection busy: refusing new ones"
                                ));
                                // One non-blocking write; the client may already be gone.
                                let _ = stream.try_write(&refusal);
                                continue;
                            }
                        }
                        let registration = shared.register();
                        let stopping = stopping.clone();
                        tasks.spawn(serve_connection(shared.clone(), stream, remote, registration, stopping));
                    }
                    Err(error) if is_per_connection(&error) => {}
                    Err(error) => {
                        // Out of descriptors (EMFILE, ENFILE) or memory: free a
                        // slot if one is idle, and pause rather than spin.
                        accept_warning.warn(|suppressed| tracing::warn!(
                            %addr, %error, suppressed, "accepting a connection failed"
                        ));
                        shed_longest_waiting_in_process();
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
        drop(listener);
        servers().retain(|server| !std::ptr::eq(server.as_ptr(), Arc::as_ptr(&shared)));
        let _ = stop.send(true);
        let grace = shared.edges.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                %addr,
                remaining = tasks.len(),
                "shutdown grace period over; closing remaining connections"
            );
            tasks.shutdown().await;
        }
        Ok(())
    }
}

/// A cap that is reached.
enum Full {
    /// This server's own.
    Server,
    /// The process's, shared by all its servers.
    Process,
}

/// The server's rendering of `rejection`, marked `no-store`: an edge answer
/// describes one moment (a busy server, a slow client), so no cache may
/// keep it.
fn render_rejection(
    render: fn(Rejection) -> Response<Body>,
    rejection: Rejection,
) -> Response<Body> {
    let mut response = render(rejection);
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// What every connection task of one server shares.
struct Shared {
    router: Router,
    edges: Edges,
    render: fn(Rejection) -> Response<Body>,
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
    /// Connections not asked to close.
    active: AtomicUsize,
    next_id: AtomicU64,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Arc<Tracker>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Which cap, if any, a new connection would exceed.
    fn full(&self, capacity: &Capacity) -> Option<Full> {
        if self.active.load(Ordering::SeqCst) >= capacity.server {
            Some(Full::Server)
        } else if OPEN_CONNECTIONS.load(Ordering::SeqCst) >= capacity.process {
            Some(Full::Process)
        } else {
            None
        }
    }

    fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = Arc::new(Tracker::new(&self.edges));
        self.connections().insert(id, tracker.clone());
        self.active.fetch_add(1, Ordering::SeqCst);
        OPEN_CONNECTIONS.fetch_add(1, Ordering::SeqCst);
        Registration {
            shared: self.clone(),
            id,
            tracker,
        }
    }

    /// Takes a connection out of the counts; called once per connection,
    /// under the connections lock, when it is asked to close or has closed.
    fn release(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
    }

    /// The connection that has waited longest with nothing in flight (an
    /// idle keep-alive, or a client that never finished its head).
    fn longest_waiting(&self) -> Option<(Instant, u64)> {
        self.connections()
            .iter()
            .filter(|(_, tracker)| !tracker.is_shed())
            .filter_map(|(id, tracker)| tracker.waiting_since().map(|since| (since, *id)))
            .min()
    }

    /// Asks connection `id` to close, if it is still open and waiting.
    fn shed(&self, id: u64) -> bool {
        let connections = self.connections();
        let Some(tracker) = connections.get(&id) else {
            return false;
        };
        if tracker.waiting_since().is_none() || !tracker.request_shed() {
            return false;
        }
        // A connection asked to close no longer counts against the caps:
        // its slot is as good as free, and counting it until its task ends
        // would shed a second connection for the same newcomer.
        self.release();
        true
    }

    /// Asks this server's longest-waiting connection to close; false if
    /// every connection is busy.
    fn shed_longest_waiting(&self) -> bool {
        self.longest_waiting().is_some_and(|(_, id)| self.shed(id))
    }
}

/// Every running [`Server`] of the process, so that the process-wide cap
/// can make room in whichever server holds the longest-waiting connection.
static SERVERS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

fn servers() -> MutexGuard<'static, Vec<Weak<Shared>>> {
    SERVERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Asks the process's longest-waiting connection, in any server, to close.
fn shed_longest_waiting_in_process() -> bool {
    let running: Vec<Arc<Shared>> = servers().iter().filter_map(Weak::upgrade).collect();
    running
        .iter()
        .filter_map(|server| {
            server
                .longest_waiting()
                .map(|(since, id)| (since, server, id))
        })
        .min_by_key(|(since, _, _)| *since)
        .is_some_and(|(_, server, id)| server.shed(id))
}

/// A connection's place in the caps, given back when its task ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
    tracker: Arc<Tracker>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut connections = self.shared.connections();
        connections.remove(&self.id);
        if !self.tracker.is_shed() {
            self.shared.release();
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    registration: Registration,
    mut stopping: watch::Receiver<bool>,
) {
    let tracker = registration.tracker.clone();
    let io = TokioIo::new(TrackedStream::new(stream, tracker.clone()));
    let service = {
        let shared = shared.clone();
        let tracker = tracker.clone();
        hyper::service::service_fn(move |request| {
            handle(shared.clone(), tracker.clone(), remote, request)
        })
    };
    // The header-read and idle deadlines are this crate's (hyper's own
    // header timer would also end idle keep-alives at the header timeout).
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%remote, %error, "connection ended with an error");
                }
                break;
            }
            expiry = tracker.expired() => {
                tracing::debug!(%remote, ?expiry, "closing a connection that waited too long");
                break;
            }
            () = tracker.shed_requested(), if !closing => {
                if !tracker.is_busy() {
                    tracing::debug!(%remote, "closing an idle connection to make room");
                    break;
                }
                // A request arrived since it was chosen: answer it, then close.
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stopping.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
    drop(registration);
}

async fn handle(
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    remote: SocketAddr,
    request: Request<Incoming>,
) -> std::result::Result<Response<UntilSent<Body>>, Infallible> {
    let in_flight = InFlight::start(tracker);
    let edges = &shared.edges;
    if let Some(limit) = edges.max_body_bytes
        && let Some(declared) = declared_length(&request)
        && declared > limit as u64
    {
        // Answered before the body is polled, so hyper never sends `100 Continue`.
        let response = closing(render_rejection(
            shared.render,
            Rejection::BodyTooLarge { declared, limit },
        ));
        return Ok(response.map(|body| UntilSent::new(body, in_flight)));
    }
    // A request without a body (most GETs) has nothing to time out.
    let timed_out =
        (!http_body::Body::is_end_stream(request.body())).then(|| Arc::new(AtomicBool::new(false)));
    let mut request = match &timed_out {
        Some(timed_out) => {
            let deadline = Instant::now() + edges.body_read_timeout;
            request.map(|body| Body::new(DeadlineBody::new(body, deadline, timed_out.clone())))
        }
        None => request.map(Body::new),
    };
    request.extensions_mut().insert(ConnectInfo(remote));
    let response = match shared.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // Whatever the handler made of a body that stopped arriving, the client
    // gets the timeout, and the connection (its body half-read) is closed.
    let response = if timed_out.is_some_and(|timed_out| timed_out.load(Ordering::SeqCst)) {
        closing(render_rejection(
            shared.render,
            Rejection::BodyTimeout {
                after: edges.body_read_timeout,
            },
        ))
    } else {
        response
    };
    Ok(response.map(|body| UntilSent::new(body, in_flight)))
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `response` as HTTP/1.1 bytes, to write to a connection that is refused
/// without being served.
async fn raw_response(response: Response<Body>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let mut raw = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::CONNECTION {
            continue;
        }
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    raw.extend_from_slice(&body);
    raw
}

/// Errors of one incoming connection (gone before it was accepted), as
/// opposed to the listener's or the process's.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Logs a repeated condition at most once per [`WARNING_INTERVAL`], with the
/// number of occurrences left out since the last line.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        log(self.suppressed);
        self.last = Some(now);
        self.suppressed = 0;
    }
}
