//! Settings of mesh mTLS: the proxy's identity files (`identity:`), the
//! inbound side (`inbound:`) and the proxy's role (`mode:`).
//!
//! The identity section is read at startup; the files it names are watched
//! and reloaded by `crate::identity` (a rotated certificate needs no
//! restart). Without it the mesh runs in plaintext, as before mTLS.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{is_dns_label, Problem};

/// What this proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// The per-pod proxy (default).
    #[default]
    Sidecar,
    /// A cluster's east-west gateway: serves `listeners.gateway` (SNI
    /// passthrough to local endpoints' mesh port) and no outbound capture.
    Gateway,
}

/// This proxy's SPIFFE identity: certificate chain, key and trust bundle
/// (PEM files, as `strait certs workload` writes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    /// The mesh's trust domain; peers' SPIFFE IDs must be in it. Default `cluster.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The proxy's certificate followed by its intermediates (`cert-chain.pem`).
    pub cert_chain: PathBuf,
    /// The certificate's private key, PKCS#8 or SEC1 (`key.pem`).
    pub private_key: PathBuf,
    /// One or more root certificates (`root-cert.pem`); list both roots
    /// while a root is being rotated.
    pub trust_bundle: PathBuf,
}

/// How plaintext arriving on the inbound capture (from outside the mesh) is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PlaintextInbound {
    /// Forward it to the app (default).
    #[default]
    Permissive,
    /// Refuse it: the connection is reset.
    Strict,
}

/// The inbound side: mesh mTLS (`listeners.mesh`) and plaintext capture
/// (`listeners.inbound`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    /// The port peers' proxies serve mesh mTLS on: outbound mTLS connects to
    /// a pod's address at this port, and gateways splice to it. Default `15008`.
    #[serde(default = "default_mesh_port")]
    pub mesh_port: u16,
    /// Where the app listens; inbound traffic goes to this address at the
    /// target port. Default `127.0.0.1`.
    #[serde(default = "default_app_host")]
    pub app_host: IpAddr,
    /// Plaintext on the inbound capture: `permissive` or `strict`. Default `permissive`.
    #[serde(default)]
    pub plaintext: PlaintextInbound,
    /// When a ServiceExport names a service account, callers with that
    /// account in these namespaces are allowed. Default: any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_namespaces: Vec<String>,
    /// A TLS handshake (or a gateway's ClientHello) not done by then is
    /// abandoned. Default `5s`.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}
fn default_mesh_port() -> u16 {
    15008
}
fn default_app_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            mesh_port: default_mesh_port(),
            app_host: default_app_host(),
            plaintext: PlaintextInbound::default(),
            caller_namespaces: Vec::new(),
            handshake_timeout: default_handshake_timeout(),
        }
    }
}

impl Identity {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        let td = &self.trust_domain;
        let td_ok = !td.is_empty()
            && td.len() <= 255
            && td.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
            });
        if !td_ok {
            problems.push(Problem::new(
                "identity.trustDomain",
                format!("{td:?} is not a trust domain (lowercase DNS name, e.g. cluster.local)"),
            ));
        }
        for (field, path) in [
            ("identity.certChain", &self.cert_chain),
            ("identity.privateKey", &self.private_key),
            ("identity.trustBundle", &self.trust_bundle),
        ] {
            if path.as_os_str().is_empty() {
                problems.push(Problem::new(field, "must name a file"));
            }
        }
    }
}

impl Inbound {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.mesh_port == 0 {
            problems.push(Problem::new("inbound.meshPort", "0 is not a port"));
        }
        if self.handshake_timeout.is_zero() {
            problems.push(Problem::new(
                "inbound.handshakeTimeout",
                "must be greater than 0",
            ));
        }
        for (i, ns) in self.caller_namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                problems.push(Problem::new(
                    format!("inbound.callerNamespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                ));
            }
        }
    }
}
