//! One client connection: read requests, hand them to the hub, tear down cleanly.
//!
//! The session owns the read half and the protocol state (who is logged in). A separate
//! writer task owns the write half (see `outbound`), so a slow socket never blocks reading,
//! and the hub never waits on either.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use parley_proto::{Command, ErrorKind, Reply, Target};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catchup;
use crate::config::Config;
use crate::hub::{Hub, Identity};
use crate::outbound::{Outbound, SessionLink, Writer};
use crate::store::Reader;
use crate::wire::{Decoded, Limits, Protocol, Tag};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Catch-up may fill this many queue slots on top of `outbound_queue`.
const REPLAY_WINDOW: usize = 1024;

/// What every session shares.
pub struct Shared {
    pub config: Config,
    pub hub: Hub,
    pub reader: Reader,
    pub shutdown: CancellationToken,
    pub next_session: AtomicU64,
}

/// Serves one connection speaking `protocol` until it ends.
pub async fn run(stream: TcpStream, peer: SocketAddr, protocol: Protocol, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let config = &shared.config;
    let (queue, rx) = mpsc::channel(config.outbound_queue + REPLAY_WINDOW);
    let link = Arc::new(SessionLink {
        id: shared.next_session.fetch_add(1, Ordering::Relaxed),
        protocol,
        queue,
        kill: CancellationToken::new(),
        kill_reason: OnceLock::new(),
        inflight: Arc::new(Semaphore::new(config.max_inflight)),
        replay: Arc::new(Semaphore::new(REPLAY_WINDOW)),
    });
    info!(session = link.id, %peer, protocol = protocol.name(), "connected");
    let device = Arc::new(OnceLock::new());
    let closing = CancellationToken::new();
    let writer = tokio::spawn(
        Writer {
            socket: write,
            queue: rx,
            link: link.clone(),
            hub: shared.hub.clone(),
            device: device.clone(),
            closing: closing.clone(),
            flush_timeout: config.shutdown_timeout(),
        }
        .run(),
    );
    let mut session = Session {
        limits: Limits {
            max_frame: config.max_frame_bytes,
            max_name: config.max_name_bytes,
        },
        shared: shared.clone(),
        link,
        device,
        login: None,
        catchup: None,
    };
    let reason = session.read_loop(read).await;
    session.finish(reason, closing, writer).await;
}

struct Session {
    shared: Arc<Shared>,
    link: Arc<SessionLink>,
    limits: Limits,
    device: Arc<OnceLock<i64>>,
    login: Option<(Identity, Arc<str>)>,
    catchup: Option<JoinHandle<()>>,
}

