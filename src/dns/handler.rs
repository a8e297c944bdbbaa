//! hickory's [`RequestHandler`], implemented directly (not a `Catalog`):
//! one query in, one response out, every outcome counted.
//!
//! Order of decisions: a request that is not a plain query gets NOTIMP
//! (other opcodes) or FORMERR (no or several questions, EDNS version above
//! 0: BADVERS); a mesh name is answered from the index, authoritatively
//! (records, or an empty NOERROR with the zone's SOA when the service lacks
//! the family); a name shaped like a mesh name but unknown waits on the
//! on-demand hook, then is answered if it appeared; everything else is
//! forwarded (answer cache first), and SERVFAIL when no upstream answers.
//!
//! [`Handler::answer`] is the whole request path from bytes to bytes, shared
//! by the UDP and TCP loops (`server.rs`), the tests and the fuzz target; it
//! drops what must not be answered (shorter than a header, or a response).

use std::iter;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_net::runtime::{Time, TokioTime};
use hickory_net::xfer::Protocol;
use hickory_net::NetError;
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::time::Instant;
use tracing::{debug, trace};

use super::forward::{Forwarder, EDNS_PAYLOAD};
use super::index::{Lookup, MeshIndex, Node, Zone};
use super::metrics::{Dropped, Metrics, Outcome, QueryType};
use super::on_demand::OnDemand;
use super::resolver::MeshResolver;
use crate::discovery::Store;

/// Largest UDP response sent, whatever a client advertises.
const MAX_UDP_RESPONSE: u16 = 4096;

/// What a [`Handler`] is built from.
pub struct HandlerInputs {
    pub store: Arc<Store>,
    /// Upstream resolvers, in order (already resolved from resolv.conf).
    pub upstreams: Vec<SocketAddr>,
    pub metrics: Metrics,
    pub on_demand: Arc<dyn OnDemand>,
}

/// Answers DNS queries: mesh names from discovery, the rest forwarded.
pub struct Handler {
    resolver: Arc<MeshResolver>,
    forwarder: Forwarder,
    on_demand: Arc<dyn OnDemand>,
    metrics: Metrics,
}

impl Handler {
    /// Reads `dns.upstreamTimeout` and `dns.cacheSize` once, here.
    pub fn new(inputs: HandlerInputs) -> Self {
        let HandlerInputs {
            store,
            upstreams,
            metrics,
            on_demand,
        } = inputs;
        let dns = store.load().config.dns.clone();
        Self {
            resolver: Arc::new(MeshResolver::new(store)),
            forwarder: Forwarder::new(
                upstreams,
                dns.upstream_timeout,
                dns.cache_size,
                metrics.clone(),
            ),
            on_demand,
            metrics,
        }
    }

