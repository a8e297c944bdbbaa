//! VIP allocation for services that have no VIP of their own (a
//! `ServiceImport` without `ips`, a `Service` without `clusterIP`), so that
//! the DNS shim can answer for them and the outbound proxy can route
//! connections to that address like any other VIP.
//!
//! The allocator's state lives in the [`super::Store`], and it runs as the
//! last step of every publish: `translate` stays a pure function of the
//! manifests, and the allocation outlives snapshots. A service keeps its
//! address for as long as it exists without a VIP of its own; the first
//! choice is a hash of its name (so a restart usually hands out the same
//! addresses), probing on collision. Headless services (`clusterIP: None`)
//! never get one. Allocation is off unless `dns.enabled`: without the shim no
//! client could learn the address.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tracing::{debug, warn};

use super::model::{ServiceName, Snapshot, Target};
use crate::config::{Config, VipRange};

#[derive(Debug)]
pub(crate) struct VipAllocator {
    /// `None`: allocation is off.
    range: Option<VipRange>,
    by_service: HashMap<ServiceName, IpAddr>,
}

impl VipAllocator {
    /// The range is read once, at start (`dns.vipRange` is not reloadable).
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            range: config.dns.enabled.then_some(config.dns.vip_range),
            by_service: HashMap::new(),
        }
    }

    /// Gives every service of `snapshot` that has no VIP and is not headless
    /// its address, and indexes it in `by_addr` for every port.
    #[tracing::instrument(level = "trace", skip_all)]
    pub(crate) fn assign(&mut self, snapshot: &mut Snapshot) {
        let Some(range) = self.range else {
            return;
        };
        let explicit: HashSet<IpAddr> = snapshot
            .services
            .values()
            .flat_map(|s| s.vips.iter().copied())
            .collect();
        let wanted: Vec<ServiceName> = snapshot
            .services
            .values()
            .filter(|s| s.vips.is_empty() && !s.headless)
            .map(|s| s.name.clone())
            .collect();
        let wanted_set: HashSet<&ServiceName> = wanted.iter().collect();
        // Release addresses of services that left (or got a VIP of their
        // own), and any that a manifest now claims explicitly.
        self.by_service.retain(|name, ip| {
            let keep = wanted_set.contains(name) && !explicit.contains(ip);
            if !keep {
                debug!(service = %name, %ip, "allocated VIP released");
            }
            keep
        });
        let mut used: HashSet<IpAddr> = explicit;
        used.extend(self.by_service.values().copied());

        for name in wanted {
            let ip = match self.by_service.get(&name) {
                Some(ip) => *ip,
                None => match probe(&range, &name, &used) {
                    Some(ip) => {
                        debug!(service = %name, %ip, "VIP allocated");
                        used.insert(ip);
                        self.by_service.insert(name.clone(), ip);
                        ip
                    }
                    None => {
                        warn!(service = %name, range = %range, "VIP range exhausted; service has no address");
                        continue;
                    }
                },
            };
            let Some(service) = snapshot.services.get_mut(&name) else {
                continue;
            };
            // A service without VIPs has no `by_addr` entries, so besides the
            // mesh-name index (let go here, restored below) the map's Arc is
            // the only one unless the publisher kept a clone.
            let indexed = snapshot.by_mesh_name.remove(&service.mesh_name).is_some();
            if let Some(s) = Arc::get_mut(service) {
                s.vips.push(ip);
                for (i, port) in service.ports.iter().enumerate() {
                    snapshot.by_addr.insert(
                        SocketAddr::new(ip, port.port),
                        Target::new(Arc::clone(service), i),
                    );
                }
            } else {
                warn!(service = %name, "snapshot shared before publish; VIP not assigned");
            }
            if indexed {
                snapshot
                    .by_mesh_name
                    .insert(service.mesh_name.clone(), Arc::clone(service));
            }
        }
    }
}

/// The first free address from the hash of `name`, or `None` when the range is full.
fn probe(range: &VipRange, name: &ServiceName, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    let len = range.len();
    if len == 0 {
        return None;
    }
    let start = fnv1a(name) % len;
    // Bounded: at most `used.len()` addresses of the range can be taken, so
    // a free one is found within that many steps plus one.
    let steps = (used.len() as u64).saturating_add(1).min(len);
    (0..steps)
        .filter_map(|k| range.nth((start + k) % len))
        .find(|ip| !used.contains(ip))
}

