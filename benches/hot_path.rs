//! Micro-benchmarks of the pieces every proxied request runs through, and of
//! the reload cost of translating a large mesh.
//!
//! Built with the `test-util` feature (the `[[bench]]` entry requires it):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --features test-util --bench hot_path
//! # compare two builds:
//! ... --bench hot_path -- --save-baseline before     (on the old code)
//! ... --bench hot_path -- --baseline before          (on the new code)
//! ```
//!
//! Groups (see `benches/README.md` for what the numbers mean):
//! - `snapshot`: `Snapshot::target`, the per-request lookup of a destination
//!   VIP:port in a mesh of 1,000 services (2,000 service ports); a miss; and
//!   `route`, the discovery part of a request as `logical.rs` does it
//!   (store load, lookup, endpoint pick, service `Arc` cloned; not the
//!   retry-budget deposit).
//! - `balance`: `Selector::select` as a request makes it (the pick returned
//!   owned), over three clusters of 100 endpoints: `Locality` with p2c over
//!   peak-EWMA (the default) and with round robin, `ActiveActive` by weight,
//!   `FailOver`.
//! - `detect`: protocol classification of a connection's first bytes.
//! - `headers`: hop-by-hop stripping of a typical request header map (the
//!   map is cloned in untimed setup) and the upgrade check.
//! - `discovery`: `discovery::translate` of 1,000 services (not the hot path:
//!   the cost of a reload), and YAML parsing plus translation together.
//!
//! Crate-private items are reached through `strait::test_util::bench`, thin
//! wrappers that call exactly what the proxy calls.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use std::time::Duration;

use strait::balance::{Algorithm, PickContext, Registry, SelectorSpec};
use strait::config::Retries;
use strait::config::{parse_str, Loaded, MapOverrides};
use strait::discovery::{
    translate, ClusterEndpoints, Endpoint, EndpointKind, LbType, Policy, PolicyTarget, ServiceName,
    Snapshot, Store,
};
use strait::test_util::bench;

/// Services in the benchmark mesh; each has two ports and three endpoints.
const SERVICES: usize = 1_000;

/// The cluster IP of service `i` (10.96.0.0/16, as a kind cluster allocates).
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// A proxy config with `SERVICES` services, each with an `http` port (80,
/// detected) and a `grpc` port (9090, `appProtocol: grpc`), and one
/// EndpointSlice of three ready pods.
fn mesh_yaml() -> String {
    let mut y = String::with_capacity(SERVICES * 900);
    y.push_str("node: { cluster: cluster-1 }\n");
    y.push_str("listeners: { admin: \"127.0.0.1:0\", outbound: null }\n");
    y.push_str("mesh:\n");
    for i in 0..SERVICES {
        let ns = format!("team-{}", i % 20);
        y.push_str(&format!(
            "  - apiVersion: v1\n    kind: Service\n    metadata: {{ name: svc-{i}, namespace: {ns} }}\n    spec:\n      clusterIP: {}\n      ports:\n        - {{ name: http, port: 80, targetPort: 8080 }}\n        - {{ name: grpc, port: 9090, appProtocol: grpc }}\n",
            vip(i)
        ));
        y.push_str(&format!(
            "  - apiVersion: discovery.k8s.io/v1\n    kind: EndpointSlice\n    metadata: {{ name: svc-{i}-abcde, namespace: {ns}, labels: {{ kubernetes.io/service-name: svc-{i} }} }}\n    addressType: IPv4\n    endpoints:\n"
        ));
        for pod in 0..3 {
            let n = i * 3 + pod;
            y.push_str(&format!(
                "      - {{ addresses: [\"10.244.{}.{}\"], conditions: {{ ready: true }} }}\n",
                n / 250,
                n % 250 + 1
            ));
        }
        y.push_str("    ports: [{ name: http, port: 8080 }, { name: grpc, port: 9090 }]\n");
    }
    y
}

fn load(yaml: &str) -> Loaded {
    parse_str(yaml, Path::new("."), &MapOverrides::default()).expect("bench mesh parses")
}

fn snapshot(loaded: &Loaded) -> Snapshot {
    translate(&loaded.config, &loaded.manifests).expect("bench mesh translates")
}

/// Destinations spread over the whole mesh in a scrambled order, so lookups
/// do not walk the hash table's memory in sequence.
fn destinations() -> Vec<SocketAddr> {
    (0..1024)
        .map(|k| {
            let i = (k * 7919) % SERVICES;
            let port = if k % 2 == 0 { 80 } else { 9090 };
            SocketAddr::new(IpAddr::V4(vip(i)), port)
        })
        .collect()
}

fn snapshot_lookup(c: &mut Criterion) {
    let loaded = load(&mesh_yaml());
    let snap = snapshot(&loaded);
    assert_eq!(snap.services.len(), SERVICES);
    let dsts = destinations();
    assert!(dsts.iter().all(|d| snap.target(d).is_some()));

    let mut g = c.benchmark_group("snapshot");
    g.bench_function("target_hit_1000svc", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 1) & 1023;
            black_box(snap.target(black_box(&dsts[k]))).is_some()
        })
    });
    let miss = SocketAddr::from(([10, 97, 0, 1], 80));
    g.bench_function("target_miss_1000svc", |b| {
        b.iter(|| black_box(snap.target(black_box(&miss))).is_none())
    });

    // What `proxy/http/logical.rs::handle` does before forwarding: load the
    // state, look the destination up, pick an endpoint and clone it (and the
    // service `Arc`) out of the snapshot.
    let store = Store::new(loaded.config.clone(), snap);
    g.bench_function("route_1000svc", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 1) & 1023;
            let state = store.load();
            let target = state
                .snapshot
                .target(black_box(&dsts[k]))
                .expect("destination is in the mesh");
            let pick = bench::pick(target).expect("service has endpoints");
            black_box((Arc::clone(&target.service), pick))
        })
    });
    g.finish();
}

