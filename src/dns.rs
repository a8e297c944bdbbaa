//! The DNS shim (architecture §7): a UDP and TCP DNS server on `dns.listen`
//! (default `127.0.0.1:15053`) that answers names of mesh services from the
//! discovery snapshot and forwards every other name to the pod's upstream
//! resolvers.
//!
//! - `server.rs`: binds the UDP socket and TCP listener (one port), runs the
//!   receive loops, bounds concurrency, stops on drain.
//! - `handler.rs`: hickory's `RequestHandler`, implemented directly: checks
//!   the request (opcode, question count, EDNS version), answers from the
//!   mesh, asks the on-demand hook, or forwards; one place builds responses.
//! - `resolver.rs` and `index.rs`: mesh answers from an index built once per
//!   snapshot (`SVC.NS.svc.cluster.local`, `.clusterset.local`, SRV for
//!   named ports, per-pod names, and the search-domain expansions of `SVC`,
//!   `SVC.NS`, `SVC.NS.svc` answered in one round trip with a CNAME).
//! - `forward.rs` and `cache.rs`: upstream queries with hickory's UDP and TCP
//!   clients (EDNS 1232, TCP retry of truncated answers, failover, SERVFAIL
//!   on timeout) and a TTL-honouring cache of whole answers.
//! - `on_demand.rs`: the hook a query for an unknown mesh name waits on.
//! - `metrics.rs`: `strait_dns_*`.
//!
//! This module does not use hickory's `Catalog`/`ZoneHandler` (a proxy's
//! answers are partly authoritative and partly forwarded, which that model
//! does not express), nor hickory's `Server` loop: ours counts malformed
//! packets, answers mesh names inline without a task per query, bounds the
//! work in flight, and does not log every query at `info`. VIPs for services
//! without one are allocated by discovery (`discovery/vips.rs`), not here.

mod cache;
mod forward;
mod handler;
mod index;
mod metrics;
mod on_demand;
mod resolver;
mod server;

use std::net::SocketAddr;

pub use forward::upstreams_from_resolv_conf;
pub use handler::{Handler, HandlerInputs};
pub use metrics::Metrics;
pub use on_demand::{NoOnDemand, OnDemand};
pub use server::DnsServer;

/// A DNS shim failure that stops it from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind DNS {protocol} listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
}
