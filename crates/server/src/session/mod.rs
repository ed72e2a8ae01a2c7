//! One client connection: read requests, hand them to the hub, tear down cleanly.
//!
//! The session owns the read half and the protocol state (who is logged in, which room a
//! slash-command user is in). A separate writer task owns the write half (see `outbound`),
//! so a slow socket never blocks reading, and the hub never waits on either.
//!
//! Two kinds of file live here. The *operations* are the same for every protocol, each a
//! `Session` method returning `Result<T, ErrorKind>` that holds its rule once: `account`
//! (register, logins, tokens, passwords, profiles), `messaging` (send), `rooms`, `history`,
//! `presence` (who, users), `contacts`, `files`. Where the seed protocols differ in a rule,
//! it is a parameter (who may ask, [`Who`]), not a second implementation. The *codecs*
//! (`text`, `json`, `binary` with `binary_messaging`) only decode a request with
//! `parley_proto`, call operations, and format what they return.
//!
//! A new protocol plugs in as a codec:
//! 1. its wire format in `parley_proto` (sans-IO: requests decoded, replies encoded);
//! 2. a [`Protocol`] variant, the first bytes that pick it (`sniff`), and how its reads are
//!    framed (`drain`: lines or frames);
//! 3. a codec file here that turns each request into operation calls and their results
//!    into bytes ([`Session::say`]);
//! 4. for what the hub writes to it, a `Style` (how pushed messages and notices look) and
//!    a `Tag` variant (how the answer to a message looks) in `outbound/encode.rs`.
//!
//! Nothing in the hub, the store or the operations changes.

mod account;
mod binary;
mod binary_messaging;
mod binary_moderation;
mod contacts;
mod conversations;
mod files;
mod history;
mod json;
mod messaging;
mod moderation;
mod presence;
mod rate;
mod rooms;
pub(crate) mod simpletcp;
mod text;
mod websocket;

pub use simpletcp::run as run_simpletcp;
pub use websocket::run as run_websocket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parley_proto::lines::{Line, LineDecoder};
use parley_proto::ErrorKind;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::rate::TokenBucket;
use crate::catchup;
use crate::config::Config;
use crate::conn::{Conn, ReadHalf};
use crate::hub::{Actor, Auth, Hub, Identity};
use crate::metrics::{Hot, LoginFailure};
use crate::outbound::{
    Item, Kill, Link, LinkLimits, ProgressSink, Protocol, Style, Waiter, Writer,
};
use crate::store::Reader;

/// Why a session ends when the server stops (its clients are told, see `tell_shutdown`).
const SHUTTING_DOWN: &str = "server shutting down";

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Items of the session's own output and catch-up a queue may hold before they wait for
/// the writer, on top of `outbound_queue` pushes and `max_inflight` replies.
const ROOM_ITEMS: usize = 1024;

/// What every session shares.
pub struct Shared {
    pub config: Config,
    pub throttle: Arc<crate::throttle::Throttle>,
    /// Repeated log lines, limited over every connection (`log_limit`).
    pub logs: crate::log_limit::ServerWide,
    pub passwords: crate::auth::Passwords,
    /// Open connections per address (see `max_connections_per_ip`).
    pub per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// The certificate, when TLS is configured.
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub files: crate::files::FileStore,
    pub hub: Hub,
    /// Where writers report what devices received (the hub).
    pub progress_sink: Arc<dyn ProgressSink>,
    pub reader: Reader,
    pub shutdown: CancellationToken,
    pub next_session: AtomicU64,
    /// Places for connections (`max_connections`); see `server::Seat`.
    pub seats: tokio::sync::Semaphore,
    /// Catch-ups that replay at once (`catchup::Gate`).
    pub catchups: Arc<catchup::Gate>,
    /// Metrics and the server's phase.
    pub monitor: Arc<crate::monitor::Monitor>,
    /// Cancelled when the server stops accepting: at shutdown, or first when it drains.
    pub stop_accepting: CancellationToken,
    /// The settings a reload changes outside the hub (`admin/control.rs`).
    pub live: crate::config::Live,
    /// Seed 003's device tokens and id table.
    pub simpletcp: simpletcp::State,
}

