//! A small HTTP backend for the demo and the tests: answers with its name,
//! echoes bodies, and can be asked for a status, a delay, trailers, or a
//! protocol switch. Serves HTTP/1.1 (with upgrades) or HTTP/2.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running backend; stops when dropped.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops as a killed pod does: the listener and every open connection
    /// close at once. [`start`] on the same address brings it back.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Starts a backend on `bind` (use port 0) speaking HTTP/1.1, or HTTP/2 when `h2`.
pub async fn start(name: &str, bind: SocketAddr, h2: bool) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let requests = Arc::new(AtomicU64::new(0));
    let backend = Backend {
        name: name.to_owned(),
        addr,
        requests: Arc::clone(&requests),
        stop: stop.clone(),
    };
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let name = Arc::clone(&name);
            let requests = Arc::clone(&requests);
            let stop = stop.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    respond(Arc::clone(&name), req)
                });
                let io = TokioIo::new(stream);
                // Dropping a connection on stop closes its socket mid-whatever.
                if h2 {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                } else {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades();
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
            });
        }
    });
    Ok(backend)
}

/// The backend's body: a fixed message, an echo, or data then trailers.
pub enum EchoBody {
    Fixed(Option<Bytes>),
    Echo(Incoming),
    WithTrailers(Option<Bytes>, Option<HeaderMap>),
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            EchoBody::Fixed(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
            EchoBody::Echo(inner) => Pin::new(inner).poll_frame(cx),
            EchoBody::WithTrailers(d, t) => {
                if let Some(d) = d.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(t.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }
}

fn fixed(status: StatusCode, name: &str, body: String) -> Response<EchoBody> {
    let mut rsp = Response::new(EchoBody::Fixed(Some(Bytes::from(body))));
    *rsp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(name) {
        rsp.headers_mut().insert("x-backend", v);
    }
    rsp
}

/// Routes: `/status/N`, `/delay/MS`, `/echo` (body echoed), `/headers`
/// (request headers listed), `/trailers` (grpc-style trailers), any
/// `Upgrade` request (101, then bytes echoed); else `NAME\n`.
async fn respond(
    name: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut rsp = fixed(StatusCode::SWITCHING_PROTOCOLS, &name, String::new());
        *rsp.body_mut() = EchoBody::Fixed(None);
        let h = rsp.headers_mut();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        h.insert(
            http::header::UPGRADE,
            req.headers()[http::header::UPGRADE].clone(),
        );
        return Ok(rsp);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(fixed(
            status,
            &name,
            format!("{name} {}\n", status.as_u16()),
        ));
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(fixed(StatusCode::OK, &name, format!("{name}\n")));
    }
    match path.as_str() {
        "/echo" => {
            let mut rsp = fixed(StatusCode::OK, &name, String::new());
            *rsp.body_mut() = EchoBody::Echo(req.into_body());
            Ok(rsp)
        }
        "/echo-length" => {
            let n = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len(),
                Err(_) => 0,
            };
            Ok(fixed(StatusCode::OK, &name, format!("{n}\n")))
        }
        "/headers" => {
            let mut lines = String::new();
            for (k, v) in req.headers() {
                lines.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
            }
            Ok(fixed(StatusCode::OK, &name, lines))
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let mut rsp = fixed(StatusCode::OK, &name, String::new());
            *rsp.body_mut() =
                EchoBody::WithTrailers(Some(Bytes::from(format!("{name}\n"))), Some(trailers));
            rsp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok(rsp)
        }
        _ => Ok(fixed(StatusCode::OK, &name, format!("{name}\n"))),
    }
}
