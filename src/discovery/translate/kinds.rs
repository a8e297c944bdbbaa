//! Translation of each resource kind into the service drafts: Services,
//! ServiceImports (both API groups), EndpointSlices, GlobalTrafficPolicies,
//! Clusters and the balancing annotations; plus the field checks they share.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::*;

pub(super) fn unknown_service(s: &Sourced, kind: &str, name: &ServiceName) -> Problem {
    Problem::new(
        format!("{}.metadata", s.source),
        format!("{kind} for {name}, which no Service or ServiceImport defines"),
    )
}

pub(super) fn check_meta(
    s: &Sourced,
    meta: &manifest::ObjectMeta,
    problems: &mut Vec<Problem>,
) -> bool {
    let mut ok = true;
    if !is_dns_label(&meta.name) {
        problems.push(Problem::new(
            format!("{}.metadata.name", s.source),
            format!("{:?} is not a DNS label", meta.name),
        ));
        ok = false;
    }
    if !is_dns_label(meta.namespace()) {
        problems.push(Problem::new(
            format!("{}.metadata.namespace", s.source),
            format!("{:?} is not a DNS label", meta.namespace()),
        ));
        ok = false;
    }
    ok
}

pub(super) fn port_number(path: String, value: i64, problems: &mut Vec<Problem>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            problems.push(Problem::new(path, format!("{value} is not a port")));
            None
        }
    }
}

pub(super) fn parse_ip(path: String, value: &str, problems: &mut Vec<Problem>) -> Option<IpAddr> {
    match value.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(Problem::new(
                path,
                format!("{value:?} is not an IP address"),
            ));
            None
        }
    }
}

pub(super) fn cluster(
    s: &Sourced,
    c: &manifest::Cluster,
    clusters: &mut BTreeMap<String, ClusterInfo>,
    problems: &mut Vec<Problem>,
) {
    let name = &c.metadata.name;
    if !is_dns_label(name) {
        problems.push(Problem::new(
            format!("{}.metadata.name", s.source),
            format!("{name:?} is not a DNS label"),
        ));
        return;
    }
    let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "default".to_owned());
    let key = format!(
        "{}/{}/{}/{name}",
        part(&c.spec.region),
        part(&c.spec.zone),
        part(&c.spec.group)
    );
    let gateway = match (&c.spec.gateway_host, c.spec.gateway_port) {
        (Some(host), Some(port)) => {
            let ip = parse_ip(format!("{}.spec.gatewayHost", s.source), host, problems);
            let port = port_number(format!("{}.spec.gatewayPort", s.source), port, problems);
            ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port))
        }
        (None, None) => None,
        _ => {
            problems.push(Problem::new(
                format!("{}.spec", s.source),
                "gatewayHost and gatewayPort go together",
            ));
            None
        }
    };
    clusters.insert(name.clone(), ClusterInfo { key, gateway });
}

pub(super) fn service(
    s: &Sourced,
    svc: &manifest::Service,
    services: &mut BTreeMap<ServiceName, ServiceDraft>,
    problems: &mut Vec<Problem>,
) {
    if !check_meta(s, &svc.metadata, problems) {
        return;
    }
    let name = ServiceName::new(&svc.metadata.name, svc.metadata.namespace());
    let draft = services.entry(name.clone()).or_default();
    balancer_annotations(s, &svc.metadata, draft, problems);
    if let Some(first) = &draft.defined_at {
        if first.contains("Service ") {
            problems.push(Problem::new(
                format!("{}.metadata.name", s.source),
                format!(
                    "Service {name} is already defined at {}",
                    first.trim_start_matches("Service ")
                ),
            ));
            return;
        }
    }
    draft.defined_at = Some(format!("Service {}", s.source));
    let mut ips: Vec<&str> = Vec::new();
    ips.extend(svc.spec.cluster_ip.as_deref());
    ips.extend(svc.spec.cluster_ips.iter().map(String::as_str));
    for (i, ip) in ips.iter().enumerate() {
        if ip.eq_ignore_ascii_case("none") {
            draft.headless = true;
            continue;
        }
        if ip.is_empty() {
            continue;
        }
        let path = if i == 0 && svc.spec.cluster_ip.is_some() {
            format!("{}.spec.clusterIP", s.source)
        } else {
            format!("{}.spec.clusterIPs", s.source)
        };
        if let Some(ip) = parse_ip(path, ip, problems) {
            if !draft.vips.contains(&ip) {
                draft.vips.push(ip);
            }
        }
    }
    for (i, p) in svc.spec.ports.iter().enumerate() {
        let path = format!("{}.spec.ports[{i}]", s.source);
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            // UDP and SCTP ports are not proxied; DNS is the shim's job.
            continue;
        }
        let Some(port) = port_number(format!("{path}.port"), p.port, problems) else {
            continue;
        };
        if let Some(manifest::IntOrString::Int(t)) = &p.target_port {
            port_number(format!("{path}.targetPort"), *t, problems);
        }
        let protocol = Protocol::from_hint(p.app_protocol.as_deref(), p.name.as_deref());
        draft.port_mut(port, &p.name, protocol);
    }
}