/// Who may make a request: everyone, or only a logged-in session. Before any login, seed
/// 004's slash commands and seed 001's `MESSAGE` act as the anonymous user; every other
/// request needs a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Members,
    Anyone,
}

/// Whether the connection goes on after a request.
#[derive(Debug)]
enum Flow {
    Continue,
    Close(String),
}

/// Serves one connection speaking `protocol` until it ends. `greet` makes the server speak
/// first (seed 001's JSON clients wait for a welcome line).
///
/// Not an `async fn`: an async fn keeps room for its arguments in its future for as long as
/// it runs, beside the locals they are moved into, and this future lives as long as the
/// connection. The session is set up here, before the future exists, and the future holds
/// it, the read half and the read buffer once each.
///
/// `keep` (the server's per-connection guards) is dropped when the session has ended.
pub fn run(
    conn: Conn,
    peer: SocketAddr,
    protocol: Protocol,
    greet: bool,
    shared: Arc<Shared>,
    initial: BytesMut,
    keep: impl Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (mut session, mut socket) = Session::open(conn, peer, protocol, greet, shared);
    let hot = &session.shared.monitor.metrics.hot;
    hot.add(Hot::BytesIn, protocol, initial.len() as u64);
    let mut buf = initial;
    async move {
        let reason = session.read_loop(&mut socket, &mut buf).await;
        drop((socket, buf));
        // Boxed: every connection's future would otherwise carry the teardown's state for
        // its whole life (the compiler does not overlap it with the read loop's).
        Box::pin(session.finish(reason)).await;
        drop(keep);
    }
}

struct Session {
    peer: SocketAddr,
    /// Logged in with a password or token (not password-less).
    account: bool,
    /// The connection is TLS (see `require_tls_for_passwords`).
    tls: bool,
    shared: Arc<Shared>,
    link: Arc<Link>,
    lines: LineDecoder,
    idle: Option<Duration>,
    /// Commands of the line protocols: a client that floods is slowed to the configured
    /// rate (reading pauses), never dropped or answered out of order.
    commands: TokenBucket,
    /// Messages: past the rate, a message is refused with an error (the sender learns it
    /// was not sent; nothing is dropped silently).
    messages: TokenBucket,
    login: Option<(Identity, Arc<str>)>,
    /// Cancels this session's catch-up (a handle to the task would keep its memory alive
    /// after it finished, for as long as the connection lasts).
    catchup: Option<CancellationToken>,
    /// The room a slash-command user is in (seed 004: one at a time).
    room: Option<String>,
    /// A JSON session asked for pushes.
    subscribed: bool,
    /// Set by a request after which the connection ends (e.g. a binary logout).
    quit: Option<&'static str>,
    /// A JSON session over WebSocket (`/ws`): its frames, read here and written by its
    /// style. Boxed: the other sessions carry a pointer's worth of it.
    websocket: Option<Box<parley_proto::ws::Reader>>,
    /// A seed-003 session (`listen_simpletcp`): its framing and token.
    simpletcp: Option<Box<simpletcp::Conn003>>,
    /// This connection's repeated log lines, limited (`log_limit`).
    logs: crate::log_limit::PerConnection,
}

