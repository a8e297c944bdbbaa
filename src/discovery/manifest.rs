//! Typed Kubernetes-shaped resources: the input of [`super::translate`].
//!
//! Parsing is strict about the fields Strait reads (an unknown key is an
//! error, so a typo cannot silently drop a port) and tolerant of the
//! bookkeeping Kubernetes adds (`status`, `metadata.uid`, `managedFields`, ...),
//! so that `kubectl get -o yaml` output loads as it is. Numbers are kept wide
//! here and range-checked in translation, where the message can say
//! "70000 is not a port" with the field path.

// Fields Kubernetes sets that Strait accepts and ignores are parsed into
// `Option<IgnoredAny>` and never read; that is their purpose.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::config::Problem;

pub const API_CORE: &str = "v1";
pub const API_DISCOVERY: &str = "discovery.k8s.io/v1";
pub const API_MCS: &str = "multicluster.x-k8s.io/v1alpha1";
pub const API_FLOMESH: &str = "flomesh.io/v1alpha1";
pub const API_FLOMESH_MC: &str = "multicluster.flomesh.io/v1alpha1";

/// Label on an EndpointSlice naming its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label on an MCS EndpointSlice naming its imported service.
pub const LABEL_MCS_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// Label on an EndpointSlice whose endpoints live in another cluster.
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";

/// One resource of a kind Strait understands.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind")]
pub enum Manifest {
    Service(Service),
    EndpointSlice(EndpointSlice),
    ServiceImport(ServiceImport),
    ServiceExport(ServiceExport),
    GlobalTrafficPolicy(GlobalTrafficPolicy),
    Cluster(Cluster),
}

/// A parse failure inside one resource; the path is relative to it.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub path: String,
    pub message: String,
}

impl ManifestError {
    /// Locates the error under `source` (`mesh[3]`).
    pub fn at(self, source: &str) -> Problem {
        let path = if self.path.is_empty() || self.path == "." {
            source.to_owned()
        } else {
            format!("{source}.{}", self.path)
        };
        Problem::new(path, self.message)
    }

    fn top(message: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            message: message.into(),
        }
    }
}

/// Parses one resource, dispatching on `apiVersion` and `kind`.
pub fn parse(value: Value) -> Result<Manifest, ManifestError> {
    let Value::Mapping(mut map) = value else {
        return Err(ManifestError::top("a resource must be a YAML mapping"));
    };
    let api = match map.remove("apiVersion") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ManifestError {
                path: "apiVersion".into(),
                message: "must be a string".into(),
            })
        }
        None => return Err(ManifestError::top("missing field `apiVersion`")),
    };
    let kind = match map.remove("kind") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ManifestError {
                path: "kind".into(),
                message: "must be a string".into(),
            })
        }
        None => return Err(ManifestError::top("missing field `kind`")),
    };
    let body = Value::Mapping(map);
    let flomesh = matches!(api.as_str(), API_FLOMESH | API_FLOMESH_MC);
    match (kind.as_str(), api.as_str()) {
        ("Service", API_CORE) => de(body).map(Manifest::Service),
        ("EndpointSlice", API_DISCOVERY) => de(body).map(Manifest::EndpointSlice),
        ("ServiceImport", API_MCS) => de(body).map(|mut i: ServiceImport| {
            i.api = ImportApi::Mcs;
            Manifest::ServiceImport(i)
        }),
        ("ServiceImport", _) if flomesh => de(body).map(|mut i: ServiceImport| {
            i.api = ImportApi::Flomesh;
            Manifest::ServiceImport(i)
        }),
        ("ServiceExport", API_MCS) => de(body).map(Manifest::ServiceExport),
        ("ServiceExport", _) if flomesh => de(body).map(Manifest::ServiceExport),
        ("GlobalTrafficPolicy", _) if flomesh => de(body).map(Manifest::GlobalTrafficPolicy),
        ("Cluster", _) if flomesh => de(body).map(Manifest::Cluster),
        (
            "Service"
            | "EndpointSlice"
            | "ServiceImport"
            | "ServiceExport"
            | "GlobalTrafficPolicy"
            | "Cluster",
            _,
        ) => Err(ManifestError {
            path: "apiVersion".into(),
            message: format!("{api:?} is not a supported apiVersion for kind {kind}"),
        }),
        _ => Err(ManifestError {
            path: "kind".into(),
            message: format!(
                "{kind:?} is not a supported kind (Service, EndpointSlice, ServiceImport, \
                 ServiceExport, GlobalTrafficPolicy, Cluster)"
            ),
        }),
    }
}

fn de<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| ManifestError {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// `metadata`: what Strait reads, plus server-set fields it accepts and ignores.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    uid: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    resource_version: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    generation: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    owner_references: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    finalizers: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    generate_name: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    self_link: Option<IgnoredAny>,
}

impl ObjectMeta {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// A port number or a port name (`targetPort`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

// === Service ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// The VIP; `None` or empty for a headless service.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing)]
    selector: Option<IgnoredAny>,
    #[serde(default, rename = "type", skip_serializing)]
    type_: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    session_affinity: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    session_affinity_config: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    ip_families: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    ip_family_policy: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    internal_traffic_policy: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    external_traffic_policy: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    publish_not_ready_addresses: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    #[serde(default, skip_serializing)]
    node_port: Option<IgnoredAny>,
}

// === EndpointSlice ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Conditions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing)]
    node_name: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    target_ref: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    hints: Option<IgnoredAny>,
}

/// Endpoint conditions; absent means ready (as Kubernetes reads them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

// === ServiceImport ===

/// Which API group a ServiceImport came from; they differ in where endpoints live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum ImportApi {
    /// `multicluster.x-k8s.io`: endpoints in labelled EndpointSlices.
    #[default]
    Mcs,
    /// `flomesh.io` / `multicluster.flomesh.io`: endpoints inline, per cluster, as gateway targets.
    Flomesh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceImport {
    #[serde(skip_deserializing)]
    pub api: ImportApi,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceImportSpec,
    #[serde(default, skip_serializing)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceImportSpec {
    /// VIPs of the imported service (the clusterset IP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// `ClusterSetIP` (default) or `Headless`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default)]
    pub ports: Vec<ImportPort>,
    /// flomesh: the service account of the exporting workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing)]
    session_affinity: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    session_affinity_config: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// flomesh: the clusters serving this port, each through a target (its gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ImportEndpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportEndpoint {
    /// `region/zone/group/name`.
    pub cluster_key: String,
    pub target: ImportTarget,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

// === ServiceExport ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceExport {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceExportSpec,
    #[serde(default, skip_serializing)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceExportSpec {
    /// Who may call the service from other clusters: a service account name,
    /// or `*` for any identity of the trust domain. Default `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing)]
    path_rewrite: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    session_sticky: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    load_balancer: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    rules: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    target_clusters: Option<IgnoredAny>,
}

// === GlobalTrafficPolicy ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalTrafficPolicy {
    pub metadata: ObjectMeta,
    pub spec: GlobalTrafficPolicySpec,
    #[serde(default, skip_serializing)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalTrafficPolicySpec {
    /// `Locality`, `ActiveActive` or `FailOver`.
    pub lb_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TrafficTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTarget {
    pub cluster_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

// === Cluster ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterSpec,
    #[serde(default, skip_serializing)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The cluster's east-west gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<i64>,
    #[serde(default, skip_serializing)]
    kubeconfig: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    fsm_mesh_config_name: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    fsm_namespace: Option<IgnoredAny>,
}
