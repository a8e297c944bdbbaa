//! Serving a client connection as HTTP/1 or HTTP/2 with hyper, forwarding
//! each request upstream in the same protocol.
//!
//! `logical.rs` routes a request to its service and endpoint and records it;
//! `endpoint.rs` owns upstream connections; `upgrade.rs` handles protocol
//! switches; `headers.rs` hop-by-hop rules; `body.rs` the response body;
//! `head_timer.rs` the HTTP/1 header read timeout.

mod body;
mod endpoint;
mod head_timer;
pub(crate) mod headers;
mod logical;
mod retry;
mod upgrade;

use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

pub(crate) use body::ProxyBody;
pub(crate) use body::ReqBody;
pub(crate) use endpoint::{connect_tcp, Failed, Limits, Pool};
pub(crate) use logical::Conn;

use super::conn_io::ServerIo;
use super::executor::BoxingExecutor;
use crate::config::Http;

/// The HTTP version of a client connection, kept on the upstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Http1,
    Http2,
}

/// Serves one client connection until it closes or, after `drain` fires,
/// until its in-flight requests complete.
pub(crate) async fn serve(
    conn: Arc<Conn>,
    io: ServerIo,
    settings: &Http,
    drain: CancellationToken,
) {
    let version = conn.version;
    let metrics = conn.recorder.metrics().clone();
    let svc = service_fn(move |req| logical::handle(Arc::clone(&conn), req));
    let io = TokioIo::new(io);
    let result = match version {
        Version::Http1 => {
            let mut builder = http1::Builder::new();
            builder
                // One timer registration per connection, not per request.
                .timer(head_timer::HeadTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .max_buf_size(settings.max_header_bytes)
                // One write(2) of a flattened buffer beats writev(2) of a
                // head and a small body (docs/benchmarks.md).
                .writev(false)
                .keep_alive(true)
                // A client that shuts down its write side after the request
                // still gets the response (HTTP allows it; haproxy's default
                // too). It also spares hyper a read while the request is in
                // flight, which reallocated the 8 KiB read buffer per request.
                .half_close(true);
            let c = builder.serve_connection(io, svc).with_upgrades();
            tokio::pin!(c);
            tokio::select! {
                r = c.as_mut() => r,
                _ = drain.cancelled() => {
                    c.as_mut().graceful_shutdown();
                    c.await
                }
            }
        }
        Version::Http2 => {
            let mut builder = http2::Builder::new(BoxingExecutor);
            builder.timer(TokioTimer::new());
            let c = builder.serve_connection(io, svc);
            tokio::pin!(c);
            tokio::select! {
                r = c.as_mut() => r,
                _ = drain.cancelled() => {
                    c.as_mut().graceful_shutdown();
                    c.await
                }
            }
        }
    };
    if let Err(error) = result {
        let kind = classify_conn_error(&error);
        metrics
            .http_connection_errors
            .with_label_values(&[kind])
            .inc();
        tracing::debug!(%error, kind, "client connection ended with an error");
    }
}

/// A bounded label for why a client HTTP connection failed.
fn classify_conn_error(e: &hyper::Error) -> &'static str {
    if e.is_parse_too_large() {
        "header_too_large"
    } else if e.is_parse() || e.is_parse_status() {
        "malformed"
    } else if e.is_timeout() {
        "header_timeout"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else if e.is_canceled() || e.is_closed() {
        "closed"
    } else {
        "io"
    }
}