impl Session {
    /// The session of a new connection, and the read half it reads from.
    fn open(
        conn: Conn,
        peer: SocketAddr,
        protocol: Protocol,
        greet: bool,
        shared: Arc<Shared>,
    ) -> (Session, ReadHalf) {
        let fd = conn.fd();
        let tls = conn.is_tls();
        let (read, write) = conn.split();
        let config = &shared.config;
        let writer = Writer::new(write, fd, shared.progress_sink.clone());
        let limits = LinkLimits {
            queue: config.outbound_queue + ROOM_ITEMS + config.max_inflight,
            bytes: config.outbound_bytes,
            room: ROOM_ITEMS,
            pushes: config.outbound_queue,
            inflight: config.max_inflight,
            flush_timeout: config.shutdown_timeout(),
            write_timeout: config.write_timeout(),
        };
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let link = Link::new(id, protocol, limits, writer);
        link.set_peer(peer.ip());
        shared
            .monitor
            .metrics
            .connections
            .of(protocol)
            .increment(1.0);
        // Per-connection lines at info are the login and the disconnect (both with the peer).
        tracing::debug!(session = link.id, %peer, protocol = protocol.name(), tls, "connected");
        let idle = match protocol {
            Protocol::Binary => config.binary_idle_timeout_ms,
            Protocol::Text => config.idle_timeout_ms,
            Protocol::Json => config.json_idle_timeout_ms,
        };
        // Binary clients pipeline by design: only the line protocols' commands are paced.
        let commands_per_second = match protocol {
            Protocol::Binary => 0,
            Protocol::Text | Protocol::Json => config.commands_per_second,
        };
        let session = Session {
            peer,
            account: false,
            tls,
            lines: LineDecoder::new(config.max_line_bytes),
            idle: (idle > 0).then(|| Duration::from_millis(idle)),
            commands: TokenBucket::new(commands_per_second, commands_per_second.saturating_mul(2)),
            messages: TokenBucket::new(config.messages_per_second, config.message_burst),
            link,
            login: None,
            catchup: None,
            room: None,
            subscribed: false,
            quit: None,
            websocket: None,
            simpletcp: None,
            logs: Default::default(),
            shared,
        };
        if protocol == Protocol::Json {
            session.shared.hub.guest(session.link.clone());
            if greet {
                session.link.push(Item::Bytes(json::welcome()));
            }
        }
        (session, read)
    }