pub(super) fn import(
    s: &Sourced,
    imp: &manifest::ServiceImport,
    local: &str,
    clusters: &BTreeMap<String, ClusterInfo>,
    services: &mut BTreeMap<ServiceName, ServiceDraft>,
    problems: &mut Vec<Problem>,
) {
    if !check_meta(s, &imp.metadata, problems) {
        return;
    }
    let name = ServiceName::new(&imp.metadata.name, imp.metadata.namespace());
    let draft = services.entry(name.clone()).or_default();
    balancer_annotations(s, &imp.metadata, draft, problems);
    if draft.defined_at.is_none() {
        draft.defined_at = Some(format!("ServiceImport {}", s.source));
    }
    if imp.spec.type_.as_deref() == Some("Headless") {
        draft.headless = true;
    }
    for (i, ip) in imp.spec.ips.iter().enumerate() {
        if let Some(ip) = parse_ip(format!("{}.spec.ips[{i}]", s.source), ip, problems) {
            if !draft.vips.contains(&ip) {
                draft.vips.push(ip);
            }
        }
    }
    for (i, p) in imp.spec.ports.iter().enumerate() {
        let path = format!("{}.spec.ports[{i}]", s.source);
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let Some(port) = port_number(format!("{path}.port"), p.port, problems) else {
            continue;
        };
        let protocol = Protocol::from_hint(p.app_protocol.as_deref(), p.name.as_deref());
        let sni: Arc<str> = Arc::from(format!(
            "outbound_.{port}_._.{}.{}.svc.cluster.local",
            name.name, name.namespace
        ));
        let mut endpoints: Vec<(String, Endpoint)> = Vec::new();
        for (j, ep) in p.endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{j}]");
            let Some(cluster) = cluster_name(&ep.cluster_key) else {
                problems.push(Problem::new(
                    format!("{epath}.clusterKey"),
                    format!(
                        "{:?} is not a cluster key (region/zone/group/name)",
                        ep.cluster_key
                    ),
                ));
                continue;
            };
            if let Some(known) = clusters.get(cluster) {
                if known.key != ep.cluster_key {
                    problems.push(Problem::new(
                        format!("{epath}.clusterKey"),
                        format!(
                            "{:?} does not match Cluster {cluster} ({})",
                            ep.cluster_key, known.key
                        ),
                    ));
                    continue;
                }
            }
            let ip = match (&ep.target.ip, &ep.target.host) {
                (Some(ip), _) => parse_ip(format!("{epath}.target.ip"), ip, problems),
                (None, Some(host)) => parse_ip(format!("{epath}.target.host"), host, problems),
                (None, None) => {
                    problems.push(Problem::new(format!("{epath}.target"), "needs ip or host"));
                    None
                }
            };
            let tport = port_number(format!("{epath}.target.port"), ep.target.port, problems);
            if let (Some(ip), Some(tport)) = (ip, tport) {
                // A target in the local cluster is a direct address; elsewhere, a gateway.
                let kind = if cluster == local {
                    EndpointKind::Direct
                } else {
                    EndpointKind::Gateway {
                        sni: Arc::clone(&sni),
                    }
                };
                endpoints.push((
                    cluster.to_owned(),
                    Endpoint {
                        addr: SocketAddr::new(ip, tport),
                        ready: true,
                        kind,
                    },
                ));
            }
        }
        let draft_port = draft.port_mut(port, &p.name, protocol);
        for (cluster, ep) in endpoints {
            draft_port.clusters.entry(cluster).or_default().push(ep);
        }
    }
}

