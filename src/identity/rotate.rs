//! Certificate rotation from files: watches the parent directories of the
//! three identity files with notify (so a Kubernetes Secret's `..data`
//! symlink swap is seen), debounces, and reloads the store. Access events
//! (opens and reads, our own reloads among them) are ignored.
//!
//! Every few seconds it also refreshes the expiry gauge and compares the
//! files' size and modification time with what it saw last: a safety net
//! for missed events, and the only mechanism when the watcher cannot start.
//! File reads and stats run on the blocking pool, never on the runtime's
//! thread. It does not decide what a good identity is (`store.rs` does).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use super::{IdentityError, IdentityStore};
use crate::config::Identity;

/// How long file events are collected before one reload runs.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// How often the expiry gauge is refreshed and the files are polled.
const TICK: Duration = Duration::from_secs(5);

/// Size and modification time of each file, as last seen.
type Fingerprint = Vec<Option<(Option<SystemTime>, u64)>>;

// === impl IdentityStore ===

impl IdentityStore {
    /// Watches the identity files and reloads on change until `stop` is
    /// cancelled; see the module docs.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let span = tracing::info_span!("identity_rotate");
        // The watcher starts before this returns, so any change made after
        // it is seen.
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let watcher = match watch_dirs(&self.config, events_tx) {
            Ok(watcher) => Some((watcher, events_rx)),
            Err(error) => {
                span.in_scope(
                    || warn!(%error, "cannot watch the identity files; polling them instead"),
                );
                None
            }
        };
        tokio::spawn(run(Arc::clone(self), watcher, stop).instrument(span))
    }
}

async fn run(
    store: Arc<IdentityStore>,
    watcher: Option<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)>,
    stop: CancellationToken,
) {
    // The watcher lives as long as this task; dropping it stops notify's thread.
    let (_watcher, mut events) = watcher.unzip();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Catch up with changes made between the load and the watcher's start
    // (a no-op when the files are as loaded).
    reload(&store).await;
    let mut seen = fingerprint(&store).await;
    let mut expired = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = next_event(&mut events) => {
                // Debounce: a Secret swap or an editor's save is several
                // events; settle, drop what queued meanwhile, reload once.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                }
                if let Some(events) = events.as_mut() {
                    while events.try_recv().is_ok() {}
                }
                reload(&store).await;
                seen = fingerprint(&store).await;
            }
            _ = tick.tick() => {
                store.refresh_expiry();
                let now = fingerprint(&store).await;
                if now != seen {
                    seen = now;
                    reload(&store).await;
                }
                // Say so once when the certificate expires, and once when it is renewed.
                match (store.ready(), expired) {
                    (Err(reason), false) => {
                        error!(%reason, "mesh handshakes will fail until the certificate is renewed");
                        expired = true;
                    }
                    (Ok(()), true) => {
                        info!("the certificate is valid again");
                        expired = false;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The next relevant file event; never, when there is no watcher.
async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one reload on the blocking pool. A rejected reload was logged and
/// counted by the store.
async fn reload(store: &Arc<IdentityStore>) {
    let store = Arc::clone(store);
    let span = tracing::Span::current();
    let job = move || span.in_scope(|| store.reload());
    if let Err(error) = tokio::task::spawn_blocking(job).await {
        warn!(%error, "identity reload did not complete");
    }
}

async fn fingerprint(store: &Arc<IdentityStore>) -> Fingerprint {
    let paths = files(&store.config).map(Path::to_owned);
    let stat = move || {
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            })
            .collect()
    };
    // A stat that cannot run counts as "changed": the reload then says why.
    tokio::task::spawn_blocking(stat).await.unwrap_or_default()
}

fn files(config: &Identity) -> [&Path; 3] {
    [
        config.cert_chain.as_path(),
        config.private_key.as_path(),
        config.trust_bundle.as_path(),
    ]
}

/// Starts notify on the files' parent directories. Events that may change
/// a file are sent on `events`: any but Access on the files themselves or
/// on Kubernetes' `..data`-style entries, and watcher errors (which may
/// mean lost events).
fn watch_dirs(
    config: &Identity,
    events: mpsc::UnboundedSender<()>,
) -> Result<RecommendedWatcher, IdentityError> {
    let names: BTreeSet<_> = files(config)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_owned()))
        .collect();
    let dirs: BTreeSet<PathBuf> = files(config)
        .iter()
        .map(|p| match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        })
        .collect();
    let relevant = move |path: &Path| {
        path.file_name()
            .is_some_and(|name| names.contains(name) || name.as_encoded_bytes().starts_with(b".."))
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let send = match res {
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => false,
            Ok(event) => event.paths.iter().any(|p| relevant(p)),
            Err(_) => true,
        };
        if send {
            let _ = events.send(());
        }
    })
    .map_err(|source| IdentityError::Watch {
        path: config.cert_chain.clone(),
        source,
    })?;
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| IdentityError::Watch { path: dir, source })?;
    }
    Ok(watcher)
}
