//! Accepting client connections: the transparent listener (original
//! destination from `SO_ORIGINAL_DST`) and per-service VIP listeners (the
//! destination is the listener's own address). Each connection is matched to
//! a service port, its protocol settled, and served in its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::conn_io::ServerIo;
use super::detect::{detect, Detected};
use super::http::{self, Conn, Version};
use super::metrics::RequestRecorder;
use super::tcp::{self, TcpForward};
use super::Proxy;
use crate::config::UnknownDestination;
use crate::discovery::Protocol;
use crate::metrics::Direction;

/// How a listener learns a connection's destination.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Destination {
    /// iptables REDIRECT: ask the kernel for the original destination.
    Original,
    /// A listener bound on a service VIP: the destination is the listener itself.
    Fixed(SocketAddr),
}

pub(crate) async fn serve_transparent(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    serve(listener, Destination::Original, proxy, stop).await
}

/// Accepts until `stop` fires; connections already accepted carry on.
pub(crate) async fn serve(
    listener: TcpListener,
    dest: Destination,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    let local = listener.local_addr().ok();
    while let Some((stream, client)) = next_connection(&listener, &stop).await {
        let dst = match dest {
            Destination::Fixed(addr) => addr,
            Destination::Original => match original_dst(&stream) {
                Some(dst) if Some(dst) != local => dst,
                _ => {
                    // Not redirected by iptables: someone connected to the
                    // capture port itself. Serving it would loop.
                    proxy
                        .metrics
                        .unknown_destination
                        .with_label_values(&["not_redirected"])
                        .inc();
                    debug!(%client, "connection to the outbound port was not redirected; closing");
                    continue;
                }
            },
        };
        let span = info_span!("outbound", peer = %client, %dst);
        let p = Arc::clone(&proxy);
        proxy
            .tasks
            .spawn(handle(p, stream, client, dst).instrument(span));
    }
}

/// The next accepted connection, or `None` once `stop` fires. Accept errors
/// (out of file descriptors and the like) back off briefly instead of
/// spinning; the listener itself is still fine.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return None,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr().ok()? {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    addr.ok()?.as_socket()
}

/// Settings for one connection, copied out of the state in force.
struct ConnSettings {
    protocol: Option<Protocol>,
    service: Option<crate::discovery::ServiceName>,
    detect_timeout: Duration,
    connect_timeout: Duration,
    unknown: UnknownDestination,
    access_log: bool,
    http: crate::config::Http,
}

async fn handle(proxy: Arc<Proxy>, mut stream: TcpStream, client: SocketAddr, dst: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let s = {
        let state = proxy.store.load();
        let target = state.snapshot.target(&dst);
        let c = &state.config;
        ConnSettings {
            protocol: target.map(|t| t.port().protocol),
            service: target.map(|t| t.service.name.clone()),
            detect_timeout: c.outbound.detect_timeout,
            connect_timeout: target
                .and_then(|t| t.service.connect_timeout)
                .unwrap_or(c.outbound.connect_timeout),
            unknown: c.outbound.unknown_destination,
            access_log: c.log.access_log,
            http: c.http.clone(),
        }
    };
    let (Some(service), Some(protocol)) = (s.service.clone(), s.protocol) else {
        return unknown_destination(&proxy, stream, dst, &s).await;
    };

    let m = &proxy.metrics;
    let labels = [
        Direction::Outbound.as_str(),
        service.name.as_str(),
        service.namespace.as_str(),
    ];
    m.connections_opened.with_label_values(&labels).inc();
    let (detected, prefix) = match protocol {
        Protocol::Http1 => (Detected::Http1, Bytes::new()),
        Protocol::Http2 => (Detected::Http2, Bytes::new()),
        Protocol::Opaque => (Detected::Opaque, Bytes::new()),
        Protocol::Detect => {
            let (d, prefix) = detect(&mut stream, s.detect_timeout).await;
            m.detections.with_label_values(&[d.as_str()]).inc();
            (d, prefix)
        }
    };
    let io = ServerIo::new(
        stream,
        prefix,
        m.received_bytes.with_label_values(&labels),
        m.sent_bytes.with_label_values(&labels),
    );
    match detected {
        Detected::Http1 | Detected::Http2 => {
            let version = if detected == Detected::Http1 {
                Version::Http1
            } else {
                Version::Http2
            };
            let conn = Arc::new(Conn {
                proxy: Arc::clone(&proxy),
                dst,
                client,
                version,
                recorder: RequestRecorder::new(m.clone(), Direction::Outbound),
            });
            http::serve(conn, io, &s.http, proxy.drain.clone()).await;
        }
        Detected::Opaque => {
            let max_attempts = proxy
                .store
                .load()
                .config
                .balance
                .retries
                .max_attempts
                .clamp(1, 10);
            match tcp::connect_with_failover(&proxy, dst, &service, s.connect_timeout, max_attempts)
                .await
            {
                Ok((upstream, pick, inflight)) => {
                    let fwd = TcpForward {
                        client,
                        service: &service,
                        cluster: Some(pick.cluster),
                        upstream: pick.addr,
                        access_log: s.access_log,
                    };
                    tcp::forward(io, upstream, fwd).await;
                    drop(inflight);
                }
                Err(error) => {
                    tcp::reset(io.tcp());
                    tcp::count_error(m, &service, &error);
                }
            }
        }
        Detected::Closed => {}
    }
    m.connections_closed.with_label_values(&labels).inc();
}

/// A destination that is no mesh service: forward untouched, or refuse.
async fn unknown_destination(proxy: &Proxy, stream: TcpStream, dst: SocketAddr, s: &ConnSettings) {
    let counter = |action: &str| {
        proxy
            .metrics
            .unknown_destination
            .with_label_values(&[action])
            .inc()
    };
    match s.unknown {
        UnknownDestination::Deny => {
            counter("deny");
            tcp::reset(&stream);
        }
        UnknownDestination::Passthrough => {
            counter("passthrough");
            let mut client = stream;
            match http::connect_tcp(dst, s.connect_timeout).await {
                Ok(mut upstream) => {
                    let r = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    debug!(?r, "passthrough connection closed");
                }
                Err(error) => {
                    debug!(%error, "passthrough connect failed");
                    tcp::reset(&client);
                }
            }
        }
    }
}
