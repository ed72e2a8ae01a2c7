//! Choosing a connection's protocol from its first bytes, without consuming them.

use tokio::net::TcpStream;

use crate::wire::Protocol;

/// What the first byte of a connection says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Protocol(Protocol),
    /// A TLS ClientHello (record type 0x16): the protocol is chosen again inside.
    Tls,
    /// The peer closed before sending anything.
    Closed,
}

/// Waits for the first byte and picks the protocol it starts.
///
/// A binary frame starts with a big-endian length whose high byte is 0x00 for every frame
/// under 16 MiB, so 0x00 means binary; `{` opens a JSON object; anything else is a line of
/// the text protocol. One byte is enough, so a first packet of a single byte works.
pub async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(Sniffed::Closed);
    }
    Ok(match first[0] {
        0x16 => Sniffed::Tls,
        other => Sniffed::Protocol(protocol_of(other)),
    })
}

/// The protocol a first byte starts (inside TLS, or once TLS is ruled out). No binary
/// frame starts with 0x16: that length would be over 369 MB.
pub fn protocol_of(first: u8) -> Protocol {
    match first {
        0x00 => Protocol::Binary,
        b'{' => Protocol::Json,
        _ => Protocol::Text,
    }
}
