//! Endpoint selection for one service port: the seam where cross-cluster
//! policy (which clusters are eligible) meets balancing (which endpoint).
//!
//! A [`Selector`] is built once per snapshot for each service port and is
//! shared by every request; picking takes no lock. Today it balances round
//! robin over the ready endpoints of the local cluster (the `Locality`
//! policy, the default). Health, weights and the other policies plug in here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::net::SocketAddr;

use crate::discovery::{ClusterEndpoints, EndpointKind, Policy};

/// No endpoint is eligible; names the clusters that were considered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no ready endpoint in cluster(s) {}", .considered.join(", "))]
pub struct NoEndpoint {
    pub considered: Vec<Arc<str>>,
}

/// Picks endpoints for one service port.
#[derive(Debug)]
pub struct Selector {
    /// Eligible endpoints, flattened at build time.
    eligible: Vec<Pick>,
    considered: Vec<Arc<str>>,
    next: AtomicUsize,
}

/// What a pick returns: the endpoint and the cluster it belongs to.
#[derive(Debug, Clone)]
pub struct Pick {
    pub addr: SocketAddr,
    pub kind: EndpointKind,
    pub cluster: Arc<str>,
}

impl Selector {
    pub fn new(local: &str, clusters: &[ClusterEndpoints], _policy: &Policy) -> Self {
        // Locality: the local cluster only, until the cross-cluster policies land.
        let considered = vec![Arc::from(local)];
        let eligible = clusters
            .iter()
            .filter(|c| c.local)
            .flat_map(|c| {
                c.endpoints.iter().filter(|e| e.ready).map(|e| Pick {
                    addr: e.addr,
                    kind: e.kind.clone(),
                    cluster: c.cluster.clone(),
                })
            })
            .collect();
        Self {
            eligible,
            considered,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round robin.
    #[inline]
    pub fn select(&self) -> Result<&Pick, NoEndpoint> {
        let n = self.eligible.len();
        if n == 0 {
            return Err(NoEndpoint {
                considered: self.considered.clone(),
            });
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        Ok(&self.eligible[i])
    }

    /// The clusters this selector draws from.
    pub fn considered(&self) -> &[Arc<str>] {
        &self.considered
    }
}
