//! The mesh names of one snapshot, with their records built in advance:
//! built once per published snapshot (`resolver.rs` decides when), then
//! read without locks by every query.
//!
//! Names indexed, for service `S` in namespace `N`:
//! - `S.N.svc.cluster.local` and `S.N.svc.clusterset.local`: A/AAAA of the
//!   VIPs, or of the ready pod addresses for a headless service; SRV for
//!   every port;
//! - `_P._tcp.S.N.svc.cluster.local` (and `.clusterset.local`): SRV for
//!   named port `P`;
//! - `H.S.N.svc.cluster.local` (local pods) and `H.C.S.N.svc.clusterset.local`
//!   (pods of cluster `C`): per-pod names from EndpointSlice hostnames.
//!
//! A miss is looked at once more as a search-domain expansion (`S.N` sent as
//! `S.N.POD_NS.svc.cluster.local`): when `S.N` is known the answer is a CNAME
//! to its canonical name plus its records, so the client is answered on the
//! first try of its search list. Deciding what to do with a miss
//! (on-demand, forwarding) is the handler's job, not this module's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::config::is_dns_label;
use crate::discovery::{EndpointKind, Service, ServiceName, State};

/// The two mesh zones: answers from the snapshot come only for names below them.
const LOCAL_ZONE: &str = "svc.cluster.local.";
const SET_ZONE: &str = "svc.clusterset.local.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    /// `cluster.local`
    Local,
    /// `clusterset.local`
    Set,
}

/// The records of one mesh name.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) canonical: Name,
    pub(crate) zone: Zone,
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    /// A/AAAA of SRV targets, for the additional section.
    pub(crate) glue: Vec<Record>,
}

impl Node {
    fn new(canonical: Name, zone: Zone) -> Self {
        Self {
            canonical,
            zone,
            a: Vec::new(),
            aaaa: Vec::new(),
            srv: Vec::new(),
            glue: Vec::new(),
        }
    }

    /// The records answering `qtype` (empty: the name exists, the type does not).
    pub(crate) fn records(&self, qtype: RecordType) -> [&[Record]; 3] {
        match qtype {
            RecordType::A => [&self.a, &[], &[]],
            RecordType::AAAA => [&[], &self.aaaa, &[]],
            RecordType::SRV => [&[], &[], &self.srv],
            RecordType::ANY => [&self.a, &self.aaaa, &self.srv],
            _ => [&[], &[], &[]],
        }
    }

    fn add_addr(&mut self, ip: IpAddr, ttl: u32) {
        let name = self.canonical.clone();
        match ip {
            IpAddr::V4(v4) => self.a.push(Record::from_rdata(name, ttl, RData::A(A(v4)))),
            IpAddr::V6(v6) => self
                .aaaa
                .push(Record::from_rdata(name, ttl, RData::AAAA(AAAA(v6)))),
        }
    }

    fn addr_records(&self) -> impl Iterator<Item = &Record> {
        self.a.iter().chain(&self.aaaa)
    }
}

/// What the index says about a name.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// A mesh name. `alias` is a CNAME from the queried name when it was
    /// found as a search-domain expansion.
    Found {
        node: &'a Node,
        alias: Option<Box<Record>>,
    },
    /// Shaped like a mesh name but not in this snapshot: the services it
    /// may name, most likely first.
    Unknown(Vec<ServiceName>),
    /// Not a mesh name.
    NotMesh,
}

/// Every mesh name of one snapshot.
#[derive(Debug)]
pub(crate) struct MeshIndex {
    /// The store version it was built from.
    pub(crate) version: u64,
    pub(crate) ttl: u32,
    names: HashMap<LowerName, Node>,
    /// Search domains inside the cluster domain, lowercase, with a trailing dot.
    search: Vec<String>,
    soa_local: Record,
    soa_set: Record,
}

