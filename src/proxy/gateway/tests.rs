//! Gateway tests: real ClientHellos, SNI parsing, splicing end to end, refusals.

use std::path::Path;

use prometheus::Registry;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::config::{parse_str, MapOverrides};
use crate::discovery::{translate, Store};
use crate::test_util::{metric_value, service_yaml};

const SNI: &str = "outbound_.8080_._.httpbin.httpbin.svc.cluster.local";
const FLAKY: &str = "outbound_.8080_._.flaky.httpbin.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(10);

fn client_config(roots: RootCertStore, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn;
    Arc::new(c)
}

/// The first flight of a real rustls client: its ClientHello.
fn client_hello(server_name: &str, alpn: Vec<Vec<u8>>) -> Vec<u8> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let config = client_config(RootCertStore::empty(), alpn);
    let mut conn = ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Writes `bytes` on a real socket, left open, and reads a hello on the
/// accepting side.
async fn hello_over_socket(bytes: &[u8]) -> (Hello, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    client.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let hello = read_client_hello(&mut server, &mut buf, WAIT).await;
    (hello, buf)
}

#[tokio::test]
async fn sni_is_read_from_a_real_rustls_client_hello_and_every_byte_kept() {
    let bytes = client_hello(SNI, vec![b"h2".to_vec()]);
    let (hello, buf) = hello_over_socket(&bytes).await;
    assert_eq!(hello, Hello::Sni(SNI.to_owned()));
    assert_eq!(buf, bytes, "the bytes to replay are the bytes sent");
}

#[tokio::test]
async fn a_client_hello_arriving_one_byte_per_read_is_still_read() {
    let bytes = client_hello(SNI, Vec::new());
    // A duplex pipe of capacity 1 hands over one byte per read, which a
    // socket cannot be made to do.
    let (mut client, mut server) = tokio::io::duplex(1);
    let sent = bytes.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client
    });
    let mut buf = Vec::new();
    let hello = read_client_hello(&mut server, &mut buf, WAIT).await;
    assert_eq!(hello, Hello::Sni(SNI.to_owned()));
    assert_eq!(buf, bytes);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn a_client_hello_naming_an_ip_address_carries_no_sni() {
    let (hello, _) = hello_over_socket(&client_hello("10.1.2.3", Vec::new())).await;
    assert_eq!(hello, Hello::NoSni);
}

#[tokio::test]
async fn plaintext_and_garbage_are_not_tls() {
    let http = b"GET / HTTP/1.1\r\nHost: httpbin\r\n\r\n";
    assert_eq!(hello_over_socket(http).await.0, Hello::NotTls);
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..512).map(|_| rng.u8(..)).collect();
    assert_eq!(hello_over_socket(&garbage).await.0, Hello::NotTls);
    // A handshake record whose first message is not a ClientHello.
    let server_hello = [0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];
    assert_eq!(hello_over_socket(&server_hello).await.0, Hello::NotTls);
}

