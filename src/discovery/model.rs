//! The immutable mesh model that the data path reads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::balance::Selector;

/// `name.namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub name: String,
    pub namespace: String,
}

impl ServiceName {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// How a service port's traffic is handled, from its protocol hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// No hint: detect HTTP/1, HTTP/2 prior knowledge, else opaque TCP.
    Detect,
    /// `http`: HTTP/1.x.
    Http1,
    /// `http2`, `grpc`, `h2c`: HTTP/2 prior knowledge.
    Http2,
    /// `tcp` (and anything not HTTP): bytes are copied, never parsed.
    Opaque,
}

impl Protocol {
    /// Reads Kubernetes' `appProtocol`, falling back to the port name's
    /// prefix (`http-web`, `grpc-api`), as Istio does.
    pub fn from_hint(app_protocol: Option<&str>, port_name: Option<&str>) -> Self {
        let hint = app_protocol.or_else(|| port_name.map(|n| n.split('-').next().unwrap_or(n)));
        match hint.map(|h| h.to_ascii_lowercase()).as_deref() {
            Some("http" | "http1" | "kubernetes.io/http") => Protocol::Http1,
            Some("http2" | "grpc" | "h2c" | "kubernetes.io/h2c" | "grpc-web") => Protocol::Http2,
            Some(
                "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kubernetes.io/ws"
                | "kubernetes.io/wss",
            ) => Protocol::Opaque,
            _ => Protocol::Detect,
        }
    }
}

/// Where an endpoint's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EndpointKind {
    /// A pod, reached directly.
    Direct,
    /// A remote cluster's gateway; `sni` names the service there.
    Gateway { sni: Arc<str> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    #[serde(flatten)]
    pub kind: EndpointKind,
}

/// The endpoints one cluster offers for one service port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEndpoints {
    /// The cluster's name (the last part of its key).
    pub cluster: Arc<str>,
    /// `region/zone/group/name`.
    pub key: String,
    pub local: bool,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum LbType {
    #[default]
    Locality,
    ActiveActive,
    FailOver,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTarget {
    pub cluster_key: String,
    pub weight: u32,
}

/// The cross-cluster traffic policy of a service (GlobalTrafficPolicy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub lb_type: LbType,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<PolicyTarget>,
}

/// Who may call an exported service from other clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    /// A service account name, or `*`.
    pub service_account: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub protocol: Protocol,
    /// Local cluster first, then remote clusters by name.
    pub clusters: Vec<ClusterEndpoints>,
    /// Policy, clusters and endpoint health (serialized as the selector's view).
    #[serde(serialize_with = "selector_view")]
    pub(crate) selector: Selector,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: ServiceName,
    /// From the manifests, or allocated by the [`super::Store`] from
    /// `dns.vipRange` when there is none and the service is not headless.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub policy: Policy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<Export>,
    /// Headless by choice (`clusterIP: None`, or a ServiceImport of type
    /// `Headless`): never gets a VIP; DNS answers with endpoint addresses.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// Per-pod DNS names: EndpointSlice `hostname`s of ready endpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<PodHostname>,
    /// What consistent hashing hashes on (annotation `strait.io/hash-key`).
    pub hash_key: HashKey,
    /// Per-service overrides of `outbound.connectTimeout` and
    /// `outbound.requestTimeout` (annotations `strait.io/connect-timeout`,
    /// `strait.io/request-timeout`).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<std::time::Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<std::time::Duration>,
    /// The service account its pods run as (annotation
    /// `strait.io/service-account`): the identity mesh mTLS expects of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Whether its endpoints are reached over mesh mTLS when the proxy has
    /// an identity (annotation `strait.io/mtls`). Default true.
    pub mtls: bool,
    /// `name.namespace` as a header value, made once for the mesh hop's
    /// `x-strait-service`.
    #[serde(skip)]
    pub(crate) mesh_name: http::HeaderValue,
}

/// The request key of consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// The client's IP address (default).
    #[default]
    ClientIp,
    /// A request header's value (`header:NAME`); requests without it fall
    /// back to load-aware balancing.
    Header(#[serde(serialize_with = "header_name")] http::HeaderName),
}

fn header_name<S: serde::Serializer>(h: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

/// A ready endpoint that EndpointSlice names (`hostname`), for per-pod DNS
/// names such as `web-0.web.ns.svc.cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodHostname {
    pub hostname: String,
    /// The cluster the slice came from.
    pub cluster: String,
    pub addr: IpAddr,
}

impl Service {
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A service port reached at one of its VIPs: what a connection is for.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: Arc<Service>,
    index: usize,
}

impl Target {
    pub(crate) fn new(service: Arc<Service>, index: usize) -> Self {
        Self { service, index }
    }

    pub fn port(&self) -> &ServicePort {
        // invariant: `index` was taken from this service's ports at translation.
        &self.service.ports[self.index]
    }
}

/// A cluster known from `Cluster` resources.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<SocketAddr>,
}

/// The whole mesh as this proxy sees it. Immutable; replaced as a whole.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub local_cluster: String,
    #[serde(serialize_with = "serialize_values")]
    pub services: BTreeMap<ServiceName, Arc<Service>>,
    pub clusters: BTreeMap<String, ClusterInfo>,
    #[serde(skip)]
    pub(crate) by_addr: FxHashMap<SocketAddr, Target>,
    /// Services by `name.namespace`, the value of a mesh request's
    /// `x-strait-service` header: looked up with the header value as it
    /// arrived, without building a `ServiceName` per request.
    #[serde(skip)]
    pub(crate) by_mesh_name: FxHashMap<http::HeaderValue, Arc<Service>>,
}

impl Snapshot {
    /// The service port a connection to `addr` (a VIP and port) is for.
    #[inline]
    pub fn target(&self, addr: &SocketAddr) -> Option<&Target> {
        self.by_addr.get(addr)
    }

    /// Every VIP and port, for binding per-service listeners.
    pub fn service_addrs(&self) -> impl Iterator<Item = &SocketAddr> {
        self.by_addr.keys()
    }

    pub fn service(&self, name: &ServiceName) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// The service a mesh request's `x-strait-service` value names.
    pub(crate) fn service_by_mesh_name(&self, value: &http::HeaderValue) -> Option<&Arc<Service>> {
        self.by_mesh_name.get(value)
    }
}

/// Services serialize as a list: JSON map keys must be strings.
fn serialize_values<S: serde::Serializer>(
    map: &BTreeMap<ServiceName, Arc<Service>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

fn selector_view<S: serde::Serializer>(sel: &Selector, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&sel.view(), s)
}
