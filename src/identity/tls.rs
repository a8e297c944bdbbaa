//! The mesh's rustls configs, built once per (re)load: TLS 1.3 only, ALPN
//! `h2`, the ring provider passed explicitly, our chain presented on both
//! sides, and verifiers that require a chain to the trust bundle and a
//! SPIFFE ID in our trust domain.
//!
//! Session resumption is off on both sides: mesh connections are pooled
//! and long-lived, so it would save little, and without it every
//! connection's peer is checked against the bundle in force when it is made.
//!
//! Deliberately not checked here: the server name (peers are dialled by IP
//! or through a gateway's SNI) and the peer's exact SPIFFE ID (the caller
//! compares it with the service's after the handshake).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use super::files::Credentials;
use super::{IdentityError, SpiffeId};
use crate::config::Identity;

const ALPN_H2: &[u8] = b"h2";

/// The client and server configs of one identity.
pub(super) struct Configs {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
}

// === impl Configs ===

impl Configs {
    /// Builds both configs, then checks our own chain with the verifiers
    /// peers run (as a server's and as a client's), so a chain that peers
    /// would refuse is refused at load.
    pub fn build(
        creds: &Credentials,
        config: &Identity,
        provider: &Arc<CryptoProvider>,
        now: SystemTime,
    ) -> Result<Configs, IdentityError> {
        let trust_domain: Arc<str> = config.trust_domain.as_str().into();
        let server_verifier = Arc::new(SpiffeServerVerifier {
            roots: Arc::clone(&creds.roots),
            trust_domain: Arc::clone(&trust_domain),
            algorithms: provider.signature_verification_algorithms,
        });
        let webpki = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&creds.roots),
            Arc::clone(provider),
        )
        .build()
        .map_err(IdentityError::Verifier)?;
        let client_verifier = Arc::new(SpiffeClientVerifier {
            webpki,
            trust_domain,
        });

        let (leaf, intermediates) = creds
            .certified
            .cert
            .split_first()
            .ok_or(IdentityError::Tls(rustls::Error::NoCertificatesPresented))?;
        let untrusted = |source| IdentityError::Untrusted {
            chain: config.cert_chain.clone(),
            bundle: config.trust_bundle.clone(),
            source,
        };
        let now = unix_time(now);
        // Any name: the server verifier does not look at it.
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        server_verifier
            .verify_server_cert(leaf, intermediates, &name, &[], now)
            .map_err(untrusted)?;
        client_verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(untrusted)?;

        let resolver = Arc::new(SingleCertAndKey::from(Arc::clone(&creds.certified)));
        let mut client = ClientConfig::builder_with_provider(Arc::clone(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(IdentityError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_cert_resolver(resolver.clone());
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        client.resumption = Resumption::disabled();

        let mut server = ServerConfig::builder_with_provider(Arc::clone(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(IdentityError::Tls)?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(resolver);
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        Ok(Configs {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// The client's check of a server: webpki chain to the bundle (with the
/// intermediates the server sent), valid now, serverAuth, and a SPIFFE ID
/// in the trust domain. Not the server name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: Arc<str>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_spiffe_id(end_entity, &self.trust_domain)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's check of a client: rustls's webpki client verifier over
/// the bundle (a certificate is mandatory), then a SPIFFE ID in the trust
/// domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: Arc<str>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        check_spiffe_id(end_entity, &self.trust_domain)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The certificate carries a SPIFFE ID in `trust_domain`; otherwise a
/// certificate error (alert `certificate_unknown`) whose source says why.
fn check_spiffe_id(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<(), rustls::Error> {
    let reject = |e: IdentityError| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    };
    let id = SpiffeId::from_cert(cert).map_err(reject)?;
    if id.trust_domain() != trust_domain {
        return Err(reject(IdentityError::WrongTrustDomain {
            id,
            expected: trust_domain.to_owned(),
        }));
    }
    Ok(())
}

fn unix_time(t: SystemTime) -> UnixTime {
    // Before 1970 only with a broken clock; webpki then sees the epoch.
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}
