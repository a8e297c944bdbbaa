//! The data path's metrics. Per-request label lookups are cached per
//! connection (`RequestRecorder`), because a connection's service rarely
//! changes and its status codes repeat.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::discovery::ServiceName;
use crate::metrics::{code_class, Direction, LATENCY_BUCKETS};

#[derive(Debug, Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    pub(crate) connections_opened: IntCounterVec,
    pub(crate) connections_closed: IntCounterVec,
    pub(crate) received_bytes: IntCounterVec,
    pub(crate) sent_bytes: IntCounterVec,
    pub(crate) connect_errors: IntCounterVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) unknown_destination: IntCounterVec,
    pub(crate) http_connection_errors: IntCounterVec,
    pub(crate) detections: IntCounterVec,
    pub(crate) listener_bind_errors: IntCounter,
    pub(crate) retries: IntCounterVec,
    pub(crate) retries_exhausted: IntCounterVec,
    pub(crate) ejections: IntCounterVec,
    pub(crate) authz_denials: IntCounterVec,
    pub(crate) inbound_plaintext: IntCounterVec,
}

const REQ_LABELS: &[&str] = &[
    "direction",
    "service",
    "namespace",
    "cluster",
    "code_class",
    "code",
];
const CONN_LABELS: &[&str] = &["direction", "service", "namespace"];

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: T,
        ) -> Result<T, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(Self {
            requests: reg(
                registry,
                counter("strait_requests_total", "HTTP requests proxied, by response code.", REQ_LABELS)?,
            )?,
            request_duration: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "strait_request_duration_seconds",
                        "Time from receiving a request to sending its response headers.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    REQ_LABELS,
                )?,
            )?,
            connections_opened: reg(
                registry,
                counter("strait_tcp_connections_opened_total", "Client connections accepted for a service.", CONN_LABELS)?,
            )?,
            connections_closed: reg(
                registry,
                counter("strait_tcp_connections_closed_total", "Client connections closed.", CONN_LABELS)?,
            )?,
            received_bytes: reg(
                registry,
                counter("strait_tcp_received_bytes_total", "Bytes read from clients.", CONN_LABELS)?,
            )?,
            sent_bytes: reg(
                registry,
                counter("strait_tcp_sent_bytes_total", "Bytes written to clients.", CONN_LABELS)?,
            )?,
            connect_errors: reg(
                registry,
                counter(
                    "strait_upstream_connect_errors_total",
                    "Failed connections to upstream endpoints, by reason.",
                    &["service", "namespace", "reason"],
                )?,
            )?,
            errors: reg(
                registry,
                counter(
                    "strait_proxy_errors_total",
                    "Requests and connections the proxy answered itself, by reason.",
                    &["direction", "service", "namespace", "reason"],
                )?,
            )?,
            unknown_destination: reg(
                registry,
                counter(
                    "strait_unknown_destination_connections_total",
                    "Connections whose original destination is no mesh service, by action taken.",
                    &["action"],
                )?,
            )?,
            http_connection_errors: reg(
                registry,
                counter(
                    "strait_http_connection_errors_total",
                    "Client HTTP connections ended by an error (malformed input, timeouts), by kind.",
                    &["kind"],
                )?,
            )?,
            detections: reg(
                registry,
                counter(
                    "strait_protocol_detections_total",
                    "Protocol of connections to ports without a protocol hint.",
                    &["protocol"],
                )?,
            )?,
            retries: reg(
                registry,
                counter(
                    "strait_retries_total",
                    "Requests sent again to another endpoint, by reason (connect, reset, status_5xx).",
                    &["service", "namespace", "reason"],
                )?,
            )?,
            retries_exhausted: reg(
                registry,
                counter(
                    "strait_retry_budget_exhausted_total",
                    "Retries not made because the service's retry budget was spent.",
                    &["service", "namespace"],
                )?,
            )?,
            ejections: reg(
                registry,
                counter(
                    "strait_endpoint_ejections_total",
                    "Endpoints taken out of balancing after failures (passive health), by cluster.",
                    &["service", "namespace", "cluster"],
                )?,
            )?,
            authz_denials: reg(
                registry,
                counter(
                    "strait_authz_denials_total",
                    "Mesh requests and streams refused because the caller's identity may not call the service.",
                    &["service", "namespace", "client"],
                )?,
            )?,
            inbound_plaintext: reg(
                registry,
                counter(
                    "strait_inbound_plaintext_connections_total",
                    "Plaintext connections on the inbound capture, by action (forwarded, refused, not_redirected).",
                    &["action"],
                )?,
            )?,
            listener_bind_errors: reg(
                registry,
                IntCounter::new(
                    "strait_listener_bind_errors_total",
                    "Per-service VIP listeners that could not be bound.",
                )?,
            )?,
        })
    }
}

/// Records request metrics for one connection, caching the last label set.
#[derive(Debug)]
pub(crate) struct RequestRecorder {
    metrics: Metrics,
    direction: Direction,
    last: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    code: u16,
    cluster: Arc<str>,
    service: ServiceName,
    requests: IntCounter,
    duration: Histogram,
}

impl RequestRecorder {
    pub fn new(metrics: Metrics, direction: Direction) -> Self {
        Self {
            metrics,
            direction,
            last: Mutex::new(None),
        }
    }

    pub fn record(&self, service: &ServiceName, cluster: &Arc<str>, code: u16, elapsed: Duration) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let hit = last.as_ref().is_some_and(|c| {
            c.code == code && Arc::ptr_eq(&c.cluster, cluster) && c.service == *service
        });
        if !hit {
            let code_str = http::StatusCode::from_u16(code)
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|_| code.to_string());
            let labels = [
                self.direction.as_str(),
                service.name.as_str(),
                service.namespace.as_str(),
                cluster,
                code_class(code),
                code_str.as_str(),
            ];
            *last = Some(Cached {
                code,
                cluster: cluster.clone(),
                service: service.clone(),
                requests: self.metrics.requests.with_label_values(&labels),
                duration: self.metrics.request_duration.with_label_values(&labels),
            });
        }
        if let Some(c) = last.as_ref() {
            c.requests.inc();
            c.duration.observe(elapsed.as_secs_f64());
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
