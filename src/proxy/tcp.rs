//! Opaque TCP: connect to an endpoint (failing over to another endpoint, or
//! another cluster where the policy allows, when a connect fails), then copy
//! bytes both ways until both sides are done. Half-close is preserved: when
//! one side finishes sending, the other side's write half is shut down and
//! the reverse direction keeps flowing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::{debug, info};

use super::conn_io::ServerIo;
use super::http::connect_tcp;
use super::mesh::MeshTarget;
use super::{access_log, Error, Proxy};
use crate::balance::{Failure, InFlight, Pick, PickContext};
use crate::discovery::ServiceName;
use crate::metrics::Direction;

pub(crate) struct TcpForward<'a> {
    pub client: SocketAddr,
    pub service: &'a ServiceName,
    pub cluster: Option<Arc<str>>,
    pub upstream: SocketAddr,
    pub access_log: bool,
}

/// An opaque TCP connection's upstream: a plain connection to the endpoint,
/// or an HTTP/2 `CONNECT` stream over mesh mTLS.
pub(crate) type Upstream = Either<TcpStream, TokioIo<Upgraded>>;

/// Connects to an endpoint of the service at `dst`, trying others (up to
/// `max_attempts` in all) when a connect fails. The returned guard counts
/// the connection as in flight on the endpoint while it is held.
pub(crate) async fn connect_with_failover(
    proxy: &Proxy,
    dst: SocketAddr,
    service: &ServiceName,
    connect_timeout: Duration,
    max_attempts: u32,
) -> Result<(Upstream, Pick, InFlight), Error> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<Error> = None;
    loop {
        let (pick, svc, mesh_port) = {
            let state = proxy.store.load();
            let Some(target) = state.snapshot.target(&dst) else {
                return Err(Error::NoService(dst));
            };
            let ctx = PickContext {
                exclude: &tried,
                ..Default::default()
            };
            let pick = match target.port().selector.select(&ctx) {
                Ok(p) => p,
                // Nothing left to try: the caller hears why the last one failed.
                Err(_) if last.is_some() => {
                    return Err(last.take().unwrap_or(Error::NoService(dst)))
                }
                Err(source) => {
                    return Err(Error::NoEndpoint {
                        service: service.clone(),
                        source,
                    })
                }
            };
            (
                pick,
                Arc::clone(&target.service),
                state.config.inbound.mesh_port,
            )
        };
        let inflight = pick.state.start();
        let connected = match proxy.mesh_identity(&svc) {
            Some(identity) => {
                let target = MeshTarget::new(
                    pick.addr,
                    &pick.kind,
                    &svc,
                    dst.port(),
                    mesh_port,
                    identity.trust_domain(),
                );
                Box::pin(proxy.mesh.open_stream(identity, &target, connect_timeout))
                    .await
                    .map(Either::Right)
            }
            None => connect_tcp(pick.addr, connect_timeout)
                .await
                .map(Either::Left),
        };
        match connected {
            Ok(stream) => return Ok((stream, pick, inflight)),
            // The peer proxy refused the stream (not authorized): another
            // endpoint would say the same.
            Err(error @ Error::MeshRefused { .. }) => return Err(error),
            Err(error) => {
                connect_failed(proxy, service, &pick, inflight, &error);
                tried.push(pick.addr);
                if tried.len() >= max_attempts as usize {
                    return Err(error);
                }
                let (name, ns) = (service.name.as_str(), service.namespace.as_str());
                proxy
                    .metrics
                    .retries
                    .with_label_values(&[name, ns, "connect"])
                    .inc();
                debug!(%error, "connect failed; trying another endpoint");
                last = Some(error);
            }
        }
    }
}

/// Counts a failed connect to a picked endpoint and reports it to the
/// endpoint's health (a connect failure ejects it).
pub(crate) fn connect_failed(
    proxy: &Proxy,
    service: &ServiceName,
    pick: &Pick,
    inflight: InFlight,
    error: &Error,
) {
    let m = &proxy.metrics;
    let (name, ns) = (service.name.as_str(), service.namespace.as_str());
    m.connect_errors
        .with_label_values(&[name, ns, error.reason().as_str()])
        .inc();
    if inflight.failure(Failure::Connect) {
        info!(endpoint = %pick.addr, cluster = %pick.cluster, "endpoint ejected");
        m.ejections
            .with_label_values(&[name, ns, &pick.cluster])
            .inc();
    }
}

/// Copies bytes between the client and the upstream until both are done.
pub(crate) async fn forward<U>(mut io: ServerIo, mut upstream: U, fwd: TcpForward<'_>)
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = Instant::now();
    let result = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    let (sent_up, sent_down) = match &result {
        Ok((a, b)) => (*a, *b),
        Err(_) => (0, 0),
    };
    match &result {
        Ok(_) => debug!(sent_up, sent_down, "tcp connection closed"),
        Err(error) => debug!(%error, "tcp connection ended with an error"),
    }
    if fwd.access_log {
        access_log::tcp(&access_log::TcpRecord {
            client: fwd.client,
            service: fwd.service,
            cluster: fwd.cluster.as_deref(),
            endpoint: Some(fwd.upstream),
            bytes_in: sent_up,
            bytes_out: sent_down,
            duration: start.elapsed(),
            error: result.as_ref().err().map(|_| "io"),
        });
    }
}

/// Closes with RST rather than FIN, so the client sees a failure, not an empty reply.
pub(crate) fn reset(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Counts an error the proxy answered on a TCP connection.
pub(crate) fn count_error(metrics: &super::Metrics, service: &ServiceName, error: &Error) {
    metrics
        .errors
        .with_label_values(&[
            Direction::Outbound.as_str(),
            service.name.as_str(),
            service.namespace.as_str(),
            error.reason().as_str(),
        ])
        .inc();
    info!(%error, "connection refused by proxy");
}
