//! Upstream HTTP connections: connecting with a timeout, and the pool.
//!
//! HTTP/1.1: a LIFO stack of idle `SendRequest`s per endpoint; a connection
//! goes back on the stack when its response body has been read to the end
//! ([`Release`]). HTTP/2: one multiplexed connection per endpoint, shared by
//! clones of its `SendRequest`; requests that arrive while it is being made
//! wait for it rather than each opening their own. The pool is keyed by
//! address, not by snapshot, so a config reload keeps warm connections. A
//! request that was never written (the pooled connection had just closed) is
//! sent again on another connection; nothing that reached an upstream is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::body::{ProxyBody, ReqBody};
use super::Version;
use crate::proxy::executor::BoxingExecutor;
use crate::proxy::Error;

#[derive(Debug, Clone, Default)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    h1: Mutex<FxHashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<FxHashMap<SocketAddr, http2::SendRequest<ReqBody>>>,
    /// Held while an HTTP/2 connection to the endpoint is being made.
    h2_connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// Returns an HTTP/1 connection to the pool when dropped via [`Release::release`].
#[derive(Debug)]
pub(crate) struct Release {
    sender: http1::SendRequest<ReqBody>,
    addr: SocketAddr,
    max_idle: usize,
    pool: Pool,
}

impl Release {
    pub fn release(self) {
        self.pool.checkin(self.addr, self.sender, self.max_idle);
    }
}

/// Per-request limits, read from the config in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub connect_timeout: Duration,
    pub max_idle: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold no invariant a panicking holder could break halfway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A failed send; `unsent` holds the request when no byte of it reached the
/// upstream, so it may go to another endpoint whatever its method.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: Error,
    pub unsent: Option<Request<ReqBody>>,
}

impl Failed {
    pub fn unsent(error: Error, req: Request<ReqBody>) -> Self {
        Self {
            error,
            unsent: Some(req),
        }
    }

