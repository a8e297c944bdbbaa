//! The data path: listeners, protocol detection, HTTP and opaque-TCP
//! forwarding, and the mapping of failures to responses.
//!
//! A connection is accepted (`accept.rs`), matched to a service port by its
//! original destination, its protocol is taken from the port's hint or
//! detected (`detect.rs`), and it is served as HTTP (`http.rs`) or copied as
//! bytes (`tcp.rs`). Every failure is classified once, in `respond.rs`.
//! Discovery state is read per request from the [`Store`], so a reload
//! reaches long-lived keep-alive connections too.

mod accept;
mod access_log;
mod conn_io;
pub(crate) mod detect;
mod executor;
pub(crate) mod gateway;
pub(crate) mod http;
pub(crate) mod inbound;
pub(crate) mod listeners;
pub(crate) mod mesh;
mod metrics;
mod respond;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::Pick;
use crate::discovery::{Service, ServiceName, Store};
use crate::identity::IdentityStore;

pub(crate) use accept::serve_transparent;
pub use metrics::Metrics;

/// What the data path shares: state, metrics, upstream connections, drain.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub pool: http::Pool,
    /// Cancelled when the app starts draining: connections finish their
    /// in-flight requests and close.
    pub drain: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// This proxy's mesh identity; `None`: proxy-to-proxy traffic is plaintext.
    pub identity: Option<Arc<IdentityStore>>,
    /// Mesh mTLS connections, one per peer.
    pub mesh: mesh::MeshPool,
}

impl Proxy {
    #[cfg(test)]
    pub fn new(store: Arc<Store>, metrics: Metrics) -> Arc<Self> {
        Self::with_identity(store, metrics, None)
    }

    pub fn with_identity(
        store: Arc<Store>,
        metrics: Metrics,
        identity: Option<Arc<IdentityStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            pool: http::Pool::default(),
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
            identity,
            mesh: mesh::MeshPool::default(),
        })
    }

    /// The identity to reach a service's endpoints with over mesh mTLS, or
    /// `None` for plaintext (no identity, or the service opted out).
    pub fn mesh_identity(&self, service: &Service) -> Option<&IdentityStore> {
        self.identity.as_deref().filter(|_| service.mtls)
    }

    /// Sends an HTTP request to a picked endpoint: over mesh mTLS as an h2
    /// stream, or in plaintext over a pooled connection in the app's protocol.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_http(
        &self,
        pick: &Pick,
        service: &Service,
        service_port: u16,
        version: http::Version,
        req: ::http::Request<http::ReqBody>,
        limits: http::Limits,
        mesh_port: u16,
    ) -> Result<::http::Response<http::ProxyBody>, http::Failed> {
        match self.mesh_identity(service) {
            Some(identity) => {
                let target = mesh::MeshTarget::new(
                    pick.addr,
                    &pick.kind,
                    service,
                    service_port,
                    mesh_port,
                    identity.trust_domain(),
                );
                // Boxed: the plaintext path's future stays as small as it was.
                Box::pin(
                    self.mesh
                        .send(identity, &target, version, req, limits.connect_timeout),
                )
                .await
            }
            None => self.pool.send(pick.addr, version, req, limits).await,
        }
    }

    /// Background upkeep: closing idle upstream connections.
    pub fn spawn_upkeep(self: &Arc<Self>) {
        let proxy = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = proxy.drain.cancelled() => return,
                }
                let idle = proxy.store.load().config.outbound.pool_idle_timeout;
                proxy.pool.evict_idle(idle);
                proxy.mesh.evict_closed();
            }
        });
    }
}

/// Why a request or connection could not be proxied. Classified into a
/// response (status, `x-strait-error`, metric reason) in `respond.rs` only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no service for {0}")]
    NoService(SocketAddr),
    #[error("{service}: {source}")]
    NoEndpoint {
        service: ServiceName,
        #[source]
        source: crate::balance::NoEndpoint,
    },
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("no response from {addr} within {timeout:?}")]
    ResponseTimeout { addr: SocketAddr, timeout: Duration },
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("mTLS handshake with {addr} failed ({reason}): {source}")]
    Tls {
        addr: SocketAddr,
        reason: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {addr} presented {presented}, expected {expected}")]
    PeerIdentity {
        addr: SocketAddr,
        expected: String,
        presented: String,
    },
    #[error("peer proxy {addr} refused the stream with {status}")]
    MeshRefused {
        addr: SocketAddr,
        status: ::http::StatusCode,
    },
}
