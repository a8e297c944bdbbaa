//! Per-service VIP listeners, for running without iptables: one listener per
//! service VIP and port in the snapshot, bound and closed as snapshots change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::accept::{serve, Destination};
use super::Proxy;

/// The bound VIP listeners, reconciled against each new snapshot.
#[derive(Debug, Default)]
pub(crate) struct VipListeners {
    bound: HashMap<SocketAddr, CancellationToken>,
}

/// A VIP listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind service listener {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl VipListeners {
    /// Binds listeners for new VIPs and closes those no longer in the
    /// snapshot. Returns the addresses that could not be bound.
    pub async fn reconcile(
        &mut self,
        proxy: &Arc<Proxy>,
        stop: &CancellationToken,
    ) -> Vec<BindError> {
        let wanted: Vec<SocketAddr> = {
            let state = proxy.store.load();
            state.snapshot.service_addrs().copied().collect()
        };
        self.bound.retain(|addr, token| {
            let keep = wanted.contains(addr);
            if !keep {
                info!(%addr, "service listener closed");
                token.cancel();
            }
            keep
        });
        let mut errors = Vec::new();
        for addr in wanted {
            if self.bound.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(%addr, "service listener bound");
                    let token = stop.child_token();
                    self.bound.insert(addr, token.clone());
                    tokio::spawn(
                        serve(listener, Destination::Fixed(addr), Arc::clone(proxy), token)
                            .instrument(tracing::info_span!("vip", %addr)),
                    );
                }
                Err(source) => {
                    proxy.metrics.listener_bind_errors.inc();
                    warn!(%addr, error = %source, "cannot bind service listener");
                    errors.push(BindError { addr, source });
                }
            }
        }
        errors
    }

    /// Follows the store until `stop` fires, reconciling on every publish.
    pub async fn follow(mut self, proxy: Arc<Proxy>, stop: CancellationToken) {
        let mut versions = proxy.store.subscribe();
        loop {
            tokio::select! {
                changed = versions.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            self.reconcile(&proxy, &stop).await;
        }
    }
}
