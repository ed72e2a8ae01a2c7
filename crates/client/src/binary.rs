//! A client of the seed-000 binary protocol.
//!
//! Frame-level on purpose: tests and the benchmark need to see every response and push in
//! the order the server sent them, and to send malformed bytes too.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use parley_proto::binary::{self, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// One connection speaking the binary protocol.
pub struct BinaryClient {
    stream: TcpStream,
    buf: BytesMut,
    /// How long `recv` waits for a frame before failing.
    pub timeout: Duration,
}

impl BinaryClient {
    pub async fn connect(addr: impl ToSocketAddrs) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        Ok(BinaryClient {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            timeout: Duration::from_secs(10),
        })
    }

    /// Writes `frame` with a single write.
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        frame.encode(&mut out)?;
        self.send_raw(&out).await
    }

    /// Writes arbitrary bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("writing")?;
        Ok(())
    }

    /// The next frame from the server; fails on timeout, a closed connection or bad bytes.
    pub async fn recv(&mut self) -> anyhow::Result<Frame> {
        match self.recv_or_eof().await? {
            Some(frame) => Ok(frame),
            None => bail!("connection closed by the server"),
        }
    }

    /// The next frame, or `None` if the server closed the connection cleanly.
    pub async fn recv_or_eof(&mut self) -> anyhow::Result<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(frame) = binary::decode(&mut self.buf, usize::MAX >> 1)? {
                return Ok(Some(frame));
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .context("timed out waiting for a frame")?;
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => bail!("connection closed in the middle of a frame"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e).context("reading"),
            }
        }
    }

    /// Logs in as `name`; returns the response code.
    pub async fn login(&mut self, cid: u32, name: &str) -> anyhow::Result<u16> {
        self.send(&Frame::Login {
            cid,
            username: Bytes::copy_from_slice(name.as_bytes()),
        })
        .await?;
        self.expect_response(cid).await
    }

    /// Sends a message frame without waiting for its response.
    pub async fn send_message(
        &mut self,
        cid: u32,
        from: &str,
        to: &str,
        body: &[u8],
        time: u64,
    ) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        binary::encode_message(cid, body, from.as_bytes(), to.as_bytes(), time, &mut out)?;
        self.send_raw(&out).await
    }

    /// Sends a message and waits for its response code.
    pub async fn message(
        &mut self,
        cid: u32,
        from: &str,
        to: &str,
        body: &[u8],
        time: u64,
    ) -> anyhow::Result<u16> {
        self.send_message(cid, from, to, body, time).await?;
        self.expect_response(cid).await
    }

    /// Reads the next frame, which must be the response to `cid`; returns its code.
    pub async fn expect_response(&mut self, cid: u32) -> anyhow::Result<u16> {
        match self.recv().await? {
            Frame::Response { cid: got, code } if got == cid => Ok(code),
            other => bail!("expected the response to {cid}, got {other:?}"),
        }
    }

    /// Reads the next frame, which must be a pushed message; returns (message, from, to, time).
    pub async fn expect_push(&mut self) -> anyhow::Result<(Bytes, String, String, u64)> {
        match self.recv().await? {
            Frame::Message {
                cid: 0,
                message,
                from,
                to,
                time,
            } => Ok((
                message,
                String::from_utf8(from.to_vec())?,
                String::from_utf8(to.to_vec())?,
                time,
            )),
            other => bail!("expected a pushed message, got {other:?}"),
        }
    }

    /// The underlying stream (to shut it down or set socket options in tests).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}
