//! The one layer every routed request passes: its request id, its tracing
//! span, its metrics, `Cache-Control: no-store`, and the `{"error": "…"}`
//! envelope on every error. One service instead of a stack of wrappers, so a
//! request pays for one span and no allocation of its own.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::error;
use crate::metrics::RequestLabels;

/// The header carrying the request id, in both directions.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// See the [module](self) docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLayer;

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService { inner }
    }
}

/// The service of [`RequestLayer`].
#[derive(Debug, Clone)]
pub struct RequestService<S> {
    inner: S,
}

impl<S> Service<Request> for RequestService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RequestFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        // The caller's id if it sent one, so its logs and ours line up.
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .cloned()
            .unwrap_or_else(new_request_id);
        let labels = RequestLabels::of(&request);
        // The route is the matched template (`/api/provision/status/{jobId}`),
        // never the concrete path: a job id is enough to read a job's
        // secrets, so it stays out of logs.
        let span = tracing::info_span!(
            "request",
            method = labels.method(),
            route = labels.route(),
            request_id = request_id.to_str().unwrap_or("-"),
        );
        RequestFuture {
            state: State::Answering {
                answer: self.inner.call(request).instrument(span),
            },
            labels,
            started,
            request_id: Some(request_id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`RequestService`].
    pub struct RequestFuture<F> {
        #[pin]
        state: State<F>,
        labels: RequestLabels,
        started: Instant,
        request_id: Option<HeaderValue>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProjection]
    enum State<F> {
        /// The routed service is answering, inside the request's span.
        Answering {
            #[pin]
            answer: Instrumented<F>,
        },
        /// An error answer without the JSON envelope is being rewritten
        /// (rare: an extractor's or a layer's own rejection).
        Enveloping {
            rewrite: Pin<Box<dyn Future<Output = Response> + Send>>,
        },
    }
}

impl<F> Future for RequestFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut response = loop {
            match this.state.as_mut().project() {
                StateProjection::Answering { answer } => {
                    let Ok(response) = ready!(answer.poll(cx));
                    this.labels
                        .record(response.status(), this.started.elapsed());
                    if !error::lacks_error_envelope(&response) {
                        break response;
                    }
                    let rewrite = Box::pin(error::json_error_body(response));
                    this.state.set(State::Enveloping { rewrite });
                }
                StateProjection::Enveloping { rewrite } => break ready!(rewrite.as_mut().poll(cx)),
            }
        };
        let headers = response.headers_mut();
        if !headers.contains_key(&REQUEST_ID)
            && let Some(request_id) = this.request_id.take()
        {
            headers.insert(REQUEST_ID, request_id);
        }
        // Job statuses, registrations and external-worker identities
        // carry keys, tokens, claim URLs and codes, and nothing this
        // server answers gains from being cached.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Poll::Ready(Ok(response))
    }
}

/// A new request id: UUID-shaped (version 4, as before), unique within the
/// process by a counter (handed to threads in blocks) and across processes
/// by a random prefix, and made without asking the OS for randomness on
/// every request. The counter is passed through a bijective mix so
/// consecutive ids do not look sequential; they are labels for logs, not
/// secrets.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, offset) = *PREFIX.get_or_init(|| {
        use rand::RngCore;
        let mut rng = rand::rngs::OsRng;
        (rng.next_u64(), rng.next_u64())
    });
    // Each thread takes its counters a block at a time: one shared
    // addition per block rather than per request, whose cache line every
    // core would otherwise pass around.
    thread_local! {
        static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    const BLOCK_SIZE: u64 = 1024;
    let count = BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = COUNTER.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
            end = next + BLOCK_SIZE;
        }
        block.set((next + 1, end));
        next
    });
    // 62 bits: the UUID's variant takes the top two of the last eight bytes.
    let low = mix62(count.wrapping_add(offset));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&prefix.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// splitmix64's finaliser narrowed to 62 bits: each step (a right
/// xor-shift, a product with an odd number modulo 2^62) is a bijection on
/// 62-bit values, so distinct counters give distinct ids.
fn mix62(value: u64) -> u64 {
    const MASK: u64 = (1 << 62) - 1;
    let mut value = value & MASK;
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9) & MASK;
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb) & MASK;
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_many_threads_are_distinct() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..3_000)
                        .map(|_| new_request_id().to_str().unwrap().to_owned())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: std::collections::HashSet<String> = threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect();
        assert_eq!(ids.len(), 12_000);
    }

    #[test]
    fn request_ids_are_distinct_v4_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
        }
    }
}
