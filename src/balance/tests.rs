//! Selector behaviour without sockets: policy, weights, hysteresis, probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Retries;
use crate::discovery::{
    ClusterEndpoints, Endpoint, EndpointKind, LbType, Policy, PolicyTarget, ServiceName,
};

fn cluster(name: &str, local: bool, n: u8) -> ClusterEndpoints {
    ClusterEndpoints {
        cluster: Arc::from(name),
        key: format!("default/default/default/{name}"),
        local,
        endpoints: (0..n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([10, name.len() as u8, 0, i + 1], 80)),
                ready: true,
                kind: EndpointKind::Direct,
            })
            .collect(),
    }
}

fn selector(
    registry: &Registry,
    lb_type: LbType,
    targets: &[(&str, u32)],
    clusters: &[ClusterEndpoints],
    algorithm: Algorithm,
) -> Selector {
    let policy = Policy {
        lb_type,
        targets: targets
            .iter()
            .map(|(k, w)| PolicyTarget {
                cluster_key: format!("default/default/default/{k}"),
                weight: *w,
            })
            .collect(),
    };
    registry.selector(SelectorSpec {
        service: &ServiceName::new("web", "shop"),
        port: 80,
        local: "c1",
        clusters,
        policy: &policy,
        algorithm,
        hold_down: Duration::from_secs(5),
        retries: &Retries::default(),
        max_inflight: None,
    })
}

fn share(sel: &Selector, n: usize) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for _ in 0..n {
        let p = sel.select(&PickContext::default()).unwrap();
        *out.entry(p.cluster.to_string()).or_default() += 1;
    }
    out
}

#[test]
fn locality_never_leaves_the_local_cluster() {
    let r = Registry::default();
    let sel = selector(
        &r,
        LbType::Locality,
        &[],
        &[cluster("c1", true, 2), cluster("c22", false, 2)],
        Algorithm::P2cEwma,
    );
    assert_eq!(share(&sel, 100)["c1"], 100);
    let none = selector(
        &r,
        LbType::Locality,
        &[],
        &[cluster("c22", false, 2)],
        Algorithm::P2cEwma,
    );
    let err = none.select(&PickContext::default()).unwrap_err();
    assert_eq!(err.considered, vec![Arc::<str>::from("c1")]);
}

#[test]
fn active_active_weights_clusters_and_lists_all_remotes_when_untargeted() {
    let r = Registry::default();
    let clusters = [
        cluster("c1", true, 3),
        cluster("c22", false, 1),
        cluster("c333", false, 5),
    ];
    let sel = selector(
        &r,
        LbType::ActiveActive,
        &[("c22", 100), ("c333", 200)],
        &clusters,
        Algorithm::RoundRobin,
    );
    let s = share(&sel, 40_000);
    for (c, want) in [("c1", 0.25), ("c22", 0.25), ("c333", 0.5)] {
        let got = s[c] as f64 / 40_000.0;
        assert!((got - want).abs() < 0.02, "{c}: {got}");
    }
    let all = selector(
        &r,
        LbType::ActiveActive,
        &[],
        &clusters,
        Algorithm::RoundRobin,
    );
    assert_eq!(all.considered().len(), 3);
}

#[test]
fn a_cluster_whose_endpoints_are_all_ejected_loses_its_share_at_once() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 1), cluster("c22", false, 1)];
    let sel = selector(
        &r,
        LbType::ActiveActive,
        &[("c22", 100)],
        &clusters,
        Algorithm::P2cEwma,
    );
    let remote = r.endpoint(clusters[1].endpoints[0].addr);
    assert!(remote.start().failure(Failure::Connect));
    assert_eq!(share(&sel, 200)["c1"], 200);
}

#[tokio::test(start_paused = true)]
async fn failover_waits_out_the_hold_down_before_failing_back() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 1), cluster("c22", false, 1)];
    let sel = selector(
        &r,
        LbType::FailOver,
        &[("c22", 100)],
        &clusters,
        Algorithm::P2cEwma,
    );
    assert_eq!(share(&sel, 10)["c1"], 10);
    let local = r.endpoint(clusters[0].endpoints[0].addr);
    local.set_probe_result(false);
    assert_eq!(share(&sel, 10)["c22"], 10, "fails over at once");
    local.set_probe_result(true);
    assert_eq!(share(&sel, 10)["c22"], 10, "hold-down starts");
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(share(&sel, 10)["c22"], 10, "still holding down");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(share(&sel, 10)["c1"], 10, "failed back");
}

#[tokio::test(start_paused = true)]
async fn a_flapping_local_cluster_restarts_the_hold_down() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 1), cluster("c22", false, 1)];
    let sel = selector(
        &r,
        LbType::FailOver,
        &[("c22", 100)],
        &clusters,
        Algorithm::P2cEwma,
    );
    let local = r.endpoint(clusters[0].endpoints[0].addr);
    local.set_probe_result(false);
    sel.update_tier(clock::now_ns());
    local.set_probe_result(true);
    sel.update_tier(clock::now_ns());
    tokio::time::advance(Duration::from_secs(3)).await;
    local.set_probe_result(false);
    sel.update_tier(clock::now_ns());
    local.set_probe_result(true);
    sel.update_tier(clock::now_ns());
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(
        sel.update_tier(clock::now_ns()),
        "6 s since the first recovery, 3 since the last"
    );
}

