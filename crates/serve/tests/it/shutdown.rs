//! Graceful shutdown: in-flight requests finish, idle connections close, and
//! a request that outlasts the grace is cut.

use std::time::Duration;

use delibera_serve::Edges;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{DEADLINE, closed, read_response, router, serve};

async fn hold(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /hold HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_closes_idle_connections() {
    let mut test_router = router();
    let served = serve(test_router.router, Edges::default()).await;
    let mut idle = TcpStream::connect(served.addr).await.unwrap();
    let mut busy = hold(served.addr).await;
    let release = tokio::time::timeout(DEADLINE, test_router.held.recv())
        .await
        .unwrap()
        .unwrap();
    let stopping = tokio::spawn(served.stop());
    closed(&mut idle).await;
    release.send(()).unwrap();
    let response = read_response(&mut busy).await;
    assert_eq!(response.body, "released");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    closed(&mut busy).await;
}

#[tokio::test]
async fn a_request_that_outlasts_the_grace_is_cut() {
    let mut test_router = router();
    let served = serve(
        test_router.router,
        Edges::default().with_shutdown_grace(Duration::from_millis(200)),
    )
    .await;
    let mut busy = hold(served.addr).await;
    let _release = tokio::time::timeout(DEADLINE, test_router.held.recv())
        .await
        .unwrap()
        .unwrap();
    served.stop().await.unwrap();
    closed(&mut busy).await;
}

#[tokio::test]
async fn the_listener_is_closed_once_shutdown_starts() {
    let served = serve(router().router, Edges::default()).await;
    let addr = served.addr;
    served.stop().await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
