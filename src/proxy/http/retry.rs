//! What retries need: which endpoints a request has tried, a template to
//! rebuild a held request, and which methods may be sent twice.

use std::net::SocketAddr;

use http::{HeaderMap, Method, Request, Uri, Version as HttpVersion};

use super::body::ReqBody;

/// Endpoints already tried by this request. At most `maxAttempts` (≤ 10).
pub(super) struct Tried {
    addrs: [SocketAddr; 10],
    len: usize,
}

impl Tried {
    pub(super) fn new() -> Self {
        Self {
            addrs: [SocketAddr::from(([0, 0, 0, 0], 0)); 10],
            len: 0,
        }
    }

    pub(super) fn push(&mut self, addr: SocketAddr) {
        if self.len < self.addrs.len() {
            self.addrs[self.len] = addr;
            self.len += 1;
        }
    }

    pub(super) fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..self.len]
    }
}

/// What is needed to send a held request again.
pub(super) struct Template {
    pub method: Method,
    pub uri: Uri,
    pub version: HttpVersion,
    pub headers: HeaderMap,
    /// The held body (`ReqBody::Replay`; cloning it shares the bytes).
    pub body: ReqBody,
}

impl Template {
    /// A copy of the request for another attempt; built only when retrying.
    pub(super) fn request(&self) -> Option<Request<ReqBody>> {
        let mut req = Request::new(self.body.replay()?);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[derive(Clone, Copy)]
pub(super) enum RetryReason {
    Connect,
    Reset,
    Status,
}

impl RetryReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Status => "status_5xx",
        }
    }
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
