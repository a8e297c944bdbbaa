//! The `dns:` table: the DNS shim's settings ([`crate::dns`]) and the range
//! from which discovery allocates VIPs for services that have none.
//!
//! Only settings live here; the shim itself (sockets, answers, forwarding)
//! lives in `src/dns/`, and VIP allocation in `src/discovery/vips.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Config, Problem};

/// The DNS shim. `enabled`, `listen`, `upstreams`, `upstreamTimeout`,
/// `cacheSize` and `vipRange` are read at start; `ttl`, `searchDomains` and
/// `onDemandTimeout` follow reloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dns {
    /// Serve DNS on `listen` and allocate VIPs from `vipRange`. Default
    /// `false` for now: the shim is opt-in until injection turns it on.
    #[serde(default)]
    pub enabled: bool,
    /// UDP and TCP address of the shim (the same port for both). Default
    /// `127.0.0.1:15053`; port 0 binds an ephemeral port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TTL of answers for mesh names, whole seconds. Default `30s`.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// The pod's DNS search domains, used to answer the expanded names a
    /// client sends for short names (`svc.ns` sent as
    /// `svc.ns.POD_NS.svc.cluster.local`) in one round trip. Default, for
    /// `node.namespace` NS: `NS.svc.cluster.local`, `svc.cluster.local`,
    /// `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_domains: Option<Vec<String>>,
    /// CIDR from which services without a VIP (a `ServiceImport` without
    /// `ips`, a `Service` without `clusterIP`) get one; headless services
    /// (`clusterIP: None`) never do. Use a loopback range such as
    /// `127.2.0.0/16` with `listeners.serviceVips` (no iptables). Default
    /// `240.240.0.0/16`. Allocation happens only when `enabled`.
    #[serde(default = "default_vip_range")]
    pub vip_range: VipRange,
    /// Resolvers for every name that is not a mesh service, as `IP` (port
    /// 53) or `IP:PORT`, tried in order. Default: the `nameserver` lines of
    /// `/etc/resolv.conf` at start, without the shim's own address. An empty
    /// list forwards nothing (non-mesh names get SERVFAIL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<Upstream>>,
    /// How long one upstream may take to answer (UDP retries and the TCP
    /// retry of a truncated answer included) before the next is tried; when
    /// every upstream has failed the client gets SERVFAIL. Default `2s`.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Forwarded answers kept in the cache (entries); `0` disables caching.
    /// Default `10000`.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// How long a query for a mesh-domain name the snapshot does not know
    /// waits for on-demand discovery before it is forwarded. Default `1s`.
    #[serde(default = "default_on_demand_timeout", with = "humantime_serde")]
    pub on_demand_timeout: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15053))
}
fn default_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_vip_range() -> VipRange {
    VipRange {
        base: IpAddr::V4(Ipv4Addr::new(240, 240, 0, 0)),
        prefix: 16,
    }
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_cache_size() -> usize {
    10_000
}
fn default_on_demand_timeout() -> Duration {
    Duration::from_secs(1)
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: default_listen(),
            ttl: default_ttl(),
            search_domains: None,
            vip_range: default_vip_range(),
            upstreams: None,
            upstream_timeout: default_upstream_timeout(),
            cache_size: default_cache_size(),
            on_demand_timeout: default_on_demand_timeout(),
        }
    }
}

/// Longest TTL accepted for mesh answers: one day.
const MAX_TTL: Duration = Duration::from_secs(86_400);

impl Dns {
    /// The search domains in force for a pod in `namespace`, lowercase,
    /// without a trailing dot.
    pub fn search_domains(&self, namespace: &str) -> Vec<String> {
        match &self.search_domains {
            Some(list) => list
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            None => vec![
                format!("{namespace}.svc.cluster.local"),
                "svc.cluster.local".to_owned(),
                "cluster.local".to_owned(),
            ],
        }
    }

