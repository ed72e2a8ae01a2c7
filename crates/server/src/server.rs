//! The accept loop, connection limits and graceful shutdown.
//!
//! Shutdown order: stop accepting; tell every session to stop reading; each session answers
//! what it has in flight, flushes its writer and goes offline; then the hub commits what is
//! left and stops. Every step is bounded by `shutdown_timeout_ms`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::session::{self, Shared};
use crate::sniff::{sniff, Sniffed};
use crate::store::{Reader, SqliteStore};

/// Serves on `listener` until `shutdown` is cancelled, then shuts down gracefully.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    raise_fd_limit();
    let store = SqliteStore::open(&config.data_dir, config.sync)?;
    let (hub, hub_thread) = crate::hub::spawn(Box::new(store), &config)?;
    let shared = Arc::new(Shared {
        reader: Reader::new(&config.data_dir),
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        next_session: AtomicU64::new(1),
        config,
    });
    info!(addr = %listener.local_addr()?, data_dir = %shared.config.data_dir.display(), "parley listening");

    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
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
        let shared = shared.clone();
        tracker.spawn(async move {
            connection(stream, peer, shared).await;
            drop(permit);
        });
    }

    drop(listener);
    tracker.close();
    info!(sessions = tracker.len(), "shutting down: draining sessions");
    let timeout = shared.config.shutdown_timeout() + Duration::from_secs(2);
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!("sessions did not finish in time");
    }
    hub.shutdown();
    drop(shared);
    drop(hub);
    tokio::task::spawn_blocking(move || hub_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the hub thread panicked"))?;
    info!("shutdown complete");
    Ok(())
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let sniffed = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        sniffed = sniff(&stream) => sniffed,
    };
    match sniffed {
        Ok(Sniffed::Protocol(protocol)) => session::run(stream, peer, protocol, shared).await,
        Ok(Sniffed::Closed) => {}
        Ok(Sniffed::Unknown(byte)) => {
            warn!(%peer, first_byte = byte, "no protocol starts with this byte; closing")
        }
        Err(e) => warn!(%peer, error = %e, "connection failed before its first byte"),
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is one.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let soft = lim.rlim_cur;
        if soft < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = soft;
            }
        }
        info!(
            soft_before = soft,
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            "open-file limit"
        );
    }
}

/// A server running in the background, as tests and embedders use it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task")?
    }
}

/// Binds `config.listen` and serves in a background task.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let result = serve(config, listener, token).await;
        if let Err(e) = &result {
            error!(error = %format!("{e:#}"), "server failed");
        }
        result
    });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}