/// FNV-1a over `namespace/name`: stable across processes and releases
/// (unlike `DefaultHasher`), so restarts tend to keep addresses.
fn fnv1a(name: &ServiceName) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name
        .namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.name.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse_str, MapOverrides};
    use crate::discovery::translate;

    const MESH: &str = r#"
dns: {enabled: true, vipRange: 127.2.0.0/24}
mesh:
  - apiVersion: multicluster.x-k8s.io/v1alpha1
    kind: ServiceImport
    metadata: {name: remote, namespace: shop}
    spec: {ports: [{port: 8080}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: plain, namespace: shop}
    spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: stateful, namespace: shop}
    spec: {clusterIP: None, ports: [{port: 5432}]}
"#;

    fn snapshot(yaml: &str) -> (Config, Snapshot) {
        let loaded = parse_str(yaml, Path::new("."), &MapOverrides::default()).unwrap();
        let snapshot = translate(&loaded.config, &loaded.manifests).unwrap();
        (loaded.config, snapshot)
    }

    fn vip(snapshot: &Snapshot, name: &str) -> Vec<IpAddr> {
        let service = &snapshot.services[&ServiceName::new(name, "shop")];
        // The mesh hop's index sees the same service, VIPs and all.
        let indexed = snapshot.service_by_mesh_name(&service.mesh_name).unwrap();
        assert!(Arc::ptr_eq(service, indexed), "{name}: index is stale");
        service.vips.clone()
    }

    #[test]
    fn only_services_without_a_vip_that_are_not_headless_get_one() {
        let (config, mut snap) = snapshot(MESH);
        let mut vips = VipAllocator::new(&config);
        vips.assign(&mut snap);
        let remote = vip(&snap, "remote");
        assert_eq!(remote.len(), 1);
        assert!(config.dns.vip_range.contains(remote[0]), "{remote:?}");
        assert_eq!(vip(&snap, "plain"), ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(vip(&snap, "stateful").is_empty());
        let target = snap
            .target(&SocketAddr::new(remote[0], 8080))
            .expect("allocated VIP is routable");
        assert_eq!(target.service.name, ServiceName::new("remote", "shop"));
    }

    #[test]
    fn an_allocated_vip_is_stable_across_snapshots_and_released_with_the_service() {
        let (config, mut first) = snapshot(MESH);
        let mut vips = VipAllocator::new(&config);
        vips.assign(&mut first);
        let before = vip(&first, "remote");

        // Another import appears; the first keeps its address.
        let more = format!(
            "{MESH}  - apiVersion: multicluster.x-k8s.io/v1alpha1\n    kind: ServiceImport\n    metadata: {{name: other, namespace: shop}}\n    spec: {{ports: [{{port: 9090}}]}}\n"
        );
        let (_, mut second) = snapshot(&more);
        vips.assign(&mut second);
        assert_eq!(vip(&second, "remote"), before);
        assert_ne!(vip(&second, "other"), before);

        // The import goes away: its address is released.
        let (_, mut third) = snapshot("dns: {enabled: true}\n");
        vips.assign(&mut third);
        assert!(vips.by_service.is_empty());
    }

    #[test]
    fn an_explicit_vip_wins_over_an_allocated_one() {
        let (config, mut first) = snapshot(MESH);
        let mut vips = VipAllocator::new(&config);
        vips.assign(&mut first);
        let taken = vip(&first, "remote")[0];
        let claim = format!(
            "{MESH}  - apiVersion: v1\n    kind: Service\n    metadata: {{name: claims, namespace: shop}}\n    spec: {{clusterIP: \"{taken}\", ports: [{{port: 1}}]}}\n"
        );
        let (_, mut second) = snapshot(&claim);
        vips.assign(&mut second);
        assert_eq!(vip(&second, "claims"), [taken]);
        let moved = vip(&second, "remote");
        assert_eq!(moved.len(), 1);
        assert_ne!(moved[0], taken);
    }

    #[test]
    fn allocation_is_off_without_the_dns_shim_and_stops_when_the_range_is_full() {
        let (config, mut snap) = snapshot(&MESH.replace("enabled: true", "enabled: false"));
        VipAllocator::new(&config).assign(&mut snap);
        assert!(vip(&snap, "remote").is_empty());

        let range: VipRange = "127.2.0.0/30".parse().unwrap();
        let used: HashSet<IpAddr> = (0..range.len()).filter_map(|i| range.nth(i)).collect();
        assert_eq!(probe(&range, &ServiceName::new("a", "b"), &used), None);
    }
}