    /// Reads and handles requests; returns why the connection is ending.
    ///
    /// Most connections spend most of their life waiting here, so the waiting state is kept
    /// small: request handling is boxed (it exists only while requests are handled), and
    /// one boxed timer serves every deadline (idle, login, request).
    async fn read_loop(&mut self, socket: &mut ReadHalf, buf: &mut BytesMut) -> String {
        let mut idle_deadline = self.idle.map(|d| Instant::now() + d);
        let login_deadline = match self.shared.config.login_timeout_ms {
            0 => None,
            ms => (self.link.protocol == Protocol::Binary)
                .then(|| Instant::now() + Duration::from_millis(ms)),
        };
        // When the request whose first bytes are buffered must be complete.
        let mut request_by: Option<Instant> = None;
        let mut timer = Deadline::default();
        loop {
            // Checked here with an atomic load, and waited for below only after the socket
            // had nothing: a wait for the shutdown token takes its lock (one lock for every
            // session of the server) each time it is polled, and a busy session reads
            // thousands of times a second.
            if self.shared.shutdown.is_cancelled() {
                return SHUTTING_DOWN.into();
            }
            if !buf.is_empty() {
                let unread = buf.len();
                if let Flow::Close(why) = self.drain(buf).await {
                    return why;
                }
                // A request completed if the decoder took bytes and is not discarding a
                // line too long: only that is activity (a byte of a request is not), and
                // the request begun after it has a deadline of its own.
                let discarding = self.lines.is_discarding();
                let completed = buf.len() < unread && !discarding;
                let now = Instant::now();
                if completed {
                    idle_deadline = self.idle.map(|d| now + d);
                }
                // A seed-003 file payload is given more time as its bytes arrive.
                let progressed = self.simpletcp_progress(buf);
                let from_now = || self.request_timeout().map(|d| now + d);
                request_by = match (buf.is_empty() && !discarding, completed || progressed) {
                    (true, _) => None,
                    (false, true) => from_now(),
                    (false, false) => request_by.or_else(from_now),
                };
            }
            let login_by = login_deadline.filter(|_| self.login.is_none());
            timer.aim(
                [idle_deadline, login_by, request_by]
                    .into_iter()
                    .flatten()
                    .min(),
            );
            if buf.is_empty() {
                // Idle connections hold no read buffer: wait for data before allocating.
                *buf = BytesMut::new();
                tokio::select! {
                    biased;
                    _ = std::future::poll_fn(|cx| self.link.poll_killed(cx)) => return self.kill_reason(),
                    _ = timer.fired() => match self.deadline_passed([idle_deadline, login_by, request_by]) {
                        Some(why) => return why,
                        None => continue,
                    },
                    ready = socket.ready() => if let Err(e) = ready {
                        return format!("read error: {e}");
                    },
                    _ = self.shared.shutdown.cancelled() => return SHUTTING_DOWN.into(),
                }
            }
            buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| self.link.poll_killed(cx)) => return self.kill_reason(),
                _ = timer.fired() => match self.deadline_passed([idle_deadline, login_by, request_by]) {
                    Some(why) => return why,
                    None => continue,
                },
                read = socket.read_buf(buf) => match read {
                    Ok(0) if buf.is_empty() && !self.lines.is_discarding() => return "closed by peer".into(),
                    Ok(0) => return format!("closed by peer in the middle of a request ({} bytes unread)", buf.len()),
                    Ok(n) => {
                        let hot = &self.shared.monitor.metrics.hot;
                        hot.add(Hot::BytesIn, self.link.protocol, n as u64);
                    }
                    Err(e) => return format!("read error: {e}"),
                },
                _ = self.shared.shutdown.cancelled() => return SHUTTING_DOWN.into(),
            }
        }
    }

    /// How long a request may take from its first byte (`request_timeout_ms`).
    fn request_timeout(&self) -> Option<Duration> {
        match self.shared.config.request_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Why the connection ends now that its timer fired, if one of the `[idle, login,
    /// request]` deadlines really passed (requests move the idle deadline on without moving
    /// the timer).
    fn deadline_passed(
        &self,
        [idle, login_by, request_by]: [Option<Instant>; 3],
    ) -> Option<String> {
        let now = Instant::now();
        if login_by.is_some_and(|at| at <= now) {
            return Some("no login in time".into());
        }
        if request_by.is_some_and(|at| at <= now) {
            return Some("a request was not complete within request_timeout_ms".into());
        }
        if idle.is_some_and(|at| at <= now) {
            return Some(self.idle_out());
        }
        None
    }

    /// Handles every complete request in `buf`.
    ///
    /// Boxed per protocol, once per read: the box is no larger than that protocol needs,
    /// and a connection waiting for input holds none of it.
    async fn drain(&mut self, buf: &mut BytesMut) -> Flow {
        if self.websocket.is_some() {
            return Box::pin(self.drain_websocket(buf)).await;
        }
        if self.simpletcp.is_some() {
            return Box::pin(self.drain_simpletcp(buf)).await;
        }
        match self.link.protocol {
            Protocol::Binary => Box::pin(self.drain_frames(buf)).await,
            Protocol::Text | Protocol::Json => Box::pin(self.drain_lines(buf)).await,
        }
    }

    /// Handles every complete line in `buf` (text and JSON).
    async fn drain_lines(&mut self, buf: &mut BytesMut) -> Flow {
        while let Some(line) = self.lines.decode(buf) {
            if let Flow::Close(why) = self.room().await {
                return Flow::Close(why);
            }
            self.commands.take().await;
            let flow = match (self.link.protocol, line) {
                (Protocol::Text, Line::Complete(line)) => self.text_line(line).await,
                (Protocol::Text, Line::TooLong) => self.text_error(ErrorKind::TooLong).await,
                (_, Line::Complete(line)) => self.json_line(line).await,
                (_, Line::TooLong) => self.json_error(None, ErrorKind::TooLong).await,
            };
            if let Flow::Close(why) = flow {
                return Flow::Close(why);
            }
        }
        Flow::Continue
    }

    fn idle_out(&self) -> String {
        if self.link.protocol == Protocol::Text {
            let style = Style::from_u8(self.link.style.load(Ordering::Relaxed));
            let line: &[u8] = match style {
                Style::Slash => b"> disconnected due to inactivity\n",
                _ => b"INFO disconnected due to inactivity\n",
            };
            self.link.push(Item::Bytes(Bytes::from_static(line)));
        }
        "idle timeout".into()
    }

    /// The name this session logged in as, for its log lines (every line about a session
    /// carries its id, peer and user).
    fn user(&self) -> Option<&str> {
        self.login.as_ref().map(|(_, name)| &**name)
    }

    fn kill_reason(&self) -> String {
        let kill = self.link.killed_for();
        if let Some(kill) = kill {
            self.tell_ended(kill);
        }
        kill.map_or("killed", Kill::reason).to_string()
    }

    fn actor(&self) -> Actor {
        match &self.login {
            Some((identity, _)) => Actor::Member(*identity),
            None => Actor::Guest,
        }
    }

    /// Who the session acts as for a request that `who` may make.
    fn acting(&self, who: Who) -> Result<Actor, ErrorKind> {
        match (&self.login, who) {
            (Some((identity, _)), _) => Ok(Actor::Member(*identity)),
            (None, Who::Anyone) => Ok(Actor::Guest),
            (None, Who::Members) => Err(ErrorKind::NotLoggedIn),
        }
    }

    fn set_style(&self, style: Style) {
        self.link.style.store(style as u8, Ordering::Relaxed);
    }

    /// Logs in as `name` without a password (seed 000, 002, 004, 001 logins).
    async fn login(&mut self, name: &str, welcome: Option<Item>) -> Result<(), ErrorKind> {
        self.login_as(name, "", Auth::None, welcome).await
    }

    /// Takes the password-less name `name` in place of the session's (seed 001's second
    /// `REGISTER`, seed 004's second `/nick`), or logs in as it. The hub checks `name` as
    /// for any login and only then signs the old name off, as if its connection had ended
    /// (the others hear it disconnect), in the same step: a refused name leaves the session
    /// as it was. A session logged in to an account keeps it (`AlreadyLoggedIn`).
    async fn rename(&mut self, name: &str, welcome: Option<Item>) -> Result<(), ErrorKind> {
        let Some((old, _)) = &self.login else {
            return self.login(name, welcome).await;
        };
        if self.account {
            return Err(ErrorKind::AlreadyLoggedIn);
        }
        let old = *old;
        // The old name's catch-up is replaced by the new one's once the hub says yes.
        let (login, catchup) = (self.login.take(), self.catchup.take());
        let result = self.admit(name, "", Auth::None, welcome, Some(old)).await;
        match result {
            // Refused, the old name kept.
            Err(kind) if kind != ErrorKind::NotLoggedIn => {
                self.login = login;
                self.catchup = catchup;
            }
            // Taken, or refused after the old name was given up (a store error, or in a
            // cluster another node's claim): the session has no name now.
            _ => {
                if let Some(catchup) = catchup {
                    catchup.cancel();
                }
            }
        }
        result
    }

    /// Logs in as `name` on `device`; on success starts the catch-up unless the session
    /// only speaks when spoken to. `welcome` is the success reply: the hub queues it before
    /// anything else can reach the new session (a presence notice, say).
    async fn login_as(
        &mut self,
        name: &str,
        device: &str,
        auth: Auth,
        welcome: Option<Item>,
    ) -> Result<(), ErrorKind> {
        if self.login.is_some() {
            return Err(ErrorKind::LoggedInHere);
        }
        if self.link.protocol == Protocol::Text {
            // Before the login: everything it brings comes after (see `Item::Me`).
            self.link.push(Item::Me(Arc::new(name.to_string())));
        }
        self.admit(name, device, auth, welcome, None).await
    }

    /// Asks the hub to log the session in (in place of `replacing`), and takes the result.
    async fn admit(
        &mut self,
        name: &str,
        device: &str,
        auth: Auth,
        welcome: Option<Item>,
        replacing: Option<Identity>,
    ) -> Result<(), ErrorKind> {
        let hub = &self.shared.hub;
        let link = self.link.clone();
        let (new_name, device_name) = (name.to_string(), device.to_string());
        match hub
            .login(link, new_name, device_name, auth, welcome, replacing)
            .await
        {
            Ok(ok) => {
                let peer = self.peer;
                let protocol = self.link.protocol.name();
                info!(session = self.link.id, user = %ok.name, device, %peer, protocol, "logged in");
                self.shared
                    .monitor
                    .metrics
                    .logins
                    .of(self.link.protocol)
                    .increment(1);
                self.link.set_device(ok.identity.device);
                self.login = Some((ok.identity, ok.name));
                self.account = auth != Auth::None;
                if self.link.protocol == Protocol::Json && self.subscribed {
                    // Subscribed before logging in: the hub must know to push.
                    self.shared.hub.subscribe(self.link.id, ok.identity.user);
                }
                if !ok.live && (self.link.protocol != Protocol::Json || self.subscribed) {
                    self.start_catchup();
                }
                Ok(())
            }
            Err(kind) => {
                let peer = self.peer;
                limited!(self, info, "login refused", user = %name, %peer, error = ?kind);
                self.shared
                    .monitor
                    .metrics
                    .login_failed(LoginFailure::Refused);
                Err(kind)
            }
        }
    }

    fn start_catchup(&mut self) {
        if let (Some((identity, _)), None) = (&self.login, &self.catchup) {
            let stop = CancellationToken::new();
            let replay = catchup::run(
                self.shared.catchups.clone(),
                self.shared.reader.clone(),
                self.shared.hub.clone(),
                self.link.clone(),
                *identity,
                self.shared.monitor.clone(),
            );
            let cancelled = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancelled.cancelled() => {}
                    _ = replay => {}
                }
            });
            self.catchup = Some(stop);
        }
    }

    /// Queues output the session produced itself, in order behind any request still with
    /// the hub.
    ///
    /// It waits while the queue has no room: a client that does not read its answers
    /// slows the session down to the pace it reads (see `Session::room`).
    async fn say(&mut self, item: Item) {
        let all = self.shared.config.max_inflight;
        if self.link.inflight.available_permits() == all {
            // False once the writer has stopped: the session ends at its next read.
            self.link.push_in_room(item, Waiter::Session).await;
        } else {
            self.acquire_inflight().await;
            self.shared.hub.reply_in_order(self.link.clone(), item);
        }
    }

    /// Waits until the client has read enough of what it was sent for the queue to have
    /// room again, before a request is handled: back-pressure on a client that asks faster
    /// than it reads (it is slowed down, never cut off for asking; one that reads nothing
    /// at all is cut off by the write timeout). Closes once the writer has stopped.
    async fn room(&mut self) -> Flow {
        match self.link.room().await {
            true => Flow::Continue,
            false => Flow::Close(self.kill_reason()),
        }
    }

    async fn say_line(&mut self, line: String) {
        let mut line = line.into_bytes();
        line.push(b'\n');
        self.say(Item::Bytes(Bytes::from(line))).await;
    }

    /// Waits until every request this session already handed to the hub is answered, so
    /// a read of the store sees the session's own writes (e.g. `SAY` then `HISTORY`).
    async fn settle(&self) {
        let all = self.shared.config.max_inflight as u32;
        drop(self.link.inflight.acquire_many(all).await);
    }

    /// Takes one in-flight permit (the hub gives it back), waiting while the session has
    /// too many requests in flight: that is the backpressure on a pipelining client.
    async fn acquire_inflight(&self) {
        // Nearly always a permit is free: taken without the waiter node and future that
        // `acquire` sets up (4 % of a session task's time per binary message).
        if !self.try_acquire_inflight() {
            if let Ok(permit) = self.link.inflight.acquire().await {
                permit.forget();
            }
        }
    }

    /// Takes one in-flight permit if one is free.
    fn try_acquire_inflight(&self) -> bool {
        let permit = self.link.inflight.try_acquire();
        permit.map(|p| p.forget()).is_ok()
    }

    /// Ends the session: answers what is in flight, flushes the writer, goes offline.
    async fn finish(mut self, reason: String) {
        if let Some(catchup) = &self.catchup {
            catchup.cancel();
        }
        if let Some(room) = self.room.take() {
            // A slash user (seed 004) is in its room while connected: vanished without
            // `/quit`, it leaves it, and the room hears `> <nick> has left the room`.
            let _ = self.leave(&[room], Who::Anyone).await;
        }
        let timeout = self.shared.config.shutdown_timeout();
        let all = self.shared.config.max_inflight as u32;
        let _ = tokio::time::timeout(timeout, self.link.inflight.acquire_many(all)).await;
        if reason == SHUTTING_DOWN {
            self.tell_shutdown();
        }
        if self.websocket.is_some() {
            self.close_websocket(&reason);
        }
        self.link.close_writer().await;
        let identity = self.login.as_ref().map(|(identity, _)| *identity);
        self.shared.hub.gone(self.link.id, identity);
        self.release_simpletcp();
        let metrics = &self.shared.monitor.metrics;
        metrics.connections.of(self.link.protocol).decrement(1.0);
        if self.link.killed_for() == Some(Kill::SlowConsumer) {
            metrics.slow_consumers.increment(1);
        }
        self.log_suppressed();
        let peer = self.peer;
        match &self.login {
            Some((_, name)) => {
                info!(session = self.link.id, user = %name, %peer, %reason, "disconnected")
            }
            None => info!(session = self.link.id, %peer, %reason, "disconnected"),
        }
    }
}