impl MeshIndex {
    pub(crate) fn build(state: &State) -> Self {
        let config = &state.config;
        let snapshot = &state.snapshot;
        let ttl = u32::try_from(config.dns.ttl.as_secs()).unwrap_or(u32::MAX);
        let mut index = Self {
            version: state.version,
            ttl,
            names: HashMap::with_capacity(snapshot.services.len() * 2),
            search: config
                .dns
                .search_domains(&config.node.namespace)
                .into_iter()
                .filter(|d| d == "cluster.local" || d.ends_with(".cluster.local"))
                .map(|d| format!("{d}."))
                .collect(),
            soa_local: soa("cluster.local.", state.version, ttl),
            soa_set: soa("clusterset.local.", state.version, ttl),
        };
        for service in snapshot.services.values() {
            index.add_service(service, &snapshot.local_cluster);
        }
        index
    }

    fn add_service(&mut self, service: &Service, local_cluster: &str) {
        let ttl = self.ttl;
        let (svc, ns) = (&service.name.name, &service.name.namespace);
        let addrs: Vec<IpAddr> = if !service.vips.is_empty() {
            service.vips.clone()
        } else if service.headless {
            ready_pod_addrs(service)
        } else {
            // No VIP and none allocated (allocation off or range full): the
            // name exists, with no addresses.
            Vec::new()
        };
        for (zone, suffix) in [(Zone::Local, LOCAL_ZONE), (Zone::Set, SET_ZONE)] {
            let Some(canonical) = fqdn(&format!("{svc}.{ns}.{suffix}")) else {
                continue;
            };
            let mut node = Node::new(canonical.clone(), zone);
            for ip in &addrs {
                node.add_addr(*ip, ttl);
            }

            // Per-pod names, and the SRV targets of a headless service with hostnames.
            let mut pods: Vec<Node> = Vec::new();
            for h in &service.hostnames {
                let name = match zone {
                    Zone::Local if h.cluster == local_cluster => {
                        format!("{}.{svc}.{ns}.{suffix}", h.hostname)
                    }
                    Zone::Local => continue,
                    Zone::Set => format!("{}.{}.{svc}.{ns}.{suffix}", h.hostname, h.cluster),
                };
                let Some(name) = fqdn(&name) else { continue };
                match pods.iter_mut().find(|p| p.canonical == name) {
                    Some(p) => p.add_addr(h.addr, ttl),
                    None => {
                        let mut p = Node::new(name, zone);
                        p.add_addr(h.addr, ttl);
                        pods.push(p);
                    }
                }
            }
            let target = |n: &Node| (n.canonical.clone(), n.addr_records().cloned().collect());
            let targets: Vec<(Name, Vec<Record>)> = if service.headless && !pods.is_empty() {
                pods.iter().map(target).collect()
            } else {
                vec![target(&node)]
            };
            let srv_of = |port: u16| -> (Vec<Record>, Vec<Record>) {
                let srv = targets
                    .iter()
                    .map(|(t, _)| {
                        Record::from_rdata(
                            canonical.clone(),
                            ttl,
                            RData::SRV(SRV::new(0, 100, port, t.clone())),
                        )
                    })
                    .collect();
                let glue = targets
                    .iter()
                    .flat_map(|(_, g)| g.iter().cloned())
                    .collect();
                (srv, glue)
            };

            let mut named = Vec::new();
            for port in &service.ports {
                let (mut srv, glue) = srv_of(port.port);
                if let Some(pname) = port.name.as_deref().filter(|n| is_dns_label(n)) {
                    if let Some(n) = fqdn(&format!("_{pname}._tcp.{svc}.{ns}.{suffix}")) {
                        let mut pnode = Node::new(n.clone(), zone);
                        for r in &mut srv {
                            r.name = n.clone();
                        }
                        pnode.srv = srv.clone();
                        pnode.glue = glue.clone();
                        named.push(pnode);
                    }
                }
                for r in &mut srv {
                    r.name = canonical.clone();
                }
                node.srv.extend(srv);
                if node.glue.is_empty() {
                    node.glue = glue;
                }
            }
            for n in pods.into_iter().chain(named).chain(std::iter::once(node)) {
                self.names.entry(LowerName::new(&n.canonical)).or_insert(n);
            }
        }
    }

