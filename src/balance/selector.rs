//! The per-service-port [`Selector`]: which clusters are eligible under the
//! service's traffic policy, then which endpoint within the chosen cluster.
//!
//! | policy | clusters | choice |
//! |---|---|---|
//! | `Locality` | local only | within the local cluster |
//! | `ActiveActive` | local + targets (all remotes when none listed) | weighted random among clusters with a usable endpoint |
//! | `FailOver` | local, then targets in order | local while it has a healthy endpoint; after failing over, back to local only once it has stayed healthy for the hold-down |
//!
//! A selector is built once per snapshot; its cross-snapshot state (failover
//! tier, counters) lives in a [`PolicyState`] and each endpoint's health in
//! an [`EndpointState`], both shared through the [`super::Registry`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;
use tower::retry::budget::{Budget, TpsBudget};

use super::algorithm::{self, Algorithm, PickContext};
use super::clock;
use super::health::EndpointState;
use crate::discovery::{EndpointKind, LbType};

/// No endpoint is eligible; names the clusters that were considered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no ready endpoint in cluster(s) {}", .considered.join(", "))]
pub struct NoEndpoint {
    pub considered: Vec<Arc<str>>,
}

/// A chosen endpoint.
#[derive(Debug, Clone)]
pub struct Pick {
    pub addr: SocketAddr,
    pub kind: EndpointKind,
    pub cluster: Arc<str>,
    pub local: bool,
    pub state: Arc<EndpointState>,
}

/// A ready endpoint of one cluster.
#[derive(Debug)]
pub(crate) struct Member {
    pub addr: SocketAddr,
    pub kind: EndpointKind,
    pub state: Arc<EndpointState>,
}

/// One eligible cluster.
#[derive(Debug)]
pub(crate) struct Group {
    pub cluster: Arc<str>,
    pub local: bool,
    pub weight: u32,
    pub members: Vec<Member>,
}

impl Group {
    fn any_healthy(&self) -> bool {
        self.members.iter().any(|m| m.state.is_healthy())
    }

    fn any_usable(&self, ctx: &PickContext<'_>, now_ns: u64) -> bool {
        self.members.iter().any(|m| {
            !ctx.exclude.contains(&m.addr)
                && m.state.availability(now_ns) != super::health::Availability::Unavailable
        })
    }
}

/// State of a service port's policy that outlives snapshots.
#[derive(Debug)]
pub struct PolicyState {
    failed_over: AtomicBool,
    /// Clock time since which the local cluster has been healthy while
    /// failed over; 0 when it is not.
    healthy_since_ns: AtomicU64,
    rr: AtomicUsize,
    failovers: IntCounter,
    failbacks: IntCounter,
    /// Bounds retries to a share of requests (tower's budget).
    budget: TpsBudget,
}

impl PolicyState {
    pub fn new(failovers: IntCounter, failbacks: IntCounter, budget: TpsBudget) -> Self {
        Self {
            failed_over: AtomicBool::new(false),
            healthy_since_ns: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
            failovers,
            failbacks,
            budget,
        }
    }

    /// Records a request, earning retry budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes budget for one retry; false when retries are exhausted.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    pub fn is_failed_over(&self) -> bool {
        self.failed_over.load(Ordering::Relaxed)
    }
}

/// Picks endpoints for one service port.
#[derive(Debug)]
pub struct Selector {
    lb_type: LbType,
    algorithm: Algorithm,
    /// Eligible clusters in policy order; for FailOver, the local one first.
    groups: Vec<Group>,
    considered: Vec<Arc<str>>,
    state: Arc<PolicyState>,
    hold_down_ns: u64,
    max_inflight: Option<u32>,
}

impl Selector {
    pub(crate) fn new(
        lb_type: LbType,
        algorithm: Algorithm,
        groups: Vec<Group>,
        state: Arc<PolicyState>,
        hold_down: Duration,
    ) -> Self {
        let considered = groups.iter().map(|g| Arc::clone(&g.cluster)).collect();
        Self {
            lb_type,
            algorithm,
            groups,
            considered,
            state,
            hold_down_ns: hold_down.as_nanos() as u64,
            max_inflight: None,
        }
    }

    /// Endpoints with this many requests in flight are not picked.
    pub(crate) fn with_max_inflight(mut self, limit: Option<u32>) -> Self {
        self.max_inflight = limit;
        self
    }

    /// The next endpoint for a request or connection.
    pub fn select(&self, ctx: &PickContext<'_>) -> Result<Pick, NoEndpoint> {
        let now = clock::now_ns();
        let limited;
        let ctx = match self.max_inflight {
            None => ctx,
            Some(limit) => {
                limited = PickContext {
                    max_inflight: Some(limit),
                    ..*ctx
                };
                &limited
            }
        };
        if ctx.local_only {
            return self.select_local(ctx, now);
        }
        let found = match self.lb_type {
            LbType::Locality => self.groups.first().and_then(|g| self.pick_in(g, ctx, now)),
            LbType::ActiveActive => self.weighted(ctx, now),
            LbType::FailOver => self.failover(ctx, now),
        };
        found.ok_or_else(|| NoEndpoint {
            considered: self.considered.clone(),
        })
    }

    /// The local cluster only, under any policy. The registry always puts
    /// the local group first; the failover tier is neither read nor moved,
    /// since this pick says nothing about what the policy would choose.
    fn select_local(&self, ctx: &PickContext<'_>, now: u64) -> Result<Pick, NoEndpoint> {
        let local = self.groups.first().filter(|g| g.local);
        local
            .and_then(|g| self.pick_in(g, ctx, now))
            .ok_or_else(|| NoEndpoint {
                considered: local.map(|g| Arc::clone(&g.cluster)).into_iter().collect(),
            })
    }

