//! HTTP/1 protocol switches (`Upgrade`, e.g. WebSocket) and `CONNECT`: the
//! request goes upstream on a dedicated connection; when the upstream agrees
//! (`101`, or `2xx` to `CONNECT`), both connections are spliced as bytes.

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, Instrument};

use super::body::ProxyBody;
use super::endpoint::{connect_h1, handshake_h1};
use crate::identity::IdentityStore;
use crate::proxy::mesh::MeshTarget;
use crate::proxy::{Error, Proxy};

pub(super) async fn forward(
    addr: SocketAddr,
    mut req: Request<Incoming>,
    connect_timeout: std::time::Duration,
    mesh: Option<(&Proxy, &IdentityStore, &MeshTarget<'_>)>,
) -> Result<Response<ProxyBody>, Error> {
    let is_connect = req.method() == Method::CONNECT;
    let downstream = hyper::upgrade::on(&mut req);
    let mut sender = match mesh {
        None => connect_h1(addr, connect_timeout, true).await?,
        // Over mesh mTLS the HTTP/1 exchange runs inside a CONNECT stream
        // to the app's port, and is spliced there after the switch.
        Some((proxy, identity, target)) => {
            let tunnel =
                Box::pin(proxy.mesh.open_stream(identity, target, connect_timeout)).await?;
            handshake_h1(addr, tunnel.into_inner()).await?
        }
    };
    sender
        .ready()
        .await
        .map_err(|source| Error::Handshake { addr, source })?;
    let mut rsp = sender
        .send_request(req)
        .await
        .map_err(|source| Error::Upstream { addr, source })?;
    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && rsp.status().is_success());
    if switched {
        let upstream = hyper::upgrade::on(&mut rsp);
        tokio::spawn(
            async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = TokioIo::new(down);
                        let mut up = TokioIo::new(up);
                        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                            Ok((tx, rx)) => debug!(tx, rx, "upgraded connection closed"),
                            Err(error) => debug!(%error, "upgraded connection failed"),
                        }
                    }
                    Err(error) => debug!(%error, "upgrade did not complete"),
                }
            }
            .in_current_span(),
        );
    }
    Ok(rsp.map(|body| ProxyBody::upstream(body, None)))
}
