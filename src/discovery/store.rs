//! The one place the current state is published. Readers take it without a
//! lock (`arc-swap`); the publisher swaps in a whole new [`State`] and bumps a
//! version that watchers (the per-VIP listener manager) wait on.
//!
//! Publishing also gives services without a VIP one from `dns.vipRange`
//! (`vips.rs`): the allocation must outlive snapshots, so it lives here.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::vips::VipAllocator;
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
    /// Allocated VIPs; the lock also serialises publishers.
    vips: Mutex<VipAllocator>,
}

impl Store {
    pub fn new(config: Config, mut snapshot: Snapshot) -> Self {
        let mut vips = VipAllocator::new(&config);
        vips.assign(&mut snapshot);
        let state = State {
            version: 1,
            config: Arc::new(config),
            snapshot: Arc::new(snapshot),
        };
        Self {
            current: ArcSwap::from_pointee(state),
            version: watch::Sender::new(1),
            vips: Mutex::new(vips),
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

    /// Publishes a new state, after allocating VIPs; returns its version.
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn publish(&self, config: Config, mut snapshot: Snapshot) -> u64 {
        let mut vips = self.vips.lock().unwrap_or_else(|e| e.into_inner());
        vips.assign(&mut snapshot);
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
