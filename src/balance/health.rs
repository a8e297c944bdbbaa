//! Health of one endpoint, shared by every snapshot that lists it: passive
//! failure accrual with ejection and exponential backoff, the active prober's
//! verdict, in-flight requests and latency (for balancing).
//!
//! An ejected endpoint gets no traffic until its ejection expires; then a
//! single request (the probe) may go to it. Success restores it; failure
//! ejects it again for twice as long (capped). A connect failure ejects at
//! once; other failures (resets, 5xx of idempotent requests) after
//! [`FAILURES_TO_EJECT`] in a row. An active probe's success un-ejects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::clock;
use super::ewma::PeakEwma;

/// Consecutive non-connect failures that eject an endpoint.
pub const FAILURES_TO_EJECT: u32 = 3;
/// First ejection; doubles with each consecutive ejection.
pub const BASE_EJECTION: Duration = Duration::from_millis(500);
/// Longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

/// What went wrong with a request to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection (or handshake) failed: the endpoint is not there.
    Connect,
    /// A reset mid-request, or a 5xx to an idempotent request.
    Response,
}

#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    inflight: AtomicU32,
    ewma: PeakEwma,
    consecutive_failures: AtomicU32,
    /// 0 when not ejected; else the clock time the ejection ends.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    probing: AtomicBool,
    /// Whether the current ejection came from a failed connect (the
    /// endpoint is unreachable) rather than from bad responses.
    ejected_for_connect: AtomicBool,
    /// Set by the active prober when the endpoint does not answer.
    probe_down: AtomicBool,
}

/// Whether an endpoint may be picked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Ejected, but the ejection is over: one probe request may go.
    ProbeDue,
    Unavailable,
}

impl EndpointState {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            inflight: AtomicU32::new(0),
            ewma: PeakEwma::new(clock::now_ns()),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            ejected_for_connect: AtomicBool::new(false),
            probe_down: AtomicBool::new(false),
        })
    }

    pub fn availability(&self, now_ns: u64) -> Availability {
        if self.probe_down.load(Ordering::Relaxed) {
            return Availability::Unavailable;
        }
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => Availability::Healthy,
            until if until <= now_ns && !self.probing.load(Ordering::Relaxed) => {
                Availability::ProbeDue
            }
            _ => Availability::Unavailable,
        }
    }

    /// Healthy in the strict sense: not ejected and answering probes.
    pub fn is_healthy(&self) -> bool {
        !self.probe_down.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) == 0
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Claims the single probe slot of an ejected endpoint.
    pub fn try_claim_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Load for power-of-two-choices: latency estimate × (in flight + 1).
    pub fn load(&self, now_ns: u64) -> f64 {
        let inflight = self.inflight.load(Ordering::Relaxed) as f64;
        self.ewma.estimate(now_ns) * (inflight + 1.0)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Starts a request; the guard reports its outcome.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            state: Arc::clone(self),
            start_ns: clock::now_ns(),
            done: false,
        }
    }

    fn succeeded(&self, rtt: Duration, now_ns: u64) {
        self.ewma.observe(rtt, now_ns);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
        self.probing.store(false, Ordering::Relaxed);
    }

    /// Returns true when this failure ejected the endpoint.
    fn failed(&self, failure: Failure) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_probe = self.probing.swap(false, Ordering::Relaxed);
        let eject = failure == Failure::Connect || n >= FAILURES_TO_EJECT || was_probe;
        if eject {
            let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
            let backoff = BASE_EJECTION.saturating_mul(1 << k).min(MAX_EJECTION);
            let until = clock::now_ns() + backoff.as_nanos() as u64;
            self.ejected_for_connect
                .store(failure == Failure::Connect, Ordering::Relaxed);
            self.ejected_until.store(until.max(1), Ordering::Relaxed);
        }
        eject
    }

    /// The active prober's verdict. A successful TCP probe also ends an
    /// ejection for failed connects (the endpoint is reachable again), but
    /// not one for bad responses: an endpoint that accepts connections and
    /// answers 5xx stays out until a real request succeeds, with its backoff
    /// growing, instead of flapping back on every probe.
    pub fn set_probe_result(&self, up: bool) {
        self.probe_down.store(!up, Ordering::Relaxed);
        if up
            && self.ejected_for_connect.load(Ordering::Relaxed)
            && self.ejected_until.swap(0, Ordering::Relaxed) != 0
        {
            self.ejections.store(0, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.probing.store(false, Ordering::Relaxed);
        }
    }
}

