//! Real rustls handshakes over loopback between stores' configs: who is
//! accepted, who is refused, and the reason label each failure gets.

use rustls::client::ResolvesClientCert;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::identity::{handshake_failure_reason, peer_id, SpiffeId};

fn certified(leaf: &Leaf) -> Arc<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(leaf.key_der.clone().into());
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(CertifiedKey::from_der(chain, key, &provider).unwrap())
}

/// `base` (a store's client config), presenting `leaf` or no certificate.
fn client_presenting(base: &ClientConfig, leaf: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut config = base.clone();
    config.client_auth_cert_resolver = match leaf {
        Some(leaf) => Arc::new(SingleCertAndKey::from(certified(leaf))),
        None => Arc::new(NoCertificate),
    };
    Arc::new(config)
}

/// `base` (a store's server config), presenting `leaf`.
fn server_presenting(base: &ServerConfig, leaf: &Leaf) -> Arc<ServerConfig> {
    let mut config = base.clone();
    config.cert_resolver = Arc::new(SingleCertAndKey::from(certified(leaf)));
    Arc::new(config)
}

/// A client that has no certificate to send.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesClientCert for NoCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// Connects and reads once; the label of the client's failure. In TLS 1.3
/// the client finishes before the server has checked its certificate, so a
/// refusal arrives as an alert on the first read.
async fn client_failure(addr: SocketAddr, config: Arc<ClientConfig>) -> &'static str {
    let attempt = async {
        let mut tls = connect(addr, config).await?;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    };
    match tokio::time::timeout(LIMIT, attempt)
        .await
        .expect("the client ends in time")
    {
        Err(e) => handshake_failure_reason(&e),
        Ok(n) => panic!("the client was accepted (read {n} bytes)"),
    }
}

async fn server_failure(
    task: JoinHandle<io::Result<server::TlsStream<TcpStream>>>,
) -> &'static str {
    match server_result(task).await {
        Err(e) => handshake_failure_reason(&e),
        Ok(_) => panic!("the server accepted the handshake"),
    }
}