    /// The zone's SOA, for the authority section of negative answers.
    pub(crate) fn soa(&self, zone: Zone) -> &Record {
        match zone {
            Zone::Local => &self.soa_local,
            Zone::Set => &self.soa_set,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn lookup(&self, qname: &LowerName) -> Lookup<'_> {
        match self.names.get(qname) {
            Some(node) => Lookup::Found { node, alias: None },
            None => self.lookup_miss(qname),
        }
    }

    fn lookup_miss(&self, qname: &LowerName) -> Lookup<'_> {
        let q = qname.to_ascii();
        if !q.ends_with("cluster.local.") && !q.ends_with("clusterset.local.") {
            return Lookup::NotMesh;
        }
        let mut candidates: Vec<ServiceName> = Vec::new();
        // The name as it stands: service, pod or SRV shapes below a mesh zone.
        for (zone, suffix) in [(Zone::Local, LOCAL_ZONE), (Zone::Set, SET_ZONE)] {
            let Some(rel) = relative(&q, suffix) else {
                continue;
            };
            let labels: Vec<&str> = rel.split('.').collect();
            let service = match (zone, labels.as_slice()) {
                (_, [s, n]) => Some((*s, *n)),
                (_, [p, "_tcp" | "_udp", s, n]) if p.starts_with('_') => Some((*s, *n)),
                (_, [_, s, n]) => Some((*s, *n)),
                (Zone::Set, [_, _, s, n]) => Some((*s, *n)),
                _ => None,
            };
            if let Some((s, n)) = service.filter(|(s, n)| is_dns_label(s) && is_dns_label(n)) {
                candidates.push(ServiceName::new(s, n));
            }
        }
        // The name as a short name behind one of the pod's search domains.
        for domain in &self.search {
            let Some(rel) = relative(&q, domain) else {
                continue;
            };
            let labels: Vec<&str> = rel.split('.').collect();
            // A single label needs no expansion: `S` behind the first search
            // domain is `S.POD_NS.svc.cluster.local`, found literally.
            let (s, n) = match labels.as_slice() {
                [s, n] | [s, n, "svc"] => (*s, *n),
                _ => continue,
            };
            if !is_dns_label(s) || !is_dns_label(n) {
                continue;
            }
            let canonical = format!("{s}.{n}.{LOCAL_ZONE}");
            if canonical == q {
                continue;
            }
            if let Ok(name) = LowerName::from_str(&canonical) {
                if let Some(node) = self.names.get(&name) {
                    let alias = Record::from_rdata(
                        Name::from(qname),
                        self.ttl,
                        RData::CNAME(CNAME(node.canonical.clone())),
                    );
                    return Lookup::Found {
                        node,
                        alias: Some(Box::new(alias)),
                    };
                }
            }
            candidates.push(ServiceName::new(s, n));
        }
        let mut seen = Vec::with_capacity(candidates.len());
        candidates.retain(|c| {
            let new = !seen.contains(c);
            if new {
                seen.push(c.clone());
            }
            new
        });
        if candidates.is_empty() {
            Lookup::NotMesh
        } else {
            Lookup::Unknown(candidates)
        }
    }
}

/// `q` without `.suffix` when it has one and something before it.
fn relative<'q>(q: &'q str, suffix: &str) -> Option<&'q str> {
    q.strip_suffix(suffix)
        .and_then(|r| r.strip_suffix('.'))
        .filter(|r| !r.is_empty())
}

fn fqdn(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

/// Ready pod addresses of a headless service, local cluster first, each once.
fn ready_pod_addrs(service: &Service) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for port in &service.ports {
        for cluster in &port.clusters {
            for ep in &cluster.endpoints {
                let ip = ep.addr.ip();
                if ep.ready && ep.kind == EndpointKind::Direct && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    for h in &service.hostnames {
        if !out.contains(&h.addr) {
            out.push(h.addr);
        }
    }
    out
}

fn soa(zone: &str, version: u64, ttl: u32) -> Record {
    let origin = fqdn(zone).unwrap_or_else(Name::root);
    let mname = fqdn(&format!("ns.dns.{zone}")).unwrap_or_else(Name::root);
    let rname = fqdn(&format!("hostmaster.{zone}")).unwrap_or_else(Name::root);
    // The serial follows the snapshot, so a changed mesh is a changed zone.
    let serial = (version & u64::from(u32::MAX)) as u32;
    let rdata = SOA::new(mname, rname, serial, 7200, 1800, 86_400, ttl);
    Record::from_rdata(origin, ttl, RData::SOA(rdata))
}

#[cfg(test)]
mod tests;