    /// Range and cross-field checks, with `dns.*` field paths.
    pub(super) fn validate(&self, config: &Config, problems: &mut Vec<Problem>) {
        if self.ttl > MAX_TTL {
            problems.push(Problem::new(
                "dns.ttl",
                format!("{:?} is longer than one day", self.ttl),
            ));
        }
        if self.upstream_timeout.is_zero() || self.upstream_timeout > Duration::from_secs(30) {
            problems.push(Problem::new(
                "dns.upstreamTimeout",
                format!(
                    "{:?} is out of range (more than 0, at most 30s)",
                    self.upstream_timeout
                ),
            ));
        }
        if self.on_demand_timeout > Duration::from_secs(10) {
            problems.push(Problem::new(
                "dns.onDemandTimeout",
                format!("{:?} is longer than 10s", self.on_demand_timeout),
            ));
        }
        if self.cache_size > 1_000_000 {
            problems.push(Problem::new(
                "dns.cacheSize",
                format!("{} is out of range (0..=1000000)", self.cache_size),
            ));
        }
        for (i, d) in self.search_domains.iter().flatten().enumerate() {
            if !is_domain(d) {
                problems.push(Problem::new(
                    format!("dns.searchDomains[{i}]"),
                    format!("{d:?} is not a domain name"),
                ));
            }
        }
        let (min, max) = match self.vip_range.base {
            IpAddr::V4(_) => (8, 30),
            IpAddr::V6(_) => (64, 126),
        };
        if !(min..=max).contains(&self.vip_range.prefix) {
            problems.push(Problem::new(
                "dns.vipRange",
                format!(
                    "{}: prefix length must be {min}..={max} for this family",
                    self.vip_range
                ),
            ));
        }
        if self.enabled && config.listeners.service_vips && !self.vip_range.base.is_loopback() {
            problems.push(Problem::new(
                "dns.vipRange",
                format!(
                    "{} is not a loopback range, but listeners.serviceVips binds a listener on \
                     every VIP; use a range in 127.0.0.0/8 (such as 127.2.0.0/16)",
                    self.vip_range
                ),
            ));
        }
        for (i, u) in self.upstreams.iter().flatten().enumerate() {
            if u.0 == self.listen {
                problems.push(Problem::new(
                    format!("dns.upstreams[{i}]"),
                    format!("{} is the shim's own address (a forwarding loop)", u.0),
                ));
            }
        }
        if self.enabled && self.listen.port() != 0 {
            let admin = config.listeners.admin;
            if admin == self.listen {
                problems.push(Problem::new(
                    "dns.listen",
                    format!("{} is also the admin address", self.listen),
                ));
            }
            if config.listeners.outbound == Some(self.listen) {
                problems.push(Problem::new(
                    "dns.listen",
                    format!("{} is also the outbound address", self.listen),
                ));
            }
        }
    }

    /// Copies the settings read only at start from `running`; returns
    /// whether any differed (a reload then says they wait for a restart).
    pub(crate) fn keep_start_only(&mut self, running: &Dns) -> bool {
        let changed = self.enabled != running.enabled
            || self.listen != running.listen
            || self.upstreams != running.upstreams
            || self.upstream_timeout != running.upstream_timeout
            || self.cache_size != running.cache_size
            || self.vip_range != running.vip_range;
        self.enabled = running.enabled;
        self.listen = running.listen;
        self.upstreams = running.upstreams.clone();
        self.upstream_timeout = running.upstream_timeout;
        self.cache_size = running.cache_size;
        self.vip_range = running.vip_range;
        changed
    }
}

/// A DNS name of dot-separated labels (letters, digits, `-`, `_`), at most
/// 253 characters; a trailing dot is allowed.
fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An address range in CIDR notation, such as `240.240.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipRange {
    base: IpAddr,
    prefix: u8,
}

impl VipRange {
    /// How many host addresses the range offers for allocation, without the
    /// network and broadcast addresses; capped at 2^32.
    pub fn len(&self) -> u64 {
        let host_bits = u32::from(self.bits() - self.prefix).min(32);
        (1u64 << host_bits).saturating_sub(2)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th allocatable address (`0..len()`), skipping the network address.
    pub fn nth(&self, i: u64) -> Option<IpAddr> {
        if i >= self.len() {
            return None;
        }
        let offset = u128::from(i) + 1;
        Some(match self.base {
            IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b) + offset as u32)),
            IpAddr::V6(b) => IpAddr::V6((u128::from(b) + offset).into()),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let host_bits = u32::from(self.bits() - self.prefix);
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(ip)) => {
                u32::from(b).checked_shr(host_bits).unwrap_or(0)
                    == u32::from(ip).checked_shr(host_bits).unwrap_or(0)
            }
            (IpAddr::V6(b), IpAddr::V6(ip)) => {
                u128::from(b).checked_shr(host_bits).unwrap_or(0)
                    == u128::from(ip).checked_shr(host_bits).unwrap_or(0)
            }
            _ => false,
        }
    }

    pub fn base(&self) -> IpAddr {
        self.base
    }

    fn bits(&self) -> u8 {
        if self.base.is_ipv4() {
            32
        } else {
            128
        }
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for VipRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (ADDRESS/PREFIX)"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length (0..={bits})"))?;
        let host_bits = u32::from(bits - prefix);
        // Keep only the network part: `10.1.2.3/16` means `10.1.0.0/16`.
        let base = match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        Ok(Self { base, prefix })
    }
}

impl Serialize for VipRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An upstream resolver: `IP` (port 53) or `IP:PORT` (`[V6]:PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream(pub SocketAddr);

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(SocketAddr::new(ip, 53)))
            .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
    }
}

impl Serialize for Upstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
