//! Choosing a connection's protocol from its first bytes.

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::outbound::Protocol;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Protocol(Protocol),
    /// An HTTP/1.1 request line: the web app, file transfer over HTTP, WebSocket.
    Http,
    /// A TLS ClientHello (record type 0x16): the protocol is chosen again inside.
    Tls,
    /// The peer closed before sending anything.
    Closed,
}

/// The request methods that make a connection HTTP, with their space. No command of the
/// text protocol starts with one of these words followed by a space.
const METHODS: [&[u8]; 5] = [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"OPTIONS "];

/// The longest method, with its space: more bytes than this never change the answer.
pub const DECIDING_BYTES: usize = 8;

/// What `bytes`, the first bytes of a connection (or of the stream inside TLS), start;
/// `None` while they are a proper prefix of an HTTP method and more bytes must decide.
///
/// One byte decides unless it starts a method (`G`, `H`, `P`, `O`); a text line such as
/// `PING` is decided at its second byte, and a complete line always decides (no method
/// prefix holds a newline), so a text client is never kept waiting.
pub fn classify(bytes: &[u8]) -> Option<Sniffed> {
    let first = *bytes.first()?;
    if METHODS.iter().any(|m| bytes.starts_with(m)) {
        return Some(Sniffed::Http);
    }
    if METHODS.iter().any(|m| m.starts_with(bytes)) {
        return None;
    }
    Some(Sniffed::Protocol(protocol_of(first)))
}

/// Waits for the first bytes and picks the protocol they start.
///
/// Peeks, without consuming, as long as the peeked bytes decide (nearly always: an idle
/// connection then holds no buffer). Bytes that are only the start of an HTTP method are
/// read into `initial` instead, as far as it takes to decide; whoever serves the
/// connection takes them from there. At the end of the stream, what was read decides.
pub async fn sniff(stream: &TcpStream, initial: &mut BytesMut) -> std::io::Result<Sniffed> {
    let mut peeked = [0u8; DECIDING_BYTES];
    let n = stream.peek(&mut peeked).await?;
    if n == 0 {
        return Ok(Sniffed::Closed);
    }
    if peeked[0] == 0x16 {
        return Ok(Sniffed::Tls);
    }
    if let Some(sniffed) = classify(&peeked[..n]) {
        return Ok(sniffed);
    }
    // Peeking again would return the same bytes at once: read instead, waiting for more.
    initial.reserve(64);
    loop {
        stream.readable().await?;
        match stream.try_read_buf(initial) {
            Ok(0) => return Ok(at_end(initial)),
            Ok(_) => {
                if let Some(sniffed) = classify(initial) {
                    return Ok(sniffed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the bytes read before the end of the stream are: a proper prefix of a method is
/// a (short) text line; none at all is a closed connection.
pub fn at_end(bytes: &[u8]) -> Sniffed {
    match bytes.first() {
        None => Sniffed::Closed,
        Some(first) => classify(bytes).unwrap_or(Sniffed::Protocol(protocol_of(*first))),
    }
}

/// The protocol a first byte starts (inside TLS, or once TLS and HTTP are ruled out). No
/// binary frame starts with 0x16: that length would be over 369 MB.
pub fn protocol_of(first: u8) -> Protocol {
    match first {
        0x00 => Protocol::Binary,
        b'{' => Protocol::Json,
        _ => Protocol::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http_and_everything_else_keeps_its_protocol() {
        for line in [
            &b"GET / HTTP/1.1"[..],
            b"HEAD /",
            b"POST /x",
            b"PUT /files/",
            b"OPTIONS *",
        ] {
            assert_eq!(classify(line), Some(Sniffed::Http), "{line:?}");
        }
        let text = Sniffed::Protocol(Protocol::Text);
        for line in [
            &b"PING\n"[..],
            b"GET\n",
            b"GETX",
            b"HEADER x",
            b"PUTS",
            b"OPTION\n",
            b"LOGIN a",
        ] {
            assert_eq!(classify(line), Some(text), "{line:?}");
        }
        assert_eq!(
            classify(b"{\"command\""),
            Some(Sniffed::Protocol(Protocol::Json))
        );
        assert_eq!(
            classify(b"\x00\x00\x00\x0e"),
            Some(Sniffed::Protocol(Protocol::Binary))
        );
    }

    #[test]
    fn a_prefix_of_a_method_waits_and_a_line_always_decides() {
        for prefix in [
            &b"G"[..],
            b"GE",
            b"GET",
            b"P",
            b"PU",
            b"POS",
            b"OPTIONS",
            b"H",
            b"HEA",
        ] {
            assert_eq!(classify(prefix), None, "{prefix:?}");
            assert_eq!(
                at_end(prefix),
                Sniffed::Protocol(Protocol::Text),
                "{prefix:?}"
            );
        }
        assert_eq!(classify(b"P\n"), Some(Sniffed::Protocol(Protocol::Text)));
        assert_eq!(classify(b"PI"), Some(Sniffed::Protocol(Protocol::Text)));
        assert_eq!(classify(b""), None);
        assert_eq!(at_end(b""), Sniffed::Closed);
    }
}
