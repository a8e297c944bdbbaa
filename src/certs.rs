//! Certificate tooling for mesh mTLS (architecture §6): the shared root CA,
//! one intermediate CA per cluster, and workload (proxy) certificates whose
//! only URI SAN is the workload's SPIFFE ID.
//!
//! This module owns issuing: key generation, the X.509 profile webpki
//! accepts (CAs with BasicConstraints and keyCertSign/cRLSign; leaves with
//! serverAuth + clientAuth and digitalSignature), reading an existing CA back
//! to sign with it, and the `strait certs` command ([`CertsArgs`], [`run`]).
//! It deliberately does not load certificates into rustls, watch files or
//! rotate anything at run time: that is the proxy's identity store.
//!
//! All keys are ECDSA P-256. A CA's certificate and key travel as PEM
//! ([`Ca::cert_pem`], [`Ca::key_pem`]); [`Ca::load`] reads them back.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

mod cli;
mod files;
mod verify;

pub use cli::{run, CertsArgs};
pub use verify::verify_chain;

/// Subject common name of the root CA.
pub const ROOT_COMMON_NAME: &str = "Strait Root CA";

/// Prefix of an intermediate's subject common name; the cluster name follows.
pub const INTERMEDIATE_COMMON_NAME_PREFIX: &str = "Strait Intermediate CA ";

/// How far `not_before` is set in the past. Peers in other clusters may have
/// clocks a little behind ours; without this a freshly rotated certificate is
/// "not yet valid" to them for those seconds and handshakes fail.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// 9999-12-31T23:59:59Z, the last instant an X.509 GeneralizedTime (and the
/// `time` crate rcgen uses) can represent.
const LATEST_EXPIRY_SECS: u64 = 253_402_300_799;

