//! Forwarding to the upstream resolvers, with hickory's UDP and TCP client
//! streams: a fresh random source port per UDP query, EDNS(0) with a 1232
//! byte payload (DNS flag day 2020), and a TCP retry when the UDP answer is
//! truncated, so large answers arrive whole. Upstreams are tried in order,
//! each within `dns.upstreamTimeout`; a timeout, a socket error, SERVFAIL or
//! REFUSED moves on to the next. NXDOMAIN and NODATA are answers, kept as
//! they are. Answers go through the cache (`cache.rs`).
//!
//! This module does not decide which names are forwarded (`handler.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, DnsRequestSender, FirstAnswer};
use hickory_net::NetError;
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message, Query, ResponseCode};
use hickory_proto::rr::LowerName;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::cache::{Cache, Key, Upstream};
use super::metrics::{Metrics, Transport, UpstreamError};

/// The EDNS payload size advertised upstream and to clients.
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// No upstream gave an answer worth passing on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoAnswer;

pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Cache,
    metrics: Metrics,
    provider: TokioRuntimeProvider,
}

impl Forwarder {
    pub(crate) fn new(
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        cache_size: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            upstreams,
            timeout,
            cache: Cache::new(cache_size),
            metrics,
            provider: TokioRuntimeProvider::default(),
        }
    }

    pub(crate) fn has_upstreams(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// The cached answer to `query`, without asking anyone.
    pub(crate) fn cached(&self, query: &Query, dnssec_ok: bool) -> Option<Arc<Upstream>> {
        let hit = self.cache.get(&key(query, dnssec_ok), Instant::now());
        self.metrics.cache(hit.is_some());
        hit
    }

    /// An upstream's answer to `query` (after [`Forwarder::cached`] missed).
    pub(crate) async fn forward(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> Result<Arc<Upstream>, NoAnswer> {
        let mut last = None;
        for upstream in &self.upstreams {
            match self.exchange(*upstream, query, dnssec_ok).await {
                Ok(message) => {
                    let answer = Arc::new(Upstream::from_message(message, Instant::now()));
                    if matches!(
                        answer.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) {
                        self.metrics.upstream_error(UpstreamError::Rcode);
                        debug!(%upstream, rcode = %answer.response_code, "upstream refused or failed");
                        last = Some(answer);
                        continue;
                    }
                    self.cache
                        .insert(key(query, dnssec_ok), &answer, Instant::now());
                    return Ok(answer);
                }
                Err(e) => {
                    self.metrics.upstream_error(e);
                    debug!(%upstream, error = ?e, "upstream gave no answer");
                }
            }
        }
        last.ok_or(NoAnswer)
    }

    /// One upstream: UDP, then TCP if the answer was truncated, all within the timeout.
    async fn exchange(
        &self,
        upstream: SocketAddr,
        query: &Query,
        dnssec_ok: bool,
    ) -> Result<Message, UpstreamError> {
        let deadline = Instant::now() + self.timeout;
        let request = request(query, dnssec_ok);

        let start = Instant::now();
        let mut udp = UdpClientStream::builder(upstream, self.provider.clone())
            .with_timeout(Some(self.timeout))
            .with_os_port_selection(true)
            .build();
        let answer = timeout_at(deadline, udp.send_message(request.clone()).first_answer()).await;
        let response = classify(answer)?;
        self.metrics.upstream(Transport::Udp, start.elapsed());
        if !response.metadata.truncation {
            return Ok(response.into_message());
        }

        debug!(%upstream, "truncated over UDP; retrying over TCP");
        let start = Instant::now();
        let tcp = async {
            let exchange = TcpClientStream::exchange(
                upstream,
                None,
                self.timeout,
                Some(1),
                self.provider.clone(),
            )
            .await?;
            exchange.send(request).first_answer().await
        };
        let response = classify(timeout_at(deadline, tcp).await)?;
        self.metrics.upstream(Transport::Tcp, start.elapsed());
        Ok(response.into_message())
    }
}

fn classify<T>(
    r: Result<Result<T, NetError>, tokio::time::error::Elapsed>,
) -> Result<T, UpstreamError> {
    match r {
        Err(_) | Ok(Err(NetError::Timeout)) => Err(UpstreamError::Timeout),
        Ok(Err(_)) => Err(UpstreamError::Failed),
        Ok(Ok(t)) => Ok(t),
    }
}

fn key(query: &Query, dnssec_ok: bool) -> Key {
    Key {
        name: LowerName::new(&query.name),
        qtype: query.query_type,
        qclass: query.query_class,
        dnssec_ok,
    }
}

/// The query sent upstream: the client's question as asked (name case
/// kept), recursion desired, EDNS with our payload size and the client's DO bit.
fn request(query: &Query, dnssec_ok: bool) -> DnsRequest {
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_payload_len = EDNS_PAYLOAD;
    options.edns_set_dnssec_ok = dnssec_ok;
    options.recursion_desired = true;
    DnsRequest::from_query(query.clone(), options)
}

/// The `nameserver` addresses (port 53) of resolv.conf text, without `own`
/// (the shim itself: forwarding to it would loop).
pub fn upstreams_from_resolv_conf(text: &str, own: SocketAddr) -> Vec<SocketAddr> {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or("").trim())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|addr| !is_own(*addr, own))
        .collect()
}

/// Whether `addr` reaches the shim listening on `own`.
pub(crate) fn is_own(addr: SocketAddr, own: SocketAddr) -> bool {
    addr.port() == own.port()
        && (addr.ip() == own.ip()
            || (own.ip().is_unspecified()
                && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_become_upstreams_without_the_shim() {
        let text = "# generated\nsearch shop.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\nnameserver fe80::1%eth0 ; link-local\n\
                    nameserver 127.0.0.1\noptions ndots:5\nnameserver bogus\n";
        let own: SocketAddr = "127.0.0.1:15053".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(text, own),
            ["10.96.0.10:53", "[fe80::1]:53", "127.0.0.1:53"]
                .map(|a| a.parse::<SocketAddr>().unwrap())
        );
        let own: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(text, own),
            ["10.96.0.10:53", "[fe80::1]:53"].map(|a| a.parse::<SocketAddr>().unwrap())
        );
    }

    #[test]
    fn queries_upstream_carry_edns_and_keep_the_name_case() {
        let name = hickory_proto::rr::Name::from_ascii("ExAmple.COM.").unwrap();
        let q = Query::query(name, hickory_proto::rr::RecordType::A);
        let r = request(&q, true);
        let edns = r.edns.as_ref().expect("edns");
        assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
        assert!(edns.flags().dnssec_ok);
        assert!(r.metadata.recursion_desired);
        assert_eq!(r.queries[0].name.to_ascii(), "ExAmple.COM.");
    }
}
