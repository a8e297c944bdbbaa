//! Malformed and hostile input on the outbound path, written as raw bytes:
//! garbage, request smuggling, oversized heads, slow clients. Each test
//! checks what reached the upstream as well as what the client got, and
//! that the proxy keeps serving. Every read is bounded, so a hang fails.

// clippy.toml allows unwrap in #[test] functions only; the helpers here
// and in support/ are test code too.
#![allow(clippy::unwrap_used)]

#[path = "support/http_client.rs"]
mod http_client;

use std::time::Duration;

use strait::assert_eventually;
use strait::test_util::start_backend;
use tokio::time::Instant;

use http_client::{get, h1, new_vip, send1, Mesh, RawConn, RecordingUpstream, TcpEcho};

async fn backend(name: &str) -> strait::test_util::Backend {
    start_backend(name, "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap()
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn garbage_on_an_http_port_is_rejected_and_the_proxy_keeps_serving() {
    let web = backend("web").await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let mut conn = RawConn::connect(vip).await;
    conn.write(b"\x00\x01\x02\xff not http at all\r\n\r\n")
        .await;
    let answer = conn.read_to_close().await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400 "),
        "expected 400 or a close, got {:?}",
        show(&answer)
    );
    assert_eq!(web.requests(), 0, "garbage must not reach the upstream");
    assert_eventually!(
        proxy
            .metric("strait_http_connection_errors_total{kind=\"malformed\"}")
            .await
            == 1.0,
        100,
        "the malformed connection is counted"
    );

    let rsp = send1(&mut h1(vip).await, get(vip, "/")).await;
    assert_eq!((rsp.status, rsp.text().as_str()), (200, "web\n"));
}

#[tokio::test]
async fn content_length_with_chunked_is_never_forwarded_ambiguously() {
    // A request an upstream trusting Content-Length would split in two:
    // 4 bytes of body, then a request hidden in the chunk data. After the
    // chunked body comes a second, pipelined request that must not be
    // served on a connection whose framing was ambiguous (RFC 9112 §6.3).
    let hidden = "GET /smuggled-in-body HTTP/1.1\r\nHost: web\r\n\r\n";
    let chunked = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    let pipelined = "GET /smuggled-after-body HTTP/1.1\r\nHost: web\r\n\r\n";
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let upstream = RecordingUpstream::start("web").await;
        let vip = new_vip();
        let _proxy = Mesh::default()
            .service("web", vip, Some("http"))
            .endpoint("web", upstream.addr.port())
            .start()
            .await;

        let mut conn = RawConn::connect(vip).await;
        conn.write(
            format!("POST /upload HTTP/1.1\r\nHost: web\r\n{framing}\r\n\r\n{chunked}{pipelined}")
                .as_bytes(),
        )
        .await;

        // Either rejected outright, or answered once (framed by
        // Transfer-Encoding) and closed: never a second answer.
        let first = conn.read_response().await;
        if let Some(rsp) = &first {
            assert!(
                rsp.status == 400 || rsp.status == 200,
                "{framing}: unexpected {}",
                rsp.head
            );
        }
        let rest = conn.read_to_close().await;
        assert_eq!(
            show(&rest),
            "",
            "{framing}: the connection must close after at most one response"
        );

        let seen = upstream.seen();
        assert!(
            seen.iter().all(|s| !s.path.starts_with("/smuggled")),
            "{framing}: smuggled request reached the upstream: {seen:?}"
        );
        for s in &seen {
            assert_eq!(s.path, "/upload");
            assert!(
                !s.headers.contains_key("content-length"),
                "{framing}: forwarded with Content-Length: {s:?}"
            );
            assert_eq!(
                s.body_len,
                hidden.len(),
                "{framing}: body framed by Transfer-Encoding"
            );
        }
        if first.is_some_and(|r| r.status == 200) {
            assert_eq!(seen.len(), 1, "{framing}: forwarded once");
        }
    }
}

#[tokio::test]
async fn oversized_header_block_is_rejected_with_431_and_counted() {
    let web = backend("web").await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .http("{ headerReadTimeout: 5s, maxHeaderBytes: 16384 }")
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let mut conn = RawConn::connect(vip).await;
    let big = "a".repeat(20 * 1024);
    // The proxy may close before it has read all of this; that is allowed.
    let request = format!("GET / HTTP/1.1\r\nHost: web\r\nx-big: {big}\r\n\r\n");
    let _ = tokio::io::AsyncWriteExt::write_all(&mut conn.stream, request.as_bytes()).await;
    let answer = conn.read_to_close().await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431 "),
        "expected 431 or a close, got {:?}",
        show(&answer)
    );
    assert_eq!(web.requests(), 0);
    assert_eventually!(
        proxy
            .metric("strait_http_connection_errors_total{kind=\"header_too_large\"}")
            .await
            == 1.0,
        100,
        "the oversized head is counted"
    );

    // A head just under the limit still gets through.
    let mut req = get(vip, "/");
    req.headers_mut()
        .insert("x-big", "a".repeat(12 * 1024).parse().unwrap());
    assert_eq!(send1(&mut h1(vip).await, req).await.status, 200);
}

#[tokio::test]
async fn client_stalling_mid_headers_is_disconnected_while_others_are_served() {
    const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(500);
    let web = backend("web").await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .http("{ headerReadTimeout: 500ms }")
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let start = Instant::now();
    let mut stalled = RawConn::connect(vip).await;
    stalled
        .write(b"GET / HTTP/1.1\r\nHost: web\r\nx-partial: ")
        .await;

    // While that head is incomplete, another connection is served.
    let rsp = send1(&mut h1(vip).await, get(vip, "/")).await;
    assert_eq!((rsp.status, rsp.text().as_str()), (200, "web\n"));

    let answer = stalled.read_to_close().await;
    let waited = start.elapsed();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408 "),
        "expected a close, got {:?}",
        show(&answer)
    );
    assert!(
        waited >= HEADER_READ_TIMEOUT,
        "closed after {waited:?}, before the header read timeout"
    );
    assert_eq!(web.requests(), 1, "only the complete request went upstream");
    assert_eventually!(
        proxy
            .metric("strait_http_connection_errors_total{kind=\"header_timeout\"}")
            .await
            == 1.0,
        100,
        "the stalled connection is counted"
    );
}

#[tokio::test]
async fn garbage_on_a_detected_port_is_forwarded_as_opaque_tcp() {
    let echo = TcpEcho::start().await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .outbound("{ connectTimeout: 1s, detectTimeout: 200ms }")
        .service("db", vip, None)
        .endpoint("db", echo.addr.port())
        .start()
        .await;

    let mut conn = RawConn::connect(vip).await;
    // Not a request line, so no wait for the detect timeout.
    let garbage = b"\x16\x03\x01\x00\xa5 binary hello\r\n\x00\xff";
    conn.write(garbage).await;
    assert_eq!(conn.read_exact(garbage.len()).await, garbage);
    // After detection, bytes keep flowing both ways untouched.
    let more = b"GET / HTTP/1.1\r\n\r\n";
    conn.write(more).await;
    assert_eq!(conn.read_exact(more.len()).await, more);

    assert_eq!(
        proxy
            .metric("strait_protocol_detections_total{protocol=\"opaque\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy.metric("strait_http_connection_errors_total").await,
        0.0
    );
}
