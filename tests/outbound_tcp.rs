//! Opaque TCP through the proxy: byte copying with half-close, protocol
//! detection falling back to TCP (including server-speaks-first), and
//! refusal when there is nowhere to go.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

mod support {
    pub mod tcp;
}

use std::net::SocketAddr;
use std::time::Duration;

use strait::test_util::{proxy_yaml, service_yaml, unique_vip, TestProxy};
use support::tcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u16 = 7000;

async fn proxy_for(
    app_protocol: Option<&str>,
    endpoints: &[SocketAddr],
    settings: &str,
) -> (TestProxy, SocketAddr) {
    let vip = unique_vip();
    let mesh = service_yaml("db", "data", vip, PORT, app_protocol, endpoints);
    let proxy = TestProxy::from_yaml(&proxy_yaml(settings, &mesh))
        .await
        .unwrap();
    (proxy, SocketAddr::new(vip, PORT))
}

/// Reads until EOF, failing the test instead of hanging.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("read to end timed out")
        .expect("read");
    out
}

#[tokio::test]
async fn opaque_tcp_copies_bytes_both_ways_and_keeps_half_close() {
    let backend = tcp::echo_then_bye().await;
    let (proxy, vip) = proxy_for(Some("tcp"), &[backend], "").await;

    let mut s = TcpStream::connect(vip).await.unwrap();
    s.write_all(b"hello ").await.unwrap();
    s.write_all(b"world").await.unwrap();
    // Half-close: we are done sending, but still want the reply.
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"hello worldbye");

    let page = proxy.metrics().await;
    let rx =
        strait::test_util::metric_value(&page, "strait_tcp_received_bytes_total{service=\"db\"}");
    let tx = strait::test_util::metric_value(&page, "strait_tcp_sent_bytes_total{service=\"db\"}");
    assert_eq!(rx, 11.0, "{page}");
    assert_eq!(tx, 14.0, "{page}");
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn undetected_protocols_are_forwarded_as_opaque_tcp() {
    let backend = tcp::echo_then_bye().await;
    let (proxy, vip) = proxy_for(None, &[backend], "").await;
    let mut s = TcpStream::connect(vip).await.unwrap();
    // A TLS ClientHello-like prefix: not HTTP.
    s.write_all(b"\x16\x03\x01\x00\x05hello\n").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"\x16\x03\x01\x00\x05hello\nbye");
    assert_eq!(
        proxy
            .metric("strait_protocol_detections_total{protocol=\"opaque\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn server_speaks_first_protocols_work_after_the_detect_timeout() {
    let backend = tcp::speaks_first(b"220 ready\r\n").await;
    let (proxy, vip) = proxy_for(None, &[backend], "outbound: { detectTimeout: 100ms }").await;
    let mut s = TcpStream::connect(vip).await.unwrap();
    // The client waits for the greeting without sending anything.
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
        .await
        .expect("greeting never arrived")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    s.write_all(b"QUIT\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"QUIT\r\n");
    drop(proxy);
}

#[tokio::test]
async fn a_service_without_endpoints_refuses_tcp_connections() {
    let (proxy, vip) = proxy_for(Some("tcp"), &[], "").await;
    let mut s = TcpStream::connect(vip).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("connection left open");
    // Reset (an error) or, at worst, EOF: never data.
    assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{reason=\"no_endpoint\",service=\"db\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_resets_the_client_and_is_counted() {
    let dead = tcp::closed_port().await;
    let (proxy, vip) = proxy_for(Some("tcp"), &[dead], "").await;
    let mut s = TcpStream::connect(vip).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("connection left open");
    assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    assert_eq!(
        proxy
            .metric(
                "strait_upstream_connect_errors_total{reason=\"connect_refused\",service=\"db\"}"
            )
            .await,
        1.0
    );
    // Counted when the connection task ends, just after the reset is sent.
    strait::assert_eventually!(
        proxy
            .metric("strait_tcp_connections_closed_total{service=\"db\"}")
            .await
            == 1.0,
        100,
        "connection close counted"
    );
}