/// The name part of `region/zone/group/name`.
pub(super) fn cluster_name(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        [_, _, _, name] if parts.iter().all(|p| is_dns_label(p)) => Some(name),
        _ => None,
    }
}

pub(super) fn endpoint_slice(
    s: &Sourced,
    slice: &manifest::EndpointSlice,
    local: &str,
    services: &mut BTreeMap<ServiceName, ServiceDraft>,
    problems: &mut Vec<Problem>,
) {
    if !check_meta(s, &slice.metadata, problems) {
        return;
    }
    let labels = &slice.metadata.labels;
    let Some(svc_name) = labels
        .get(LABEL_SERVICE_NAME)
        .or_else(|| labels.get(LABEL_MCS_SERVICE_NAME))
    else {
        problems.push(Problem::new(
            format!("{}.metadata.labels", s.source),
            format!("needs {LABEL_SERVICE_NAME} (or {LABEL_MCS_SERVICE_NAME}) naming the service"),
        ));
        return;
    };
    let cluster = labels
        .get(LABEL_SOURCE_CLUSTER)
        .map(String::as_str)
        .unwrap_or(local);
    if !is_dns_label(cluster) {
        problems.push(Problem::new(
            format!("{}.metadata.labels", s.source),
            format!("{LABEL_SOURCE_CLUSTER}: {cluster:?} is not a cluster name"),
        ));
        return;
    }
    let family_v6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        other => {
            problems.push(Problem::new(
                format!("{}.addressType", s.source),
                format!("{other:?} is not supported (IPv4 or IPv6)"),
            ));
            return;
        }
    };
    let name = ServiceName::new(svc_name, slice.metadata.namespace());
    let Some(draft) = services.get_mut(&name) else {
        problems.push(unknown_service(s, "EndpointSlice", &name));
        return;
    };

    let mut addrs: Vec<(IpAddr, bool)> = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let ready = ep.conditions.ready != Some(false);
        let hostname = ep.hostname.as_ref().filter(|h| ready && is_dns_label(h));
        for (j, a) in ep.addresses.iter().enumerate() {
            let path = format!("{}.endpoints[{i}].addresses[{j}]", s.source);
            if let Some(ip) = parse_ip(path.clone(), a, problems) {
                if ip.is_ipv6() != family_v6 {
                    problems.push(Problem::new(
                        path,
                        format!("{ip} does not match addressType {}", slice.address_type),
                    ));
                    continue;
                }
                addrs.push((ip, ready));
                if let Some(h) = hostname {
                    draft.hostnames.push(PodHostname {
                        hostname: h.clone(),
                        cluster: cluster.to_owned(),
                        addr: ip,
                    });
                }
            }
        }
    }
    let single = draft.ports.len() == 1 && slice.ports.len() == 1;
    for (i, sp) in slice.ports.iter().enumerate() {
        let Some(target) = port_number(format!("{}.ports[{i}].port", s.source), sp.port, problems)
        else {
            continue;
        };
        // Kubernetes pairs a service port with a slice port by name.
        let matching = draft
            .ports
            .iter_mut()
            .filter(|p| single || p.name == sp.name);
        for port in matching {
            let eps = port.clusters.entry(cluster.to_owned()).or_default();
            eps.extend(addrs.iter().map(|&(ip, ready)| Endpoint {
                addr: SocketAddr::new(ip, target),
                ready,
                kind: EndpointKind::Direct,
            }));
        }
    }
}