/// Logs `$cause` at `$level` with the session's id and the given fields, unless lines of
/// that cause are over their limit, this connection's or the server's (`log_limit`); a
/// line written after some were left out says how many.
macro_rules! limited {
    ($session:expr, $level:ident, $cause:literal $(, $($field:tt)+)?) => {
        if let Some(suppressed) = $session.log_allowed($cause) {
            let session = $session.link.id;
            $crate::log_limit::write_line!($level, suppressed, $cause, session $(, $($field)+)?);
        }
    };
}
use limited;

impl Session {
    /// Whether a log line of `cause` may be written now: under this connection's limit,
    /// then the server's. Gives how many lines of it were left out since the last one.
    fn log_allowed(&self, cause: &'static str) -> Option<u64> {
        let mine = self.logs.allow(cause)?;
        match self.shared.logs.allow(cause) {
            Some(theirs) => Some(mine + theirs),
            None => {
                // Left out after all: the server's count keeps this connection's.
                self.shared.logs.suppress(cause, mine);
                None
            }
        }
    }

    /// Reports the lines this connection left out and never reported (at its end), one
    /// line per cause, itself under the server's limit: past it, the server's count of the
    /// cause keeps them for its next line.
    fn log_suppressed(&self) {
        for (cause, suppressed) in self.logs.take_suppressed() {
            if self.shared.logs.allow("similar lines suppressed").is_none() {
                self.shared.logs.suppress(cause, suppressed);
                continue;
            }
            let session = self.link.id;
            tracing::warn!(
                session,
                suppressed,
                "{cause}: {suppressed} similar lines suppressed"
            );
        }
    }
}

