//! `strait demo`: a three-cluster mesh on loopback, no root needed.
//!
//! Backends stand for the pods of three clusters (all on 127.0.0.1, told
//! apart by EndpointSlices labelled with their source cluster). One Strait
//! proxy, the sidecar of a client pod in cluster-1, is built by the same
//! wiring as production, with per-service VIP listeners on 127.1.0.0/16
//! instead of iptables. The demo sends requests through it and prints where
//! they went under each traffic policy: ActiveActive by weight, FailOver
//! when cluster-1's replicas die and fail-back when they return, and
//! Locality's refusal to leave the cluster. Last, mesh mTLS: a second
//! client sidecar and the sidecar of a pod in cluster-3, with certificates
//! made on the spot (one root, an intermediate per cluster), show the
//! caller's SPIFFE ID arriving at the app and a ServiceExport refusing a
//! caller it does not name.

pub mod backend;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{parse_str, MapOverrides};
use crate::App;

const PORT: u16 = 8080;
const HTTPBIN: &str = "127.1.0.1";
const PAYMENTS: &str = "127.1.0.2";
const INVENTORY: &str = "127.1.0.3";
const LEDGER: &str = "127.1.0.4";
const AUDIT: &str = "127.1.0.5";
/// The cluster-3 pod whose sidecar serves mesh mTLS.
const LEDGER_POD: &str = "127.1.3.1";
const CALLER_ID: &str = "spiffe://cluster.local/ns/demo/sa/frontend";
const LEDGER_ID: &str = "spiffe://cluster.local/ns/demo/sa/ledger";
const HOLD_DOWN: Duration = Duration::from_secs(2);

