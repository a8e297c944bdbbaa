//! A scripted upstream resolver for the DNS shim's tests, on loopback (UDP
//! and TCP, one port). It never asks anyone else. Names (under `test.`):
//!
//! - `big.test.` A: 40 A records (about 700 bytes). Like an old server, it
//!   ignores EDNS and truncates any UDP answer over 512 bytes (TC, no
//!   records), so the whole answer only comes over TCP.
//! - `small.test.` A: one record, TTL 60; AAAA: NODATA.
//! - `brief.test.` A: one record, TTL 1.
//! - `nx.test.`: NXDOMAIN with an SOA (TTL and minimum 60).
//! - `nodata.test.` A: NOERROR, no records, with an SOA.
//! - `silent.test.`: never answered (UDP or TCP).
//! - anything else: REFUSED.
//!
//! [`blackhole`] is an upstream that reads everything and answers nothing.

#![allow(clippy::unwrap_used)] // test support fails loudly on the unexpected

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// The 40 addresses of `big.test.` (documentation data; never contacted).
pub fn big_addrs() -> Vec<Ipv4Addr> {
    (1..=40).map(|i| Ipv4Addr::new(198, 18, 7, i)).collect()
}

pub const SMALL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 1);

#[derive(Clone, Default)]
pub struct Counts {
    udp: Arc<AtomicUsize>,
    tcp: Arc<AtomicUsize>,
}

impl Counts {
    /// Queries received over UDP so far.
    pub fn udp(&self) -> usize {
        self.udp.load(Ordering::SeqCst)
    }

    /// Queries received over TCP so far.
    pub fn tcp(&self) -> usize {
        self.tcp.load(Ordering::SeqCst)
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub counts: Counts,
}

/// Starts the scripted upstream; it runs until the test's runtime ends.
pub async fn start() -> Upstream {
    let (udp, tcp) = bind().await;
    let addr = udp.local_addr().unwrap();
    let counts = Counts::default();
    let c = counts.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                return;
            };
            c.udp.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = answer(&buf[..n], true) {
                let _ = udp.send_to(&reply, peer).await;
            }
        }
    });
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    c.tcp.fetch_add(1, Ordering::SeqCst);
                    let Some(reply) = answer(&q, false) else {
                        continue;
                    };
                    let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&reply);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream { addr, counts }
}

/// An upstream that never answers: UDP datagrams and TCP bytes are read and dropped.
pub async fn blackhole() -> SocketAddr {
    let (udp, tcp) = bind().await;
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while udp.recv_from(&mut buf).await.is_ok() {}
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

async fn bind() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn soa() -> Record {
    let zone = Name::from_ascii("test.").unwrap();
    let rdata = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("hostmaster.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    Record::from_rdata(zone, 60, RData::SOA(rdata))
}

fn answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries.push(question.clone());
    let name = question.name.to_ascii().to_ascii_lowercase();
    let a =
        |ip: Ipv4Addr, ttl: u32| Record::from_rdata(question.name.clone(), ttl, RData::A(A(ip)));
    match (name.as_str(), question.query_type) {
        ("silent.test.", _) => return None,
        ("big.test.", RecordType::A) => m
            .answers
            .extend(big_addrs().into_iter().map(|ip| a(ip, 300))),
        ("small.test.", RecordType::A) => m.answers.push(a(SMALL_ADDR, 60)),
        ("brief.test.", RecordType::A) => m.answers.push(a(SMALL_ADDR, 1)),
        ("small.test." | "nodata.test." | "big.test." | "brief.test.", _) => {
            m.authorities.push(soa())
        }
        ("nx.test.", _) => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.metadata.authoritative = true;
            m.authorities.push(soa());
        }
        _ => m.metadata.response_code = ResponseCode::Refused,
    }
    let bytes = m.to_vec().ok()?;
    if udp && bytes.len() > 512 {
        let mut cut = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
        cut.metadata.truncation = true;
        cut.metadata.recursion_available = true;
        cut.queries.push(question);
        return cut.to_vec().ok();
    }
    Some(bytes)
}
