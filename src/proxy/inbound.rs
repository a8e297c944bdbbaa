//! Inbound traffic: mesh mTLS from peer proxies (`listeners.mesh`, 15008)
//! and plaintext from outside the mesh (`listeners.inbound`, 15006).
//!
//! Mesh: TLS 1.3 with a client certificate that chains to the trust bundle
//! (else the handshake fails and is counted by reason), then HTTP/2. Each
//! stream names its service and port in the headers `mesh.rs` sets; the
//! caller's SPIFFE ID is authorized against the service's `ServiceExport`
//! (`serviceAccountName`: `*` admits any identity of the trust domain, a
//! name admits that service account, from any namespace unless
//! `inbound.callerNamespaces` lists them; a service without an export admits
//! any identity of the trust domain). Allowed streams go to the app at
//! `inbound.appHost` and the target port: HTTP in the protocol the app
//! spoke on the client side, with the caller's identity in
//! `x-forwarded-client-cert`; `CONNECT` streams as bytes. A denied HTTP
//! request gets `403`; a denied `CONNECT`, a `403` that the client proxy
//! turns into a reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use super::executor::BoxingExecutor;
use super::http::{connect_tcp, Limits, ProxyBody, ReqBody, Version};
use super::mesh::{PORT_HEADER, PROTOCOL_HEADER, SERVICE_HEADER, TARGET_PORT_HEADER};
use super::metrics::RequestRecorder;
use super::respond::{error_response, ERROR_HEADER};
use super::{accept, tcp, Proxy};
use crate::config::{Inbound, PlaintextInbound};
use crate::discovery::{Export, Service, ServiceName};
use crate::identity::{self, IdentityStore, SpiffeId};
use crate::metrics::Direction;

/// The header that carries the verified caller to the app, in Envoy's
/// format: `By=<our SPIFFE ID>;Hash=<SHA-256 of the caller's certificate>;URI=<caller's SPIFFE ID>`.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";
const XFCC: HeaderName = HeaderName::from_static(XFCC_HEADER);

/// Accepts mesh mTLS connections until `stop` fires.
pub(crate) async fn serve_mesh(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    identity: Arc<IdentityStore>,
    stop: CancellationToken,
) {
    while let Some((stream, client)) = accept::next_connection(&listener, &stop).await {
        let _ = stream.set_nodelay(true);
        let span = info_span!("inbound", peer = %client);
        let task = mesh_connection(Arc::clone(&proxy), Arc::clone(&identity), stream);
        proxy.tasks.spawn(task.instrument(span));
    }
}

/// A verified peer's connection.
struct MeshConn {
    proxy: Arc<Proxy>,
    /// The local cluster's name, for request metrics (`node` is restart-only).
    local_cluster: Arc<str>,
    peer: SpiffeId,
    xfcc: HeaderValue,
    recorder: RequestRecorder,
}

