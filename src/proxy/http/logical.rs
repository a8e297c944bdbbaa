//! One request: find the service port for the connection's destination in
//! the current snapshot, pick an endpoint, forward, record.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::info;

use super::body::ProxyBody;
use super::endpoint::Limits;
use super::{headers, upgrade, Version};
use crate::discovery::ServiceName;
use crate::proxy::metrics::RequestRecorder;
use crate::proxy::respond::error_response;
use crate::proxy::{access_log, Error, Proxy};

/// A client connection's context, shared by its requests.
#[derive(Debug)]
pub(crate) struct Conn {
    pub proxy: Arc<Proxy>,
    /// The original destination: a service VIP and port.
    pub dst: SocketAddr,
    pub client: SocketAddr,
    pub version: Version,
    pub recorder: RequestRecorder,
}

/// Settings copied out of the config in force, so no guard is held across `.await`.
#[derive(Clone, Copy)]
struct Settings {
    limits: Limits,
    request_timeout: Option<Duration>,
    x_forwarded_for: bool,
    access_log: bool,
}

pub(super) async fn handle(
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let (service, pick, settings) = {
        let state = conn.proxy.store.load();
        let config = &state.config;
        let settings = Settings {
            limits: Limits {
                connect_timeout: config.outbound.connect_timeout,
                max_idle: config.outbound.pool_max_idle_per_endpoint,
            },
            request_timeout: config.outbound.request_timeout,
            x_forwarded_for: config.http.x_forwarded_for,
            access_log: config.log.access_log,
        };
        let Some(target) = state.snapshot.target(&conn.dst) else {
            let error = Error::NoService(conn.dst);
            return Ok(fail(&conn, None, None, error, start, settings.access_log));
        };
        let pick = target.port().selector.select().cloned();
        (Arc::clone(&target.service), pick, settings)
    };
    let pick = match pick {
        Ok(p) => p,
        Err(source) => {
            let error = Error::NoEndpoint {
                service: service.name.clone(),
                source,
            };
            return Ok(fail(
                &conn,
                Some(&service.name),
                None,
                error,
                start,
                settings.access_log,
            ));
        }
    };

    let upgrade = conn.version == Version::Http1
        && (req.method() == Method::CONNECT || headers::is_upgrade(req.headers()));
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    if settings.x_forwarded_for {
        headers::add_forwarded(req.headers_mut(), conn.client);
    }
    let method = settings.access_log.then(|| req.method().clone());

    let addr = pick.addr;
    let result = if upgrade {
        upgrade::forward(addr, req, settings.limits.connect_timeout).await
    } else {
        let send = conn
            .proxy
            .pool
            .send(addr, conn.version, req, settings.limits);
        match settings.request_timeout {
            None => send.await,
            Some(timeout) => match tokio::time::timeout(timeout, send).await {
                Ok(r) => r,
                Err(_) => Err(Error::ResponseTimeout { addr, timeout }),
            },
        }
    };

    match result {
        Ok(mut rsp) => {
            let switched = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            headers::strip_hop_by_hop(rsp.headers_mut(), upgrade && switched);
            let elapsed = start.elapsed();
            let code = rsp.status().as_u16();
            conn.recorder
                .record(&service.name, &pick.cluster, code, elapsed);
            if let Some(method) = method {
                access_log::http(&access_log::HttpRecord {
                    client: conn.client,
                    service: &service.name,
                    cluster: Some(&pick.cluster),
                    endpoint: Some(addr),
                    method: method.as_str(),
                    status: code,
                    duration: elapsed,
                    error: None,
                });
            }
            Ok(rsp)
        }
        Err(error) => {
            if error.is_connect() {
                conn.recorder
                    .metrics()
                    .connect_errors
                    .with_label_values(&[
                        service.name.name.as_str(),
                        service.name.namespace.as_str(),
                        error.reason().as_str(),
                    ])
                    .inc();
            }
            Ok(fail(
                &conn,
                Some(&service.name),
                Some((&pick.cluster, addr)),
                error,
                start,
                settings.access_log,
            ))
        }
    }
}

/// Answers the request with the proxy's own error response, counted and logged once.
fn fail(
    conn: &Conn,
    service: Option<&ServiceName>,
    endpoint: Option<(&Arc<str>, SocketAddr)>,
    error: Error,
    start: Instant,
    log: bool,
) -> Response<ProxyBody> {
    let rsp = error_response(&error);
    let code = rsp.status().as_u16();
    let reason = error.reason().as_str();
    let (name, namespace) = service.map_or(("", ""), |s| (s.name.as_str(), s.namespace.as_str()));
    let metrics = conn.recorder.metrics();
    metrics
        .errors
        .with_label_values(&["outbound", name, namespace, reason])
        .inc();
    if let Some(service) = service {
        let cluster = endpoint
            .map(|(c, _)| Arc::clone(c))
            .unwrap_or_else(|| Arc::from(""));
        conn.recorder
            .record(service, &cluster, code, start.elapsed());
    }
    info!(%error, reason, code, "request failed");
    if log {
        let unknown = ServiceName::new("", "");
        access_log::http(&access_log::HttpRecord {
            client: conn.client,
            service: service.unwrap_or(&unknown),
            cluster: endpoint.map(|(c, _)| &**c),
            endpoint: endpoint.map(|(_, a)| a),
            method: "",
            status: code,
            duration: start.elapsed(),
            error: Some(reason),
        });
    }
    rsp
}
