use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::config::{parse_str, MapOverrides};
use crate::discovery::{translate, Store};

const MESH: &str = r#"
node: {namespace: shop}
dns: {enabled: true, ttl: 15s}
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {clusterIP: 10.0.0.5, clusterIPs: ["10.0.0.5", "fd00::5"], ports: [{name: http, port: 80}, {port: 9090}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: v4only, namespace: shop}
    spec: {clusterIP: 10.0.0.6, ports: [{port: 80}]}
  - apiVersion: multicluster.x-k8s.io/v1alpha1
    kind: ServiceImport
    metadata: {name: httpbin, namespace: httpbin}
    spec: {ports: [{port: 8080}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: db, namespace: shop}
    spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: db-a, namespace: shop, labels: {kubernetes.io/service-name: db}}
    addressType: IPv4
    endpoints:
      - {addresses: ["10.1.0.1"], hostname: db-0}
      - {addresses: ["10.1.0.2"], hostname: db-1}
      - {addresses: ["10.1.0.3"], conditions: {ready: false}, hostname: db-2}
    ports: [{name: pg, port: 5432}]
"#;

fn index(yaml: &str) -> MeshIndex {
    let loaded = parse_str(yaml, Path::new("."), &MapOverrides::default()).unwrap();
    let snapshot = translate(&loaded.config, &loaded.manifests).unwrap();
    let store = Store::new(loaded.config, snapshot);
    MeshIndex::build(&store.load())
}

fn name(s: &str) -> LowerName {
    LowerName::from_str(s).unwrap()
}

fn addrs(node: &Node, t: RecordType) -> Vec<IpAddr> {
    node.records(t)
        .into_iter()
        .flatten()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn found<'a>(index: &'a MeshIndex, q: &str) -> (&'a Node, Option<Record>) {
    match index.lookup(&name(q)) {
        Lookup::Found { node, alias } => (node, alias.map(|a| *a)),
        other => panic!("{q}: {other:?}"),
    }
}

#[test]
fn services_answer_in_both_zones_with_their_vips() {
    let index = index(MESH);
    for q in [
        "web.shop.svc.cluster.local.",
        "WEB.Shop.svc.clusterset.local.",
    ] {
        let (node, alias) = found(&index, q);
        assert!(alias.is_none());
        assert_eq!(addrs(node, RecordType::A), [IpAddr::from([10, 0, 0, 5])]);
        assert_eq!(
            addrs(node, RecordType::AAAA),
            ["fd00::5".parse::<IpAddr>().unwrap()]
        );
        assert!(node.records(RecordType::A)[0].iter().all(|r| r.ttl == 15));
    }
    let (node, _) = found(&index, "v4only.shop.svc.cluster.local.");
    assert!(
        addrs(node, RecordType::AAAA).is_empty(),
        "a missing family is empty, not absent"
    );
    assert!(node.records(RecordType::TXT).iter().all(|s| s.is_empty()));
}

#[test]
fn an_import_without_ips_answers_with_its_allocated_vip() {
    let index = index(MESH);
    let (node, _) = found(&index, "httpbin.httpbin.svc.cluster.local.");
    let a = addrs(node, RecordType::A);
    assert_eq!(a.len(), 1);
    assert!(
        matches!(a[0], IpAddr::V4(v4) if v4.octets()[..2] == [240, 240]),
        "{a:?}"
    );
}

#[test]
fn short_names_behind_search_domains_get_a_cname_in_one_round_trip() {
    let index = index(MESH);
    // `httpbin.httpbin` from namespace shop: the first search domain.
    for q in [
        "httpbin.httpbin.shop.svc.cluster.local.",
        "httpbin.httpbin.svc.svc.cluster.local.",
        "httpbin.httpbin.cluster.local.",
    ] {
        let (node, alias) = found(&index, q);
        assert_eq!(
            node.canonical.to_ascii(),
            "httpbin.httpbin.svc.cluster.local."
        );
        let alias = alias.unwrap_or_else(|| panic!("{q}: no CNAME"));
        assert_eq!(alias.name.to_ascii(), q);
        assert!(matches!(&alias.data, RData::CNAME(c) if c.0 == node.canonical));
    }
    // `web` and `web.shop.svc` need no alias where the expansion is literal.
    assert!(found(&index, "web.shop.svc.cluster.local.").1.is_none());
    assert!(found(&index, "web.shop.svc.shop.svc.cluster.local.")
        .1
        .is_some());
}

#[test]
fn search_domains_outside_the_cluster_domain_are_not_expanded() {
    let yaml = MESH.replace(
        "dns: {enabled: true, ttl: 15s}",
        "dns: {enabled: true, searchDomains: [corp.example, shop.svc.cluster.local]}",
    );
    let index = index(&yaml);
    assert!(matches!(
        index.lookup(&name("web.corp.example.")),
        Lookup::NotMesh
    ));
    assert!(found(&index, "web.shop.shop.svc.cluster.local.")
        .1
        .is_some());
}

#[test]
fn unknown_mesh_shaped_names_list_the_services_they_may_mean() {
    let index = index(MESH);
    let unknown = |q: &str| match index.lookup(&name(q)) {
        Lookup::Unknown(c) => c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        other => panic!("{q}: {other:?}"),
    };
    assert_eq!(unknown("nope.shop.svc.cluster.local."), ["nope.shop"]);
    assert_eq!(unknown("a.b.shop.svc.cluster.local."), ["b.shop", "a.b"]);
    assert_eq!(
        unknown("_http._tcp.nope.shop.svc.cluster.local."),
        ["nope.shop"]
    );
    assert_eq!(unknown("nope.other.svc.clusterset.local."), ["nope.other"]);
    for q in [
        "example.com.",
        "cluster.local.",
        "svc.cluster.local.",
        "x.y.z.w.v.svc.cluster.local.",
    ] {
        assert!(matches!(index.lookup(&name(q)), Lookup::NotMesh), "{q}");
    }
}

#[test]
fn headless_services_answer_with_ready_pods_and_per_pod_names() {
    let index = index(MESH);
    let (node, _) = found(&index, "db.shop.svc.cluster.local.");
    assert_eq!(
        addrs(node, RecordType::A),
        [IpAddr::from([10, 1, 0, 1]), IpAddr::from([10, 1, 0, 2])],
        "not-ready 10.1.0.3 left out"
    );
    let (pod, _) = found(&index, "db-1.db.shop.svc.cluster.local.");
    assert_eq!(addrs(pod, RecordType::A), [IpAddr::from([10, 1, 0, 2])]);
    let (pod, _) = found(&index, "db-0.cluster-1.db.shop.svc.clusterset.local.");
    assert_eq!(addrs(pod, RecordType::A), [IpAddr::from([10, 1, 0, 1])]);
    assert!(matches!(
        index.lookup(&name("db-2.db.shop.svc.cluster.local.")),
        Lookup::Unknown(_)
    ));

    // SRV of a headless service targets its pods, with their addresses as glue.
    let (srv, _) = found(&index, "_pg._tcp.db.shop.svc.cluster.local.");
    let targets: Vec<String> = srv.records(RecordType::SRV)[2]
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => format!("{} {}", s.port, s.target),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        [
            "5432 db-0.db.shop.svc.cluster.local.",
            "5432 db-1.db.shop.svc.cluster.local."
        ]
    );
    assert_eq!(srv.glue.len(), 2);
}

#[test]
fn named_ports_have_srv_records_and_the_service_lists_every_port() {
    let index = index(MESH);
    let (srv, _) = found(&index, "_http._tcp.web.shop.svc.cluster.local.");
    let ports: Vec<u16> = srv.records(RecordType::SRV)[2]
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    assert_eq!(ports, [80]);
    assert_eq!(
        srv.glue.iter().map(|r| r.record_type()).collect::<Vec<_>>(),
        [RecordType::A, RecordType::AAAA]
    );
    let (service, _) = found(&index, "web.shop.svc.cluster.local.");
    assert_eq!(service.records(RecordType::SRV)[2].len(), 2);
    assert_eq!(
        service
            .records(RecordType::ANY)
            .iter()
            .map(|s| s.len())
            .sum::<usize>(),
        4
    );
}

#[test]
fn the_soa_serial_follows_the_snapshot_version_and_ttl() {
    let index = index(MESH);
    let RData::SOA(soa) = &index.soa(Zone::Local).data else {
        panic!("not an SOA");
    };
    assert_eq!(soa.serial, 1);
    assert_eq!(soa.minimum, 15);
    assert_eq!(index.soa(Zone::Set).name.to_ascii(), "clusterset.local.");
}
