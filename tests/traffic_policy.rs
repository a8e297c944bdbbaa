//! Cross-cluster traffic policies end to end on loopback: clusters are
//! groups of real backends, told apart by EndpointSlices labelled with their
//! source cluster or by ErieCanal-style ServiceImport gateway targets.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

mod support {
    pub mod killable;
    #[allow(dead_code)] // shared with other tests; not every helper is used here
    pub mod tcp;
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use strait::test_util::{get, proxy_yaml, request, unique_vip, TestProxy};
use support::killable::Killable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const PORT: u16 = 8080;

/// A Service in namespace `shop` with one port, plus one EndpointSlice per
/// (cluster, endpoint); cluster-1 is local.
fn mesh(
    vip: std::net::IpAddr,
    hint: &str,
    endpoints: &[(&str, SocketAddr)],
    policy: &str,
) -> String {
    let mut out = format!(
        "  - apiVersion: v1\n    kind: Service\n    metadata: {{ name: web, namespace: shop }}\n    spec: {{ clusterIP: \"{vip}\", ports: [{{ name: p, port: {PORT}, appProtocol: {hint} }}] }}\n"
    );
    for (i, (cluster, addr)) in endpoints.iter().enumerate() {
        let source = if *cluster == "cluster-1" {
            String::new()
        } else {
            format!(", multicluster.kubernetes.io/source-cluster: {cluster}")
        };
        out.push_str(&format!(
            "  - apiVersion: discovery.k8s.io/v1\n    kind: EndpointSlice\n    metadata: {{ name: web-{i}, namespace: shop, labels: {{ kubernetes.io/service-name: web{source} }} }}\n    addressType: IPv4\n    endpoints: [{{ addresses: [\"{}\"] }}]\n    ports: [{{ name: p, port: {} }}]\n",
            addr.ip(),
            addr.port()
        ));
    }
    if !policy.is_empty() {
        out.push_str(&format!(
            "  - apiVersion: flomesh.io/v1alpha1\n    kind: GlobalTrafficPolicy\n    metadata: {{ name: web, namespace: shop }}\n    spec: {policy}\n"
        ));
    }
    out
}

const FAST_HEALTH: &str =
    "balance: { failBackHoldDown: 1s, probeInterval: 100ms, probeTimeout: 100ms }";

/// Steady GETs from a few keep-alive clients until stopped; every outcome recorded.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(target: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
                tokio::spawn(async move {
                    let s = TcpStream::connect(target).await.unwrap();
                    let (mut tx, conn) =
                        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(s))
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    // Bounded: the test stops it long before this many requests.
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let outcome = async {
                            tx.ready().await.ok()?;
                            let req = http::Request::get("/")
                                .header("host", "web")
                                .body(Empty::new())
                                .ok()?;
                            let rsp = tx.send_request(req).await.ok()?;
                            let status = rsp.status().as_u16();
                            let backend = rsp
                                .headers()
                                .get("x-backend")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            rsp.into_body().collect().await.ok()?;
                            Some((status, backend))
                        }
                        .await;
                        let (status, backend) = outcome.unwrap_or((0, String::new()));
                        log.lock().unwrap().push((Instant::now(), status, backend));
                        if status == 0 {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self { stop, log, tasks }
    }

    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits until `n` more requests have completed.
    async fn advance(&self, n: usize) {
        let target = self.count() + n;
        strait::assert_eventually!(self.count() >= target, 1000, "{n} more requests");
    }

    async fn finish(self) -> Vec<(Instant, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_spreads_requests_by_cluster_weight() {
    let (a, b, c) = (
        Killable::start("c1").await,
        Killable::start("c2").await,
        Killable::start("c3").await,
    );
    let vip = unique_vip();
    let policy = "{ lbType: ActiveActive, targets: [{ clusterKey: default/default/default/cluster-2, weight: 100 }, { clusterKey: default/default/default/cluster-3, weight: 200 }] }";
    let yaml = proxy_yaml(
        "",
        &mesh(
            vip,
            "http",
            &[
                ("cluster-1", a.addr),
                ("cluster-2", b.addr),
                ("cluster-3", c.addr),
            ],
            policy,
        ),
    );
    let _proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let load = Load::start(SocketAddr::new(vip, PORT), 8);
    load.advance(10_000).await;
    let log = load.finish().await;
    assert!(
        log.iter().all(|(_, s, _)| *s == 200),
        "all requests succeed"
    );
    let mut by: HashMap<&str, usize> = HashMap::new();
    for (_, _, backend) in &log {
        *by.entry(backend.as_str()).or_default() += 1;
    }
    let total = log.len() as f64;
    for (name, want) in [("c1", 25.0), ("c2", 25.0), ("c3", 50.0)] {
        let got = 100.0 * by.get(name).copied().unwrap_or(0) as f64 / total;
        assert!(
            (got - want).abs() <= 3.0,
            "{name}: {got:.1}% of {total}, want {want}% ± 3"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_to_the_remote_cluster_without_failures_and_fails_back_after_the_hold_down()
{
    let local = Killable::start("local").await;
    let remote = Killable::start("remote").await;
    let vip = unique_vip();
    let policy =
        "{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-3 }] }";
    let yaml = proxy_yaml(
        FAST_HEALTH,
        &mesh(
            vip,
            "http",
            &[("cluster-1", local.addr), ("cluster-3", remote.addr)],
            policy,
        ),
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let load = Load::start(SocketAddr::new(vip, PORT), 4);
    load.advance(200).await;
    assert_eq!(remote.served(), 0, "local first while it is healthy");

    local.kill();
    let killed = Instant::now();
    load.advance(500).await;
    strait::assert_eventually!(
        proxy
            .metric("strait_balance_failovers_total{service=\"web\"}")
            .await
            == 1.0,
        100,
        "failover counted"
    );

    local.restart().await;
    let restored = Instant::now();
    // A probe request may reach the revived cluster early; the fail-back
    // itself comes after the hold-down.
    strait::assert_eventually!(
        proxy
            .metric("strait_balance_failbacks_total{service=\"web\"}")
            .await
            == 1.0,
        500,
        "failed back to local"
    );
    load.advance(200).await;
    let log = load.finish().await;

    let failed: Vec<_> = log.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Within 1 s of the kill every request is served remotely.
    assert!(log
        .iter()
        .filter(|(t, _, _)| *t > killed + Duration::from_secs(1) && *t < restored)
        .all(|(_, _, b)| b == "remote"));
    // Back to local only after the hold-down (1 s here): until then traffic
    // stays remote but for the odd probe request to a local endpoint whose
    // ejection ran out (one per ejection period of 500 ms or more).
    let early_local = log
        .iter()
        .filter(|(t, _, b)| {
            *t > restored && *t < restored + Duration::from_millis(800) && b == "local"
        })
        .count();
    assert!(
        early_local <= 3,
        "{early_local} local answers inside the hold-down"
    );
    let last_remote = log
        .iter()
        .filter(|(t, _, b)| *t > restored && b == "remote")
        .map(|(t, _, _)| *t)
        .max()
        .expect("remote serves during the hold-down");
    assert!(
        last_remote.duration_since(restored) >= Duration::from_millis(800),
        "failed back too early: last remote answer {:?} after the restart",
        last_remote.duration_since(restored)
    );
    let tail = &log[log.len() - 100..];
    assert!(
        tail.iter().all(|(_, _, b)| b == "local"),
        "after the fail-back cluster-1 serves everything"
    );
    assert!(
        proxy
            .metric("strait_endpoint_ejections_total{cluster=\"cluster-1\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_remote_cluster_under_active_active_costs_no_requests() {
    let local = Killable::start("local").await;
    let gateway = Killable::start("gateway-3").await;
    let vip = unique_vip();
    // Cluster-3 is reached through its gateway (an ErieCanal-style import).
    let yaml = proxy_yaml(
        FAST_HEALTH,
        &format!(
            "  - apiVersion: multicluster.flomesh.io/v1alpha1
    kind: ServiceImport
    metadata: {{ name: web, namespace: shop }}
    spec:
      ips: [\"{vip}\"]
      ports:
        - name: p
          port: {PORT}
          appProtocol: http
          endpoints:
            - {{ clusterKey: default/default/default/cluster-1, target: {{ ip: \"{}\", port: {} }} }}
            - {{ clusterKey: default/default/default/cluster-3, target: {{ ip: \"{}\", port: {} }} }}
  - apiVersion: flomesh.io/v1alpha1
    kind: GlobalTrafficPolicy
    metadata: {{ name: web, namespace: shop }}
    spec: {{ lbType: ActiveActive }}
",
            local.addr.ip(),
            local.addr.port(),
            gateway.addr.ip(),
            gateway.addr.port()
        ),
    );
    let _proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let load = Load::start(SocketAddr::new(vip, PORT), 4);
    load.advance(300).await;
    assert!(gateway.served() > 0, "the remote cluster takes a share");

    gateway.kill();
    let lost = Instant::now();
    load.advance(600).await;
    gateway.restart().await;
    let back = Instant::now();
    strait::assert_eventually!(
        load.log
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, b)| *t > back && b == "gateway-3"),
        500,
        "the cluster returns with its gateway"
    );
    let log = load.finish().await;
    assert!(log.iter().all(|(_, s, _)| *s == 200), "no failed requests");
    assert!(log
        .iter()
        .filter(|(t, _, _)| *t > lost + Duration::from_secs(1) && *t < back)
        .all(|(_, _, b)| b == "local"));
}

/// Reads one request head and body, then drops the connection unanswered.
async fn dies_after_request() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"payload") {
                        *counter.lock().unwrap() += 1;
                        return; // dropped: reset or FIN, no response
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_post_whose_upstream_dies_is_not_retried_and_gets_502() {
    let (dying, seen) = dies_after_request().await;
    let (other, other_seen) = dies_after_request().await;
    let vip = unique_vip();
    let yaml = proxy_yaml(
        "",
        &mesh(
            vip,
            "http",
            &[("cluster-1", dying), ("cluster-1", other)],
            "",
        ),
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let reply = request(
        SocketAddr::new(vip, PORT),
        http::Method::POST,
        "/orders",
        Bytes::from_static(b"payload"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(
        *seen.lock().unwrap() + *other_seen.lock().unwrap(),
        1,
        "sent exactly once"
    );
    assert_eq!(
        proxy.metric("strait_retries_total{service=\"web\"}").await,
        0.0
    );
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{reason=\"upstream_failed\",service=\"web\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_idempotent_request_that_gets_a_503_is_retried_elsewhere() {
    let busy = strait::test_util::start_backend("busy", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let fine = Killable::start("fine").await;
    let vip = unique_vip();
    // `busy` answers /status/503 with 503; `fine` answers anything with 200.
    let yaml = proxy_yaml(
        "",
        &mesh(
            vip,
            "http",
            &[("cluster-1", busy.addr), ("cluster-1", fine.addr)],
            "",
        )
        // Round robin sends every other first attempt to `busy`.
        .replacen(
            "metadata: { name: web, namespace: shop }",
            "metadata: { name: web, namespace: shop, annotations: { strait.io/lb-algorithm: round-robin } }",
            1,
        ),
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    for _ in 0..10 {
        let reply = get(SocketAddr::new(vip, PORT), "/status/503")
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-backend"), "fine");
    }
    assert!(
        proxy
            .metric("strait_retries_total{reason=\"status_5xx\",service=\"web\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn tcp_under_failover_connects_to_the_remote_cluster_once_local_refuses() {
    let refused = support::tcp::closed_port().await;
    let remote = support::tcp::echo_then_bye().await;
    let vip = unique_vip();
    let policy =
        "{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-2 }] }";
    let yaml = proxy_yaml(
        "",
        &mesh(
            vip,
            "tcp",
            &[("cluster-1", refused), ("cluster-2", remote)],
            policy,
        ),
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(SocketAddr::new(vip, PORT))
            .await
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, b"pingbye");
    }
    // Found by a refused connect or, earlier, by the active probe.
    strait::assert_eventually!(
        proxy
            .metric("strait_balance_failovers_total{service=\"web\"}")
            .await
            == 1.0,
        100,
        "failover counted"
    );
}

#[tokio::test]
async fn locality_without_local_endpoints_answers_503_naming_the_clusters_considered() {
    let remote = Killable::start("remote").await;
    let vip = unique_vip();
    let yaml = proxy_yaml("", &mesh(vip, "http", &[("cluster-3", remote.addr)], ""));
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let reply = get(SocketAddr::new(vip, PORT), "/").await.unwrap();
    assert_eq!(reply.status, 503);
    let why = reply.header("x-strait-error");
    assert!(
        why.contains("web.shop") && why.contains("cluster-1"),
        "{why}"
    );
    assert!(
        !why.contains("cluster-3"),
        "Locality does not consider remote clusters: {why}"
    );
    assert_eq!(remote.served(), 0);
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{reason=\"no_endpoint\",service=\"web\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn config_dump_shows_clusters_weights_health_and_the_active_tier() {
    let (a, b) = (Killable::start("a").await, Killable::start("b").await);
    let vip = unique_vip();
    let policy =
        "{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-2 }] }";
    let yaml = proxy_yaml(
        "",
        &mesh(
            vip,
            "http",
            &[("cluster-1", a.addr), ("cluster-2", b.addr)],
            policy,
        ),
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let dump: serde_json::Value =
        serde_json::from_slice(&get(proxy.admin, "/config_dump").await.unwrap().body).unwrap();
    let sel = &dump["mesh"]["services"][0]["ports"][0]["selector"];
    assert_eq!(sel["lbType"], "FailOver");
    assert_eq!(sel["algorithm"], "p2c-ewma");
    assert_eq!(sel["failedOver"], false);
    assert_eq!(sel["clusters"][0]["cluster"], "cluster-1");
    assert_eq!(sel["clusters"][1]["cluster"], "cluster-2");
    assert_eq!(sel["clusters"][1]["weight"], 100);
    assert_eq!(sel["clusters"][0]["endpoints"][0]["healthy"], true);
}

/// A Service with annotations, one local endpoint.
fn annotated(vip: std::net::IpAddr, backend: SocketAddr, annotations: &str) -> String {
    mesh(vip, "http", &[("cluster-1", backend)], "").replacen(
        "metadata: { name: web, namespace: shop }",
        &format!("metadata: {{ name: web, namespace: shop, annotations: {{ {annotations} }} }}"),
        1,
    )
}

#[tokio::test]
async fn a_per_service_request_timeout_answers_504() {
    let slow = strait::test_util::start_backend("slow", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let yaml = proxy_yaml(
        "",
        &annotated(vip, slow.addr, "strait.io/request-timeout: 200ms"),
    );
    let proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let reply = get(SocketAddr::new(vip, PORT), "/delay/3000")
        .await
        .unwrap();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{reason=\"response_timeout\",service=\"web\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_endpoint_at_its_concurrency_limit_is_not_picked() {
    let slow = strait::test_util::start_backend("slow", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let yaml = proxy_yaml(
        "",
        &annotated(vip, slow.addr, "strait.io/max-requests-per-endpoint: \"1\""),
    );
    let _proxy = TestProxy::from_yaml(&yaml).await.unwrap();
    let target = SocketAddr::new(vip, PORT);
    let first = tokio::spawn(async move { get(target, "/delay/1500").await });
    strait::assert_eventually!(slow.requests() == 1, 250, "first request in flight");
    let second = get(target, "/").await.unwrap();
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(first.await.unwrap().unwrap().status, 200);
    // Once the first is done, the endpoint takes requests again.
    assert_eq!(get(target, "/").await.unwrap().status, 200);
}
