//! The admin server: metrics exposition, readiness, liveness, config dump,
//! and its answers to requests it does not serve.

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

use std::net::SocketAddr;

use bytes::Bytes;
use strait::test_util::{
    get, proxy_yaml, request, service_yaml, start_backend, unique_vip, TestProxy,
};

#[tokio::test]
async fn live_and_ready_answer_200_once_running() {
    let proxy = TestProxy::from_yaml(&proxy_yaml("", "  []\n").replace("mesh:\n  []", "mesh: []"))
        .await
        .unwrap();
    let live = get(proxy.admin, "/live").await.unwrap();
    assert_eq!(live.status, 200);
    strait::assert_eventually!(
        get(proxy.admin, "/ready").await.unwrap().status == 200,
        100,
        "ready"
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_are_prometheus_text_on_both_paths() {
    let backend = start_backend("a", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let mesh = service_yaml("web", "shop", vip, 8080, Some("http"), &[backend.addr]);
    let proxy = TestProxy::from_yaml(&proxy_yaml("", &mesh)).await.unwrap();
    assert_eq!(
        get(SocketAddr::new(vip, 8080), "/").await.unwrap().status,
        200
    );

    for path in ["/metrics", "/stats/prometheus"] {
        let page = get(proxy.admin, path).await.unwrap();
        assert_eq!(page.status, 200);
        assert!(page
            .header("content-type")
            .starts_with("text/plain; version=0.0.4"));
        let text = page.text();
        assert!(
            text.contains("# TYPE strait_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE strait_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "strait_requests_total{cluster=\"cluster-1\",code=\"200\",code_class=\"2xx\",direction=\"outbound\",namespace=\"shop\",service=\"web\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("strait_tcp_connections_opened_total{direction=\"outbound\",namespace=\"shop\",service=\"web\"} 1"), "{text}");
    }
}

#[tokio::test]
async fn config_dump_shows_the_effective_config_and_mesh() {
    let backend = start_backend("a", "127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let vip = unique_vip();
    let mesh = service_yaml("web", "shop", vip, 8080, Some("http"), &[backend.addr]);
    let proxy = TestProxy::from_yaml(&proxy_yaml("outbound: { connectTimeout: 750ms }", &mesh))
        .await
        .unwrap();
    let dump = get(proxy.admin, "/config_dump").await.unwrap();
    assert_eq!(dump.status, 200);
    assert_eq!(dump.header("content-type"), "application/json");
    let json: serde_json::Value = serde_json::from_slice(&dump.body).unwrap();
    assert_eq!(json["config"]["outbound"]["connectTimeout"], "750ms");
    assert_eq!(json["config"]["node"]["cluster"], "cluster-1");
    let service = &json["mesh"]["services"][0];
    assert_eq!(service["name"]["name"], "web");
    assert_eq!(service["vips"][0], vip.to_string());
    let cluster = &service["ports"][0]["clusters"][0];
    assert_eq!(cluster["cluster"], "cluster-1");
    assert_eq!(cluster["local"], true);
    assert_eq!(cluster["endpoints"][0]["addr"], backend.addr.to_string());
}

#[tokio::test]
async fn unknown_paths_get_404_and_other_methods_405() {
    let proxy = TestProxy::from_yaml("listeners: { admin: \"127.0.0.1:0\", outbound: null }\n")
        .await
        .unwrap();
    assert_eq!(get(proxy.admin, "/nope").await.unwrap().status, 404);
    let post = request(proxy.admin, http::Method::POST, "/metrics", Bytes::new())
        .await
        .unwrap();
    assert_eq!(post.status, 405);
}
