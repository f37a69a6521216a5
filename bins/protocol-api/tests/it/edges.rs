//! The server's edges, from outside, over real TCP: metrics stay bounded
//! under invented methods, idle connections past the file-descriptor limit
//! do not stop it answering, and slow heads, slow bodies and oversized
//! bodies are cut off early.
//!
//! Memory and descriptor limits are per process, so those two tests run the
//! server in a child process (this test binary again, running only
//! [`edge_server_process`]) and watch it from outside.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocol_api::AppState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::common::{Options, TestApp, TestDeployer};

/// Every wait here ends by this deadline, so a broken edge fails the test.
const DEADLINE: Duration = Duration::from_secs(20);

/// Turns this test binary into the server (see [`edge_server_process`]).
const SERVER_ENV: &str = "DELIBERA_EDGE_TEST_SERVER";
/// The soft `RLIMIT_NOFILE` the child server sets before starting.
const FD_LIMIT_ENV: &str = "DELIBERA_EDGE_TEST_FD_LIMIT";

/// Run by the child process only: a local-mode Protocol API as `main` runs
/// it, on port 0, under the file-descriptor limit the parent asked for.
/// Prints `listening <addr>` once bound; exits when its stdin closes.
#[test]
#[ignore = "the server half of the edge tests; started by them"]
fn edge_server_process() {
    let Some(data_dir) = std::env::var_os(SERVER_ENV) else {
        return;
    };
    if let Ok(limit) = std::env::var(FD_LIMIT_ENV) {
        let limit: u64 = limit.parse().unwrap();
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        rlimit::setrlimit(rlimit::Resource::NOFILE, limit, hard).unwrap();
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use clap::Parser;
        let data_dir = data_dir.to_str().unwrap();
        let config = protocol_api::config::Config::try_parse_from([
            "protocol-api",
            "--data-dir",
            data_dir,
            "--ensue-local-addr",
            "127.0.0.1:0",
            "--mode",
            "local",
        ])
        .unwrap();
        let composition = protocol_api::compose::compose(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        protocol_api::run(listener, composition.state, std::future::pending())
            .await
            .unwrap();
    });
}

/// The server as a child process, killed when dropped.
struct ChildServer {
    child: Child,
    addr: SocketAddr,
    _data_dir: tempfile::TempDir,
}