    fn pick_in(&self, g: &Group, ctx: &PickContext<'_>, now: u64) -> Option<Pick> {
        let m = algorithm::pick(self.algorithm, &g.members, &self.state.rr, ctx, now)?;
        Some(Pick {
            addr: m.addr,
            kind: m.kind.clone(),
            cluster: Arc::clone(&g.cluster),
            local: g.local,
            state: Arc::clone(&m.state),
        })
    }

    /// ActiveActive: a cluster by weight among those with a usable endpoint,
    /// so a dead cluster's share moves to the others at once.
    fn weighted(&self, ctx: &PickContext<'_>, now: u64) -> Option<Pick> {
        let total: u64 = self
            .groups
            .iter()
            .filter(|g| g.any_usable(ctx, now))
            .map(|g| u64::from(g.weight))
            .sum();
        if total > 0 {
            let mut r = fastrand::u64(..total);
            for g in self.groups.iter().filter(|g| g.any_usable(ctx, now)) {
                let w = u64::from(g.weight);
                if r < w {
                    if let Some(p) = self.pick_in(g, ctx, now) {
                        return Some(p);
                    }
                    break;
                }
                r -= w;
            }
        }
        // Lost a race with an ejection: any usable cluster will do.
        self.groups.iter().find_map(|g| self.pick_in(g, ctx, now))
    }

    /// FailOver with hysteresis on the way back.
    fn failover(&self, ctx: &PickContext<'_>, now: u64) -> Option<Pick> {
        let (local, rest) = self.groups.split_first()?;
        if self.update_tier(now) {
            // An ejected local endpoint whose ejection is over gets one
            // request, so the local cluster can be found healthy again.
            if ctx.may_probe {
                if let Some(p) = self.probe_in(local, ctx, now) {
                    return Some(p);
                }
            }
            // Remote tiers in order; the local cluster only as a last resort.
            rest.iter()
                .chain(std::iter::once(local))
                .find_map(|g| self.pick_in(g, ctx, now))
        } else {
            std::iter::once(local)
                .chain(rest)
                .find_map(|g| self.pick_in(g, ctx, now))
        }
    }

    /// An endpoint of `g` whose probe is due, claimed.
    fn probe_in(&self, g: &Group, ctx: &PickContext<'_>, now: u64) -> Option<Pick> {
        let m = g.members.iter().find(|m| {
            !ctx.exclude.contains(&m.addr)
                && m.state.availability(now) == super::health::Availability::ProbeDue
                && m.state.try_claim_probe()
        })?;
        Some(Pick {
            addr: m.addr,
            kind: m.kind.clone(),
            cluster: Arc::clone(&g.cluster),
            local: g.local,
            state: Arc::clone(&m.state),
        })
    }

    /// Moves a FailOver service off its local cluster when that has no
    /// healthy endpoint, and back once it has stayed healthy for the
    /// hold-down. Called on every pick and by the active prober, so the
    /// hold-down runs from the recovery, not from the next request.
    /// Returns whether the service is failed over.
    pub(crate) fn update_tier(&self, now: u64) -> bool {
        let Some(local) = self.groups.first() else {
            return false;
        };
        if self.lb_type != LbType::FailOver {
            return false;
        }
        let s = &self.state;
        let local_healthy = local.any_healthy();
        if s.failed_over.load(Ordering::Relaxed) {
            if local_healthy {
                let since = s.healthy_since_ns.load(Ordering::Relaxed);
                if since == 0 {
                    s.healthy_since_ns.store(now.max(1), Ordering::Relaxed);
                } else if now.saturating_sub(since) >= self.hold_down_ns
                    && s.failed_over.swap(false, Ordering::Relaxed)
                {
                    s.failbacks.inc();
                    tracing::info!(cluster = %local.cluster, "failed back to the local cluster");
                }
            } else {
                s.healthy_since_ns.store(0, Ordering::Relaxed);
            }
        } else if !local_healthy && !s.failed_over.swap(true, Ordering::Relaxed) {
            s.healthy_since_ns.store(0, Ordering::Relaxed);
            s.failovers.inc();
            tracing::info!(cluster = %local.cluster, "local cluster unhealthy; failing over");
        }
        s.failed_over.load(Ordering::Relaxed)
    }

    pub fn lb_type(&self) -> LbType {
        self.lb_type
    }

    /// Cross-snapshot state: the retry budget lives here.
    pub fn state(&self) -> &PolicyState {
        &self.state
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The clusters this selector draws from, in policy order.
    pub fn considered(&self) -> &[Arc<str>] {
        &self.considered
    }

    /// What `/config_dump` shows: clusters, weights, endpoint health, tier.
    pub fn view(&self) -> SelectorView {
        let now = clock::now_ns();
        SelectorView {
            lb_type: self.lb_type,
            algorithm: self.algorithm,
            failed_over: (self.lb_type == LbType::FailOver).then(|| self.state.is_failed_over()),
            clusters: self
                .groups
                .iter()
                .map(|g| GroupView {
                    cluster: Arc::clone(&g.cluster),
                    local: g.local,
                    weight: g.weight,
                    endpoints: g
                        .members
                        .iter()
                        .map(|m| EndpointView {
                            addr: m.addr,
                            healthy: m.state.is_healthy(),
                            available: m.state.availability(now)
                                != super::health::Availability::Unavailable,
                            inflight: m.state.inflight(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Every endpoint with its cluster, for the active prober and gauges.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectorView {
    pub lb_type: LbType,
    pub algorithm: Algorithm,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_over: Option<bool>,
    pub clusters: Vec<GroupView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub cluster: Arc<str>,
    pub local: bool,
    pub weight: u32,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub available: bool,
    pub inflight: u32,
}
