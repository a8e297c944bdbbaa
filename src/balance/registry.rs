//! Where balancing state that outlives a snapshot is kept: one
//! [`EndpointState`] per endpoint address and one [`PolicyState`] per service
//! port. Snapshot translation asks the registry for them, so health, latency
//! and the failover tier carry over a reload; entries disappear with the
//! last snapshot that used them (weak references).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry as Prometheus};

use super::algorithm::Algorithm;
use super::health::EndpointState;
use super::selector::{Group, Member, PolicyState, Selector};
use tower::retry::budget::TpsBudget;

use crate::config::Retries;
use crate::discovery::{ClusterEndpoints, LbType, Policy, ServiceName};

/// Balancing metrics owned by the registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    failovers: IntCounterVec,
    failbacks: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Prometheus) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.failovers.clone()))?;
        registry.register(Box::new(m.failbacks.clone()))?;
        Ok(m)
    }

    /// Metrics that go nowhere (validation-only translations).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let labels = &["service", "namespace", "port"];
        Ok(Self {
            failovers: IntCounterVec::new(
                Opts::new(
                    "strait_balance_failovers_total",
                    "FailOver services that moved off their local cluster.",
                ),
                labels,
            )?,
            failbacks: IntCounterVec::new(
                Opts::new(
                    "strait_balance_failbacks_total",
                    "FailOver services that returned to their local cluster after the hold-down.",
                ),
                labels,
            )?,
        })
    }
}

#[derive(Debug)]
pub struct Registry {
    endpoints: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
    policies: Mutex<HashMap<(ServiceName, u16), Weak<PolicyState>>>,
    metrics: Metrics,
}

impl Default for Registry {
    fn default() -> Self {
        // invariant: the metric names and labels above are valid.
        Self::new(Metrics::unregistered().expect("invariant: static metric definitions are valid"))
    }
}

/// What a selector is built from.
pub struct SelectorSpec<'a> {
    pub service: &'a ServiceName,
    pub port: u16,
    pub local: &'a str,
    pub clusters: &'a [ClusterEndpoints],
    pub policy: &'a Policy,
    pub algorithm: Algorithm,
    pub hold_down: Duration,
    /// Sizes the retry budget when the service port is first seen.
    pub retries: &'a Retries,
    /// Requests in flight per endpoint above which it is not picked.
    pub max_inflight: Option<u32>,
}

impl Registry {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            endpoints: Mutex::default(),
            policies: Mutex::default(),
            metrics,
        }
    }

    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&addr).and_then(Weak::upgrade) {
            return s;
        }
        let s = EndpointState::new(addr);
        map.insert(addr, Arc::downgrade(&s));
        s
    }

    fn policy(&self, service: &ServiceName, port: u16, retries: &Retries) -> Arc<PolicyState> {
        let mut map = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        let key = (service.clone(), port);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let port_s = port.to_string();
        let labels = [
            service.name.as_str(),
            service.namespace.as_str(),
            port_s.as_str(),
        ];
        // Validated ranges keep TpsBudget's assertions true.
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            retries.budget_min_per_second,
            retries.budget_percent / 100.0,
        );
        let s = Arc::new(PolicyState::new(
            self.metrics.failovers.with_label_values(&labels),
            self.metrics.failbacks.with_label_values(&labels),
            budget,
        ));
        map.insert(key, Arc::downgrade(&s));
        s
    }

    /// Drops entries no snapshot uses any more.
    pub fn prune(&self) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| w.strong_count() > 0);
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| w.strong_count() > 0);
    }

    /// Builds the selector of one service port under its policy.
    pub fn selector(&self, spec: SelectorSpec<'_>) -> Selector {
        let group = |c: &ClusterEndpoints, weight: u32| Group {
            cluster: Arc::clone(&c.cluster),
            local: c.local,
            weight,
            members: c
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| Member {
                    addr: e.addr,
                    kind: e.kind.clone(),
                    state: self.endpoint(e.addr),
                })
                .collect(),
        };
        // A target names a cluster by key; a cluster known only by name (no
        // Cluster resource) has the key default/default/default/NAME, so the
        // name part alone also matches.
        let find = |key: &str| {
            spec.clusters.iter().find(|c| c.key == key).or_else(|| {
                let name = key.rsplit('/').next().unwrap_or(key);
                spec.clusters.iter().find(|c| &*c.cluster == name)
            })
        };
        let weight_of = |c: &ClusterEndpoints| {
            spec.policy
                .targets
                .iter()
                .find(|t| find(&t.cluster_key).is_some_and(|f| f.cluster == c.cluster))
                .map(|t| t.weight)
        };
        let local_group = || match spec.clusters.iter().find(|c| c.local) {
            Some(c) => group(c, weight_of(c).unwrap_or(100)),
            None => Group {
                cluster: Arc::from(spec.local),
                local: true,
                weight: 100,
                members: Vec::new(),
            },
        };
        let mut groups = vec![local_group()];
        match spec.policy.lb_type {
            LbType::Locality => {}
            LbType::ActiveActive if spec.policy.targets.is_empty() => {
                groups.extend(
                    spec.clusters
                        .iter()
                        .filter(|c| !c.local)
                        .map(|c| group(c, 100)),
                );
            }
            LbType::ActiveActive | LbType::FailOver => {
                for t in &spec.policy.targets {
                    if let Some(c) = find(&t.cluster_key).filter(|c| !c.local) {
                        if !groups.iter().any(|g| g.cluster == c.cluster) {
                            groups.push(group(c, t.weight));
                        }
                    }
                }
            }
        }
        let state = self.policy(spec.service, spec.port, spec.retries);
        Selector::new(
            spec.policy.lb_type,
            spec.algorithm,
            groups,
            state,
            spec.hold_down,
        )
        .with_max_inflight(spec.max_inflight)
    }
}
