//! Outbound mesh mTLS: proxy-to-proxy connections.
//!
//! One multiplexed HTTP/2 connection over TLS 1.3 per peer (a pod's proxy
//! at `inbound.meshPort`, or a remote gateway with the SNI naming the
//! service), shared by every request to it. An app's HTTP request, HTTP/1
//! or h2, travels as one h2 stream; an opaque TCP connection (and an
//! HTTP/1 `Upgrade`) as an HTTP/2 `CONNECT` stream. After the handshake the
//! peer's SPIFFE ID is checked against what the service expects:
//! `spiffe://TD/ns/NS/sa/SA` exactly when the service names its service
//! account (`strait.io/service-account`), else any identity of the service's
//! namespace in our trust domain. A connection made before a certificate
//! rotation is not reused for new requests once the new certificate is in
//! force: it finishes its streams and closes, and the next request
//! handshakes with the new certificate.
//!
//! Headers on the mesh hop, set here and consumed by `inbound.rs`:
//! [`SERVICE_HEADER`] (`name.namespace`), [`PORT_HEADER`] (the service
//! port), [`TARGET_PORT_HEADER`] (the pod's port, direct endpoints only) and
//! [`PROTOCOL_HEADER`] (`http1` or `http2`: what the app spoke, restored on
//! the far side).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{debug, Instrument};

use super::executor::BoxingExecutor;
use super::http::{connect_tcp, Failed, ProxyBody, ReqBody, Version};
use super::Error;
use crate::discovery::{EndpointKind, Service, ServiceName};
use crate::identity::{self, HandshakeFailure, IdentityStore, SpiffeId};

// Header names, not `&str`: a `&str` name is parsed and checked on every
// insert and lookup, twice per request on each side of the mesh hop.
pub(crate) const SERVICE_HEADER: HeaderName = HeaderName::from_static("x-strait-service");
pub(crate) const PORT_HEADER: HeaderName = HeaderName::from_static("x-strait-port");
pub(crate) const TARGET_PORT_HEADER: HeaderName = HeaderName::from_static("x-strait-target-port");
pub(crate) const PROTOCOL_HEADER: HeaderName = HeaderName::from_static("x-strait-protocol");

/// The identity a peer must present, borrowed from the service and the
/// trust domain (nothing is allocated per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected<'a> {
    trust_domain: &'a str,
    namespace: &'a str,
    /// `None`: any service account of the namespace.
    service_account: Option<&'a str>,
}

impl<'a> Expected<'a> {
    pub fn for_service(service: &'a Service, trust_domain: &'a str) -> Self {
        Expected {
            trust_domain,
            namespace: &service.name.namespace,
            service_account: service.service_account.as_deref(),
        }
    }

    pub fn admits(&self, id: &SpiffeId) -> bool {
        id.trust_domain() == self.trust_domain
            && id.namespace() == self.namespace
            && self
                .service_account
                .is_none_or(|sa| id.service_account() == sa)
    }
}

impl std::fmt::Display for Expected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sa = self.service_account.unwrap_or("*");
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{sa}",
            self.trust_domain, self.namespace
        )
    }
}

/// Where and to whom one request or connection goes over the mesh.
#[derive(Debug)]
pub(crate) struct MeshTarget<'a> {
    /// The peer to connect to: the pod's address at the mesh port, or the gateway.
    pub peer: SocketAddr,
    /// The gateway's SNI, for gateway endpoints.
    pub sni: Option<&'a Arc<str>>,
    pub expected: Expected<'a>,
    pub service: &'a ServiceName,
    /// `x-strait-service`, made once per snapshot.
    pub service_header: &'a HeaderValue,
    pub service_port: u16,
    /// The pod's port, for direct endpoints.
    pub target_port: Option<u16>,
    /// The endpoint as balancing knows it (for errors).
    pub endpoint: SocketAddr,
}

