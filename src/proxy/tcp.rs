//! Opaque TCP: connect to an endpoint (or, for passthrough, the original
//! destination) and copy bytes both ways until both sides are done.
//! Half-close is preserved: when one side finishes sending, the other side's
//! write half is shut down and the reverse direction keeps flowing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use super::conn_io::ServerIo;
use super::http::connect_tcp;
use super::{access_log, Error};
use crate::discovery::ServiceName;
use crate::metrics::Direction;

pub(crate) struct TcpForward<'a> {
    pub client: SocketAddr,
    pub service: &'a ServiceName,
    pub cluster: Option<Arc<str>>,
    pub upstream: SocketAddr,
    pub connect_timeout: Duration,
    pub access_log: bool,
}

/// Forwards `io` to the upstream; returns once both directions are closed.
pub(crate) async fn forward(
    mut io: ServerIo,
    fwd: TcpForward<'_>,
    metrics: &super::Metrics,
) -> Result<(), Error> {
    let start = Instant::now();
    let mut upstream = match connect_tcp(fwd.upstream, fwd.connect_timeout).await {
        Ok(s) => s,
        Err(error) => {
            let labels = [
                fwd.service.name.as_str(),
                fwd.service.namespace.as_str(),
                error.reason().as_str(),
            ];
            metrics.connect_errors.with_label_values(&labels).inc();
            reset(io.tcp());
            log(&fwd, start, 0, 0, Some(error.reason().as_str()));
            return Err(error);
        }
    };
    let result = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    let (sent_up, sent_down) = match &result {
        Ok((a, b)) => (*a, *b),
        Err(_) => (0, 0),
    };
    match &result {
        Ok(_) => debug!(sent_up, sent_down, "tcp connection closed"),
        Err(error) => debug!(%error, "tcp connection ended with an error"),
    }
    log(
        &fwd,
        start,
        sent_up,
        sent_down,
        result.as_ref().err().map(|_| "io"),
    );
    Ok(())
}

fn log(fwd: &TcpForward<'_>, start: Instant, bytes_in: u64, bytes_out: u64, error: Option<&str>) {
    if fwd.access_log {
        access_log::tcp(&access_log::TcpRecord {
            client: fwd.client,
            service: fwd.service,
            cluster: fwd.cluster.as_deref(),
            endpoint: Some(fwd.upstream),
            bytes_in,
            bytes_out,
            duration: start.elapsed(),
            error,
        });
    }
}

/// Closes with RST rather than FIN, so the client sees a failure, not an empty reply.
pub(crate) fn reset(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Counts an error the proxy answered on a TCP connection.
pub(crate) fn count_error(metrics: &super::Metrics, service: &ServiceName, error: &Error) {
    metrics
        .errors
        .with_label_values(&[
            Direction::Outbound.as_str(),
            service.name.as_str(),
            service.namespace.as_str(),
            error.reason().as_str(),
        ])
        .inc();
    info!(%error, "connection refused by proxy");
}
