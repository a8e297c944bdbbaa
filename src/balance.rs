//! Endpoint selection: the cross-cluster traffic policy (which clusters are
//! eligible), balancing within a cluster, and endpoint health.
//!
//! - `selector.rs`: the per-service-port [`Selector`] (Locality,
//!   ActiveActive by weight, FailOver with fail-back hysteresis);
//! - `algorithm.rs`: p2c over peak-EWMA (default), round robin, least
//!   request, consistent hashing;
//! - `health.rs`: passive failure accrual and ejection, in-flight counts;
//!   `ewma.rs`: the latency estimate;
//! - `registry.rs`: state that outlives snapshots, and selector building;
//! - `prober.rs`: active TCP probes and the balancing gauges.
//!
//! Picking takes no lock: a selector is immutable per snapshot and health is
//! atomics. Retries and timeouts are the proxy's (`proxy/http/logical.rs`).

mod algorithm;
mod ewma;
mod health;
pub mod prober;
mod registry;
mod selector;

pub use algorithm::{Algorithm, PickContext};
pub use health::{EndpointState, Failure, InFlight};
pub use registry::{Metrics, Registry, SelectorSpec};
pub(crate) use selector::Member;
pub use selector::{NoEndpoint, Pick, PolicyState, Selector, SelectorView};

/// A monotonic clock in nanoseconds for health and latency state kept in
/// atomics; follows tokio's clock, so paused-time tests control it.
///
/// The base is one day before the first reading, taken from the real clock:
/// every tokio clock in the process reads above it, including the paused
/// clock of a runtime built earlier (each test has its own) or advanced far
/// ahead. A base taken from whichever runtime read first would make the
/// others saturate at the base and stand still.
pub(crate) mod clock {
    use std::sync::OnceLock;
    use std::time::Duration;

    use tokio::time::Instant;

    const MARGIN: Duration = Duration::from_secs(24 * 3600);

    pub fn now_ns() -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let base = *BASE.get_or_init(|| {
            let real = std::time::Instant::now();
            Instant::from_std(real.checked_sub(MARGIN).unwrap_or(real))
        });
        // +1 keeps 0 free as "never" in the atomics.
        Instant::now().saturating_duration_since(base).as_nanos() as u64 + 1
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn paused_runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime")
        }

        #[test]
        fn advances_on_a_runtime_behind_one_read_earlier() {
            // A runtime far ahead reads first (it may set the base)...
            paused_runtime().block_on(async {
                tokio::time::advance(Duration::from_secs(3600)).await;
                now_ns();
            });
            // ...then a fresh runtime, an hour behind it, must still see
            // its own clock move.
            paused_runtime().block_on(async {
                let before = now_ns();
                tokio::time::advance(Duration::from_millis(500)).await;
                let after = now_ns();
                assert!(after >= before + 500_000_000, "{before} -> {after}");
            });
        }
    }
}

#[cfg(test)]
mod tests;