impl<'a> MeshTarget<'a> {
    /// The mesh target of a picked endpoint.
    pub fn new(
        endpoint: SocketAddr,
        kind: &'a EndpointKind,
        service: &'a Service,
        service_port: u16,
        mesh_port: u16,
        trust_domain: &'a str,
    ) -> Self {
        let expected = Expected::for_service(service, trust_domain);
        let service_header = &service.mesh_name;
        match kind {
            EndpointKind::Direct => MeshTarget {
                peer: SocketAddr::new(endpoint.ip(), mesh_port),
                sni: None,
                expected,
                service: &service.name,
                service_header,
                service_port,
                target_port: Some(endpoint.port()),
                endpoint,
            },
            EndpointKind::Gateway { sni } => MeshTarget {
                peer: endpoint,
                sni: Some(sni),
                expected,
                service: &service.name,
                service_header,
                service_port,
                target_port: None,
                endpoint,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    addr: SocketAddr,
    sni: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct MeshConn {
    sender: http2::SendRequest<ReqBody>,
    /// The identity generation it was made with.
    generation: u64,
    peer: SpiffeId,
}

/// The pooled mesh connections, one per peer.
#[derive(Debug, Default)]
pub(crate) struct MeshPool {
    conns: Mutex<HashMap<PeerKey, MeshConn>>,
    /// Held while a connection to the peer is being made.
    connecting: Mutex<HashMap<PeerKey, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold no invariant a panicking holder could break halfway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MeshPool {
    /// Sends an app's HTTP request (of `version`) as an h2 stream to the peer.
    pub async fn send(
        &self,
        identity: &IdentityStore,
        target: &MeshTarget<'_>,
        version: Version,
        mut req: Request<ReqBody>,
        connect_timeout: Duration,
    ) -> Result<Response<ProxyBody>, Failed> {
        if let Err(error) = to_mesh_request(&mut req, version, target) {
            return Err(Failed {
                error,
                unsent: None,
            });
        }
        let mut sender = match self.sender(identity, target, connect_timeout).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, from_mesh_request(req, version))),
        };
        if let Err(source) = sender.ready().await {
            let error = upstream_error(identity, target, source);
            return Err(Failed::unsent(error, from_mesh_request(req, version)));
        }
        match sender.try_send_request(req).await {
            Ok(mut rsp) => {
                if version == Version::Http1 {
                    *rsp.version_mut() = http::Version::HTTP_11;
                }
                Ok(rsp.map(|body| ProxyBody::upstream(body, None)))
            }
            Err(mut e) => {
                let unsent = e.take_message().map(|r| from_mesh_request(r, version));
                let error = upstream_error(identity, target, e.into_error());
                Err(Failed { error, unsent })
            }
        }
    }

    /// Opens an HTTP/2 `CONNECT` stream to the target's port: a byte stream
    /// to the app behind the peer proxy.
    pub async fn open_stream(
        &self,
        identity: &IdentityStore,
        target: &MeshTarget<'_>,
        connect_timeout: Duration,
    ) -> Result<TokioIo<Upgraded>, Error> {
        let mut sender = self.sender(identity, target, connect_timeout).await?;
        let authority = match target.target_port {
            Some(port) => format!("{}:{port}", target.endpoint.ip()),
            None => format!(
                "{}.{}:{}",
                target.service.name, target.service.namespace, target.service_port
            ),
        };
        let uri = Uri::builder()
            .authority(authority.as_str())
            .build()
            .map_err(|_| Error::MeshRefused {
                addr: target.endpoint,
                status: StatusCode::BAD_REQUEST,
            })?;
        let mut req = Request::new(ReqBody::Replay(None));
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        set_mesh_headers(&mut req, target, "tcp");
        sender
            .ready()
            .await
            .map_err(|source| upstream_error(identity, target, source))?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|source| upstream_error(identity, target, source))?;
        if !rsp.status().is_success() {
            return Err(Error::MeshRefused {
                addr: target.endpoint,
                status: rsp.status(),
            });
        }
        let upgraded = hyper::upgrade::on(rsp)
            .await
            .map_err(|source| Error::Upstream {
                addr: target.endpoint,
                source,
            })?;
        Ok(TokioIo::new(upgraded))
    }

    /// A usable connection to the peer: pooled, or made now (one at a time
    /// per peer; requests arriving meanwhile wait for it).
    async fn sender(
        &self,
        identity: &IdentityStore,
        target: &MeshTarget<'_>,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ReqBody>, Error> {
        let key = PeerKey {
            addr: target.peer,
            sni: target.sni.cloned(),
        };
        let generation = identity.generation();
        if let Some(s) = self.open(&key, generation, target)? {
            return Ok(s);
        }
        let gate = Arc::clone(lock(&self.connecting).entry(key.clone()).or_default());
        let _connecting = match gate.try_lock() {
            Ok(guard) => Some(guard),
            Err(_) => {
                drop(gate.lock().await);
                None
            }
        };
        if let Some(s) = self.open(&key, generation, target)? {
            return Ok(s);
        }
        let conn = Box::pin(connect(identity, target, connect_timeout)).await?;
        let sender = conn.sender.clone();
        lock(&self.conns).insert(key, conn);
        Ok(sender)
    }

    /// The pooled connection, unless closed or made with an older certificate.
    fn open(
        &self,
        key: &PeerKey,
        generation: u64,
        target: &MeshTarget<'_>,
    ) -> Result<Option<http2::SendRequest<ReqBody>>, Error> {
        let conns = lock(&self.conns);
        let Some(c) = conns.get(key) else {
            return Ok(None);
        };
        if c.sender.is_closed() || c.generation != generation {
            return Ok(None);
        }
        // Two services may share a peer and expect different identities.
        if !target.expected.admits(&c.peer) {
            return Err(Error::PeerIdentity {
                addr: target.endpoint,
                expected: target.expected.to_string(),
                presented: c.peer.to_string(),
            });
        }
        Ok(Some(c.sender.clone()))
    }

    /// Drops closed connections and gates nobody waits on.
    pub fn evict_closed(&self) {
        lock(&self.conns).retain(|_, c| !c.sender.is_closed());
        lock(&self.connecting).retain(|_, gate| Arc::strong_count(gate) > 1);
    }
}

/// A failed mesh stream. In TLS 1.3 the client's handshake is done before
/// the server has checked the client's certificate, so a server's refusal
/// (an alert: unknown CA, expired, ...) surfaces on the first stream; it is
/// reported and counted as the handshake failure it is.
fn upstream_error(
    identity: &IdentityStore,
    target: &MeshTarget<'_>,
    source: hyper::Error,
) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&source);
    while let Some(e) = cause {
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            io.and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        // rustls reports an alert that arrives after the handshake as text.
        let alert = io
            .filter(|io| io.kind() == std::io::ErrorKind::InvalidData)
            .and_then(|io| alert_reason(&io.to_string()));
        let reason = tls
            .map(|t| HandshakeFailure::of_rustls(t).as_str())
            .or(alert);
        if let Some(reason) = reason {
            identity
                .metrics()
                .handshakes
                .with_label_values(&["outbound", "error", reason])
                .inc();
            return Error::Tls {
                addr: target.peer,
                reason,
                source: std::io::Error::other(format!("the peer refused us: {e}")),
            };
        }
        cause = e.source();
    }
    Error::Upstream {
        addr: target.endpoint,
        source,
    }
}

