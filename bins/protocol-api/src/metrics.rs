//! Prometheus metrics (`GET /metrics`): requests, durations and job transitions.
//!
//! A handful of counters does not justify a metrics framework; they live in
//! process-wide tables rendered in the text exposition format.
//!
//! Every label comes from a fixed set, whatever a client sends: methods
//! outside the standard ones count as `other`, paths no route matched as
//! `unmatched`, and routes and statuses are the server's own. So the
//! registry, and the page, stay small.
//!
//! Counting a request is a few relaxed atomic additions in a table indexed
//! by method, route and status: no lock, no allocation, no label string.
//! Only a route or status outside the table (none today) goes to a locked
//! map. A scrape reads the counters and renders them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;

use crate::jobs::JobStatus;

/// The label of a path no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The label of a method outside the standard ones.
pub const OTHER_METHOD: &str = "other";

/// The method labels, in table order; [`OTHER_METHOD`] last.
const METHODS: [&str; 10] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "PATCH",
    "CONNECT",
    "TRACE",
    OTHER_METHOD,
];

/// The route templates counted without a lock: the server's routes and
/// [`UNMATCHED_ROUTE`]. A template missing here is still counted, under a lock.
const ROUTES: [&str; 15] = [
    "/",
    "/metrics",
    "/api/openapi.json",
    "/api/provision/status/{jobId}",
    "/api/provision/register",
    "/api/provision/coordinator-register",
    "/api/provision/coordinator",
    "/api/provision/worker",
    "/api/provision/external-worker",
    "/api/agents/endpoints",
    "/api/agents/{agentId}/endpoint",
    "/api/workers/registered",
    "/api/workers/register",
    "/api/workers/{workerId}",
    UNMATCHED_ROUTE,
];

/// The statuses counted without a lock: every one this server answers with.
const STATUSES: [u16; 20] = [
    200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 502, 503,
    504,
];

const CELLS: usize = METHODS.len() * ROUTES.len() * STATUSES.len();

/// Lock-free request counters and duration sums.
struct Table {
    /// By (method, route, status).
    requests: [AtomicU64; CELLS],
    /// Nanoseconds spent answering, by route.
    duration_nanos: [AtomicU64; ROUTES.len()],
    /// Requests timed, by route.
    duration_count: [AtomicU64; ROUTES.len()],
}

static TABLE: Table = Table {
    requests: [const { AtomicU64::new(0) }; CELLS],
    duration_nanos: [const { AtomicU64::new(0) }; ROUTES.len()],
    duration_count: [const { AtomicU64::new(0) }; ROUTES.len()],
};

/// What does not fit the table, and the job transitions (a handful per job).
#[derive(Default, Clone)]
struct Overflow {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    durations: BTreeMap<String, (f64, u64)>,
    transitions: BTreeMap<(&'static str, &'static str), u64>,
}

fn overflow() -> MutexGuard<'static, Overflow> {
    static OVERFLOW: OnceLock<Mutex<Overflow>> = OnceLock::new();
    OVERFLOW
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn method_index(method: &Method) -> usize {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .position(|standard| standard == method)
        .unwrap_or(METHODS.len() - 1)
}

/// `method` as a metrics (and log) label: its name if it is a standard
/// method, [`OTHER_METHOD`] otherwise. Any token is a valid HTTP method, so
/// the name of an unknown one is the client's to choose, and unbounded.
pub fn method_label(method: &Method) -> &'static str {
    METHODS[method_index(method)]
}

/// Counts a job transition.
pub fn job_transition(from: JobStatus, to: JobStatus) {
    *overflow()
        .transitions
        .entry((from.as_str(), to.as_str()))
        .or_default() += 1;
}

/// The labels of one request, read before it is answered.
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels {
    method: usize,
    route: &'static str,
    /// The route's row in the table, if it has one.
    route_index: Option<usize>,
}

impl RequestLabels {
    /// The method label and the matched route template (never the raw path,
    /// which would carry job ids and DIDs) of `request`.
    pub fn of(request: &Request) -> Self {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let route_index = ROUTES.iter().position(|known| *known == route);
        Self {
            method: method_index(request.method()),
            route: route_index.map_or_else(|| intern(route), |index| ROUTES[index]),
            route_index,
        }
    }

