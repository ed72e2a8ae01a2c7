//! A client of the line protocols (text and JSON): what `ncat` does, with timeouts.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use parley_proto::lines::{Line, LineDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// One connection speaking a line protocol.
pub struct LineClient {
    stream: TcpStream,
    buf: BytesMut,
    lines: LineDecoder,
    /// How long `line` waits before failing.
    pub timeout: Duration,
}

impl LineClient {
    pub async fn connect(addr: impl ToSocketAddrs) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        Ok(LineClient {
            stream,
            buf: BytesMut::new(),
            lines: LineDecoder::new(1 << 20),
            timeout: Duration::from_secs(10),
        })
    }

    /// Sends `line` followed by `\n`, in one write.
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        self.send_raw(&out).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("writing")
    }

    /// The next line from the server (without its `\n`); fails on timeout or close.
    pub async fn line(&mut self) -> anyhow::Result<String> {
        match self.line_or_eof().await? {
            Some(line) => Ok(line),
            None => bail!("connection closed by the server"),
        }
    }

    /// The next line, or `None` when the server closed the connection.
    pub async fn line_or_eof(&mut self) -> anyhow::Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(line) = self.lines.decode(&mut self.buf) {
                let Line::Complete(line) = line else {
                    bail!("the server sent an over-long line")
                };
                return Ok(Some(String::from_utf8(line.to_vec())?));
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .context("timed out waiting for a line")?;
            match read {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e).context("reading"),
            }
        }
    }

    /// Fails if a line arrives within `wait` (proves that nothing was sent).
    pub async fn no_line_within(&mut self, wait: Duration) -> anyhow::Result<()> {
        let saved = self.timeout;
        self.timeout = wait;
        let got = self.line_or_eof().await;
        self.timeout = saved;
        match got {
            Err(_) => Ok(()),
            Ok(Some(line)) => bail!("expected nothing, got {line:?}"),
            Ok(None) => bail!("expected nothing, the connection closed"),
        }
    }

    /// Sends a line and returns the next line received.
    pub async fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        self.send(line).await?;
        self.line().await
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}
