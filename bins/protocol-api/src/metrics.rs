//! Prometheus metrics (`GET /metrics`): requests, durations and job transitions.
//!
//! A handful of counters does not justify a metrics framework; they live in
//! one process-wide registry rendered in the text exposition format.
//!
//! Every label comes from a fixed set, whatever a client sends: methods
//! outside the standard ones count as `other`, paths no route matched as
//! `unmatched`, and routes and statuses are the server's own. So the
//! registry, and the page, stay small. A scrape copies the counters and
//! renders the copy, so the lock every request takes is never held while a
//! page is written.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::jobs::JobStatus;

/// The label of a path no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The label of a method outside the standard ones.
pub const OTHER_METHOD: &str = "other";

#[derive(Default, Clone)]
struct Registry {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    durations: BTreeMap<String, (f64, u64)>,
    transitions: BTreeMap<(&'static str, &'static str), u64>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// `method` as a metrics (and log) label: its name if it is a standard
/// method, [`OTHER_METHOD`] otherwise. Any token is a valid HTTP method, so
/// the name of an unknown one is the client's to choose, and unbounded.
pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD
        .iter()
        .find(|(standard, _)| standard == method)
        .map_or(OTHER_METHOD, |(_, label)| label)
}

/// Counts a job transition.
pub fn job_transition(from: JobStatus, to: JobStatus) {
    *registry()
        .transitions
        .entry((from.as_str(), to.as_str()))
        .or_default() += 1;
}

/// Middleware: counts each request by method label, route template (never
/// the raw path, which would carry job ids and DIDs) and status, and its
/// duration.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let mut registry = registry();
    *registry
        .requests
        .entry((method, route.clone(), status))
        .or_default() += 1;
    let entry = registry.durations.entry(route).or_default();
    entry.0 += seconds;
    entry.1 += 1;
    response
}

/// `GET /metrics`.
pub async fn render() -> impl IntoResponse {
    let snapshot = registry().clone();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        page(&snapshot),
    )
}

fn page(registry: &Registry) -> String {
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
