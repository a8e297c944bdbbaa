//! Mesh mTLS between two pods in two clusters, on real hosts: a client pod
//! in "cluster-2" (outbound capture) and a server pod in "cluster-1" whose
//! app listens on 127.0.0.1 only, so the one way in is the server's sidecar
//! (mTLS on 15008, or plaintext redirected to 15006 by iptables). The
//! certificates come from `strait certs`: one root, an intermediate per
//! cluster.

use std::path::Path;
use std::process::Command;

use crate::netns::{eventually, link, require_root_and, Host, OutputExt, Proto, READY_TIMEOUT};
use crate::sidecar::{install_capture, Options, Sidecar, PROXY_UID};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/sleep/sa/sleep";
const SERVER_ID: &str = "spiffe://cluster.local/ns/httpbin/sa/httpbin";

/// The server pod's view: `httpbin` with its one local endpoint (this pod,
/// app port 8000), exported to the `sleep` service account.
const SERVER_MESH: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: { name: httpbin, namespace: httpbin }
  spec: { clusterIP: 198.18.100.10, ports: [{ name: http, port: 8080, appProtocol: http }] }
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: { name: httpbin-1, namespace: httpbin, labels: { kubernetes.io/service-name: httpbin } }
  addressType: IPv4
  endpoints: [{ addresses: ["198.18.0.2"] }]
  ports: [{ name: http, port: 8000 }]
- apiVersion: multicluster.flomesh.io/v1alpha1
  kind: ServiceExport
  metadata: { name: httpbin, namespace: httpbin }
  spec: { serviceAccountName: sleep }
"#;

/// The client pod's view: `httpbin` runs only in cluster-1.
const CLIENT_MESH: &str = r#"
- apiVersion: v1
  kind: Service
  metadata: { name: httpbin, namespace: httpbin, annotations: { strait.io/service-account: httpbin } }
  spec: { clusterIP: 198.18.100.10, ports: [{ name: http, port: 8080, appProtocol: http }] }
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: { name: httpbin-c1, namespace: httpbin, labels: { kubernetes.io/service-name: httpbin, multicluster.kubernetes.io/source-cluster: cluster-1 } }
  addressType: IPv4
  endpoints: [{ addresses: ["198.18.0.2"] }]
  ports: [{ name: http, port: 8000 }]
- apiVersion: flomesh.io/v1alpha1
  kind: GlobalTrafficPolicy
  metadata: { name: httpbin, namespace: httpbin }
  spec: { lbType: FailOver, targets: [{ clusterKey: default/default/default/cluster-1 }] }
"#;

fn strait_certs(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("certs")
        .args(args)
        .output()
        .expect("run strait certs");
    assert!(
        out.status.success(),
        "strait certs {args:?}: {}",
        out.describe()
    );
}

/// Issues `id` from `ca` into `host`'s `certs/` (readable by the proxy uid)
/// and returns the config's `identity:` line.
fn identity(host: &Host, ca: &Path, id: &str) -> String {
    let dir = host.dir().join("certs");
    let d = dir.to_str().expect("utf-8 path");
    strait_certs(&[
        "workload",
        "--spiffe-id",
        id,
        "--ca",
        ca.to_str().expect("utf-8"),
        "--out",
        d,
    ]);
    let owner = format!("{PROXY_UID}:{PROXY_UID}");
    let out = Command::new("chown")
        .args(["-R", &owner, d])
        .output()
        .expect("chown");
    assert!(out.status.success(), "chown: {}", out.describe());
    format!("identity: {{ certChain: {d}/cert-chain.pem, privateKey: {d}/key.pem, trustBundle: {d}/root-cert.pem }}\n")
}

