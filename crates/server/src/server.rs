//! The accept loop, connection limits and graceful shutdown.
//!
//! Shutdown order: stop accepting; tell every session to stop reading; each session answers
//! what it has in flight, flushes its writer and goes offline; then the hub commits what is
//! left and stops. Every step is bounded by `shutdown_timeout_ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::log_limit::limited;
use anyhow::Context;
use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, Control, DataLock, ReloadConfig};
use crate::config::Config;
use crate::conn::Conn;
use crate::metrics::Metrics;
use crate::monitor::{Monitor, Phase};
use crate::node::{close_core, open_core};
use crate::outbound::Protocol;
use crate::session::{self, Shared};
use crate::sniff::{at_end, classify, sniff, Sniffed, DECIDING_BYTES};
use crate::tls::Tls;

/// The sockets a server listens on: the shared port, and optional single-protocol ports.
pub struct Listeners {
    pub shared: TcpListener,
    pub tls: Option<TcpListener>,
    /// The certificate, loaded when `tls_cert` and `tls_key` are set; `Tls::reload` swaps
    /// it in place (SIGHUP).
    pub certificate: Option<Arc<Tls>>,
    pub json: Option<TcpListener>,
    pub text: Option<TcpListener>,
    pub binary: Option<TcpListener>,
    pub http: Option<TcpListener>,
    /// Seed 003's framed JSON (`listen_simpletcp`).
    pub simpletcp: Option<TcpListener>,
    /// The private port of `/metrics` and the probes (`listen_admin`).
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address `config` names, and loads the TLS certificate if it names one.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
            // A deep accept queue: bursts of connections should wait, not have their SYNs
            // dropped (each drop costs the client a one-second retransmission).
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }?;
            socket.set_reuseaddr(true)?;
            socket
                .bind(addr)
                .with_context(|| format!("binding {addr}"))?;
            socket
                .listen(4096)
                .with_context(|| format!("listening on {addr}"))
        }
        async fn maybe(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
            Ok(match addr {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            })
        }
        let certificate = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
            _ => None,
        };
        Ok(Listeners {
            certificate,
            shared: bind(config.listen).await?,
            tls: maybe(config.listen_tls).await?,
            json: maybe(config.listen_json).await?,
            text: maybe(config.listen_text).await?,
            binary: maybe(config.listen_binary).await?,
            http: maybe(config.listen_http).await?,
            simpletcp: maybe(config.listen_simpletcp).await?,
            admin: maybe(config.listen_admin).await?,
        })
    }
}

/// A listener and what it serves.
struct Port {
    listener: TcpListener,
    kind: PortKind,
    /// The sockets it accepts already carry the TCP options (see `tcp_options`).
    options_inherited: bool,
}

/// Linux copies a listener's TCP options (keepalive and its timings, no Nagle delay) to
/// every socket it accepts: set once on the listener, they cost a connection none of the
/// five system calls that setting them per socket takes.
const OPTIONS_INHERITED: bool = cfg!(target_os = "linux");

