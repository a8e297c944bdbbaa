//! Answers from discovery: keeps the [`MeshIndex`] of the snapshot in force.
//!
//! The index is rebuilt once per published snapshot, never per query.
//! Readers take it lock-free (`arc-swap`) and compare its version with the
//! store's: a query that arrives right after a publish, before the follower
//! task has rebuilt, rebuilds it itself (once, under a mutex, double
//! checked), so a snapshot change is visible to the very next query. This
//! module does not decide what to do with names it does not know.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::index::MeshIndex;
use crate::discovery::Store;

pub(crate) struct MeshResolver {
    store: Arc<Store>,
    index: ArcSwap<MeshIndex>,
    rebuilding: Mutex<()>,
}

impl MeshResolver {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        let index = MeshIndex::build(&store.load());
        Self {
            store,
            index: ArcSwap::from_pointee(index),
            rebuilding: Mutex::new(()),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The index of the snapshot in force now.
    #[inline]
    pub(crate) fn current(&self) -> Arc<MeshIndex> {
        let index = self.index.load_full();
        if index.version == self.store.load().version {
            index
        } else {
            self.rebuild()
        }
    }

    #[tracing::instrument(level = "trace", skip_all)]
    fn rebuild(&self) -> Arc<MeshIndex> {
        let _one = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.store.load_full();
        let index = self.index.load_full();
        if index.version == state.version {
            return index;
        }
        let index = Arc::new(MeshIndex::build(&state));
        debug!(
            version = index.version,
            names = index.len(),
            "dns index rebuilt"
        );
        self.index.store(Arc::clone(&index));
        index
    }

    /// Rebuilds as soon as the store publishes, so queries rarely pay for it.
    pub(crate) async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut versions = self.store.subscribe();
        loop {
            tokio::select! {
                changed = versions.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            self.current();
        }
    }
}
