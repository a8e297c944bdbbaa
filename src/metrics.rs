//! The explicit Prometheus registry and the label values shared by modules.
//!
//! One [`prometheus::Registry`] is created per app (so tests are isolated);
//! each module registers its own metrics struct into it. Label values come
//! from enums with `as_str()`, never from free-form input, so cardinality is
//! bounded by the mesh model, not by traffic.

use prometheus::{Encoder, Registry, TextEncoder};

/// A new registry for one app.
pub fn registry() -> Registry {
    Registry::new()
}

/// Prometheus text exposition of everything in `registry`.
pub fn encode(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a metric-family error would be
    // a registration bug, and a partial page beats none.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    out
}

/// Which side of the pod a request or connection crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// `2xx`-style class of a status code.
pub fn code_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Latency buckets in seconds, from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
