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

/// Strips hop-by-hop headers. When `upgrade` is true the `Upgrade` header and
/// `Connection: upgrade` are kept, because the upgrade is forwarded as such.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if let Some(connection) = headers.remove(header::CONNECTION) {
        if let Ok(listed) = connection.to_str() {
            for name in listed.split(',').map(str::trim) {
                // The common values name no header of their own (`close`) or
                // one removed below anyway (`keep-alive`): skip the lookup.
                let common =
                    name.eq_ignore_ascii_case("keep-alive") || name.eq_ignore_ascii_case("close");
                let kept_upgrade = upgrade && name.eq_ignore_ascii_case("upgrade");
                if !(common || kept_upgrade) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
    if let Some(te) = headers.get(header::TE) {
        if te != "trailers" {
            headers.remove(header::TE);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
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
