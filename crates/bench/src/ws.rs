//! The bench's side of WebSocket (`--proto ws`): the HTTP handshake at `/ws`, then parley's
//! JSON protocol in frames, masked as a browser masks them. The frames themselves are
//! `parley_proto::ws`, the codec the server reads them with.

use anyhow::{bail, Context};
use bytes::BytesMut;
use parley_proto::ws::{self, Opcode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The masking key of the bench's frames. Browsers pick one per frame; the server unmasks
/// whatever it is, at the same cost.
pub const MASK: [u8; 4] = [0x5a, 0x3c, 0x96, 0xe1];

/// Largest frame a receiver accepts from the server.
const MAX_FRAME: usize = 1 << 20;

/// Asks for the upgrade and reads the `101`; what the server sent after it stays in `buf`.
pub async fn handshake(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<()> {
    let request = "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: cGFybGV5IGJlbmNoIGtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .context("writing the handshake")?;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            if !head.starts_with(b"HTTP/1.1 101") {
                bail!("no upgrade: {}", String::from_utf8_lossy(&head));
            }
            return Ok(());
        }
        buf.reserve(1024);
        if stream
            .read_buf(buf)
            .await
            .context("reading the handshake")?
            == 0
        {
            bail!("connection closed during the handshake");
        }
    }
}

/// Appends `json` as one masked text frame.
pub fn frame(json: &[u8], dst: &mut BytesMut) {
    ws::encode(Opcode::Text, json, Some(MASK), dst);
}

/// Calls `f` for the payload of every complete text frame in `buf`, leaving the rest.
/// Returns false once the stream cannot be read any further (a bad frame, or a close).
pub fn each_frame(buf: &mut BytesMut, mut f: impl FnMut(&[u8])) -> bool {
    loop {
        match ws::decode(buf, MAX_FRAME, false) {
            Ok(Some(frame)) if frame.opcode == Opcode::Close => return false,
            Ok(Some(frame)) => f(&frame.payload),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}
