//! The connection cap: idle connections make room; busy ones are kept and
//! the newcomer is refused with 503.

use delibera_serve::Edges;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{DEADLINE, closed, get, read_response, router, serve};

#[tokio::test]
async fn at_the_cap_the_longest_waiting_idle_connection_makes_room() {
    let served = serve(
        router().router,
        Edges::default().with_max_connections(Some(3)),
    )
    .await;
    let mut idle = Vec::new();
    // Accepted in order, so the first has waited longest.
    for _ in 0..3 {
        idle.push(TcpStream::connect(served.addr).await.unwrap());
    }
    // A fourth connection while three wait: it is served, the first is closed.
    assert_eq!(get(served.addr, "/").await.body, "ok");
    closed(&mut idle[0]).await;
    served.stop().await.unwrap();
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_newcomer_gets_503() {
    let mut test_router = router();
    let served = serve(
        test_router.router,
        Edges::default().with_max_connections(Some(2)),
    )
    .await;
    let mut busy = Vec::new();
    let mut releases = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream
            .write_all(b"GET /hold HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let release = tokio::time::timeout(DEADLINE, test_router.held.recv())
            .await
            .unwrap()
            .unwrap();
        busy.push(stream);
        releases.push(release);
    }
    let refused = get(served.addr, "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.body,
        r#"{"error":"the server is at its connection limit; retry shortly"}"#
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    // The busy requests are untouched, and once they are answered their
    // connections are idle and make room again.
    for release in releases {
        release.send(()).unwrap();
    }
    for stream in &mut busy {
        assert_eq!(read_response(stream).await.body, "released");
    }
    assert_eq!(get(served.addr, "/").await.body, "ok");
    served.stop().await.unwrap();
}