/// Why a certificate could not be issued, loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{what}: not a valid PEM {kind}: {reason}")]
    BadPem {
        /// The file or role (`"CA certificate"`) that failed to parse.
        what: String,
        kind: &'static str,
        reason: String,
    },
    #[error("{key} does not match {cert}: the public keys differ")]
    KeyMismatch { key: String, cert: String },
    #[error("{what} is not a CA certificate: {reason}")]
    NotACa { what: String, reason: &'static str },
    #[error(
        "invalid SPIFFE ID {id:?}: {reason}; expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
    )]
    InvalidSpiffeId { id: String, reason: &'static str },
    #[error("invalid {what} {value:?}: {rule}")]
    InvalidName {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    #[error("{what} expired at {}", humantime::format_rfc3339_seconds(*.not_after))]
    CaExpired { what: String, not_after: SystemTime },
    #[error("the first certificate of the CA chain is not the signing CA's certificate")]
    ChainMismatch,
    #[error("{chain} does not verify against {bundle}: {source}")]
    Untrusted {
        chain: String,
        bundle: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot generate certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists (pass --force to overwrite)", .path.display())]
    Exists { path: PathBuf },
    #[error("cannot serialize the Secret: {0}")]
    Secret(#[source] serde_yaml_ng::Error),
}

/// A CA (root or intermediate) able to sign: its certificate PEM and key PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Arc<Issuer<'static, KeyPair>>,
    not_after: SystemTime,
}

/// A workload's credentials: leaf + chain and key.
#[derive(Clone)]
pub struct Workload {
    /// The leaf certificate only.
    pub cert_pem: String,
    /// The leaf, then the intermediate(s); never the root.
    pub chain_pem: String,
    pub key_pem: String,
}

/// Creates a self-signed root CA valid from now for `validity`.
pub fn root(validity: Duration) -> Result<Ca, CertsError> {
    let now = SystemTime::now();
    let not_after = expiry(now, validity, None)?;
    let key = KeyPair::generate().map_err(CertsError::Generate)?;
    let mut params = ca_params(ROOT_COMMON_NAME, &key, BasicConstraints::Unconstrained);
    set_validity(&mut params, now - BACKDATE, not_after)?;
    let cert = params.self_signed(&key).map_err(CertsError::Generate)?;
    Ca::from_generated(cert, &key)
}

/// Creates the intermediate CA of `cluster`, signed by `root`. Its chain is
/// its own certificate; it may sign leaves only (path length 0). Its expiry
/// is capped at the root's.
pub fn intermediate(root: &Ca, cluster: &str, validity: Duration) -> Result<Ca, CertsError> {
    if !crate::config::is_dns_label(cluster) {
        return Err(CertsError::InvalidName {
            what: "cluster name",
            value: cluster.to_string(),
            rule: "must be a DNS label (lowercase letters, digits and '-', at most 63 characters)",
        });
    }
    let now = SystemTime::now();
    let not_after = expiry(now, validity, Some(root))?;
    let cn = format!("{INTERMEDIATE_COMMON_NAME_PREFIX}{cluster}");
    let key = KeyPair::generate().map_err(CertsError::Generate)?;
    let mut params = ca_params(&cn, &key, BasicConstraints::Constrained(0));
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now - BACKDATE, not_after)?;
    let cert = params
        .signed_by(&key, &root.issuer)
        .map_err(CertsError::Generate)?;
    Ca::from_generated(cert, &key)
}

/// Issues a workload certificate for `spiffe_id`, signed by `ca` and valid
/// from now for `validity` (capped at the CA's expiry). `ca_chain_pem` is what
/// follows the leaf in [`Workload::chain_pem`]: the intermediate's certificate
/// (empty when `ca` is the root itself).
pub fn workload(
    ca: &Ca,
    ca_chain_pem: &str,
    spiffe_id: &str,
    validity: Duration,
) -> Result<Workload, CertsError> {
    let now = SystemTime::now();
    let not_after = expiry(now, validity, Some(ca))?;
    workload_with_validity(ca, ca_chain_pem, spiffe_id, now - BACKDATE, not_after)
}

/// Like [`workload`] but with explicit validity bounds, uncapped (tests need
/// already-expired certificates).
pub fn workload_with_validity(
    ca: &Ca,
    ca_chain_pem: &str,
    spiffe_id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Workload, CertsError> {
    let id = parse_spiffe_id(spiffe_id)?;
    let chain = parse_certs(ca_chain_pem, "CA chain")?;
    if chain.first().is_some_and(|first| *first != ca.cert_der) {
        return Err(CertsError::ChainMismatch);
    }
    let mut params = CertificateParams::default();
    // An empty subject, as X.509-SVIDs do: the identity is the URI SAN, which
    // rcgen then marks critical (RFC 5280 §4.2.1.6).
    params.distinguished_name = DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(CertsError::Generate)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    // digitalSignature only: TLS 1.3 with ECDSA never encrypts to the key.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, not_before, not_after)?;
    let key = KeyPair::generate().map_err(CertsError::Generate)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(CertsError::Generate)?;
    let cert_pem = cert.pem();
    Ok(Workload {
        chain_pem: concat_pem(&cert_pem, ca_chain_pem),
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

// === impl Ca ===

impl Ca {
    /// Reads an existing CA back: its certificate must be a CA and the key
    /// must be the certificate's key ([`CertsError::KeyMismatch`]).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, CertsError> {
        Self::load_named(cert_pem, "CA certificate", key_pem, "CA key")
    }

    /// When the CA's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// [`Ca::load`] with the names errors use for the two inputs (file paths
    /// in the CLI).
    pub(crate) fn load_named(
        cert_pem: &str,
        cert_name: &str,
        key_pem: &str,
        key_name: &str,
    ) -> Result<Ca, CertsError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            CertsError::BadPem {
                what: cert_name.to_string(),
                kind: "certificate",
                reason: pem_reason(e, "CERTIFICATE"),
            }
        })?;
        let key = parse_key(key_pem, key_name)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CertsError::BadPem {
                what: cert_name.to_string(),
                kind: "certificate",
                reason: e.to_string(),
            })?;
        let not_ca = |reason| CertsError::NotACa {
            what: cert_name.to_string(),
            reason,
        };
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => return Err(not_ca("BasicConstraints does not say CA:TRUE")),
            Err(_) => return Err(not_ca("its BasicConstraints extension is malformed")),
        }
        match x509.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(not_ca("its key usage lacks keyCertSign"));
            }
            Ok(_) => {}
            Err(_) => return Err(not_ca("its KeyUsage extension is malformed")),
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertsError::KeyMismatch {
                key: key_name.to_string(),
                cert: cert_name.to_string(),
            });
        }
        let not_after = system_time(x509.validity().not_after.timestamp());
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(CertsError::Generate)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            issuer: Arc::new(issuer),
            not_after,
        })
    }

    fn from_generated(cert: rcgen::Certificate, key: &KeyPair) -> Result<Ca, CertsError> {
        Self::load_named(
            &cert.pem(),
            "new CA certificate",
            &key.serialize_pem(),
            "new CA key",
        )
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

// === impl Workload ===

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("cert_pem", &self.cert_pem)
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

// === helpers ===

/// A CA's subject is `O=Strait, OU=<key id>, CN=<common_name>`. The key id
/// (the first 8 bytes of the subject key identifier, in hex) makes every CA's
/// name unique: webpki matches issuers to trust anchors by name, so two roots
/// with equal names would turn "signed by another mesh's root" into a
/// confusing BadSignature instead of UnknownIssuer, and would make the two
/// roots of a rotation indistinguishable in tools.
fn ca_params(common_name: &str, key: &KeyPair, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let key_id: String = params
        .key_identifier(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strait");
    dn.push(DnType::OrganizationalUnitName, key_id);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// `now + validity`, capped at the issuer's expiry; an issuer that has
/// already expired is an error rather than a useless certificate.
fn expiry(
    now: SystemTime,
    validity: Duration,
    issuer: Option<&Ca>,
) -> Result<SystemTime, CertsError> {
    if validity.is_zero() {
        return Err(CertsError::InvalidValidity(
            "must be longer than zero".into(),
        ));
    }
    let not_after = now
        .checked_add(validity)
        .ok_or_else(|| CertsError::InvalidValidity("too long".into()))?;
    let Some(issuer) = issuer else {
        return Ok(not_after);
    };
    if issuer.not_after <= now {
        return Err(CertsError::CaExpired {
            what: "the signing CA's certificate".into(),
            not_after: issuer.not_after,
        });
    }
    Ok(not_after.min(issuer.not_after))
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), CertsError> {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_EXPIRY_SECS);
    if not_before < SystemTime::UNIX_EPOCH || not_after > latest {
        return Err(CertsError::InvalidValidity(
            "certificates must lie between 1970 and the end of 9999".into(),
        ));
    }
    if not_before >= not_after {
        return Err(CertsError::InvalidValidity(
            "not_before must be earlier than not_after".into(),
        ));
    }
    // In range, so the conversions to `time::OffsetDateTime` cannot panic.
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(())
}

fn system_time(unix_secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix_secs.unsigned_abs());
    if unix_secs >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// Every certificate in `pem` (other PEM sections are skipped).
pub(crate) fn parse_certs(
    pem: &str,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertsError::BadPem {
            what: name.to_string(),
            kind: "certificate",
            reason: pem_reason(e, "CERTIFICATE"),
        })
}

fn parse_key(pem: &str, name: &str) -> Result<KeyPair, CertsError> {
    let bad = |reason: String| CertsError::BadPem {
        what: name.to_string(),
        kind: "private key",
        reason,
    };
    match PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(pem_reason(e, "PRIVATE KEY")))?
    {
        PrivateKeyDer::Pkcs8(der) => KeyPair::try_from(&der).map_err(|e| bad(e.to_string())),
        _ => Err(bad(
            "only unencrypted PKCS#8 keys (BEGIN PRIVATE KEY) are supported; \
             convert with `openssl pkcs8 -topk8 -nocrypt`"
                .into(),
        )),
    }
}

fn pem_reason(e: rustls_pki_types::pem::Error, label: &str) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no {label} section found"),
        e => e.to_string(),
    }
}

/// `first` followed by `rest`, with exactly one line break between PEM blocks.
fn concat_pem(first: &str, rest: &str) -> String {
    let mut out = String::with_capacity(first.len() + rest.len() + 2);
    for part in [first, rest] {
        let part = part.trim();
        if !part.is_empty() {
            out.push_str(part);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;

/// A SPIFFE ID, by the rules the proxy applies to its peers (`crate::identity`).
pub(crate) fn parse_spiffe_id(id: &str) -> Result<crate::identity::SpiffeId, CertsError> {
    use crate::identity::{IdentityError, SpiffeId};
    SpiffeId::parse(id).map_err(|e| CertsError::InvalidSpiffeId {
        id: id.to_owned(),
        reason: match e {
            IdentityError::InvalidSpiffeId { reason, .. } => reason,
            _ => "not a SPIFFE ID",
        },
    })
}
