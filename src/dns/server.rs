//! The shim's sockets: one UDP socket and one TCP listener on the same
//! address, bound before anything serves (a port conflict fails startup),
//! then served until the drain signal.
//!
//! UDP: datagrams are read in batches; each query's future is polled once
//! inline, so a mesh or cached answer costs no task; only a query that must
//! wait (upstream, on-demand) becomes a task, at most [`MAX_PENDING`] at a
//! time (beyond that, queries are dropped and counted: clients retry).
//! TCP: at most [`MAX_TCP_CONNS`] connections, queries answered in order,
//! a length prefix outside 12..=[`MAX_TCP_QUERY`] closes the connection, and
//! idle or slow connections are closed after a timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::forward::{is_own, upstreams_from_resolv_conf};
use super::handler::{Handler, HandlerInputs};
use super::metrics::{Dropped, Metrics};
use super::on_demand::OnDemand;
use super::Error;
use crate::discovery::Store;

/// Queries waiting on an upstream or on-demand discovery, at most.
pub(crate) const MAX_PENDING: usize = 1024;
/// Concurrent TCP connections, at most.
pub(crate) const MAX_TCP_CONNS: usize = 128;
/// Largest query accepted over TCP (the length prefix), bytes.
pub(crate) const MAX_TCP_QUERY: usize = 4096;
/// Largest UDP datagram read; a longer one is cut (and then malformed).
const MAX_DATAGRAM: usize = 4096;
/// Datagrams handled before the loop lets other tasks run.
const BATCH: usize = 64;
/// A TCP connection idle this long between queries is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Time to receive a whole query once its length arrived, or to write a response.
const TCP_IO: Duration = Duration::from_secs(5);
/// How long `run` waits for queries in flight after the stop signal.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A bound DNS shim; [`DnsServer::run`] serves.
pub struct DnsServer {
    addr: SocketAddr,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    handler: Arc<Handler>,
}

impl DnsServer {
    /// Binds `dns.listen` (UDP and TCP, one port) and resolves the upstreams.
    pub async fn bind(
        store: Arc<Store>,
        metrics: Metrics,
        on_demand: Arc<dyn OnDemand>,
    ) -> Result<Self, Error> {
        let dns = store.load().config.dns.clone();
        let (udp, tcp) = bind_pair(dns.listen).await?;
        let addr = udp.local_addr().map_err(|source| Error::Bind {
            addr: dns.listen,
            protocol: "UDP",
            source,
        })?;
        let upstreams = match &dns.upstreams {
            Some(list) => list
                .iter()
                .map(|u| u.0)
                .filter(|a| !is_own(*a, addr))
                .collect(),
            None => match std::fs::read_to_string(RESOLV_CONF) {
                Ok(text) => upstreams_from_resolv_conf(&text, addr),
                Err(error) => {
                    warn!(path = RESOLV_CONF, %error, "cannot read upstream resolvers; forwarding nothing");
                    Vec::new()
                }
            },
        };
        if upstreams.is_empty() {
            warn!("no upstream resolvers: only mesh names will resolve");
        }
        info!(%addr, ?upstreams, "dns listening (udp, tcp)");
        let handler = Handler::new(HandlerInputs {
            store,
            upstreams,
            metrics,
            on_demand,
        });
        Ok(Self {
            addr,
            udp: Arc::new(udp),
            tcp,
            handler: Arc::new(handler),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop`, then waits (briefly) for queries in flight.
    pub async fn run(self, stop: CancellationToken) {
        let tasks = TaskTracker::new();
        tasks.spawn(
            self.handler
                .resolver()
                .follow(stop.clone())
                .in_current_span(),
        );
        tokio::join!(
            udp_loop(&self.udp, &self.handler, &tasks, &stop),
            tcp_loop(&self.tcp, &self.handler, &tasks, &stop),
        );
        tasks.close();
        if timeout(DRAIN_WAIT, tasks.wait()).await.is_err() {
            debug!(
                remaining = tasks.len(),
                "dns queries still in flight at exit"
            );
        }
        info!("dns stopped");
    }
}

/// UDP and TCP on one port; with port 0, retries until both get the same one.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let attempts = if listen.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                protocol: "UDP",
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            protocol: "UDP",
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(Error::Bind {
                    addr,
                    protocol: "TCP",
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(Error::Bind {
        addr: listen,
        protocol: "TCP",
        source: io::Error::from(io::ErrorKind::AddrInUse),
    }))
}

/// Polls `fut` once with the current task's waker.
async fn poll_once<F: Future + ?Sized>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

async fn udp_loop(
    socket: &Arc<UdpSocket>,
    handler: &Arc<Handler>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            ready = socket.readable() => if let Err(error) = ready {
                warn!(%error, "dns udp socket failed");
                return;
            },
        }
        for _ in 0..BATCH {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    debug!(%error, "dns udp receive");
                    break;
                }
            };
            if peer.port() == 0 {
                continue;
            }
            let mut query = Box::pin(serve_datagram(
                Arc::clone(handler),
                Arc::clone(socket),
                buf[..n].to_vec(),
                peer,
            ));
            if poll_once(query.as_mut()).await.is_ready() {
                continue;
            }
            match Arc::clone(&pending).try_acquire_owned() {
                Ok(permit) => {
                    tasks.spawn(
                        async move {
                            query.await;
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                }
                Err(_) => handler.metrics().dropped(Dropped::Overload),
            }
        }
        tokio::task::yield_now().await;
    }
}

async fn serve_datagram(
    handler: Arc<Handler>,
    socket: Arc<UdpSocket>,
    raw: Vec<u8>,
    peer: SocketAddr,
) {
    let Some(response) = handler.answer(raw, peer, false).await else {
        return;
    };
    match socket.try_send_to(&response, peer) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if let Err(error) = socket.send_to(&response, peer).await {
                debug!(%peer, %error, "dns udp send");
            }
        }
        Err(error) => debug!(%peer, %error, "dns udp send"),
    }
}

async fn tcp_loop(
    listener: &TcpListener,
    handler: &Arc<Handler>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!(%error, "dns tcp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
            handler.metrics().dropped(Dropped::Overload);
            continue;
        };
        tasks.spawn(
            serve_conn(Arc::clone(handler), stream, peer, stop.clone(), permit)
                .instrument(tracing::debug_span!("dns_tcp", %peer)),
        );
    }
}

async fn serve_conn(
    handler: Arc<Handler>,
    mut stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = timeout(TCP_IDLE, stream.read_exact(&mut len)) => r,
        };
        if !matches!(read, Ok(Ok(_))) {
            return; // closed, failed or idle
        }
        let n = usize::from(u16::from_be_bytes(len));
        if !(12..=MAX_TCP_QUERY).contains(&n) {
            debug!(len = n, "dns tcp frame out of range; closing");
            handler.metrics().dropped(Dropped::TcpFrame);
            return;
        }
        let mut raw = vec![0u8; n];
        if !matches!(
            timeout(TCP_IO, stream.read_exact(&mut raw)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(response) = handler.answer(raw, peer, true).await else {
            continue;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return; // cannot happen: responses are encoded to at most 65535 bytes
        };
        let mut out = Vec::with_capacity(response.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&response);
        if !matches!(timeout(TCP_IO, stream.write_all(&out)).await, Ok(Ok(()))) {
            return;
        }
    }
}
