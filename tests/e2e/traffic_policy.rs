//! Cross-cluster traffic policies with real hosts: each cluster's pod is a
//! network namespace running a small python server that names its cluster,
//! and a client pod sends curl after curl through the service VIP while a
//! test kills and restarts servers by PID. Proves that FailOver and
//! ActiveActive lose no request when a cluster dies, that traffic comes back
//! when it returns, and that opaque TCP fails over at connect time.
//!
//! Topology (every address in 198.18.0.0/15):
//!
//! ```text
//!   local (cluster-1)        client pod (cluster-1)         remote (cluster-3)
//!   198.18.0.2  ----eth0---- 198.18.0.1 | 198.18.0.5 ----eth1---- 198.18.0.6
//!                            strait sidecar + capture
//! ```
//!
//! The VIP range 198.18.100.0/24 is routed towards the local host, which does
//! not own it: a VIP connection works only through the proxy.
//!
//! What this file does not cover: the weights of ActiveActive, retry
//! classification and the hold-down's exact length. `tests/traffic_policy.rs`
//! tests those on loopback, where timing is controlled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::{eventually, link, require_root_and, Host, OutputExt, Process, Proto};
use crate::sidecar::{install_capture, Options, Sidecar};

const LOCAL: &str = "198.18.0.2";
const REMOTE: &str = "198.18.0.6";
/// The service VIP (`web.shop` or `echo.shop`) and its port.
const VIP: &str = "198.18.100.10";
const VIP_PORT: u16 = 8080;
/// Where every backend listens.
const BACKEND_PORT: u16 = 8000;
const LOCAL_CLUSTER: &str = "cluster-1";
const REMOTE_CLUSTER: &str = "cluster-3";

/// `failBackHoldDown` in [`FAST_HEALTH`].
const HOLD_DOWN: Duration = Duration::from_secs(1);
const FAST_HEALTH: &str =
    "balance: { failBackHoldDown: 1s, probeInterval: 200ms, probeTimeout: 100ms }";

/// Concurrent curl loops, so that a kill often finds a request in flight.
const WORKERS: usize = 2;
/// Upper bound on the requests of one scenario, across workers. A scenario
/// needs about 250 (a curl in a namespace takes ~15 ms).
const MAX_REQUESTS: usize = 600;
/// Each request's own deadline: a hung request is a failed one.
const REQUEST_TIMEOUT: &str = "2";
/// Bound on any wait for the load to reach a point.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a process exiting after SIGKILL, and on metrics converging.
const SHORT: Duration = Duration::from_secs(5);

/// The backend each host runs: `http ADDR PORT CLUSTER` answers every GET
/// with the body `CLUSTER\n`; `tcp ADDR PORT CLUSTER` reads one line and
/// answers `CLUSTER LINE`, then closes.
///
/// Not `python3 -m http.server`: it writes the head and the body in two
/// sends, so a kill between them truncates a response whose head has been
/// forwarded, which no proxy can retry. One `sendall` per response makes a
/// kill land before or after a response, never inside it. Keep-alive
/// (HTTP/1.1) is deliberate: the proxy's pooled connections die with the
/// server too, and must not cost a request.
const BACKEND_PY: &str = r#"
import socketserver, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode, addr, port, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (cluster + "\n").encode()
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
        self.wfile.write((head % len(body)).encode() + body)
        self.log_request(200)