/// Sets what every connection's socket needs: no Nagle delay (replies and pushes are
/// small and must not wait), and keepalive probes after `keepalive_secs` idle (0: none), so
/// a peer that vanished is found and its session ended.
fn tcp_options(socket: socket2::SockRef<'_>, keepalive_secs: u64) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    if keepalive_secs > 0 {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(keepalive_secs))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        socket.set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

impl Port {
    fn new(listener: TcpListener, kind: PortKind, keepalive_secs: u64) -> Port {
        let options_inherited = OPTIONS_INHERITED
            && match tcp_options(socket2::SockRef::from(&listener), keepalive_secs) {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "cannot set TCP options on a listener; setting them per connection");
                    false
                }
            };
        Port {
            listener,
            kind,
            options_inherited,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum PortKind {
    /// Every protocol, TLS or not, chosen by the first byte.
    Shared,
    /// One protocol, plain.
    Fixed(Protocol),
    /// TLS only, any protocol inside.
    Tls,
    /// HTTP only, plain (the web app, files, WebSocket).
    Http,
    /// Seed 003's framed JSON only, plain.
    SimpleTcp,
}

impl PortKind {
    /// What a port of one protocol serves, whatever its first bytes (None: they choose).
    fn serves(self) -> Option<Sniffed> {
        match self {
            PortKind::Fixed(protocol) => Some(Sniffed::Protocol(protocol)),
            PortKind::Http => Some(Sniffed::Http),
            PortKind::Shared | PortKind::Tls | PortKind::SimpleTcp => None,
        }
    }
}

/// What the `parley` binary adds to a server, which tests and embedders may leave out.
#[derive(Default)]
pub struct Options {
    /// Reads the configuration again for a reload (`parley admin server reload`, SIGHUP).
    pub reload_config: Option<ReloadConfig>,
    /// Reload on SIGHUP (a process-wide signal: only for a server that owns its process).
    pub reload_on_hangup: bool,
}

/// Serves on `listeners` until `shutdown` is cancelled, then shuts down gracefully.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(config, listeners, shutdown, Options::default()).await
}

/// [`serve`], with the binary's [`Options`].
pub async fn serve_with(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    options: Options,
) -> anyhow::Result<()> {
    config.validate()?;
    // Installed first: a SIGHUP that came before the handler would end the process.
    let hangup = match options.reload_on_hangup {
        true => Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?),
        false => None,
    };
    let monitor = Arc::new(Monitor::new(Metrics::new(&config.data_dir)));
    // The admin port answers from now on (not ready while the store opens), until the
    // very end.
    let stopped = CancellationToken::new();
    if let Some(listener) = listeners.admin {
        info!(addr = %listener.local_addr()?, "admin port (metrics and probes) listening");
        let task = crate::http::monitor::listen(listener, monitor.clone(), stopped.clone());
        tokio::spawn(task);
    }
    let _stop_admin = stopped.clone().drop_guard();
    // One server per data directory, for its whole life (`parley admin` takes it too).
    let _lock = DataLock::take(&config.data_dir)?;
    tokio::spawn(watch(monitor.clone(), shutdown.clone(), stopped.clone()));
    raise_fd_limit();
    let tls = listeners.certificate.clone();
    let (shared, hub_thread, cluster_stop) =
        open_core(config, monitor.clone(), shutdown.clone(), tls).await?;
    tokio::spawn(report_suppressed(Arc::downgrade(&shared), stopped.clone()));
    let control = Arc::new(Control::new(shutdown.clone(), options.reload_config));
    let admin = Arc::new(admin::Ctx {
        shared: shared.clone(),
        control: Some(control),
    });
    let socket = admin::bind(&shared.config.data_dir)?;
    tokio::spawn(admin::listen(socket, admin.clone(), stopped.clone()));
    if let Some(hangup) = hangup {
        tokio::spawn(reload_on_hangup(hangup, admin, stopped.clone()));
    }
    let keepalive = shared.config.keepalive_secs;
    let mut ports = vec![Port::new(listeners.shared, PortKind::Shared, keepalive)];
    if let Some(listener) = listeners.tls {
        ports.push(Port::new(listener, PortKind::Tls, keepalive));
    }
    let fixed = [
        (listeners.json, Protocol::Json),
        (listeners.text, Protocol::Text),
        (listeners.binary, Protocol::Binary),
    ];
    for (listener, protocol) in fixed {
        if let Some(listener) = listener {
            ports.push(Port::new(listener, PortKind::Fixed(protocol), keepalive));
        }
    }
    if let Some(listener) = listeners.simpletcp {
        ports.push(Port::new(listener, PortKind::SimpleTcp, keepalive));
    }
    if let Some(listener) = listeners.http {
        ports.push(Port::new(listener, PortKind::Http, keepalive));
    }
    let tracker = TaskTracker::new();
    let mut loops = Vec::new();
    for port in ports {
        let protocol = match port.kind {
            PortKind::Shared => "every protocol",
            PortKind::Fixed(protocol) => protocol.name(),
            PortKind::Tls => "tls",
            PortKind::Http => "http",
            PortKind::SimpleTcp => "simpletcp",
        };
        info!(addr = %port.listener.local_addr()?, protocol, "parley listening");
        let task = accept_loop(port, shared.clone(), tracker.clone());
        loops.push(tokio::spawn(task));
    }
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(data_dir = %shared.config.data_dir.display(), workers, "parley started");
    monitor.advance(Phase::Ready);
    for task in loops {
        let _ = task.await;
    }
    // A drain stops accepting first and shuts down later.
    shutdown.cancelled().await;

    monitor.advance(Phase::Stopping);
    tracker.close();
    info!(sessions = tracker.len(), "shutting down: draining sessions");
    let timeout = shared.config.shutdown_timeout() + Duration::from_secs(2);
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!("sessions did not finish in time");
    }
    close_core(shared, hub_thread).await?;
    cluster_stop.cancel();
    info!("shutdown complete");
    Ok(())
}

