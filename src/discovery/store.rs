//! The one place the current state is published. Readers take it without a
//! lock (`arc-swap`); the publisher swaps in a whole new [`State`] and bumps a
//! version that watchers (the per-VIP listener manager) wait on.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::Snapshot;
use crate::config::Config;

/// The settings and mesh snapshot in force, swapped together so a request
/// never sees a config from one reload and endpoints from another.
#[derive(Debug)]
pub struct State {
    pub version: u64,
    pub config: Arc<Config>,
    pub snapshot: Arc<Snapshot>,
}

#[derive(Debug)]
pub struct Store {
    current: ArcSwap<State>,
    version: watch::Sender<u64>,
}

impl Store {
    pub fn new(config: Config, snapshot: Snapshot) -> Self {
        let state = State {
            version: 1,
            config: Arc::new(config),
            snapshot: Arc::new(snapshot),
        };
        Self {
            current: ArcSwap::from_pointee(state),
            version: watch::Sender::new(1),
        }
    }

    /// The current state; cheap, lock-free, for the request path.
    #[inline]
    pub fn load(&self) -> Guard<Arc<State>> {
        self.current.load()
    }

    /// The current state as an owned `Arc`, for holding across `.await`s.
    pub fn load_full(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Publishes a new state; returns its version.
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn publish(&self, config: Config, snapshot: Snapshot) -> u64 {
        let version = self.current.load().version + 1;
        self.current.store(Arc::new(State {
            version,
            config: Arc::new(config),
            snapshot: Arc::new(snapshot),
        }));
        self.version.send_replace(version);
        version
    }

    /// Wakes on every publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
