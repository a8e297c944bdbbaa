//! The mesh's SPIFFE ID, `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`:
//! strict parsing, and reading it out of a certificate (its only URI SAN).
//!
//! It does not decide what a peer may do (that is the data path's check of
//! the exact ID after the handshake), nor whether the certificate chains to
//! anything (that is the verifiers' job in `tls.rs`).

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::IdentityError;

const SCHEME: &str = "spiffe://";

/// The SPIFFE spec's limit on a whole ID, in bytes.
const MAX_LEN: usize = 2048;

const PATH_SHAPE: &str = "the path must be exactly /ns/NAMESPACE/sa/SERVICE_ACCOUNT";

/// A workload identity: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

// === impl SpiffeId ===

impl SpiffeId {
    /// The ID of `service_account` in `namespace`. The parts are not
    /// validated: they come from validated config and discovery, and a
    /// malformed part only makes an ID that no certificate carries (which
    /// [`SpiffeId::parse`] and [`SpiffeId::from_cert`] never produce).
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses and validates `id`: the `spiffe` scheme, a trust domain of
    /// lowercase letters, digits, `.`, `-` and `_`, and exactly
    /// `/ns/NAMESPACE/sa/SERVICE_ACCOUNT` with non-empty parts.
    pub fn parse(id: &str) -> Result<SpiffeId, IdentityError> {
        let invalid = |reason| IdentityError::InvalidSpiffeId {
            id: id.to_owned(),
            reason,
        };
        if id.len() > MAX_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("must start with spiffe://"))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if trust_domain.is_empty() {
            return Err(invalid("the trust domain is empty"));
        }
        if !trust_domain.bytes().all(is_trust_domain_byte) {
            return Err(invalid(
                "the trust domain may contain only lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let ["ns", namespace, "sa", service_account] = segments[..] else {
            return Err(invalid(PATH_SHAPE));
        };
        if namespace.is_empty() {
            return Err(invalid("the namespace is empty"));
        }
        if service_account.is_empty() {
            return Err(invalid("the service account is empty"));
        }
        for segment in [namespace, service_account] {
            if segment == "." || segment == ".." || !segment.bytes().all(is_path_byte) {
                return Err(invalid(
                    "the namespace and service account may contain only letters, digits, '.', '-' and '_'",
                ));
            }
        }
        Ok(SpiffeId::new(trust_domain, namespace, service_account))
    }

    /// The SPIFFE ID of a certificate: its only URI SAN, which must be a
    /// valid SPIFFE ID. It checks nothing else (not the chain, not validity).
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
        let (_, x509) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| IdentityError::CertificateParse(e.to_string()))?;
        let san = x509
            .subject_alternative_name()
            .map_err(|e| IdentityError::CertificateParse(format!("subjectAltName: {e}")))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris[..] {
            [] => Err(IdentityError::NoSpiffeId),
            [uri] => SpiffeId::parse(uri),
            _ => Err(IdentityError::SeveralUriSans(
                uris.iter().map(|u| u.to_string()).collect(),
            )),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn reason(id: &str) -> &'static str {
        match SpiffeId::parse(id) {
            Err(IdentityError::InvalidSpiffeId { reason, .. }) => reason,
            other => panic!("{id}: expected InvalidSpiffeId, got {other:?}"),
        }
    }

    fn cert_with_sans(sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn a_well_formed_id_round_trips() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/httpbin/sa/default").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "httpbin");
        assert_eq!(id.service_account(), "default");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/httpbin/sa/default"
        );
        assert_eq!(id, SpiffeId::new("cluster.local", "httpbin", "default"));
        let parsed: SpiffeId = "spiffe://td/ns/a_b/sa/C.d-1".parse().unwrap();
        assert_eq!(parsed.service_account(), "C.d-1");
    }

    #[test]
    fn malformed_ids_are_rejected_with_the_reason() {
        assert!(reason("https://td/ns/a/sa/b").contains("spiffe://"));
        assert!(reason("spiffe:///ns/a/sa/b").contains("trust domain is empty"));
        assert!(reason("spiffe://TD/ns/a/sa/b").contains("lowercase"));
        assert!(reason("spiffe://td:8080/ns/a/sa/b").contains("lowercase"));
        assert!(reason("spiffe://td").contains("exactly"));
        assert!(reason("spiffe://td/ns/a").contains("exactly"));
        assert!(reason("spiffe://td/ns/a/sa/b/extra").contains("exactly"));
        assert!(reason("spiffe://td/ns/a/sa/b/").contains("exactly"));
        assert!(reason("spiffe://td/namespace/a/sa/b").contains("exactly"));
        assert!(reason("spiffe://td/ns//sa/b").contains("namespace is empty"));
        assert!(reason("spiffe://td/ns/a/sa/").contains("service account is empty"));
        assert!(reason("spiffe://td/ns/../sa/b").contains("may contain only"));
        assert!(reason("spiffe://td/ns/a/sa/b?x=1").contains("may contain only"));
        assert!(reason(&format!("spiffe://td/ns/a/sa/{}", "b".repeat(2048))).contains("2048"));
    }

    #[test]
    fn the_id_is_read_from_the_only_uri_san() {
        let cert = cert_with_sans(vec![
            SanType::DnsName("ignored.example".try_into().unwrap()),
            uri("spiffe://cluster.local/ns/a/sa/b"),
        ]);
        let id = SpiffeId::from_cert(&cert).unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/a/sa/b");
    }

    #[test]
    fn certificates_without_exactly_one_spiffe_uri_are_rejected_precisely() {
        let none = cert_with_sans(vec![SanType::DnsName("a.example".try_into().unwrap())]);
        assert!(matches!(
            SpiffeId::from_cert(&none),
            Err(IdentityError::NoSpiffeId)
        ));

        let two = cert_with_sans(vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            uri("spiffe://cluster.local/ns/a/sa/c"),
        ]);
        match SpiffeId::from_cert(&two) {
            Err(IdentityError::SeveralUriSans(uris)) => assert_eq!(uris.len(), 2),
            other => panic!("expected SeveralUriSans, got {other:?}"),
        }

        let not_spiffe = cert_with_sans(vec![uri("https://a.example/x")]);
        assert!(matches!(
            SpiffeId::from_cert(&not_spiffe),
            Err(IdentityError::InvalidSpiffeId { .. })
        ));

        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0x00]);
        assert!(matches!(
            SpiffeId::from_cert(&garbage),
            Err(IdentityError::CertificateParse(_))
        ));
    }
}