/// SIGHUP: the same reload as `parley admin server reload`.
async fn reload_on_hangup(mut hup: Signal, admin: Arc<admin::Ctx>, stopped: CancellationToken) {
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        if let Some(control) = &admin.control {
            if let Err(e) = control.reload(&admin.shared, "SIGHUP").await {
                error!(error = %e.0, "SIGHUP: reload failed");
            }
        }
    }
}

/// Marks the server as stopping as soon as shutdown begins, and keeps the metrics'
/// histograms folded meanwhile.
async fn watch(monitor: Arc<Monitor>, shutdown: CancellationToken, stopped: CancellationToken) {
    let mut upkeep = tokio::time::interval(crate::metrics::UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return monitor.advance(Phase::Stopping),
            _ = stopped.cancelled() => return,
            _ = upkeep.tick() => monitor.metrics.upkeep(),
        }
    }
}

/// Writes the counts of log lines left out that no later line of their cause reported
/// (`log_limit`), every few seconds (and `close_core` once at the end).
async fn report_suppressed(shared: std::sync::Weak<Shared>, stopped: CancellationToken) {
    let mut every = tokio::time::interval(crate::log_limit::REPORT_EVERY);
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = every.tick() => {}
        }
        match shared.upgrade() {
            Some(shared) => shared.logs.report(),
            None => return,
        }
    }
}

/// Accepts connections on one port until shutdown, within the shared connection limit.
async fn accept_loop(port: Port, shared: Arc<Shared>, tracker: TaskTracker) {
    // Draining stops accepting before shutdown (which stops it too).
    let shutdown = shared.stop_accepting.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the limit, new connections wait in the kernel's backlog. A loop waiting in
        // `accept` holds no place: with several ports, each would keep one from the others.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = Seat::free(&shared) => {}
        }
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = port.listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning; the
                // sessions already connected keep being served.
                warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if !port.options_inherited {
            let socket = socket2::SockRef::from(&stream);
            if let Err(e) = tcp_options(socket, shared.config.keepalive_secs) {
                limited!(shared.logs, warn, "cannot set TCP options", %peer, error = %e);
            }
        }
        // At once, unless another port took the free place meanwhile: then this one
        // connection (at most one per port) waits for the next.
        let mut seat = tokio::select! {
            _ = shutdown.cancelled() => break,
            seat = Seat::take(&shared) => seat,
        };
        if !seat.admit(peer.ip()) {
            let limit = shared.live.max_connections_per_ip();
            limited!(shared.logs, warn, "too many connections from this address; closing", %peer, limit);
            drop(stream);
            continue;
        }
        let first = connection(
            stream,
            peer,
            port.kind,
            shared.clone(),
            seat,
            tracker.clone(),
        );
        tracker.spawn(first);
    }
}

