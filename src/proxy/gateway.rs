//! The east-west gateway (`--mode gateway`, `listeners.gateway`, port
//! 15443): SNI passthrough of mesh mTLS arriving from other clusters.
//!
//! A peer cluster's proxy connects with TLS whose SNI names a service port,
//! `outbound_.PORT_._.NAME.NAMESPACE.svc.cluster.local` (built for gateway
//! endpoints in `discovery/translate/kinds.rs`). The gateway lets rustls's
//! [`Acceptor`] parse the ClientHello (nothing here parses TLS by hand),
//! routes on the name to a ready endpoint of that service in the LOCAL
//! cluster, connects to the endpoint's address at `inbound.meshPort`,
//! replays the bytes it read and splices both ways until both sides finish.
//!
//! What it deliberately does not do: terminate TLS. It holds no key and
//! checks no certificate; the endpoint's proxy completes the handshake with
//! the caller and authorises it. Only exported services (a ServiceExport)
//! are reachable, and never through another cluster: a connection crosses
//! at most one cluster boundary. It speaks no TLS itself, so a refused
//! connection is reset rather than sent an alert.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, info, info_span, Instrument, Span};

use super::conn_io::ServerIo;
use super::http::connect_tcp;
use super::tcp::{self, TcpForward};
use super::Proxy;
use crate::balance::{InFlight, Pick, PickContext};
use crate::config::is_dns_label;
use crate::discovery::ServiceName;

/// A ClientHello that has not arrived within this many bytes never will:
/// real ones are well under 2 KiB, and a record carries at most 16 KiB.
const MAX_HELLO_BYTES: usize = 16 * 1024;
/// Local endpoints tried for one connection before giving up.
const CONNECT_ATTEMPTS: usize = 3;

const SNI_PREFIX: &str = "outbound_.";
const SNI_SUFFIX: &str = ".svc.cluster.local";

/// Accepts until `stop` fires; connections already accepted carry on, and
/// are tracked in `proxy.tasks` so shutdown waits for them.
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    metrics: GatewayMetrics,
    stop: CancellationToken,
) {
    let metrics = Arc::new(metrics);
    while let Some((stream, client)) = super::accept::next_connection(&listener, &stop).await {
        let span = info_span!("gateway", peer = %client, service = field::Empty);
        let conn = handle(Arc::clone(&proxy), Arc::clone(&metrics), stream, client);
        proxy.tasks.spawn(conn.instrument(span));
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    metrics: Arc<GatewayMetrics>,
    mut stream: TcpStream,
    client: SocketAddr,
) {
    let _active = Active::new(&metrics.active);
    let _ = stream.set_nodelay(true);
    let (hello_timeout, access_log) = {
        let state = proxy.store.load();
        let c = &state.config;
        (c.inbound.handshake_timeout, c.log.access_log)
    };

    let mut hello = Vec::new();
    let sni = match read_client_hello(&mut stream, &mut hello, hello_timeout).await {
        Hello::Sni(sni) => sni,
        other => return refuse(&metrics, &stream, other.outcome()),
    };
    let Some((service, port)) = parse_sni(&sni) else {
        debug!(%sni, "sni names no service port");
        return refuse(&metrics, &stream, Outcome::BadSni);
    };
    Span::current().record("service", field::display(&service));
    let (upstream, route, inflight) = match connect(&proxy, &service, port).await {
        Ok(c) => c,
        Err(outcome) => {
            info!(
                port,
                result = outcome.as_str(),
                "connection refused by gateway"
            );
            return refuse(&metrics, &stream, outcome);
        }
    };
    metrics.count(Outcome::Forwarded);
    let labels = |dir| [dir, service.name.as_str(), service.namespace.as_str()];
    // The ClientHello bytes are replayed first, then the socket is read:
    // the endpoint's proxy sees exactly what the client sent.
    let io = ServerIo::new(
        stream,
        Bytes::from(hello),
        metrics.bytes.with_label_values(&labels("in")),
        metrics.bytes.with_label_values(&labels("out")),
    );
    let fwd = TcpForward {
        client,
        service: &service,
        cluster: Some(Arc::clone(&route.pick.cluster)),
        upstream: route.upstream,
        access_log,
    };
    tcp::forward(io, upstream, fwd).await;
    // Held for the splice, so the endpoint counts the connection in flight.
    drop(inflight);
}

/// Counts a connection that is not forwarded, and closes it: reset, so the
/// peer sees a failure, unless the client is gone already.
fn refuse(metrics: &GatewayMetrics, stream: &TcpStream, outcome: Outcome) {
    metrics.count(outcome);
    if outcome != Outcome::Closed {
        tcp::reset(stream);
    }
}

// === ClientHello ===

/// What the first bytes of a connection turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A ClientHello naming a server (lowercased by rustls).
    Sni(String),
    /// A ClientHello without SNI, or with an IP address (which rustls treats as none).
    NoSni,
    /// Not TLS, or a malformed ClientHello.
    NotTls,
    /// No complete ClientHello within [`MAX_HELLO_BYTES`].
    TooLarge,
    /// No complete ClientHello within `inbound.handshakeTimeout`.
    Timeout,
    /// The client closed or reset the connection first.
    Closed,
}

