//! Prometheus metrics (`GET /metrics`): requests, durations and job transitions.
//!
//! A handful of counters does not justify a metrics framework; they live in
//! one process-wide registry rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::jobs::JobStatus;

#[derive(Default)]
struct Registry {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<String, (f64, u64)>,
    transitions: BTreeMap<(&'static str, &'static str), u64>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn with_registry(update: impl FnOnce(&mut Registry)) {
    let mut guard = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    update(&mut guard);
}

/// Counts a job transition.
pub fn job_transition(from: JobStatus, to: JobStatus) {
    with_registry(|registry| {
        *registry
            .transitions
            .entry((from.as_str(), to.as_str()))
            .or_default() += 1
    });
}

/// Middleware: counts each request by route template (never the raw path,
/// which would carry job ids and DIDs) and status, and its duration.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    with_registry(|registry| {
        *registry
            .requests
            .entry((method, route.clone(), status))
            .or_default() += 1;
        let entry = registry.durations.entry(route).or_default();
        entry.0 += seconds;
        entry.1 += 1;
    });
    response
}

/// `GET /metrics`.
pub async fn render() -> impl IntoResponse {
    let mut out = String::new();
    with_registry(|registry| {
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
        out.push_str(
            "# HELP delibera_http_request_duration_seconds Time spent answering, by route.\n",
        );
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
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}
