//! The outbound HTTP path end to end: a real client on loopback connects to a
//! service VIP the proxy listens on, and the proxy forwards to real upstreams.
//! Covers keep-alive and balancing, body framing (chunked, large, `Expect:
//! 100-continue`), HTTP/2 streams and trailers, upgrades, hop-by-hop headers,
//! curl, error responses and request metrics. Malformed input is in
//! `malformed_input.rs`.

// clippy.toml allows unwrap in #[test] functions only; the helpers here
// and in support/ are test code too.
#![allow(clippy::unwrap_used)]

#[path = "support/http_client.rs"]
mod http_client;

use std::process::Output;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Method;
use http_body_util::BodyExt;
use strait::test_util::start_backend;
use tokio::io::AsyncWriteExt;

use http_client::{
    closed_port, empty, full, get, h1, h2, new_vip, read_reply, request, request_h2, send1, send2,
    streamed, within, Mesh, RawConn, RecordingUpstream,
};

async fn backend(name: &str, h2: bool) -> strait::test_util::Backend {
    start_backend(name, "127.0.0.1:0".parse().unwrap(), h2)
        .await
        .unwrap()
}

#[tokio::test]
async fn one_client_connection_is_balanced_round_robin_over_reused_upstream_connections() {
    let a = RecordingUpstream::start("a").await;
    let b = RecordingUpstream::start("b").await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service_balanced("web", vip, Some("http"), "round-robin")
        .endpoint("web", a.addr.port())
        .endpoint("web", b.addr.port())
        .start()
        .await;

    let mut client = h1(vip).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        let rsp = send1(&mut client, get(vip, "/")).await;
        assert_eq!(rsp.status, 200);
        answers.push(rsp.text());
    }

    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {answers:?}");
    }
    assert_eq!(a.seen().len(), 10, "requests to a");
    assert_eq!(b.seen().len(), 10, "requests to b");
    // Sequential requests never need a second connection to the same
    // upstream: each response was read to the end before the next request.
    assert_eq!(a.connections(), 1, "upstream connections to a");
    assert_eq!(b.connections(), 1, "upstream connections to b");
    assert_eq!(
        proxy
            .metric("strait_tcp_connections_opened_total{service=\"web\"}")
            .await,
        1.0,
        "all 20 requests came on one client connection"
    );
}

#[tokio::test]
async fn chunked_bodies_stream_through_both_ways_without_content_length() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;
    let mut client = h1(vip).await;

    // Each chunk comes back through the proxy before the next one is sent:
    // neither direction is buffered to the end of the body.
    let (tx, body) = streamed();
    within("h1 connection ready", client.ready()).await.unwrap();
    let rsp = within(
        "echo response head",
        client.send_request(request(Method::POST, vip, "/echo", body)),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers().get(CONTENT_LENGTH), None);
    assert_eq!(rsp.headers()[TRANSFER_ENCODING], "chunked");
    let mut rsp_body = rsp.into_body();
    let mut echoed = Vec::new();
    for i in 0..5 {
        let chunk = format!("chunk {i} of five;");
        tx.send(Bytes::from(chunk.clone())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = within("echoed chunk", rsp_body.frame())
                .await
                .expect("body ended early")
                .unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(String::from_utf8(got.clone()).unwrap(), chunk);
        echoed.extend(got);
    }
    drop(tx);
    assert!(
        within("end of echo", rsp_body.frame()).await.is_none(),
        "echo ends when the request body ends"
    );
    let whole: String = (0..5).map(|i| format!("chunk {i} of five;")).collect();
    assert_eq!(echoed, whole.as_bytes());

    // The upstream receives the request chunked as well.
    let (tx, body) = streamed();
    tx.send(Bytes::from_static(b"abc")).await.unwrap();
    drop(tx);
    let seen = send1(&mut client, request(Method::POST, vip, "/headers", body)).await;
    assert_eq!(seen.status, 200);
    let lines = seen.text();
    assert!(
        lines.contains("transfer-encoding: chunked\n"),
        "upstream saw: {lines}"
    );
    assert!(!lines.contains("content-length"), "upstream saw: {lines}");
}