    pub(crate) fn resolver(&self) -> Arc<MeshResolver> {
        Arc::clone(&self.resolver)
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The request path: a query's bytes in, the response's bytes out
    /// (`None`: send nothing). UDP responses are truncated (TC) to the
    /// client's payload size; TCP ones are not.
    pub async fn answer(&self, raw: Vec<u8>, src: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let Some(header) = raw.first_chunk::<12>().copied() else {
            self.metrics.dropped(Dropped::Short);
            return None;
        };
        if header[2] & 0x80 != 0 {
            self.metrics.dropped(Dropped::Response);
            return None;
        }
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let request = match Request::from_bytes(raw, src, protocol) {
            Ok(r) => r,
            Err(error) => {
                debug!(%src, %error, "malformed query");
                self.metrics.query(QueryType::Unknown, Outcome::Formerr);
                return Some(header_only(&header, ResponseCode::FormErr));
            }
        };
        if points_into_header(request.queries.as_bytes()) {
            debug!(%src, "question compressed against the header");
            self.metrics.query(QueryType::Unknown, Outcome::Formerr);
            return Some(header_only(&header, ResponseCode::FormErr));
        }
        let max_size = if tcp {
            u16::MAX
        } else {
            request.max_payload().min(MAX_UDP_RESPONSE)
        };
        let capture = Capture::new(max_size);
        self.handle_request::<_, TokioTime>(&request, capture.clone())
            .await;
        capture.take()
    }

    async fn lookup<R: ResponseHandler>(&self, request: &Request, rh: R) -> ResponseInfo {
        let query = &request.queries.queries()[0];
        let qtype = query.query_type();
        let label = QueryType::of(qtype);
        if query.query_class() == DNSClass::IN {
            let index = self.resolver.current();
            let candidates = match index.lookup(query.name()) {
                Lookup::Found { node, alias } => {
                    return self.send_mesh(request, rh, &index, node, alias).await;
                }
                Lookup::Unknown(candidates) => candidates,
                Lookup::NotMesh => Vec::new(),
            };
            if !candidates.is_empty() {
                let wait = self.resolver.store().load().config.dns.on_demand_timeout;
                let timed_out = tokio::time::timeout(wait, self.on_demand.discover(&candidates))
                    .await
                    .is_err();
                let index = self.resolver.current();
                if let Lookup::Found { node, alias } = index.lookup(query.name()) {
                    self.metrics.on_demand(true, timed_out);
                    return self.send_mesh(request, rh, &index, node, alias).await;
                }
                self.metrics.on_demand(false, timed_out);
                if !self.forwarder.has_upstreams() {
                    // Nobody else to ask about a mesh-domain name: it does not exist.
                    self.metrics.query(label, Outcome::Nxdomain);
                    let mut meta = response_meta(request);
                    meta.authoritative = true;
                    meta.response_code = ResponseCode::NXDomain;
                    let soa = index.soa(Zone::Local);
                    return send(
                        request,
                        rh,
                        meta,
                        iter::empty(),
                        iter::once(soa),
                        iter::empty(),
                    )
                    .await;
                }
            }
        }
        self.forward(request, rh, label).await
    }

    async fn send_mesh<R: ResponseHandler>(
        &self,
        request: &Request,
        rh: R,
        index: &MeshIndex,
        node: &Node,
        alias: Option<Box<Record>>,
    ) -> ResponseInfo {
        let qtype = request.queries.queries()[0].query_type();
        self.metrics.query(QueryType::of(qtype), Outcome::Mesh);
        let sets = node.records(qtype);
        // NODATA (SOA in authority) unless a record answers: a CNAME answers
        // only a CNAME query.
        let nodata =
            sets.iter().all(|s| s.is_empty()) && (alias.is_none() || qtype != RecordType::CNAME);
        let glue: &[Record] = if matches!(qtype, RecordType::SRV | RecordType::ANY) {
            &node.glue
        } else {
            &[]
        };
        let soa = nodata.then(|| index.soa(node.zone));
        trace!(name = %node.canonical, %qtype, nodata, "mesh answer");
        let mut meta = response_meta(request);
        meta.authoritative = true;
        let answers = alias
            .as_deref()
            .into_iter()
            .chain(sets.into_iter().flatten());
        send(request, rh, meta, answers, soa.into_iter(), glue.iter()).await
    }

    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        rh: R,
        label: QueryType,
    ) -> ResponseInfo {
        let query = request.queries.queries()[0].original();
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let answer = if !self.forwarder.has_upstreams() {
            None
        } else if let Some(hit) = self.forwarder.cached(query, dnssec_ok) {
            Some(hit)
        } else {
            self.forwarder.forward(query, dnssec_ok).await.ok()
        };
        let Some(up) = answer else {
            self.metrics.query(label, Outcome::Servfail);
            return send_error(request, rh, ResponseCode::ServFail).await;
        };
        self.metrics.query(
            label,
            match up.response_code {
                ResponseCode::NXDomain => Outcome::Nxdomain,
                ResponseCode::ServFail => Outcome::Servfail,
                _ => Outcome::Forwarded,
            },
        );
        let aged = up.aged(Instant::now());
        let mut meta = response_meta(request);
        meta.response_code = up.response_code;
        meta.authoritative = up.authoritative;
        meta.authentic_data = up.authentic_data;
        send(
            request,
            rh,
            meta,
            aged.answers.iter(),
            aged.authorities.iter(),
            aged.additionals.iter(),
        )
        .await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let meta = &request.metadata;
        let label = match request.queries.queries() {
            [q] => QueryType::of(q.query_type()),
            _ => QueryType::Unknown,
        };
        if meta.op_code != OpCode::Query {
            debug!(src = %request.src(), op = ?meta.op_code, "opcode not implemented");
            self.metrics.query(label, Outcome::Notimp);
            return send_error(request, response_handle, ResponseCode::NotImp).await;
        }
        if request.queries.len() != 1 {
            debug!(src = %request.src(), count = request.queries.len(), "not one question");
            self.metrics.query(label, Outcome::Formerr);
            return send_error(request, response_handle, ResponseCode::FormErr).await;
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            self.metrics.query(label, Outcome::Formerr);
            return send_error(request, response_handle, ResponseCode::BADVERS).await;
        }
        self.lookup(request, response_handle).await
    }
}

