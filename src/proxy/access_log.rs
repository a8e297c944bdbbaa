//! The optional access log: one JSON object per line on stdout, per HTTP
//! request and per TCP connection. Off by default (`log.accessLog`); when
//! off, nothing on the request path builds a record.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::discovery::ServiceName;

#[derive(Serialize)]
pub(crate) struct HttpRecord<'a> {
    pub client: SocketAddr,
    #[serde(serialize_with = "display")]
    pub service: &'a ServiceName,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub method: &'a str,
    pub status: u16,
    #[serde(rename = "duration_us", serialize_with = "micros")]
    pub duration: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct TcpRecord<'a> {
    pub client: SocketAddr,
    #[serde(serialize_with = "display")]
    pub service: &'a ServiceName,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(rename = "duration_us", serialize_with = "micros")]
    pub duration: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

pub(crate) fn http(record: &HttpRecord<'_>) {
    write_line("http", record);
}

pub(crate) fn tcp(record: &TcpRecord<'_>) {
    write_line("tcp", record);
}

#[derive(Serialize)]
struct Line<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: f64,
    #[serde(flatten)]
    record: &'a T,
}

fn write_line<T: Serialize>(kind: &str, record: &T) {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let Ok(mut line) = serde_json::to_vec(&Line {
        kind,
        timestamp,
        record,
    }) else {
        return;
    };
    line.push(b'\n');
    // A closed stdout must not take the proxy down.
    let _ = std::io::stdout().lock().write_all(&line);
}

fn display<S: serde::Serializer>(v: &&ServiceName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}
