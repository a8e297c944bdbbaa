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
use crate::balance;
use crate::config::reload::{self, ReloadStatus};
use crate::config::{EnvOverrides, Loaded, Mode, Overrides, Problem};
use crate::discovery::{translate_with, Store};
use crate::dns::{self, DnsServer, NoOnDemand};
use crate::identity::{IdentityMetrics, IdentityStore};
use crate::proxy::gateway::GatewayMetrics;
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
    dns: Option<DnsServer>,
    admin_listener: TcpListener,
    outbound_listener: Option<TcpListener>,
    mesh_listener: Option<TcpListener>,
    inbound_listener: Option<TcpListener>,
    gateway_listener: Option<(TcpListener, GatewayMetrics)>,
    identity: Option<Arc<IdentityStore>>,
    vips: Option<VipListeners>,
    proxy: Arc<Proxy>,
    registry: Registry,
    prober: balance::prober::Metrics,
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
        let registry = crate::metrics::registry();
        let balance = Arc::new(balance::Registry::new(
            balance::Metrics::register(&registry).context("balance metrics register")?,
        ));
        let snapshot = translate_with(&config, &manifests, &balance).map_err(|problems| {
            anyhow::anyhow!(
                "invalid mesh state:\n  {}",
                problems
                    .iter()
                    .map(Problem::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )
        })?;
        let readiness = Readiness::default();
        let ready_latch = readiness.latch("listeners");
        let stop = CancellationToken::new();

        let admin_listener = TcpListener::bind(config.listeners.admin)
            .await
            .with_context(|| format!("cannot bind admin listener {}", config.listeners.admin))?;
        let admin_addr = admin_listener.local_addr()?;
        info!(addr = %admin_addr, "admin listening");

        let gateway_mode = config.mode == Mode::Gateway;
        let identity = match &config.identity {
            Some(settings) => {
                let metrics =
                    IdentityMetrics::register(&registry).context("identity metrics register")?;
                let identity = IdentityStore::load(settings, metrics)
                    .context("cannot load the mesh identity")?;
                info!(id = %identity.id(), "mesh identity loaded");
                let check = Arc::clone(&identity);
                readiness.add_check(Box::new(move || check.ready()));
                Some(identity)
            }
            None => None,
        };
        let bind = |what: &'static str, addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind {what} listener {addr}"))?;
            info!(addr = %listener.local_addr()?, "{what} listening");
            anyhow::Ok(listener)
        };
        let mesh_listener = match (&identity, gateway_mode) {
            (Some(_), false) => Some(bind("mesh (mTLS)", config.listeners.mesh).await?),
            _ => None,
        };
        let inbound_listener = match config.listeners.inbound {
            Some(addr) if !gateway_mode => Some(bind("inbound (plaintext)", addr).await?),
            _ => None,
        };
        let gateway_listener = if gateway_mode {
            let metrics =
                GatewayMetrics::register(&registry).context("gateway metrics register")?;
            Some((bind("gateway", config.listeners.gateway).await?, metrics))
        } else {
            None
        };

        let outbound_listener = match config.listeners.outbound.filter(|_| !gateway_mode) {
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
        let proxy = Proxy::with_identity(Arc::clone(&store), metrics, identity.clone());

        let dns = if store.load().config.dns.enabled {
            let metrics = dns::Metrics::register(&registry).context("dns metrics register")?;
            // TODO(control stream, architecture §8): its client provides the on-demand hook.
            let server = DnsServer::bind(Arc::clone(&store), metrics, Arc::new(NoOnDemand))
                .await
                .context("dns shim starts")?;
            Some(server)
        } else {
            None
        };

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
                    Arc::clone(&balance),
                    stop.child_token(),
                )
                .context("config watch starts")?,
            ),
            None => None,
        };

        let prober =
            balance::prober::Metrics::register(&registry).context("prober metrics register")?;
        Ok(BoundApp {
            admin_addr,
            outbound_addr,
            dns,
            admin_listener,
            outbound_listener,
            mesh_listener,
            inbound_listener,
            gateway_listener,
            identity,
            vips,
            proxy,
            registry,
            prober,
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

    /// The mesh mTLS listener's address, when an identity is configured.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The plaintext inbound capture's address, when `listeners.inbound` is set.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The gateway listener's address, in gateway mode.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_listener
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    /// The DNS shim's address (UDP and TCP), when `dns.enabled`.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(DnsServer::local_addr)
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
            mesh_listener,
            inbound_listener,
            gateway_listener,
            identity,
            dns,
            vips,
            proxy,
            registry,
            prober,
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
                    identity: identity.clone(),
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
        if let (Some(listener), Some(identity)) = (mesh_listener, &identity) {
            tokio::spawn(proxy::inbound::serve_mesh(
                listener,
                Arc::clone(&proxy),
                Arc::clone(identity),
                stop.child_token(),
            ));
        }
        if let Some(listener) = inbound_listener {
            tokio::spawn(proxy::inbound::serve_plaintext(
                listener,
                Arc::clone(&proxy),
                stop.child_token(),
            ));
        }
        if let Some((listener, metrics)) = gateway_listener {
            tokio::spawn(proxy::gateway::serve(
                listener,
                Arc::clone(&proxy),
                metrics,
                stop.child_token(),
            ));
        }
        if let Some(identity) = &identity {
            // Rotated certificates apply to new handshakes; stops at exit.
            identity.watch(admin_stop.clone());
        }
        if let Some(vips) = vips {
            tokio::spawn(vips.follow(Arc::clone(&proxy), stop.child_token()));
        }
        if let Some(dns) = dns {
            // Stops with the drain signal, like the listeners.
            tokio::spawn(
                dns.run(stop.child_token())
                    .instrument(tracing::info_span!("dns")),
            );
        }
        proxy.spawn_upkeep();
        tokio::spawn(
            balance::prober::run(Arc::clone(&proxy.store), prober, stop.child_token())
                .instrument(tracing::info_span!("prober")),
        );
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
