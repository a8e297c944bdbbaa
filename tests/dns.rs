//! The DNS shim over real sockets: hickory's client (UDP and TCP) against an
//! in-process proxy, with a scripted upstream on loopback
//! (`support/dns_upstream.rs`); nothing leaves the machine. The `dig` tests
//! at the end need dnsutils and are run by `.ci/run`.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

mod support {
    pub mod dns_upstream;
    #[allow(dead_code)] // shared with other tests; only the echo server is used here
    pub mod tcp;
}

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{DnsResponse, Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use strait::config::{parse_str, MapOverrides};
use strait::discovery::translate;
use strait::test_util::{metric_value, unique_vip, TestProxy};
use support::dns_upstream::{self, big_addrs, SMALL_ADDR};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

type DnsClient = Client<TokioRuntimeProvider>;

const MESH: &str = r#"
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {clusterIP: 10.0.0.5, ports: [{name: http, port: 80}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: dual, namespace: shop}
    spec: {clusterIPs: ["10.0.0.6", "fd00::6"], ports: [{port: 80}]}
"#;

/// A proxy with the shim on an ephemeral port, forwarding to `upstreams`.
async fn proxy(upstreams: &[SocketAddr], extra_dns: &str, mesh: &str) -> TestProxy {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    let yaml = format!(
        "listeners: {{admin: \"127.0.0.1:0\", outbound: null}}\nnode: {{namespace: shop}}\n\
         dns: {{enabled: true, listen: \"127.0.0.1:0\", upstreams: [{}], upstreamTimeout: 500ms{extra_dns}}}\n\
         mesh:\n{mesh}",
        list.join(", ")
    );
    TestProxy::from_yaml(&yaml).await.unwrap()
}

async fn udp_client(addr: SocketAddr, edns: bool) -> DnsClient {
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(5)))
        .build();
    let (mut client, bg) = Client::from_sender(stream);
    tokio::spawn(bg);
    if !edns {
        client.disable_edns();
    }
    client
}

async fn tcp_client(addr: SocketAddr) -> DnsClient {
    let (connect, handle) = TcpClientStream::new(
        addr,
        None,
        Some(Duration::from_secs(5)),
        TokioRuntimeProvider::default(),
    );
    let stream = connect.await.unwrap();
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream, handle);
    tokio::spawn(bg);
    client
}

async fn ask(client: &mut DnsClient, name: &str, qtype: RecordType) -> DnsResponse {
    let name = Name::from_ascii(name).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.query(name, DNSClass::IN, qtype),
    )
    .await
    .expect("the shim answers in time")
    .expect("a response")
}

fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mesh_names_resolve_over_udp_and_tcp() {
    let proxy = proxy(&[], "", MESH).await;
    let addr = proxy.dns.expect("dns enabled");
    for mut client in [udp_client(addr, true).await, tcp_client(addr).await] {
        let r = ask(&mut client, "web.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(ips(&r), [IpAddr::from([10, 0, 0, 5])]);
        assert_eq!(r.answers[0].ttl, 30, "default TTL");

        let r = ask(&mut client, "web.shop.svc.clusterset.local.", RecordType::A).await;
        assert_eq!(ips(&r), [IpAddr::from([10, 0, 0, 5])]);

        // No IPv6 VIP: an empty NOERROR, not NXDOMAIN.
        let r = ask(&mut client, "web.shop.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());

        let r = ask(
            &mut client,
            "dual.shop.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await;
        assert_eq!(ips(&r), ["fd00::6".parse::<IpAddr>().unwrap()]);

        let r = ask(
            &mut client,
            "_http._tcp.web.shop.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        let RData::SRV(srv) = &r.answers[0].data else {
            panic!("{r:?}")
        };
        assert_eq!(
            (srv.port, srv.target.to_ascii().as_str()),
            (80, "web.shop.svc.cluster.local.")
        );

        // `web.shop` typed in a pod of namespace `shop`: the first search-list try is answered.
        let r = ask(
            &mut client,
            "web.shop.shop.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert!(matches!(r.answers[0].data, RData::CNAME(_)), "{r:?}");
        assert_eq!(ips(&r), [IpAddr::from([10, 0, 0, 5])]);
    }
    let page = proxy.metrics().await;
    assert!(
        metric_value(
            &page,
            "strait_dns_queries_total{type=\"a\",outcome=\"mesh\"}"
        ) >= 6.0,
        "{page}"
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_import_without_ips_gets_a_vip_that_the_proxy_routes() {
    let backend = support::tcp::echo_then_bye().await;
    // A loopback VIP range of our own, so per-service listeners can bind it.
    let IpAddr::V4(v4) = unique_vip() else {
        unreachable!()
    };
    let range = format!("127.{}.250.0/24", v4.octets()[1]);
    let mesh = format!(
        r#"
  - apiVersion: multicluster.x-k8s.io/v1alpha1
    kind: ServiceImport
    metadata: {{name: httpbin, namespace: httpbin}}
    spec: {{ports: [{{name: tcp-echo, port: 8080}}]}}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {{name: httpbin-1, namespace: httpbin, labels: {{kubernetes.io/service-name: httpbin}}}}
    addressType: IPv4
    endpoints: [{{addresses: ["{}"]}}]
    ports: [{{name: tcp-echo, port: {}}}]
"#,
        backend.ip(),
        backend.port()
    );
    let yaml = format!(
        "listeners: {{admin: \"127.0.0.1:0\", outbound: null, serviceVips: true}}\n\
         dns: {{enabled: true, listen: \"127.0.0.1:0\", upstreams: [], vipRange: \"{range}\"}}\nmesh:{mesh}"
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let mut client = udp_client(proxy.dns.unwrap(), true).await;
    let r = ask(
        &mut client,
        "httpbin.httpbin.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    let vip = ips(&r)[0];
    assert!(
        range
            .parse::<strait::config::VipRange>()
            .unwrap()
            .contains(vip),
        "{vip}"
    );

    // The same address after an unrelated change to the mesh.
    let loaded = parse_str(
        &format!("{yaml}{MESH}"),
        Path::new("."),
        &MapOverrides::default(),
    )
    .unwrap();
    proxy.store.publish(
        loaded.config.clone(),
        translate(&loaded.config, &loaded.manifests).unwrap(),
    );
    let r = ask(
        &mut client,
        "httpbin.httpbin.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(ips(&r), [vip], "stable for the life of the service");

    // And the proxy routes it: connect to the VIP, reach the backend.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(mut s) = TcpStream::connect(SocketAddr::new(vip, 8080)).await {
            s.write_all(b"ping").await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(out, b"pingbye");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "no listener on the allocated VIP {vip}");
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_forwarded_answers_arrive_whole() {
    let upstream = dns_upstream::start().await;
    let proxy = proxy(&[upstream.addr], "", MESH).await;
    let addr = proxy.dns.unwrap();

    // The upstream truncates over UDP; the shim retries over TCP and gets all 40.
    let mut edns = udp_client(addr, true).await;
    let r = ask(&mut edns, "big.test.", RecordType::A).await;
    assert!(!r.metadata.truncation);
    let want: Vec<IpAddr> = big_addrs().into_iter().map(IpAddr::V4).collect();
    assert_eq!(ips(&r), want, "over 512 bytes, over UDP with EDNS");
    assert!(r.as_buffer().len() > 512);
    assert_eq!(upstream.counts.tcp(), 1, "one TCP retry upstream");

    // A client without EDNS gets TC over UDP, then everything over TCP.
    let mut plain = udp_client(addr, false).await;
    let r = ask(&mut plain, "big.test.", RecordType::A).await;
    assert!(r.metadata.truncation);
    assert!(r.as_buffer().len() <= 512);
    let mut tcp = tcp_client(addr).await;
    let r = ask(&mut tcp, "big.test.", RecordType::A).await;
    assert!(!r.metadata.truncation);
    assert_eq!(ips(&r), want);
    assert_eq!(
        upstream.counts.tcp(),
        1,
        "later answers came from the cache"
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn nxdomain_and_nodata_are_preserved_and_cached() {
    let upstream = dns_upstream::start().await;
    let proxy = proxy(&[upstream.addr], "", MESH).await;
    let mut client = udp_client(proxy.dns.unwrap(), true).await;

    let r = ask(&mut client, "nx.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    let r = ask(&mut client, "nodata.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    let r = ask(&mut client, "small.test.", RecordType::A).await;
    assert_eq!(ips(&r), [IpAddr::V4(SMALL_ADDR)]);
    let asked = upstream.counts.udp();
    assert_eq!(asked, 3);

    for name in ["nx.test.", "nodata.test.", "small.test."] {
        ask(&mut client, name, RecordType::A).await;
    }
    assert_eq!(
        upstream.counts.udp(),
        asked,
        "second answers from the cache"
    );
    let page = proxy.metrics().await;
    assert_eq!(
        metric_value(&page, "strait_dns_cache_lookups_total{result=\"hit\"}"),
        3.0
    );
    assert_eq!(
        metric_value(&page, "strait_dns_queries_total{outcome=\"nxdomain\"}"),
        2.0
    );
    assert!(
        metric_value(
            &page,
            "strait_dns_upstream_duration_seconds_count{transport=\"udp\"}"
        ) >= 3.0
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn cached_answers_count_their_ttl_down_and_expire() {
    let upstream = dns_upstream::start().await;
    let proxy = proxy(&[upstream.addr], "", MESH).await;
    let mut client = udp_client(proxy.dns.unwrap(), true).await;
    assert_eq!(
        ask(&mut client, "brief.test.", RecordType::A).await.answers[0].ttl,
        1
    );
    // TTL 1 s: gone from the cache after it, asked upstream again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ask(&mut client, "brief.test.", RecordType::A).await;
    assert_eq!(upstream.counts.udp(), 2);
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_upstream_is_servfail_after_the_timeout_and_the_next_upstream_is_tried() {
    let upstream = dns_upstream::start().await;
    let hole = dns_upstream::blackhole().await;
    let proxy = proxy(&[upstream.addr], "", MESH).await;
    let mut client = udp_client(proxy.dns.unwrap(), true).await;
    let start = std::time::Instant::now();
    let r = ask(&mut client, "silent.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let page = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &page,
            "strait_dns_upstream_errors_total{reason=\"timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&page, "strait_dns_queries_total{outcome=\"servfail\"}"),
        1.0
    );
    proxy.shutdown().await.unwrap();

    // The first upstream never answers; the second does.
    let proxy = self::proxy(&[hole, upstream.addr], "", MESH).await;
    let mut client = udp_client(proxy.dns.unwrap(), true).await;
    let r = ask(&mut client, "small.test.", RecordType::A).await;
    assert_eq!(ips(&r), [IpAddr::V4(SMALL_ADDR)]);
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn snapshot_changes_are_visible_to_the_next_query() {
    let proxy = proxy(&[], "", MESH).await;
    let mut client = udp_client(proxy.dns.unwrap(), true).await;
    let name = "api.shop.svc.cluster.local.";
    assert_eq!(
        ask(&mut client, name, RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let base = "listeners: {admin: \"127.0.0.1:0\", outbound: null}\nnode: {namespace: shop}\ndns: {enabled: true, upstreams: []}\nmesh:";
    let added = format!(
        "{base}{MESH}  - apiVersion: v1\n    kind: Service\n    metadata: {{name: api, namespace: shop}}\n    spec: {{clusterIP: 10.0.0.9, ports: [{{port: 80}}]}}\n"
    );
    for (yaml, want) in [
        (added.as_str(), vec![IpAddr::from([10, 0, 0, 9])]),
        (base, vec![]),
    ] {
        let loaded = parse_str(yaml, Path::new("."), &MapOverrides::default()).unwrap();
        let snapshot = translate(&loaded.config, &loaded.manifests).unwrap();
        proxy.store.publish(loaded.config, snapshot);
        let r = ask(&mut client, name, RecordType::A).await;
        assert_eq!(ips(&r), want);
    }
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_packets_and_oversized_tcp_frames_do_not_stop_the_server() {
    let proxy = proxy(&[], "", MESH).await;
    let addr = proxy.dns.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 1024];

    // A header and garbage: FORMERR with the same id.
    let mut garbage = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'x'];
    garbage.extend(std::iter::repeat_n(0xc0, 100));
    sock.send_to(&garbage, addr).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 12);
    assert_eq!((buf[0], buf[1], buf[3] & 0x0f), (0x42, 0x42, 1));

    // Too short to answer: nothing comes back, and the next query still works.
    sock.send_to(&[1, 2, 3], addr).await.unwrap();
    let mut client = udp_client(addr, true).await;
    let r = ask(&mut client, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(ips(&r), [IpAddr::from([10, 0, 0, 5])]);

    // TCP: a 65535-byte length prefix closes the connection without a read of the body.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xff, 0xff, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let mut tcp = tcp_client(addr).await;
    let r = ask(&mut tcp, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(ips(&r), [IpAddr::from([10, 0, 0, 5])]);

    let page = proxy.metrics().await;
    assert_eq!(
        metric_value(&page, "strait_dns_dropped_total{reason=\"tcp_frame\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&page, "strait_dns_dropped_total{reason=\"short\"}"),
        1.0
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dns_port_conflict_fails_startup() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = format!(
        "listeners: {{admin: \"127.0.0.1:0\", outbound: null}}\ndns: {{enabled: true, listen: \"{addr}\", upstreams: []}}\n"
    );
    let err = match TestProxy::from_yaml(&yaml).await {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cannot bind DNS UDP listener"), "{err}");
}

#[tokio::test]
async fn the_shim_is_off_unless_enabled_and_stops_on_drain() {
    let off = TestProxy::from_yaml("listeners: {admin: \"127.0.0.1:0\", outbound: null}\n")
        .await
        .unwrap();
    assert!(off.dns.is_none());
    off.shutdown().await.unwrap();

    let proxy = proxy(&[], "", MESH).await;
    let addr = proxy.dns.unwrap();
    proxy.shutdown().await.unwrap();
    // After the drain the port is released (bindable again) once the loops have ended.
    let mut free = false;
    for _ in 0..100 {
        if UdpSocket::bind(addr).await.is_ok() {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(free, "the DNS port is still held after shutdown");
}

// === dig ===

/// `dig @ADDR -p PORT ARGS...` output (`+short` unless the args say otherwise).
async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=5", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig runs (apt-get install dnsutils)");
    assert!(out.status.success(), "dig {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
#[ignore = "needs dig (dnsutils); run by .ci/run"]
async fn dig_resolves_mesh_names_over_udp_and_tcp() {
    let proxy = proxy(&[], "", MESH).await;
    let addr = proxy.dns.unwrap();
    for transport in ["+notcp", "+tcp"] {
        let out = dig(
            addr,
            &[transport, "+short", "web.shop.svc.cluster.local", "A"],
        )
        .await;
        assert_eq!(out.trim(), "10.0.0.5", "{transport}");
        let out = dig(addr, &[transport, "web.shop.svc.cluster.local", "AAAA"]).await;
        assert!(
            out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
            "{out}"
        );
        let out = dig(
            addr,
            &[
                transport,
                "+short",
                "_http._tcp.web.shop.svc.cluster.local",
                "SRV",
            ],
        )
        .await;
        assert_eq!(out.trim(), "0 100 80 web.shop.svc.cluster.local.");
    }
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
#[ignore = "needs dig (dnsutils); run by .ci/run"]
async fn dig_gets_forwarded_answers_whole_and_errors_as_they_are() {
    let upstream = dns_upstream::start().await;
    let proxy = proxy(&[upstream.addr], "", MESH).await;
    let addr = proxy.dns.unwrap();
    for transport in ["+notcp", "+tcp"] {
        // dig follows TC over TCP by itself; with EDNS the answer fits UDP anyway.
        let out = dig(addr, &[transport, "+short", "big.test", "A"]).await;
        assert_eq!(out.lines().count(), 40, "{transport}: {out}");
        let out = dig(addr, &[transport, "nx.test", "A"]).await;
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        let out = dig(addr, &[transport, "nodata.test", "A"]).await;
        assert!(
            out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
            "{out}"
        );
    }
    // Without EDNS and without following TC, the UDP answer is cut and says so.
    let out = dig(addr, &["+noedns", "+ignore", "big.test", "A"]).await;
    assert!(out.contains(" tc"), "{out}");
    let out = dig(addr, &["+short", "silent.test", "A"]).await;
    assert!(out.trim().is_empty(), "{out}");
    let out = dig(addr, &["silent.test", "A"]).await;
    assert!(out.contains("status: SERVFAIL"), "{out}");
    proxy.shutdown().await.unwrap();
}
