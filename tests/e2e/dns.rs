//! The DNS shim in a pod (issue 5's acceptance): a service that exists only
//! in another cluster resolves by its Kubernetes name and is reachable,
//! while every other name resolves as the cluster's own DNS says.
//!
//! Topology (every host address in 198.18.0.0/15):
//!
//! ```text
//!   kube-dns (cluster-1)       client pod (cluster-1)          server (cluster-2)
//!   198.18.0.2  ---eth0--- 198.18.0.1 | 198.18.0.5 ---eth1--- 198.18.0.6
//!   dnsmasq :53            strait + capture + DNS redirect    python http.server :8000
//! ```
//!
//! The client's `/etc/resolv.conf` (through `/etc/netns/NAME/`) names
//! kube-dns, as a pod's does; the pod's iptables send every DNS packet not
//! from the proxy's uid to the shim (127.0.0.1:15053), which answers mesh
//! names and forwards the rest to kube-dns. `httpbin.httpbin` is only a
//! ServiceImport without `ips` plus an EndpointSlice from cluster-2: its
//! address comes from `dns.vipRange` (default 240.240.0.0/16). That range is
//! routed towards the server host, which does not own it: a connection to a
//! VIP works only through the proxy.
//!
//! What this file does not cover: the shim's answers record by record, the
//! cache and the hardening; `tests/dns.rs` tests those on loopback.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{eventually, link, require_root_and, Host, OutputExt, Process, Proto};
use crate::sidecar::{install_capture, Options, Sidecar, PROXY_UID};

const KUBE_DNS: &str = "198.18.0.2";
/// The client's address on the link to kube-dns (the shim's source there).
const CLIENT: &str = "198.18.0.1";
/// The client's address on the link to the server (the proxy's source there).
const CLIENT_EAST: &str = "198.18.0.5";
const SERVER: &str = "198.18.0.6";
const SERVER_PORT: u16 = 8000;
/// Where the shim listens (its default) and the port the pod's DNS goes to.
const SHIM: &str = "127.0.0.1:15053";
const SHIM_PORT: u16 = 15053;
/// `dns.vipRange`'s default; the test leaves it unset.
const VIP_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(240, 240, 0, 0), 16);
const VIP_PORT: u16 = 8080;
/// Bound on kube-dns writing a query to its log.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// The pod's resolver config, as the kubelet writes it for namespace `httpbin`.
const RESOLV_CONF: &str = "nameserver 198.18.0.2\n\
                           search httpbin.svc.cluster.local svc.cluster.local cluster.local\n\
                           options ndots:5\n";
/// A name only kube-dns knows (its hosts file), and its address.
const DB_NAME: &str = "db.example.internal";
const DB_ADDR: &str = "198.18.0.42";
/// A name nobody knows.
const UNKNOWN: &str = "nothing.example.internal";

const FILE: &str = "hello.txt";
const BODY: &str = "hello from cluster-2, by name\n";

/// `httpbin.httpbin` exists only in cluster-2: an MCS ServiceImport without
/// `ips` and cluster-2's EndpointSlice. Locality (the default) would keep the
/// proxy in cluster-1, where there is no endpoint; ActiveActive lets it use
/// cluster-2.
const MESH: &str = r#"
- apiVersion: multicluster.x-k8s.io/v1alpha1
  kind: ServiceImport
  metadata: { name: httpbin, namespace: httpbin }
  spec: { ports: [{ name: http, port: 8080, appProtocol: http }] }
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: httpbin-cluster-2
    namespace: httpbin
    labels:
      multicluster.kubernetes.io/service-name: httpbin
      multicluster.kubernetes.io/source-cluster: cluster-2
  addressType: IPv4
  endpoints: [{ addresses: ["198.18.0.6"] }]
  ports: [{ name: http, port: 8000 }]
- apiVersion: flomesh.io/v1alpha1
  kind: GlobalTrafficPolicy
  metadata: { name: httpbin, namespace: httpbin }
  spec: { lbType: ActiveActive }
"#;

/// The shim on, forwarding to kube-dns, with the pod's search domains
/// (`Sidecar::start` writes no `node.namespace` to derive them from).
const DNS_YAML: &str = "dns: { enabled: true, upstreams: [\"198.18.0.2\"], \
     searchDomains: [httpbin.svc.cluster.local, svc.cluster.local, cluster.local] }";

/// Where `ip netns exec` looks for a namespace's own `/etc` files.
const NETNS_ETC: &str = "/etc/netns";

/// `/etc/netns/NAME/resolv.conf`, which `ip netns exec NAME` bind-mounts
/// over `/etc/resolv.conf`: the namespace's own resolver config. The
/// directory is removed on drop, also when the test fails.
struct NetnsResolvConf {
    dir: PathBuf,
}

// === impl NetnsResolvConf ===