#[test]
fn retries_avoid_endpoints_already_tried() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 2)];
    let sel = selector(&r, LbType::Locality, &[], &clusters, Algorithm::P2cEwma);
    let first = sel.select(&PickContext::default()).unwrap();
    let tried = [first.addr];
    for _ in 0..20 {
        let ctx = PickContext {
            exclude: &tried,
            ..Default::default()
        };
        assert_ne!(sel.select(&ctx).unwrap().addr, first.addr);
    }
    let both = [clusters[0].endpoints[0].addr, clusters[0].endpoints[1].addr];
    let ctx = PickContext {
        exclude: &both,
        ..Default::default()
    };
    assert!(sel.select(&ctx).is_err());
}

#[test]
fn local_only_picks_never_leave_the_local_cluster_whatever_the_policy() {
    let r = Registry::default();
    let clusters = [
        cluster("c1", true, 2),
        cluster("c22", false, 2),
        cluster("c333", false, 2),
    ];
    let local_only = PickContext {
        local_only: true,
        ..Default::default()
    };
    for (lb, targets) in [
        (LbType::ActiveActive, &[][..]),
        (LbType::FailOver, &[("c22", 100)][..]),
    ] {
        let sel = selector(&r, lb, targets, &clusters, Algorithm::RoundRobin);
        for _ in 0..200 {
            assert_eq!(&*sel.select(&local_only).unwrap().cluster, "c1", "{lb:?}");
        }
    }

    // With every local endpoint ejected the policy moves on, a local-only
    // pick does not, and says it looked at the local cluster alone.
    let sel = selector(
        &r,
        LbType::ActiveActive,
        &[],
        &clusters,
        Algorithm::RoundRobin,
    );
    for e in &clusters[0].endpoints {
        assert!(r.endpoint(e.addr).start().failure(Failure::Connect));
    }
    assert_ne!(&*sel.select(&PickContext::default()).unwrap().cluster, "c1");
    let err = sel.select(&local_only).unwrap_err();
    assert_eq!(err.considered, vec![Arc::<str>::from("c1")]);

    // A service with no local endpoints at all.
    let remote = selector(
        &r,
        LbType::ActiveActive,
        &[],
        &clusters[1..],
        Algorithm::RoundRobin,
    );
    assert!(remote.select(&PickContext::default()).is_ok());
    assert!(remote.select(&local_only).is_err());
}

#[test]
fn consistent_hashing_keeps_a_key_on_one_endpoint() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 5)];
    let sel = selector(
        &r,
        LbType::Locality,
        &[],
        &clusters,
        Algorithm::ConsistentHash,
    );
    for key in 0..20u64 {
        let ctx = PickContext {
            hash: Some(key),
            ..Default::default()
        };
        let a = sel.select(&ctx).unwrap().addr;
        assert!((0..10).all(|_| sel.select(&ctx).unwrap().addr == a));
    }
}

#[test]
fn p2c_prefers_the_endpoint_with_less_load() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 2)];
    let sel = selector(&r, LbType::Locality, &[], &clusters, Algorithm::P2cEwma);
    let busy = r.endpoint(clusters[0].endpoints[0].addr);
    let _held: Vec<_> = (0..10).map(|_| busy.start()).collect();
    let s = (0..100)
        .filter(|_| sel.select(&PickContext::default()).unwrap().addr == busy.addr)
        .count();
    assert_eq!(s, 0, "with two endpoints p2c always compares both");
}

#[test]
fn state_survives_a_new_selector_for_the_same_endpoints() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 1)];
    let a = selector(&r, LbType::Locality, &[], &clusters, Algorithm::P2cEwma);
    let p = a.select(&PickContext::default()).unwrap();
    p.state.start().failure(Failure::Connect);
    let b = selector(&r, LbType::Locality, &[], &clusters, Algorithm::P2cEwma);
    assert!(
        b.select(&PickContext::default()).is_err(),
        "still ejected after a rebuild"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_over_service_probes_its_local_cluster_with_one_idempotent_request() {
    let r = Registry::default();
    let clusters = [cluster("c1", true, 1), cluster("c22", false, 1)];
    let sel = selector(
        &r,
        LbType::FailOver,
        &[("c22", 100)],
        &clusters,
        Algorithm::P2cEwma,
    );
    let local = r.endpoint(clusters[0].endpoints[0].addr);
    // Reachable but answering 5xx: ejected for bad responses.
    for _ in 0..health::FAILURES_TO_EJECT {
        local.start().failure(Failure::Response);
    }
    local.set_probe_result(true);
    let probe_ok = PickContext {
        may_probe: true,
        ..Default::default()
    };
    assert_eq!(
        &*sel.select(&probe_ok).unwrap().cluster,
        "c22",
        "failed over"
    );
    tokio::time::advance(health::BASE_EJECTION).await;
    // A request that may not be a probe stays remote; one that may, goes local once.
    assert_eq!(
        &*sel.select(&PickContext::default()).unwrap().cluster,
        "c22"
    );
    let probe = sel.select(&probe_ok).unwrap();
    assert_eq!(&*probe.cluster, "c1");
    assert_eq!(
        &*sel.select(&probe_ok).unwrap().cluster,
        "c22",
        "one probe at a time"
    );
    probe.state.start().success();
    assert!(local.is_healthy());
    tokio::time::advance(Duration::from_secs(5)).await;
    sel.update_tier(clock::now_ns());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        &*sel.select(&probe_ok).unwrap().cluster,
        "c1",
        "failed back after the hold-down"
    );
}