/// A connection's first task: it finds out what the connection speaks, then hands it to a
/// session task of its own and ends. The session task so holds only the session's state,
/// not the arguments and the sniffing this one needed (about 150 bytes per idle
/// connection, and a smaller allocation class). Not an `async fn`, which would keep room
/// for its arguments beside the locals they move into. `seat` (the connection's place)
/// goes with the session, or is dropped here.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: PortKind,
    shared: Arc<Shared>,
    seat: Seat,
    tracker: TaskTracker,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        if let PortKind::SimpleTcp = kind {
            // Plain only: its first bytes are a length, so nothing is sniffed.
            let session = session::run_simpletcp(Conn::Tcp(stream), peer, shared, seat);
            tracker.spawn(session);
            return;
        }
        // What sniffing read (only when peeking could not decide).
        let mut initial = BytesMut::new();
        // A port of one protocol tells TLS apart when a certificate is configured (no
        // binary frame, text line or HTTP request starts with 0x16), except the JSON port:
        // its server speaks first, so it cannot wait to see a ClientHello.
        let fixed = kind.serves();
        let plain = shared.tls.is_none() || matches!(kind, PortKind::Fixed(Protocol::Json));
        let sniffed = match (kind, fixed) {
            (PortKind::Tls, _) => Ok(Sniffed::Tls),
            (_, Some(fixed)) if plain => Ok(fixed),
            // A connection that never says anything is not kept forever.
            _ => tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = first_byte_deadline(&shared) => {
                    return limited!(shared.logs, warn, "nothing received in time; closing", %peer);
                }
                sniffed = sniff(&stream, &mut initial) => sniffed,
            },
        };
        // On a port of one protocol, whatever is not TLS is that protocol.
        let sniffed = match (sniffed, fixed) {
            (Ok(Sniffed::Protocol(_) | Sniffed::Http), Some(fixed)) => Ok(fixed),
            (sniffed, _) => sniffed,
        };
        match sniffed {
            Ok(Sniffed::Protocol(protocol)) => {
                // A JSON-only port speaks first: its seed-001 clients wait for that.
                let greet = matches!(kind, PortKind::Fixed(Protocol::Json));
                let conn = Conn::Tcp(stream);
                let session = session::run(conn, peer, protocol, greet, shared, initial, seat);
                tracker.spawn(session);
                return;
            }
            Ok(Sniffed::Http) => {
                let io = crate::http::HttpIo {
                    initial,
                    conn: Conn::Tcp(stream),
                };
                // HTTP's task ends with the HTTP connection: a WebSocket's session gets a
                // task of its own, without the HTTP server's state.
                let http = tracker.clone();
                http.spawn(async move {
                    let served = Box::pin(crate::http::serve(io, peer, shared.clone())).await;
                    if let Some((conn, initial)) = served {
                        let session = session::run_websocket(conn, peer, shared, initial, seat);
                        tracker.spawn(session);
                    }
                });
                return;
            }
            Ok(Sniffed::Tls) => match &shared.tls {
                // Boxed: the handshake's state is large, and plain connections need none of it.
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    Box::pin(tls_session(stream, peer, acceptor, shared.clone(), fixed)).await
                }
                None => {
                    limited!(shared.logs, warn, "a TLS connection, but no certificate is configured; closing", %peer)
                }
            },
            Ok(Sniffed::Closed) => {}
            Err(e) => {
                limited!(shared.logs, warn, "connection failed before its first byte", %peer, error = %e)
            }
        }
        drop(seat);
    }
}

/// How long a new connection may stay silent before its first byte (`login_timeout_ms`).
async fn first_byte_deadline(shared: &Shared) {
    match shared.config.login_timeout_ms {
        0 => std::future::pending().await,
        ms => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
}

/// Completes the TLS handshake, reads the first bytes inside it to choose the protocol
/// (unless the port serves one, `fixed`), and serves the session.
async fn tls_session(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    fixed: Option<Sniffed>,
) {
    let limit = Duration::from_secs(10);
    let handshake = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        done = tokio::time::timeout(limit, acceptor.accept(stream)) => done,
    };
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return limited!(shared.logs, warn, "TLS handshake failed", %peer, error = %e),
        Err(_) => return limited!(shared.logs, warn, "TLS handshake timed out", %peer),
    };
    let mut initial = BytesMut::with_capacity(4096);
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        _ = first_byte_deadline(&shared) => {
            return limited!(shared.logs, warn, "nothing received in time after the TLS handshake; closing", %peer);
        }
        read = tokio::io::AsyncReadExt::read_buf(&mut tls, &mut initial) => read,
    };
    if let Err(e) = first {
        return limited!(shared.logs, warn, "TLS connection failed before its first byte", %peer, error = %e);
    }
    // The bytes read so far decide, unless they are only the start of an HTTP method.
    let sniffed = loop {
        if let Some(sniffed) = classify(&initial) {
            break sniffed;
        }
        if initial.is_empty() || initial.len() >= DECIDING_BYTES {
            break at_end(&initial);
        }
        let more = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = first_byte_deadline(&shared) => {
                return limited!(shared.logs, warn, "an incomplete first line after the TLS handshake; closing", %peer);
            }
            read = tokio::io::AsyncReadExt::read_buf(&mut tls, &mut initial) => read,
        };
        match more {
            Ok(0) => break at_end(&initial),
            Ok(_) => {}
            Err(e) => {
                return limited!(shared.logs, warn, "TLS connection failed before its first line", %peer, error = %e)
            }
        }
    };
    let conn = Conn::Tls(Box::new(tls));
    match fixed.unwrap_or(sniffed) {
        Sniffed::Protocol(protocol) => {
            session::run(conn, peer, protocol, false, shared, initial, ()).await
        }
        Sniffed::Http => {
            let io = crate::http::HttpIo { initial, conn };
            let served = Box::pin(crate::http::serve(io, peer, shared.clone())).await;
            if let Some((conn, initial)) = served {
                session::run_websocket(conn, peer, shared, initial, ()).await
            }
        }
        Sniffed::Tls | Sniffed::Closed => {}
    }
}