/// The reason label of rustls's text for a received fatal alert.
fn alert_reason(message: &str) -> Option<&'static str> {
    let alert = message.strip_prefix("received fatal alert: ")?;
    Some(match alert {
        "UnknownCA" => "unknown_ca",
        "CertificateExpired" => "expired",
        "BadCertificate" | "UnsupportedCertificate" | "CertificateUnknown" => "bad_certificate",
        "CertificateRequired" => "no_client_cert",
        "ProtocolVersion" => "protocol_version",
        _ => "alert",
    })
}

/// TCP, TLS 1.3 with our certificate, the peer's identity check, then the
/// HTTP/2 handshake.
async fn connect(
    identity: &IdentityStore,
    target: &MeshTarget<'_>,
    connect_timeout: Duration,
) -> Result<MeshConn, Error> {
    let addr = target.peer;
    let generation = identity.generation();
    let metrics = identity.metrics();
    let handshake_failed = |reason: &str| {
        metrics
            .handshakes
            .with_label_values(&["outbound", "error", reason])
            .inc();
    };
    let tcp = connect_tcp(addr, connect_timeout).await?;
    let server_name = match target.sni {
        Some(sni) => ServerName::try_from(sni.to_string()).map_err(|_| Error::Tls {
            addr,
            reason: "bad_sni",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad SNI"),
        })?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let connector = TlsConnector::from(identity.client_config());
    let tls = match tokio::time::timeout(connect_timeout, connector.connect(server_name, tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(source)) => {
            let reason = identity::handshake_failure_reason(&source);
            handshake_failed(reason);
            return Err(Error::Tls {
                addr,
                reason,
                source,
            });
        }
        Err(_) => {
            handshake_failed("timeout");
            return Err(Error::ConnectTimeout {
                addr,
                timeout: connect_timeout,
            });
        }
    };
    let (_, session) = tls.get_ref();
    let peer = match identity::peer_id(session) {
        Ok(id) => id,
        Err(e) => {
            handshake_failed("bad_certificate");
            return Err(Error::Tls {
                addr,
                reason: "bad_certificate",
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            });
        }
    };
    if !target.expected.admits(&peer) {
        handshake_failed("identity_mismatch");
        return Err(Error::PeerIdentity {
            addr: target.endpoint,
            expected: target.expected.to_string(),
            presented: peer.to_string(),
        });
    }
    if session.alpn_protocol() != Some(b"h2") {
        handshake_failed("no_h2");
        return Err(Error::Tls {
            addr,
            reason: "no_h2",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "peer did not agree to h2",
            ),
        });
    }
    metrics
        .handshakes
        .with_label_values(&["outbound", "ok", "none"])
        .inc();
    let (sender, conn) = http2::Builder::new(BoxingExecutor)
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|source| Error::Handshake { addr, source })?;
    let active = metrics
        .mesh_connections
        .with_label_values(&["outbound", &peer.to_string()]);
    active.inc();
    tokio::spawn(
        async move {
            if let Err(error) = conn.await {
                debug!(%error, "mesh connection ended");
            }
            active.dec();
        }
        .instrument(tracing::debug_span!("mesh", %addr, peer = %peer)),
    );
    Ok(MeshConn {
        sender,
        generation,
        peer,
    })
}

