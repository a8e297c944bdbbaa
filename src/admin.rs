//! The admin server, on its own listener (loopback by default), never on a
//! data-plane port: `/metrics` and `/stats/prometheus` (Prometheus text),
//! `/ready`, `/live`, `/config_dump` (the effective config and snapshot as JSON).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::discovery::Store;
use crate::shutdown::Readiness;

#[derive(Debug, Clone)]
pub struct Admin {
    pub registry: Registry,
    pub store: Arc<Store>,
    pub readiness: Readiness,
    /// The mesh identity, shown in `/config_dump`.
    pub identity: Option<Arc<crate::identity::IdentityStore>>,
}

/// Serves until `stop` fires.
pub async fn serve(listener: TcpListener, admin: Admin, stop: CancellationToken) {
    let admin = Arc::new(admin);
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(error) => {
                    debug!(%error, "admin accept failed");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(
            async move {
                let svc = service_fn(move |req| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(route(&admin, req)) }
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(%error, "admin connection failed");
                }
            }
            .instrument(tracing::debug_span!("admin", %peer)),
        );
    }
}

fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            let mut rsp = Response::new(Full::new(Bytes::from(crate::metrics::encode(
                &admin.registry,
            ))));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            rsp
        }
        "/ready" => match admin.readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/live" => text(StatusCode::OK, "live\n"),
        "/config_dump" => {
            let state = admin.store.load_full();
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Dump<'a> {
                version: u64,
                config: &'a crate::config::Config,
                #[serde(skip_serializing_if = "Option::is_none")]
                identity: Option<IdentityDump>,
                mesh: &'a crate::discovery::Snapshot,
            }
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct IdentityDump {
                spiffe_id: String,
                not_after: String,
                generation: u64,
            }
            let identity = admin.identity.as_ref().map(|i| IdentityDump {
                spiffe_id: i.id().to_string(),
                not_after: humantime::format_rfc3339_seconds(i.not_after()).to_string(),
                generation: i.generation(),
            });
            let dump = Dump {
                version: state.version,
                config: &state.config,
                identity,
                mesh: &state.snapshot,
            };
            match serde_json::to_vec_pretty(&dump) {
                Ok(body) => {
                    let mut rsp = Response::new(Full::new(Bytes::from(body)));
                    rsp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    rsp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready, /live, /config_dump\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
