//! Checks an issued chain the way a peer proxy will: rustls's webpki client
//! verifier (clientAuth, the ring provider) against a trust bundle, at the
//! current time. It does not check the SPIFFE ID: authorisation is the
//! proxy's business.

use std::sync::Arc;

use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::{parse_certs, CertsError};

/// Verifies `chain_pem` (leaf first, then intermediates) against the roots in
/// `bundle_pem` as a mesh peer would.
pub fn verify_chain(chain_pem: &str, bundle_pem: &str) -> Result<(), CertsError> {
    verify_chain_named(chain_pem, "certificate chain", bundle_pem, "trust bundle")
}

pub(super) fn verify_chain_named(
    chain_pem: &str,
    chain_name: &str,
    bundle_pem: &str,
    bundle_name: &str,
) -> Result<(), CertsError> {
    let untrusted = |source| CertsError::Untrusted {
        chain: chain_name.to_string(),
        bundle: bundle_name.to_string(),
        source,
    };
    let chain = parse_certs(chain_pem, chain_name)?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(no_certificate(chain_name));
    };
    let mut roots = RootCertStore::empty();
    for root in parse_certs(bundle_pem, bundle_name)? {
        roots.add(root).map_err(untrusted)?;
    }
    if roots.is_empty() {
        return Err(no_certificate(bundle_name));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| untrusted(rustls::Error::General(e.to_string())))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(untrusted)?;
    Ok(())
}

fn no_certificate(name: &str) -> CertsError {
    CertsError::BadPem {
        what: name.to_string(),
        kind: "certificate",
        reason: "no CERTIFICATE section found".into(),
    }
}
