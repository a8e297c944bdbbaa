//! Fuzzes the DNS shim's whole request path: raw bytes in (UDP or TCP, by
//! the first input byte), response bytes out, against a snapshot with VIP,
//! dual-stack, headless and imported services and no upstreams (so nothing
//! leaves the process). Checks that nothing panics and that every response
//! is a well-formed DNS message with the query's id that fits the transport.

#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use strait::config::{parse_str, MapOverrides};
use strait::discovery::{translate, Store};
use strait::dns::{Handler, HandlerInputs, Metrics, NoOnDemand};
use tokio::runtime::Runtime;

const MESH: &str = r#"
node: {namespace: shop}
dns: {enabled: true, upstreams: [], onDemandTimeout: 0s}
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {clusterIPs: ["10.0.0.5", "fd00::5"], ports: [{name: http, port: 80}, {port: 81}]}
  - apiVersion: multicluster.x-k8s.io/v1alpha1
    kind: ServiceImport
    metadata: {name: httpbin, namespace: httpbin}
    spec: {ports: [{name: http, port: 8080}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: db, namespace: shop}
    spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: db-a, namespace: shop, labels: {kubernetes.io/service-name: db}}
    addressType: IPv4
    endpoints: [{addresses: ["10.1.0.1"], hostname: db-0}, {addresses: ["10.1.0.2"], hostname: db-1}]
    ports: [{name: pg, port: 5432}]
"#;

fn state() -> &'static (Runtime, Handler) {
    static STATE: OnceLock<(Runtime, Handler)> = OnceLock::new();
    STATE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let loaded = parse_str(MESH, Path::new("."), &MapOverrides::default()).expect("config");
        let snapshot = translate(&loaded.config, &loaded.manifests).expect("mesh");
        let store = Arc::new(Store::new(loaded.config, snapshot));
        let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
        let handler = Handler::new(HandlerInputs {
            store,
            upstreams: Vec::new(),
            metrics,
            on_demand: Arc::new(NoOnDemand),
        });
        (rt, handler)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, raw)) = data.split_first() else {
        return;
    };
    let tcp = mode & 1 == 1;
    let (rt, handler) = state();
    let src = SocketAddr::from(([127, 0, 0, 1], 40000));
    let Some(out) = rt.block_on(handler.answer(raw.to_vec(), src, tcp)) else {
        return;
    };
    assert!(out.len() >= 12, "response shorter than a header");
    assert!(
        tcp || out.len() <= 4096,
        "UDP response of {} bytes",
        out.len()
    );
    assert_eq!(out[..2], raw[..2], "response id differs from the query's");
    let m =
        Message::from_vec(&out).unwrap_or_else(|e| panic!("unparseable response: {e}: {out:02x?}"));
    assert_eq!(m.metadata.message_type, MessageType::Response);
});
