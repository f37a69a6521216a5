//! A served test router and a raw HTTP/1.1 client that can misbehave.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{self, post};
use delibera_serve::{Edges, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Every wait of these tests ends by this deadline, so a broken edge fails
/// instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running server and the handles to stop it.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<delibera_serve::Result<()>>,
}

impl Served {
    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> delibera_serve::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stopped")
            .unwrap()
    }
}

/// A router with `GET /` ("ok"), `GET /peer` (the client's address),
/// `POST /echo` (the body back) and `GET /hold` (announces itself on
/// `held`, then answers when `release` is called or dropped).
pub struct TestRouter {
    pub router: Router,
    pub held: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
}

pub fn router() -> TestRouter {
    let (hold_tx, held) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    let router = Router::new()
        .route("/", routing::get(|| async { "ok" }))
        .route(
            "/peer",
            routing::get(
                |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() },
            ),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/hold",
            routing::get(move || {
                let hold_tx = hold_tx.clone();
                async move {
                    let (release, released) = oneshot::channel();
                    let _ = hold_tx.send(release);
                    let _ = released.await;
                    "released"
                }
            }),
        );
    TestRouter { router, held }
}

pub async fn serve(router: Router, edges: Edges) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Server::new(router).with_edges(edges).run(listener, async {
        let _ = stopped.await;
    }));
    Served {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Reads one response (head, then a `Content-Length` body).
pub async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    tokio::time::timeout(DEADLINE, async {
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(
                read > 0,
                "the connection closed before a response: {buffer:?}"
            );
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let mut response = RawResponse {
            status,
            head,
            body: String::new(),
        };
        let length: usize = response
            .header("content-length")
            .map_or(0, |value| value.parse().unwrap());
        let mut body = buffer[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the connection closed mid-body");
            body.extend_from_slice(&chunk[..read]);
        }
        response.body = String::from_utf8_lossy(&body[..length]).into_owned();
        response
    })
    .await
    .expect("a response within the deadline")
}

/// `GET path` on a new connection, and its response.
pub async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

/// Waits until the server closes `stream` (EOF or reset), discarding what
/// it sends first.
pub async fn closed(stream: &mut (impl AsyncRead + Unpin)) {
    tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closed the connection within the deadline");
}

/// Writes `prefix`, then one more byte every 50 ms until the connection fails.
pub fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    prefix: &'static [u8],
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if writer.write_all(prefix).await.is_err() {
            return;
        }
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}