impl Hello {
    /// The result of a connection that stops here; an SNI goes on to routing.
    fn outcome(&self) -> Outcome {
        match self {
            Hello::Sni(_) => Outcome::Forwarded,
            Hello::NoSni => Outcome::NoSni,
            Hello::NotTls => Outcome::NotTls,
            Hello::TooLarge => Outcome::HelloTooLarge,
            Hello::Timeout => Outcome::HelloTimeout,
            Hello::Closed => Outcome::Closed,
        }
    }
}

/// Reads until rustls has parsed a whole ClientHello. Every byte read is
/// left in `buf`, to be replayed to the endpoint.
pub(crate) async fn read_client_hello<R>(io: &mut R, buf: &mut Vec<u8>, timeout: Duration) -> Hello
where
    R: AsyncRead + Unpin,
{
    tokio::time::timeout(timeout, read_hello(io, buf))
        .await
        .unwrap_or(Hello::Timeout)
}

async fn read_hello<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> Hello {
    let mut acceptor = Acceptor::default();
    loop {
        let start = buf.len();
        let room = MAX_HELLO_BYTES - start;
        if room == 0 {
            return Hello::TooLarge;
        }
        buf.reserve(room.min(4096));
        match io.read_buf(&mut (&mut *buf).limit(room)).await {
            Ok(0) | Err(_) => return Hello::Closed,
            Ok(_) => {}
        }
        // Feed rustls what arrived; it may take it in several bites.
        let mut fresh = &buf[start..];
        while !fresh.is_empty() {
            match acceptor.read_tls(&mut fresh) {
                // No progress means rustls will take no more: malformed.
                Ok(0) | Err(_) => return Hello::NotTls,
                Ok(_) => {}
            }
            match acceptor.accept() {
                Ok(None) => {}
                Ok(Some(accepted)) => {
                    return match accepted.client_hello().server_name() {
                        Some(name) => Hello::Sni(name.to_owned()),
                        None => Hello::NoSni,
                    }
                }
                Err(_) => return Hello::NotTls,
            }
        }
    }
}

/// The service port an SNI names:
/// `outbound_.PORT_._.NAME.NAMESPACE.svc.cluster.local`, strictly (a
/// canonical port above 0, lowercase DNS labels, nothing else).
pub(crate) fn parse_sni(sni: &str) -> Option<(ServiceName, u16)> {
    let rest = sni.strip_prefix(SNI_PREFIX)?.strip_suffix(SNI_SUFFIX)?;
    let (port, rest) = rest.split_once("_._.")?;
    let canonical =
        !port.is_empty() && !port.starts_with('0') && port.bytes().all(|b| b.is_ascii_digit());
    let port = port.parse::<u16>().ok().filter(|_| canonical)?;
    let (name, namespace) = rest.split_once('.')?;
    (is_dns_label(name) && is_dns_label(namespace))
        .then(|| (ServiceName::new(name, namespace), port))
}

// === routing ===

