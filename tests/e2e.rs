//! Root-only end-to-end tests: the real `strait` binary in network
//! namespaces, with iptables capture, python's HTTP server and curl.
//!
//! Every test here is `#[ignore]`d so that plain `cargo test` passes without
//! root; `.ci/run` runs them with `cargo test -- --ignored --test-threads=1`
//! after installing the tools. See `tests/README.md`.
//!
//! Modules:
//! - `netns`: the harness (hosts, links, processes, bounded waits);
//! - `sidecar`: strait as a pod's sidecar (config, capture rules, metrics);
//! - `capture`: transparent capture scenarios;
//! - `lifecycle`: SIGTERM and drain;
//! - `traffic_policy`: FailOver and ActiveActive across cluster hosts;
//! - `dns`: the DNS shim behind the pod's port-53 redirect, for a service
//!   that exists only in another cluster;
//! - `mtls`: two pods in two clusters over mesh mTLS, and the inbound
//!   plaintext capture (permissive, then strict).
//!
//! To add scenarios, add `tests/e2e/NAME.rs` and a `#[path]` line below.

#[path = "e2e/netns.rs"]
mod netns;
#[path = "e2e/sidecar.rs"]
mod sidecar;

#[path = "e2e/capture.rs"]
mod capture;
#[path = "e2e/dns.rs"]
mod dns;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/mtls.rs"]
mod mtls;
#[path = "e2e/traffic_policy.rs"]
mod traffic_policy;