async fn mesh_connection(proxy: Arc<Proxy>, identity: Arc<IdentityStore>, stream: TcpStream) {
    let metrics = identity.metrics().clone();
    let count = |result: &str, reason: &str| {
        metrics
            .handshakes
            .with_label_values(&["inbound", result, reason])
            .inc();
    };
    let timeout = proxy.store.load().config.inbound.handshake_timeout;
    let acceptor = TlsAcceptor::from(identity.server_config());
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let reason = identity::handshake_failure_reason(&error);
            count("error", reason);
            debug!(%error, reason, "mesh handshake failed");
            return;
        }
        Err(_) => {
            count("error", "timeout");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let peer = match identity::peer_id(session) {
        Ok(id) if id.trust_domain() == identity.trust_domain() => id,
        Ok(id) => {
            count("error", "bad_certificate");
            debug!(peer = %id, "peer is outside the trust domain");
            return;
        }
        Err(error) => {
            count("error", "bad_certificate");
            debug!(%error, "peer has no SPIFFE ID");
            return;
        }
    };
    let hash = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| hex(ring::digest::digest(&ring::digest::SHA256, leaf).as_ref()))
        .unwrap_or_default();
    count("ok", "none");
    let xfcc = HeaderValue::from_str(&format!("By={};Hash={hash};URI={peer}", identity.id()))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let active = metrics
        .mesh_connections
        .with_label_values(&["inbound", &peer.to_string()]);
    active.inc();
    let local_cluster = Arc::from(proxy.store.load().config.node.cluster.as_str());
    let conn = Arc::new(MeshConn {
        proxy: Arc::clone(&proxy),
        local_cluster,
        peer,
        xfcc,
        recorder: RequestRecorder::new(proxy.metrics.clone(), Direction::Inbound),
    });
    let svc = service_fn(move |req| handle(Arc::clone(&conn), req));
    let mut builder = http2::Builder::new(BoxingExecutor);
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    let c = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(c);
    let result = tokio::select! {
        r = c.as_mut() => r,
        _ = proxy.drain.cancelled() => {
            c.as_mut().graceful_shutdown();
            c.await
        }
    };
    active.dec();
    if let Err(error) = result {
        debug!(%error, "mesh connection ended with an error");
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Why a mesh stream is not forwarded.
#[derive(Debug)]
enum Refusal {
    BadRequest(&'static str),
    UnknownService(ServiceName),
    UnknownPort(u16),
    Unauthorized { service: ServiceName },
}

impl Refusal {
    fn response(&self, peer: &SpiffeId) -> Response<ProxyBody> {
        let (status, message) = match self {
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, (*m).to_owned()),
            Refusal::UnknownService(s) => (StatusCode::NOT_FOUND, format!("no service {s} here")),
            Refusal::UnknownPort(p) => (
                StatusCode::NOT_FOUND,
                format!("port {p} is not a port of the service"),
            ),
            Refusal::Unauthorized { service } => (
                StatusCode::FORBIDDEN,
                format!("{peer} may not call {service}"),
            ),
        };
        let mut rsp = Response::new(ProxyBody::full(format!("{message}\n")));
        *rsp.status_mut() = status;
        if let Ok(v) = HeaderValue::from_str(&message) {
            rsp.headers_mut().insert(ERROR_HEADER, v);
        }
        rsp
    }
}

/// What a stream asks for, read from its headers.
struct Route {
    service: Arc<Service>,
    app: SocketAddr,
    version: Version,
    limits: Limits,
}

async fn handle(
    conn: Arc<MeshConn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let start = Instant::now();
    let route = match route(&conn, &req) {
        Ok(r) => r,
        Err(refusal) => {
            if let Refusal::Unauthorized { service } = &refusal {
                conn.proxy
                    .metrics
                    .authz_denials
                    .with_label_values(&[
                        service.name.as_str(),
                        service.namespace.as_str(),
                        &conn.peer.to_string(),
                    ])
                    .inc();
                debug!(peer = %conn.peer, %service, "caller not authorized");
            }
            return Ok(refusal.response(&conn.peer));
        }
    };
    let rsp = if req.method() == Method::CONNECT {
        forward_stream(route.app, req, route.limits.connect_timeout).await
    } else {
        forward_http(&conn, &route, req).await
    };
    let cluster = &conn.local_cluster;
    conn.recorder.record(
        &route.service.name,
        cluster,
        rsp.status().as_u16(),
        start.elapsed(),
    );
    Ok(rsp)
}

fn route(conn: &MeshConn, req: &Request<Incoming>) -> Result<Route, Refusal> {
    let headers = req.headers();
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let number = |name: &HeaderName| text(name).and_then(|v| v.parse::<u16>().ok());
    let state = conn.proxy.store.load();
    let config = &state.config;
    // Looked up by the header value itself; a `ServiceName` is made only
    // to say what was refused.
    let named = headers.get(&SERVICE_HEADER);
    let Some(svc) = named.and_then(|v| state.snapshot.service_by_mesh_name(v)) else {
        let asked = text(&SERVICE_HEADER)
            .and_then(|s| s.split_once('.'))
            .map(|(name, ns)| ServiceName::new(name, ns))
            .ok_or(Refusal::BadRequest("missing or malformed x-strait-service"))?;
        return Err(Refusal::UnknownService(asked));
    };
    if !authorized(svc.export.as_ref(), &conn.peer, &config.inbound) {
        return Err(Refusal::Unauthorized {
            service: svc.name.clone(),
        });
    }
    let service_port = number(&PORT_HEADER);
    let target_port = resolve_port(svc, service_port, number(&TARGET_PORT_HEADER))?;
    let version = match text(&PROTOCOL_HEADER) {
        Some("http2") => Version::Http2,
        _ => Version::Http1,
    };
    Ok(Route {
        service: Arc::clone(svc),
        app: SocketAddr::new(config.inbound.app_host, target_port),
        version,
        limits: Limits {
            connect_timeout: config.outbound.connect_timeout,
            max_idle: config.outbound.pool_max_idle_per_endpoint,
        },
    })
}

/// The app port a stream goes to. A direct caller names the pod's port,
/// which must be one of the service's local endpoint ports; a caller through
/// a gateway knows only the service port, mapped here to the local
/// endpoints' port.
fn resolve_port(
    service: &Service,
    service_port: Option<u16>,
    target_port: Option<u16>,
) -> Result<u16, Refusal> {
    fn local_ports(sp: &crate::discovery::ServicePort) -> impl Iterator<Item = u16> + '_ {
        sp.clusters
            .iter()
            .filter(|c| c.local)
            .flat_map(|c| c.endpoints.iter().map(|e| e.addr.port()))
    }
    match (target_port, service_port) {
        (Some(target), _) => {
            let known = service
                .ports
                .iter()
                .any(|sp| sp.port == target || local_ports(sp).any(|p| p == target));
            if known {
                Ok(target)
            } else {
                Err(Refusal::UnknownPort(target))
            }
        }
        (None, Some(port)) => {
            let sp = service.port(port).ok_or(Refusal::UnknownPort(port))?;
            Ok(local_ports(sp).next().unwrap_or(port))
        }
        (None, None) => Err(Refusal::BadRequest("missing x-strait-port")),
    }
}

