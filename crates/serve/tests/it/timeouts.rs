//! Header-read, idle and body-read deadlines.

use std::time::Duration;

use delibera_serve::Edges;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::{closed, get, read_response, router, serve, trickle};

#[tokio::test]
async fn a_client_trickling_its_head_is_closed_at_the_header_timeout() {
    let header_timeout = Duration::from_millis(400);
    let served = serve(
        router().router,
        Edges::default().with_header_read_timeout(header_timeout),
    )
    .await;
    let stream = TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, writer) = stream.into_split();
    // Slowloris: a header byte every 50 ms, never the blank line.
    let trickle = trickle(writer, b"GET / HTTP/1.1\r\nx-slow: ");
    closed(&mut reader).await;
    assert!(started.elapsed() >= header_timeout);
    trickle.abort();
    // The server answers everyone else all along.
    assert_eq!(get(served.addr, "/").await.status, 200);
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_connection_owes_its_first_head_within_the_header_timeout() {
    // The idle timeout is long: only the header timeout can close this one in time.
    let served = serve(
        router().router,
        Edges::default()
            .with_header_read_timeout(Duration::from_millis(300))
            .with_idle_timeout(Duration::from_secs(3600)),
    )
    .await;
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    closed(&mut silent).await;
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_at_the_idle_timeout_not_the_header_timeout() {
    let idle_timeout = Duration::from_millis(900);
    let served = serve(
        router().router,
        Edges::default()
            .with_header_read_timeout(Duration::from_millis(200))
            .with_idle_timeout(idle_timeout),
    )
    .await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.body, "ok");
    let answered = Instant::now();
    closed(&mut stream).await;
    assert!(
        answered.elapsed() >= idle_timeout,
        "closed after {:?}, before the idle timeout",
        answered.elapsed()
    );
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_head_started_after_an_idle_pause_is_held_to_the_header_timeout() {
    // The connection's timer is set for the long idle wait when the next
    // head starts: only the header timeout can close this one in time.
    let header_timeout = Duration::from_millis(300);
    let served = serve(
        router().router,
        Edges::default()
            .with_header_read_timeout(header_timeout)
            .with_idle_timeout(Duration::from_secs(3600)),
    )
    .await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.body, "ok");
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    closed(&mut stream).await;
    assert!(started.elapsed() >= header_timeout);
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_request_on_a_keep_alive_connection_is_served() {
    let served = serve(router().router, Edges::default()).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.body, "ok");
    }
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_still_arriving_at_the_body_timeout_gets_408_and_a_closed_connection() {
    let body_timeout = Duration::from_millis(400);
    let served = serve(
        router().router,
        Edges::default().with_body_read_timeout(body_timeout),
    )
    .await;
    let stream = TcpStream::connect(served.addr).await.unwrap();
    let (mut reader, writer) = stream.into_split();
    let started = Instant::now();
    let trickle = trickle(
        writer,
        b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\n",
    );
    let response = read_response(&mut reader).await;
    assert_eq!(response.status, 408);
    assert_eq!(
        response.body,
        r#"{"error":"request body not received within 400 ms"}"#
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(started.elapsed() >= body_timeout);
    closed(&mut reader).await;
    trickle.abort();
    served.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_gets_its_own_address() {
    let served = serve(router().router, Edges::default()).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /peer HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.body, local.to_string());
    served.stop().await.unwrap();
}