/// A request in flight to an endpoint. Report the outcome with
/// [`InFlight::success`] or [`InFlight::failure`]; dropping it unreported
/// (the caller went away) counts neither.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<EndpointState>,
    start_ns: u64,
    done: bool,
}

impl InFlight {
    pub fn success(mut self) {
        self.done = true;
        // One clock read for both the round trip and the estimate's stamp.
        let now = clock::now_ns();
        let rtt = Duration::from_nanos(now.saturating_sub(self.start_ns));
        self.state.succeeded(rtt, now);
    }

    /// Returns true when the failure ejected the endpoint.
    pub fn failure(mut self, failure: Failure) -> bool {
        self.done = true;
        self.state.failed(failure)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            // Abandoned: release a probe slot so the endpoint can be tried again.
            self.state.probing.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<EndpointState> {
        EndpointState::new("127.0.0.1:1".parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_failure_ejects_then_one_probe_restores() {
        let s = state();
        assert!(s.start().failure(Failure::Connect));
        assert_eq!(s.availability(clock::now_ns()), Availability::Unavailable);
        tokio::time::advance(BASE_EJECTION).await;
        assert_eq!(s.availability(clock::now_ns()), Availability::ProbeDue);
        assert!(s.try_claim_probe());
        assert!(!s.try_claim_probe(), "a single probe at a time");
        let probe = s.start();
        assert_eq!(s.availability(clock::now_ns()), Availability::Unavailable);
        probe.success();
        assert_eq!(s.availability(clock::now_ns()), Availability::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_back_off_exponentially() {
        let s = state();
        s.start().failure(Failure::Connect);
        tokio::time::advance(BASE_EJECTION).await;
        assert!(s.try_claim_probe());
        assert!(
            s.start().failure(Failure::Connect),
            "a failed probe ejects again"
        );
        tokio::time::advance(BASE_EJECTION).await;
        assert_eq!(s.availability(clock::now_ns()), Availability::Unavailable);
        tokio::time::advance(BASE_EJECTION).await;
        assert_eq!(s.availability(clock::now_ns()), Availability::ProbeDue);
    }

    #[tokio::test(start_paused = true)]
    async fn response_failures_eject_after_several_in_a_row() {
        let s = state();
        for _ in 1..FAILURES_TO_EJECT {
            assert!(!s.start().failure(Failure::Response));
        }
        assert!(s.start().failure(Failure::Response));
        assert!(s.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let s = state();
        s.start().failure(Failure::Response);
        s.start().failure(Failure::Response);
        s.start().success();
        assert!(!s.start().failure(Failure::Response));
        assert!(!s.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn active_probes_mark_down_and_a_good_probe_unejects() {
        let s = state();
        s.set_probe_result(false);
        assert_eq!(s.availability(clock::now_ns()), Availability::Unavailable);
        s.set_probe_result(true);
        assert!(s.is_healthy());
        s.start().failure(Failure::Connect);
        s.set_probe_result(true);
        assert!(s.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_probe_does_not_end_an_ejection_for_bad_responses() {
        let s = state();
        for _ in 0..FAILURES_TO_EJECT {
            s.start().failure(Failure::Response);
        }
        assert!(s.is_ejected());
        s.set_probe_result(true);
        assert!(
            s.is_ejected(),
            "reachable is not the same as answering well"
        );
        tokio::time::advance(BASE_EJECTION).await;
        assert_eq!(s.availability(clock::now_ns()), Availability::ProbeDue);
        assert!(s.try_claim_probe());
        s.start().success();
        assert!(s.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_count_toward_load() {
        let s = state();
        let now = clock::now_ns();
        let idle = s.load(now);
        let a = s.start();
        let b = s.start();
        assert_eq!(s.inflight(), 2);
        assert!(s.load(now) > 2.5 * idle);
        drop(a);
        drop(b);
        assert_eq!(s.inflight(), 0);
    }
}
