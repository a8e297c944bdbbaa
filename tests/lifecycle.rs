//! Startup and shutdown: a port conflict fails startup with a clear error;
//! shutdown stops accepting, lets in-flight requests finish within the grace
//! period, reports draining on /ready; SIGTERM makes the binary exit 0.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use strait::config::{parse_str, MapOverrides};
use strait::test_util::{get, proxy_yaml, service_yaml, start_backend, unique_vip, TestProxy};
use strait::App;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn a_port_conflict_fails_startup_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = format!("listeners: {{ admin: \"{addr}\", outbound: null }}\n");
    let loaded = parse_str(&yaml, std::path::Path::new("."), &MapOverrides::default()).unwrap();
    let err = App::new(loaded).bind().await.err().expect("bind must fail");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("cannot bind admin listener {addr}")),
        "{text}"
    );

    let yaml = format!("listeners: {{ admin: \"127.0.0.1:0\", outbound: \"{addr}\" }}\n");
    let loaded = parse_str(&yaml, std::path::Path::new("."), &MapOverrides::default()).unwrap();
    let err = App::new(loaded).bind().await.err().expect("bind must fail");
    assert!(format!("{err:#}").contains("cannot bind outbound listener"));
}

#[tokio::test]
async fn a_conflicting_service_vip_fails_startup() {
    let taken = TcpListener::bind(SocketAddr::new(unique_vip(), 0))
        .await
        .unwrap();
    let addr = taken.local_addr().unwrap();
    let mesh = service_yaml("web", "x", addr.ip(), addr.port(), None, &[]);
    let loaded = parse_str(
        &proxy_yaml("", &mesh),
        std::path::Path::new("."),
        &MapOverrides::default(),
    )
    .unwrap();
    let err = App::new(loaded).bind().await.err().expect("bind must fail");
    assert!(format!("{err:#}").contains(&format!("cannot bind service listener {addr}")));
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let backend = start_backend("slow", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let mesh = service_yaml("web", "x", vip, 8080, Some("http"), &[backend.addr]);
    let proxy = TestProxy::from_yaml(&proxy_yaml("runtime: { drainGracePeriod: 10s }", &mesh))
        .await
        .unwrap();
    let admin = proxy.admin;
    let target = SocketAddr::new(vip, 8080);

    // A request that is in flight when shutdown starts.
    let in_flight = tokio::spawn(async move { get(target, "/delay/400").await });
    strait::assert_eventually!(backend.requests() == 1, 250, "request reached the backend");

    let shutdown = tokio::spawn(proxy.shutdown());
    strait::assert_eventually!(
        get(admin, "/ready")
            .await
            .map(|r| r.text())
            .unwrap_or_default()
            == "not ready: draining\n",
        250,
        "/ready reports draining"
    );
    strait::assert_eventually!(
        TcpStream::connect(target).await.is_err(),
        250,
        "listener closed"
    );

    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "in-flight request completes");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("drain finished")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_drain_grace_period_bounds_shutdown() {
    let backend = start_backend("stuck", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let mesh = service_yaml("web", "x", vip, 8080, Some("http"), &[backend.addr]);
    let proxy = TestProxy::from_yaml(&proxy_yaml("runtime: { drainGracePeriod: 200ms }", &mesh))
        .await
        .unwrap();
    let target = SocketAddr::new(vip, 8080);
    let in_flight = tokio::spawn(async move { get(target, "/delay/30000").await });
    strait::assert_eventually!(backend.requests() == 1, 250, "request reached the backend");

    // Shutdown returns although the request is still running.
    tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("shutdown bounded by the grace period")
        .unwrap();
    assert!(!in_flight.is_finished());
    in_flight.abort();
}

#[tokio::test]
async fn sigterm_makes_the_binary_drain_and_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("strait.yaml");
    std::fs::write(
        &path,
        format!("listeners: {{ admin: \"{admin}\", outbound: null }}\nlog: {{ format: json }}\n"),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("proxy")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    strait::assert_eventually!(
        get(admin, "/ready").await.is_ok_and(|r| r.status == 200),
        250,
        "strait ready on {admin}"
    );
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    // JSON logs: one object per line, with the startup and drain lines.
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    assert!(stderr.contains("admin listening"), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
}
