//! The floor under the cheap routes: what one keep-alive request costs on
//! this machine before any of the server's own work. The bench runs itself
//! again as a child (`--serve-floor KIND PORT BODY`) serving `GET /`'s
//! exact body, measured by the same client and the same `/proc` reading as
//! the server:
//!
//! - `tcp`: no HTTP library at all, one `read` and one `write` per request
//!   (what the kernel's loopback TCP and the runtime's wake-ups cost);
//! - `hyper`: hyper's HTTP/1.1 connection on the same runtime, a fixed
//!   answer (what the HTTP layer adds; no router, span or edge limits);
//! - `axum`: the same connection serving an axum router of one route and
//!   no layer (what the router adds);
//! - `layer`: that router behind the server's request layer (request id,
//!   span, metrics, `no-store`), no subscriber installed;
//! - `serve`: the one-route router served by `delibera-serve` with its
//!   default edges (connection caps, deadlines, tracked in-flight work).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The argument that makes the bench binary a floor server.
pub(crate) const SERVE_FLOOR: &str = "--serve-floor";

/// Which floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// Bare sockets.
    Tcp,
    /// hyper's HTTP/1.1 server.
    Hyper,
    /// An axum router on it.
    Axum,
    /// The router behind the request layer.
    Layer,
    /// The router on `delibera-serve`.
    Serve,
}

impl Floor {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Floor::Tcp => "tcp",
            Floor::Hyper => "hyper",
            Floor::Axum => "axum",
            Floor::Layer => "layer",
            Floor::Serve => "serve",
        }
    }

    fn named(name: &str) -> Self {
        match name {
            "tcp" => Floor::Tcp,
            "hyper" => Floor::Hyper,
            "axum" => Floor::Axum,
            "layer" => Floor::Layer,
            "serve" => Floor::Serve,
            other => panic!("no floor server named {other:?}"),
        }
    }
}

/// Serves a floor and never returns, when the command line asks for one.
pub(crate) fn serve_if_asked() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, kind, port, body] = args.as_slice() else {
        return;
    };
    if flag != SERVE_FLOOR {
        return;
    }
    let floor = Floor::named(kind);
    let port: u16 = port.parse().expect("a port number");
    let body = Bytes::from(body.clone());
    // The server's own runtime: Tokio's multi-threaded default.
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("the floor's port");
        if floor == Floor::Serve {
            let _ = delibera_serve::Server::new(one_route(body))
                .run(listener, std::future::pending())
                .await;
            return;
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                match floor {
                    Floor::Tcp => serve_raw(stream, &body).await,
                    Floor::Hyper => serve_hyper(stream, body).await,
                    Floor::Axum => serve_router(stream, one_route(body)).await,
                    Floor::Layer => {
                        let router =
                            one_route(body).layer(protocol_api::request_layer::RequestLayer);
                        serve_router(stream, router).await
                    }
                    Floor::Serve => unreachable!("served above"),
                }
            });
        }
    });
    std::process::exit(0);
}

/// One fixed answer per request head read; requests carry no body.
async fn serve_raw(mut stream: TcpStream, body: &[u8]) {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    let mut buffer = vec![0u8; 8192];
    let mut filled = 0;
    loop {
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => filled += read,
        }
        while let Some(end) = buffer[..filled]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            if stream.write_all(&answer).await.is_err() {
                return;
            }
            buffer.copy_within(end + 4..filled, 0);
            filled -= end + 4;
        }
        if filled == buffer.len() {
            return;
        }
    }
}

async fn serve_hyper(stream: TcpStream, body: Bytes) {
    let service = hyper::service::service_fn(move |_request| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A router answering `GET /` with `body`.
fn one_route(body: Bytes) -> axum::Router {
    axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

async fn serve_router(stream: TcpStream, router: axum::Router) {
    use tower::ServiceExt;

    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
