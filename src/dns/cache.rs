//! The cache of forwarded answers: whole upstream responses, keyed by
//! question, kept for the smallest TTL they carry (RFC 2308 for negative
//! answers: the SOA's TTL and MINIMUM), at most an hour. A hit returns the
//! records with their TTLs counted down. SERVFAIL, REFUSED, truncated
//! answers and negative answers without an SOA are not kept.
//!
//! Bounded by entry count: a full cache drops expired entries (at most one
//! sweep a second), else an arbitrary one. It does not coalesce concurrent
//! misses for the same question.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use tokio::time::Instant;

/// Longest time an answer is kept, whatever its TTL.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// Least time between two sweeps of a full cache.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A question, as the cache tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) name: LowerName,
    pub(crate) qtype: RecordType,
    pub(crate) qclass: DNSClass,
    /// Answers to DO queries carry DNSSEC records; keep them apart.
    pub(crate) dnssec_ok: bool,
}

/// An upstream answer, as sent to clients.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) response_code: ResponseCode,
    pub(crate) authoritative: bool,
    pub(crate) authentic_data: bool,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
    received: Instant,
    /// How long it may be reused; zero: not cacheable.
    keep: Duration,
}

/// Records of an answer as of now (TTLs counted down).
#[derive(Debug)]
pub(crate) struct Aged {
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
}

impl Upstream {
    pub(crate) fn from_message(message: Message, received: Instant) -> Self {
        let keep = keep_for(&message);
        let Message {
            metadata,
            answers,
            authorities,
            additionals,
            ..
        } = message;
        Self {
            response_code: metadata.response_code,
            authoritative: metadata.authoritative,
            authentic_data: metadata.authentic_data,
            answers,
            authorities,
            additionals,
            received,
            keep,
        }
    }

    /// The records as a client should see them at `now` (TTLs never below 0).
    pub(crate) fn aged(&self, now: Instant) -> Aged {
        let age = now.saturating_duration_since(self.received);
        let secs = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let count_down = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if r.record_type() != RecordType::OPT {
                        r.ttl = r.ttl.saturating_sub(secs);
                    }
                    r
                })
                .collect()
        };
        Aged {
            answers: count_down(&self.answers),
            authorities: count_down(&self.authorities),
            additionals: count_down(&self.additionals),
        }
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.received) < self.keep
    }
}

