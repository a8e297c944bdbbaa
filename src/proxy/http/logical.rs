//! One request: find the service port for the connection's destination in
//! the current snapshot, pick an endpoint under the service's policy,
//! forward, and on failure try again where it is safe; then record.
//!
//! Retries go to an endpoint not yet tried (another cluster where the policy
//! allows), within the service's retry budget and `balance.retries.maxAttempts`:
//! - any request that never reached an upstream (connect failure, a pooled
//!   connection that closed before the request was written);
//! - an idempotent request whose body is held in memory (none, or a known
//!   length up to `maxReplayBytes`) that got a 502/503/504 or a reset.
//!
//! A non-idempotent request that reached an upstream is never sent again.

use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, info};

use super::body::{ProxyBody, ReqBody};
use super::endpoint::{Failed, Limits};
use super::retry::{content_length, is_idempotent, RetryReason, Template, Tried};
use super::{headers, upgrade, Version};
use crate::balance::{Algorithm, Failure, Pick, PickContext};
use crate::discovery::{HashKey, ServiceName};
use crate::proxy::mesh::MeshTarget;
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
    /// Peers' mesh port, for mesh mTLS (`inbound.meshPort`).
    mesh_port: u16,
    request_timeout: Option<Duration>,
    x_forwarded_for: bool,
    access_log: bool,
    max_attempts: u32,
    max_replay: usize,
}