class Tcp(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        if line:
            self.wfile.write(cluster.encode() + b" " + line)

class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

server = ThreadingHTTPServer((addr, port), Http) if mode == "http" else TcpServer((addr, port), Tcp)
print("listening", mode, addr, port, cluster, flush=True)
server.serve_forever()
"#;

/// The client pod and one pod host per cluster, linked directly.
struct Clusters {
    client: Host,
    local: Host,
    remote: Host,
}

fn clusters() -> Clusters {
    require_root_and(&["iptables", "curl", "python3", "bash", "timeout"]);
    let client = Host::new("client");
    let local = Host::new("local-c1");
    let remote = Host::new("remote-c3");
    link(&client, "198.18.0.1/30", &local, "198.18.0.2/30");
    link(&client, "198.18.0.5/30", &remote, "198.18.0.6/30");
    client.route("198.18.100.0/24", LOCAL);
    install_capture(&client);
    Clusters {
        client,
        local,
        remote,
    }
}

/// Starts the python backend (`http` or `tcp`) on `ip:BACKEND_PORT` and
/// waits until it listens.
fn backend(host: &Host, mode: &str, ip: &str, cluster: &str) -> Process {
    let script = host.write_file("backend.py", BACKEND_PY);
    let script = script.to_str().expect("utf-8 path");
    let port = BACKEND_PORT.to_string();
    let process = host.spawn("python3", &[script, mode, ip, &port, cluster]);
    host.wait_listening(Proto::Tcp, &format!("{ip}:{BACKEND_PORT}"));
    process
}

/// SIGKILL by PID (a pod that dies, not one that drains) and waits for the
/// exit, which has closed its sockets. Returns when it was dead.
fn kill(process: &mut Process) -> Instant {
    process.signal("KILL");
    process.wait_exit(SHORT);
    Instant::now()
}

/// Service `NAME.shop` on the VIP, with one EndpointSlice in the local
/// cluster and one from cluster-3 (flat network), and a
/// GlobalTrafficPolicy with `spec`.
fn sliced_service(name: &str, app_protocol: &str, spec: &str) -> String {
    let slice = |cluster: &str, ip: &str| {
        let source = if cluster == LOCAL_CLUSTER {
            String::new()
        } else {
            format!(", multicluster.kubernetes.io/source-cluster: {cluster}")
        };
        format!(
            "- apiVersion: discovery.k8s.io/v1\n  \
             kind: EndpointSlice\n  \
             metadata: {{ name: {name}-{cluster}, namespace: shop, labels: {{ kubernetes.io/service-name: {name}{source} }} }}\n  \
             addressType: IPv4\n  \
             endpoints: [{{ addresses: [\"{ip}\"] }}]\n  \
             ports: [{{ name: p, port: {BACKEND_PORT} }}]\n"
        )
    };
    format!(
        "- apiVersion: v1\n  \
         kind: Service\n  \
         metadata: {{ name: {name}, namespace: shop }}\n  \
         spec: {{ clusterIP: {VIP}, ports: [{{ name: p, port: {VIP_PORT}, appProtocol: {app_protocol} }}] }}\n\
         {}{}\
         - apiVersion: flomesh.io/v1alpha1\n  \
         kind: GlobalTrafficPolicy\n  \
         metadata: {{ name: {name}, namespace: shop }}\n  \
         spec: {spec}\n",
        slice(LOCAL_CLUSTER, LOCAL),
        slice(REMOTE_CLUSTER, REMOTE),
    )
}

/// Service `web.shop` imported from both clusters (ErieCanal style): each
/// cluster's target is inline; cluster-3's is its gateway. ActiveActive
/// over every cluster, 100 each.
fn imported_service() -> String {
    let target = |cluster: &str, ip: &str| {
        format!(
            "        - {{ clusterKey: default/default/default/{cluster}, \
             target: {{ ip: \"{ip}\", port: {BACKEND_PORT} }} }}\n"
        )
    };
    format!(
        "- apiVersion: multicluster.flomesh.io/v1alpha1\n  \
         kind: ServiceImport\n  \
         metadata: {{ name: web, namespace: shop }}\n  \
         spec:\n    \
         ips: [\"{VIP}\"]\n    \
         ports:\n    \
         - name: p\n      \
         port: {VIP_PORT}\n      \
         appProtocol: http\n      \
         endpoints:\n\
         {}{}\
         - apiVersion: flomesh.io/v1alpha1\n  \
         kind: GlobalTrafficPolicy\n  \
         metadata: {{ name: web, namespace: shop }}\n  \
         spec: {{ lbType: ActiveActive }}\n",
        target(LOCAL_CLUSTER, LOCAL),
        target(REMOTE_CLUSTER, REMOTE),
    )
}

fn sidecar(host: &Host, mesh: &str, balance: &str) -> Sidecar {
    let opts = Options {
        extra_yaml: balance.to_owned(),
        ..Options::default()
    };
    Sidecar::start(host, mesh, opts)
}

/// One curl through the VIP.
#[derive(Debug, Clone)]
struct Outcome {
    start: Instant,
    end: Instant,
    /// The cluster named by the body, or why curl failed.
    served_by: Result<String, String>,
}

impl Outcome {
    fn served_by(&self, cluster: &str) -> bool {
        self.served_by.as_deref() == Ok(cluster)
    }
}

/// Curl loops in the client pod, each request recorded, until stopped or
/// [`MAX_REQUESTS`] have been made. Dropping it stops and joins the loops.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<JoinHandle<()>>,
    origin: Instant,
}

