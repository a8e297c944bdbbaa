//! Reads the three identity files and checks them as a set: PEM syntax
//! (errors name the file), the leaf's SPIFFE ID and trust domain, its
//! validity period, and that the key belongs to the leaf.
//!
//! The chain is verified to the bundle afterwards, in `tls.rs`, by the same
//! verifiers peers run. Nothing here touches the network or the store.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentityError, SpiffeId};
use crate::config::Identity;

/// The files' bytes, as read. Kept by the store so that a reload which
/// reads the same bytes changes nothing.
#[derive(PartialEq, Eq)]
pub(super) struct Files {
    chain: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<u8>,
}

/// A checked identity, ready to build TLS configs from.
pub(super) struct Credentials {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    pub certified: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
}

// === impl Files ===

impl Files {
    /// Reads the three files. Blocking: call it off the runtime's threads.
    pub fn read(config: &Identity) -> Result<Files, IdentityError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| IdentityError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Files {
            chain: read(&config.cert_chain)?,
            key: read(&config.private_key)?,
            bundle: read(&config.trust_bundle)?,
        })
    }

    /// Parses and checks everything but the chain's path to the bundle.
    pub fn check(
        &self,
        config: &Identity,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<Credentials, IdentityError> {
        let chain = certificates(&self.chain, &config.cert_chain)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| pem_error(&config.private_key, "private key", e))?;
        let mut roots = RootCertStore::empty();
        for root in certificates(&self.bundle, &config.trust_bundle)? {
            roots.add(root).map_err(|source| IdentityError::Root {
                path: config.trust_bundle.clone(),
                source,
            })?;
        }

        let leaf_error = |source| IdentityError::Leaf {
            path: config.cert_chain.clone(),
            source: Box::new(source),
        };
        let leaf = &chain[0];
        let id = SpiffeId::from_cert(leaf).map_err(leaf_error)?;
        if id.trust_domain() != config.trust_domain {
            return Err(leaf_error(IdentityError::WrongTrustDomain {
                id,
                expected: config.trust_domain.clone(),
            }));
        }
        let (not_before, not_after) = validity(leaf).map_err(leaf_error)?;
        if now > not_after {
            return Err(IdentityError::Expired {
                path: config.cert_chain.clone(),
                not_after,
            });
        }
        if now < not_before {
            return Err(IdentityError::NotYetValid {
                path: config.cert_chain.clone(),
                not_before,
            });
        }

        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| IdentityError::Key {
                path: config.private_key.clone(),
                source,
            })?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            // Unknown: the key cannot tell its public half; the handshake's
            // signature check will still catch a mismatch at the peer.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(IdentityError::KeyMismatch {
                    key: config.private_key.clone(),
                    cert: config.cert_chain.clone(),
                })
            }
            Err(e) => return Err(leaf_error(IdentityError::CertificateParse(e.to_string()))),
        }

        Ok(Credentials {
            id,
            not_after,
            certified: Arc::new(certified),
            roots: Arc::new(roots),
        })
    }
}

/// Every certificate of a PEM file; at least one.
fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(IdentityError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &'static str, source: pem::Error) -> IdentityError {
    match source {
        pem::Error::NoItemsFound => IdentityError::Missing {
            path: path.to_owned(),
            what,
        },
        source => IdentityError::Pem {
            path: path.to_owned(),
            what,
            source,
        },
    }
}

/// `(not_before, not_after)` of a certificate.
fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), IdentityError> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::CertificateParse(e.to_string()))?;
    let validity = x509.validity();
    Ok((
        unix_time(validity.not_before.timestamp()),
        unix_time(validity.not_after.timestamp()),
    ))
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}
