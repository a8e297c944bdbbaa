//! Test support shared by unit tests, integration tests and benches: unique
//! loopback VIPs, an in-process proxy started from YAML, HTTP helpers, and a
//! bounded `assert_eventually!`. Compiled only for tests and the
//! `test-util` feature.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::reload::ReloadStatus;
use crate::config::{load_file, parse_str, MapOverrides};
pub use crate::demo::backend::{start as start_backend, Backend};
use crate::discovery::Store;
use crate::App;

/// A loopback address no other test in any process uses at the same time:
/// 127.A.B.C with A.B derived from the process id (two live processes
/// collide only if their ids are equal modulo 25,600) and C from a counter
/// (up to 255 addresses per process; more wrap around).
pub fn unique_vip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 255 + 1;
    let pid = std::process::id();
    let a = 100 + (pid % 100) as u8;
    let b = ((pid / 100) % 256) as u8;
    IpAddr::V4(Ipv4Addr::new(127, a, b, n as u8))
}

/// A proxy running in-process; stops (draining) on [`TestProxy::shutdown`].
pub struct TestProxy {
    pub admin: SocketAddr,
    pub outbound: Option<SocketAddr>,
    /// The DNS shim (UDP and TCP), when `dns.enabled`.
    pub dns: Option<SocketAddr>,
    /// The mesh mTLS listener, when an identity is configured.
    pub mesh: Option<SocketAddr>,
    /// The plaintext inbound capture, when `listeners.inbound` is set.
    pub inbound: Option<SocketAddr>,
    /// The gateway listener, in gateway mode.
    pub gateway: Option<SocketAddr>,
    pub store: Arc<Store>,
    pub reloads: Option<watch::Receiver<ReloadStatus>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestProxy {
    /// Starts from YAML text (no file, so no reload).
    pub async fn from_yaml(yaml: &str) -> anyhow::Result<Self> {
        let loaded = parse_str(yaml, Path::new("."), &MapOverrides::default())?;
        Self::start(App::new(loaded)).await
    }

    /// Starts from a file, which is then watched for changes.
    pub async fn from_file(path: &Path) -> anyhow::Result<Self> {
        let loaded = load_file(path, &MapOverrides::default())?;
        Self::start(App::new(loaded).with_overrides(Arc::new(MapOverrides::default()))).await
    }

    async fn start(app: App) -> anyhow::Result<Self> {
        let bound = app.bind().await?;
        let (tx, rx) = oneshot::channel::<()>();
        let admin = bound.admin_addr();
        let outbound = bound.outbound_addr();
        let dns = bound.dns_addr();
        let mesh = bound.mesh_addr();
        let inbound = bound.inbound_addr();
        let gateway = bound.gateway_addr();
        let store = bound.store();
        let reloads = bound.reloads();
        let task = tokio::spawn(bound.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            admin,
            outbound,
            dns,
            mesh,
            inbound,
            gateway,
            store,
            reloads,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    /// The admin server's `/metrics` page.
    pub async fn metrics(&self) -> String {
        match get(self.admin, "/metrics").await {
            Ok(r) => String::from_utf8_lossy(&r.body).into_owned(),
            Err(e) => panic!("metrics: {e}"),
        }
    }

    /// The value of one sample line of `/metrics` (name with labels, as printed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of the sample whose name and labels contain every part of `series`
/// (`name{a="b"}` matches a sample carrying `a="b"` among other labels); summed.
pub fn metric_value(page: &str, series: &str) -> f64 {
    let (name, labels) = match series.split_once('{') {
        Some((n, l)) => (n, l.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, rest) = match head.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (head, ""),
            };
            (n == name && wanted.iter().all(|w| rest.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One HTTP/1.1 GET on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    request(addr, http::Method::GET, path, Bytes::new()).await
}

/// One HTTP/1.1 request on a new connection.
pub async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Reply> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Writes `text` to `path` atomically (write a sibling, then rename), as
/// editors and Kubernetes do.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Retries `$cond` (an async expression yielding bool) every 20 ms, up to
/// `$tries` times; panics with the number of tries made.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $tries:expr, $($msg:tt)+) => {{
        let mut tries = 0u32;
        loop {
            tries += 1;
            if $cond {
                break;
            }
            if tries >= $tries {
                panic!("not true after {} tries: {}", tries, format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Mesh resources (a `Service` and one `EndpointSlice` per endpoint) for one
/// service port, as YAML list items to put under `mesh:`.
pub fn service_yaml(
    name: &str,
    namespace: &str,
    vip: IpAddr,
    port: u16,
    app_protocol: Option<&str>,
    endpoints: &[SocketAddr],
) -> String {
    let hint = app_protocol
        .map(|p| format!(", appProtocol: {p}"))
        .unwrap_or_default();
    let mut out = format!(
        "  - apiVersion: v1\n    kind: Service\n    metadata: {{ name: {name}, namespace: {namespace} }}\n    spec: {{ clusterIP: \"{vip}\", ports: [{{ name: p, port: {port}{hint} }}] }}\n"
    );
    for (i, e) in endpoints.iter().enumerate() {
        out.push_str(&format!(
            "  - apiVersion: discovery.k8s.io/v1\n    kind: EndpointSlice\n    metadata: {{ name: {name}-{i}, namespace: {namespace}, labels: {{ kubernetes.io/service-name: {name} }} }}\n    addressType: {}\n    endpoints: [{{ addresses: [\"{}\"] }}]\n    ports: [{{ name: p, port: {} }}]\n",
            if e.is_ipv4() { "IPv4" } else { "IPv6" },
            e.ip(),
            e.port()
        ));
    }
    out
}

/// A whole proxy config for tests: admin on an ephemeral port, no
/// transparent listener, per-service VIP listeners; `settings` is extra
/// top-level YAML (may be empty) and `mesh` the list items.
pub fn proxy_yaml(settings: &str, mesh: &str) -> String {
    format!(
        "listeners: {{ admin: \"127.0.0.1:0\", outbound: null, serviceVips: true }}\n{settings}\nmesh:\n{mesh}"
    )
}

/// Thin wrappers through which `benches/hot_path.rs` reaches crate-private
/// pieces of the request path. They add no logic: each calls exactly what the
/// proxy calls, so a bench measures production code. (Snapshot lookup,
/// `balance::Selector` and `discovery::translate` are public already.)
pub mod bench {
    use http::HeaderMap;

    use crate::balance::{NoEndpoint, Pick};
    use crate::discovery::Target;

    /// `proxy::detect::classify`: the protocol of a connection's first bytes
    /// as its metric label (`http1`, `http2`, `opaque`); `None` while more
    /// bytes are needed.
    pub fn classify(prefix: &[u8]) -> Option<&'static str> {
        crate::proxy::detect::classify(prefix).map(|d| d.as_str())
    }

    /// `proxy::http::headers::strip_hop_by_hop`, run on every request and
    /// every response.
    pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
        crate::proxy::http::headers::strip_hop_by_hop(headers, upgrade)
    }

    /// `proxy::http::headers::is_upgrade`, run on every HTTP/1 request.
    pub fn is_upgrade(headers: &HeaderMap) -> bool {
        crate::proxy::http::headers::is_upgrade(headers)
    }

    /// The endpoint pick a request makes once its target is known
    /// (`proxy/http/logical.rs`): the port's selector under its policy.
    pub fn pick(target: &Target) -> Result<Pick, NoEndpoint> {
        target.port().selector.select(&Default::default())
    }
}
