//! A declared body over the limit is refused before it is read.

use delibera_serve::Edges;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{closed, read_response, router, serve};

#[tokio::test]
async fn expect_100_continue_with_a_large_content_length_gets_413_not_100() {
    let served = serve(
        router().router,
        Edges::default().with_max_body_bytes(Some(1024)),
    )
    .await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 10485760\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(
        response.body,
        r#"{"error":"request body too large: the limit is 1024 bytes"}"#
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    closed(&mut stream).await;
    served.stop().await.unwrap();
}

#[tokio::test]
async fn expect_100_continue_within_the_limit_still_continues() {
    let served = serve(
        router().router,
        Edges::default().with_max_body_bytes(Some(1024)),
    )
    .await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 100);
    stream.write_all(b"hello").await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!((response.status, response.body.as_str()), (200, "hello"));
    served.stop().await.unwrap();
}