#[tokio::test]
async fn eight_mebibyte_bodies_pass_both_ways_byte_exact() {
    const SIZE: usize = 8 * 1024 * 1024;
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;
    // A pattern whose period (251) divides no buffer size, so a dropped,
    // repeated or reordered block shows.
    let data: Bytes = (0..SIZE)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut client = h1(vip).await;

    let up = send1(
        &mut client,
        request(Method::POST, vip, "/echo-length", full(data.clone())),
    )
    .await;
    assert_eq!(up.status, 200);
    assert_eq!(up.text(), format!("{SIZE}\n"));

    let down = send1(
        &mut client,
        request(Method::POST, vip, "/echo", full(data.clone())),
    )
    .await;
    assert_eq!(down.status, 200);
    assert_eq!(down.body.len(), SIZE);
    let first_difference = down.body.iter().zip(data.iter()).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "echoed body differs");
}

#[tokio::test]
async fn expect_100_continue_gets_the_interim_response_before_the_body_is_sent() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let mut conn = RawConn::connect(vip).await;
    conn.write(
        b"POST /echo-length HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await;
    // The body is withheld until the proxy says to go on; without the
    // interim response this read would time out.
    let interim = conn.read_response().await.expect("an interim response");
    assert_eq!(interim.status, 100, "{}", interim.head);

    conn.write(b"hello world").await;
    let rsp = conn.read_response().await.expect("the final response");
    assert_eq!(rsp.status, 200, "{}", rsp.head);
    assert_eq!(rsp.body, b"11\n");
}

#[tokio::test]
async fn http2_prior_knowledge_carries_concurrent_streams_on_one_connection() {
    const STREAMS: usize = 8;
    let web = backend("web", true).await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, Some("http2"))
        .endpoint("web", web.addr.port())
        .start()
        .await;
    let client = h2(vip).await;

    // Open every stream with a request body that has not ended, and wait
    // for every response head: all STREAMS are open at the same time.
    let mut bodies = Vec::new();
    let mut heads = Vec::new();
    for _ in 0..STREAMS {
        let (tx, body) = streamed();
        let mut sender = client.clone();
        within("h2 ready", sender.ready()).await.unwrap();
        heads.push(tokio::spawn(sender.send_request(request_h2(
            Method::POST,
            vip,
            "/echo",
            body,
        ))));
        bodies.push(tx);
    }
    let mut responses = Vec::new();
    for head in heads {
        let rsp = within("h2 response head", head).await.unwrap().unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.version(), http::Version::HTTP_2);
        responses.push(rsp);
    }
    for (i, tx) in bodies.into_iter().enumerate() {
        tx.send(Bytes::from(format!("stream {i}"))).await.unwrap();
    }
    for (i, rsp) in responses.into_iter().enumerate() {
        let reply = read_reply(rsp).await;
        assert_eq!(reply.text(), format!("stream {i}"));
    }

    assert_eq!(web.requests(), STREAMS as u64);
    assert_eq!(
        proxy
            .metric("strait_tcp_connections_opened_total{service=\"web\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn concurrent_first_http2_requests_share_one_upstream_connection() {
    const STREAMS: usize = 8;
    let upstream = RecordingUpstream::start("web").await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http2"))
        .endpoint("web", upstream.addr.port())
        .start()
        .await;
    let client = h2(vip).await;

    // All streams start before the proxy has any upstream connection.
    let requests: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                send2(
                    &mut client,
                    request_h2(Method::GET, vip, &format!("/{i}"), empty()),
                )
                .await
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().status, 200);
    }

    assert_eq!(upstream.seen().len(), STREAMS);
    assert_eq!(
        upstream.connections(),
        1,
        "HTTP/2 streams are multiplexed on one upstream connection"
    );
}