impl Session {
    /// Reads and handles requests; returns why the connection is ending.
    async fn read_loop(&mut self, mut socket: OwnedReadHalf) -> String {
        let mut buf = BytesMut::new();
        let protocol = self.link.protocol;
        loop {
            while let Some(decoded) = protocol.decode(&mut buf, &self.limits) {
                match decoded {
                    Decoded::Request(tag, command) => self.handle(tag, command).await,
                    Decoded::Reject(tag, kind, why) => {
                        warn!(session = self.link.id, error = %why, "bad request");
                        self.reply(tag, Reply::Error(kind)).await;
                    }
                    Decoded::Close(why) => {
                        warn!(session = self.link.id, error = %why, "bad input, closing");
                        return format!("bad input: {why}");
                    }
                }
            }
            if buf.is_empty() {
                // Idle connections hold no read buffer: wait for data before allocating.
                buf = BytesMut::new();
                tokio::select! {
                    biased;
                    _ = self.link.kill.cancelled() => return self.kill_reason(),
                    _ = self.shared.shutdown.cancelled() => return "server shutting down".into(),
                    ready = socket.as_ref().readable() => if let Err(e) = ready {
                        return format!("read error: {e}");
                    },
                }
            }
            buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = self.link.kill.cancelled() => return self.kill_reason(),
                _ = self.shared.shutdown.cancelled() => return "server shutting down".into(),
                read = socket.read_buf(&mut buf) => match read {
                    Ok(0) if buf.is_empty() => return "closed by peer".into(),
                    Ok(0) => return format!("closed by peer in the middle of a request ({} bytes unread)", buf.len()),
                    Ok(_) => {}
                    Err(e) => return format!("read error: {e}"),
                },
            }
        }
    }

    fn kill_reason(&self) -> String {
        self.link
            .kill_reason
            .get()
            .copied()
            .unwrap_or("killed")
            .to_string()
    }

    async fn handle(&mut self, tag: Tag, command: Command) {
        match command {
            Command::Ping => self.reply(tag, Reply::Ok).await,
            Command::Login { name } => self.login(tag, name).await,
            Command::Send {
                to,
                body,
                claimed_from,
                sent_at,
            } => {
                let Some((identity, name)) = &self.login else {
                    return self.reply(tag, Reply::Error(ErrorKind::NotLoggedIn)).await;
                };
                if claimed_from.is_some_and(|from| from != name.as_bytes()) {
                    warn!(session = self.link.id, user = %name, "message with a forged sender refused");
                    return self.reply(tag, Reply::Error(ErrorKind::Forbidden)).await;
                }
                let Target::User(to) = to;
                let identity = *identity;
                let sent_at = sent_at.unwrap_or_else(unix_nanos);
                self.acquire_inflight().await;
                self.shared
                    .hub
                    .send(self.link.clone(), identity, to, body, sent_at, tag);
            }
        }
    }

    async fn login(&mut self, tag: Tag, name: String) {
        if self.login.is_some() {
            return self
                .reply(tag, Reply::Error(ErrorKind::AlreadyLoggedIn))
                .await;
        }
        let hub = &self.shared.hub;
        match hub
            .login(self.link.clone(), name.clone(), String::new(), tag)
            .await
        {
            Ok(ok) => {
                info!(session = self.link.id, user = %ok.name, "logged in");
                let _ = self.device.set(ok.identity.device);
                self.login = Some((ok.identity, ok.name));
                self.catchup = Some(tokio::spawn(catchup::run(
                    self.shared.reader.clone(),
                    hub.clone(),
                    self.link.clone(),
                    ok.identity,
                )));
            }
            Err(kind) => {
                info!(session = self.link.id, user = %name, error = ?kind, "login refused")
            }
        }
    }

    /// Answers a request the session handles itself, in order behind any request still
    /// with the hub.
    async fn reply(&mut self, tag: Tag, reply: Reply) {
        let all = self.shared.config.max_inflight;
        if self.link.inflight.available_permits() == all {
            self.link.push(Outbound::Reply(tag, reply));
        } else {
            self.acquire_inflight().await;
            self.shared
                .hub
                .reply_in_order(self.link.clone(), tag, reply);
        }
    }

    /// Takes one in-flight permit (the hub gives it back), waiting while the session has
    /// too many requests in flight: that is the backpressure on a pipelining client.
    async fn acquire_inflight(&self) {
        if let Ok(permit) = self.link.inflight.acquire().await {
            permit.forget();
        }
    }

    /// Ends the session: answers what is in flight, flushes the writer, goes offline.
    async fn finish(self, reason: String, closing: CancellationToken, writer: JoinHandle<()>) {
        if let Some(catchup) = &self.catchup {
            catchup.abort();
        }
        let timeout = self.shared.config.shutdown_timeout();
        let all = self.shared.config.max_inflight as u32;
        let _ = tokio::time::timeout(timeout, self.link.inflight.acquire_many(all)).await;
        closing.cancel();
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), writer).await;
        match &self.login {
            Some((identity, name)) => {
                self.shared.hub.logout(self.link.id, *identity);
                info!(session = self.link.id, user = %name, %reason, "disconnected");
            }
            None => info!(session = self.link.id, %reason, "disconnected"),
        }
    }
}

/// Now, in Unix nanoseconds: the timestamp of messages whose protocol carries none.
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