/// A connection's place: one of `max_connections` and, once admitted, one of its address's
/// `max_connections_per_ip`; both are given back when it is dropped. Every session's future
/// holds one for as long as the connection lasts, so it is one `Arc` and the address.
struct Seat {
    shared: Arc<Shared>,
    ip: Option<std::net::IpAddr>,
}

impl Seat {
    /// Waits until one of the `max_connections` places is free, without taking it.
    async fn free(shared: &Shared) {
        drop(shared.seats.acquire().await.expect("never closed"));
    }

    /// Waits for one of the `max_connections` places and takes it.
    async fn take(shared: &Arc<Shared>) -> Seat {
        let permit = shared.seats.acquire().await.expect("never closed");
        // Given back by `drop`, with no guard of its own to carry.
        permit.forget();
        Seat {
            shared: shared.clone(),
            ip: None,
        }
    }

    /// Counts the connection from `ip`; false past `max_connections_per_ip`.
    fn admit(&mut self, ip: std::net::IpAddr) -> bool {
        let limit = self.shared.live.max_connections_per_ip();
        let mut counts = self.shared.per_ip.lock().expect("per-ip counts poisoned");
        let count = counts.entry(ip).or_insert(0);
        if limit > 0 && *count >= limit {
            return false;
        }
        *count += 1;
        self.ip = Some(ip);
        true
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut counts = self.shared.per_ip.lock().expect("per-ip counts poisoned");
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
        self.shared.seats.add_permits(1);
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is one.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => info!(soft, "open-file limit"),
        Err(e) => warn!(error = %e, "raising the open-file limit"),
    }
}

/// A server running in the background, as tests and embedders use it.
pub struct Running {
    /// The shared port.
    pub addr: SocketAddr,
    pub json_addr: Option<SocketAddr>,
    pub text_addr: Option<SocketAddr>,
    pub binary_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// Seed 003's framed JSON (`listen_simpletcp`).
    pub simpletcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    certificate: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Reads the TLS certificate and key files again (what SIGHUP does).
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        match &self.certificate {
            Some(tls) => tls.reload(),
            None => anyhow::bail!("TLS is not configured"),
        }
    }

    /// Waits until the server has stopped by itself (a drain, say), at most `limit`.
    pub async fn stopped(self, limit: Duration) -> anyhow::Result<()> {
        let done = tokio::time::timeout(limit, self.task).await;
        done.context("the server did not stop in time")?
            .context("server task")?
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task")?
    }
}

/// Binds every configured port and serves in a background task.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, Options::default()).await
}

/// [`start`], with [`Options`].
pub async fn start_with(config: Config, options: Options) -> anyhow::Result<Running> {
    let listeners = Listeners::bind(&config).await?;
    let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let addr = listeners.shared.local_addr()?;
    let (json_addr, text_addr, binary_addr, tls_addr) = (
        local(&listeners.json),
        local(&listeners.text),
        local(&listeners.binary),
        local(&listeners.tls),
    );
    let http_addr = local(&listeners.http);
    let simpletcp_addr = local(&listeners.simpletcp);
    let admin_addr = local(&listeners.admin);
    let certificate = listeners.certificate.clone();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let result = serve_with(config, listeners, token, options).await;
        if let Err(e) = &result {
            error!(error = %format!("{e:#}"), "server failed");
        }
        result
    });
    Ok(Running {
        addr,
        json_addr,
        text_addr,
        binary_addr,
        http_addr,
        simpletcp_addr,
        tls_addr,
        admin_addr,
        certificate,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lets `accept_loop` set nothing per connection on Linux.
    #[tokio::test]
    async fn accepted_sockets_carry_the_listeners_tcp_options() {
        for keepalive_secs in [45, 0] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = Port::new(listener, PortKind::Shared, keepalive_secs);
            assert_eq!(port.options_inherited, OPTIONS_INHERITED);
            if !port.options_inherited {
                continue;
            }
            let client = TcpStream::connect(port.listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, _) = port.listener.accept().await.unwrap();
            let socket = socket2::SockRef::from(&accepted);
            assert!(socket.nodelay().unwrap());
            assert_eq!(socket.keepalive().unwrap(), keepalive_secs > 0);
            if keepalive_secs > 0 {
                assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(45));
                assert_eq!(
                    socket.keepalive_interval().unwrap(),
                    Duration::from_secs(10)
                );
                assert_eq!(socket.keepalive_retries().unwrap(), 3);
            }
            drop(client);
        }
    }
}
