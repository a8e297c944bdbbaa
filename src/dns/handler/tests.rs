//! The request path without sockets: bytes in, bytes out, no upstreams
//! (forwarding has its own integration tests in `tests/dns.rs`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, RData};
use prometheus::Registry;

use super::*;
use crate::config::{parse_str, MapOverrides};
use crate::discovery::{translate, ServiceName};
use crate::dns::on_demand::{Discovery, NoOnDemand};
use crate::test_util::metric_value;

const MESH: &str = r#"
node: {namespace: shop}
dns: {enabled: true, upstreams: [], ttl: 20s}
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {clusterIP: 10.0.0.5, ports: [{name: http, port: 80}]}
"#;

fn store(yaml: &str) -> Arc<Store> {
    let loaded = parse_str(yaml, Path::new("."), &MapOverrides::default()).unwrap();
    let snapshot = translate(&loaded.config, &loaded.manifests).unwrap();
    Arc::new(Store::new(loaded.config, snapshot))
}

fn publish(store: &Store, yaml: &str) {
    let loaded = parse_str(yaml, Path::new("."), &MapOverrides::default()).unwrap();
    let snapshot = translate(&loaded.config, &loaded.manifests).unwrap();
    store.publish(loaded.config, snapshot);
}

fn handler(store: Arc<Store>, on_demand: Arc<dyn OnDemand>) -> (Handler, Registry) {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let h = Handler::new(HandlerInputs {
        store,
        upstreams: Vec::new(),
        metrics,
        on_demand,
    });
    (h, registry)
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.queries
        .push(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

fn src() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

async fn ask(h: &Handler, raw: Vec<u8>, tcp: bool) -> Message {
    let bytes = h.answer(raw, src(), tcp).await.expect("a response");
    Message::from_vec(&bytes).expect("a well-formed response")
}

fn metric(registry: &Registry, series: &str) -> f64 {
    let page = String::from_utf8(crate::metrics::encode(registry)).unwrap();
    metric_value(&page, series)
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_mesh_name_is_answered_authoritatively_with_the_configured_ttl() {
    let (h, registry) = handler(store(MESH), Arc::new(NoOnDemand));
    let raw = query("web.shop.svc.cluster.local.", RecordType::A, None);
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let m = ask(&h, raw, false).await;
    assert_eq!(m.metadata.id, id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_available);
    assert!(m.metadata.recursion_desired, "RD copied");
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 5)]);
    assert_eq!(m.answers[0].ttl, 20);
    assert!(m.edns.is_none(), "no OPT when the query had none");
    assert_eq!(
        metric(
            &registry,
            "strait_dns_queries_total{type=\"a\",outcome=\"mesh\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_family_the_service_lacks_is_an_empty_noerror_with_the_soa() {
    let (h, _) = handler(store(MESH), Arc::new(NoOnDemand));
    let m = ask(
        &h,
        query("web.shop.svc.cluster.local.", RecordType::AAAA, Some(1232)),
        false,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
    let edns = m.edns.expect("OPT echoed");
    assert_eq!(edns.max_payload(), 1232);
}

#[tokio::test]
async fn without_upstreams_other_names_fail_and_unknown_mesh_names_do_not_exist() {
    let (h, registry) = handler(store(MESH), Arc::new(NoOnDemand));
    let m = ask(&h, query("example.com.", RecordType::A, None), false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = ask(
        &h,
        query("nope.shop.svc.cluster.local.", RecordType::A, None),
        false,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
    assert_eq!(
        metric(&registry, "strait_dns_on_demand_total{result=\"missing\"}"),
        1.0
    );
    assert_eq!(
        metric(&registry, "strait_dns_queries_total{outcome=\"servfail\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_published_snapshot_is_visible_to_the_next_query() {
    let store = store(MESH);
    let (h, _) = handler(Arc::clone(&store), Arc::new(NoOnDemand));
    let q = || query("api.shop.svc.cluster.local.", RecordType::A, None);
    assert_eq!(
        ask(&h, q(), false).await.metadata.response_code,
        ResponseCode::NXDomain
    );
    let added = format!(
        "{MESH}  - apiVersion: v1\n    kind: Service\n    metadata: {{name: api, namespace: shop}}\n    spec: {{clusterIP: 10.0.0.9, ports: [{{port: 80}}]}}\n"
    );
    publish(&store, &added);
    assert_eq!(
        a_records(&ask(&h, q(), false).await),
        [Ipv4Addr::new(10, 0, 0, 9)]
    );
    publish(&store, MESH);
    assert_eq!(
        ask(&h, q(), false).await.metadata.response_code,
        ResponseCode::NXDomain
    );
}

/// A hook that publishes the service it is asked for, as the control stream will.
struct Publishes {
    store: Arc<Store>,
    asked: Mutex<Vec<ServiceName>>,
}

impl OnDemand for Publishes {
    fn discover(&self, candidates: &[ServiceName]) -> Discovery {
        self.asked
            .lock()
            .unwrap()
            .extend(candidates.iter().cloned());
        let added = format!(
            "{MESH}  - apiVersion: v1\n    kind: Service\n    metadata: {{name: late, namespace: shop}}\n    spec: {{clusterIP: 10.0.0.7, ports: [{{port: 80}}]}}\n"
        );
        publish(&self.store, &added);
        Box::pin(std::future::ready(()))
    }
}

#[tokio::test]
async fn an_unknown_mesh_name_waits_for_on_demand_discovery() {
    let store = store(MESH);
    let hook = Arc::new(Publishes {
        store: Arc::clone(&store),
        asked: Mutex::new(Vec::new()),
    });
    let (h, registry) = handler(store, hook.clone());
    let m = ask(
        &h,
        query("late.shop.svc.cluster.local.", RecordType::A, None),
        false,
    )
    .await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 7)]);
    assert_eq!(
        *hook.asked.lock().unwrap(),
        [ServiceName::new("late", "shop")]
    );
    assert_eq!(
        metric(&registry, "strait_dns_on_demand_total{result=\"found\"}"),
        1.0
    );
}

struct Never;

impl OnDemand for Never {
    fn discover(&self, _: &[ServiceName]) -> Discovery {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn on_demand_discovery_is_waited_for_a_bounded_time() {
    let yaml = MESH.replace("ttl: 20s", "ttl: 20s, onDemandTimeout: 700ms");
    let (h, registry) = handler(store(&yaml), Arc::new(Never));
    let start = Instant::now();
    let m = ask(
        &h,
        query("gone.shop.svc.cluster.local.", RecordType::A, None),
        false,
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        metric(&registry, "strait_dns_on_demand_total{result=\"timeout\"}"),
        1.0
    );
}

fn headless(pods: usize) -> String {
    let addrs: Vec<String> = (0..pods)
        .map(|i| format!("\"10.2.{}.{}\"", i / 200, i % 200 + 1))
        .collect();
    format!(
        "{MESH}  - apiVersion: v1\n    kind: Service\n    metadata: {{name: big, namespace: shop}}\n    spec: {{clusterIP: None, ports: [{{port: 80}}]}}\n  - apiVersion: discovery.k8s.io/v1\n    kind: EndpointSlice\n    metadata: {{name: big-1, namespace: shop, labels: {{kubernetes.io/service-name: big}}}}\n    addressType: IPv4\n    endpoints: [{{addresses: [{}]}}]\n    ports: [{{port: 80}}]\n",
        addrs.join(", ")
    )
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_arrive_whole_over_tcp() {
    let (h, _) = handler(store(&headless(60)), Arc::new(NoOnDemand));
    let name = "big.shop.svc.cluster.local.";
    let raw = h
        .answer(query(name, RecordType::A, None), src(), false)
        .await
        .unwrap();
    assert!(raw.len() <= 512, "{} bytes", raw.len());
    let m = Message::from_vec(&raw).unwrap();
    assert!(m.metadata.truncation);
    assert!(a_records(&m).len() < 60);

    let m = ask(&h, query(name, RecordType::A, Some(4096)), false).await;
    assert!(!m.metadata.truncation);
    assert_eq!(a_records(&m).len(), 60, "fits the client's EDNS size");

    let m = ask(&h, query(name, RecordType::A, None), true).await;
    assert!(!m.metadata.truncation);
    assert_eq!(a_records(&m).len(), 60);
}

#[tokio::test]
async fn malformed_packets_are_dropped_or_get_formerr_never_a_panic() {
    let (h, registry) = handler(store(MESH), Arc::new(NoOnDemand));
    // Shorter than a header, and responses: no reply at all.
    assert!(h.answer(vec![0, 1, 2, 3, 4], src(), false).await.is_none());
    let mut response = query("web.shop.svc.cluster.local.", RecordType::A, None);
    response[2] |= 0x80;
    assert!(h.answer(response, src(), false).await.is_none());

    // A header promising a question that is not there.
    let header = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = h.answer(header, src(), false).await.unwrap();
    assert_eq!(reply.len(), 12);
    assert_eq!(&reply[..2], &[0xab, 0xcd]);
    assert_eq!(reply[2] & 0x80, 0x80, "QR");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");

    // A name that points at itself (compression loop).
    let mut looped = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    let reply = h.answer(looped, src(), false).await.unwrap();
    assert_eq!(reply[3] & 0x0f, 1);

    // Garbage after a valid header.
    let mut garbage = vec![0x55, 0x55, 0x01, 0x00, 0, 1, 0, 5, 0, 0, 0, 0];
    garbage.extend(std::iter::repeat_n(0xff, 300));
    let reply = h.answer(garbage, src(), false).await.unwrap();
    assert_eq!(reply[3] & 0x0f, 1);

    assert_eq!(
        metric(&registry, "strait_dns_dropped_total{reason=\"short\"}"),
        1.0
    );
    assert_eq!(
        metric(&registry, "strait_dns_dropped_total{reason=\"response\"}"),
        1.0
    );
    assert_eq!(
        metric(&registry, "strait_dns_queries_total{outcome=\"formerr\"}"),
        3.0
    );
}

#[tokio::test]
async fn other_opcodes_get_notimp_and_question_counts_other_than_one_formerr() {
    let (h, registry) = handler(store(MESH), Arc::new(NoOnDemand));
    let mut notify = Message::query();
    notify.metadata.op_code = OpCode::Notify;
    notify.queries.push(Query::query(
        Name::from_ascii("web.shop.svc.cluster.local.").unwrap(),
        RecordType::SOA,
    ));
    let m = ask(&h, notify.to_vec().unwrap(), false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    let none = Message::query();
    let m = ask(&h, none.to_vec().unwrap(), false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let mut two = Message::query();
    for n in ["web.shop.svc.cluster.local.", "example.com."] {
        two.queries
            .push(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    }
    let m = ask(&h, two.to_vec().unwrap(), false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.answers.is_empty());

    let mut v1 = Message::from_vec(&query(
        "web.shop.svc.cluster.local.",
        RecordType::A,
        Some(1232),
    ))
    .unwrap();
    if let Some(e) = v1.edns.as_mut() {
        e.set_version(1);
    }
    let m = ask(&h, v1.to_vec().unwrap(), false).await;
    // BADVERS is 16, which hickory reads back as BADSIG (the same number).
    assert_eq!(u16::from(m.metadata.response_code), 16);

    assert_eq!(
        metric(&registry, "strait_dns_queries_total{outcome=\"notimp\"}"),
        1.0
    );
    assert_eq!(
        metric(&registry, "strait_dns_queries_total{outcome=\"formerr\"}"),
        3.0
    );
}

#[tokio::test]
async fn the_question_is_echoed_as_asked_and_cname_queries_get_the_alias() {
    let yaml = MESH.replace(
        "metadata: {name: web, namespace: shop}",
        "metadata: {name: web, namespace: other}",
    );
    let (h, _) = handler(store(&yaml), Arc::new(NoOnDemand));
    let asked = "WEB.Other.shop.svc.cluster.local.";
    let m = ask(&h, query(asked, RecordType::A, None), false).await;
    assert_eq!(m.queries[0].name.to_ascii(), asked, "case kept");
    assert!(matches!(m.answers[0].data, RData::CNAME(_)));
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 5)]);

    let m = ask(&h, query(asked, RecordType::CNAME, None), false).await;
    assert_eq!(m.answers.len(), 1);
    assert!(m.authorities.is_empty());

    let m = ask(&h, query(asked, RecordType::TXT, None), false).await;
    assert_eq!(m.answers.len(), 1, "the CNAME, then NODATA");
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
}

/// Polling once must finish a mesh answer: the UDP loop relies on it.
#[test]
fn a_mesh_answer_completes_in_one_poll() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (h, _) = handler(store(MESH), Arc::new(NoOnDemand));
        let raw = query("web.shop.svc.cluster.local.", RecordType::A, None);
        let mut fut = Box::pin(h.answer(raw, src(), false));
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
        assert!(polled.is_ready());
    });
}

/// Found by the fuzzer: a question name whose compression pointer targets
/// the header (offset 0). It parses, but echoed under the response's header
/// it would not; it gets FORMERR.
#[tokio::test]
async fn a_question_compressed_against_the_header_gets_formerr() {
    let (h, _) = handler(store(MESH), Arc::new(NoOnDemand));
    let raw = vec![
        0x02, 0x00, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 0, 0, 0, // id 0x0200, 4 questions
        0x00, 0x40, 0x00, 0x00, 0x00, // root, type 0x4000, class 0
        0xc0, 0x00, 0x09, 0x00, 0x00, // pointer to offset 0 (the header)
        0x00, 0x00, 0x3b, 0x00, 0xda, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let reply = h.answer(raw, src(), true).await.unwrap();
    assert_eq!(reply.len(), 12);
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    Message::from_vec(&reply).expect("parses");

    // Pointers within the question section are fine and echoed.
    let mut ok = query("web.shop.svc.cluster.local.", RecordType::A, None);
    assert!(!points_into_header(&ok[12..]));
    ok.truncate(12);
    ok[5] = 2; // two questions: the second is a pointer to the first name
    ok.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1]);
    assert!(!points_into_header(&ok[12..]));
    let m = ask(&h, ok, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.queries.len(), 2);
    // And one that reaches the header through another pointer (hidden in
    // the class field) is caught.
    assert!(points_into_header(&[0xc0, 16, 0, 1, 0xc0, 0x00]));
}