#[test]
#[ignore = "e2e: needs root, ip netns and iptables; run by .ci/run"]
fn pods_in_two_clusters_talk_mtls_and_plaintext_capture_follows_the_inbound_policy() {
    require_root_and(&["iptables", "curl", "python3"]);
    let client = Host::new("mtls-client");
    let server = Host::new("mtls-server");
    link(&client, "198.18.0.1/30", &server, "198.18.0.2/30");
    client.route("198.18.100.0/24", "198.18.0.2");

    // One root; an intermediate per cluster.
    let pki = client.dir().join("pki");
    let root = pki.join("root");
    let (c1, c2) = (pki.join("cluster-1"), pki.join("cluster-2"));
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    strait_certs(&["root", "--out", &p(&root)]);
    strait_certs(&[
        "intermediate",
        "--cluster",
        "cluster-1",
        "--root",
        &p(&root),
        "--out",
        &p(&c1),
    ]);
    strait_certs(&[
        "intermediate",
        "--cluster",
        "cluster-2",
        "--root",
        &p(&root),
        "--out",
        &p(&c2),
    ]);

    // The server pod: the app on loopback; inbound TCP except the mesh
    // port is redirected to the plaintext capture.
    server.write_file("www/hello.txt", "hello over mtls\n");
    let www = server.dir().join("www");
    let args = [
        "-m",
        "http.server",
        "8000",
        "--bind",
        "127.0.0.1",
        "--directory",
        &p(&www),
    ];
    let _web = server.spawn("python3", &args);
    server.wait_listening(Proto::Tcp, "127.0.0.1:8000");
    server.iptables("-t nat -N STRAIT_INBOUND");
    server.iptables("-t nat -A PREROUTING -p tcp -j STRAIT_INBOUND");
    server.iptables("-t nat -A STRAIT_INBOUND -p tcp --dport 15008 -j RETURN");
    server.iptables("-t nat -A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 15006");
    let server_opts = Options {
        node: "cluster: cluster-1, namespace: httpbin, serviceAccount: httpbin".to_owned(),
        extra_listeners: ", mesh: \"198.18.0.2:15008\", inbound: \"0.0.0.0:15006\"".to_owned(),
        extra_yaml: identity(&server, &c1, SERVER_ID) + "inbound: { plaintext: permissive }\n",
        ..Options::default()
    };
    let server_proxy = Sidecar::start(&server, SERVER_MESH, server_opts);

    // The client pod, with outbound capture.
    install_capture(&client);
    let client_opts = Options {
        node: "cluster: cluster-2, namespace: sleep, serviceAccount: sleep".to_owned(),
        extra_listeners: ", mesh: \"198.18.0.1:15008\"".to_owned(),
        extra_yaml: identity(&client, &c2, CLIENT_ID),
        ..Options::default()
    };
    let client_proxy = Sidecar::start(&client, CLIENT_MESH, client_opts);

    // The app's plain HTTP call crosses as mTLS and reaches an app that
    // listens on loopback only.
    let out = client.curl("http://198.18.100.10:8080/hello.txt", &["-f"]);
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_str(), "hello over mtls\n");
    let ok = [("direction", "outbound"), ("result", "ok")];
    assert_eq!(client_proxy.metric("strait_tls_handshakes_total", &ok), 1.0);
    let ok_in = [("direction", "inbound"), ("result", "ok")];
    assert_eq!(
        server_proxy.metric("strait_tls_handshakes_total", &ok_in),
        1.0
    );
    let active = [("direction", "inbound"), ("peer", CLIENT_ID)];
    assert_eq!(
        server_proxy.metric("strait_mesh_connections_active", &active),
        1.0
    );

    // Plaintext from outside the mesh (the client host as the proxy uid,
    // which its capture lets through) is redirected to 15006: permissive
    // forwards it to the app.
    let plain = |host: &Host| {
        host.run(
            "setpriv",
            &[
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
                "curl",
                "-sS",
                "-f",
                "--max-time",
                "5",
                "--noproxy",
                "*",
                "http://198.18.0.2:8000/hello.txt",
            ],
        )
    };
    let out = plain(&client);
    assert!(out.status.success(), "permissive: {}", out.describe());
    let forwarded = [("action", "forwarded")];
    assert_eq!(
        server_proxy.metric("strait_inbound_plaintext_connections_total", &forwarded),
        1.0
    );

    // Strict (a reload of the config file): plaintext is refused; mTLS still works.
    let path = server_proxy.config_path().clone();
    let text = std::fs::read_to_string(&path).expect("read config");
    let strict = text.replace("plaintext: permissive", "plaintext: strict");
    assert_ne!(text, strict);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, strict).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
    eventually("strict plaintext", READY_TIMEOUT, || {
        let out = plain(&client);
        if out.status.success() {
            Err("still forwarded".to_owned())
        } else {
            Ok(())
        }
    });
    let refused = [("action", "refused")];
    assert!(server_proxy.metric("strait_inbound_plaintext_connections_total", &refused) >= 1.0);
    let out = client.curl("http://198.18.100.10:8080/hello.txt", &["-f"]);
    assert!(
        out.status.success(),
        "mTLS is unaffected: {}",
        out.describe()
    );
}
