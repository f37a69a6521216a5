//! The server's HTTP edge: a client that trickles its head or its body is
//! cut off, and everyone else is still answered.

use std::time::Duration;

use delibera_ensue_local::{Config, Edges, LocalEnsue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

/// Writes `prefix`, then one more byte every 50 ms until the connection fails.
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    prefix: Vec<u8>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if writer.write_all(&prefix).await.is_err() {
            return;
        }
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Everything the server sends until it closes the connection.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin)) -> String {
    tokio::time::timeout(DEADLINE, async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(read) = stream.read(&mut chunk).await {
            if read == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..read]);
        }
        String::from_utf8_lossy(&received).into_owned()
    })
    .await
    .expect("the server closed the connection within the deadline")
}

async fn healthz(server: &LocalEnsue) -> u16 {
    let url = format!("{}healthz", server.url());
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_client_trickling_its_head_is_closed_at_the_header_timeout() {
    let header_timeout = Duration::from_millis(400);
    let server = LocalEnsue::start(
        Config::default().with_edges(Edges::default().with_header_read_timeout(header_timeout)),
    )
    .await
    .unwrap();
    let (mut reader, writer) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let started = Instant::now();
    let slowloris = trickle(writer, b"POST / HTTP/1.1\r\nx-slow: ".to_vec());
    assert_eq!(until_closed(&mut reader).await, "");
    assert!(started.elapsed() >= header_timeout);
    slowloris.abort();
    assert_eq!(healthz(&server).await, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_still_arriving_at_the_body_timeout_gets_408() {
    let body_timeout = Duration::from_millis(400);
    let server = LocalEnsue::start(
        Config::default().with_edges(Edges::default().with_body_read_timeout(body_timeout)),
    )
    .await
    .unwrap();
    let (mut reader, writer) = TcpStream::connect(server.addr())
        .await
        .unwrap()
        .into_split();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{",
        server.api_key().expose()
    );
    let slow_body = trickle(writer, head.into_bytes());
    let received = until_closed(&mut reader).await;
    assert!(received.starts_with("HTTP/1.1 408 "), "{received}");
    assert!(
        received.ends_with(r#"{"error":"request body not received within 400 ms"}"#),
        "{received}"
    );
    slow_body.abort();
    assert_eq!(healthz(&server).await, 200);
    server.stop().await.unwrap();
}