fn slice(service: &str, i: usize, cluster: &str, addr: SocketAddr) -> String {
    let source = if cluster == "cluster-1" {
        String::new()
    } else {
        format!(", multicluster.kubernetes.io/source-cluster: {cluster}")
    };
    format!(
        "  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: {service}-{i}
      namespace: demo
      labels: {{ kubernetes.io/service-name: {service}{source} }}
    addressType: IPv4
    endpoints: [{{ addresses: [\"{ip}\"] }}]
    ports: [{{ name: http, port: {port} }}]
",
        ip = addr.ip(),
        port = addr.port()
    )
}

fn service(name: &str, vip: &str, policy: Option<&str>) -> String {
    let mut out = format!(
        "  - apiVersion: v1
    kind: Service
    metadata: {{ name: {name}, namespace: demo }}
    spec: {{ clusterIP: {vip}, ports: [{{ name: http, port: {PORT}, appProtocol: http }}] }}
"
    );
    if let Some(spec) = policy {
        out.push_str(&format!(
            "  - apiVersion: flomesh.io/v1alpha1
    kind: GlobalTrafficPolicy
    metadata: {{ name: {name}, namespace: demo }}
    spec: {spec}
"
        ));
    }
    out
}

/// Runs the demo, writing its report to `out`.
pub async fn run(out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut backends = BTreeMap::new();
    for name in [
        "httpbin@cluster-1/a",
        "httpbin@cluster-1/b",
        "httpbin@cluster-2",
        "httpbin@cluster-3",
        "payments@cluster-1",
        "payments@cluster-3",
        "inventory@cluster-2",
    ] {
        backends.insert(name, backend::start(name, any, false).await?);
    }
    let addr = |name: &str| backends[name].addr;

    let mut mesh = service(
        "httpbin",
        HTTPBIN,
        Some("{ lbType: ActiveActive, targets: [{ clusterKey: default/default/default/cluster-2, weight: 100 }, { clusterKey: default/default/default/cluster-3, weight: 200 }] }"),
    );
    // Round robin within a cluster makes the local pods' shares visible; the
    // default, p2c over latency, would favour whichever pod answers faster.
    mesh = mesh.replacen(
        "metadata: { name: httpbin, namespace: demo }",
        "metadata: { name: httpbin, namespace: demo, annotations: { strait.io/lb-algorithm: round-robin } }",
        1,
    );
    mesh += &slice("httpbin", 0, "cluster-1", addr("httpbin@cluster-1/a"));
    mesh += &slice("httpbin", 1, "cluster-1", addr("httpbin@cluster-1/b"));
    mesh += &slice("httpbin", 2, "cluster-2", addr("httpbin@cluster-2"));
    mesh += &slice("httpbin", 3, "cluster-3", addr("httpbin@cluster-3"));
    mesh += &service(
        "payments",
        PAYMENTS,
        Some("{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-3 }] }"),
    );
    mesh += &slice("payments", 0, "cluster-1", addr("payments@cluster-1"));
    mesh += &slice("payments", 1, "cluster-3", addr("payments@cluster-3"));
    mesh += &service("inventory", INVENTORY, None);
    mesh += &slice("inventory", 0, "cluster-2", addr("inventory@cluster-2"));
    let text = format!(
        "node: {{ cluster: cluster-1 }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, serviceVips: true }}
balance: {{ failBackHoldDown: {}s, probeInterval: 200ms, probeTimeout: 100ms }}
mesh:
{mesh}",
        HOLD_DOWN.as_secs()
    );
    let loaded =
        parse_str(&text, Path::new("."), &MapOverrides::default()).context("demo config")?;
    let app = App::new(loaded).bind().await.with_context(|| {
        format!("cannot start the proxy (is another demo using {HTTPBIN}:{PORT}?)")
    })?;
    let admin = app.admin_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));

    writeln!(
        out,
        "Strait demo: the sidecar of a client pod in cluster-1; services in clusters 1, 2 and 3\n"
    )?;

    // ActiveActive by weight.
    writeln!(out, "1. httpbin.demo ({HTTPBIN}:{PORT}), ActiveActive: cluster-1 (weight 100, local), cluster-2 (100), cluster-3 (200); round robin within a cluster")?;
    let mut client = Client::new(format!("{HTTPBIN}:{PORT}").parse()?);
    let tally = client.tally(1000).await;
    print_tally(out, &tally, 1000)?;

    // FailOver and fail-back.
    writeln!(
        out,
        "\n2. payments.demo ({PAYMENTS}:{PORT}), FailOver: cluster-1 first, then cluster-3"
    )?;
    let mut client = Client::new(format!("{PAYMENTS}:{PORT}").parse()?);
    print_tally(out, &client.tally(200).await, 200)?;
    writeln!(out, "   cluster-1's payments pod dies ...")?;
    let local = addr("payments@cluster-1");
    if let Some(b) = backends.get("payments@cluster-1") {
        b.stop();
    }
    print_tally(out, &client.tally(200).await, 200)?;
    writeln!(
        out,
        "   ... and comes back; Strait waits for the {}s hold-down before failing back:",
        HOLD_DOWN.as_secs()
    )?;
    let revived = backend::start("payments@cluster-1", local, false).await?;
    print_tally(out, &client.tally(100).await, 100)?;
    tokio::time::sleep(HOLD_DOWN + Duration::from_millis(600)).await;
    writeln!(out, "   after the hold-down:")?;
    print_tally(out, &client.tally(100).await, 100)?;
    drop(revived);

    // Locality.
    writeln!(out, "\n3. inventory.demo ({INVENTORY}:{PORT}) runs only in cluster-2; no policy means Locality:")?;
    let (status, why) = Client::new(format!("{INVENTORY}:{PORT}").parse()?)
        .once()
        .await;
    writeln!(out, "   {status}, x-strait-error: {why}")?;

    mtls(out).await?;

    let page = Client::new(admin).get_text("/metrics").await;
    writeln!(out, "\nMetrics (http://{admin}/metrics), a few of them:")?;
    for line in page.lines().filter(|l| {
        (l.starts_with("strait_requests_total{") && l.contains("code=\"200\""))
            || l.starts_with("strait_balance_failovers_total{")
            || l.starts_with("strait_balance_failbacks_total{")
            || l.starts_with("strait_retries_total{")
            || l.starts_with("strait_endpoint_ejections_total{")
    }) {
        writeln!(out, "   {line}")?;
    }

    let _ = stop_tx.send(());
    running.await.context("proxy task")??;
    writeln!(
        out,
        "\nDone. `strait proxy --config config/standalone.yaml` runs the same proxy from a file."
    )?;
    Ok(())
}

/// Section 4: two sidecars talking mesh mTLS.
async fn mtls(out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    use crate::certs;
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let dir = std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    let root = certs::root(DAY)?;
    let write = |name: &str, cluster: &str, id: &str| -> anyhow::Result<String> {
        let ca = certs::intermediate(&root, cluster, DAY)?;
        let w = certs::workload(&ca, &ca.cert_pem, id, DAY)?;
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("cert-chain.pem"), &w.chain_pem)?;
        std::fs::write(d.join("key.pem"), &w.key_pem)?;
        std::fs::write(d.join("root-cert.pem"), &root.cert_pem)?;
        let d = d.display();
        Ok(format!("identity: {{ certChain: \"{d}/cert-chain.pem\", privateKey: \"{d}/key.pem\", trustBundle: \"{d}/root-cert.pem\" }}\n"))
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let ledger = backend::start("ledger@cluster-3", any, false).await?;
    let audit = backend::start("audit@cluster-3", any, false).await?;
    let port = |b: &backend::Backend| b.addr.port();

    // The cluster-3 pod's sidecar: both services run there; ledger may be
    // called by anyone in the mesh, audit only by the `auditor` account.
    let mut server_mesh = String::new();
    for (name, b, allowed) in [("ledger", &ledger, "*"), ("audit", &audit, "auditor")] {
        server_mesh += &service(name, "None", None);
        server_mesh += &slice(
            name,
            0,
            "cluster-1",
            SocketAddr::new(LEDGER_POD.parse()?, port(b)),
        );
        server_mesh += &format!(
            "  - apiVersion: multicluster.flomesh.io/v1alpha1
    kind: ServiceExport
    metadata: {{ name: {name}, namespace: demo }}
    spec: {{ serviceAccountName: \"{allowed}\" }}
"
        );
    }
    let server = format!(
        "node: {{ cluster: cluster-3, namespace: demo, serviceAccount: ledger }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, mesh: \"{LEDGER_POD}:0\" }}
{}mesh:
{server_mesh}",
        write("ledger", "cluster-3", LEDGER_ID)?
    );
    let server = App::new(parse_str(
        &server,
        Path::new("."),
        &MapOverrides::default(),
    )?)
    .bind()
    .await
    .context("the cluster-3 sidecar")?;
    let mesh_port = server.mesh_addr().context("mesh listener")?.port();
    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async {
        let _ = server_stopped.await;
    }));

    // A second client sidecar in cluster-1, now with an identity.
    let mut client_mesh = String::new();
    for (name, vip, b) in [("ledger", LEDGER, &ledger), ("audit", AUDIT, &audit)] {
        client_mesh += &service(name, vip, Some("{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-3 }] }"));
        client_mesh += &slice(
            name,
            0,
            "cluster-3",
            SocketAddr::new(LEDGER_POD.parse()?, port(b)),
        );
    }
    let client = format!(
        "node: {{ cluster: cluster-1, namespace: demo, serviceAccount: frontend }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: null, serviceVips: true, mesh: \"127.0.0.1:0\" }}
inbound: {{ meshPort: {mesh_port} }}
{}mesh:
{client_mesh}",
        write("frontend", "cluster-1", CALLER_ID)?
    );
    let client = App::new(parse_str(
        &client,
        Path::new("."),
        &MapOverrides::default(),
    )?)
    .bind()
    .await
    .context("the mTLS client sidecar")?;
    let client_admin = client.admin_addr();
    let (client_stop, client_stopped) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(client.run(async {
        let _ = client_stopped.await;
    }));

    writeln!(
        out,
        "\n4. Mesh mTLS: ledger.demo ({LEDGER}:{PORT}) runs only in cluster-3, behind its sidecar ({LEDGER_POD}:{mesh_port});\n   certificates: one root, an intermediate per cluster; the client sidecar is {CALLER_ID}"
    )?;
    let mut caller = Client::new(format!("{LEDGER}:{PORT}").parse()?);
    match caller.send("/headers").await {
        Ok((status, headers, body)) => {
            let backend = headers
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            let body = String::from_utf8_lossy(&body);
            let xfcc = body
                .lines()
                .find(|l| l.starts_with("x-forwarded-client-cert"))
                .unwrap_or("(no x-forwarded-client-cert)");
            writeln!(out, "   {status} from {backend}; the app saw\n   {xfcc}")?;
        }
        Err(e) => writeln!(out, "   failed: {e}")?,
    }
    let (status, why) = Client::new(format!("{AUDIT}:{PORT}").parse()?).once().await;
    writeln!(
        out,
        "   audit.demo is exported to the `auditor` service account only: {status}, x-strait-error: {why}"
    )?;
    let page = Client::new(client_admin).get_text("/metrics").await;
    for line in page.lines().filter(|l| {
        l.starts_with("strait_tls_handshakes_total{")
            || l.starts_with("strait_mesh_connections_active{")
    }) {
        writeln!(out, "   {line}")?;
    }

    let _ = client_stop.send(());
    client.await.context("mTLS client task")??;
    let _ = server_stop.send(());
    server.await.context("cluster-3 sidecar task")??;
    Ok(())
}

/// Removes the demo's certificate directory when dropped.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn print_tally(
    out: &mut (dyn Write + Send),
    tally: &BTreeMap<String, usize>,
    n: usize,
) -> std::io::Result<()> {
    let parts: Vec<String> = tally
        .iter()
        .map(|(k, v)| format!("{k} {:.0}%", 100.0 * *v as f64 / n as f64))
        .collect();
    writeln!(out, "   {n} requests: {}", parts.join(", "))
}

/// A keep-alive HTTP/1.1 client that reconnects when its connection closes.
struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn send(&mut self, path: &str) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().context("connected")?;
        sender.ready().await?;
        let req = http::Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::new())?;
        let rsp = sender.send_request(req).await?;
        let status = rsp.status().as_u16();
        let headers = rsp.headers().clone();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    /// `n` GETs; answers counted by backend, failures as `failed`.
    async fn tally(&mut self, n: usize) -> BTreeMap<String, usize> {
        let mut tally = BTreeMap::new();
        for _ in 0..n {
            let key = match self.send("/").await {
                Ok((200, headers, _)) => headers
                    .get("x-backend")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned(),
                Ok((status, _, _)) => format!("failed ({status})"),
                Err(_) => {
                    self.sender = None;
                    "failed (connection)".to_owned()
                }
            };
            *tally.entry(key).or_default() += 1;
        }
        tally
    }

    async fn once(&mut self) -> (u16, String) {
        match self.send("/").await {
            Ok((status, headers, _)) => (
                status,
                headers
                    .get("x-strait-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    async fn get_text(&mut self, path: &str) -> String {
        match self.send(path).await {
            Ok((_, _, body)) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => format!("({e})"),
        }
    }
}
