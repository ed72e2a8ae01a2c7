//! Choosing a connection's protocol from its first bytes, without consuming them.

use tokio::net::TcpStream;

use crate::wire::Protocol;

/// What the first byte of a connection says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Protocol(Protocol),
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
        0x00 => Sniffed::Protocol(Protocol::Binary),
        b'{' => Sniffed::Protocol(Protocol::Json),
        _ => Sniffed::Protocol(Protocol::Text),
    })
}