impl NetnsResolvConf {
    fn install(host: &Host, contents: &str) -> NetnsResolvConf {
        let dir = Path::new(NETNS_ETC).join(host.name());
        // Another run's drop may remove an empty `/etc/netns` between the
        // two levels that `create_dir_all` makes: try again, a few times.
        let mut tries = 0;
        while let Err(e) = fs::create_dir_all(&dir) {
            tries += 1;
            assert!(
                e.kind() == ErrorKind::NotFound && tries < 3,
                "create {}: {e}",
                dir.display()
            );
        }
        let guard = NetnsResolvConf { dir };
        let file = guard.dir.join("resolv.conf");
        fs::write(&file, contents).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        // Readable by the proxy's uid too, as a pod's resolv.conf is.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod resolv.conf");
        guard
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
        // `/etc/netns` too, unless something else (another namespace's
        // config) is in it: `remove_dir` removes only an empty directory.
        let _ = fs::remove_dir(NETNS_ETC);
    }
}

/// The pod's DNS capture, ahead of [`install_capture`]'s TCP rules (which
/// would otherwise send TCP port 53 to the outbound listener):
///
/// ```text
/// -N STRAIT_DNS
/// -I OUTPUT 1 -p udp --dport 53 -j STRAIT_DNS
/// -I OUTPUT 2 -p tcp --dport 53 -j STRAIT_DNS
/// -A STRAIT_DNS -m owner --uid-owner 1337 -j RETURN   # the shim's own upstream queries
/// -A STRAIT_DNS -p udp -j REDIRECT --to-ports 15053
/// -A STRAIT_DNS -p tcp -j REDIRECT --to-ports 15053
/// ```
///
/// plus, in the raw table, Istio's conntrack zones for DNS: the shim's
/// upstream flows (zone 1) and the app's redirected flows (zone 2) are kept
/// apart, so an app query whose 5-tuple matches one of the shim's recent
/// upstream flows is still redirected instead of joining that flow and
/// going straight to kube-dns:
///
/// ```text
/// -t raw -A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
/// -t raw -A OUTPUT -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
/// -t raw -A OUTPUT -p udp --dport 53 -m owner ! --uid-owner 1337 -j CT --zone 2
/// -t raw -A PREROUTING -p udp --sport 53 -j CT --zone 1
/// ```
fn install_dns_redirect(host: &Host) {
    host.iptables(&format!(
        "-t raw -A OUTPUT -p udp --dport 53 -m owner --uid-owner {PROXY_UID} -j CT --zone 1"
    ));
    host.iptables(&format!(
        "-t raw -A OUTPUT -p udp --sport {SHIM_PORT} -m owner --uid-owner {PROXY_UID} -j CT --zone 2"
    ));
    host.iptables(&format!(
        "-t raw -A OUTPUT -p udp --dport 53 -m owner ! --uid-owner {PROXY_UID} -j CT --zone 2"
    ));
    host.iptables("-t raw -A PREROUTING -p udp --sport 53 -j CT --zone 1");
    host.iptables("-t nat -N STRAIT_DNS");
    host.iptables("-t nat -I OUTPUT 1 -p udp --dport 53 -j STRAIT_DNS");
    host.iptables("-t nat -I OUTPUT 2 -p tcp --dport 53 -j STRAIT_DNS");
    host.iptables(&format!(
        "-t nat -A STRAIT_DNS -m owner --uid-owner {PROXY_UID} -j RETURN"
    ));
    for proto in ["udp", "tcp"] {
        host.iptables(&format!(
            "-t nat -A STRAIT_DNS -p {proto} -j REDIRECT --to-ports {SHIM_PORT}"
        ));
    }
}

/// The hosts, their programs and the client's resolver config. Fields drop
/// in order: the processes (killed by PID), which deletes the namespaces with
/// their last handle, then `/etc/netns/NAME`.
struct Pods {
    client: Host,
    kube_dns: Host,
    proxy: Sidecar,
    dnsmasq: Process,
    web: Process,
    _resolv_conf: NetnsResolvConf,
}

