//! What the server's router costs per request in process: the requests go
//! straight into `protocol_api::app`, with no sockets, no HTTP parsing and
//! no other process, so the figures hold to a few percent from run to run
//! where the load benchmark's move by fifteen. It prices the server's own
//! layers, routing and handlers against an axum router of one route
//! answering the same body, and a status lookup against an axum route with
//! a path parameter answering the same kind of 404. (Looking up an existing
//! job needs a registered coordinator or a running agent; the load
//! benchmark's `status-hit` covers it.)
//!
//! `cargo bench -p protocol-api --bench router [-- --no-log] [--threads N] [REQUESTS]`
//!
//! The state is the local composition over a temporary data directory, with
//! production's CORS policy (no cross-origin access); the server's log
//! subscriber is installed (writing to nothing) unless `--no-log` is given.
//! Each of N threads (default 1), on a single-threaded runtime of its own,
//! sends five rounds of REQUESTS (default 200,000); a row is the median of
//! those rounds' thread CPU time per request. With two threads on two cores
//! the rows also price what requests answered side by side cost each other
//! (locks, reference counts and counters every request writes).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use protocol_api::api_types::ErrorBody;
use protocol_api::compose::{Composition, compose_local};
use protocol_api::config::{Config, CorsPolicy};
use tower::{Service, ServiceExt};
use tracing_subscriber::util::SubscriberInitExt;

// As the server's binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rounds per row; the median is printed.
const ROUNDS: usize = 5;

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(time.tv_sec).unwrap_or_default(),
        u32::try_from(time.tv_nsec).unwrap_or_default(),
    )
}

/// CPU nanoseconds per request of `requests` calls of `GET path` on
/// `router`, each answered `expected` and its body read.
async fn per_request(router: &mut Router, path: &str, expected: StatusCode, requests: u32) -> f64 {
    let started = thread_cpu();
    for _ in 0..requests {
        let request = Request::get(path)
            .body(Body::empty())
            .expect("a valid request");
        let response = ServiceExt::<Request<Body>>::ready(&mut *router)
            .await
            .expect("a router is always ready")
            .call(request)
            .await
            .expect("a router never fails");
        assert_eq!(response.status(), expected, "GET {path}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body in memory");
        std::hint::black_box(body);
    }
    (thread_cpu() - started).as_nanos() as f64 / f64::from(requests)
}

/// The median over `threads` threads side by side, each sending a warm-up
/// round and then [`ROUNDS`] rounds of `requests`.
fn median(router: &Router, path: &str, expected: StatusCode, requests: u32, threads: usize) -> f64 {
    let sending: Vec<_> = (0..threads)
        .map(|_| {
            let mut router = router.clone();
            let path = path.to_owned();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    per_request(&mut router, &path, expected, requests / 10).await;
                    let mut rounds = Vec::with_capacity(ROUNDS);
                    for _ in 0..ROUNDS {
                        rounds.push(per_request(&mut router, &path, expected, requests).await);
                    }
                    rounds
                })
            })
        })
        .collect();
    let mut rounds: Vec<f64> = sending
        .into_iter()
        .flat_map(|thread| thread.join().expect("a sending thread"))
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this binary without `--bench`: nothing heavy then.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("router: run with `cargo bench -p protocol-api --bench router`");
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let logging = !args.iter().any(|arg| arg == "--no-log");
    let threads: usize = args
        .iter()
        .position(|arg| arg == "--threads")
        .and_then(|at| args.get(at + 1))
        .map_or(Ok(1), |n| n.parse())?;
    anyhow::ensure!(threads > 0, "--threads needs at least one thread");
    let requests: u32 = args
        .iter()
        .enumerate()
        .filter(|(at, _)| *at == 0 || args[at - 1] != "--threads")
        .find_map(|(_, arg)| arg.parse().ok())
        .unwrap_or(200_000);
    if logging {
        protocol_api::logging::subscriber(std::io::sink, false).init();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let config = Config::try_parse_from([
            "protocol-api",
            "--port",
            "0",
            "--data-dir",
            dir.path().to_str().expect("a UTF-8 temporary path"),
            "--ensue-local-addr",
            "127.0.0.1:0",
            "--mode",
            "local",
        ])?;
        let Composition {
            mut state,
            local_ensue: _ensue,
        } = compose_local(&config).await?;
        state.cors = CorsPolicy::SameOriginOnly;
        let app = protocol_api::app(state);

        let health = axum::body::to_bytes(
            app.clone()
                .oneshot(Request::get("/").body(Body::empty())?)
                .await?
                .into_body(),
            1 << 20,
        )
        .await?;
        let one_route = Router::new().route(
            "/",
            axum::routing::get(move || {
                let health = health.clone();
                async move { health }
            }),
        );

        // What axum alone charges a lookup: a route with a path parameter,
        // answering 404 with the server's JSON error naming it.
        let one_param_route = Router::new().route(
            "/api/provision/status/{jobId}",
            axum::routing::get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    let error = format!("no job {id:?}");
                    (StatusCode::NOT_FOUND, axum::Json(ErrorBody { error }))
                },
            ),
        );
        let miss = format!("/api/provision/status/{}", uuid::Uuid::new_v4());
        println!(
            "{requests} requests per round, {threads} thread(s) side by side, median of their \
             {ROUNDS} rounds each; log subscriber {}\n",
            if logging {
                "installed"
            } else {
                "not installed"
            }
        );
        println!("| router | request | CPU ns per request |\n|---|---|---:|");
        let rows: [(&str, &Router, &str, &str, StatusCode); 4] = [
            (
                "one route, no layer",
                &one_route,
                "GET /",
                "/",
                StatusCode::OK,
            ),
            (
                "one route with a parameter, no layer",
                &one_param_route,
                "GET /api/provision/status/{unknown id}",
                &miss,
                StatusCode::NOT_FOUND,
            ),
            ("the server's", &app, "GET /", "/", StatusCode::OK),
            (
                "the server's",
                &app,
                "GET /api/provision/status/{unknown id}",
                &miss,
                StatusCode::NOT_FOUND,
            ),
        ];
        for (router_name, router, request_name, path, expected) in rows {
            let nanos = median(router, path, expected, requests, threads);
            println!("| {router_name} | {request_name} | {nanos:.0} |");
        }
        Ok(())
    })
}
