//! Protocol detection for ports without a hint: HTTP/2 prior knowledge (the
//! connection preface), HTTP/1.x (a request line ending in `HTTP/1.x`), or
//! else opaque TCP. Bytes read here are replayed to whoever serves the
//! connection. A client that sends nothing within the detect timeout is taken
//! to be waiting for a server-speaks-first protocol (SMTP, MySQL): opaque.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest request line read before giving up on HTTP/1.
const MAX_REQUEST_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    Http1,
    Http2,
    Opaque,
    /// The client closed before sending anything.
    Closed,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Opaque => "opaque",
            Detected::Closed => "closed",
        }
    }
}

/// Reads until the protocol is known; returns it and the bytes read.
pub(crate) async fn detect(io: &mut TcpStream, timeout: Duration) -> (Detected, Bytes) {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {
                let d = if buf.is_empty() {
                    Detected::Closed
                } else {
                    Detected::Opaque
                };
                return (d, buf.freeze());
            }
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return (d, buf.freeze());
                }
                if buf.len() >= MAX_REQUEST_LINE {
                    return (Detected::Opaque, buf.freeze());
                }
                buf.reserve(1024);
            }
            Err(_elapsed) => return (Detected::Opaque, buf.freeze()),
        }
    }
}

/// `None` while more bytes are needed to decide.
pub(crate) fn classify(buf: &[u8]) -> Option<Detected> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some(if is_http1_request_line(line) {
        Detected::Http1
    } else {
        Detected::Opaque
    })
}

/// `METHOD SP target SP HTTP/1.x`, with METHOD a token.
fn is_http1_request_line(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method = &line[..sp];
    let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !method.is_empty()
        && method.iter().all(is_tchar)
        && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        && line.len() > sp + " HTTP/1.1".len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_http1() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"POST /x?y HTTP/1.0\n"), Some(Detected::Http1));
        assert_eq!(
            classify(b"CONNECT a:443 HTTP/1.1\r\n"),
            Some(Detected::Http1)
        );
    }

    #[test]
    fn partial_input_waits_for_more() {
        assert_eq!(classify(b"GET / HT"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn h2_preface_is_http2() {
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
    }

    #[test]
    fn anything_else_is_opaque() {
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00\x01\n"),
            Some(Detected::Opaque)
        );
        assert_eq!(classify(b"HELO example\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"G(T / HTTP/1.1\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"PRX garbage\n"), Some(Detected::Opaque));
    }
}
