//! Peak-EWMA latency per endpoint: the load signal of power-of-two-choices.
//!
//! As in Finagle and linkerd: a new round-trip time above the estimate
//! replaces it at once (peak), one below it is blended in with a weight that
//! grows with the time since the last update, and the estimate decays toward
//! zero while an endpoint is idle, so a once-slow endpoint is tried again.
//! Lock-free: the estimate and its timestamp are two atomics; a lost update
//! under a race only makes the estimate slightly stale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Decay time constant.
const TAU_NS: f64 = 10_000_000_000.0;
/// The estimate of an endpoint with no history: optimistic, so new
/// endpoints get traffic and a measurement.
const DEFAULT_RTT_NS: f64 = 1_000_000.0;

#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// Estimated RTT in ns, as `f64` bits.
    estimate: AtomicU64,
    /// When `estimate` was last updated, in ns of [`super::clock`].
    stamp: AtomicU64,
}

impl PeakEwma {
    pub fn new(now_ns: u64) -> Self {
        Self {
            estimate: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            stamp: AtomicU64::new(now_ns),
        }
    }

    /// The decayed estimate at `now_ns`, in ns.
    pub fn estimate(&self, now_ns: u64) -> f64 {
        let est = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let stamp = self.stamp.load(Ordering::Relaxed);
        let idle = now_ns.saturating_sub(stamp) as f64;
        est * (-idle / TAU_NS).exp()
    }

    pub fn observe(&self, rtt: Duration, now_ns: u64) {
        let rtt = rtt.as_nanos() as f64;
        let est = self.estimate(now_ns);
        let next = if rtt > est {
            rtt
        } else {
            let stamp = self.stamp.load(Ordering::Relaxed);
            let elapsed = now_ns.saturating_sub(stamp) as f64;
            let decay = (-elapsed / TAU_NS).exp();
            est * decay + rtt * (1.0 - decay)
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let e = PeakEwma::new(0);
        e.observe(Duration::from_millis(50), 10 * MS);
        assert!((e.estimate(10 * MS) - 50.0 * MS as f64).abs() < 1.0);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_gradually() {
        let e = PeakEwma::new(0);
        e.observe(Duration::from_millis(50), 0);
        e.observe(Duration::from_millis(1), 1_000 * MS);
        let est = e.estimate(1_000 * MS);
        assert!(est < 50.0 * MS as f64 && est > 1.0 * MS as f64, "{est}");
    }

    #[test]
    fn an_idle_estimate_decays() {
        let e = PeakEwma::new(0);
        e.observe(Duration::from_millis(100), 0);
        assert!(e.estimate(60_000 * MS) < 1.0 * MS as f64);
    }
}
