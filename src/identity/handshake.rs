//! What the data path learns from a finished or failed handshake: the
//! peer's SPIFFE ID, and a bounded reason label for a failure.
//!
//! It does not decide whether a peer is allowed (the caller compares the
//! ID with what the service expects) and does not count anything itself.

use std::error::Error;
use std::io;

use rustls::{AlertDescription, CertificateError, CommonState};

use super::{IdentityError, SpiffeId};

/// Why a TLS handshake failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's chain does not lead to a root of our bundle (or a
    /// signature in it is bad), or the peer said so of ours.
    UnknownCa,
    /// A certificate is expired or not yet valid (theirs, or ours per the peer).
    Expired,
    /// Any other certificate problem: no or wrong SPIFFE ID, bad encoding, EKU.
    BadCertificate,
    /// The client sent no certificate.
    NoClientCert,
    /// No common protocol version (e.g. a TLS 1.2-only peer) or parameters.
    ProtocolVersion,
    /// The bytes are not TLS records (e.g. plaintext HTTP to the mesh port).
    NotTls,
    /// The peer aborted with an alert not listed above.
    Alert,
    /// The connection failed underneath TLS (reset, closed mid-handshake).
    Io,
    /// The handshake did not finish in time.
    Timeout,
    Other,
}

// === impl HandshakeFailure ===

impl HandshakeFailure {
    /// Classifies the error of a tokio-rustls `accept`/`connect` (an
    /// `io::Error` that wraps a [`rustls::Error`] when TLS itself failed).
    pub fn of(err: &io::Error) -> Self {
        // Walk the causes; an io::Error's `source()` skips the error it
        // wraps, so step into those through `get_ref()`.
        let mut cause: Option<&(dyn Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Self::of_rustls(tls);
            }
            cause = match e.downcast_ref::<io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
                None => e.source(),
            };
        }
        match err.kind() {
            io::ErrorKind::TimedOut => Self::Timeout,
            // tokio-rustls reports rustls errors as InvalidData; without one
            // inside, it is not an I/O failure either.
            io::ErrorKind::InvalidData => Self::Other,
            _ => Self::Io,
        }
    }

    pub fn of_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::InvalidCertificate(e) => Self::of_certificate(e),
            E::NoCertificatesPresented => Self::NoClientCert,
            E::PeerIncompatible(_) => Self::ProtocolVersion,
            E::InvalidMessage(_) => Self::NotTls,
            E::AlertReceived(alert) => Self::of_alert(*alert),
            _ => Self::Other,
        }
    }

    fn of_certificate(err: &CertificateError) -> Self {
        use CertificateError as C;
        match err {
            C::UnknownIssuer | C::BadSignature => Self::UnknownCa,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => Self::Expired,
            _ => Self::BadCertificate,
        }
    }

    fn of_alert(alert: AlertDescription) -> Self {
        use AlertDescription as A;
        match alert {
            A::UnknownCA => Self::UnknownCa,
            A::CertificateExpired => Self::Expired,
            A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => {
                Self::BadCertificate
            }
            A::CertificateRequired => Self::NoClientCert,
            A::ProtocolVersion => Self::ProtocolVersion,
            _ => Self::Alert,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::BadCertificate => "bad_certificate",
            Self::NoClientCert => "no_client_cert",
            Self::ProtocolVersion => "protocol_version",
            Self::NotTls => "not_tls",
            Self::Alert => "alert",
            Self::Io => "io",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// The label of a tokio-rustls handshake error; see [`HandshakeFailure`].
pub fn handshake_failure_reason(err: &io::Error) -> &'static str {
    HandshakeFailure::of(err).as_str()
}

/// The SPIFFE ID of the peer of an established connection (its leaf
/// certificate). The chain and trust domain were checked in the handshake.
pub fn peer_id(conn: &CommonState) -> Result<SpiffeId, IdentityError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(IdentityError::NoPeerCertificate)?;
    SpiffeId::from_cert(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: impl Into<rustls::Error>) -> &'static str {
        handshake_failure_reason(&io::Error::new(io::ErrorKind::InvalidData, e.into()))
    }

    #[test]
    fn rustls_errors_map_to_bounded_labels() {
        assert_eq!(reason(CertificateError::UnknownIssuer), "unknown_ca");
        assert_eq!(reason(CertificateError::BadSignature), "unknown_ca");
        assert_eq!(reason(CertificateError::NotValidYet), "expired");
        assert_eq!(reason(CertificateError::InvalidPurpose), "bad_certificate");
        assert_eq!(
            reason(rustls::Error::NoCertificatesPresented),
            "no_client_cert"
        );
        assert_eq!(
            reason(rustls::PeerIncompatible::Tls12NotOfferedOrEnabled),
            "protocol_version"
        );
        assert_eq!(
            reason(rustls::InvalidMessage::InvalidContentType),
            "not_tls"
        );
        assert_eq!(reason(rustls::Error::DecryptError), "other");
    }

    #[test]
    fn alerts_from_the_peer_say_what_it_rejected() {
        let alert = |a| reason(rustls::Error::AlertReceived(a));
        assert_eq!(alert(AlertDescription::UnknownCA), "unknown_ca");
        assert_eq!(alert(AlertDescription::CertificateExpired), "expired");
        assert_eq!(alert(AlertDescription::BadCertificate), "bad_certificate");
        assert_eq!(
            alert(AlertDescription::CertificateRequired),
            "no_client_cert"
        );
        assert_eq!(alert(AlertDescription::ProtocolVersion), "protocol_version");
        assert_eq!(alert(AlertDescription::HandshakeFailure), "alert");
    }

    #[test]
    fn plain_io_errors_are_io_or_timeout() {
        let e = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(handshake_failure_reason(&e), "io");
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(handshake_failure_reason(&e), "io");
        let e = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(handshake_failure_reason(&e), "timeout");
        // An io::Error wrapping another that wraps the rustls error.
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        let outer = io::Error::other(inner);
        assert_eq!(handshake_failure_reason(&outer), "no_client_cert");
    }
}
