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
pub(crate) mod http;
pub(crate) mod listeners;
mod metrics;
mod respond;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::discovery::{ServiceName, Store};

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
}

impl Proxy {
    pub fn new(store: Arc<Store>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            pool: http::Pool::default(),
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
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
}
