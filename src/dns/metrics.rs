//! `strait_dns_*` metrics. Every series a query can touch is resolved at
//! registration, so the query path only increments atomics (no label
//! hashing per query).

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::metrics::LATENCY_BUCKETS;

/// The query type label: common types by name, the rest as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Txt,
    Mx,
    Ns,
    Soa,
    Https,
    Any,
    Other,
    /// The request could not be parsed far enough to know.
    Unknown,
}

impl QueryType {
    const ALL: [QueryType; 13] = [
        Self::A,
        Self::Aaaa,
        Self::Srv,
        Self::Ptr,
        Self::Cname,
        Self::Txt,
        Self::Mx,
        Self::Ns,
        Self::Soa,
        Self::Https,
        Self::Any,
        Self::Other,
        Self::Unknown,
    ];

    pub(crate) fn of(t: RecordType) -> Self {
        match t {
            RecordType::A => Self::A,
            RecordType::AAAA => Self::Aaaa,
            RecordType::SRV => Self::Srv,
            RecordType::PTR => Self::Ptr,
            RecordType::CNAME => Self::Cname,
            RecordType::TXT => Self::Txt,
            RecordType::MX => Self::Mx,
            RecordType::NS => Self::Ns,
            RecordType::SOA => Self::Soa,
            RecordType::HTTPS => Self::Https,
            RecordType::ANY => Self::Any,
            _ => Self::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::Aaaa => "aaaa",
            Self::Srv => "srv",
            Self::Ptr => "ptr",
            Self::Cname => "cname",
            Self::Txt => "txt",
            Self::Mx => "mx",
            Self::Ns => "ns",
            Self::Soa => "soa",
            Self::Https => "https",
            Self::Any => "any",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }
}

/// How a query was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// From the mesh snapshot (records or an empty NOERROR).
    Mesh,
    /// An upstream answer (fresh or cached) other than NXDOMAIN/SERVFAIL.
    Forwarded,
    Nxdomain,
    /// Upstream timeout or failure, overload, or nowhere to forward.
    Servfail,
    /// Unparseable, no or several questions, unsupported EDNS version.
    Formerr,
    /// An opcode other than QUERY.
    Notimp,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Self::Mesh,
        Self::Forwarded,
        Self::Nxdomain,
        Self::Servfail,
        Self::Formerr,
        Self::Notimp,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Mesh => "mesh",
            Self::Forwarded => "forwarded",
            Self::Nxdomain => "nxdomain",
            Self::Servfail => "servfail",
            Self::Formerr => "formerr",
            Self::Notimp => "notimp",
        }
    }
}

/// Why an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    Timeout,
    /// Connection or socket error, or an unusable reply.
    Failed,
    /// SERVFAIL or REFUSED from the upstream (the next one is tried).
    Rcode,
}

/// Packets not answered at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Shorter than a DNS header.
    Short,
    /// A response (QR set) sent to us: never answered, to avoid reflection loops.
    Response,
    /// Too many queries waiting on upstreams.
    Overload,
    /// A TCP length prefix out of range; the connection is closed.
    TcpFrame,
}

/// Which upstream transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `[type][outcome]`, in the order of `QueryType::ALL` and `Outcome::ALL`.
    queries: Vec<Vec<IntCounter>>,
    upstream_udp: Histogram,
    upstream_tcp: Histogram,
    upstream_errors: [IntCounter; 3],
    cache_hit: IntCounter,
    cache_miss: IntCounter,
    on_demand: [IntCounter; 3],
    dropped: [IntCounter; 4],
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queries = IntCounterVec::new(
            Opts::new(
                "strait_dns_queries_total",
                "DNS queries answered by the shim, by query type and outcome.",
            ),
            &["type", "outcome"],
        )?;
        registry.register(Box::new(queries.clone()))?;
        let by_type = QueryType::ALL
            .iter()
            .map(|t| {
                Outcome::ALL
                    .iter()
                    .map(|o| queries.with_label_values(&[t.as_str(), o.as_str()]))
                    .collect()
            })
            .collect();

        let upstream = HistogramVec::new(
            HistogramOpts::new(
                "strait_dns_upstream_duration_seconds",
                "Time for an upstream resolver to answer one forwarded query, by transport.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["transport"],
        )?;
        registry.register(Box::new(upstream.clone()))?;

        let errors = IntCounterVec::new(
            Opts::new(
                "strait_dns_upstream_errors_total",
                "Upstream exchanges that gave no usable answer, by reason (timeout, failed, rcode).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(errors.clone()))?;

        let cache = IntCounterVec::new(
            Opts::new(
                "strait_dns_cache_lookups_total",
                "Forwarded queries looked up in the answer cache, by result (hit, miss).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(cache.clone()))?;

        let on_demand = IntCounterVec::new(
            Opts::new(
                "strait_dns_on_demand_total",
                "Queries for unknown mesh names that waited on on-demand discovery, by result \
                 (found, missing, timeout).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(on_demand.clone()))?;

        let dropped = IntCounterVec::new(
            Opts::new(
                "strait_dns_dropped_total",
                "DNS packets not answered, by reason (short, response, overload, tcp_frame).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dropped.clone()))?;

        Ok(Self {
            inner: Arc::new(Inner {
                queries: by_type,
                upstream_udp: upstream.with_label_values(&["udp"]),
                upstream_tcp: upstream.with_label_values(&["tcp"]),
                upstream_errors: ["timeout", "failed", "rcode"]
                    .map(|r| errors.with_label_values(&[r])),
                cache_hit: cache.with_label_values(&["hit"]),
                cache_miss: cache.with_label_values(&["miss"]),
                on_demand: ["found", "missing", "timeout"]
                    .map(|r| on_demand.with_label_values(&[r])),
                dropped: ["short", "response", "overload", "tcp_frame"]
                    .map(|r| dropped.with_label_values(&[r])),
            }),
        })
    }

    pub(crate) fn query(&self, t: QueryType, o: Outcome) {
        // `ALL` lists the variants in declaration order, so the discriminant is the index.
        self.inner.queries[t as usize][o as usize].inc();
    }

    pub(crate) fn upstream(&self, transport: Transport, elapsed: Duration) {
        match transport {
            Transport::Udp => self.inner.upstream_udp.observe(elapsed.as_secs_f64()),
            Transport::Tcp => self.inner.upstream_tcp.observe(elapsed.as_secs_f64()),
        }
    }

    pub(crate) fn upstream_error(&self, e: UpstreamError) {
        self.inner.upstream_errors[e as usize].inc();
    }

    pub(crate) fn cache(&self, hit: bool) {
        if hit {
            self.inner.cache_hit.inc()
        } else {
            self.inner.cache_miss.inc()
        }
    }

    /// `found`: the snapshot knows the name now; `missing`: the hook came
    /// back without it; `timeout`: the hook did not come back in time.
    pub(crate) fn on_demand(&self, found: bool, timed_out: bool) {
        let i = match (found, timed_out) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        self.inner.on_demand[i].inc();
    }

    pub(crate) fn dropped(&self, d: Dropped) {
        self.inner.dropped[d as usize].inc();
    }
}
