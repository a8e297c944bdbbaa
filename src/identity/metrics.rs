//! Identity and mesh-TLS metrics. The store keeps the expiry gauge and the
//! reload counter; the data path (inbound, outbound, gateway) records
//! handshakes and live mesh connections through the public fields.

use std::time::SystemTime;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::HandshakeFailure;
use crate::metrics::Direction;

#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    cert_expiry: Gauge,
    pub(super) reloads_applied: IntCounter,
    pub(super) reloads_rejected: IntCounter,
    /// `strait_tls_handshakes_total{direction, result, reason}`: `result` is
    /// `ok` (with `reason="none"`) or `error` (with a [`HandshakeFailure`]
    /// label, or a data-path reason such as `identity_mismatch`).
    pub handshakes: IntCounterVec,
    /// `strait_mesh_connections_active{direction, peer}`, `peer` the peer's SPIFFE ID.
    pub mesh_connections: IntGaugeVec,
}

// === impl IdentityMetrics ===

impl IdentityMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let cert_expiry = Gauge::new(
            "strait_identity_cert_expiry_seconds",
            "Seconds until the proxy's current certificate expires (negative once expired).",
        )?;
        registry.register(Box::new(cert_expiry.clone()))?;

        let reloads = IntCounterVec::new(
            Opts::new(
                "strait_identity_reloads_total",
                "Reloads of the identity files, by result (applied, rejected).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;

        let handshakes = IntCounterVec::new(
            Opts::new(
                "strait_tls_handshakes_total",
                "Mesh TLS handshakes, by direction, result (ok, error) and reason \
                 (none when ok; unknown_ca, expired, bad_certificate, no_client_cert, \
                 protocol_version, not_tls, alert, io, timeout, other, ...).",
            ),
            &["direction", "result", "reason"],
        )?;
        registry.register(Box::new(handshakes.clone()))?;

        let mesh_connections = IntGaugeVec::new(
            Opts::new(
                "strait_mesh_connections_active",
                "Open mesh mTLS connections, by direction and peer SPIFFE ID.",
            ),
            &["direction", "peer"],
        )?;
        registry.register(Box::new(mesh_connections.clone()))?;

        Ok(Self {
            cert_expiry,
            // Both series exist from the start, so a dashboard sees zero, not nothing.
            reloads_applied: reloads.with_label_values(&["applied"]),
            reloads_rejected: reloads.with_label_values(&["rejected"]),
            handshakes,
            mesh_connections,
        })
    }

    /// Counts a completed handshake.
    pub fn handshake_ok(&self, direction: Direction) {
        self.handshakes
            .with_label_values(&[direction.as_str(), "ok", "none"])
            .inc();
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, direction: Direction, reason: HandshakeFailure) {
        self.handshakes
            .with_label_values(&[direction.as_str(), "error", reason.as_str()])
            .inc();
    }

    /// Sets the expiry gauge to the time left until `not_after`.
    pub(super) fn set_expiry(&self, not_after: SystemTime) {
        let left = match not_after.duration_since(SystemTime::now()) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        };
        self.cert_expiry.set(left.round());
    }

    #[cfg(test)]
    pub(super) fn expiry_seconds(&self) -> f64 {
        self.cert_expiry.get()
    }
}