#[tokio::test]
async fn an_oversized_client_hello_is_given_up_at_the_cap() {
    // 80 ALPN names of 250 bytes: a real ClientHello of about 20 KiB.
    let alpn = (0..80u8).map(|i| vec![b'a' + i % 26; 250]).collect();
    let bytes = client_hello(SNI, alpn);
    assert!(bytes.len() > MAX_HELLO_BYTES, "{}", bytes.len());
    let (hello, buf) = hello_over_socket(&bytes).await;
    assert_eq!(hello, Hello::TooLarge);
    assert_eq!(buf.len(), MAX_HELLO_BYTES);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stalls_or_leaves_mid_hello_is_told_apart() {
    let bytes = client_hello(SNI, Vec::new());
    let half = &bytes[..bytes.len() / 2];

    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(half).await.unwrap();
    let mut buf = Vec::new();
    let hello = read_client_hello(&mut server, &mut buf, Duration::from_secs(5)).await;
    assert_eq!(hello, Hello::Timeout);

    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(half).await.unwrap();
    drop(client);
    let mut buf = Vec::new();
    let hello = read_client_hello(&mut server, &mut buf, Duration::from_secs(5)).await;
    assert_eq!(hello, Hello::Closed);
    assert_eq!(buf, half);
}

#[test]
fn parse_sni_accepts_only_the_canonical_form() {
    let ok = |name: &str, ns: &str, port| Some((ServiceName::new(name, ns), port));
    let cases: &[(&str, Option<(ServiceName, u16)>)] = &[
        (SNI, ok("httpbin", "httpbin", 8080)),
        ("outbound_.1_._.a.b.svc.cluster.local", ok("a", "b", 1)),
        (
            "outbound_.65535_._.web-1.shop.svc.cluster.local",
            ok("web-1", "shop", 65535),
        ),
        ("inbound_.8080_._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound.8080_._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound_.0_._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound_.08080_._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound_.70000_._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound_.+80_._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound_._._.httpbin.httpbin.svc.cluster.local", None),
        ("outbound_.8080_._.httpbin.svc.cluster.local", None),
        ("outbound_.8080_._..httpbin.svc.cluster.local", None),
        ("outbound_.8080_._.a.b.c.svc.cluster.local", None),
        ("outbound_.8080_._.httpbin.httpbin.svc.cluster", None),
        ("outbound_.8080_._.httpbin.httpbin.svc.example.org", None),
        ("outbound_.8080_._.HTTPBIN.httpbin.svc.cluster.local", None),
        ("outbound_.8080_._.httpbin.-ns.svc.cluster.local", None),
        ("outbound_.8080_._.httpbin.httpbin", None),
        ("httpbin.httpbin.svc.cluster.local", None),
        ("", None),
    ];
    for (sni, want) in cases {
        assert_eq!(&parse_sni(sni), want, "{sni:?}");
    }
}

// === end to end ===

/// A TLS server that echoes, standing in for an endpoint's mesh port;
/// returns its address and a root store trusting its certificate.
async fn tls_echo_server() -> (SocketAddr, RootCertStore, CertificateDer<'static>) {
    let generated =
        rcgen::generate_simple_self_signed(vec![SNI.to_owned(), FLAKY.to_owned()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (mut rd, mut wr) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    (addr, roots, cert)
}

struct Gateway {
    addr: SocketAddr,
    registry: Registry,
    stop: CancellationToken,
}

impl Gateway {
    fn metric(&self, series: &str) -> f64 {
        let page = String::from_utf8(crate::metrics::encode(&self.registry)).unwrap();
        metric_value(&page, series)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const EXPORT: &str = "  - apiVersion: multicluster.x-k8s.io/v1alpha1\n    kind: ServiceExport\n";

/// Local cluster `c1`, mesh port `mesh_port`. `httpbin` is exported with
/// a local endpoint on 127.0.0.1; `private` is not exported; `remote`
/// has endpoints in `c2` only (ActiveActive: a policy pick would go there); `refused` only on 127.0.0.2 (nothing
/// listens there); `flaky` on both.
async fn gateway(mesh_port: u16) -> Gateway {
    let ep = |ip: [u8; 4]| SocketAddr::from((ip, 8080));
    let vip = |i: u8| std::net::IpAddr::from([10, 0, 0, i]);
    let mut mesh = String::new();
    for (i, (name, endpoints, exported)) in [
        ("httpbin", vec![ep([127, 0, 0, 1])], true),
        ("private", vec![ep([127, 0, 0, 1])], false),
        ("remote", vec![], true),
        ("refused", vec![ep([127, 0, 0, 2])], true),
        ("flaky", vec![ep([127, 0, 0, 2]), ep([127, 0, 0, 1])], true),
    ]
    .into_iter()
    .enumerate()
    {
        mesh += &service_yaml(name, "httpbin", vip(i as u8 + 1), 8080, None, &endpoints);
        if exported {
            mesh += &format!("{EXPORT}    metadata: {{ name: {name}, namespace: httpbin }}\n");
        }
    }
    mesh += "  - apiVersion: discovery.k8s.io/v1\n    kind: EndpointSlice\n    metadata: { name: remote-c2, namespace: httpbin, labels: { multicluster.kubernetes.io/service-name: remote, multicluster.kubernetes.io/source-cluster: c2 } }\n    addressType: IPv4\n    endpoints: [{ addresses: [\"127.0.0.1\"] }]\n    ports: [{ name: p, port: 8080 }]\n";
    // A policy that would send `remote` to c2: the gateway still must not.
    mesh += "  - apiVersion: flomesh.io/v1alpha1\n    kind: GlobalTrafficPolicy\n    metadata: { name: remote, namespace: httpbin }\n    spec: { lbType: ActiveActive }\n";
    let text =
        format!("node: {{ cluster: c1 }}\ninbound: {{ meshPort: {mesh_port} }}\nmesh:\n{mesh}");
    let loaded = parse_str(&text, Path::new("."), &MapOverrides::default()).unwrap();
    let snapshot = translate(&loaded.config, &loaded.manifests).unwrap();
    let store = Arc::new(Store::new(loaded.config, snapshot));
    let registry = Registry::new();
    let proxy = Proxy::new(store, super::super::Metrics::register(&registry).unwrap());
    let metrics = GatewayMetrics::register(&registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, proxy, metrics, stop.clone()));
    Gateway {
        addr,
        registry,
        stop,
    }
}

async fn tls_through(
    gateway: SocketAddr,
    sni: &str,
    roots: RootCertStore,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gateway).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let connect = TlsConnector::from(client_config(roots, Vec::new())).connect(name, tcp);
    tokio::time::timeout(WAIT, connect).await?
}

#[tokio::test]
async fn the_gateway_splices_tls_end_to_end_without_terminating_it() {
    let (mesh, roots, cert) = tls_echo_server().await;
    let gw = gateway(mesh.port()).await;

    let mut tls = tls_through(gw.addr, SNI, roots).await.unwrap();
    // The handshake completed with the endpoint's certificate: the
    // gateway, which has none, only passed bytes along.
    assert_eq!(tls.get_ref().1.peer_certificates(), Some(&[cert][..]));
    assert_eq!(
        gw.metric(r#"strait_gateway_connections_total{result="forwarded"}"#),
        1.0
    );
    assert_eq!(gw.metric("strait_gateway_connections_active"), 1.0);

    tls.write_all(b"across the clusters").await.unwrap();
    let mut echo = [0u8; 19];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"across the clusters");
    // Half-close: the client is done sending, the echo side closes in turn.
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());

    let bytes = |dir: &str| {
        gw.metric(&format!(
            r#"strait_gateway_bytes_total{{direction="{dir}",service="httpbin",namespace="httpbin"}}"#
        ))
    };
    assert!(
        bytes("in") > 19.0 && bytes("out") > 19.0,
        "{} {}",
        bytes("in"),
        bytes("out")
    );
    crate::assert_eventually!(
        gw.metric("strait_gateway_connections_active") == 0.0,
        100,
        "the connection task ends"
    );
}

#[tokio::test]
async fn connections_the_gateway_cannot_route_are_closed_and_counted() {
    let (mesh, roots, _) = tls_echo_server().await;
    let gw = gateway(mesh.port()).await;
    let sni =
        |port: u16, name: &str| format!("outbound_.{port}_._.{name}.httpbin.svc.cluster.local");
    for (sni, result) in [
        (sni(8080, "nosuch"), "unknown_service"),
        (sni(8080, "private"), "not_exported"),
        (sni(9090, "httpbin"), "unknown_port"),
        (sni(8080, "remote"), "no_endpoint"),
        (sni(8080, "refused"), "connect_failed"),
        ("httpbin.example.org".to_owned(), "bad_sni"),
        ("10.0.0.1".to_owned(), "no_sni"),
    ] {
        let refused = tls_through(gw.addr, &sni, roots.clone()).await;
        assert!(refused.is_err(), "{sni}: the handshake must fail");
        let series = format!(r#"strait_gateway_connections_total{{result="{result}"}}"#);
        assert_eq!(gw.metric(&series), 1.0, "{sni}");
    }

    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: httpbin\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(read.is_err() || out.is_empty(), "closed without an answer");
    assert_eq!(
        gw.metric(r#"strait_gateway_connections_total{result="not_tls"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"strait_gateway_connections_total{result="forwarded"}"#),
        0.0
    );
}

#[tokio::test]
async fn a_refused_local_endpoint_is_skipped_for_another() {
    let (mesh, roots, _) = tls_echo_server().await;
    let gw = gateway(mesh.port()).await;
    let errors = r#"strait_upstream_connect_errors_total{service="flaky"}"#;
    // Until the refusing endpoint has been picked at least once (p2c
    // picks at random); every connection must get through regardless.
    for n in 1..=50 {
        let mut tls = tls_through(gw.addr, FLAKY, roots.clone()).await.unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut x = [0u8; 1];
        tls.read_exact(&mut x).await.unwrap();
        let forwarded = gw.metric(r#"strait_gateway_connections_total{result="forwarded"}"#);
        assert_eq!(forwarded, f64::from(n));
        if gw.metric(errors) > 0.0 {
            break;
        }
    }
    assert!(gw.metric(errors) >= 1.0, "127.0.0.2 was never tried");
    assert_eq!(
        gw.metric(r#"strait_gateway_connections_total{result="connect_failed"}"#),
        0.0
    );
}
