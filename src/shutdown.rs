//! Readiness latches and the process shutdown signal.
//!
//! Each component that must be up before the proxy takes traffic holds a
//! [`Latch`]; `/ready` answers 200 once every latch is released and the
//! proxy is not draining.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

/// A condition that can come and go (a certificate that expires), asked on
/// every `/ready`.
pub type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    pending: Mutex<BTreeSet<&'static str>>,
    checks: Mutex<Vec<Check>>,
    draining: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("pending", &self.pending)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

/// Holds readiness back until released (or dropped).
#[derive(Debug)]
pub struct Latch {
    name: &'static str,
    inner: Arc<Inner>,
}

impl Readiness {
    pub fn latch(&self, name: &'static str) -> Latch {
        self.pending().insert(name);
        Latch {
            name,
            inner: Arc::clone(&self.inner),
        }
    }

    /// Adds a condition asked on every readiness check.
    pub fn add_check(&self, check: Check) {
        self.inner
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    /// `Ok` when ready; otherwise what is still missing.
    pub fn check(&self) -> Result<(), String> {
        if self.inner.draining.load(Ordering::Acquire) {
            return Err("draining".to_owned());
        }
        for check in self
            .inner
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            check()?;
        }
        let pending = self.pending();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "waiting for {}",
                pending.iter().copied().collect::<Vec<_>>().join(", ")
            ))
        }
    }

    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Latch {
    pub fn release(self) {}
}

impl Drop for Latch {
    fn drop(&mut self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.name);
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_latches_dropped() {
        let r = Readiness::default();
        let a = r.latch("listeners");
        let b = r.latch("mesh state");
        assert_eq!(r.check().unwrap_err(), "waiting for listeners, mesh state");
        drop(a);
        assert_eq!(r.check().unwrap_err(), "waiting for mesh state");
        b.release();
        assert!(r.check().is_ok());
        r.set_draining();
        assert_eq!(r.check().unwrap_err(), "draining");
    }
}