/// Connects to a local endpoint of the service port, trying another (up to
/// [`CONNECT_ATTEMPTS`] in all) when a connect fails. The guard counts the
/// connection in flight on the endpoint while it is held.
async fn connect(
    proxy: &Proxy,
    service: &ServiceName,
    port: u16,
) -> Result<(TcpStream, Route, InFlight), Outcome> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let route = match route(proxy, service, port, &tried) {
            Ok(r) => r,
            // Every local endpoint was tried and refused.
            Err(Outcome::NoEndpoint) if !tried.is_empty() => return Err(Outcome::ConnectFailed),
            Err(outcome) => return Err(outcome),
        };
        let inflight = route.pick.state.start();
        match connect_tcp(route.upstream, route.connect_timeout).await {
            Ok(stream) => return Ok((stream, route, inflight)),
            Err(error) => {
                let pick = &route.pick;
                tcp::connect_failed(proxy, service, pick, inflight, &error);
                tried.push(pick.addr);
                if tried.len() >= CONNECT_ATTEMPTS {
                    debug!(%error, "connect failed; no attempts left");
                    return Err(Outcome::ConnectFailed);
                }
                let (name, ns) = (service.name.as_str(), service.namespace.as_str());
                proxy
                    .metrics
                    .retries
                    .with_label_values(&[name, ns, "connect"])
                    .inc();
                debug!(%error, "connect failed; trying another endpoint");
            }
        }
    }
}

struct Route {
    pick: Pick,
    /// The endpoint's address at the mesh port.
    upstream: SocketAddr,
    connect_timeout: Duration,
}

/// Picks a local endpoint not yet tried, from the state in force.
fn route(
    proxy: &Proxy,
    name: &ServiceName,
    port: u16,
    tried: &[SocketAddr],
) -> Result<Route, Outcome> {
    let state = proxy.store.load();
    let service = state
        .snapshot
        .service(name)
        .ok_or(Outcome::UnknownService)?;
    if service.export.is_none() {
        return Err(Outcome::NotExported);
    }
    let service_port = service.port(port).ok_or(Outcome::UnknownPort)?;
    let ctx = PickContext {
        exclude: tried,
        local_only: true,
        ..Default::default()
    };
    let pick = service_port
        .selector
        .select(&ctx)
        .map_err(|_| Outcome::NoEndpoint)?;
    let config = &state.config;
    Ok(Route {
        upstream: SocketAddr::new(pick.addr.ip(), config.inbound.mesh_port),
        connect_timeout: service
            .connect_timeout
            .unwrap_or(config.outbound.connect_timeout),
        pick,
    })
}

// === metrics ===

/// What became of a gateway connection (`result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Forwarded,
    NoSni,
    BadSni,
    UnknownService,
    NotExported,
    UnknownPort,
    NoEndpoint,
    ConnectFailed,
    NotTls,
    HelloTimeout,
    HelloTooLarge,
    Closed,
}

impl Outcome {
    const ALL: [Outcome; 12] = [
        Outcome::Forwarded,
        Outcome::NoSni,
        Outcome::BadSni,
        Outcome::UnknownService,
        Outcome::NotExported,
        Outcome::UnknownPort,
        Outcome::NoEndpoint,
        Outcome::ConnectFailed,
        Outcome::NotTls,
        Outcome::HelloTimeout,
        Outcome::HelloTooLarge,
        Outcome::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::NoSni => "no_sni",
            Outcome::BadSni => "bad_sni",
            Outcome::UnknownService => "unknown_service",
            Outcome::NotExported => "not_exported",
            Outcome::UnknownPort => "unknown_port",
            Outcome::NoEndpoint => "no_endpoint",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::NotTls => "not_tls",
            Outcome::HelloTimeout => "hello_timeout",
            Outcome::HelloTooLarge => "hello_too_large",
            Outcome::Closed => "closed",
        }
    }
}

/// The gateway's metrics. Connect errors, ejections and retries toward
/// local endpoints go to the data path's `strait_upstream_*`,
/// `strait_endpoint_ejections_total` and `strait_retries_total`.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    connections: IntCounterVec,
    bytes: IntCounterVec,
    active: IntGauge,
}

impl GatewayMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntCounterVec::new(
            Opts::new(
                "strait_gateway_connections_total",
                "Gateway connections, by what became of them (forwarded, or why not).",
            ),
            &["result"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "strait_gateway_bytes_total",
                "Bytes spliced by the gateway: in from the peer cluster, out to it.",
            ),
            &["direction", "service", "namespace"],
        )?;
        let active = IntGauge::new(
            "strait_gateway_connections_active",
            "Gateway connections open now.",
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(active.clone()))?;
        // Every result is listed from the start, at 0.
        for outcome in Outcome::ALL {
            connections.with_label_values(&[outcome.as_str()]);
        }
        Ok(Self {
            connections,
            bytes,
            active,
        })
    }

    fn count(&self, outcome: Outcome) {
        self.connections
            .with_label_values(&[outcome.as_str()])
            .inc();
    }
}

/// Holds `strait_gateway_connections_active` up for one connection.
struct Active(IntGauge);

impl Active {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
