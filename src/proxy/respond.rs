//! The one place a failure becomes a response: status code, the
//! `x-strait-error` header, a short body, and the metric reason.

use http::{HeaderValue, Response, StatusCode};

use super::http::ProxyBody;
use super::Error;

/// The response header naming what the proxy itself failed to do.
pub const ERROR_HEADER: &str = "x-strait-error";

/// Bounded reason label for `strait_proxy_errors_total` and connect errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoService,
    NoEndpoint,
    ConnectRefused,
    ConnectTimeout,
    ConnectFailed,
    ResponseTimeout,
    UpstreamFailed,
    TlsHandshake,
    PeerIdentity,
    MeshRefused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoService => "no_service",
            Reason::NoEndpoint => "no_endpoint",
            Reason::ConnectRefused => "connect_refused",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::ConnectFailed => "connect_failed",
            Reason::ResponseTimeout => "response_timeout",
            Reason::UpstreamFailed => "upstream_failed",
            Reason::TlsHandshake => "tls_handshake",
            Reason::PeerIdentity => "peer_identity",
            Reason::MeshRefused => "mesh_refused",
        }
    }
}

impl Error {
    pub fn reason(&self) -> Reason {
        match self {
            Error::NoService(_) => Reason::NoService,
            Error::NoEndpoint { .. } => Reason::NoEndpoint,
            Error::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Reason::ConnectRefused
            }
            Error::Connect { .. } | Error::Handshake { .. } => Reason::ConnectFailed,
            Error::ConnectTimeout { .. } => Reason::ConnectTimeout,
            Error::ResponseTimeout { .. } => Reason::ResponseTimeout,
            Error::Upstream { .. } => Reason::UpstreamFailed,
            Error::Tls { .. } => Reason::TlsHandshake,
            Error::PeerIdentity { .. } => Reason::PeerIdentity,
            Error::MeshRefused { .. } => Reason::MeshRefused,
        }
    }

    /// Whether the failure happened before any byte of the request reached an upstream.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Handshake { .. }
                | Error::Tls { .. }
                | Error::PeerIdentity { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self.reason() {
            Reason::NoService | Reason::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Reason::ConnectRefused
            | Reason::ConnectFailed
            | Reason::UpstreamFailed
            | Reason::TlsHandshake
            | Reason::PeerIdentity => StatusCode::BAD_GATEWAY,
            // The peer proxy answered for the app (403: not authorized).
            Reason::MeshRefused => match self {
                Error::MeshRefused { status, .. } => *status,
                _ => StatusCode::BAD_GATEWAY,
            },
            Reason::ConnectTimeout | Reason::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// The response the caller gets for `error`.
pub fn error_response(error: &Error) -> Response<ProxyBody> {
    let message = error.to_string();
    let mut rsp = Response::new(ProxyBody::full(format!("{message}\n")));
    *rsp.status_mut() = error.status();
    let headers = rsp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The message is built from service names and addresses only; fall back
    // to the bare reason if it ever holds a byte a header cannot.
    let value = HeaderValue::from_str(&message)
        .unwrap_or_else(|_| HeaderValue::from_static(error.reason().as_str()));
    headers.insert(ERROR_HEADER, value);
    rsp
}
