//! [`IdentityStore`]: the proxy's current identity and the TLS configs built
//! from it, swapped whole on reload.
//!
//! Configs are built once per (re)load; a handshake only loads the current
//! pair (an `ArcSwap` load and an `Arc` clone). New handshakes use what is
//! current when they start; established connections keep the keys they
//! negotiated and are never touched by a reload. A reload that fails any
//! check keeps the current identity serving. Watching the files is
//! `rotate.rs`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::files::Files;
use super::tls::Configs;
use super::{IdentityError, IdentityMetrics, SpiffeId};
use crate::config::Identity;

pub struct IdentityStore {
    pub(super) config: Identity,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Current>,
    pub(super) metrics: IdentityMetrics,
    /// The generation of `current`: 0 as loaded at start, +1 per applied reload.
    generation: watch::Sender<u64>,
    /// Serialises reloads, so that generations are applied in order.
    reloading: Mutex<()>,
}

/// One loaded identity.
struct Current {
    id: SpiffeId,
    not_after: SystemTime,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    files: Files,
}

// === impl IdentityStore ===

impl IdentityStore {
    /// Loads and checks the files (blocking file reads: call at startup or
    /// off the runtime). PEM errors name the file; the key must match the
    /// leaf; the leaf must be valid now and carry a SPIFFE ID in the
    /// configured trust domain; the chain must verify to the bundle now, as
    /// both a server and a client certificate.
    pub fn load(
        config: &Identity,
        metrics: IdentityMetrics,
    ) -> Result<Arc<IdentityStore>, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = build(config, &provider, Files::read(config)?)?;
        metrics.set_expiry(current.not_after);
        info!(
            id = %current.id,
            not_after = %humantime::format_rfc3339_seconds(current.not_after),
            "identity loaded"
        );
        Ok(Arc::new(IdentityStore {
            config: config.clone(),
            provider,
            current: ArcSwap::from_pointee(current),
            metrics,
            generation: watch::Sender::new(0),
            reloading: Mutex::new(()),
        }))
    }

    /// The client config of the current identity: TLS 1.3, ALPN `h2`, our
    /// chain for client auth; it accepts a server chaining to the bundle,
    /// valid now, with a SPIFFE ID in the trust domain. The server name is
    /// not checked: the caller checks the peer's exact ID ([`super::peer_id`])
    /// after the handshake.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.current.load().client)
    }

    /// The server config of the current identity: TLS 1.3, ALPN `h2`, our
    /// chain; it requires a client certificate chaining to the bundle with a
    /// SPIFFE ID in the trust domain. No session resumption.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.load().server)
    }

    /// Our own SPIFFE ID (of the current certificate).
    pub fn id(&self) -> SpiffeId {
        self.current.load().id.clone()
    }

    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// 0 as loaded at start, +1 on every applied reload.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// The generation, to await reloads.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current.load().not_after
    }

    /// `Err` once the current certificate has expired (for `/ready`).
    pub fn ready(&self) -> Result<(), String> {
        self.ready_at(SystemTime::now())
    }

    pub(super) fn ready_at(&self, now: SystemTime) -> Result<(), String> {
        let not_after = self.not_after();
        if now >= not_after {
            return Err(format!(
                "certificate expired at {}",
                humantime::format_rfc3339_seconds(not_after)
            ));
        }
        Ok(())
    }

    pub fn metrics(&self) -> &IdentityMetrics {
        &self.metrics
    }

    /// Re-reads and checks the files (blocking: call off the runtime). If
    /// they are unchanged, nothing happens. If they are good, the new
    /// identity is swapped in for new handshakes and the generation moves
    /// on (`result="applied"`). On any problem the current identity keeps
    /// serving; the error is logged here and counted (`result="rejected"`).
    pub fn reload(&self) -> Result<(), IdentityError> {
        let _serial = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = Files::read(&self.config).and_then(|files| {
            if files == self.current.load().files {
                return Ok(None);
            }
            build(&self.config, &self.provider, files).map(Some)
        });
        let next = match result {
            Ok(Some(next)) => next,
            Ok(None) => {
                debug!("identity files unchanged");
                return Ok(());
            }
            Err(error) => {
                self.metrics.reloads_rejected.inc();
                warn!(%error, "identity reload rejected; the current certificate stays in use");
                return Err(error);
            }
        };
        let previous = self.current.load().id.clone();
        if previous != next.id {
            warn!(from = %previous, to = %next.id, "identity changed");
        }
        self.metrics.set_expiry(next.not_after);
        info!(
            id = %next.id,
            not_after = %humantime::format_rfc3339_seconds(next.not_after),
            generation = self.generation() + 1,
            "identity reloaded"
        );
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        self.metrics.reloads_applied.inc();
        Ok(())
    }

    /// Updates the expiry gauge to now.
    pub(super) fn refresh_expiry(&self) {
        self.metrics.set_expiry(self.not_after());
    }
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("IdentityStore")
            .field("id", &current.id)
            .field("not_after", &current.not_after)
            .field("generation", &self.generation())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn build(
    config: &Identity,
    provider: &Arc<CryptoProvider>,
    files: Files,
) -> Result<Current, IdentityError> {
    let now = SystemTime::now();
    let creds = files.check(config, provider, now)?;
    let configs = Configs::build(&creds, config, provider, now)?;
    Ok(Current {
        id: creds.id,
        not_after: creds.not_after,
        client: configs.client,
        server: configs.server,
        files,
    })
}
