//! The proxy's configuration: one serde tree with defaults, validated as a
//! whole so that every problem is reported with its field path.
//!
//! This module owns the proxy's own settings. The mesh state in the same file
//! (`mesh:` and `meshDir:`) is parsed here into typed manifests, but their
//! meaning (services, endpoints, policies) belongs to [`crate::discovery`].
//! Loading lives in `config/file.rs`, environment overrides in
//! `config/overrides.rs`, and file watching in `config/reload.rs`.

mod balance;
mod dns;
mod file;
mod mesh;
mod overrides;
pub mod reload;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use balance::{Balance, Retries};
pub use dns::{Dns, Upstream, VipRange};
pub use file::{load_file, parse_str, Loaded, Sourced};
pub use mesh::{Identity, Inbound, Mode, PlaintextInbound};
pub use overrides::{EnvOverrides, MapOverrides, ModeOverride, Overrides};

/// One problem in a configuration, located by its field path
/// (`mesh[3].spec.ports[0].port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), Problems(.0))]
    Invalid(Vec<Problem>),
}

impl Error {
    /// Every problem, for callers that print them one per line.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Error::Read { path, source } => {
                vec![Problem::new(path.display().to_string(), source.to_string())]
            }
            Error::Invalid(problems) => problems.clone(),
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// The proxy's settings. Mesh state is carried beside it in [`Loaded`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// `sidecar` (default) or `gateway`; `strait proxy --mode` overrides it.
    #[serde(default)]
    pub mode: Mode,
    /// Who this proxy is: cluster, namespace, service account.
    #[serde(default)]
    pub node: Node,
    /// Listener addresses.
    #[serde(default)]
    pub listeners: Listeners,
    /// How outbound traffic is handled.
    #[serde(default)]
    pub outbound: Outbound,
    /// HTTP limits and header handling.
    #[serde(default)]
    pub http: Http,
    /// Threads and shutdown.
    #[serde(default)]
    pub runtime: Runtime,
    /// Logging and the access log.
    #[serde(default)]
    pub log: Log,
    /// Cross-cluster balancing: failover hold-down, active probes, retries
    /// (`config/balance.rs`).
    #[serde(default)]
    pub balance: Balance,
    /// The DNS shim and VIP allocation (`config/dns.rs`). Default: off.
    #[serde(default)]
    pub dns: Dns,
    /// Mesh mTLS identity (`config/mesh.rs`). Absent: proxy-to-proxy
    /// traffic is plaintext and no mesh listener is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Inbound traffic: mesh port, app address, plaintext policy.
    #[serde(default)]
    pub inbound: Inbound,
    /// A directory of Kubernetes manifests (`*.yaml`, `*.yml`, `*.json`, multi-document
    /// allowed), read in file-name order after the inline `mesh` list.
    /// Relative paths are relative to the config file. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_dir: Option<PathBuf>,
}

/// The identity of the workload this proxy runs beside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// The local cluster's name. Default `cluster-1`; env `STRAIT_CLUSTER`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Region part of the local cluster key. Default `default`.
    #[serde(default = "default_part")]
    pub region: String,
    /// Zone part of the local cluster key. Default `default`.
    #[serde(default = "default_part")]
    pub zone: String,
    /// Group part of the local cluster key. Default `default`.
    #[serde(default = "default_part")]
    pub group: String,
    /// The pod's namespace. Default `default`; env `STRAIT_NAMESPACE`.
    #[serde(default = "default_part")]
    pub namespace: String,
    /// The pod's service account. Default `default`; env `STRAIT_SERVICE_ACCOUNT`.
    #[serde(default = "default_part")]
    pub service_account: String,
}

/// Listener addresses. Every port is configurable; port 0 binds an ephemeral port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    /// Admin server (`/metrics`, `/ready`, ...). Default `127.0.0.1:15000`.
    #[serde(default = "default_admin_addr")]
    pub admin: SocketAddr,
    /// Transparent outbound capture (iptables REDIRECT target; original
    /// destination from `SO_ORIGINAL_DST`). Default `127.0.0.1:15001`; `null` disables.
    #[serde(default = "default_outbound_addr")]
    pub outbound: Option<SocketAddr>,
    /// Also bind one listener per service VIP and port, for use without
    /// iptables (loopback VIPs such as 127.1.0.0/16 need no root). Default `false`.
    #[serde(default)]
    pub service_vips: bool,
    /// Mesh mTLS inbound (HTTP/2 over TLS 1.3 from peer proxies); bound
    /// when `identity` is set. Default `0.0.0.0:15008`.
    #[serde(default = "default_mesh_addr")]
    pub mesh: SocketAddr,
    /// Inbound capture of plaintext from outside the mesh (iptables
    /// REDIRECT target), handled per `inbound.plaintext`. Default: none
    /// (`strait inject` sets `0.0.0.0:15006`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<SocketAddr>,
    /// Gateway mode only: SNI passthrough listener. Default `0.0.0.0:15443`.
    #[serde(default = "default_gateway_addr")]
    pub gateway: SocketAddr,
}

/// What to do with a connection whose original destination is no mesh service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UnknownDestination {
    /// Forward the bytes to the original destination untouched (default).
    #[default]
    Passthrough,
    /// Close the connection.
    Deny,
}