/// How long `message` may be reused: zero when it must not be.
fn keep_for(message: &Message) -> Duration {
    if message.metadata.truncation {
        return Duration::ZERO;
    }
    let secs = match message.metadata.response_code {
        ResponseCode::NoError if !message.answers.is_empty() => {
            message.answers.iter().map(|r| r.ttl).min()
        }
        // NODATA and NXDOMAIN: negative caching needs the SOA (RFC 2308 §5).
        ResponseCode::NoError | ResponseCode::NXDomain => {
            message.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    };
    secs.map_or(Duration::ZERO, |s| {
        Duration::from_secs(u64::from(s)).min(MAX_TTL)
    })
}

#[derive(Debug)]
pub(crate) struct Cache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<Key, Arc<Upstream>>,
    last_sweep: Option<Instant>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh answer for `key`; an expired one is removed.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<Arc<Upstream>> {
        if self.capacity == 0 {
            return None;
        }
        let mut inner = self.lock();
        match inner.map.get(key) {
            Some(u) if u.is_fresh(now) => Some(Arc::clone(u)),
            Some(_) => {
                inner.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` if it may be reused.
    pub(crate) fn insert(&self, key: Key, answer: &Arc<Upstream>, now: Instant) {
        if self.capacity == 0 || answer.keep.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.map.len() >= self.capacity && !inner.map.contains_key(&key) {
            let sweep = inner
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
            if sweep {
                inner.last_sweep = Some(now);
                inner.map.retain(|_, u| u.is_fresh(now));
            }
            if inner.map.len() >= self.capacity {
                if let Some(k) = inner.map.keys().next().cloned() {
                    inner.map.remove(&k);
                }
            }
        }
        inner.map.insert(key, Arc::clone(answer));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Name;

    use super::*;

    fn key(name: &str) -> Key {
        Key {
            name: LowerName::from_str(name).unwrap(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            dnssec_ok: false,
        }
    }

    fn answer(code: ResponseCode, ttls: &[u32], soa: Option<(u32, u32)>) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        let name = Name::from_str("a.example.").unwrap();
        for ttl in ttls {
            m.answers.push(Record::from_rdata(
                name.clone(),
                *ttl,
                RData::A(A(Ipv4Addr::LOCALHOST)),
            ));
        }
        if let Some((ttl, minimum)) = soa {
            let soa = SOA::new(name.clone(), name.clone(), 1, 1, 1, 1, minimum);
            m.authorities
                .push(Record::from_rdata(name, ttl, RData::SOA(soa)));
        }
        m
    }

    #[test]
    fn positive_answers_live_for_their_smallest_ttl() {
        let m = answer(ResponseCode::NoError, &[300, 60], None);
        assert_eq!(keep_for(&m), Duration::from_secs(60));
    }

    #[test]
    fn negative_answers_live_for_the_soa_minimum_and_need_an_soa() {
        let nx = answer(ResponseCode::NXDomain, &[], Some((900, 30)));
        assert_eq!(keep_for(&nx), Duration::from_secs(30));
        let nodata = answer(ResponseCode::NoError, &[], Some((10, 30)));
        assert_eq!(keep_for(&nodata), Duration::from_secs(10));
        let bare = answer(ResponseCode::NXDomain, &[], None);
        assert_eq!(keep_for(&bare), Duration::ZERO);
        let servfail = answer(ResponseCode::ServFail, &[], Some((10, 10)));
        assert_eq!(keep_for(&servfail), Duration::ZERO);
        let huge = answer(ResponseCode::NoError, &[86_400 * 7], None);
        assert_eq!(keep_for(&huge), MAX_TTL);
    }

    #[tokio::test(start_paused = true)]
    async fn hits_count_ttls_down_and_expire() {
        let cache = Cache::new(10);
        let now = Instant::now();
        let up = Arc::new(Upstream::from_message(
            answer(ResponseCode::NoError, &[30], None),
            now,
        ));
        cache.insert(key("a.example."), &up, now);

        tokio::time::advance(Duration::from_secs(12)).await;
        let hit = cache.get(&key("A.Example."), Instant::now()).expect("hit");
        let aged = hit.aged(Instant::now());
        assert_eq!(aged.answers[0].ttl, 18);

        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(cache.get(&key("a.example."), Instant::now()).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_makes_room() {
        let cache = Cache::new(2);
        let now = Instant::now();
        let short = Arc::new(Upstream::from_message(
            answer(ResponseCode::NoError, &[1], None),
            now,
        ));
        let long = Arc::new(Upstream::from_message(
            answer(ResponseCode::NoError, &[100], None),
            now,
        ));
        cache.insert(key("a."), &short, now);
        cache.insert(key("b."), &long, now);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.insert(key("c."), &long, Instant::now());
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&key("a."), Instant::now()).is_none(),
            "expired one swept"
        );
        cache.insert(key("d."), &long, Instant::now());
        assert_eq!(cache.len(), 2, "still bounded without a sweep");
    }

    #[test]
    fn uncacheable_answers_and_a_zero_capacity_keep_nothing() {
        let now = Instant::now();
        let cache = Cache::new(0);
        let up = Arc::new(Upstream::from_message(
            answer(ResponseCode::NoError, &[30], None),
            now,
        ));
        cache.insert(key("a."), &up, now);
        assert!(cache.get(&key("a."), now).is_none());
        let cache = Cache::new(10);
        let servfail = Arc::new(Upstream::from_message(
            answer(ResponseCode::ServFail, &[], None),
            now,
        ));
        cache.insert(key("a."), &servfail, now);
        assert_eq!(cache.len(), 0);
    }
}
