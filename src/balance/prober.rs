//! Active health checks and the balancing gauges.
//!
//! Every `balance.probeInterval`, each endpoint of a service whose policy
//! spans clusters (ActiveActive, FailOver) gets a TCP connect probe: remote
//! gateways above all, so a dead cluster is known before a request pays for
//! it, and local endpoints, so a failed-over service sees its cluster come
//! back. Locality services rely on passive health only. The same pass
//! refreshes the healthy-endpoint and policy gauges of every service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::health::EndpointState;
use crate::discovery::{EndpointKind, LbType, Store};

#[derive(Debug, Clone)]
pub struct Metrics {
    healthy: IntGaugeVec,
    policy: IntGaugeVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let healthy = IntGaugeVec::new(
            Opts::new(
                "strait_balance_healthy_endpoints",
                "Healthy endpoints per service port and cluster (ready, not ejected, answering probes).",
            ),
            &["service", "namespace", "port", "cluster"],
        )?;
        let policy = IntGaugeVec::new(
            Opts::new(
                "strait_balance_policy_info",
                "The traffic policy in force per service port (value 1); failed_over is true while a FailOver service is off its local cluster.",
            ),
            &["service", "namespace", "port", "lb_type", "algorithm", "failed_over"],
        )?;
        registry.register(Box::new(healthy.clone()))?;
        registry.register(Box::new(policy.clone()))?;
        Ok(Self { healthy, policy })
    }
}

/// Probes and refreshes gauges until `stop` fires.
pub async fn run(store: Arc<Store>, metrics: Metrics, stop: CancellationToken) {
    loop {
        let (interval, timeout) = {
            let c = &store.load().config.balance;
            (c.probe_interval, c.probe_timeout)
        };
        round(&store, &metrics, timeout).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn round(store: &Store, metrics: &Metrics, timeout: Duration) {
    let state = store.load_full();
    let mut to_probe: HashMap<SocketAddr, Vec<Arc<EndpointState>>> = HashMap::new();
    // With mesh mTLS a pod is reached at its proxy's mesh port, so that is
    // what answers for it; gateways are probed at their own address.
    let mesh_port = state
        .config
        .identity
        .as_ref()
        .map(|_| state.config.inbound.mesh_port);
    for service in state.snapshot.services.values() {
        let mesh_port = mesh_port.filter(|_| service.mtls);
        for port in &service.ports {
            let selector = &port.selector;
            if selector.lb_type() != LbType::Locality {
                for g in selector.groups() {
                    for m in &g.members {
                        let addr = match (&m.kind, mesh_port) {
                            (EndpointKind::Direct, Some(p)) => SocketAddr::new(m.addr.ip(), p),
                            _ => m.addr,
                        };
                        let states = to_probe.entry(addr).or_default();
                        if !states.iter().any(|s| Arc::ptr_eq(s, &m.state)) {
                            states.push(Arc::clone(&m.state));
                        }
                    }
                }
            }
        }
    }
    let mut probes = JoinSet::new();
    for (addr, endpoints) in to_probe {
        probes.spawn(async move {
            let up = matches!(
                tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
                Ok(Ok(_))
            );
            if !up {
                debug!(%addr, "active probe failed");
            }
            for endpoint in endpoints {
                endpoint.set_probe_result(up);
            }
        });
    }
    while probes.join_next().await.is_some() {}
    let now = super::clock::now_ns();
    for service in state.snapshot.services.values() {
        for port in &service.ports {
            port.selector.update_tier(now);
        }
    }

    metrics.healthy.reset();
    metrics.policy.reset();
    for service in state.snapshot.services.values() {
        let (name, ns) = (service.name.name.as_str(), service.name.namespace.as_str());
        for port in &service.ports {
            let p = port.port.to_string();
            let s = &port.selector;
            for g in s.groups() {
                let healthy = g.members.iter().filter(|m| m.state.is_healthy()).count();
                metrics
                    .healthy
                    .with_label_values(&[name, ns, &p, &g.cluster])
                    .set(healthy as i64);
            }
            let view = s.view();
            let lb = format!("{:?}", s.lb_type());
            let algorithm = serde_json::to_value(s.algorithm())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let failed_over = view.failed_over.unwrap_or(false).to_string();
            metrics
                .policy
                .with_label_values(&[name, ns, &p, &lb, &algorithm, &failed_over])
                .set(1);
        }
    }
}