impl ChildServer {
    fn start(fd_limit: Option<u64>) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "edges::edge_server_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SERVER_ENV, data_dir.path())
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(limit) = fd_limit {
            command.env(FD_LIMIT_ENV, limit.to_string());
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (found, addresses) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The test harness may have printed the test's name on this line.
                if let Some((_, addr)) = line.split_once("listening ") {
                    let _ = found.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = addresses
            .recv_timeout(Duration::from_secs(60))
            .expect("the child server started");
        Self {
            child,
            addr,
            _data_dir: data_dir,
        }
    }

    /// The child's resident memory, in bytes.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kilobytes: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .map(|value| value.trim().parse().unwrap())
            .expect("VmRSS in /proc/<pid>/status");
        kilobytes * 1024
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as read off the wire.
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Reads one response: its head, then a `Content-Length` body.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    tokio::time::timeout(DEADLINE, async {
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the connection closed before a response");
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
            let mut chunk = [0u8; 65536];
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

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

/// Waits until the server closes `stream`, discarding what it sends first.
async fn closed(stream: &mut (impl AsyncRead + Unpin)) {
    tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = stream.read(&mut chunk).await {
            if read == 0 {
                return;
            }
        }
    })
    .await
    .expect("the server closed the connection within the deadline");
}

/// Writes `prefix`, then one more byte every 50 ms until the connection fails.
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    prefix: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if writer.write_all(prefix).await.is_err() {
            return;
        }
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Sends `requests` requests, each with a new method token of 50 KB of
/// random letters as an attacker would invent it, each answered 405 on the
/// same connection. (A random 16-letter head on one random 50 KB tail: as
/// unique as fully random tokens, and cheap to make in a debug build.)
async fn invented_methods(stream: &mut TcpStream, requests: usize, rng: &mut StdRng) {
    let tail: Vec<u8> = (0..50_000).map(|_| rng.gen_range(b'A'..=b'Z')).collect();
    for _ in 0..requests {
        let mut request: Vec<u8> = (0..16).map(|_| rng.gen_range(b'A'..=b'Z')).collect();
        request.extend_from_slice(&tail);
        request.extend_from_slice(b" / HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(&request).await.unwrap();
        assert_eq!(read_response(stream).await.status, 405);
    }
}

#[tokio::test]
async fn invented_methods_leave_memory_and_the_metrics_page_small() {
    let server = ChildServer::start(None);
    let mut rng = StdRng::from_entropy();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Warm up first, so the baseline includes what any request allocates
    // once (buffers, the allocator's arenas, the first route's labels).
    invented_methods(&mut stream, 50, &mut rng).await;
    assert_eq!(get(server.addr, "/metrics").await.status, 200);
    let baseline = server.rss_bytes();

    invented_methods(&mut stream, 2_000, &mut rng).await;
    let scrapes = (0..30).map(|_| tokio::spawn(get(server.addr, "/metrics")));
    for scrape in scrapes {
        assert_eq!(scrape.await.unwrap().status, 200);
    }
    // Requests are answered while and after the page is scraped.
    assert_eq!(get(server.addr, "/").await.status, 200);

    let grown = server.rss_bytes().saturating_sub(baseline);
    assert!(
        grown < 10 * 1024 * 1024,
        "RSS grew by {grown} bytes over the attack"
    );
    let page = get(server.addr, "/metrics").await.body;
    assert!(page.len() < 64 * 1024, "the page is {} bytes", page.len());
    assert!(
        page.contains(
            r#"delibera_http_requests_total{method="other",route="/",status="405"} 2050"#
        ),
        "{page}"
    );
}

#[tokio::test]
async fn idle_connections_past_the_fd_limit_do_not_stop_the_server() {
    const FD_LIMIT: u64 = 1024;
    const IDLE: usize = 1_100;
    // This process holds the idle connections: it needs descriptors for them.
    let own_limit = rlimit::increase_nofile_limit(4096).unwrap();
    assert!(
        own_limit > 1_200,
        "this process may open only {own_limit} descriptors"
    );
    let server = ChildServer::start(Some(FD_LIMIT));
    let idle: Vec<std::net::TcpStream> = (0..IDLE)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();

    // Answered at once, by shedding idle connections, not by waiting for
    // the header timeout to close them.
    let answered = tokio::time::timeout(
        delibera_serve::DEFAULT_HEADER_READ_TIMEOUT,
        get(server.addr, "/"),
    )
    .await
    .expect("GET / answered within the header timeout");
    assert_eq!(answered.status, 200);

    // The connections beyond the cap were the ones to go.
    let cap = delibera_serve::Edges::default()
        .capacity_under(Some(FD_LIMIT))
        .server;
    let must_close = IDLE + 1 - cap;
    let deadline = Instant::now() + DEADLINE;
    let mut closed_count = 0;
    while closed_count < must_close {
        assert!(
            Instant::now() < deadline,
            "only {closed_count} of {IDLE} idle connections were closed, expected at least {must_close}"
        );
        closed_count = idle.iter().filter(|stream| is_closed(stream)).count();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the server still answers the next client.
    assert_eq!(get(server.addr, "/").await.status, 200);
}

/// Whether the peer has closed `stream`, without waiting.
fn is_closed(mut stream: &std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Serves `state` with `edges` on a free port; drop the sender to stop.
async fn serve(state: AppState) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(protocol_api::run(listener, state, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn a_client_trickling_its_head_is_closed_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let header_timeout = Duration::from_millis(400);
    let mut state = app.state.clone();
    state.edges = delibera_serve::Edges::default().with_header_read_timeout(header_timeout);
    let (addr, _stop) = serve(state).await;

    let (mut reader, writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let started = Instant::now();
    let slowloris = trickle(writer, b"GET / HTTP/1.1\r\nx-slow: ");
    closed(&mut reader).await;
    assert!(started.elapsed() >= header_timeout);
    slowloris.abort();
    assert_eq!(get(addr, "/").await.status, 200);
}

#[tokio::test]
async fn a_body_still_arriving_at_the_body_timeout_gets_408_json() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let body_timeout = Duration::from_millis(400);
    let mut state = app.state.clone();
    state.edges = delibera_serve::Edges::default().with_body_read_timeout(body_timeout);
    let (addr, _stop) = serve(state).await;

    let (mut reader, writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let started = Instant::now();
    let slow_body = trickle(
        writer,
        b"POST /api/provision/coordinator HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"displayName\":\"",
    );
    let response = read_response(&mut reader).await;
    assert_eq!(response.status, 408, "{}", response.body);
    assert_eq!(
        response.body,
        r#"{"error":"request body not received within 400 ms"}"#
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(started.elapsed() >= body_timeout);
    closed(&mut reader).await;
    slow_body.abort();
}

#[tokio::test]
async fn expect_100_continue_with_a_10_mb_body_gets_413_json_before_100() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let (addr, _stop) = serve(app.state.clone()).await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/provision/coordinator HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 10485760\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.body, r#"{"error":"request body too large"}"#);
    closed(&mut stream).await;
}

#[tokio::test]
async fn a_small_body_after_100_continue_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let (addr, _stop) = serve(app.state.clone()).await;

    let body =
        br#"{"displayName":"Edge","nearAccount":"edge.testnet","minWorkers":1,"maxWorkers":3}"#;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/provision/coordinator HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream).await.status, 100);
    stream.write_all(body).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 202, "{}", response.body);
    assert!(response.body.contains("jobId"), "{}", response.body);
}
