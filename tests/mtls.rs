//! Mesh mTLS end to end on loopback: certificates from `strait::certs` (one
//! root, an intermediate per cluster), a client proxy in "cluster-2" and a
//! server proxy in "cluster-1" (each on its own loopback address, as pods
//! have their own IPs), the server's apps behind it on 127.0.0.1, and
//! cluster-1's gateway. Real TLS handshakes, real HTTP clients, `openssl
//! s_client` and `curl` where installed.

#![allow(clippy::unwrap_used)]

#[path = "support/http_client.rs"]
mod http_client;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use strait::certs::{self, Ca};
use strait::test_util::{get, start_backend, unique_vip, write_atomic, Backend, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use http_client::{empty, h2, request_h2, send2, RawConn, TcpEcho};

const DAY: Duration = Duration::from_secs(24 * 3600);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/sleep/sa/sleep";
const SERVER_ID: &str = "spiffe://cluster.local/ns/httpbin/sa/httpbin";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/strait-system/sa/gateway";
const HTTP_PORT: u16 = 8080;
const H2_PORT: u16 = 9090;
const TCP_PORT: u16 = 7000;

/// One root, an intermediate per cluster, files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    root: Ca,
    cluster1: Ca,
    cluster2: Ca,
}

impl Pki {
    fn new() -> Self {
        let root = certs::root(10 * DAY).unwrap();
        let cluster1 = certs::intermediate(&root, "cluster-1", 10 * DAY).unwrap();
        let cluster2 = certs::intermediate(&root, "cluster-2", 10 * DAY).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            root,
            cluster1,
            cluster2,
        }
    }

    /// Writes a workload's files under `name/` and returns the config's `identity:` line.
    fn identity(&self, name: &str, ca: &Ca, id: &str) -> String {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_workload(&dir, ca, id, &self.root.cert_pem);
        identity_yaml(&dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn write_workload(dir: &Path, ca: &Ca, id: &str, bundle: &str) -> certs::Workload {
    let w = certs::workload(ca, &ca.cert_pem, id, DAY).unwrap();
    write_files(dir, &w, bundle);
    w
}

/// Writes a workload's three identity files (each replaced atomically).
fn write_files(dir: &Path, w: &certs::Workload, bundle: &str) {
    std::fs::create_dir_all(dir).unwrap();
    write_atomic(&dir.join("cert-chain.pem"), &w.chain_pem).unwrap();
    write_atomic(&dir.join("key.pem"), &w.key_pem).unwrap();
    write_atomic(&dir.join("root-cert.pem"), bundle).unwrap();
}

/// `openssl s_client` arguments presenting `dir`'s identity to `mesh`.
fn s_client_args(mesh: &str, dir: &Path) -> Vec<String> {
    let (leaf, intermediates) = split_chain(dir);
    let file = |name: &str| dir.join(name).display().to_string();
    [
        "s_client",
        "-connect",
        mesh,
        "-cert",
        &leaf,
        "-cert_chain",
        &intermediates,
        "-key",
        &file("key.pem"),
        "-CAfile",
        &file("root-cert.pem"),
        "-alpn",
        "h2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn identity_yaml(dir: &Path) -> String {
    format!(
        "identity: {{ trustDomain: cluster.local, certChain: \"{0}/cert-chain.pem\", privateKey: \"{0}/key.pem\", trustBundle: \"{0}/root-cert.pem\" }}\n",
        dir.display()
    )
}

/// The server side's apps: HTTP/1, HTTP/2 (gRPC-style trailers) and a TCP echo.
struct Apps {
    http: Backend,
    h2: Backend,
    tcp: TcpEcho,
}

impl Apps {
    async fn start() -> Self {
        let any = "127.0.0.1:0".parse().unwrap();
        Self {
            http: start_backend("web", any, false).await.unwrap(),
            h2: start_backend("grpc", any, true).await.unwrap(),
            tcp: TcpEcho::start().await,
        }
    }

    /// (service name, service port, appProtocol, the app's port).
    fn services(&self) -> [(&'static str, u16, &'static str, u16); 3] {
        [
            ("web", HTTP_PORT, "http", self.http.addr.port()),
            ("grpc", H2_PORT, "grpc", self.h2.addr.port()),
            ("echo", TCP_PORT, "tcp", self.tcp.addr.port()),
        ]
    }
}

/// The server pod's mesh view: its services with their one local endpoint
/// (the pod's IP at the app's port), exported to `allowed` callers.
fn server_mesh(apps: &Apps, pod: IpAddr, allowed: &str) -> String {
    let mut out = String::new();
    for (name, port, proto, app_port) in apps.services() {
        out.push_str(&format!(
            "  - apiVersion: v1
    kind: Service
    metadata: {{ name: {name}, namespace: httpbin }}
    spec: {{ clusterIP: \"{vip}\", ports: [{{ name: p, port: {port}, appProtocol: {proto} }}] }}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {{ name: {name}-1, namespace: httpbin, labels: {{ kubernetes.io/service-name: {name} }} }}
    addressType: IPv4
    endpoints: [{{ addresses: [\"{pod}\"] }}]
    ports: [{{ name: p, port: {app_port} }}]
  - apiVersion: multicluster.flomesh.io/v1alpha1
    kind: ServiceExport
    metadata: {{ name: {name}, namespace: httpbin }}
    spec: {{ serviceAccountName: \"{allowed}\" }}
",
            vip = unique_vip(),
        ));
    }
    out
}

/// A server proxy ("cluster-1") on its own loopback address.
async fn server(pki: &Pki, apps: &Apps, allowed: &str) -> (TestProxy, IpAddr) {
    let pod = unique_vip();
    let yaml = format!(
        "node: {{ cluster: cluster-1, namespace: httpbin, serviceAccount: httpbin }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, mesh: \"{pod}:0\" }}
{}mesh:
{}",
        pki.identity("server", &pki.cluster1, SERVER_ID),
        server_mesh(apps, pod, allowed)
    );
    (TestProxy::from_yaml(&yaml).await.unwrap(), pod)
}

/// How the client's mesh reaches cluster-1.
enum Route {
    /// Remote EndpointSlices: the server pod's address.
    Direct { pod: IpAddr },
    /// An ErieCanal-style ServiceImport whose cluster-1 target is the gateway.
    Gateway { gateway: SocketAddr },
}

/// The client pod's mesh view: the three services (VIPs returned), reached
/// in cluster-1 by `route`, expecting servers to run as `server_sa`.
fn client_mesh(apps: &Apps, route: &Route, server_sa: &str) -> (String, [SocketAddr; 3]) {
    let mut out = String::new();
    let mut vips = Vec::new();
    for (name, port, proto, app_port) in apps.services() {
        let vip = unique_vip();
        vips.push(SocketAddr::new(vip, port));
        match route {
            Route::Direct { pod } => out.push_str(&format!(
                "  - apiVersion: v1
    kind: Service
    metadata: {{ name: {name}, namespace: httpbin, annotations: {{ strait.io/service-account: {server_sa} }} }}
    spec: {{ clusterIP: \"{vip}\", ports: [{{ name: p, port: {port}, appProtocol: {proto} }}] }}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {{ name: {name}-c1, namespace: httpbin, labels: {{ kubernetes.io/service-name: {name}, multicluster.kubernetes.io/source-cluster: cluster-1 }} }}
    addressType: IPv4
    endpoints: [{{ addresses: [\"{pod}\"] }}]
    ports: [{{ name: p, port: {app_port} }}]
"
            )),
            Route::Gateway { gateway } => out.push_str(&format!(
                "  - apiVersion: multicluster.flomesh.io/v1alpha1
    kind: ServiceImport
    metadata: {{ name: {name}, namespace: httpbin, annotations: {{ strait.io/service-account: {server_sa} }} }}
    spec:
      ips: [\"{vip}\"]
      ports:
        - name: p
          port: {port}
          appProtocol: {proto}
          endpoints:
            - {{ clusterKey: default/default/default/cluster-1, target: {{ ip: \"{}\", port: {} }} }}
",
                gateway.ip(),
                gateway.port()
            )),
        }
        out.push_str(&format!(
            "  - apiVersion: flomesh.io/v1alpha1
    kind: GlobalTrafficPolicy
    metadata: {{ name: {name}, namespace: httpbin }}
    spec: {{ lbType: ActiveActive }}
"
        ));
    }
    (out, [vips[0], vips[1], vips[2]])
}

/// A client proxy ("cluster-2") with per-service VIP listeners.
async fn client(
    identity: &str,
    apps: &Apps,
    route: &Route,
    server_sa: &str,
    mesh_port: u16,
) -> (TestProxy, [SocketAddr; 3]) {
    let (mesh, vips) = client_mesh(apps, route, server_sa);
    let yaml = format!(
        "node: {{ cluster: cluster-2, namespace: sleep, serviceAccount: sleep }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, serviceVips: true, mesh: \"127.0.0.1:0\" }}
inbound: {{ meshPort: {mesh_port} }}
balance: {{ retries: {{ maxAttempts: 1 }} }}
{identity}mesh:
{mesh}"
    );
    (TestProxy::from_yaml(&yaml).await.unwrap(), vips)
}

/// Cluster-1's gateway, routing to local endpoints' mesh port.
async fn gateway(pki: &Pki, apps: &Apps, pod: IpAddr, mesh_port: u16) -> TestProxy {
    let addr = unique_vip();
    let yaml = format!(
        "mode: gateway
node: {{ cluster: cluster-1, namespace: strait-system, serviceAccount: gateway }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, gateway: \"{addr}:0\" }}
inbound: {{ meshPort: {mesh_port} }}
{}mesh:
{}",
        pki.identity("gateway", &pki.cluster1, GATEWAY_ID),
        server_mesh(apps, pod, "sleep")
    );
    TestProxy::from_yaml(&yaml).await.unwrap()
}

/// A server proxy in cluster-1 exporting to `allowed`, and a client proxy
/// in cluster-2 that reaches it directly, expecting it to run as `server_sa`.
struct Direct {
    pki: Pki,
    apps: Apps,
    server: TestProxy,
    client: TestProxy,
    vips: [SocketAddr; 3],
}

async fn direct(allowed: &str, server_sa: &str) -> Direct {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, pod) = server(&pki, &apps, allowed).await;
    let mesh_port = server.mesh.unwrap().port();
    let identity = pki.identity("client", &pki.cluster2, CLIENT_ID);
    let route = Route::Direct { pod };
    let (client, vips) = client(&identity, &apps, &route, server_sa, mesh_port).await;
    Direct {
        pki,
        apps,
        server,
        client,
        vips,
    }
}

/// HTTP/1.1, h2 with gRPC trailers, and opaque TCP through the client proxy;
/// the apps see the caller's SPIFFE ID.
async fn exercise_every_protocol(vips: &[SocketAddr; 3]) {
    let reply = get(vips[0], "/headers").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-backend"), "web");
    let seen = reply.text();
    assert!(
        seen.contains(&format!("x-forwarded-client-cert: By={SERVER_ID};Hash=")),
        "{seen}"
    );
    assert!(seen.contains(&format!(";URI={CLIENT_ID}")), "{seen}");
    assert!(
        !seen.contains("x-strait-"),
        "mesh headers are removed: {seen}"
    );

    let mut sender = h2(vips[1]).await;
    let reply = send2(
        &mut sender,
        request_h2(Method::GET, vips[1], "/headers", empty()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        String::from_utf8_lossy(&reply.body).contains(&format!(";URI={CLIENT_ID}")),
        "the h2 app sees the caller too"
    );
    sender.ready().await.unwrap();
    let rsp = sender
        .send_request(request_h2(Method::POST, vips[1], "/trailers", empty()))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("gRPC trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");

    let mut tcp = TcpStream::connect(vips[2]).await.unwrap();
    tcp.write_all(b"ping over mtls").await.unwrap();
    let mut buf = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping over mtls");
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.is_empty(),
        "half-close travels through the CONNECT stream"
    );
}

#[tokio::test]
async fn every_protocol_reaches_a_server_proxy_in_another_cluster_directly() {
    let Direct {
        pki: _pki,
        apps: _apps,
        server,
        client,
        vips,
    } = direct("sleep", "httpbin").await;

    exercise_every_protocol(&vips).await;

    // Three services on one peer: one TLS connection carries them all.
    let ok = "strait_tls_handshakes_total{direction=\"outbound\",result=\"ok\"";
    assert_eq!(client.metric(ok).await, 1.0);
    let ok_in = "strait_tls_handshakes_total{direction=\"inbound\",result=\"ok\"";
    assert_eq!(server.metric(ok_in).await, 1.0);
    let active =
        format!("strait_mesh_connections_active{{direction=\"inbound\",peer=\"{CLIENT_ID}\"}}");
    assert_eq!(server.metric(&active).await, 1.0);
}

#[tokio::test]
async fn every_protocol_reaches_a_server_proxy_through_its_clusters_gateway() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, pod) = server(&pki, &apps, "sleep").await;
    let mesh_port = server.mesh.unwrap().port();
    let gw = gateway(&pki, &apps, pod, mesh_port).await;
    let identity = pki.identity("client", &pki.cluster2, CLIENT_ID);
    let route = Route::Gateway {
        gateway: gw.gateway.unwrap(),
    };
    let (client, vips) = client(&identity, &apps, &route, "httpbin", mesh_port).await;

    exercise_every_protocol(&vips).await;

    // The gateway spliced without terminating: the server proxy saw the
    // client's handshake, and the gateway counted forwarded connections.
    assert!(
        gw.metric("strait_gateway_connections_total{result=\"forwarded\"}")
            .await
            >= 1.0
    );
    let ok_in = "strait_tls_handshakes_total{direction=\"inbound\",result=\"ok\"";
    assert!(server.metric(ok_in).await >= 1.0);
    let out = "strait_tls_handshakes_total{direction=\"outbound\",result=\"ok\"";
    assert!(client.metric(out).await >= 1.0);
}

#[tokio::test]
async fn a_websocket_upgrade_crosses_the_mesh_in_a_connect_stream() {
    let Direct {
        pki: _pki,
        apps,
        server,
        client: _client,
        vips,
    } = direct("sleep", "httpbin").await;

    let mut conn = RawConn::connect(vips[0]).await;
    conn.write(
        b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let switched = conn.read_response().await.expect("a 101");
    assert_eq!(switched.status, 101, "{}", switched.head);
    conn.write(b"frame").await;
    assert_eq!(conn.read_exact(5).await, b"frame");
    // It went through the server proxy, not around it.
    let ok_in = "strait_tls_handshakes_total{direction=\"inbound\",result=\"ok\"";
    assert_eq!(server.metric(ok_in).await, 1.0);
    assert_eq!(apps.http.requests(), 1);
}

#[tokio::test]
async fn a_client_from_another_root_is_refused() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, pod) = server(&pki, &apps, "sleep").await;
    let mesh_port = server.mesh.unwrap().port();
    // A client whose whole PKI is foreign (it trusts only its own root).
    let other_root = certs::root(DAY).unwrap();
    let other = certs::intermediate(&other_root, "cluster-2", DAY).unwrap();
    let dir = pki.path("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    // It trusts both roots, so the refusal is the server's.
    let bundle = format!("{}{}", other_root.cert_pem, pki.root.cert_pem);
    write_workload(&dir, &other, CLIENT_ID, &bundle);
    let route = Route::Direct { pod };
    let (client, vips) = client(&identity_yaml(&dir), &apps, &route, "httpbin", mesh_port).await;

    let reply = get(vips[0], "/").await.unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.header("x-strait-error").contains("mTLS"),
        "{:?}",
        reply.headers
    );
    let refused =
        "strait_tls_handshakes_total{direction=\"inbound\",result=\"error\",reason=\"unknown_ca\"}";
    strait::assert_eventually!(
        server.metric(refused).await >= 1.0,
        100,
        "server counts unknown_ca"
    );
    assert_eq!(apps.http.requests(), 0);
    drop(client);
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused_by_the_client() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, pod) = server(&pki, &apps, "sleep").await;
    let mesh_port = server.mesh.unwrap().port();
    let identity = pki.identity("client", &pki.cluster2, CLIENT_ID);
    let route = Route::Direct { pod };
    // The client expects the pods to run as `payments`; the server is `httpbin`.
    let (client, vips) = client(&identity, &apps, &route, "payments", mesh_port).await;

    let reply = get(vips[0], "/").await.unwrap();
    assert_eq!(reply.status, 502);
    assert!(
        reply.header("x-strait-error").contains(SERVER_ID),
        "names what was presented: {:?}",
        reply.headers
    );
    let mismatch = "strait_tls_handshakes_total{direction=\"outbound\",result=\"error\",reason=\"identity_mismatch\"}";
    assert_eq!(client.metric(mismatch).await, 1.0);
    assert_eq!(apps.http.requests(), 0);

    let mut tcp = TcpStream::connect(vips[2]).await.unwrap();
    let _ = tcp.write_all(b"x").await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "TCP is refused too: {read:?}"
    );
}

#[tokio::test]
async fn a_caller_the_service_export_does_not_name_gets_403_and_a_reset() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    // Only `frontend` may call; the client is `sleep`.
    let (server, pod) = server(&pki, &apps, "frontend").await;
    let mesh_port = server.mesh.unwrap().port();
    let identity = pki.identity("client", &pki.cluster2, CLIENT_ID);
    let route = Route::Direct { pod };
    let (_client, vips) = client(&identity, &apps, &route, "httpbin", mesh_port).await;

    let reply = get(vips[0], "/").await.unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains(CLIENT_ID), "{}", reply.text());

    let mut tcp = TcpStream::connect(vips[2]).await.unwrap();
    let _ = tcp.write_all(b"x").await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a refused TCP caller is reset: {read:?}"
    );

    let denied = format!(
        "strait_authz_denials_total{{service=\"web\",namespace=\"httpbin\",client=\"{CLIENT_ID}\"}}"
    );
    assert_eq!(server.metric(&denied).await, 1.0);
    let denied_tcp =
        format!("strait_authz_denials_total{{service=\"echo\",client=\"{CLIENT_ID}\"}}");
    assert_eq!(server.metric(&denied_tcp).await, 1.0);
    assert_eq!(apps.http.requests(), 0);
}

#[tokio::test]
async fn plaintext_sent_to_the_mesh_port_is_refused() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, _) = server(&pki, &apps, "sleep").await;
    let mut tcp = TcpStream::connect(server.mesh.unwrap()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(!out.starts_with(b"HTTP/"), "no HTTP answer to plaintext");
    let not_tls =
        "strait_tls_handshakes_total{direction=\"inbound\",result=\"error\",reason=\"not_tls\"}";
    strait::assert_eventually!(
        server.metric(not_tls).await == 1.0,
        100,
        "counted as not_tls"
    );
}

/// Runs a command; `None` when it is not installed (the README's `cargo
/// test` needs no extra packages), after saying so.
fn run(program: &str, args: &[&str], stdin: &[u8]) -> Option<std::process::Output> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed; skipping this part");
            return None;
        }
        Err(e) => panic!("{program}: {e}"),
    };
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    Some(child.wait_with_output().unwrap())
}

/// Splits `cert-chain.pem` into leaf and intermediate files, as `openssl
/// s_client` takes them (`-cert` reads only the first certificate).
fn split_chain(dir: &Path) -> (String, String) {
    let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
    let end = "-----END CERTIFICATE-----";
    let i = chain.find(end).unwrap() + end.len();
    let (leaf, rest) = (dir.join("leaf.pem"), dir.join("intermediates.pem"));
    std::fs::write(&leaf, &chain[..i]).unwrap();
    std::fs::write(&rest, chain[i..].trim_start()).unwrap();
    (leaf.display().to_string(), rest.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_curl_see_the_handshake_results() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, _) = server(&pki, &apps, "sleep").await;
    let mesh = server.mesh.unwrap().to_string();
    pki.identity("client", &pki.cluster2, CLIENT_ID);
    let dir = pki.path("client");
    let chain = dir.join("cert-chain.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();

    // openssl with the generated client certificate: TLS 1.3, h2, verified.
    let owned = s_client_args(&mesh, &dir);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let Some(ok) = run("openssl", &args, b"") else {
        return;
    };
    let text =
        String::from_utf8_lossy(&ok.stderr).into_owned() + &String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");

    // TLS 1.2 offered: refused with a protocol version alert.
    let mut old = args.to_vec();
    old.push("-tls1_2");
    let refused = run("openssl", &old, b"").unwrap();
    let text = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{text}");
    assert!(
        text.contains("protocol version") || text.contains("alert"),
        "{text}"
    );
    let v = "strait_tls_handshakes_total{direction=\"inbound\",result=\"error\",reason=\"protocol_version\"}";
    strait::assert_eventually!(
        server.metric(v).await == 1.0,
        100,
        "counted as protocol_version"
    );

    // curl with the client certificate reaches the app and the app sees its identity.
    let url = format!("https://{mesh}/headers");
    let curl_args = [
        "-sS",
        "--http2",
        "-k",
        "--cert",
        &chain,
        "--key",
        &key,
        "-H",
        "x-strait-service: web.httpbin",
        "-H",
        &format!("x-strait-port: {HTTP_PORT}"),
        &url,
    ];
    if let Some(out) = run("curl", &curl_args, b"") {
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(body.contains(&format!("URI={CLIENT_ID}")), "{body}");
        // A stream that names no service, or one this proxy does not know.
        let port = format!("x-strait-port: {HTTP_PORT}");
        for (service_header, code) in [
            (None, "400"),
            (Some("x-strait-service: webhttpbin"), "400"),
            (Some("x-strait-service: nope.httpbin"), "404"),
        ] {
            let mut args = vec![
                "-sS",
                "--http2",
                "-k",
                "--cert",
                &chain,
                "--key",
                &key,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &port,
            ];
            if let Some(h) = service_header {
                args.extend(["-H", h]);
            }
            args.push(&url);
            let out = run("curl", &args, b"").unwrap();
            let got = String::from_utf8_lossy(&out.stdout);
            assert_eq!(got, code, "{service_header:?}");
        }
        // Without a client certificate the handshake fails.
        let bare = run("curl", &["-sS", "--http2", "-k", &url], b"").unwrap();
        assert!(!bare.status.success(), "no client certificate, no answer");
        let nocert = "strait_tls_handshakes_total{direction=\"inbound\",result=\"error\",reason=\"no_client_cert\"}";
        strait::assert_eventually!(
            server.metric(nocert).await >= 1.0,
            100,
            "counted as no_client_cert"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let (server, _) = server(&pki, &apps, "sleep").await;
    let now = std::time::SystemTime::now();
    let expired = certs::workload_with_validity(
        &pki.cluster2,
        &pki.cluster2.cert_pem,
        CLIENT_ID,
        now - 2 * DAY,
        now - DAY,
    )
    .unwrap();
    let dir = pki.path("expired");
    write_files(&dir, &expired, &pki.root.cert_pem);
    let mesh = server.mesh.unwrap().to_string();
    let owned = s_client_args(&mesh, &dir);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    // TLS 1.3: openssl finishes its side before the server has judged its
    // certificate; the server's verdict is the alert and the metric.
    let Some(out) = run("openssl", &args, b"") else {
        return;
    };
    assert!(!String::from_utf8_lossy(&out.stdout).contains("HTTP/"));
    let v =
        "strait_tls_handshakes_total{direction=\"inbound\",result=\"error\",reason=\"expired\"}";
    strait::assert_eventually!(server.metric(v).await == 1.0, 100, "counted as expired");
}

#[tokio::test]
async fn ready_fails_once_the_certificate_has_expired() {
    let pki = Pki::new();
    let now = std::time::SystemTime::now();
    let soon = certs::workload_with_validity(
        &pki.cluster1,
        &pki.cluster1.cert_pem,
        SERVER_ID,
        now - DAY,
        now + Duration::from_secs(2),
    )
    .unwrap();
    let dir = pki.path("short");
    write_files(&dir, &soon, &pki.root.cert_pem);
    let yaml = format!(
        "listeners: {{ admin: \"127.0.0.1:0\", outbound: null, mesh: \"127.0.0.1:0\" }}\n{}mesh: []\n",
        identity_yaml(&dir)
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    assert_eq!(get(proxy.admin, "/ready").await.unwrap().status, 200);
    let dump = get(proxy.admin, "/config_dump").await.unwrap().text();
    assert!(
        dump.contains(&format!("\"spiffeId\": \"{SERVER_ID}\"")),
        "{dump}"
    );
    let expiry = proxy.metric("strait_identity_cert_expiry_seconds").await;
    assert!((0.0..=3.0).contains(&expiry), "seconds left: {expiry}");
    // Wall-clock expiry: nothing to await but the clock; bounded at 10 s.
    strait::assert_eventually!(
        get(proxy.admin, "/ready").await.unwrap().status == 503,
        500,
        "/ready fails after expiry"
    );
    let reply = get(proxy.admin, "/ready").await.unwrap();
    assert!(reply.text().contains("expired"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_uses_one_tls_connection_per_peer() {
    let Direct {
        pki: _pki,
        apps,
        server,
        client,
        vips,
    } = direct("sleep", "httpbin").await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let vip = vips[0];
            tokio::spawn(async move {
                for _ in 0..50 {
                    assert_eq!(get(vip, "/").await.unwrap().status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(apps.http.requests(), 800);
    let ok = "strait_tls_handshakes_total{direction=\"outbound\",result=\"ok\"";
    assert_eq!(
        client.metric(ok).await,
        1.0,
        "800 requests, 16 clients, one handshake"
    );
    let ok_in = "strait_tls_handshakes_total{direction=\"inbound\",result=\"ok\"";
    assert_eq!(server.metric(ok_in).await, 1.0);
}

fn xfcc_hash(reply_text: &str) -> String {
    let line = reply_text
        .lines()
        .find(|l| l.starts_with("x-forwarded-client-cert"))
        .unwrap_or_default();
    line.split(';')
        .find_map(|p| p.strip_prefix("Hash="))
        .unwrap_or_default()
        .to_owned()
}

fn leaf_sha256(chain_pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    ring::digest::digest(&ring::digest::SHA256, &leaf)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_certificates_under_load_fails_no_request() {
    let Direct {
        pki,
        apps: _apps,
        server,
        client,
        vips,
    } = direct("sleep", "httpbin").await;
    let before = get(vips[0], "/headers").await.unwrap();
    let old_hash = xfcc_hash(&before.text());
    assert!(!old_hash.is_empty());

    // Steady load from four clients, every outcome counted.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, vip) = (stop.clone(), ok.clone(), failed.clone(), vips[0]);
            tokio::spawn(async move {
                // Bounded: stopped long before this many.
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(vip, "/").await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    strait::assert_eventually!(ok.load(Ordering::Relaxed) > 50, 500, "load is flowing");

    // Rotate both sides' certificates (new keys) mid-run.
    let client_dir = pki.path("client");
    let new_client = write_workload(&client_dir, &pki.cluster2, CLIENT_ID, &pki.root.cert_pem);
    write_workload(
        &pki.path("server"),
        &pki.cluster1,
        SERVER_ID,
        &pki.root.cert_pem,
    );
    let applied = "strait_identity_reloads_total{result=\"applied\"}";
    strait::assert_eventually!(client.metric(applied).await >= 1.0, 250, "client reloaded");
    strait::assert_eventually!(server.metric(applied).await >= 1.0, 250, "server reloaded");
    let at_rotation = ok.load(Ordering::Relaxed);
    strait::assert_eventually!(
        ok.load(Ordering::Relaxed) > at_rotation + 100,
        500,
        "load keeps flowing after the rotation"
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across the rotation"
    );

    // New handshakes present the new certificate.
    let after = get(vips[0], "/headers").await.unwrap();
    assert_eq!(xfcc_hash(&after.text()), leaf_sha256(&new_client.chain_pem));
    assert_ne!(xfcc_hash(&after.text()), old_hash);
    let _ = Bytes::new();
}
