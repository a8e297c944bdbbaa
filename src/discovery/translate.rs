//! Manifests to [`Snapshot`]: the one translation every mode shares.
//!
//! Every semantic problem (a port out of range, an address that is not an
//! IP, two services on one VIP and port, a slice for no service) is collected
//! with its field path; a snapshot is produced only when there are none, so a
//! bad reload never half-applies.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::manifest::{
    self, Manifest, LABEL_MCS_SERVICE_NAME, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER,
};
use super::model::*;

mod kinds;

use crate::balance::{Algorithm, Registry, SelectorSpec};
use crate::config::{is_dns_label, Config, Problem, Sourced};
use kinds::{cluster, endpoint_slice, import, policy, service, unknown_service};

/// A port of a service while it is being assembled.
struct PortDraft {
    port: u16,
    name: Option<String>,
    protocol: Protocol,
    /// cluster name -> endpoints
    clusters: BTreeMap<String, Vec<Endpoint>>,
}

#[derive(Default)]
struct ServiceDraft {
    /// Where the service was first defined, for duplicate messages.
    defined_at: Option<String>,
    vips: Vec<IpAddr>,
    ports: Vec<PortDraft>,
    policy: Policy,
    export: Option<Export>,
    /// `clusterIP: None` or a `Headless` ServiceImport: no VIP is allocated.
    headless: bool,
    hostnames: Vec<PodHostname>,
    /// From the annotation [`ANNOTATION_LB_ALGORITHM`].
    algorithm: Algorithm,
    /// From the annotation [`ANNOTATION_HASH_KEY`].
    hash_key: HashKey,
    /// From the timeout and concurrency annotations.
    connect_timeout: Option<std::time::Duration>,
    request_timeout: Option<std::time::Duration>,
    max_inflight: Option<u32>,
    /// From [`ANNOTATION_SERVICE_ACCOUNT`].
    service_account: Option<String>,
    /// False with [`ANNOTATION_MTLS`] `disabled`.
    mtls: Option<bool>,
}

/// Service (or ServiceImport) annotation choosing the balancing algorithm
/// within a cluster: `p2c-ewma` (default), `round-robin`, `least-request`,
/// `consistent-hash`.
pub const ANNOTATION_LB_ALGORITHM: &str = "strait.io/lb-algorithm";
/// With `consistent-hash`: `header:NAME` hashes on a request header,
/// `client-ip` (default) on the client's address.
pub const ANNOTATION_HASH_KEY: &str = "strait.io/hash-key";
/// Per-service connect timeout (`500ms`), overriding `outbound.connectTimeout`.
pub const ANNOTATION_CONNECT_TIMEOUT: &str = "strait.io/connect-timeout";
/// Per-service request timeout (`2s`), overriding `outbound.requestTimeout`.
pub const ANNOTATION_REQUEST_TIMEOUT: &str = "strait.io/request-timeout";
/// Requests (or TCP connections) in flight per endpoint; an endpoint at the
/// limit is not picked, and a service whose endpoints are all at it answers 503.
pub const ANNOTATION_MAX_PER_ENDPOINT: &str = "strait.io/max-requests-per-endpoint";
/// The service account the service's pods run as: with mesh mTLS, a server
/// must present exactly `spiffe://TD/ns/NAMESPACE/sa/THIS`. Without it, any
/// identity of the service's namespace is accepted.
pub const ANNOTATION_SERVICE_ACCOUNT: &str = "strait.io/service-account";
/// `disabled`: the service's endpoints run no Strait proxy; reach them in
/// plaintext even when mesh mTLS is on. `enabled` (default).
pub const ANNOTATION_MTLS: &str = "strait.io/mtls";

impl ServiceDraft {
    fn port_mut(&mut self, port: u16, name: &Option<String>, protocol: Protocol) -> &mut PortDraft {
        let i = match self.ports.iter().position(|p| p.port == port) {
            Some(i) => i,
            None => {
                self.ports.push(PortDraft {
                    port,
                    name: name.clone(),
                    protocol,
                    clusters: BTreeMap::new(),
                });
                self.ports.len() - 1
            }
        };
        let p = &mut self.ports[i];
        if p.protocol == Protocol::Detect {
            p.protocol = protocol;
        }
        p
    }
}

/// Translates validated config and manifests into a snapshot, or every
/// problem found. Balancing state is fresh: for validation and tests.
pub fn translate(config: &Config, manifests: &[Sourced]) -> Result<Snapshot, Vec<Problem>> {
    translate_with(config, manifests, &Registry::default())
}

