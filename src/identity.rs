//! The proxy's mesh identity (architecture §6): a SPIFFE ID carried as the
//! only URI SAN of an X.509 leaf, the files it is loaded from, and the
//! rustls configs built from them.
//!
//! - `spiffe.rs`: [`SpiffeId`], parsing and reading it from a certificate.
//! - `files.rs`: reads `cert-chain.pem`, `key.pem` and `root-cert.pem` and checks them.
//! - `tls.rs`: the TLS 1.3 client and server configs and their SPIFFE-aware verifiers.
//! - `store.rs`: [`IdentityStore`], the current identity and configs, swapped on reload.
//! - `rotate.rs`: the file watcher that reloads the store.
//! - `handshake.rs`: [`peer_id`] and [`handshake_failure_reason`] for the data path.
//! - `metrics.rs`: [`IdentityMetrics`].
//!
//! It deliberately does not authorise peers: the verifiers only require a
//! chain to the bundle and a SPIFFE ID in our trust domain; the data path
//! compares the peer's exact ID with what the service expects. It does not
//! issue certificates either (`strait certs` does).

use std::path::PathBuf;

mod files;
mod handshake;
mod metrics;
mod rotate;
mod spiffe;
mod store;
mod tls;

#[cfg(test)]
mod tests;

pub use handshake::{handshake_failure_reason, peer_id, HandshakeFailure};
pub use metrics::IdentityMetrics;
pub use spiffe::SpiffeId;
pub use store::IdentityStore;

/// Why an identity could not be loaded, or a peer's identity not read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "invalid SPIFFE ID {id:?}: {reason}; expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
    )]
    InvalidSpiffeId { id: String, reason: &'static str },
    #[error("certificate cannot be parsed: {0}")]
    CertificateParse(String),
    #[error("certificate has no URI SAN, so no SPIFFE ID")]
    NoSpiffeId,
    #[error("certificate has {} URI SANs ({}); a SPIFFE certificate has exactly one", .0.len(), .0.join(", "))]
    SeveralUriSans(Vec<String>),
    #[error("SPIFFE ID {id} is not in the trust domain {expected:?}")]
    WrongTrustDomain { id: SpiffeId, expected: String },
    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid PEM {what}: {source}", .path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no PEM {what} found", .path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: the leaf certificate: {source}", .path.display())]
    Leaf {
        path: PathBuf,
        #[source]
        source: Box<IdentityError>,
    },
    #[error("{}: the leaf certificate expired at {}", .path.display(), humantime::format_rfc3339_seconds(*.not_after))]
    Expired {
        path: PathBuf,
        not_after: std::time::SystemTime,
    },
    #[error("{}: the leaf certificate is not valid before {}", .path.display(), humantime::format_rfc3339_seconds(*.not_before))]
    NotYetValid {
        path: PathBuf,
        not_before: std::time::SystemTime,
    },
    #[error("{}: unusable private key: {source}", .path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the private key in {} does not match the leaf certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: not a usable root certificate: {source}", .path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the chain in {} does not verify to the trust bundle {}: {source}", .chain.display(), .bundle.display())]
    Untrusted {
        chain: PathBuf,
        bundle: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot watch {} for changes: {source}", .path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}