/// Whether `peer` may call a service with this export.
pub(crate) fn authorized(export: Option<&Export>, peer: &SpiffeId, inbound: &Inbound) -> bool {
    let Some(export) = export else {
        // Not exported: in-mesh callers (already in our trust domain).
        return true;
    };
    if export.service_account == "*" {
        return true;
    }
    export.service_account == peer.service_account()
        && (inbound.caller_namespaces.is_empty()
            || inbound
                .caller_namespaces
                .iter()
                .any(|ns| ns == peer.namespace()))
}

/// A mesh HTTP stream to the app, in the app's protocol.
async fn forward_http(
    conn: &MeshConn,
    route: &Route,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    for h in [
        SERVICE_HEADER,
        PORT_HEADER,
        TARGET_PORT_HEADER,
        PROTOCOL_HEADER,
    ] {
        parts.headers.remove(h);
    }
    parts.headers.insert(XFCC, conn.xfcc.clone());
    if route.version == Version::Http1 {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(pq);
        }
        parts.version = http::Version::HTTP_11;
    }
    let req = Request::from_parts(parts, ReqBody::Stream(body));
    match conn
        .proxy
        .pool
        .send(route.app, route.version, req, route.limits)
        .await
    {
        Ok(mut rsp) => {
            *rsp.version_mut() = http::Version::HTTP_2;
            rsp
        }
        Err(failed) => {
            debug!(error = %failed.error, "app request failed");
            error_response(&failed.error)
        }
    }
}

/// A `CONNECT` stream: connect to the app, answer 200, then copy bytes.
async fn forward_stream(
    app: SocketAddr,
    mut req: Request<Incoming>,
    connect_timeout: Duration,
) -> Response<ProxyBody> {
    let mut upstream = match connect_tcp(app, connect_timeout).await {
        Ok(s) => s,
        Err(error) => return error_response(&error),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let mut downstream = TokioIo::new(upgraded);
                    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
                        Ok((rx, tx)) => debug!(rx, tx, "mesh stream closed"),
                        Err(error) => debug!(%error, "mesh stream ended with an error"),
                    }
                }
                Err(error) => debug!(%error, "mesh CONNECT did not complete"),
            }
        }
        .in_current_span(),
    );
    Response::new(ProxyBody::full(bytes::Bytes::new()))
}

/// Accepts plaintext redirected from outside the mesh until `stop` fires:
/// forwarded to the app as bytes (`permissive`) or reset (`strict`).
pub(crate) async fn serve_plaintext(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) {
    let local = listener.local_addr().ok();
    while let Some((stream, client)) = accept::next_connection(&listener, &stop).await {
        let count = |action: &str| {
            proxy
                .metrics
                .inbound_plaintext
                .with_label_values(&[action])
                .inc()
        };
        let dst = match accept::original_dst(&stream) {
            Some(dst) if Some(dst) != local => dst,
            _ => {
                count("not_redirected");
                continue;
            }
        };
        let (mode, app_host, timeout) = {
            let state = proxy.store.load();
            let c = &state.config;
            (
                c.inbound.plaintext,
                c.inbound.app_host,
                c.outbound.connect_timeout,
            )
        };
        if mode == PlaintextInbound::Strict {
            count("refused");
            debug!(%client, %dst, "plaintext refused (strict)");
            tcp::reset(&stream);
            continue;
        }
        count("forwarded");
        let span = info_span!("inbound_plaintext", peer = %client, %dst);
        proxy.tasks.spawn(
            async move {
                let mut stream = stream;
                let app = SocketAddr::new(app_host, dst.port());
                match connect_tcp(app, timeout).await {
                    Ok(mut upstream) => {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                    }
                    Err(error) => {
                        debug!(%error, "app connect failed");
                        tcp::reset(&stream);
                    }
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(sa: &str) -> Export {
        Export {
            service_account: sa.to_owned(),
        }
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa)
    }

    #[test]
    fn an_export_naming_a_service_account_admits_only_it() {
        let inbound = Inbound::default();
        let e = export("sleep");
        assert!(authorized(Some(&e), &id("any", "sleep"), &inbound));
        assert!(!authorized(Some(&e), &id("any", "curl"), &inbound));
    }

    #[test]
    fn caller_namespaces_restrict_the_named_account() {
        let inbound = Inbound {
            caller_namespaces: vec!["sleep".to_owned()],
            ..Inbound::default()
        };
        let e = export("sleep");
        assert!(authorized(Some(&e), &id("sleep", "sleep"), &inbound));
        assert!(!authorized(Some(&e), &id("other", "sleep"), &inbound));
    }

    #[test]
    fn a_wildcard_or_no_export_admits_the_mesh() {
        let inbound = Inbound::default();
        assert!(authorized(Some(&export("*")), &id("x", "y"), &inbound));
        assert!(authorized(None, &id("x", "y"), &inbound));
    }

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }
}