#[tokio::test]
async fn concurrent_first_http2_requests_to_a_refused_endpoint_all_answer_502() {
    const STREAMS: usize = 8;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, Some("http2"))
        .endpoint("web", closed_port().await)
        .start()
        .await;
    let client = h2(vip).await;

    // Requests that waited for a connect that failed get an answer of
    // their own, not a hang.
    let requests: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                send2(
                    &mut client,
                    request_h2(Method::GET, vip, &format!("/{i}"), empty()),
                )
                .await
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().status, 502);
    }
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{service=\"web\",reason=\"connect_refused\"}")
            .await,
        STREAMS as f64
    );
}

#[tokio::test]
async fn grpc_trailers_reach_an_http2_client() {
    let web = backend("web", true).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http2"))
        .endpoint("web", web.addr.port())
        .start()
        .await;
    let mut client = h2(vip).await;

    let mut req = request_h2(Method::POST, vip, "/trailers", empty());
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    within("h2 ready", client.ready()).await.unwrap();
    let rsp = within("h2 response", client.send_request(req))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "application/grpc");

    let mut body = rsp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = within("body frame", body.frame()).await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => trailers = Some(frame.into_trailers().unwrap()),
        }
    }
    assert_eq!(data, b"web\n");
    let trailers = trailers.expect("trailers after the data");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
}

