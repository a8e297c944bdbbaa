//! Picking one endpoint within a cluster: power of two choices over
//! peak-EWMA load (the default), round robin, least request, or consistent
//! hashing (rendezvous) on a request key for sticky sessions.
//!
//! Written here rather than taken from `tower::balance`: tower's balancer is
//! a `Service` driven through `&mut self`, so sharing one across client
//! connections needs a `Buffer` (a channel and a task hop per request) on the
//! hot path. These pickers are lock-free reads of shared atomics instead.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::health::Availability;
use super::Member;

/// The balancing algorithm of a service (annotation `strait.io/lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    P2cEwma,
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "p2c-ewma" => Algorithm::P2cEwma,
            "round-robin" => Algorithm::RoundRobin,
            "least-request" => Algorithm::LeastRequest,
            "consistent-hash" => Algorithm::ConsistentHash,
            _ => return None,
        })
    }
}

/// Per-request inputs to a pick.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    /// Endpoints already tried for this request (retries go elsewhere).
    pub exclude: &'a [SocketAddr],
    /// The request's key for consistent hashing.
    pub hash: Option<u64>,
    /// The request may be the one probe request of an ejected endpoint that
    /// policy would not otherwise pick (a failed-over service's local
    /// cluster): it is idempotent and can be retried elsewhere if the probe fails.
    pub may_probe: bool,
    /// Set by the selector from the service: endpoints with this many
    /// requests in flight are not picked.
    pub max_inflight: Option<u32>,
    /// Only the local cluster's endpoints are eligible, whatever the
    /// policy (the east-west gateway: traffic that crossed clusters once
    /// must not cross again).
    pub local_only: bool,
}

/// Whether `m` may be picked, and if it is an ejected endpoint whose probe
/// is due, whether this pick may be its probe (claimed only when chosen).
fn usable(m: &Member, ctx: &PickContext<'_>, now_ns: u64) -> Option<Availability> {
    if ctx.exclude.contains(&m.addr) || ctx.max_inflight.is_some_and(|l| m.state.inflight() >= l) {
        return None;
    }
    match m.state.availability(now_ns) {
        Availability::Unavailable => None,
        a => Some(a),
    }
}

/// Finalises a choice: a due probe must claim the endpoint's probe slot.
fn claim(m: &Member, a: Availability) -> bool {
    a == Availability::Healthy || m.state.try_claim_probe()
}

pub(crate) fn pick<'m>(
    algorithm: Algorithm,
    members: &'m [Member],
    rr: &AtomicUsize,
    ctx: &PickContext<'_>,
    now_ns: u64,
) -> Option<&'m Member> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    match algorithm {
        Algorithm::RoundRobin => {
            let start = rr.fetch_add(1, Ordering::Relaxed);
            scan(members, start, ctx, now_ns)
        }
        Algorithm::P2cEwma => two_choices(members, ctx, now_ns, |m| m.state.load(now_ns)),
        Algorithm::LeastRequest => {
            two_choices(members, ctx, now_ns, |m| f64::from(m.state.inflight()))
        }
        Algorithm::ConsistentHash => match ctx.hash {
            Some(key) => rendezvous(members, key, ctx, now_ns),
            None => two_choices(members, ctx, now_ns, |m| m.state.load(now_ns)),
        },
    }
}

/// The first usable member from `start`, wrapping.
fn scan<'m>(
    members: &'m [Member],
    start: usize,
    ctx: &PickContext<'_>,
    now_ns: u64,
) -> Option<&'m Member> {
    let n = members.len();
    (0..n)
        .map(|i| &members[(start + i) % n])
        .find(|m| usable(m, ctx, now_ns).is_some_and(|a| claim(m, a)))
}

/// Power of two choices: two random usable members, the lower cost wins.
fn two_choices<'m>(
    members: &'m [Member],
    ctx: &PickContext<'_>,
    now_ns: u64,
    cost: impl Fn(&Member) -> f64,
) -> Option<&'m Member> {
    let n = members.len();
    if n == 1 {
        return scan(members, 0, ctx, now_ns);
    }
    // Usually both draws are usable; when many members are ejected, fall
    // back to a scan from a random place so a usable one is always found.
    for _ in 0..3 {
        let i = fastrand::usize(..n);
        let mut j = fastrand::usize(..n - 1);
        if j >= i {
            j += 1;
        }
        let (a, b) = (&members[i], &members[j]);
        let (ua, ub) = (usable(a, ctx, now_ns), usable(b, ctx, now_ns));
        let order = match (ua, ub) {
            (Some(x), Some(y)) => {
                if cost(b) < cost(a) {
                    [(b, y), (a, x)]
                } else {
                    [(a, x), (b, y)]
                }
            }
            (Some(x), None) => [(a, x), (a, x)],
            (None, Some(y)) => [(b, y), (b, y)],
            (None, None) => continue,
        };
        for (m, avail) in order {
            if claim(m, avail) {
                return Some(m);
            }
        }
    }
    scan(members, fastrand::usize(..n), ctx, now_ns)
}

/// Highest-random-weight hashing: the same key keeps the same endpoint
/// while it is usable, and only the keys of a removed endpoint move.
fn rendezvous<'m>(
    members: &'m [Member],
    key: u64,
    ctx: &PickContext<'_>,
    now_ns: u64,
) -> Option<&'m Member> {
    let mut best: Option<(u64, &Member, Availability)> = None;
    for m in members {
        let Some(a) = usable(m, ctx, now_ns) else {
            continue;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        m.addr.hash(&mut h);
        let score = h.finish();
        if best.is_none_or(|(s, _, _)| score > s) {
            best = Some((score, m, a));
        }
    }
    let (_, m, a) = best?;
    claim(m, a).then_some(m)
}
