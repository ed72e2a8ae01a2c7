//! Connections during set-up: connect, log in (any protocol), join a room, and then hand the
//! socket and whatever was already read to a workload's own tight loop.
//!
//! Set-up waits are bounded (`SETUP_TIMEOUT`); the hot loops of the workloads read raw bytes
//! themselves and never go through this.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use parley_proto::binary::{self, code, Frame};
use parley_proto::lines::{Line, LineDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Proto;

/// The longest any single set-up step may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection being set up.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    lines: LineDecoder,
}

impl Conn {
    /// Connects to `addr`, from the local address `source` if given (to spread many
    /// connections over several loopback addresses, each with its own port range).
    pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<Conn> {
        let stream = match source {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connecting to {addr}"))?;
        Conn::new(stream)
    }

    /// Connects `socket` (set up by the caller: its buffer sizes, say) to `addr`.
    pub async fn on(socket: TcpSocket, addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Conn::new(stream)
    }

    fn new(stream: TcpStream) -> anyhow::Result<Conn> {
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            lines: LineDecoder::new(1 << 20),
        })
    }

    /// Connects and logs in as `name` (JSON connections also subscribe to pushes).
    pub async fn login(addr: SocketAddr, proto: Proto, name: &str) -> anyhow::Result<Conn> {
        let mut conn = Conn::connect(addr, None).await?;
        conn.log_in(proto, name).await?;
        Ok(conn)
    }

    pub async fn log_in(&mut self, proto: Proto, name: &str) -> anyhow::Result<()> {
        match proto {
            Proto::Binary => {
                let mut out = BytesMut::new();
                Frame::Login {
                    cid: 1,
                    username: Bytes::copy_from_slice(name.as_bytes()),
                }
                .encode(&mut out)?;
                self.stream.write_all(&out).await?;
                match self.frame().await? {
                    Frame::Response {
                        cid: 1,
                        code: code::OK,
                    } => Ok(()),
                    other => bail!("login {name}: {other:?}"),
                }
            }
            Proto::Text => {
                self.send_line(&format!("LOGIN {name}")).await?;
                self.text_ok()
                    .await
                    .with_context(|| format!("LOGIN {name}"))
            }
            Proto::Ws => {
                crate::ws::handshake(&mut self.stream, &mut self.buf).await?;
                let login = format!(r#"{{"command":"LOGIN","data":"{name}"}}"#);
                for request in [login.as_str(), r#"{"command":"SUBSCRIBE"}"#] {
                    let mut out = BytesMut::new();
                    crate::ws::frame(request.as_bytes(), &mut out);
                    self.stream.write_all(&out).await?;
                    let answer = self.ws_message().await?;
                    if !answer.starts_with(br#"{"success":true"#) {
                        bail!("{request}: {}", String::from_utf8_lossy(&answer));
                    }
                }
                Ok(())
            }
            Proto::Json => {
                let login = format!(r#"{{"command":"LOGIN","data":"{name}"}}"#);
                for request in [login.as_str(), r#"{"command":"SUBSCRIBE"}"#] {
                    self.send_line(request).await?;
                    let line = self.line().await?;
                    if !line.starts_with(br#"{"success":true"#) {
                        bail!("{request}: {}", String::from_utf8_lossy(&line));
                    }
                }
                Ok(())
            }
        }
    }

    pub async fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        self.stream.write_all(&out).await.context("writing")
    }

    /// Reads text lines until `OK` (skipping notices such as `INFO x joined #room`).
    pub async fn text_ok(&mut self) -> anyhow::Result<()> {
        loop {
            let line = self.line().await?;
            if &line[..] == b"OK" {
                return Ok(());
            }
            if line.starts_with(b"ERR") {
                bail!("{}", String::from_utf8_lossy(&line));
            }
        }
    }

    /// The next line.
    pub async fn line(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if let Some(line) = self.lines.decode(&mut self.buf) {
                let Line::Complete(line) = line else {
                    bail!("over-long line")
                };
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// The payload of the next WebSocket text frame.
    pub async fn ws_message(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if let Some(frame) = parley_proto::ws::decode(&mut self.buf, 1 << 20, false)? {
                return Ok(frame.payload);
            }
            self.fill().await?;
        }
    }

    /// The next binary frame.
    pub async fn frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = binary::decode(&mut self.buf, usize::MAX >> 1)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(4096);
        let read = tokio::time::timeout(SETUP_TIMEOUT, self.stream.read_buf(&mut self.buf))
            .await
            .context("timed out during set-up")??;
        if read == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }

    /// The socket and the bytes already read from it (and not yet consumed).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// Reads more bytes into `buf` (making room for `chunk` more); `None` at end of stream, on
/// an error or on cancellation.
pub async fn read_more<R: AsyncReadExt + Unpin>(
    socket: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
    cancel: &CancellationToken,
) -> Option<usize> {
    buf.reserve(chunk);
    tokio::select! {
        _ = cancel.cancelled() => None,
        read = socket.read_buf(buf) => match read {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
    }
}

/// Calls `f` for every complete line in `buf` (without its line end) and leaves the
/// incomplete rest. Lines are read where they lie: a fan-out member gets one every few
/// hundred nanoseconds, and splitting each off the buffer (a shared allocation and two
/// atomic counts) cost the generator more than finding it. What was read of a line that
/// grows past `MAX_LINE` without ending is dropped, and its rest reads as a line of its own
/// (counted as unexpected by the receivers; no server here sends such a line).
pub fn each_line(buf: &mut BytesMut, mut f: impl FnMut(&[u8])) {
    let mut start = 0;
    while let Some(len) = memchr::memchr(b'\n', &buf[start..]) {
        let line = &buf[start..start + len];
        f(line.strip_suffix(b"\r").unwrap_or(line));
        start += len + 1;
    }
    bytes::Buf::advance(buf, start);
    if buf.len() > MAX_LINE {
        buf.clear();
    }
}

/// The longest line a receiver waits for the end of.
const MAX_LINE: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(buf: &mut BytesMut) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        each_line(buf, |line| lines.push(line.to_vec()));
        lines
    }

    #[test]
    fn complete_lines_are_read_and_the_rest_waits() {
        let mut buf = BytesMut::from(&b"ROOM a b 00\r\nOK\n\nPART"[..]);
        assert_eq!(lines_of(&mut buf), [&b"ROOM a b 00"[..], b"OK", b""]);
        assert_eq!(&buf[..], b"PART");
        buf.extend_from_slice(b"IAL\n");
        assert_eq!(lines_of(&mut buf), [b"PARTIAL"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_line_that_never_ends_is_dropped() {
        let mut buf = BytesMut::from(&vec![b'x'; MAX_LINE + 1][..]);
        assert!(lines_of(&mut buf).is_empty());
        assert!(buf.is_empty(), "not kept growing");
    }
}
