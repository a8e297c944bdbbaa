//! The on-demand discovery hook: a query for a name in a mesh domain that
//! the snapshot does not know asks discovery for the services it may mean,
//! and waits (at most `dns.onDemandTimeout`) before it is answered.
//!
//! The control stream (architecture §8) will implement [`OnDemand`] by
//! subscribing to the names and resolving once the control plane has
//! answered and the snapshot is published; until it exists,
//! [`NoOnDemand`] resolves at once. The handler re-reads the snapshot after
//! the hook returns, so an implementation only has to publish before it
//! resolves. This module does not subscribe to anything itself.

use std::future::Future;
use std::pin::Pin;

use crate::discovery::ServiceName;

/// What a hook returns: resolves when discovery has answered (found or not).
pub type Discovery = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Asks discovery for services a query may name.
pub trait OnDemand: Send + Sync + 'static {
    /// `candidates` are the services the queried name may mean, most likely
    /// first (`a.b.ns.svc.cluster.local` may be pod `a` of service `b.ns`,
    /// or service `a.b` behind the pod's search domain). The future resolves
    /// once discovery has published what it found; the caller bounds it with
    /// a timeout and drops it when that expires.
    fn discover(&self, candidates: &[ServiceName]) -> Discovery;
}

/// The hook before the control stream exists: nothing to ask, resolves at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOnDemand;

impl OnDemand for NoOnDemand {
    fn discover(&self, _candidates: &[ServiceName]) -> Discovery {
        Box::pin(std::future::ready(()))
    }
}