// === impl Load ===

impl Load {
    fn start(client: &Host, url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..WORKERS)
            .map(|_| {
                let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
                let (client, url) = (client.clone(), url.to_owned());
                thread::spawn(move || {
                    for _ in 0..MAX_REQUESTS / WORKERS {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let start = Instant::now();
                        let out = client.curl(&url, &["-f", "--max-time", REQUEST_TIMEOUT]);
                        let served_by = if out.status.success() {
                            Ok(out.stdout_str().trim().to_owned())
                        } else {
                            Err(format!(
                                "{}: {}",
                                out.status,
                                String::from_utf8_lossy(&out.stderr).trim()
                            ))
                        };
                        let end = Instant::now();
                        lock(&log).push(Outcome {
                            start,
                            end,
                            served_by,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            log,
            workers,
            origin: Instant::now(),
        }
    }

    fn snapshot(&self) -> Vec<Outcome> {
        lock(&self.log).clone()
    }

    /// Waits until `n` more requests have completed.
    fn advance(&self, n: usize) {
        let target = lock(&self.log).len() + n;
        self.wait_for(&format!("{n} more requests"), |log| {
            (log.len() >= target).then_some(())
        });
    }

    /// Waits until a request matching `pred` has completed; returns it.
    fn first(&self, what: &str, pred: impl Fn(&Outcome) -> bool) -> Outcome {
        self.wait_for(what, |log| log.iter().find(|o| pred(o)).cloned())
    }

    fn wait_for<T>(&self, what: &str, probe: impl Fn(&[Outcome]) -> Option<T>) -> T {
        eventually(what, LOAD_TIMEOUT, || {
            let log = lock(&self.log);
            if let Some(found) = probe(&log) {
                return Ok(found);
            }
            if self.workers.iter().all(JoinHandle::is_finished) {
                // Not an Err: waiting longer cannot help.
                panic!(
                    "{what}: the load stopped at its bound of {MAX_REQUESTS} requests; {}",
                    self.describe(&log)
                );
            }
            Err(format!("{} requests so far", log.len()))
        })
    }

    /// Stops the loops and returns every outcome.
    fn finish(mut self) -> Run {
        self.join();
        Run {
            log: self.snapshot(),
            origin: self.origin,
        }
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            worker.join().expect("a curl loop panicked");
        }
    }

    fn describe(&self, log: &[Outcome]) -> String {
        describe(log, self.origin)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // On a failing test too: no curl may outlive the scenario's hosts.
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts by cluster, and the first failures with their times.
fn describe(log: &[Outcome], origin: Instant) -> String {
    let by = |c: &str| log.iter().filter(|o| o.served_by(c)).count();
    let failed: Vec<String> = log
        .iter()
        .filter(|o| o.served_by.is_err())
        .take(5)
        .map(|o| format!("at {:?}: {:?}", o.start.duration_since(origin), o.served_by))
        .collect();
    format!(
        "{} requests: {} by {LOCAL_CLUSTER}, {} by {REMOTE_CLUSTER}; first failures: {failed:?}",
        log.len(),
        by(LOCAL_CLUSTER),
        by(REMOTE_CLUSTER)
    )
}

/// Every outcome of a finished [`Load`].
struct Run {
    log: Vec<Outcome>,
    origin: Instant,
}

// === impl Run ===

impl Run {
    fn describe(&self) -> String {
        describe(&self.log, self.origin)
    }

    fn assert_no_failures(&self) {
        assert!(
            self.log.iter().all(|o| o.served_by.is_ok()),
            "every request must succeed; {}",
            self.describe()
        );
    }

    /// Requests that started after `from` and ended before `to`.
    fn between(&self, from: Instant, to: Instant) -> Vec<&Outcome> {
        self.log
            .iter()
            .filter(|o| o.start > from && o.end < to)
            .collect()
    }

    /// Requests that ended before `at`.
    fn before(&self, at: Instant) -> Vec<&Outcome> {
        self.log.iter().filter(|o| o.end < at).collect()
    }

    /// Waits until the proxy's `strait_requests_total` for the service
    /// agrees with what the client saw, per cluster.
    fn assert_counted_by(&self, proxy: &Sidecar, service: &str) {
        for cluster in [LOCAL_CLUSTER, REMOTE_CLUSTER] {
            let seen = self.log.iter().filter(|o| o.served_by(cluster)).count() as f64;
            let labels = [("service", service), ("cluster", cluster), ("code", "200")];
            let what = format!("strait_requests_total counts what the client saw from {cluster}");
            wait_metric(proxy, &what, "strait_requests_total", &labels, seen);
        }
    }
}

/// Waits (bounded) until the sum of `name{labels}` is `want`.
fn wait_metric(proxy: &Sidecar, what: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    eventually(what, SHORT, || {
        let got = proxy.metric(name, labels);
        if got == want {
            Ok(())
        } else {
            Err(format!("{name} is {got}, want {want}"))
        }
    });
}

fn all_by(outcomes: &[&Outcome], cluster: &str) -> bool {
    outcomes.iter().all(|o| o.served_by(cluster))
}

fn count_by(outcomes: &[&Outcome], cluster: &str) -> usize {
    outcomes.iter().filter(|o| o.served_by(cluster)).count()
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn failover_survives_the_local_cluster_dying() {
    let c = clusters();
    let mut local_web = backend(&c.local, "http", LOCAL, LOCAL_CLUSTER);
    let _remote_web = backend(&c.remote, "http", REMOTE, REMOTE_CLUSTER);
    let policy =
        "{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-3 }] }";
    let mesh = sliced_service("web", "http", policy);
    let proxy = sidecar(&c.client, &mesh, FAST_HEALTH);
    let load = Load::start(&c.client, &format!("http://{VIP}:{VIP_PORT}/"));

    load.advance(40);
    let killing = Instant::now();
    let dead = kill(&mut local_web);
    load.advance(60);
    let restarting = Instant::now();
    let _local_web = backend(&c.local, "http", LOCAL, LOCAL_CLUSTER);
    load.first("traffic returns to cluster-1 after the hold-down", |o| {
        o.start > restarting + HOLD_DOWN && o.served_by(LOCAL_CLUSTER)
    });
    load.advance(40);
    let run = load.finish();

    run.assert_no_failures();
    let before = run.before(killing);
    assert!(
        before.len() >= 40 && all_by(&before, LOCAL_CLUSTER),
        "cluster-1 serves while it is healthy; {}",
        run.describe()
    );
    // Under Locality these would fail (502, then 503: no endpoint).
    let failed_over = run.between(dead, restarting);
    assert!(
        failed_over.len() >= 50 && all_by(&failed_over, REMOTE_CLUSTER),
        "cluster-3 serves every request while cluster-1 is dead ({} of {}); {}",
        count_by(&failed_over, REMOTE_CLUSTER),
        failed_over.len(),
        run.describe()
    );
    // Nothing listened on cluster-1 before `restarting`, so the hold-down
    // keeps traffic on cluster-3 for at least that long after it; inside it
    // cluster-1 may see the odd probe request (one per ejection period).
    let last_remote = run
        .log
        .iter()
        .filter(|o| o.start > restarting && o.served_by(REMOTE_CLUSTER))
        .map(|o| o.start)
        .max()
        .expect("cluster-3 serves during the hold-down");
    let held = last_remote.duration_since(restarting);
    assert!(
        held + Duration::from_millis(300) >= HOLD_DOWN,
        "failed back {held:?} after the restart, within the {HOLD_DOWN:?} hold-down"
    );
    let probes = run
        .log
        .iter()
        .filter(|o| o.start > restarting && o.start < last_remote && o.served_by(LOCAL_CLUSTER))
        .count();
    assert!(
        probes <= 3,
        "{probes} cluster-1 answers inside the hold-down; {}",
        run.describe()
    );
    let after: Vec<_> = run.log.iter().filter(|o| o.start > last_remote).collect();
    assert!(
        after.len() >= 30 && all_by(&after, LOCAL_CLUSTER),
        "once failed back, cluster-1 serves everything ({} of {}); {}",
        count_by(&after, LOCAL_CLUSTER),
        after.len(),
        run.describe()
    );
    let web = [("service", "web")];
    assert_eq!(proxy.metric("strait_balance_failovers_total", &web), 1.0);
    assert_eq!(proxy.metric("strait_balance_failbacks_total", &web), 1.0);
    run.assert_counted_by(&proxy, "web");
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn active_active_loses_a_remote_gateway_without_failed_requests() {
    let c = clusters();
    let _local_web = backend(&c.local, "http", LOCAL, LOCAL_CLUSTER);
    // The remote host stands for cluster-3's gateway: the import's target.
    let mut gateway = backend(&c.remote, "http", REMOTE, REMOTE_CLUSTER);
    let proxy = sidecar(&c.client, &imported_service(), FAST_HEALTH);
    let load = Load::start(&c.client, &format!("http://{VIP}:{VIP_PORT}/"));

    load.advance(60);
    let killing = Instant::now();
    let lost = kill(&mut gateway);
    load.advance(80);
    let restarting = Instant::now();
    let _gateway = backend(&c.remote, "http", REMOTE, REMOTE_CLUSTER);
    load.first("cluster-3 takes a share again", |o| {
        o.start > restarting && o.served_by(REMOTE_CLUSTER)
    });
    load.advance(20);
    let run = load.finish();

    run.assert_no_failures();
    // 50/50 by weight: 60 requests all from one cluster has a chance of
    // 2^-59. Under Locality cluster-3 would get none.
    let before = run.before(killing);
    assert!(
        count_by(&before, LOCAL_CLUSTER) > 0 && count_by(&before, REMOTE_CLUSTER) > 0,
        "both clusters share the load; {}",
        run.describe()
    );
    let during = run.between(lost, restarting);
    assert!(
        during.len() >= 60 && all_by(&during, LOCAL_CLUSTER),
        "cluster-1 serves every request while the gateway is dead ({} of {}); {}",
        count_by(&during, LOCAL_CLUSTER),
        during.len(),
        run.describe()
    );
    // ActiveActive spreads; it never fails over.
    let web = [("service", "web")];
    assert_eq!(proxy.metric("strait_balance_failovers_total", &web), 0.0);
    run.assert_counted_by(&proxy, "web");
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn tcp_failover_at_connect_time() {
    let c = clusters();
    let mut local_echo = backend(&c.local, "tcp", LOCAL, LOCAL_CLUSTER);
    let _remote_echo = backend(&c.remote, "tcp", REMOTE, REMOTE_CLUSTER);
    let policy =
        "{ lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-3 }] }";
    // One probe round, at startup: after it, only a refused connect can tell
    // the proxy that cluster-1 is gone.
    let proxy = sidecar(
        &c.client,
        &sliced_service("echo", "tcp", policy),
        "balance: { failBackHoldDown: 1s, probeInterval: 1h, probeTimeout: 500ms }",
    );
    for cluster in [LOCAL_CLUSTER, REMOTE_CLUSTER] {
        let labels = [("service", "echo"), ("cluster", cluster)];
        let what = format!("the startup probe round finds {cluster} healthy");
        wait_metric(
            &proxy,
            &what,
            "strait_balance_healthy_endpoints",
            &labels,
            1.0,
        );
    }
    // bash's /dev/tcp: the connection is captured like any app's.
    let script = format!("exec 3<>/dev/tcp/{VIP}/{VIP_PORT} && echo ping >&3 && cat <&3");
    let connect = || c.client.run("timeout", &["5", "bash", "-c", &script]);

    let out = connect();
    assert_eq!(
        out.stdout_str(),
        "cluster-1 ping\n",
        "local first while it is up: {}",
        out.describe()
    );
    kill(&mut local_echo);
    assert_eq!(
        c.local.run("ss", &["-Hltn"]).stdout_str(),
        "",
        "nothing listens on the local host: its endpoint refuses connections"
    );
    for i in 0..5 {
        let out = connect();
        assert_eq!(
            out.stdout_str(),
            "cluster-3 ping\n",
            "connection {i} after the kill reaches cluster-3: {}",
            out.describe()
        );
    }

    let echo = [("service", "echo")];
    let refused = [("service", "echo"), ("cluster", LOCAL_CLUSTER)];
    assert_eq!(
        proxy.metric("strait_endpoint_ejections_total", &refused),
        1.0,
        "the refused connect ejected the local endpoint"
    );
    let connect_retries = [("service", "echo"), ("reason", "connect")];
    assert_eq!(
        proxy.metric("strait_retries_total", &connect_retries),
        1.0,
        "only the first connection after the kill paid a refused connect"
    );
    assert_eq!(proxy.metric("strait_balance_failovers_total", &echo), 1.0);
    assert_eq!(proxy.metric("strait_balance_failbacks_total", &echo), 0.0);
}
