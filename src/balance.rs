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
pub(crate) mod clock {
    use std::sync::OnceLock;

    use tokio::time::Instant;

    pub fn now_ns() -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        // +1 keeps 0 free as "never" in the atomics.
        Instant::now().saturating_duration_since(base).as_nanos() as u64 + 1
    }
}

#[cfg(test)]
mod tests;
