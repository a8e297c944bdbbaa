use std::path::Path;

use super::*;
use crate::discovery::translate;

fn parse(yaml: &str) -> Result<Loaded, Error> {
    parse_str(yaml, Path::new("."), &MapOverrides::default())
}

fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(l) => match translate(&l.config, &l.manifests) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        },
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn empty_config_gets_defaults() {
    let l = parse("").unwrap();
    assert_eq!(l.config, Config::default());
    assert_eq!(l.config.listeners.admin.port(), 15000);
    assert_eq!(l.config.runtime.worker_threads, 1);
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let p = problems("outbound:\n  conectTimeout: 1s\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("outbound.conectTimeout: unknown field `conectTimeout`"),
        "{p:?}"
    );

    let p = problems("bogus: 1\n");
    assert!(p[0].contains("unknown field `bogus`"), "{p:?}");
}

#[test]
fn unknown_keys_in_a_manifest_are_rejected_with_their_path() {
    let p = problems(
        "mesh:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n    spec:\n      prots: []\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("mesh[0].spec.prots: unknown field `prots`"),
        "{p:?}"
    );
}

#[test]
fn a_port_out_of_range_names_its_field() {
    let yaml = r#"
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {name: a, namespace: x}
    spec: {clusterIP: 127.1.0.1, ports: [{port: 80}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: b, namespace: x}
    spec: {clusterIP: 127.1.0.2, ports: [{port: 80}, {port: 70000}]}
"#;
    assert_eq!(
        problems(yaml),
        vec!["mesh[1].spec.ports[1].port: 70000 is not a port"]
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let yaml = r#"
runtime: {workerThreads: 0}
http: {maxHeaderBytes: 10}
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {name: Bad_Name}
  - apiVersion: v1
    kind: Nope
    metadata: {name: a}
  - apiVersion: v1
    kind: Service
    metadata: {name: b}
    spec: {ports: [{port: "eighty"}]}
"#;
    let p = problems(yaml);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p
        .iter()
        .any(|p| p.starts_with("runtime.workerThreads: 0 is out of range")));
    assert!(p
        .iter()
        .any(|p| p.starts_with("http.maxHeaderBytes: 10 is too small")));
    assert!(p
        .iter()
        .any(|p| p.starts_with("mesh[1].kind: \"Nope\" is not a supported kind")));
    assert!(p
        .iter()
        .any(|p| p.starts_with("mesh[2].spec.ports[0].port: invalid type")));
}

#[test]
fn yaml_syntax_errors_carry_a_location() {
    let p = problems("listeners: [\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("line"), "{p:?}");
}

#[test]
fn validation_rules_each_have_a_failing_case() {
    let cases = [
        ("node: {cluster: Cluster_1}", "node.cluster"),
        ("outbound: {connectTimeout: 0s}", "outbound.connectTimeout"),
        ("outbound: {detectTimeout: 0s}", "outbound.detectTimeout"),
        ("outbound: {requestTimeout: 0s}", "outbound.requestTimeout"),
        ("http: {headerReadTimeout: 0s}", "http.headerReadTimeout"),
        ("runtime: {workerThreads: 65}", "runtime.workerThreads"),
        ("log: {level: \"strait=[\"}", "log.level"),
        (
            "listeners: {admin: 127.0.0.1:15000, outbound: 127.0.0.1:15000}",
            "listeners.outbound",
        ),
        (
            "outbound: {unknownDestination: drop}",
            "outbound.unknownDestination",
        ),
        (
            "outbound: {connectTimeout: 5 parsecs}",
            "outbound.connectTimeout",
        ),
    ];
    for (yaml, field) in cases {
        let p = problems(yaml);
        assert!(
            p.iter().any(|p| p.starts_with(field)),
            "{yaml}: expected a problem at {field}, got {p:?}"
        );
    }
}

#[test]
fn overrides_set_node_identity() {
    let mut map = std::collections::HashMap::new();
    map.insert("STRAIT_CLUSTER".to_owned(), "cluster-9".to_owned());
    map.insert("STRAIT_NAMESPACE".to_owned(), "shop".to_owned());
    let l = parse_str(
        "node: {cluster: cluster-1}",
        Path::new("."),
        &MapOverrides(map),
    )
    .unwrap();
    assert_eq!(l.config.node.cluster, "cluster-9");
    assert_eq!(l.config.node.namespace, "shop");
}

#[test]
fn a_mesh_directory_is_read_in_name_order_with_multiple_documents() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [127.0.0.5]}]\nports: [{port: 8080}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 127.1.0.9, ports: [{port: 80}]}\n---\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let yaml = format!("meshDir: {}\n", dir.path().display());
    let l = parse(&yaml).unwrap();
    assert_eq!(l.manifests.len(), 2);
    assert!(
        l.manifests[0].source.ends_with("a.yaml[0]"),
        "{}",
        l.manifests[0].source
    );
    let snapshot = translate(&l.config, &l.manifests).unwrap();
    let target = snapshot.target(&"127.1.0.9:80".parse().unwrap()).unwrap();
    assert_eq!(
        target.port().clusters[0].endpoints[0].addr,
        "127.0.0.5:8080".parse().unwrap()
    );
}

#[test]
fn balancing_annotations_are_validated() {
    let yaml = r#"
mesh:
  - apiVersion: v1
    kind: Service
    metadata:
      name: a
      annotations:
        strait.io/lb-algorithm: fastest
        strait.io/hash-key: "cookie:x"
        strait.io/connect-timeout: soon
        strait.io/max-requests-per-endpoint: "0"
    spec: { clusterIP: 127.1.0.1, ports: [{ port: 80 }] }
"#;
    let p = problems(yaml);
    assert_eq!(p.len(), 4, "{p:#?}");
    for key in [
        "lb-algorithm",
        "hash-key",
        "connect-timeout",
        "max-requests-per-endpoint",
    ] {
        assert!(
            p.iter()
                .any(|p| p.starts_with(&format!("mesh[0].metadata.annotations.strait.io/{key}"))),
            "{key}: {p:#?}"
        );
    }
}
