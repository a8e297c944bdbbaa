//! Hot reload: watches the config file's directory (so Kubernetes' symlink
//! swaps of a mounted ConfigMap are seen) and the manifest directory,
//! debounced. Access events (opens and reads, our own among them) are
//! ignored: only changes count. A change is loaded, validated and
//! translated in full; only then is it published. A rejected change is
//! logged with every problem, counted,
//! and the previous state keeps serving.
//!
//! Listener addresses, runtime threads, log format/level and the node
//! identity are read at start only; a reload that changes them keeps the
//! running values and says so. A changed `meshDir` is rejected (it is watched).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use super::{load_file, Config, Overrides, Problem};
use crate::balance;
use crate::discovery::{translate_with, Store};

/// What reloads have done so far; tests and `/config_dump` read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    pub applied: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    reloads: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "strait_config_reloads_total",
                "Config file reloads, by result (applied, rejected).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        // Both series exist from the start, so a dashboard sees zero, not nothing.
        reloads.with_label_values(&["applied"]);
        reloads.with_label_values(&["rejected"]);
        Ok(Self { reloads })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// How long file events are collected before one reload runs.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts watching; reloads run on the current runtime until `stop` fires.
pub fn spawn(
    path: PathBuf,
    mesh_dir: Option<PathBuf>,
    store: Arc<Store>,
    overrides: Arc<dyn Overrides + Send + Sync>,
    metrics: Metrics,
    balance: Arc<balance::Registry>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<watch::Receiver<ReloadStatus>, WatchError> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let config_path = path.clone();
    let mesh = mesh_dir.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            // Opening and reading files (our own reloads among them) is not a change.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => false,
            Ok(event) => event
                .paths
                .iter()
                .any(|p| is_relevant(p, &config_path, mesh.as_deref())),
            // A watcher error may mean lost events: reload to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = events_tx.send(());
        }
    })
    .map_err(|source| WatchError {
        path: path.clone(),
        source,
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    for d in std::iter::once(&dir).chain(mesh_dir.as_ref()) {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: d.clone(),
                source,
            })?;
    }

    let (status_tx, status_rx) = watch::channel(ReloadStatus::default());
    let status_tx = Arc::new(status_tx);
    tokio::spawn(
        async move {
            let _watcher: RecommendedWatcher = watcher;
            loop {
                tokio::select! {
                    e = events.recv() => if e.is_none() { return },
                    _ = stop.cancelled() => return,
                }
                // Debounce: an editor's save or a ConfigMap swap is several
                // events; settle, drop what queued meanwhile, reload once.
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
                // Parsing and translating a large mesh takes tens of
                // milliseconds: run it off the proxy's (single) thread.
                let job = {
                    let (path, store, overrides) =
                        (path.clone(), Arc::clone(&store), Arc::clone(&overrides));
                    let (metrics, balance, status) = (
                        metrics.clone(),
                        Arc::clone(&balance),
                        Arc::clone(&status_tx),
                    );
                    move || {
                        reload(&path, &store, &*overrides, &metrics, &balance, &status);
                        balance.prune();
                    }
                };
                if let Err(error) = tokio::task::spawn_blocking(job).await {
                    warn!(%error, "reload did not complete");
                }
            }
        }
        .instrument(tracing::info_span!("reload")),
    );
    Ok(status_rx)
}

fn is_relevant(changed: &Path, config: &Path, mesh_dir: Option<&Path>) -> bool {
    let name = changed.file_name().and_then(|n| n.to_str()).unwrap_or("");
    changed == config
        || changed.file_name() == config.file_name()
        || name.starts_with("..")
        || mesh_dir.is_some_and(|d| changed.starts_with(d))
}

fn reload(
    path: &Path,
    store: &Store,
    overrides: &dyn Overrides,
    metrics: &Metrics,
    balance: &balance::Registry,
    status: &watch::Sender<ReloadStatus>,
) {
    let running = store.load_full();
    let mut restart_only = Vec::new();
    let result = load_file(path, overrides)
        .map_err(|e| e.problems())
        .and_then(|mut loaded| {
            if loaded.config.mesh_dir != running.config.mesh_dir {
                return Err(vec![Problem::new(
                    "meshDir",
                    "changing the manifest directory requires a restart",
                )]);
            }
            restart_only = keep_start_only(&running.config, &mut loaded.config);
            let snapshot = translate_with(&loaded.config, &loaded.manifests, balance)?;
            Ok((loaded.config, snapshot))
        });
    match result {
        Ok((config, snapshot)) => {
            for field in restart_only {
                warn!(field, "changed in the config file; takes effect on restart");
            }
            let services = snapshot.services.len();
            let version = store.publish(config, snapshot);
            metrics.reloads.with_label_values(&["applied"]).inc();
            status.send_modify(|s| {
                s.applied += 1;
                s.last_error = None;
            });
            info!(version, services, "config reloaded");
        }
        Err(problems) => {
            let text = problems
                .iter()
                .map(Problem::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            metrics.reloads.with_label_values(&["rejected"]).inc();
            warn!(problems = %text, "config reload rejected; the previous state keeps serving");
            status.send_modify(|s| {
                s.rejected += 1;
                s.last_error = Some(text);
            });
        }
    }
}

/// Copies the start-only settings of `running` into `new`; returns the
/// fields that differed.
fn keep_start_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if new.listeners != running.listeners {
        changed.push("listeners");
        new.listeners = running.listeners.clone();
    }
    if new.runtime != running.runtime {
        changed.push("runtime");
        new.runtime = running.runtime.clone();
    }
    if new.log.format != running.log.format || new.log.level != running.log.level {
        changed.push("log.format/log.level");
        new.log.format = running.log.format;
        new.log.level = running.log.level.clone();
    }
    if new.mode != running.mode {
        changed.push("mode");
        new.mode = running.mode;
    }
    if new.identity != running.identity {
        changed.push("identity (the files it names are watched and reloaded)");
        new.identity = running.identity.clone();
    }
    if new.inbound.mesh_port != running.inbound.mesh_port {
        changed.push("inbound.meshPort");
        new.inbound.mesh_port = running.inbound.mesh_port;
    }
    if new.node != running.node {
        changed.push("node");
        new.node = running.node.clone();
    }
    if new.dns.keep_start_only(&running.dns) {
        changed.push("dns (enabled, listen, upstreams, upstreamTimeout, cacheSize, vipRange)");
    }
    changed
}