#[tokio::test]
async fn upgrade_switches_protocols_and_bytes_round_trip() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let mut conn = RawConn::connect(vip).await;
    conn.write(
        b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let switched = conn.read_response().await.expect("a 101");
    assert_eq!(switched.status, 101, "{}", switched.head);
    assert_eq!(switched.header("upgrade"), Some("websocket"));

    for msg in [&b"first frame"[..], &[0u8, 255, 1, 254, 13, 10, 13, 10][..]] {
        conn.write(msg).await;
        assert_eq!(conn.read_exact(msg.len()).await, msg);
    }
    // Half-close travels through: the echo ends, and so does the connection.
    conn.stream.shutdown().await.unwrap();
    assert_eq!(conn.read_to_close().await, b"");
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_proxy_and_end_to_end_headers_pass() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;
    let mut client = h1(vip).await;

    let mut req = get(vip, "/headers");
    let h = req.headers_mut();
    h.insert("connection", "x-foo".parse().unwrap());
    h.insert("x-foo", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert("x-ordinary", "kept".parse().unwrap());
    let rsp = send1(&mut client, req).await;
    assert_eq!(rsp.status, 200);

    let seen: Vec<&str> = rsp
        .body
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    for gone in ["x-foo", "keep-alive", "connection"] {
        assert!(
            !seen.iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    for kept in ["te: trailers", "x-ordinary: kept"] {
        assert!(seen.contains(&kept), "{kept} missing upstream: {seen:?}");
    }
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_response() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    // As `nc -N` or a shell's `exec 3<>/dev/tcp` do: send, then shut down
    // the write side while the response is still being made upstream.
    let mut conn = RawConn::connect(vip).await;
    conn.write(b"GET /delay/200 HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    within("shutdown", conn.stream.shutdown()).await.unwrap();
    let rsp = conn.read_response().await.expect("a response, not a close");
    assert_eq!(
        (rsp.status, rsp.body.as_slice()),
        (200, b"web\n".as_slice())
    );
}

/// Runs curl with a bound on time; curl must be on PATH (CI installs it).
async fn curl(args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "10"])
        .args(args);
    // The crate's tokio has no `process` feature; run curl off the runtime thread.
    within("curl", tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .expect("curl runs")
}

#[tokio::test]
async fn curl_gets_an_http11_backend_through_the_vip() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, None)
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let out = curl(&[
        "-w",
        "%{http_version} %{http_code}",
        &format!("http://{vip}/"),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n1.1 200");
}

#[tokio::test]
async fn curl_with_http2_prior_knowledge_gets_an_http2_backend() {
    let web = backend("grpc-web", true).await;
    let vip = new_vip();
    let _proxy = Mesh::default()
        .service("web", vip, Some("http2"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let out = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "%{http_version} %{http_code}",
        &format!("http://{vip}/"),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "grpc-web\n2 200");
    assert_eq!(web.requests(), 1);
}

#[tokio::test]
async fn service_without_endpoints_answers_503_naming_the_service() {
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .start()
        .await;

    let rsp = send1(&mut h1(vip).await, get(vip, "/")).await;
    assert_eq!(rsp.status, 503);
    let error = rsp.header("x-strait-error");
    assert!(error.contains("web.test"), "x-strait-error: {error:?}");
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{service=\"web\",reason=\"no_endpoint\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn refused_upstream_connection_answers_502() {
    let port = closed_port().await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", port)
        .start()
        .await;

    let rsp = send1(&mut h1(vip).await, get(vip, "/")).await;
    assert_eq!(rsp.status, 502, "{}", rsp.text());
    assert!(rsp.header("x-strait-error").contains(&port.to_string()));
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{service=\"web\",reason=\"connect_refused\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "strait_upstream_connect_errors_total{service=\"web\",reason=\"connect_refused\"}"
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn response_slower_than_the_request_timeout_answers_504() {
    let web = backend("web", false).await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .outbound("{ connectTimeout: 1s, requestTimeout: 300ms }")
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let mut client = h1(vip).await;
    let rsp = send1(&mut client, get(vip, "/delay/2000")).await;
    assert_eq!(rsp.status, 504, "{}", rsp.text());
    assert_eq!(
        proxy
            .metric("strait_proxy_errors_total{service=\"web\",reason=\"response_timeout\"}")
            .await,
        1.0
    );
    // The client connection is still usable after the proxy's own answer.
    let rsp = send1(&mut client, get(vip, "/")).await;
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn successful_requests_are_counted_by_service_cluster_and_code() {
    const N: usize = 7;
    let web = backend("web", false).await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, Some("http"))
        .endpoint("web", web.addr.port())
        .start()
        .await;

    let mut client = h1(vip).await;
    for _ in 0..N {
        assert_eq!(send1(&mut client, get(vip, "/")).await.status, 200);
    }
    // One on a second connection: the count is per service, not per connection.
    assert_eq!(send1(&mut h1(vip).await, get(vip, "/")).await.status, 200);

    let ok = "service=\"web\",namespace=\"test\",code=\"200\",cluster=\"cluster-1\"";
    assert_eq!(
        proxy
            .metric(&format!(
                "strait_requests_total{{direction=\"outbound\",{ok}}}"
            ))
            .await,
        (N + 1) as f64
    );
    assert_eq!(
        proxy
            .metric(&format!("strait_request_duration_seconds_count{{{ok}}}"))
            .await,
        (N + 1) as f64
    );
}

#[tokio::test]
async fn detected_port_serves_http1_and_http2_clients() {
    let upstream = RecordingUpstream::start("web").await;
    let vip = new_vip();
    let proxy = Mesh::default()
        .service("web", vip, None)
        .endpoint("web", upstream.addr.port())
        .start()
        .await;

    let one = send1(&mut h1(vip).await, get(vip, "/one")).await;
    assert_eq!((one.status, one.text().as_str()), (200, "web\n"));
    let two = send2(
        &mut h2(vip).await,
        request_h2(Method::GET, vip, "/two", empty()),
    )
    .await;
    assert_eq!((two.status, two.text().as_str()), (200, "web\n"));

    // Each request went upstream in the protocol the client spoke.
    let seen: Vec<_> = upstream
        .seen()
        .into_iter()
        .map(|s| (s.path, s.version))
        .collect();
    assert_eq!(
        seen,
        [
            ("/one".to_owned(), http::Version::HTTP_11),
            ("/two".to_owned(), http::Version::HTTP_2)
        ]
    );
    for protocol in ["http1", "http2"] {
        let series = format!("strait_protocol_detections_total{{protocol=\"{protocol}\"}}");
        assert_eq!(proxy.metric(&series).await, 1.0, "{series}");
    }
}