/// Outbound proxying settings. Reloadable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// Connections to destinations that are not mesh services. Default `passthrough`.
    #[serde(default)]
    pub unknown_destination: UnknownDestination,
    /// How long protocol detection waits for the client's first bytes before
    /// treating the connection as opaque TCP (server-speaks-first protocols). Default `1s`.
    #[serde(default = "default_detect_timeout", with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// Upstream connect timeout; expiry answers `504`. Default `1s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the response headers; expiry
    /// answers `504`. Default: none (streaming responses are not cut).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// Idle pooled upstream connections are closed after this long. Default `90s`.
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle HTTP/1.1 upstream connections kept per endpoint. Default `256`.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_endpoint: usize,
}

/// HTTP handling. Reloadable except where noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http {
    /// Largest HTTP/1 request head accepted; larger gets `431`. Bytes. Default `65536`.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A client that has not sent a complete request head within this time
    /// is disconnected. Default `10s`.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Append the client address to `x-forwarded-for` and set
    /// `x-forwarded-proto`. Default `false` (a sidecar is transparent).
    #[serde(default)]
    pub x_forwarded_for: bool,
}

/// Threads and shutdown. Read at start only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads. `1` (default) runs a single-threaded runtime: a sidecar
    /// must not claim every core of the node.
    #[serde(default = "default_workers")]
    pub worker_threads: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests and connections may
    /// take to finish before the process exits. Default `5s`.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_grace_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`. Read at start only.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `strait=debug`. Default `info`;
    /// env `STRAIT_LOG`. Read at start only.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One JSON line on stdout per HTTP request and per TCP connection.
    /// Default `false`. Reloadable.
    #[serde(default)]
    pub access_log: bool,
}

fn default_cluster() -> String {
    "cluster-1".to_owned()
}
fn default_part() -> String {
    "default".to_owned()
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_outbound_addr() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15001)))
}
fn default_mesh_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15008))
}
fn default_gateway_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15443))
}
fn default_detect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    256
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_workers() -> usize {
    1
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}
fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for Node {
    fn default() -> Self {
        Self {
            cluster: default_cluster(),
            region: default_part(),
            zone: default_part(),
            group: default_part(),
            namespace: default_part(),
            service_account: default_part(),
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            admin: default_admin_addr(),
            outbound: default_outbound_addr(),
            service_vips: false,
            mesh: default_mesh_addr(),
            inbound: None,
            gateway: default_gateway_addr(),
        }
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            unknown_destination: UnknownDestination::default(),
            detect_timeout: default_detect_timeout(),
            connect_timeout: default_connect_timeout(),
            request_timeout: None,
            pool_idle_timeout: default_pool_idle_timeout(),
            pool_max_idle_per_endpoint: default_pool_max_idle(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout: default_header_read_timeout(),
            x_forwarded_for: false,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            worker_threads: default_workers(),
            drain_grace_period: default_drain(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
            access_log: false,
        }
    }
}

impl Config {
    /// Cross-field and range checks; every problem is returned, none stops the others.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let name_ok = |s: &str| is_dns_label(s);
        for (field, value) in [
            ("node.cluster", &self.node.cluster),
            ("node.region", &self.node.region),
            ("node.zone", &self.node.zone),
            ("node.group", &self.node.group),
            ("node.namespace", &self.node.namespace),
            ("node.serviceAccount", &self.node.service_account),
        ] {
            if !name_ok(value) {
                problems.push(Problem::new(
                    field,
                    format!("{value:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"),
                ));
            }
        }
        if self.runtime.worker_threads == 0 || self.runtime.worker_threads > 64 {
            problems.push(Problem::new(
                "runtime.workerThreads",
                format!("{} is out of range (1..=64)", self.runtime.worker_threads),
            ));
        }
        if self.outbound.connect_timeout.is_zero() {
            problems.push(Problem::new(
                "outbound.connectTimeout",
                "must be greater than 0",
            ));
        }
        if self.outbound.detect_timeout.is_zero() {
            problems.push(Problem::new(
                "outbound.detectTimeout",
                "must be greater than 0",
            ));
        }
        if self.outbound.request_timeout.is_some_and(|t| t.is_zero()) {
            problems.push(Problem::new(
                "outbound.requestTimeout",
                "must be greater than 0 (omit it for no timeout)",
            ));
        }
        if self.http.max_header_bytes < 8192 {
            problems.push(Problem::new(
                "http.maxHeaderBytes",
                format!(
                    "{} is too small (at least 8192)",
                    self.http.max_header_bytes
                ),
            ));
        }
        if self.http.header_read_timeout.is_zero() {
            problems.push(Problem::new(
                "http.headerReadTimeout",
                "must be greater than 0",
            ));
        }
        if let Some(outbound) = self.listeners.outbound {
            if outbound == self.listeners.admin && outbound.port() != 0 {
                problems.push(Problem::new(
                    "listeners.outbound",
                    format!("{outbound} is also the admin address"),
                ));
            }
        }
        if let Some(identity) = &self.identity {
            identity.validate(&mut problems);
        } else if self.mode == Mode::Gateway {
            problems.push(Problem::new(
                "identity",
                "gateway mode needs an identity (the gateway routes mTLS by SNI and checks its peers' trust domain)",
            ));
        }
        self.inbound.validate(&mut problems);
        self.balance.validate(&mut problems);
        self.dns.validate(self, &mut problems);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(Problem::new(
                "log.level",
                format!("{:?}: {e}", self.log.level),
            ));
        }
        problems
    }

    /// The local cluster's key `region/zone/group/name`.
    pub fn local_cluster_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.node.region, self.node.zone, self.node.group, self.node.cluster
        )
    }
}

/// RFC 1123 label: what Kubernetes accepts for names and namespaces.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests;
