//! Hot reload of the config file and the manifest directory: valid changes
//! swap the state without dropping connections; invalid ones are rejected
//! with the precise problem, counted, and the old state keeps serving.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use strait::config::reload::ReloadStatus;
use strait::test_util::{
    proxy_yaml, service_yaml, start_backend, unique_vip, write_atomic, TestProxy,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

const PORT: u16 = 8080;

/// Waits (bounded) until the reload status satisfies `done`.
async fn wait_reload(
    rx: &mut watch::Receiver<ReloadStatus>,
    done: impl Fn(&ReloadStatus) -> bool,
) -> ReloadStatus {
    let waited = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| done(s)))
        .await
        .map(|r| r.expect("reloader stopped").clone());
    match waited {
        Ok(status) => status,
        Err(_) => panic!("no such reload within 10 s; status: {:?}", *rx.borrow()),
    }
}

/// One keep-alive client connection.
struct Client(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(tx)
    }

    /// GET / and the answering backend's name.
    async fn backend(&mut self) -> String {
        self.0.ready().await.unwrap();
        let req = http::Request::get("/")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let rsp = self.0.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let name = rsp.headers()["x-backend"].to_str().unwrap().to_owned();
        rsp.into_body().collect().await.unwrap();
        name
    }
}

#[tokio::test]
async fn a_valid_change_swaps_endpoints_without_dropping_connections() {
    let a = start_backend("a", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let b = start_backend("b", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.yaml");
    let with = |addr| {
        proxy_yaml(
            "",
            &service_yaml("web", "test", vip, PORT, Some("http"), &[addr]),
        )
    };
    std::fs::write(&path, with(a.addr)).unwrap();
    let proxy = TestProxy::from_file(&path).await.unwrap();
    let mut reloads = proxy.reloads.clone().unwrap();

    let mut client = Client::connect(SocketAddr::new(vip, PORT)).await;
    assert_eq!(client.backend().await, "a");

    write_atomic(&path, &with(b.addr)).unwrap();
    wait_reload(&mut reloads, |s| s.applied >= 1).await;

    // Same client connection, new endpoint.
    assert_eq!(client.backend().await, "b");
    assert_eq!(
        proxy
            .metric("strait_config_reloads_total{result=\"applied\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_invalid_change_is_rejected_with_its_field_path_and_the_old_state_serves() {
    let a = start_backend("a", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strait.yaml");
    let good = proxy_yaml("", &service_yaml("web", "test", vip, PORT, None, &[a.addr]));
    std::fs::write(&path, &good).unwrap();
    let proxy = TestProxy::from_file(&path).await.unwrap();
    let mut reloads = proxy.reloads.clone().unwrap();
    let version = proxy.store.load().version;

    let bad = good.replace(&format!("port: {PORT}"), "port: 70000");
    write_atomic(&path, &bad).unwrap();
    let status = wait_reload(&mut reloads, |s| s.rejected >= 1).await;
    let error = status.last_error.unwrap();
    assert!(
        error.contains("mesh[0].spec.ports[0].port: 70000 is not a port"),
        "{error}"
    );
    assert_eq!(proxy.store.load().version, version, "state must not change");
    assert_eq!(
        proxy
            .metric("strait_config_reloads_total{result=\"rejected\"}")
            .await,
        1.0
    );
    let reply = strait::test_util::get(SocketAddr::new(vip, PORT), "/")
        .await
        .unwrap();
    assert_eq!(reply.header("x-backend"), "a");

    // Garbage YAML is rejected the same way.
    write_atomic(&path, "mesh: [unclosed\n").unwrap();
    let status = wait_reload(&mut reloads, |s| s.rejected >= 2).await;
    assert!(status.last_error.unwrap().contains("YAML"));
    assert_eq!(proxy.store.load().version, version);
}

#[tokio::test]
async fn a_new_service_in_the_manifest_directory_gets_a_listener() {
    let a = start_backend("a", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("mesh");
    std::fs::create_dir(&manifests).unwrap();
    let path = dir.path().join("strait.yaml");
    std::fs::write(
        &path,
        "listeners: { admin: \"127.0.0.1:0\", outbound: null, serviceVips: true }\nmeshDir: mesh\n",
    )
    .unwrap();
    let proxy = TestProxy::from_file(&path).await.unwrap();
    let mut reloads = proxy.reloads.clone().unwrap();
    let vip = unique_vip();
    assert!(TcpStream::connect(SocketAddr::new(vip, PORT))
        .await
        .is_err());

    let docs = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: test }}\n\
         spec: {{ clusterIP: \"{vip}\", ports: [{{ name: p, port: {PORT} }}] }}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{ name: web-1, namespace: test, labels: {{ kubernetes.io/service-name: web }} }}\n\
         addressType: IPv4\nendpoints: [{{ addresses: [\"127.0.0.1\"] }}]\n\
         ports: [{{ name: p, port: {} }}]\n",
        a.addr.port()
    );
    write_atomic(&manifests.join("web.yaml"), &docs).unwrap();
    wait_reload(&mut reloads, |s| s.applied >= 1).await;

    strait::assert_eventually!(
        strait::test_util::get(SocketAddr::new(vip, PORT), "/")
            .await
            .is_ok(),
        250,
        "listener for {vip}:{PORT}"
    );
    let reply = strait::test_util::get(SocketAddr::new(vip, PORT), "/")
        .await
        .unwrap();
    assert_eq!(reply.header("x-backend"), "a");
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let a = start_backend("a", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let b = start_backend("b", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    // The layout of a mounted ConfigMap: strait.yaml -> ..data/strait.yaml, ..data -> ..v1
    let dir = tempfile::tempdir().unwrap();
    let with = |addr| proxy_yaml("", &service_yaml("web", "test", vip, PORT, None, &[addr]));
    let version_dir = |name: &str, addr| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("strait.yaml"), with(addr)).unwrap();
    };
    version_dir("..v1", a.addr);
    symlink("..v1", dir.path().join("..data")).unwrap();
    symlink("..data/strait.yaml", dir.path().join("strait.yaml")).unwrap();
    let proxy = TestProxy::from_file(&dir.path().join("strait.yaml"))
        .await
        .unwrap();
    let mut reloads = proxy.reloads.clone().unwrap();
    let vipp = SocketAddr::new(vip, PORT);
    assert_eq!(
        strait::test_util::get(vipp, "/")
            .await
            .unwrap()
            .header("x-backend"),
        "a"
    );

    // Kubernetes writes a new version directory, then renames a new symlink over ..data.
    version_dir("..v2", b.addr);
    symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    wait_reload(&mut reloads, |s| s.applied >= 1).await;
    assert_eq!(
        strait::test_util::get(vipp, "/")
            .await
            .unwrap()
            .header("x-backend"),
        "b"
    );
    let _ = Path::new("");
}
