//! Transparent capture: a client pod whose outbound TCP is redirected to
//! the sidecar by iptables, and a server on another host. Proves that the
//! proxy recovers the original destination (`SO_ORIGINAL_DST`), routes
//! service VIPs to endpoints, passes unknown destinations through, and
//! refuses connections to its capture port that were not redirected.

use crate::netns::{link, require_root_and, Host, OutputExt, Process, Proto};
use crate::sidecar::{install_capture, Options, Sidecar};

/// Service `httpbin.httpbin`: VIP 198.18.100.10:8080, one endpoint
/// 198.18.0.2:8000 (the server host).
pub const HTTPBIN: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: { name: httpbin, namespace: httpbin }
  spec: { clusterIP: 198.18.100.10, ports: [{ name: http, port: 8080 }] }
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: { name: httpbin-1, namespace: httpbin, labels: { kubernetes.io/service-name: httpbin } }
  addressType: IPv4
  endpoints: [{ addresses: ["198.18.0.2"] }]
  ports: [{ name: http, port: 8000 }]
"#;

/// The file the server serves, and its body.
pub const FILE: &str = "hello.txt";
pub const BODY: &str = "hello from the server host, through strait\n";

/// A client pod (sidecar with capture, 198.18.0.1) and a server host
/// (python's HTTP server on 198.18.0.2:8000). The VIP range
/// 198.18.100.0/24 is routed towards the server, which does not own it: a
/// VIP connection works only if the proxy rewrites it to an endpoint.
pub struct ClientAndServer {
    pub client: Host,
    pub server: Host,
    pub proxy: Sidecar,
    pub web: Process,
}

pub fn client_and_server() -> ClientAndServer {
    require_root_and(&["iptables", "curl", "python3"]);
    let client = Host::new("client");
    let server = Host::new("server");
    link(&client, "198.18.0.1/30", &server, "198.18.0.2/30");
    client.route("198.18.100.0/24", "198.18.0.2");

    server.write_file(&format!("www/{FILE}"), BODY);
    let www = server.dir().join("www");
    let www = www.to_str().expect("utf-8 path");
    let args = [
        "-m",
        "http.server",
        "8000",
        "--bind",
        "198.18.0.2",
        "--directory",
        www,
    ];
    let web = server.spawn("python3", &args);
    server.wait_listening(Proto::Tcp, "198.18.0.2:8000");

    install_capture(&client);
    let proxy = Sidecar::start(&client, HTTPBIN, Options::default());
    ClientAndServer {
        client,
        server,
        proxy,
        web,
    }
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn transparent_capture_sends_service_traffic_through_the_proxy() {
    let pods = client_and_server();

    let out = pods
        .client
        .curl(&format!("http://198.18.100.10:8080/{FILE}"), &["-f"]);

    assert!(out.status.success(), "curl the VIP: {}", out.describe());
    assert_eq!(out.stdout_str(), BODY);
    // The real server answered a request from the pod's own address: the
    // proxy's upstream connection, which capture must have let through.
    let web_log = pods.web.log();
    assert!(
        web_log.contains("198.18.0.1 - - ") && web_log.contains(&format!("GET /{FILE} ")),
        "server log:\n{web_log}"
    );
    let served = [
        ("service", "httpbin"),
        ("namespace", "httpbin"),
        ("code", "200"),
    ];
    assert_eq!(pods.proxy.metric("strait_requests_total", &served), 1.0);
    let passthrough = [("action", "passthrough")];
    assert_eq!(
        pods.proxy
            .metric("strait_unknown_destination_connections_total", &passthrough),
        0.0,
        "a service connection must be routed, not passed through"
    );
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn unknown_destinations_pass_through_to_the_original_address() {
    let pods = client_and_server();

    let out = pods
        .client
        .curl(&format!("http://198.18.0.2:8000/{FILE}"), &["-f"]);

    assert!(out.status.success(), "curl the server: {}", out.describe());
    assert_eq!(out.stdout_str(), BODY);
    let passthrough = [("action", "passthrough")];
    assert_eq!(
        pods.proxy
            .metric("strait_unknown_destination_connections_total", &passthrough),
        1.0,
        "the connection must have been captured and passed through"
    );
    let served = [("service", "httpbin")];
    assert_eq!(pods.proxy.metric("strait_requests_total", &served), 0.0);
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn a_connection_to_the_capture_port_that_was_not_redirected_is_closed() {
    let pods = client_and_server();

    // Loopback is excluded from capture, so this reaches 15001 directly.
    let out = pods.client.curl("http://127.0.0.1:15001/", &[]);

    assert!(
        !out.status.success(),
        "the capture port must not serve a direct connection: {}",
        out.describe()
    );
    let refused = [("action", "not_redirected")];
    assert_eq!(
        pods.proxy
            .metric("strait_unknown_destination_connections_total", &refused),
        1.0
    );
}