/// One line of output, with its newline.
fn line(text: impl Into<String>) -> Item {
    let mut text: String = text.into();
    text.push('\n');
    Item::Bytes(Bytes::from(text))
}

/// A connection's one timer, boxed so that a connection without deadlines (a binary session
/// once logged in) holds none, and moved lazily: it fires at the earliest deadline it was
/// aimed at, and the session checks what really passed.
#[derive(Default)]
struct Deadline {
    /// Polled at every turn of the read loop: a [`Timer`] polls its `Sleep` only when it
    /// may have fired.
    timer: Option<crate::timer::Timer>,
    /// The timer fired and has not been aimed again.
    spent: bool,
}

impl Deadline {
    /// Makes the timer fire at `at` (or never), unless it already fires no later.
    fn aim(&mut self, at: Option<Instant>) {
        let Some(at) = at else {
            self.timer = None;
            return;
        };
        match &mut self.timer {
            Some(timer) if !self.spent && timer.deadline() <= at => {}
            Some(timer) => timer.reset(at),
            None => self.timer = Some(crate::timer::Timer::at(at)),
        }
        self.spent = false;
    }

    /// Completes when the timer fires; never without one.
    async fn fired(&mut self) {
        match &mut self.timer {
            Some(timer) if !self.spent => {
                timer.await;
                self.spent = true;
            }
            _ => std::future::pending().await,
        }
    }
}