    /// The method label.
    pub fn method(&self) -> &'static str {
        METHODS[self.method]
    }

    /// The route template.
    pub fn route(&self) -> &'static str {
        self.route
    }

    /// Counts the answered request.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let status = status.as_u16();
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let status_index = STATUSES.iter().position(|known| *known == status);
        if let (Some(route), Some(status_index)) = (self.route_index, status_index) {
            let cell = (self.method * ROUTES.len() + route) * STATUSES.len() + status_index;
            TABLE.requests[cell].fetch_add(1, Ordering::Relaxed);
        } else {
            *overflow()
                .requests
                .entry((self.method(), self.route.to_owned(), status))
                .or_default() += 1;
        }
        if let Some(route) = self.route_index {
            TABLE.duration_nanos[route].fetch_add(nanos, Ordering::Relaxed);
            TABLE.duration_count[route].fetch_add(1, Ordering::Relaxed);
        } else {
            let mut overflow = overflow();
            let entry = overflow.durations.entry(self.route.to_owned()).or_default();
            entry.0 += elapsed.as_secs_f64();
            entry.1 += 1;
        }
    }
}

/// A `'static` copy of a route template outside [`ROUTES`], made once per
/// template: templates are the server's own, a fixed set, so this is bounded.
fn intern(route: &str) -> &'static str {
    static INTERNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = interned.iter().find(|known| **known == route) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    interned.push(leaked);
    leaked
}

/// `GET /metrics`.
pub async fn render() -> impl IntoResponse {
    let snapshot = snapshot();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        page(&snapshot),
    )
}

/// The table and the overflow merged, in label order.
fn snapshot() -> Overflow {
    let mut snapshot = overflow().clone();
    for (method_index, method) in METHODS.iter().enumerate() {
        for (route_index, route) in ROUTES.iter().enumerate() {
            for (status_index, status) in STATUSES.iter().enumerate() {
                let cell =
                    (method_index * ROUTES.len() + route_index) * STATUSES.len() + status_index;
                let count = TABLE.requests[cell].load(Ordering::Relaxed);
                if count > 0 {
                    *snapshot
                        .requests
                        .entry((*method, (*route).to_owned(), *status))
                        .or_default() += count;
                }
            }
        }
    }
    for (route_index, route) in ROUTES.iter().enumerate() {
        let count = TABLE.duration_count[route_index].load(Ordering::Relaxed);
        if count > 0 {
            let nanos = TABLE.duration_nanos[route_index].load(Ordering::Relaxed);
            let entry = snapshot.durations.entry((*route).to_owned()).or_default();
            entry.0 += Duration::from_nanos(nanos).as_secs_f64();
            entry.1 += count;
        }
    }
    snapshot
}

fn page(registry: &Overflow) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP delibera_http_requests_total HTTP requests by method, route and status.\n",
    );
    out.push_str("# TYPE delibera_http_requests_total counter\n");
    for ((method, route, status), count) in &registry.requests {
        let _ = writeln!(
            out,
            "delibera_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
        );
    }
    out.push_str("# HELP delibera_http_request_duration_seconds Time spent answering, by route.\n");
    out.push_str("# TYPE delibera_http_request_duration_seconds summary\n");
    for (route, (sum, count)) in &registry.durations {
        let _ = writeln!(
            out,
            "delibera_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "delibera_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
    }
    out.push_str("# HELP delibera_job_transitions_total Provisioning job transitions.\n");
    out.push_str("# TYPE delibera_job_transitions_total counter\n");
    for ((from, to), count) in &registry.transitions {
        let _ = writeln!(
            out,
            "delibera_job_transitions_total{{from=\"{from}\",to=\"{to}\"}} {count}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(&[b'L'; 5000]).unwrap();
        assert_eq!(method_label(&invented), OTHER_METHOD);
        let lowercase = Method::from_bytes(b"get").unwrap();
        assert_eq!(method_label(&lowercase), OTHER_METHOD);
    }
}