fn pods() -> Pods {
    require_root_and(&["iptables", "curl", "python3", "dnsmasq", "dig", "getent"]);
    let client = Host::new("client");
    let kube_dns = Host::new("kube-dns");
    let server = Host::new("server-c2");
    let resolv_conf = NetnsResolvConf::install(&client, RESOLV_CONF);
    link(
        &client,
        &format!("{CLIENT}/30"),
        &kube_dns,
        &format!("{KUBE_DNS}/30"),
    );
    link(
        &client,
        &format!("{CLIENT_EAST}/30"),
        &server,
        &format!("{SERVER}/30"),
    );
    // Not `Host::route`, which takes only 198.18.0.0/15: the VIP range is no
    // host's address, and capture keeps every connection to it in the pod.
    let (base, len) = VIP_RANGE;
    client.run_ok(
        "ip",
        &["route", "add", &format!("{base}/{len}"), "via", SERVER],
    );

    // kube-dns: its hosts file, and NXDOMAIN for every other name
    // (`--local=/#/`: no upstream, as CoreDNS for its zones).
    let hosts = kube_dns.write_file("dnsmasq/hosts", &format!("{DB_ADDR} {DB_NAME}\n"));
    let addn_hosts = format!("--addn-hosts={}", hosts.to_str().expect("utf-8 path"));
    let listen = format!("--listen-address={KUBE_DNS}");
    let dnsmasq = kube_dns.spawn(
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            &addn_hosts,
            &listen,
            "--bind-interfaces",
            "--port=53",
            "--pid-file=",
            "--local=/#/",
            "--log-queries",
            "--log-facility=-",
        ],
    );
    kube_dns.wait_listening(Proto::Udp, &format!("{KUBE_DNS}:53"));
    kube_dns.wait_listening(Proto::Tcp, &format!("{KUBE_DNS}:53"));

    server.write_file(&format!("www/{FILE}"), BODY);
    let www = server.dir().join("www");
    let port = SERVER_PORT.to_string();
    let web = server.spawn(
        "python3",
        &[
            "-m",
            "http.server",
            &port,
            "--bind",
            SERVER,
            "--directory",
            www.to_str().expect("utf-8 path"),
        ],
    );
    server.wait_listening(Proto::Tcp, &format!("{SERVER}:{SERVER_PORT}"));

    install_capture(&client);
    install_dns_redirect(&client);
    let opts = Options {
        extra_yaml: DNS_YAML.to_owned(),
        ..Options::default()
    };
    let proxy = Sidecar::start(&client, MESH, opts);
    client.wait_listening(Proto::Udp, SHIM);
    client.wait_listening(Proto::Tcp, SHIM);
    Pods {
        client,
        kube_dns,
        proxy,
        dnsmasq,
        web,
        _resolv_conf: resolv_conf,
    }
}

/// `dig +time=5 +tries=1 ARGS` in `host`: exactly one query, so the shim's
/// counters move by one. Fails the test unless dig gets an answer.
fn dig(host: &Host, args: &[&str]) -> String {
    let mut all = vec!["+time=5", "+tries=1"];
    all.extend_from_slice(args);
    host.run_ok("dig", &all)
}

/// `getent hosts NAME` in `host`: the first address, or `None` when the
/// resolver found nothing.
fn getent(host: &Host, name: &str) -> Option<String> {
    let out = host.run("getent", &["hosts", name]);
    if !out.status.success() {
        assert_eq!(
            out.status.code(),
            Some(2),
            "getent hosts {name}: only `not found` is expected: {}",
            out.describe()
        );
        return None;
    }
    let text = out.stdout_str();
    let addr = text.split_whitespace().next().map(str::to_owned);
    assert!(addr.is_some(), "getent hosts {name}: {}", out.describe());
    addr
}

fn in_vip_range(addr: &str) -> bool {
    let (base, len) = VIP_RANGE;
    let mask = u32::MAX << (32 - len);
    addr.parse::<Ipv4Addr>()
        .is_ok_and(|ip| u32::from(ip) & mask == u32::from(base))
}

fn queries(proxy: &Sidecar, outcome: &str) -> f64 {
    proxy.metric(
        "strait_dns_queries_total",
        &[("type", "a"), ("outcome", outcome)],
    )
}

