//! Wiring: translate the mesh state, register metrics, bind every listener,
//! then run until asked to stop and drain.
//!
//! [`App::bind`] does everything that can fail at startup (bad mesh state,
//! port conflicts) before anything serves, and returns the bound addresses,
//! so tests bind port 0 and read them back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::admin::{self, Admin};
use crate::config::reload::{self, ReloadStatus};
use crate::config::{EnvOverrides, Loaded, Overrides, Problem};
use crate::discovery::{translate, Store};
use crate::proxy::listeners::VipListeners;
use crate::proxy::{self, Proxy};
use crate::shutdown::{Latch, Readiness};

/// A proxy to be bound, from a loaded config.
pub struct App {
    loaded: Loaded,
    overrides: Arc<dyn Overrides + Send + Sync>,
}

/// A proxy whose listeners are bound; [`BoundApp::run`] serves.
pub struct BoundApp {
    admin_addr: SocketAddr,
    outbound_addr: Option<SocketAddr>,
    admin_listener: TcpListener,
    outbound_listener: Option<TcpListener>,
    vips: Option<VipListeners>,
    proxy: Arc<Proxy>,
    registry: Registry,
    readiness: Readiness,
    ready_latch: Latch,
    reloads: Option<watch::Receiver<ReloadStatus>>,
    stop: CancellationToken,
}

impl App {
    pub fn new(loaded: Loaded) -> Self {
        Self {
            loaded,
            overrides: Arc::new(EnvOverrides),
        }
    }

    /// Overrides used when the config file is reloaded (the same as at load).
    pub fn with_overrides(mut self, overrides: Arc<dyn Overrides + Send + Sync>) -> Self {
        self.overrides = overrides;
        self
    }

    pub async fn bind(self) -> anyhow::Result<BoundApp> {
        let Loaded {
            config,
            manifests,
            path,
        } = self.loaded;
        let snapshot = translate(&config, &manifests).map_err(|problems| {
            anyhow::anyhow!(
                "invalid mesh state:\n  {}",
                problems
                    .iter()
                    .map(Problem::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )
        })?;
        let registry = crate::metrics::registry();
        let readiness = Readiness::default();
        let ready_latch = readiness.latch("listeners");
        let stop = CancellationToken::new();

        let admin_listener = TcpListener::bind(config.listeners.admin)
            .await
            .with_context(|| format!("cannot bind admin listener {}", config.listeners.admin))?;
        let admin_addr = admin_listener.local_addr()?;
        info!(addr = %admin_addr, "admin listening");

        let outbound_listener = match config.listeners.outbound {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind outbound listener {addr}"))?,
            ),
            None => None,
        };
        let outbound_addr = match &outbound_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                info!(%addr, "outbound (transparent) listening");
                Some(addr)
            }
            None => None,
        };

        let service_vips = config.listeners.service_vips;
        let mesh_dir = config.mesh_dir.clone();
        let store = Arc::new(Store::new(config, snapshot));
        let metrics = proxy::Metrics::register(&registry).context("proxy metrics register")?;
        let proxy = Proxy::new(Arc::clone(&store), metrics);

        let vips = if service_vips {
            let mut vips = VipListeners::default();
            let errors = vips.reconcile(&proxy, &stop).await;
            if let Some(first) = errors.into_iter().next() {
                stop.cancel();
                return Err(first.into());
            }
            Some(vips)
        } else {
            None
        };

        let reload_metrics =
            reload::Metrics::register(&registry).context("reload metrics register")?;
        let reloads = match path {
            Some(path) => Some(
                reload::spawn(
                    path,
                    mesh_dir,
                    Arc::clone(&store),
                    Arc::clone(&self.overrides),
                    reload_metrics,
                    stop.child_token(),
                )
                .context("config watch starts")?,
            ),
            None => None,
        };

        Ok(BoundApp {
            admin_addr,
            outbound_addr,
            admin_listener,
            outbound_listener,
            vips,
            proxy,
            registry,
            readiness,
            ready_latch,
            reloads,
            stop,
        })
    }
}

impl BoundApp {
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound_addr
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.proxy.store)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reload outcomes, when the config came from a file.
    pub fn reloads(&self) -> Option<watch::Receiver<ReloadStatus>> {
        self.reloads.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish for up to the drain grace period, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let BoundApp {
            admin_listener,
            outbound_listener,
            vips,
            proxy,
            registry,
            readiness,
            ready_latch,
            stop,
            ..
        } = self;
        let admin_stop = CancellationToken::new();
        tokio::spawn(
            admin::serve(
                admin_listener,
                Admin {
                    registry,
                    store: Arc::clone(&proxy.store),
                    readiness: readiness.clone(),
                },
                admin_stop.clone(),
            )
            .instrument(tracing::info_span!("admin")),
        );
        if let Some(listener) = outbound_listener {
            tokio::spawn(proxy::serve_transparent(
                listener,
                Arc::clone(&proxy),
                stop.child_token(),
            ));
        }
        if let Some(vips) = vips {
            tokio::spawn(vips.follow(Arc::clone(&proxy), stop.child_token()));
        }
        proxy.spawn_upkeep();
        ready_latch.release();
        info!("ready");

        shutdown.await;

        let grace = proxy.store.load().config.runtime.drain_grace_period;
        info!(?grace, "draining");
        readiness.set_draining();
        stop.cancel();
        proxy.drain.cancel();
        proxy.tasks.close();
        if tokio::time::timeout(grace, proxy.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = proxy.tasks.len(),
                "drain grace period over; closing remaining connections"
            );
        } else {
            info!("drained");
        }
        admin_stop.cancel();
        Ok(())
    }
}