pub(super) fn policy(
    s: &Sourced,
    gtp: &manifest::GlobalTrafficPolicy,
    services: &mut BTreeMap<ServiceName, ServiceDraft>,
    problems: &mut Vec<Problem>,
) {
    let name = ServiceName::new(&gtp.metadata.name, gtp.metadata.namespace());
    let path = format!("{}.spec", s.source);
    let lb_type = match gtp.spec.lb_type.as_str() {
        "Locality" => LbType::Locality,
        "ActiveActive" => LbType::ActiveActive,
        "FailOver" => LbType::FailOver,
        other => {
            problems.push(Problem::new(
                format!("{path}.lbType"),
                format!("{other:?} is not one of Locality, ActiveActive, FailOver"),
            ));
            return;
        }
    };
    let n = gtp.spec.targets.len();
    match lb_type {
        LbType::Locality if n > 1 => problems.push(Problem::new(
            format!("{path}.targets"),
            format!("Locality takes at most one target, got {n}"),
        )),
        LbType::FailOver if n == 0 => problems.push(Problem::new(
            format!("{path}.targets"),
            "FailOver needs at least one target",
        )),
        _ => {}
    }
    let mut targets = Vec::new();
    for (i, t) in gtp.spec.targets.iter().enumerate() {
        if cluster_name(&t.cluster_key).is_none() {
            problems.push(Problem::new(
                format!("{path}.targets[{i}].clusterKey"),
                format!(
                    "{:?} is not a cluster key (region/zone/group/name)",
                    t.cluster_key
                ),
            ));
            continue;
        }
        let weight = match t.weight {
            None | Some(0) => 100,
            Some(w) if w > 0 && w <= i64::from(u32::MAX) => w as u32,
            Some(w) => {
                problems.push(Problem::new(
                    format!("{path}.targets[{i}].weight"),
                    format!("{w} is not a weight (0 or more)"),
                ));
                continue;
            }
        };
        targets.push(PolicyTarget {
            cluster_key: t.cluster_key.clone(),
            weight,
        });
    }
    match services.get_mut(&name) {
        Some(d) => d.policy = Policy { lb_type, targets },
        None => problems.push(unknown_service(s, "GlobalTrafficPolicy", &name)),
    }
}

/// Reads the balancing annotations of a Service or ServiceImport.
pub(super) fn balancer_annotations(
    s: &Sourced,
    meta: &manifest::ObjectMeta,
    draft: &mut ServiceDraft,
    problems: &mut Vec<Problem>,
) {
    let path = |key: &str| format!("{}.metadata.annotations.{key}", s.source);
    if let Some(v) = meta.annotations.get(ANNOTATION_LB_ALGORITHM) {
        match Algorithm::parse(v) {
            Some(a) => draft.algorithm = a,
            None => problems.push(Problem::new(
                path(ANNOTATION_LB_ALGORITHM),
                format!(
                    "{v:?} is not one of p2c-ewma, round-robin, least-request, consistent-hash"
                ),
            )),
        }
    }
    let duration = |key: &str, problems: &mut Vec<Problem>| {
        let v = meta.annotations.get(key)?;
        match humantime::parse_duration(v) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                problems.push(Problem::new(
                    path(key),
                    format!("{v:?} is not a duration greater than 0 (such as 500ms or 2s)"),
                ));
                None
            }
        }
    };
    if let Some(d) = duration(ANNOTATION_CONNECT_TIMEOUT, problems) {
        draft.connect_timeout = Some(d);
    }
    if let Some(d) = duration(ANNOTATION_REQUEST_TIMEOUT, problems) {
        draft.request_timeout = Some(d);
    }
    if let Some(v) = meta.annotations.get(ANNOTATION_MAX_PER_ENDPOINT) {
        match v.parse::<u32>() {
            Ok(n) if n > 0 => draft.max_inflight = Some(n),
            _ => problems.push(Problem::new(
                path(ANNOTATION_MAX_PER_ENDPOINT),
                format!("{v:?} is not a whole number greater than 0"),
            )),
        }
    }
    if let Some(v) = meta.annotations.get(ANNOTATION_SERVICE_ACCOUNT) {
        if is_dns_label(v) {
            draft.service_account = Some(v.clone());
        } else {
            problems.push(Problem::new(
                path(ANNOTATION_SERVICE_ACCOUNT),
                format!("{v:?} is not a service account name"),
            ));
        }
    }
    if let Some(v) = meta.annotations.get(ANNOTATION_MTLS) {
        match v.as_str() {
            "enabled" => draft.mtls = Some(true),
            "disabled" => draft.mtls = Some(false),
            _ => problems.push(Problem::new(
                path(ANNOTATION_MTLS),
                format!("{v:?} is not enabled or disabled"),
            )),
        }
    }
    if let Some(v) = meta.annotations.get(ANNOTATION_HASH_KEY) {
        let parsed = match v.split_once(':') {
            None if v == "client-ip" => Some(HashKey::ClientIp),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(HashKey::Header),
            _ => None,
        };
        match parsed {
            Some(k) => draft.hash_key = k,
            None => problems.push(Problem::new(
                path(ANNOTATION_HASH_KEY),
                format!("{v:?} is not client-ip or header:NAME"),
            )),
        }
    }
}
