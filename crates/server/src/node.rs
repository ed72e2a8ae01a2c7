//! The server without its listeners: the store opened (SQLite, or PostgreSQL and the
//! cluster's tasks on a cluster node), the hub started, and what every session shares.
//! `server` opens it and adds the listeners; `parley admin` on a stopped server's data
//! (admin/offline.rs) opens it alone.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::monitor::Monitor;
use crate::outbound::{ProgressSink, Protocol};
use crate::session::Shared;
use crate::store::postgres::{PgBlobs, PgReader, PgStore};
use crate::store::{ConvId, DeviceId, Reader, Seq, SqliteReader, SqliteStore};
use crate::tls::Tls;

/// A cluster node's hub, reads and files: on PostgreSQL (its schema brought up to date
/// first), with the node's NATS connection and tasks (cluster/).
async fn start_node(
    config: &Config,
    stop: CancellationToken,
    monitor: Arc<Monitor>,
    throttle: Arc<crate::throttle::Throttle>,
) -> anyhow::Result<(
    crate::hub::Hub,
    std::thread::JoinHandle<()>,
    Reader,
    crate::files::FileStore,
)> {
    let url = config.postgres.as_deref().expect("validated");
    let node = config.node_id.as_deref().expect("validated");
    crate::store::postgres::open(url)
        .await
        .context("preparing the cluster's PostgreSQL")?;
    let mut cluster = crate::cluster::connect(config).await?;
    throttle.announce_to(cluster.announcer());
    let store = PgStore::new(url, node, tokio::runtime::Handle::current());
    // The hub's start reads PostgreSQL the way the hub does: blocking, off the runtime.
    let (link, hub_config) = (cluster.link(), config.clone());
    let hub_monitor = monitor.clone();
    let (hub, thread) = tokio::task::spawn_blocking(move || {
        crate::hub::spawn(Box::new(store), &hub_config, Some(link), hub_monitor)
    })
    .await??;
    let hub_sink = Arc::new(hub.clone());
    cluster
        .run(config, hub_sink, stop, throttle, &monitor.metrics)
        .await?;
    let reader = PgReader::new(url);
    let files = crate::files::FileStore::shared(&config.data_dir, PgBlobs::new(reader.clone()));
    info!(node, "cluster node started");
    Ok((hub, thread, Reader::Shared(reader), files))
}

/// The server without its listeners: the store opened, the hub started, and what every
/// session shares (`parley admin` works on a stopped server's data through this too).
pub(crate) async fn open_core(
    config: Config,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
    tls: Option<Arc<Tls>>,
) -> anyhow::Result<(Arc<Shared>, std::thread::JoinHandle<()>, CancellationToken)> {
    let passwords = crate::auth::Passwords::new(&config).await?;
    // The cluster's tasks stop after the hub: what the last sessions' ends publish goes out.
    let cluster_stop = CancellationToken::new();
    let throttle = Arc::new(crate::throttle::Throttle::new(&config));
    let (hub, hub_thread, reader, files) = match config.cluster {
        false => {
            let store = SqliteStore::open(&config.data_dir, config.sync)?;
            let (index, log, deletions) = (store.index(), store.log(), store.deletions());
            monitor.metrics.watch_log(log.clone());
            let (hub, thread) = crate::hub::spawn(Box::new(store), &config, None, monitor.clone())?;
            let reader = Reader::Local(SqliteReader::new(&config.data_dir, index, log, deletions));
            let files = crate::files::FileStore::new(&config.data_dir);
            (hub, thread, reader, files)
        }
        true => {
            let (stop, throttle) = (cluster_stop.clone(), throttle.clone());
            start_node(&config, stop, monitor.clone(), throttle).await?
        }
    };
    let shared = Arc::new(Shared {
        throttle,
        logs: Default::default(),
        passwords,
        per_ip: Default::default(),
        tls,
        files,
        reader,
        hub: hub.clone(),
        progress_sink: Arc::new(Sink {
            hub,
            monitor: monitor.clone(),
        }),
        monitor,
        stop_accepting: shutdown.child_token(),
        shutdown,
        next_session: AtomicU64::new(1),
        seats: Semaphore::new(config.max_connections),
        catchups: Arc::new(crate::catchup::Gate::new(config.catchups_at_once)),
        live: crate::config::Live::new(&config),
        simpletcp: Default::default(),
        config,
    });
    Ok((shared, hub_thread, cluster_stop))
}

/// Stops the hub (it commits what is left and saves the message index) and waits for it.
pub(crate) async fn close_core(
    shared: Arc<Shared>,
    hub_thread: std::thread::JoinHandle<()>,
) -> anyhow::Result<()> {
    shared.hub.shutdown();
    shared.logs.report();
    drop(shared);
    tokio::task::spawn_blocking(move || hub_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the hub thread panicked"))
}

/// Where writers report: what devices received goes to the hub (their cursors), what was
/// written to the metrics.
struct Sink {
    hub: crate::hub::Hub,
    monitor: Arc<Monitor>,
}

impl ProgressSink for Sink {
    fn received(&self, device: DeviceId, progress: Vec<(ConvId, Seq)>) {
        self.hub.cursors(device, progress);
    }

    fn wrote(&self, protocol: Protocol, messages: usize, bytes: usize) {
        let hot = &self.monitor.metrics.hot;
        hot.wrote(protocol, messages as u64, bytes as u64);
    }
}