/// As [`translate`], with endpoint health and policy state carried over
/// from earlier snapshots through `registry`.
pub fn translate_with(
    config: &Config,
    manifests: &[Sourced],
    registry: &Registry,
) -> Result<Snapshot, Vec<Problem>> {
    let mut problems = Vec::new();
    let local = config.node.cluster.clone();
    let mut services: BTreeMap<ServiceName, ServiceDraft> = BTreeMap::new();
    let mut clusters: BTreeMap<String, ClusterInfo> = BTreeMap::new();
    clusters.insert(
        local.clone(),
        ClusterInfo {
            key: config.local_cluster_key(),
            gateway: None,
        },
    );

    // Pass 1: clusters, then services (Service, ServiceImport), so that pass 2
    // can attach endpoints, policies and exports in any file order.
    for s in manifests {
        if let Manifest::Cluster(c) = &s.manifest {
            cluster(s, c, &mut clusters, &mut problems);
        }
    }
    for s in manifests {
        match &s.manifest {
            Manifest::Service(svc) => service(s, svc, &mut services, &mut problems),
            Manifest::ServiceImport(imp) => {
                import(s, imp, &local, &clusters, &mut services, &mut problems)
            }
            _ => {}
        }
    }
    for s in manifests {
        match &s.manifest {
            Manifest::EndpointSlice(slice) => {
                endpoint_slice(s, slice, &local, &mut services, &mut problems)
            }
            Manifest::GlobalTrafficPolicy(gtp) => policy(s, gtp, &mut services, &mut problems),
            Manifest::ServiceExport(exp) => {
                let name = ServiceName::new(&exp.metadata.name, exp.metadata.namespace());
                match services.get_mut(&name) {
                    Some(d) => {
                        d.export = Some(Export {
                            service_account: exp
                                .spec
                                .service_account_name
                                .clone()
                                .unwrap_or_else(|| "*".to_owned()),
                        })
                    }
                    None => problems.push(unknown_service(s, "ServiceExport", &name)),
                }
            }
            _ => {}
        }
    }

    // Assemble, indexing every VIP and port.
    let mut snapshot = Snapshot {
        local_cluster: local.clone(),
        clusters,
        ..Default::default()
    };
    let mut owner: HashMap<SocketAddr, ServiceName> = HashMap::new();
    for (name, mut draft) in services {
        draft
            .hostnames
            .sort_by(|a, b| (&a.hostname, &a.addr).cmp(&(&b.hostname, &b.addr)));
        draft.hostnames.dedup();
        let ports = draft
            .ports
            .into_iter()
            .map(|p| {
                let clusters: Vec<ClusterEndpoints> = order_clusters(p.clusters, &local)
                    .map(|(cluster, mut endpoints)| {
                        endpoints.sort_by_key(|e| e.addr);
                        endpoints.dedup_by_key(|e| e.addr);
                        let key = snapshot
                            .clusters
                            .get(&cluster)
                            .map(|c| c.key.clone())
                            .unwrap_or_else(|| format!("default/default/default/{cluster}"));
                        ClusterEndpoints {
                            local: cluster == local,
                            cluster: Arc::from(cluster),
                            key,
                            endpoints,
                        }
                    })
                    .collect();
                let selector = registry.selector(SelectorSpec {
                    service: &name,
                    port: p.port,
                    local: &local,
                    clusters: &clusters,
                    policy: &draft.policy,
                    algorithm: draft.algorithm,
                    hold_down: config.balance.fail_back_hold_down,
                    retries: &config.balance.retries,
                    max_inflight: draft.max_inflight,
                });
                ServicePort {
                    port: p.port,
                    name: p.name,
                    protocol: p.protocol,
                    clusters,
                    selector,
                }
            })
            .collect();
        let service = Arc::new(Service {
            name: name.clone(),
            vips: draft.vips,
            ports,
            policy: draft.policy,
            export: draft.export,
            headless: draft.headless,
            hostnames: draft.hostnames,
            hash_key: draft.hash_key,
            connect_timeout: draft.connect_timeout,
            request_timeout: draft.request_timeout,
            service_account: draft.service_account,
            mtls: draft.mtls.unwrap_or(true),
            // Names are validated DNS labels, so this is always a valid value.
            mesh_name: http::HeaderValue::from_str(&name.to_string())
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
        });
        for vip in &service.vips {
            for (i, port) in service.ports.iter().enumerate() {
                let addr = SocketAddr::new(*vip, port.port);
                if let Some(other) = owner.get(&addr) {
                    problems.push(Problem::new(
                        draft.defined_at.clone().unwrap_or_default(),
                        format!("{name} claims {addr}, which {other} already uses"),
                    ));
                    continue;
                }
                owner.insert(addr, name.clone());
                snapshot
                    .by_addr
                    .insert(addr, Target::new(service.clone(), i));
            }
        }
        snapshot
            .by_mesh_name
            .entry(service.mesh_name.clone())
            .or_insert_with(|| Arc::clone(&service));
        snapshot.services.insert(name, service);
    }

    if problems.is_empty() {
        Ok(snapshot)
    } else {
        Err(problems)
    }
}

/// Local cluster first, then the others by name.
fn order_clusters(
    mut clusters: BTreeMap<String, Vec<Endpoint>>,
    local: &str,
) -> impl Iterator<Item = (String, Vec<Endpoint>)> {
    let first = clusters.remove_entry(local);
    first.into_iter().chain(clusters)
}
