//! What the HTTP data-path tests share: a builder for the proxy's YAML
//! (services on unique loopback VIPs), hyper clients with a bounded wait,
//! a raw-socket client for bytes hyper would never send, and two small
//! upstreams the demo backend cannot stand in for: one that records every
//! request and counts connections (and speaks HTTP/1.1 or HTTP/2, whichever
//! the caller does), and a raw TCP echo.
//!
//! It does not start the proxy's own backend (`strait::test_util::start_backend`
//! does), and nothing here sleeps: every wait is bounded by [`WAIT`] and a
//! hang panics, naming what was awaited.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait::test_util::{unique_vip, Reply, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest any single step of a test may wait before it counts as a hang.
pub const WAIT: Duration = Duration::from_secs(10);

/// The service port every test service listens on (on its own VIP).
pub const SERVICE_PORT: u16 = 8080;

/// Awaits `f`, panicking if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no progress within {WAIT:?}"),
    }
}

/// A fresh service address: a unique loopback VIP and [`SERVICE_PORT`].
pub fn new_vip() -> SocketAddr {
    SocketAddr::new(unique_vip(), SERVICE_PORT)
}

// === impl Mesh ===

/// The proxy's config: VIP listeners, no transparent listener, and
/// services in namespace `test` whose endpoints are all on 127.0.0.1.
pub struct Mesh {
    outbound: String,
    http: String,
    docs: Vec<String>,
    slices: usize,
}

impl Default for Mesh {
    fn default() -> Self {
        Self {
            outbound: "{ connectTimeout: 1s }".to_owned(),
            http: "{}".to_owned(),
            docs: Vec::new(),
            slices: 0,
        }
    }
}

impl Mesh {
    /// The `outbound:` table, as YAML flow text.
    pub fn outbound(mut self, yaml: &str) -> Self {
        yaml.clone_into(&mut self.outbound);
        self
    }

    /// The `http:` table, as YAML flow text.
    pub fn http(mut self, yaml: &str) -> Self {
        yaml.clone_into(&mut self.http);
        self
    }

    /// A Service with one port on `vip`; without `app_protocol` the port's
    /// protocol is detected (the port is named `web`, which is no hint).
    pub fn service(self, name: &str, vip: SocketAddr, app_protocol: Option<&str>) -> Self {
        self.service_balanced(name, vip, app_protocol, "p2c-ewma")
    }

    /// As [`Mesh::service`], balanced within the cluster by `algorithm`
    /// (annotation `strait.io/lb-algorithm`).
    pub fn service_balanced(
        mut self,
        name: &str,
        vip: SocketAddr,
        app_protocol: Option<&str>,
        algorithm: &str,
    ) -> Self {
        let hint = app_protocol
            .map(|p| format!(", appProtocol: {p}"))
            .unwrap_or_default();
        let (ip, port) = (vip.ip(), vip.port());
        self.docs.push(format!(
            "  - apiVersion: v1
    kind: Service
    metadata: {{ name: {name}, namespace: test, annotations: {{ strait.io/lb-algorithm: {algorithm} }} }}
    spec:
      clusterIP: {ip}
      ports: [{{ name: web, port: {port}{hint} }}]
"
        ));
        self
    }

    /// One more EndpointSlice for `service`: one ready endpoint `127.0.0.1:port`.
    pub fn endpoint(mut self, service: &str, port: u16) -> Self {
        self.slices += 1;
        let n = self.slices;
        self.docs.push(format!(
            "  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {{ name: {service}-{n}, namespace: test, labels: {{ kubernetes.io/service-name: {service} }} }}
    addressType: IPv4
    endpoints: [{{ addresses: [\"127.0.0.1\"] }}]
    ports: [{{ name: web, port: {port} }}]
"
        ));
        self
    }

    pub fn yaml(&self) -> String {
        format!(
            "node: {{ cluster: cluster-1 }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, serviceVips: true }}
outbound: {}
http: {}
mesh:
{}",
            self.outbound,
            self.http,
            self.docs.concat()
        )
    }

    pub async fn start(&self) -> TestProxy {
        let yaml = self.yaml();
        match TestProxy::from_yaml(&yaml).await {
            Ok(p) => p,
            Err(e) => panic!("proxy starts: {e:#}\n{yaml}"),
        }
    }
}

// === hyper clients ===

/// The request body every test client sends: whole, empty, or streamed.
pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().boxed()
}

/// A body of unknown length (sent chunked over HTTP/1.1), fed through the
/// sender; it ends when the sender is dropped.
pub fn streamed() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, Streamed(rx).boxed())
}

struct Streamed(mpsc::Receiver<Bytes>);

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
    }
}