fn cluster(name: &str, local: bool, n: usize, octet: u8) -> ClusterEndpoints {
    ClusterEndpoints {
        cluster: Arc::from(name),
        key: format!("default/default/default/{name}"),
        local,
        endpoints: (0..n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([10, octet, (i / 250) as u8, (i % 250) as u8 + 1], 8080)),
                ready: true,
                kind: EndpointKind::Direct,
            })
            .collect(),
    }
}

fn policy(lb_type: LbType, targets: &[(&str, u32)]) -> Policy {
    Policy {
        lb_type,
        targets: targets
            .iter()
            .map(|(k, w)| PolicyTarget {
                cluster_key: format!("default/default/default/{k}"),
                weight: *w,
            })
            .collect(),
    }
}

/// Endpoint selection as a request makes it: the policy picks a cluster,
/// then p2c over peak-EWMA (or round robin) picks an endpoint; the pick is
/// returned owned (two `Arc` increments).
fn selector(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance");
    let registry = Registry::default();
    let retries = Retries::default();
    let service = ServiceName::new("bench", "bench");
    let three = [
        cluster("cluster-1", true, 100, 244),
        cluster("cluster-2", false, 100, 245),
        cluster("cluster-3", false, 100, 246),
    ];
    let cases = [
        (
            "locality_p2c",
            policy(LbType::Locality, &[]),
            Algorithm::P2cEwma,
        ),
        (
            "locality_round_robin",
            policy(LbType::Locality, &[]),
            Algorithm::RoundRobin,
        ),
        (
            "active_active_3x100_p2c",
            policy(
                LbType::ActiveActive,
                &[("cluster-2", 100), ("cluster-3", 200)],
            ),
            Algorithm::P2cEwma,
        ),
        (
            "failover_3x100_p2c",
            policy(LbType::FailOver, &[("cluster-2", 100), ("cluster-3", 100)]),
            Algorithm::P2cEwma,
        ),
    ];
    for (name, policy, algorithm) in cases {
        let sel = registry.selector(SelectorSpec {
            service: &service,
            port: 80,
            local: "cluster-1",
            clusters: &three,
            policy: &policy,
            algorithm,
            hold_down: Duration::from_secs(5),
            retries: &retries,
            max_inflight: None,
        });
        let ctx = PickContext::default();
        g.bench_function(name, |b| {
            b.iter(|| black_box(sel.select(black_box(&ctx)).expect("endpoints are ready")))
        });
    }
    g.finish();
}

fn detect(c: &mut Criterion) {
    let http1: &[u8] = b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\nHost: orders.shop.svc.cluster.local\r\nUser-Agent: Go-http-client/1.1\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\n\r\n";
    let http2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64\x00\x04\x00\x10\x00\x00\x00\x06\x00\x00\x40\x00";
    // The start of a TLS ClientHello: no newline, so the whole buffer is scanned.
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls.extend((0u8..245).map(|b| b.wrapping_mul(31) | 0x80));
    let partial: &[u8] = b"GET /api/v1/ord";

    let mut g = c.benchmark_group("detect");
    for (name, input) in [
        ("http1_request", http1),
        ("h2_preface", http2),
        ("tls_client_hello_256B", &tls[..]),
        ("partial_request_line", partial),
    ] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::new("classify", name), input, |b, input| {
            b.iter(|| bench::classify(black_box(input)))
        });
    }
    g.finish();
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("valid name"),
            HeaderValue::from_str(v).expect("valid value"),
        );
    }
    h
}

fn headers(c: &mut Criterion) {
    // A service-to-service request as a mesh sees it: host, user agent,
    // content negotiation, tracing, auth; no `Connection` header (HTTP/1.1
    // keep-alive is the default).
    let typical = header_map(&[
        ("host", "orders.shop.svc.cluster.local"),
        ("user-agent", "Go-http-client/1.1"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("content-type", "application/json"),
        ("content-length", "142"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.e30.c2ln",
        ),
        ("x-request-id", "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("baggage", "userId=alice,isProduction=false"),
        ("cookie", "session=abc123; theme=dark"),
    ]);
    // The same from an old client: `Connection` naming a header, `Keep-Alive`, `TE`.
    let mut hop = typical.clone();
    for (k, v) in [
        ("connection", "keep-alive, x-debug"),
        ("keep-alive", "timeout=5, max=1000"),
        ("x-debug", "1"),
        ("te", "gzip"),
    ] {
        hop.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }

    let mut g = c.benchmark_group("headers");
    for (name, map) in [("typical_12", &typical), ("hop_by_hop_16", &hop)] {
        g.bench_with_input(BenchmarkId::new("strip_hop_by_hop", name), map, |b, map| {
            b.iter_batched_ref(
                || map.clone(),
                |h| bench::strip_hop_by_hop(h, false),
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("is_upgrade/typical_12", |b| {
        b.iter(|| bench::is_upgrade(black_box(&typical)))
    });
    g.finish();
}

fn discovery(c: &mut Criterion) {
    let yaml = mesh_yaml();
    let loaded = load(&yaml);
    let mut g = c.benchmark_group("discovery");
    g.sample_size(20);
    g.throughput(Throughput::Elements(SERVICES as u64));
    g.bench_function("translate_1000svc", |b| {
        b.iter(|| snapshot(black_box(&loaded)))
    });
    g.bench_function("parse_and_translate_1000svc", |b| {
        b.iter(|| snapshot(&load(black_box(&yaml))))
    });
    g.finish();
}

criterion_group!(
    benches,
    snapshot_lookup,
    selector,
    detect,
    headers,
    discovery
);
criterion_main!(benches);