/// The `;; flags:` line of a full dig answer, and its `status:`.
fn header(dig_output: &str) -> (String, String) {
    let line = |prefix: &str| {
        dig_output
            .lines()
            .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| panic!("no {prefix:?} in dig's output:\n{dig_output}"))
    };
    let flags = line(";; flags: ");
    let status = line("status: ");
    let status = status.split(',').next().unwrap_or_default().to_owned();
    (flags, status)
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn a_service_that_exists_only_in_another_cluster_resolves_and_is_reachable() {
    let pods = pods();
    let (client, proxy) = (&pods.client, &pods.proxy);

    // What kube-dns itself says, asked on its own host.
    let direct_db = dig(
        &pods.kube_dns,
        &["+short", &format!("@{KUBE_DNS}"), DB_NAME],
    );
    assert_eq!(direct_db.trim(), DB_ADDR, "kube-dns serves its hosts file");
    let direct_mesh = dig(
        &pods.kube_dns,
        &[&format!("@{KUBE_DNS}"), "httpbin.httpbin.svc.cluster.local"],
    );
    assert_eq!(
        header(&direct_mesh).1,
        "NXDOMAIN",
        "kube-dns does not know the imported service:\n{direct_mesh}"
    );

    // The pod's resolver (search list, ndots:5) finds the service by name.
    let vip = getent(client, "httpbin.httpbin")
        .expect("httpbin.httpbin resolves in the pod through the shim");
    assert!(in_vip_range(&vip), "{vip} is not in 240.240.0.0/16");
    assert_eq!(
        getent(client, "httpbin").as_deref(),
        Some(vip.as_str()),
        "the short name, through the pod's first search domain"
    );

    // dig asks the nameserver of resolv.conf; the redirect takes the query
    // to the shim, whose answer comes back from kube-dns's address.
    let mesh_before = queries(proxy, "mesh");
    let udp = dig(client, &["httpbin.httpbin.svc.cluster.local"]);
    let (flags, status) = header(&udp);
    assert_eq!(status, "NOERROR", "{udp}");
    assert!(
        flags.split_whitespace().any(|f| f == "aa")
            && udp.contains(&format!("SERVER: {KUBE_DNS}#53")),
        "an authoritative mesh answer, from kube-dns's address:\n{udp}"
    );
    let short = dig(client, &["+short", "httpbin.httpbin.svc.cluster.local"]);
    assert_eq!(short.trim(), vip, "dig and getent agree");
    let tcp = dig(
        client,
        &["+tcp", "+short", "httpbin.httpbin.svc.cluster.local"],
    );
    assert_eq!(tcp.trim(), vip, "the same answer over TCP");
    assert_eq!(
        queries(proxy, "mesh") - mesh_before,
        3.0,
        "the shim answered the three digs from the mesh"
    );

    // The name is reachable: the proxy routes the VIP to cluster-2.
    let out = client.curl(
        &format!("http://httpbin.httpbin:{VIP_PORT}/{FILE}"),
        &["-f"],
    );
    assert!(out.status.success(), "curl by name: {}", out.describe());
    assert_eq!(out.stdout_str(), BODY);
    let web_log = pods.web.log();
    assert!(
        web_log.contains(&format!("{CLIENT_EAST} - - "))
            && web_log.contains(&format!("GET /{FILE} ")),
        "cluster-2's server answered the proxy; its log:\n{web_log}"
    );
    let served = [
        ("service", "httpbin"),
        ("namespace", "httpbin"),
        ("cluster", "cluster-2"),
        ("code", "200"),
    ];
    assert_eq!(proxy.metric("strait_requests_total", &served), 1.0);
    assert_eq!(
        proxy.metric(
            "strait_unknown_destination_connections_total",
            &[("action", "passthrough")]
        ),
        0.0,
        "the VIP connection was routed, not passed through"
    );

    // A name the mesh does not know resolves as kube-dns says.
    let forwarded_before = queries(proxy, "forwarded");
    let db = dig(client, &["+short", DB_NAME]);
    assert_eq!(db, direct_db, "the same answer as kube-dns's own");
    assert_eq!(queries(proxy, "forwarded") - forwarded_before, 1.0);
    assert_eq!(getent(client, DB_NAME).as_deref(), Some(DB_ADDR));

    // A name nobody knows is NXDOMAIN, passed on from kube-dns.
    let nxdomain_before = queries(proxy, "nxdomain");
    let unknown = dig(client, &[UNKNOWN]);
    assert_eq!(header(&unknown).1, "NXDOMAIN", "{unknown}");
    assert_eq!(queries(proxy, "nxdomain") - nxdomain_before, 1.0);
    assert_eq!(getent(client, UNKNOWN), None);

    // kube-dns saw the forwarded names, from the pod (the shim's upstream
    // socket), and never the names the shim answers itself.
    let from_pod = |log: &str, line: &str| log.contains(&format!("{line} from {CLIENT}"));
    eventually("kube-dns logs the forwarded query", LOG_TIMEOUT, || {
        let log = pods.dnsmasq.log();
        if from_pod(&log, &format!("query[A] {DB_NAME}")) {
            Ok(())
        } else {
            Err(log)
        }
    });
    let log = pods.dnsmasq.log();
    for name in [
        "httpbin.httpbin.svc.cluster.local",
        "httpbin.httpbin.httpbin.svc.cluster.local",
    ] {
        assert!(
            !log.lines()
                .any(|l| l.contains(&format!("] {name} from {CLIENT}"))),
            "the mesh name {name} leaked to kube-dns:\n{log}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_range_membership() {
        assert!(in_vip_range("240.240.0.1"));
        assert!(in_vip_range("240.240.255.254"));
        assert!(!in_vip_range("240.241.0.1"));
        assert!(!in_vip_range("198.18.0.6"));
        assert!(!in_vip_range("not an address"));
    }

    #[test]
    fn dig_header_is_read() {
        let out = ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 1\n\
                   ;; flags: qr aa rd ra; QUERY: 1, ANSWER: 0\n";
        let (flags, status) = header(out);
        assert_eq!(status, "NXDOMAIN");
        assert!(flags.starts_with("qr aa rd ra"));
    }
}
