//! What the server's router costs per request in process: the requests go
//! straight into `protocol_api::app` on one thread, with no sockets, no
//! HTTP parsing and no other process, so the figures hold to a few percent
//! from run to run where the load benchmark's move by fifteen. It prices
//! the server's own layers, routing and handlers against an axum router of
//! one route answering the same body. (Looking up an existing job needs a
//! registered coordinator or a running agent; the load benchmark's
//! `status-hit` covers it.)
//!
//! `cargo bench -p protocol-api --bench router [-- --no-log] [REQUESTS]`
//!
//! The state is the local composition over a temporary data directory, with
//! production's CORS policy (no cross-origin access); the server's log
//! subscriber is installed (writing to nothing) unless `--no-log` is given.
//! Each row is the median of five rounds of REQUESTS (default 200,000).

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use protocol_api::compose::{Composition, compose_local};
use protocol_api::config::{Config, CorsPolicy};
use tower::{Service, ServiceExt};
use tracing_subscriber::util::SubscriberInitExt;

// As the server's binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rounds per row; the median is printed.
const ROUNDS: usize = 5;

/// Nanoseconds per request of `requests` calls of `GET path` on `router`,
/// each answered `expected` and its body read.
async fn per_request(router: &mut Router, path: &str, expected: StatusCode, requests: u32) -> f64 {
    let started = Instant::now();
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
    started.elapsed().as_nanos() as f64 / f64::from(requests)
}

async fn median(router: &mut Router, path: &str, expected: StatusCode, requests: u32) -> f64 {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(per_request(router, path, expected, requests).await);
    }
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs this binary without `--bench`: nothing heavy then.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("router: run with `cargo bench -p protocol-api --bench router`");
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let logging = !args.iter().any(|arg| arg == "--no-log");
    let requests: u32 = args
        .iter()
        .find_map(|arg| arg.parse().ok())
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
        let mut app = protocol_api::app(state);

        let health = axum::body::to_bytes(
            app.clone()
                .oneshot(Request::get("/").body(Body::empty())?)
                .await?
                .into_body(),
            1 << 20,
        )
        .await?;
        let mut one_route = Router::new().route(
            "/",
            axum::routing::get(move || {
                let health = health.clone();
                async move { health }
            }),
        );

        let miss = format!("/api/provision/status/{}", uuid::Uuid::new_v4());
        println!(
            "{requests} requests per round, median of {ROUNDS}; log subscriber {}\n",
            if logging {
                "installed"
            } else {
                "not installed"
            }
        );
        println!("| router | request | ns per request |\n|---|---|---:|");
        let rows: [(&str, &mut Router, &str, &str, StatusCode); 3] = [
            (
                "one route, no layer",
                &mut one_route,
                "GET /",
                "/",
                StatusCode::OK,
            ),
            (
                "the server's",
                &mut app.clone(),
                "GET /",
                "/",
                StatusCode::OK,
            ),
            (
                "the server's",
                &mut app,
                "GET /api/provision/status/{unknown id}",
                &miss,
                StatusCode::NOT_FOUND,
            ),
        ];
        for (router_name, router, request_name, path, expected) in rows {
            // One round unmeasured, so every row starts warm.
            per_request(router, path, expected, requests / 10).await;
            let nanos = median(router, path, expected, requests).await;
            println!("| {router_name} | {request_name} | {nanos:.0} |");
        }
        Ok(())
    })
}
