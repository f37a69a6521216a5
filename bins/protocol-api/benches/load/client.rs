//! The load generator: a fixed set of keep-alive HTTP/1.1 connections, each
//! sending its next request as soon as the last one is answered (a closed
//! loop, as wrk does), with every request's latency recorded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One request, sent again and again.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    method: Method,
    path: String,
    body: Option<Bytes>,
    /// The status every answer should have; others are counted apart.
    expected: StatusCode,
}

impl Call {
    /// `GET path`, expecting `expected`.
    pub(crate) fn get(path: impl Into<String>, expected: StatusCode) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            body: None,
            expected,
        }
    }

    /// `POST path` with a JSON body, expecting `expected`.
    pub(crate) fn post_json(
        path: impl Into<String>,
        body: &serde_json::Value,
        expected: StatusCode,
    ) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            body: Some(Bytes::from(body.to_string())),
            expected,
        }
    }

    fn request(&self, host: &str) -> Request<Full<Bytes>> {
        let builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(header::HOST, host);
        match &self.body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone())),
            None => builder.body(Full::default()),
        }
        .expect("a valid request")
    }
}

/// What a run of requests saw.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    /// Every answered request's latency, in microseconds (sorted by
    /// [`Pool::drive`]).
    pub(crate) latencies_us: Vec<u32>,
    /// Answers with another status than the call expected.
    pub(crate) unexpected: u64,
    /// Requests that got no answer (the connection failed; it is reopened).
    pub(crate) failed: u64,
}

impl Samples {
    /// Answered requests.
    pub(crate) fn answered(&self) -> usize {
        self.latencies_us.len()
    }

    /// The latency below which `fraction` of the answers came, in ms.
    pub(crate) fn percentile_ms(&self, fraction: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let last = self.latencies_us.len() - 1;
        let index = ((last as f64) * fraction).round() as usize;
        f64::from(self.latencies_us[index.min(last)]) / 1000.0
    }

    fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.unexpected += other.unexpected;
        self.failed += other.failed;
    }
}

/// One open connection.
type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr)
        .await
        .expect("the server accepts a connection");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// Sends `call` on `sender` and reads the whole answer.
async fn send(sender: &mut Sender, host: &str, call: &Call) -> Result<(StatusCode, Bytes), ()> {
    sender.ready().await.map_err(drop)?;
    let response = sender
        .send_request(call.request(host))
        .await
        .map_err(drop)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(drop)?;
    Ok((status, body.to_bytes()))
}

/// Keep-alive connections to one server.
pub(crate) struct Pool {
    addr: SocketAddr,
    host: String,
    senders: Vec<Sender>,
}

impl Pool {
    /// Opens `connections` connections to `addr`.
    pub(crate) async fn connect(addr: SocketAddr, connections: usize) -> Self {
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections {
            senders.push(connect(addr).await);
        }
        Self {
            addr,
            host: addr.to_string(),
            senders,
        }
    }

    /// Sends `call` once on the first connection: its status and body.
    pub(crate) async fn once(&mut self, call: &Call) -> (StatusCode, Bytes) {
        let sender = self.senders.first_mut().expect("a connection");
        match send(sender, &self.host, call).await {
            Ok(answer) => answer,
            Err(()) => {
                *sender = connect(self.addr).await;
                send(sender, &self.host, call)
                    .await
                    .expect("the server answers")
            }
        }
    }

    /// Sends `call` once on every connection at the same time; the statuses
    /// (`None`: no answer).
    pub(crate) async fn each_once(&mut self, call: &Call) -> Vec<Option<StatusCode>> {
        let tasks: Vec<_> = self
            .senders
            .drain(..)
            .map(|mut sender| {
                let (call, host) = (call.clone(), self.host.clone());
                tokio::spawn(async move {
                    let status = send(&mut sender, &host, &call)
                        .await
                        .ok()
                        .map(|(status, _)| status);
                    (sender, status)
                })
            })
            .collect();
        let mut statuses = Vec::with_capacity(tasks.len());
        for task in tasks {
            let (sender, status) = task.await.expect("a request's task ends");
            self.senders.push(sender);
            statuses.push(status);
        }
        statuses
    }

    /// Every connection sends `call` in a loop for `duration`.
    pub(crate) async fn drive_for(&mut self, call: &Call, duration: Duration) -> Samples {
        let (stop, stopped) = watch::channel(false);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = stop.send(true);
        });
        let samples = self.drive(call, stopped).await;
        timer.await.expect("the timer ends");
        samples
    }

    /// Every connection sends `call` in a loop until `stop` turns true.
    pub(crate) async fn drive(&mut self, call: &Call, stop: watch::Receiver<bool>) -> Samples {
        let tasks: Vec<_> = self
            .senders
            .drain(..)
            .map(|mut sender| {
                let (call, host, addr, stop) =
                    (call.clone(), self.host.clone(), self.addr, stop.clone());
                tokio::spawn(async move {
                    let mut samples = Samples::default();
                    while !*stop.borrow() {
                        let started = Instant::now();
                        match send(&mut sender, &host, &call).await {
                            Ok((status, _)) => {
                                let micros = started.elapsed().as_micros();
                                samples
                                    .latencies_us
                                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                                if status != call.expected {
                                    samples.unexpected += 1;
                                }
                            }
                            Err(()) => {
                                samples.failed += 1;
                                sender = connect(addr).await;
                            }
                        }
                    }
                    (sender, samples)
                })
            })
            .collect();
        let mut merged = Samples::default();
        for task in tasks {
            let (sender, samples) = task.await.expect("a connection's loop ends");
            self.senders.push(sender);
            merged.merge(samples);
        }
        merged.latencies_us.sort_unstable();
        merged
    }
}
