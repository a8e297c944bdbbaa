//! `strait demo`: a self-contained mesh on loopback, no root needed.
//!
//! Starts three backends of `httpbin.demo` in the local cluster, one backend
//! of `payments.demo` that lives only in another cluster, and a Strait proxy
//! built by the same wiring as production, with per-service VIP listeners on
//! 127.1.0.0/16 instead of iptables. Then it sends requests through the proxy
//! and prints where each one went, and what the metrics say.

pub mod backend;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{parse_str, MapOverrides};
use crate::App;

const HTTPBIN_VIP: &str = "127.1.0.1";
const PAYMENTS_VIP: &str = "127.1.0.2";
const PORT: u16 = 8080;

/// The demo's mesh state, around the backends' real addresses.
fn config(httpbin: &[SocketAddr], payments: SocketAddr) -> String {
    // All demo backends share 127.0.0.1, so each gets its own slice (one port each).
    let slices: String = httpbin
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                r#"  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: httpbin-{i}
      namespace: demo
      labels: {{ kubernetes.io/service-name: httpbin }}
    addressType: IPv4
    endpoints:
      - addresses: ["{ip}"]
    ports: [{{ name: http, port: {port} }}]
"#,
                ip = a.ip(),
                port = a.port()
            )
        })
        .collect();
    format!(
        r#"node: {{ cluster: cluster-1 }}
listeners:
  admin: 127.0.0.1:0
  outbound: null
  serviceVips: true
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {{ name: httpbin, namespace: demo }}
    spec:
      clusterIP: {HTTPBIN_VIP}
      ports: [{{ name: http, port: {PORT}, appProtocol: http }}]
{slices}  - apiVersion: v1
    kind: Service
    metadata: {{ name: payments, namespace: demo }}
    spec:
      clusterIP: {PAYMENTS_VIP}
      ports: [{{ name: http, port: {PORT} }}]
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: payments-cluster-3
      namespace: demo
      labels:
        kubernetes.io/service-name: payments
        multicluster.kubernetes.io/source-cluster: cluster-3
    addressType: IPv4
    endpoints:
      - addresses: ["{pip}"]
    ports: [{{ name: http, port: {pport} }}]
"#,
        pip = payments.ip(),
        pport = payments.port(),
    )
}

/// Runs the demo, writing its report to `out`.
pub async fn run(out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut httpbin = Vec::new();
    for name in ["httpbin-a", "httpbin-b", "httpbin-c"] {
        httpbin.push(backend::start(name, any, false).await?);
    }
    let payments = backend::start("payments-cluster-3", any, false).await?;
    let addrs: Vec<SocketAddr> = httpbin.iter().map(|b| b.addr).collect();
    let text = config(&addrs, payments.addr);
    let loaded =
        parse_str(&text, Path::new("."), &MapOverrides::default()).context("demo config")?;
    let app = App::new(loaded).bind().await.with_context(|| {
        format!("cannot start the proxy (is another demo using {HTTPBIN_VIP}:{PORT}?)")
    })?;
    let admin = app.admin_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));

    writeln!(
        out,
        "Strait demo: one proxy, cluster-1, services on loopback VIPs\n"
    )?;
    writeln!(
        out,
        "httpbin.demo ({HTTPBIN_VIP}:{PORT}) has 3 endpoints in cluster-1: {}",
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let vip: SocketAddr = format!("{HTTPBIN_VIP}:{PORT}").parse()?;
    for i in 1..=6 {
        let (status, headers, body) = get(vip, "/").await?;
        let backend = headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        writeln!(
            out,
            "  request {i}: {status} from {backend} ({} bytes)",
            body.len()
        )?;
    }

    writeln!(
        out,
        "\npayments.demo ({PAYMENTS_VIP}:{PORT}) runs only in cluster-3; the default policy is Locality:"
    )?;
    let pvip: SocketAddr = format!("{PAYMENTS_VIP}:{PORT}").parse()?;
    let (status, headers, _) = get(pvip, "/").await?;
    let why = headers
        .get("x-strait-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    writeln!(out, "  {status}, x-strait-error: {why}")?;

    let (_, _, metrics) = get(admin, "/metrics").await?;
    writeln!(out, "\nMetrics (http://{admin}/metrics):")?;
    for line in String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|l| l.starts_with("strait_requests_total{"))
    {
        writeln!(out, "  {line}")?;
    }

    let _ = stop_tx.send(());
    running.await.context("proxy task")??;
    writeln!(
        out,
        "\nDone. `strait proxy --config config/standalone.yaml` runs the same proxy from a file."
    )?;
    Ok(())
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}