/// The response header: id, opcode, RD and CD from the query; recursion available.
fn response_meta(request: &Request) -> Metadata {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.recursion_available = true;
    meta
}

/// Our OPT record when the client sent one: our payload size, its DO bit.
fn response_edns(request: &Request) -> Option<Edns> {
    let theirs = request.edns.as_ref()?;
    let mut ours = Edns::new();
    ours.set_max_payload(EDNS_PAYLOAD)
        .set_version(0)
        .set_dnssec_ok(theirs.flags().dnssec_ok);
    Some(ours)
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    rh: R,
    code: ResponseCode,
) -> ResponseInfo {
    let mut meta = response_meta(request);
    meta.response_code = code;
    send(
        request,
        rh,
        meta,
        iter::empty(),
        iter::empty(),
        iter::empty(),
    )
    .await
}

async fn send<'a, R: ResponseHandler>(
    request: &Request,
    mut rh: R,
    meta: Metadata,
    answers: impl Iterator<Item = &'a Record> + Send + 'a,
    authorities: impl Iterator<Item = &'a Record> + Send + 'a,
    additionals: impl Iterator<Item = &'a Record> + Send + 'a,
) -> ResponseInfo {
    let edns = response_edns(request);
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(e) = &edns {
        builder.edns(e);
    }
    let response = builder.build(meta, answers, authorities, iter::empty(), additionals);
    match rh.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, "cannot encode the response");
            let mut meta = response_meta(request);
            meta.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: meta,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// A bare response header for a query that could not be parsed: same id
/// and opcode, RD copied, no sections.
fn header_only(query: &[u8; 12], code: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[0] = query[0];
    out[1] = query[1];
    out[2] = 0x80 | (query[2] & 0x79); // QR, opcode, RD
    out[3] = u16::from(code) as u8 & 0x0f;
    out
}

/// Whether a name in the question section points (directly or through
/// other pointers) into the 12-byte header. hickory's decoder accepts that,
/// and echoes the question section's bytes as they came; in the response the
/// header differs, so the echoed name would no longer parse. `questions` is
/// the raw section (it starts at offset 12) of a request that parsed.
fn points_into_header(questions: &[u8]) -> bool {
    let label_at = |offset: usize| questions.get(offset.checked_sub(12)?).copied();
    let mut start = 12;
    while start < 12 + questions.len() {
        // Walk one name from `start`; pointers only go backwards, so the
        // walk ends, and it is bounded besides.
        let mut at = start;
        let mut end = None;
        for _ in 0..512 {
            let Some(b) = label_at(at) else {
                return false;
            };
            if b & 0xc0 == 0xc0 {
                let Some(lo) = label_at(at + 1) else {
                    return false;
                };
                end.get_or_insert(at + 2);
                let target = (usize::from(b & 0x3f) << 8) | usize::from(lo);
                if target < 12 {
                    return true;
                }
                at = target;
            } else if b == 0 {
                end.get_or_insert(at + 1);
                break;
            } else {
                at += 1 + usize::from(b);
            }
        }
        let Some(end) = end else {
            return false;
        };
        start = end + 4; // QTYPE, QCLASS
    }
    false
}

/// A [`ResponseHandler`] that encodes the response into a buffer, for the
/// caller to send over whatever transport the query came in on.
#[derive(Clone)]
struct Capture {
    max_size: u16,
    out: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Capture {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            out: Arc::new(Mutex::new(None)),
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(self.max_size);
        let info = response.destructive_emit(&mut encoder)?;
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(buf);
        Ok(info)
    }
}

#[cfg(test)]
mod tests;