pub(super) async fn handle(
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // One look at the state in force: settings, the service, the first pick.
    let (service, settings, hash, may_probe, first) = {
        let state = conn.proxy.store.load();
        let config = &state.config;
        let retries = &config.balance.retries;
        let settings = Settings {
            limits: Limits {
                connect_timeout: config.outbound.connect_timeout,
                max_idle: config.outbound.pool_max_idle_per_endpoint,
            },
            mesh_port: config.inbound.mesh_port,
            request_timeout: config.outbound.request_timeout,
            x_forwarded_for: config.http.x_forwarded_for,
            access_log: config.log.access_log,
            max_attempts: retries.max_attempts.clamp(1, 10),
            max_replay: retries.max_replay_bytes,
        };
        let Some(target) = state.snapshot.target(&conn.dst) else {
            let error = Error::NoService(conn.dst);
            return Ok(fail(&conn, None, None, error, start, settings.access_log));
        };
        let service = &target.service;
        let mut settings = settings;
        if let Some(t) = service.connect_timeout {
            settings.limits.connect_timeout = t;
        }
        if service.request_timeout.is_some() {
            settings.request_timeout = service.request_timeout;
        }
        let selector = &target.port().selector;
        let hash = (selector.algorithm() == Algorithm::ConsistentHash)
            .then(|| request_hash(&target.service.hash_key, &req, conn.client))
            .flatten();
        if settings.max_attempts > 1 {
            // Every request earns retry budget.
            selector.state().deposit();
        }
        let may_probe = settings.max_attempts > 1 && is_idempotent(req.method());
        let first = selector.select(&PickContext {
            exclude: &[],
            hash,
            may_probe,
            ..Default::default()
        });
        (
            Arc::clone(&target.service),
            settings,
            hash,
            may_probe,
            first,
        )
    };
    let mut pick = match first {
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
    if upgrade {
        // Boxed: a rare path, and its future would otherwise set the size
        // of every request's.
        return Ok(Box::pin(forward_upgrade(&conn, &service, pick, req, settings, start)).await);
    }

    let method = req.method().clone();
    let idempotent = is_idempotent(&method);
    let (parts, body) = req.into_parts();
    let body = if body.is_end_stream() {
        ReqBody::Replay(None)
    } else if idempotent
        && settings.max_attempts > 1
        && content_length(&parts.headers).is_some_and(|n| n <= settings.max_replay as u64)
    {
        match Limited::new(body, settings.max_replay).collect().await {
            Ok(collected) => ReqBody::Replay(Some(collected.to_bytes())),
            Err(e) => {
                debug!(error = %e, "client request body failed");
                let mut rsp =
                    Response::new(ProxyBody::full(Bytes::from_static(b"bad request body\n")));
                *rsp.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(rsp);
            }
        }
    } else {
        ReqBody::Stream(body)
    };
    let template = if idempotent && settings.max_attempts > 1 {
        body.replay().map(|held| Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: held,
        })
    } else {
        None
    };
    let mut req = Request::from_parts(parts, body);
    let mut tried = Tried::new();
    let mut attempt = 1;
    loop {
        // The request again, for a retry after it reached an upstream.
        let again = || {
            (attempt < settings.max_attempts)
                .then(|| template.as_ref().and_then(Template::request))
                .flatten()
        };
        let inflight = pick.state.start();
        let send = conn.proxy.send_http(
            &pick,
            &service,
            conn.dst.port(),
            conn.version,
            req,
            settings.limits,
            settings.mesh_port,
        );
        let result = match settings.request_timeout {
            None => send.await,
            Some(timeout) => match tokio::time::timeout(timeout, send).await {
                Ok(r) => r,
                Err(_) => Err(Failed {
                    error: Error::ResponseTimeout {
                        addr: pick.addr,
                        timeout,
                    },
                    unsent: None,
                }),
            },
        };

        // The outcome, and the request to send again if this one may be retried.
        let (outcome, next, reason) = match result {
            Ok(rsp) => {
                let status = rsp.status().as_u16();
                if idempotent && matches!(status, 502..=504) {
                    let ejected = inflight.failure(Failure::Response);
                    count_ejection(&conn, &service.name, &pick, ejected);
                    (Ok(rsp), again(), RetryReason::Status)
                } else {
                    inflight.success();
                    (Ok(rsp), None, RetryReason::Status)
                }
            }
            // A slow endpoint is not a dead one, and a timed-out request is
            // not retried: that would only add load.
            Err(Failed {
                error: error @ Error::ResponseTimeout { .. },
                ..
            }) => (Err(error), None, RetryReason::Reset),
            Err(Failed { error, unsent }) => {
                let connect = error.is_connect();
                if connect {
                    count_connect_error(&conn, &service.name, &error);
                }
                let kind = if connect {
                    Failure::Connect
                } else {
                    Failure::Response
                };
                let ejected = inflight.failure(kind);
                count_ejection(&conn, &service.name, &pick, ejected);
                let reason = if unsent.is_some() && connect {
                    RetryReason::Connect
                } else {
                    RetryReason::Reset
                };
                let next = unsent.or_else(|| if idempotent { again() } else { None });
                (Err(error), next, reason)
            }
        };

        // Retry only when another endpoint is there to take it and the
        // budget allows; otherwise the caller gets this outcome.
        let retry = match next {
            Some(next) if attempt < settings.max_attempts => {
                tried.push(pick.addr);
                let ctx = PickContext {
                    exclude: tried.as_slice(),
                    hash,
                    may_probe,
                    ..Default::default()
                };
                match select(&conn, &service, &ctx) {
                    Ok(p) if budget(&conn, &service.name) => Some((next, p)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((next, next_pick)) = retry else {
            return Ok(match outcome {
                Ok(rsp) => finish(&conn, &service.name, &pick, rsp, start, &method, settings),
                Err(error) => fail(
                    &conn,
                    Some(&service.name),
                    Some((&pick.cluster, pick.addr)),
                    error,
                    start,
                    settings.access_log,
                ),
            });
        };
        conn.recorder
            .metrics()
            .retries
            .with_label_values(&[
                service.name.name.as_str(),
                service.name.namespace.as_str(),
                reason.as_str(),
            ])
            .inc();
        debug!(
            from = %pick.addr,
            to = %next_pick.addr,
            cluster = %next_pick.cluster,
            reason = reason.as_str(),
            "retrying on another endpoint"
        );
        req = next;
        pick = next_pick;
        attempt += 1;
    }
}

/// Picks again from the state in force, for a retry.
fn select(
    conn: &Conn,
    service: &crate::discovery::Service,
    ctx: &PickContext<'_>,
) -> Result<Pick, Error> {
    let state = conn.proxy.store.load();
    let Some(target) = state.snapshot.target(&conn.dst) else {
        return Err(Error::NoService(conn.dst));
    };
    target
        .port()
        .selector
        .select(ctx)
        .map_err(|source| Error::NoEndpoint {
            service: service.name.clone(),
            source,
        })
}

/// Takes one retry from the service's budget.
fn budget(conn: &Conn, service: &ServiceName) -> bool {
    let state = conn.proxy.store.load();
    let ok = state
        .snapshot
        .target(&conn.dst)
        .is_some_and(|t| t.port().selector.state().withdraw());
    if !ok {
        conn.recorder
            .metrics()
            .retries_exhausted
            .with_label_values(&[service.name.as_str(), service.namespace.as_str()])
            .inc();
    }
    ok
}

fn request_hash(key: &HashKey, req: &Request<Incoming>, client: SocketAddr) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match key {
        HashKey::ClientIp => client.ip().hash(&mut h),
        HashKey::Header(name) => req.headers().get(name)?.as_bytes().hash(&mut h),
    }
    Some(h.finish())
}

async fn forward_upgrade(
    conn: &Conn,
    service: &crate::discovery::Service,
    pick: Pick,
    req: Request<Incoming>,
    settings: Settings,
    start: Instant,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let inflight = pick.state.start();
    let proxy = &conn.proxy;
    let mesh = proxy.mesh_identity(service).map(|identity| {
        let target = MeshTarget::new(
            pick.addr,
            &pick.kind,
            service,
            conn.dst.port(),
            settings.mesh_port,
            identity.trust_domain(),
        );
        (identity, target)
    });
    let mesh_args = mesh
        .as_ref()
        .map(|(identity, target)| (&**proxy, *identity, target));
    match upgrade::forward(pick.addr, req, settings.limits.connect_timeout, mesh_args).await {
        Ok(rsp) => {
            inflight.success();
            finish(conn, &service.name, &pick, rsp, start, &method, settings)
        }
        Err(error) => {
            if error.is_connect() {
                count_connect_error(conn, &service.name, &error);
                let ejected = inflight.failure(Failure::Connect);
                count_ejection(conn, &service.name, &pick, ejected);
            }
            fail(
                conn,
                Some(&service.name),
                Some((&pick.cluster, pick.addr)),
                error,
                start,
                settings.access_log,
            )
        }
    }
}

/// The upstream's response, cleaned of hop-by-hop headers, recorded.
fn finish(
    conn: &Conn,
    service: &ServiceName,
    pick: &Pick,
    mut rsp: Response<ProxyBody>,
    start: Instant,
    method: &Method,
    settings: Settings,
) -> Response<ProxyBody> {
    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(rsp.headers_mut(), switched);
    let elapsed = start.elapsed();
    let code = rsp.status().as_u16();
    conn.recorder.record(service, &pick.cluster, code, elapsed);
    if settings.access_log {
        access_log::http(&access_log::HttpRecord {
            client: conn.client,
            service,
            cluster: Some(&pick.cluster),
            endpoint: Some(pick.addr),
            method: method.as_str(),
            status: code,
            duration: elapsed,
            error: None,
        });
    }
    rsp
}

fn count_connect_error(conn: &Conn, service: &ServiceName, error: &Error) {
    conn.recorder
        .metrics()
        .connect_errors
        .with_label_values(&[
            service.name.as_str(),
            service.namespace.as_str(),
            error.reason().as_str(),
        ])
        .inc();
}

fn count_ejection(conn: &Conn, service: &ServiceName, pick: &Pick, ejected: bool) {
    if ejected {
        info!(endpoint = %pick.addr, cluster = %pick.cluster, "endpoint ejected");
        conn.recorder
            .metrics()
            .ejections
            .with_label_values(&[
                service.name.as_str(),
                service.namespace.as_str(),
                &pick.cluster,
            ])
            .inc();
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
