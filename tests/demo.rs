//! `strait demo`, the README's first command, end to end: every section
//! shows what it claims, and no request fails on the way.

#![allow(clippy::unwrap_used)]

#[tokio::test]
async fn the_demo_shows_each_policy_and_mesh_mtls() {
    let mut out = Vec::new();
    strait::demo::run(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();

    // ActiveActive reaches all three clusters.
    for cluster in [
        "httpbin@cluster-1",
        "httpbin@cluster-2",
        "httpbin@cluster-3",
    ] {
        assert!(text.contains(cluster), "{cluster} missing:\n{text}");
    }
    // FailOver and fail-back cost no request.
    assert!(!text.contains("failed ("), "a request failed:\n{text}");
    assert!(text.contains("payments@cluster-3"), "{text}");
    // Locality refuses to leave the cluster.
    assert!(text.contains("503, x-strait-error:"), "{text}");
    // Mesh mTLS: the app sees the caller; the export refuses another.
    assert!(
        text.contains("200 from ledger@cluster-3")
            && text.contains("URI=spiffe://cluster.local/ns/demo/sa/frontend"),
        "{text}"
    );
    assert!(
        text.contains("403, x-strait-error: spiffe://cluster.local/ns/demo/sa/frontend may not call audit.demo"),
        "{text}"
    );
}
