//! Strait: a data-plane sidecar for Kubernetes service meshes that span
//! several clusters.
//!
//! Module map (see `docs/architecture.md` for the data flow):
//! - [`config`]: the proxy's YAML configuration, validation with field paths, hot reload.
//! - [`discovery`]: Kubernetes-shaped manifests translated into an immutable [`discovery::Snapshot`].
//! - [`dns`]: the DNS shim: mesh names from the snapshot, everything else forwarded.
//! - [`identity`]: the mesh identity (SPIFFE ID, certificate files, rotation) and its rustls configs.
//! - [`balance`]: endpoint selection within a service (the seam for cross-cluster policies).
//! - [`proxy`]: listeners, protocol detection, HTTP and opaque-TCP forwarding, error responses.
//! - [`admin`]: `/metrics`, `/ready`, `/live`, `/config_dump` on their own listener.
//! - [`metrics`]: the explicit Prometheus registry and shared label values.
//! - [`shutdown`]: drain signal and readiness latches.
//! - [`app`]: wiring; binds every listener, then runs until asked to stop.
//! - [`demo`]: the self-contained demo run by `strait demo`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod certs;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod dns;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod shutdown;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use app::{App, BoundApp};
pub use config::Config;