/// An HTTP/1.1 client connection to `addr`.
pub async fn h1(addr: SocketAddr) -> http1::SendRequest<TestBody> {
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (sender, conn) = within("h1 handshake", http1::handshake(TokioIo::new(stream)))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
pub async fn h2(addr: SocketAddr) -> http2::SendRequest<TestBody> {
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (sender, conn) = within(
        "h2 handshake",
        http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// A request for `path` at `addr`: origin form plus `Host` (HTTP/1.1).
pub fn request(method: Method, addr: SocketAddr, path: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(body)
        .unwrap()
}

/// A request for `path` at `addr` in absolute form, as HTTP/2 needs.
pub fn request_h2(
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: TestBody,
) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(body)
        .unwrap()
}

pub fn get(addr: SocketAddr, path: &str) -> Request<TestBody> {
    request(Method::GET, addr, path, empty())
}

/// Sends on an HTTP/1.1 connection (waiting until it is free) and reads the whole reply.
pub async fn send1(sender: &mut http1::SendRequest<TestBody>, req: Request<TestBody>) -> Reply {
    within("h1 connection ready", sender.ready()).await.unwrap();
    let rsp = within("h1 response", sender.send_request(req))
        .await
        .unwrap();
    read_reply(rsp).await
}

/// Sends on an HTTP/2 connection and reads the whole reply.
pub async fn send2(sender: &mut http2::SendRequest<TestBody>, req: Request<TestBody>) -> Reply {
    within("h2 connection ready", sender.ready()).await.unwrap();
    let rsp = within("h2 response", sender.send_request(req))
        .await
        .unwrap();
    read_reply(rsp).await
}

pub async fn read_reply(rsp: Response<Incoming>) -> Reply {
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = within("response body", rsp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

// === impl RawConn ===

/// A client that writes exact bytes and reads what comes back, each read
/// bounded by [`WAIT`].
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and header lines, as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes)).await.unwrap();
    }

    /// Reads once more into the buffer; 0 at end of stream. A reset counts
    /// as the end: the peer closed the connection.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match within("read", self.stream.read(&mut chunk)).await {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    /// The next response head (status line and headers, without the blank
    /// line), or `None` if the connection closed first.
    pub async fn read_head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return Some(head);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Exactly `n` bytes (from the buffer first); panics if the stream ends sooner.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await > 0,
                "connection closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// The next complete response (body framed by `Content-Length` or
    /// chunked), or `None` if the connection closed before a head.
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        let head = self.read_head().await?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let mut rsp = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 {
            return Some(rsp);
        }
        if let Some(len) = rsp.header("content-length") {
            let len = len.parse().unwrap();
            rsp.body = self.read_exact(len).await;
        } else if rsp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line = self.read_line().await;
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    // No trailers expected in these tests: the blank line ends it.
                    assert_eq!(self.read_line().await, "");
                    break;
                }
                let data = self.read_exact(size + 2).await;
                rsp.body.extend_from_slice(&data[..size]);
            }
        } else {
            rsp.body = self.read_to_close().await;
        }
        Some(rsp)
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill().await > 0, "connection closed mid-line");
        }
    }

    /// Everything until the peer closes (FIN or reset).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// === impl RecordingUpstream ===

/// One request as a [`RecordingUpstream`] received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// An upstream that answers `NAME\n` to everything, after reading the
/// request body, and records each request and each accepted connection.
/// It serves HTTP/2 to clients that open with the HTTP/2 preface and
/// HTTP/1.1 to the rest.
pub struct RecordingUpstream {
    pub name: String,
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl RecordingUpstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let connections = Arc::clone(&connections);
            let seen = Arc::clone(&seen);
            let name: Arc<str> = Arc::from(name);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_recorded(stream, Arc::clone(&name), Arc::clone(&seen)));
                }
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            connections,
            seen,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_recorded(stream: TcpStream, name: Arc<str>, seen: Arc<Mutex<Vec<Seen>>>) {
    // Read just enough to tell the HTTP/2 preface from anything else, then
    // replay those bytes to the server that gets the connection.
    let (mut rd, wr) = stream.into_split();
    let mut prefix = Vec::new();
    let mut chunk = [0u8; 64];
    while prefix.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&prefix) {
        let want = H2_PREFACE.len() - prefix.len();
        match rd.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => prefix.extend_from_slice(&chunk[..n]),
        }
    }
    let is_h2 = prefix == H2_PREFACE;
    let io = TokioIo::new(tokio::io::join(Cursor::new(prefix).chain(rd), wr));
    let svc = service_fn(move |req: Request<Incoming>| {
        let name = Arc::clone(&name);
        let seen = Arc::clone(&seen);
        async move {
            let (parts, body) = req.into_parts();
            let body_len = body.collect().await.map_or(0, |b| b.to_bytes().len());
            seen.lock().unwrap().push(Seen {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                version: parts.version,
                headers: parts.headers,
                body_len,
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{name}\n")))))
        }
    });
    if is_h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

// === impl TcpEcho ===

/// A raw TCP upstream that writes back every byte it reads.
pub struct TcpEcho {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port with nothing listening on it (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}
