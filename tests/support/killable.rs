//! An HTTP/1.1 backend that can be killed (listener and every open
//! connection closed at once, as when a pod dies) and started again on the
//! same address.

#![allow(clippy::unwrap_used)] // test support fails loudly on the unexpected
#![allow(dead_code)] // each test crate uses the part of the support it needs

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Killable {
    pub name: &'static str,
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    life: Mutex<CancellationToken>,
}

impl Killable {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let k = Self {
            name,
            addr,
            served: Arc::new(AtomicU64::new(0)),
            life: Mutex::new(CancellationToken::new()),
        };
        k.serve(listener);
        k
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection.
    pub fn kill(&self) {
        self.life.lock().unwrap().cancel();
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        *self.life.lock().unwrap() = CancellationToken::new();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let life = self.life.lock().unwrap().clone();
        let served = Arc::clone(&self.served);
        let name = self.name;
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = life.cancelled() => return,
                };
                let served = Arc::clone(&served);
                let life = life.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        served.fetch_add(1, Ordering::Relaxed);
                        async move {
                            let mut rsp = http::Response::new(Full::new(Bytes::from(name)));
                            rsp.headers_mut()
                                .insert("x-backend", http::HeaderValue::from_static(name));
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes the socket mid-whatever.
                        _ = life.cancelled() => {}
                    }
                });
            }
        });
    }
}