fn set_mesh_headers<B>(req: &mut Request<B>, target: &MeshTarget<'_>, protocol: &'static str) {
    let headers = req.headers_mut();
    headers.insert(SERVICE_HEADER, target.service_header.clone());
    headers.insert(PORT_HEADER, HeaderValue::from(target.service_port));
    if let Some(port) = target.target_port {
        headers.insert(TARGET_PORT_HEADER, HeaderValue::from(port));
    }
    headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
}

/// An app's request made into an h2 request for the mesh: absolute URI
/// (`:authority` from `Host`), version 2, the mesh headers.
fn to_mesh_request(
    req: &mut Request<ReqBody>,
    version: Version,
    target: &MeshTarget<'_>,
) -> Result<(), Error> {
    if version == Version::Http1 {
        let authority = match req.headers().get(HOST) {
            Some(host) => Authority::try_from(host.as_bytes()).ok(),
            None => req.uri().authority().cloned(),
        };
        let authority = match authority {
            Some(a) => a,
            None => Authority::try_from(format!("{}:{}", target.service.name, target.service_port))
                .map_err(|_| Error::MeshRefused {
                    addr: target.endpoint,
                    status: StatusCode::BAD_REQUEST,
                })?,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::MeshRefused {
            addr: target.endpoint,
            status: StatusCode::BAD_REQUEST,
        })?;
        req.headers_mut().remove(HOST);
        *req.version_mut() = http::Version::HTTP_2;
    }
    let protocol = match version {
        Version::Http1 => "http1",
        Version::Http2 => "http2",
    };
    set_mesh_headers(req, target, protocol);
    Ok(())
}

/// Undoes [`to_mesh_request`] for a request that was never sent, so it can
/// go to another endpoint, maybe one reached in plaintext.
fn from_mesh_request(mut req: Request<ReqBody>, version: Version) -> Request<ReqBody> {
    let headers = req.headers_mut();
    for h in [
        SERVICE_HEADER,
        PORT_HEADER,
        TARGET_PORT_HEADER,
        PROTOCOL_HEADER,
    ] {
        headers.remove(h);
    }
    if version == Version::Http1 {
        if let Some(authority) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        *req.version_mut() = http::Version::HTTP_11;
    }
    req
}