    fn sent(error: Error) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

impl Pool {
    /// Sends `req` to `addr` over a pooled connection of the given version.
    pub async fn send(
        &self,
        addr: SocketAddr,
        version: Version,
        req: Request<ReqBody>,
        limits: Limits,
    ) -> Result<Response<ProxyBody>, Failed> {
        match version {
            Version::Http1 => self.send_h1(addr, req, limits).await,
            Version::Http2 => self.send_h2(addr, req, limits).await,
        }
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Request<ReqBody>,
        limits: Limits,
    ) -> Result<Response<ProxyBody>, Failed> {
        while let Some(mut sender) = self.checkout(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok(self.wrap(addr, sender, rsp, limits)),
                Err(mut e) => match e.take_message() {
                    // Not written: the connection closed under us. Try another.
                    Some(r) => req = r,
                    None => {
                        return Err(Failed::sent(Error::Upstream {
                            addr,
                            source: e.into_error(),
                        }))
                    }
                },
            }
        }
        // Boxed, as every rare path: the request future stays small, and
        // hyper moves it into place once per request.
        let mut sender = match Box::pin(connect_h1(addr, limits.connect_timeout, false)).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        if let Err(source) = sender.ready().await {
            return Err(Failed::unsent(Error::Handshake { addr, source }, req));
        }
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(self.wrap(addr, sender, rsp, limits)),
            Err(mut e) => {
                let unsent = e.take_message();
                let error = Error::Upstream {
                    addr,
                    source: e.into_error(),
                };
                Err(Failed { error, unsent })
            }
        }
    }

    fn wrap(
        &self,
        addr: SocketAddr,
        sender: http1::SendRequest<ReqBody>,
        rsp: Response<Incoming>,
        limits: Limits,
    ) -> Response<ProxyBody> {
        let release = Release {
            sender,
            addr,
            max_idle: limits.max_idle,
            pool: self.clone(),
        };
        rsp.map(|body| ProxyBody::upstream(body, Some(release)))
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
        limits: Limits,
    ) -> Result<Response<ProxyBody>, Failed> {
        let sender = match self.h2_open(addr) {
            Some(s) => Ok(s),
            None => Box::pin(self.connect_h2_once(addr, limits.connect_timeout)).await,
        };
        let mut sender = match sender {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        if let Err(source) = sender.ready().await {
            return Err(Failed::unsent(Error::Upstream { addr, source }, req));
        }
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp.map(|body| ProxyBody::upstream(body, None))),
            Err(mut e) => {
                let unsent = e.take_message();
                let error = Error::Upstream {
                    addr,
                    source: e.into_error(),
                };
                Err(Failed { error, unsent })
            }
        }
    }

    fn h2_open(&self, addr: SocketAddr) -> Option<http2::SendRequest<ReqBody>> {
        lock(&self.shared.h2)
            .get(&addr)
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// Connects unless another request is already connecting; then waits for
    /// that connection. If it failed, this request tries on its own, so
    /// waiters are not queued behind one connect timeout after another.
    async fn connect_h2_once(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<http2::SendRequest<ReqBody>, Error> {
        let gate = Arc::clone(lock(&self.shared.h2_connecting).entry(addr).or_default());
        let _connecting = match gate.try_lock() {
            Ok(guard) => Some(guard),
            Err(_) => {
                drop(gate.lock().await);
                None
            }
        };
        if let Some(s) = self.h2_open(addr) {
            return Ok(s);
        }
        let s = connect_h2(addr, timeout).await?;
        lock(&self.shared.h2).insert(addr, s.clone());
        Ok(s)
    }

    fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<ReqBody>> {
        let mut h1 = lock(&self.shared.h1);
        let idle = h1.get_mut(&addr)?;
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<ReqBody>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut h1 = lock(&self.shared.h1);
        let idle = h1.entry(addr).or_default();
        if idle.len() < max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops idle connections older than `timeout`, and closed ones.
    pub fn evict_idle(&self, timeout: Duration) {
        let now = Instant::now();
        lock(&self.shared.h1).retain(|_, idle| {
            idle.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < timeout);
            !idle.is_empty()
        });
        lock(&self.shared.h2).retain(|_, s| !s.is_closed());
        lock(&self.shared.h2_connecting).retain(|_, gate| Arc::strong_count(gate) > 1);
    }
}

/// A TCP connection to `addr`, with `TCP_NODELAY`, within `timeout`.
pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(Error::ConnectTimeout { addr, timeout }),
        Ok(Err(source)) => Err(Error::Connect { addr, source }),
        Ok(Ok(stream)) => {
            // Latency matters more than packet count on a per-pod hop.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// A new HTTP/1.1 connection; `upgrades` keeps it usable after a `101`.
pub(crate) async fn connect_h1<B>(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> Result<http1::SendRequest<B>, Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connect_tcp(addr, timeout).await?;
    if upgrades {
        handshake_h1(addr, TokioIo::new(stream)).await
    } else {
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Handshake { addr, source })?;
        tokio::spawn(
            async move {
                if let Err(error) = conn.await {
                    debug!(%error, "upstream connection ended");
                }
            }
            .instrument(tracing::debug_span!("upstream", %addr)),
        );
        Ok(sender)
    }
}

/// An HTTP/1.1 client over `io` that stays usable for a protocol switch.
pub(crate) async fn handshake_h1<B, I>(
    addr: SocketAddr,
    io: I,
) -> Result<http1::SendRequest<B>, Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| Error::Handshake { addr, source })?;
    tokio::spawn(
        async move {
            if let Err(error) = conn.with_upgrades().await {
                debug!(%error, "upstream connection ended");
            }
        }
        .instrument(tracing::debug_span!("upstream", %addr)),
    );
    Ok(sender)
}

async fn connect_h2(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<http2::SendRequest<ReqBody>, Error> {
    let stream = connect_tcp(addr, timeout).await?;
    let (sender, conn) = http2::Builder::new(BoxingExecutor)
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| Error::Handshake { addr, source })?;
    tokio::spawn(
        async move {
            if let Err(error) = conn.await {
                debug!(%error, "upstream h2 connection ended");
            }
        }
        .instrument(tracing::debug_span!("upstream", %addr, proto = "h2")),
    );
    Ok(sender)
}
