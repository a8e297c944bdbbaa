//! The response body type of the proxy: a locally generated body, or an
//! upstream body that hands its HTTP/1 connection back to the pool once it
//! has been read to the end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::endpoint::Release;

#[derive(Debug)]
pub(crate) enum ProxyBody {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        release: Option<Release>,
    },
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(data.into()))
    }

    pub fn upstream(inner: Incoming, release: Option<Release>) -> Self {
        let mut body = ProxyBody::Upstream { inner, release };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if let ProxyBody::Upstream { inner, release } = self {
            if inner.is_end_stream() {
                if let Some(r) = release.take() {
                    r.release();
                }
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream { inner, release } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    // Read to the end: the connection can serve another request.
                    Poll::Ready(None) => {
                        if let Some(r) = release.take() {
                            r.release();
                        }
                    }
                    // A broken body means a broken connection: never reuse it.
                    Poll::Ready(Some(Err(_))) => {
                        release.take();
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body the server never polled because it was empty (HEAD, 204,
        // Content-Length: 0) still frees its connection.
        self.release_if_done();
    }
}

/// The request body sent upstream: streamed from the client, or held in
/// memory so an idempotent request can be sent again.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Stream(Incoming),
    Replay(Option<Bytes>),
}

impl ReqBody {
    /// A copy for another attempt, when the body is held in memory.
    pub fn replay(&self) -> Option<Self> {
        match self {
            ReqBody::Stream(_) => None,
            ReqBody::Replay(b) => Some(ReqBody::Replay(b.clone())),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Stream(inner) => Pin::new(inner).poll_frame(cx),
            ReqBody::Replay(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(inner) => inner.is_end_stream(),
            ReqBody::Replay(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(inner) => inner.size_hint(),
            ReqBody::Replay(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ReqBody::Replay(None) => SizeHint::with_exact(0),
        }
    }
}
