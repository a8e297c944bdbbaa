//! Hop-by-hop header handling (RFC 9110 §7.6.1): headers that describe one
//! connection are removed before a message is forwarded on another.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Static names: removing by `&str` would parse and lowercase the name on
// every request (it showed in profiles).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that are always connection-specific.
const HOP_BY_HOP: [HeaderName; 3] = [KEEP_ALIVE, PROXY_CONNECTION, header::TRANSFER_ENCODING];

// Which hop-by-hop headers a message carries, one bit each.
const CONNECTION_BIT: u8 = 1;
const UPGRADE_BIT: u8 = 2;
const TE_BIT: u8 = 4;
/// Keep-Alive, Proxy-Connection, Transfer-Encoding: always removed.
const ALWAYS_BIT: u8 = 8;

// Statics, so comparing with them builds and drops no temporary.
static CONNECTION: HeaderName = header::CONNECTION;
static UPGRADE: HeaderName = header::UPGRADE;
static TE: HeaderName = header::TE;
static TRANSFER_ENCODING: HeaderName = header::TRANSFER_ENCODING;
static KEEP_ALIVE_NAME: HeaderName = KEEP_ALIVE;
static PROXY_CONNECTION_NAME: HeaderName = PROXY_CONNECTION;

fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    // Known headers compare by tag; custom ones by bytes, and only with
    // custom ones.
    if *name == CONNECTION {
        CONNECTION_BIT
    } else if *name == UPGRADE {
        UPGRADE_BIT
    } else if *name == TE {
        TE_BIT
    } else if *name == TRANSFER_ENCODING
        || *name == KEEP_ALIVE_NAME
        || *name == PROXY_CONNECTION_NAME
    {
        ALWAYS_BIT
    } else {
        0
    }
}

/// Strips hop-by-hop headers. When `upgrade` is true the `Upgrade` header and
/// `Connection: upgrade` are kept, because the upgrade is forwarded as such.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which of them are there; a hashed lookup
    // for each of the six, twice per request, was about 3 % of the proxy's
    // user time. Most messages carry none, or only `Connection: keep-alive`.
    let present = headers
        .keys()
        .fold(0, |bits, name| bits | hop_by_hop_bit(name));
    if present & CONNECTION_BIT != 0 {
        let named = connection_named(headers, upgrade);
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    if present & ALWAYS_BIT != 0 {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
    // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
    if present & TE_BIT != 0 && headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// The headers that every `Connection` header names, to be removed with it.
/// The common values name none of their own (`close`) or one removed anyway
/// (`keep-alive`); `upgrade` is kept when the upgrade is forwarded. Then
/// nothing is allocated.
fn connection_named(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            let common = token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || token.is_empty()
                || (upgrade && token.eq_ignore_ascii_case(b"upgrade"));
            if !common {
                // Not a header name (bad bytes): nothing to remove.
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
    }
    named
}

/// Whether an HTTP/1 request asks to switch protocols (WebSocket and others).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Appends the client to `x-forwarded-for` and sets `x-forwarded-proto`.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "2");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "upgrade",
        ] {
            let mut h = map(&[(name, "x"), ("x-kept", "2")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name} is removed");
            assert_eq!(h["x-kept"], "2");
        }
    }

    #[test]
    fn headers_named_in_every_connection_header_are_removed() {
        let mut h = map(&[
            ("connection", "x-one"),
            ("connection", "x-two"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "3");
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_is_kept_when_forwarding_an_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(&mut h, "127.0.0.7:5555".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.7");
    }
}