#[tokio::test]
async fn peers_of_two_clusters_handshake_and_see_each_others_ids() {
    let mesh = Mesh::new();
    let (_fa, a) = mesh.store_a("frontend", "web");
    let (_fb, b) = mesh.store_b("backend", "api");

    let (addr, task) = serve_once(a.server_config()).await;
    let mut client = tokio::time::timeout(LIMIT, connect(addr, b.client_config()))
        .await
        .unwrap()
        .unwrap();
    let mut server = server_result(task).await.unwrap();

    let (_, client_conn) = client.get_ref();
    let (_, server_conn) = server.get_ref();
    assert_eq!(client_conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(server_conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        client_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(peer_id(client_conn).unwrap(), a.id());
    assert_eq!(peer_id(server_conn).unwrap(), b.id());
    assert_eq!(
        peer_id(server_conn).unwrap(),
        SpiffeId::parse(&spiffe("backend", "api")).unwrap()
    );

    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_client_of_another_root_is_refused_as_unknown_ca() {
    let mesh = Mesh::new();
    let (_fa, a) = mesh.store_a("frontend", "web");
    // Its chain leads to another root, but it trusts ours, so it is the
    // server that refuses.
    let other = Ca::root("another root");
    let files = Files::write(
        &other
            .intermediate("another intermediate")
            .leaf(&spiffe("x", "y")),
        &[&other, &mesh.root],
    );
    let stranger = files.load().unwrap();

    let (addr, task) = serve_once(a.server_config()).await;
    assert_eq!(
        client_failure(addr, stranger.client_config()).await,
        "unknown_ca"
    );
    assert_eq!(server_failure(task).await, "unknown_ca");
}

#[tokio::test]
async fn a_server_of_another_root_is_refused_as_unknown_ca() {
    let mesh = Mesh::new();
    let (_fb, b) = mesh.store_b("backend", "api");
    let other = Ca::root("another root");
    let files = Files::write(
        &other
            .intermediate("another intermediate")
            .leaf(&spiffe("x", "y")),
        &[&other, &mesh.root],
    );
    let stranger = files.load().unwrap();

    let (addr, task) = serve_once(stranger.server_config()).await;
    assert_eq!(client_failure(addr, b.client_config()).await, "unknown_ca");
    assert_eq!(server_failure(task).await, "unknown_ca");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_as_expired() {
    let mesh = Mesh::new();
    let (_fa, a) = mesh.store_a("frontend", "web");
    let (_fb, b) = mesh.store_b("backend", "api");
    let expired = mesh.cluster_b.leaf_with(|p| {
        p.subject_alt_names = vec![uri(&spiffe("backend", "api"))];
        p.not_before = (SystemTime::now() - Duration::from_secs(2 * 86400)).into();
        p.not_after = (SystemTime::now() - Duration::from_secs(86400)).into();
    });

    let (addr, task) = serve_once(a.server_config()).await;
    let client = client_presenting(&b.client_config(), Some(&expired));
    assert_eq!(client_failure(addr, client).await, "expired");
    assert_eq!(server_failure(task).await, "expired");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let mesh = Mesh::new();
    let (_fa, a) = mesh.store_a("frontend", "web");
    let (_fb, b) = mesh.store_b("backend", "api");

    let (addr, task) = serve_once(a.server_config()).await;
    let client = client_presenting(&b.client_config(), None);
    assert_eq!(client_failure(addr, client).await, "no_client_cert");
    assert_eq!(server_failure(task).await, "no_client_cert");
}

#[tokio::test]
async fn peers_outside_the_trust_domain_are_refused_as_bad_certificates() {
    let mesh = Mesh::new();
    let (_fa, a) = mesh.store_a("frontend", "web");
    let (_fb, b) = mesh.store_b("backend", "api");
    let foreign = mesh
        .cluster_b
        .leaf("spiffe://other.domain/ns/backend/sa/api");
    let no_id = mesh.cluster_b.leaf_with(|p| {
        p.subject_alt_names = vec![SanType::DnsName("backend.example".try_into().unwrap())];
    });

    for leaf in [&foreign, &no_id] {
        // As a client.
        let (addr, task) = serve_once(a.server_config()).await;
        let client = client_presenting(&b.client_config(), Some(leaf));
        assert_eq!(client_failure(addr, client).await, "bad_certificate");
        assert_eq!(server_failure(task).await, "bad_certificate");

        // As a server.
        let (addr, task) = serve_once(server_presenting(&b.server_config(), leaf)).await;
        assert_eq!(
            client_failure(addr, a.client_config()).await,
            "bad_certificate"
        );
        assert_eq!(server_failure(task).await, "bad_certificate");
    }
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_is_not_tls() {
    let (_fa, a) = Mesh::new().store_a("frontend", "web");
    let (addr, task) = serve_once(a.server_config()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(server_failure(task).await, "not_tls");
}

#[tokio::test]
async fn a_tls12_only_client_is_a_protocol_version_failure() {
    let (_fa, a) = Mesh::new().store_a("frontend", "web");
    let (addr, task) = serve_once(a.server_config()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&tls12_client_hello()).await.unwrap();
    assert_eq!(server_failure(task).await, "protocol_version");
    // The server says why before closing: a protocol_version alert (70).
    let mut alert = Vec::new();
    tokio::time::timeout(LIMIT, tcp.read_to_end(&mut alert))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
    assert_eq!(alert.last(), Some(&70), "protocol_version: {alert:?}");
}

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_peers_of_either() {
    let old = Ca::root("old root");
    let new = Ca::root("new root");
    let bundle = [&old, &new];
    let under_old = Files::write(&old.intermediate("old a").leaf(&spiffe("a", "a")), &bundle);
    let under_new = Files::write(&new.intermediate("new b").leaf(&spiffe("b", "b")), &bundle);
    let (old_store, new_store) = (under_old.load().unwrap(), under_new.load().unwrap());

    for (server, client) in [(&old_store, &new_store), (&new_store, &old_store)] {
        let (addr, task) = serve_once(server.server_config()).await;
        let tls = tokio::time::timeout(LIMIT, connect(addr, client.client_config()))
            .await
            .unwrap()
            .unwrap();
        let accepted = server_result(task).await.unwrap();
        assert_eq!(peer_id(tls.get_ref().1).unwrap(), server.id());
        assert_eq!(peer_id(accepted.get_ref().1).unwrap(), client.id());
    }
}

/// A ClientHello as a TLS 1.2-only client sends it: legacy version 1.2,
/// no supported_versions extension.
fn tls12_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2b]); // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions = [
        &[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03][..], // signature_algorithms
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d][..], // supported_groups: x25519
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],             // ec_point_formats
    ]
    .concat();
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);

    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}
