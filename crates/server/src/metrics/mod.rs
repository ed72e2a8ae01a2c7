//! What an operator watches: counters, gauges and histograms in Prometheus's text format
//! (`/metrics`, see `http/monitor.rs`), through `metrics` and its Prometheus exporter.
//!
//! Each server owns its recorder (none is installed globally), so two servers in one
//! process (the tests) count apart, and the code that counts holds the handles themselves:
//! an increment is one relaxed atomic add, with no lookup by name.
//!
//! Counting must cost nothing measurable on the message path (docs/PERFORMANCE.md), so it
//! is done where work is already done in bulk, never per message with an atomic every core
//! writes to:
//! - the hub thread counts a batch's stored messages, its size and its commit time once per
//!   batch (it is the only writer of those: no contention);
//! - a writer counts the messages and bytes of a write once per write call (one system call
//!   carries dozens of messages at load), and a session the bytes of a read once per read
//!   call, each in a slot of its thread's (`shards.rs`), summed when scraped;
//! - connections, logins, slow consumers and catch-ups are counted once per event.
//!
//! What is cheaper to measure when asked (the store's size, damaged records found in the
//! message log, the process's CPU time, memory and open files) is read when `/metrics` is
//! scraped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::outbound::Protocol;
use crate::store::MessageLog;

mod shards;

pub use shards::Hot;
use shards::Shards;

/// Every protocol a session speaks, in [`PerProtocol`]'s order.
const PROTOCOLS: [Protocol; 3] = [Protocol::Binary, Protocol::Text, Protocol::Json];

/// One handle per protocol, labelled `protocol="binary|text|json"`.
pub struct PerProtocol<T>([T; 3]);

impl<T> PerProtocol<T> {
    pub fn of(&self, protocol: Protocol) -> &T {
        &self.0[match protocol {
            Protocol::Binary => 0,
            Protocol::Text => 1,
            Protocol::Json => 2,
        }]
    }
}

/// Why a login failed (`parley_login_failures_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub enum LoginFailure {
    /// A wrong name or password, or an unknown, expired or revoked token.
    Credentials,
    /// Refused by the login throttle before any check.
    Throttled,
    /// Refused by the hub: the name is online, taken, disabled, or an account.
    Refused,
}

/// The server's metrics (see the module doc for where each is counted).
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    data_dir: PathBuf,
    /// Open connections by protocol (`http` apart).
    pub connections: PerProtocol<Gauge>,
    pub http_connections: Gauge,
    pub logins: PerProtocol<Counter>,
    login_failures: [Counter; 3],
    /// Messages stored, by the sender's protocol.
    pub stored: PerProtocol<Counter>,
    /// Bytes read and written, messages written to sockets (live pushes and catch-up): added
    /// per thread (`hot`), copied into their counters when scraped.
    pub hot: Shards,
    hot_counters: [(Hot, PerProtocol<Counter>); 3],
    pub slow_consumers: Counter,
    /// Operations per hub batch.
    pub batch_size: Histogram,
    /// Time of a batch's store commit.
    pub commit_seconds: Histogram,
    pub commit_failures: Counter,
    /// Sessions replaying what they missed, and the messages they have still to read.
    pub catchup_sessions: Gauge,
    pub catchup_backlog: Gauge,
    pub replayed: Counter,
    /// Messages a cluster node's hub read back from PostgreSQL to fill gaps.
    pub cluster_gap_read: Counter,
    /// The most of them one batch read.
    pub cluster_gap_read_most: Gauge,
    /// A cluster node's reconnections to NATS (and drops), and the discoveries they made.
    pub cluster_resyncs: Counter,
    pub cluster_discoveries: Counter,
    /// Times a cluster node read all of moderation again (it missed more changes than its
    /// log held), and the count of moderation's changes it has applied.
    pub cluster_moderation_reads: Counter,
    pub cluster_moderation_version: Gauge,
    /// Empty messages a cluster node asked PostgreSQL about: written before messages said
    /// whether they are tombstones.
    pub cluster_tombstone_reads: Counter,
    store_bytes: [(&'static str, Gauge); 3],
    files_bytes: Gauge,
    /// The message log once opened (none on a cluster node), and its damaged stretches.
    log: OnceLock<Arc<MessageLog>>,
    store_damaged: Counter,
    ready: Gauge,
}

/// The buckets of the batch-size histogram (operations per batch; at most `batch_max`).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// The buckets of the commit-time histogram, in seconds (50 µs to 1 s).
const COMMIT_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

impl Metrics {
    /// A fresh set of metrics for a server whose data is in `data_dir`.
    pub fn new(data_dir: &Path) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("parley_hub_batch_size".into()), BATCH_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("parley_store_commit_seconds".into()),
                    COMMIT_BUCKETS,
                )
            })
            .expect("non-empty bucket lists")
            .build_recorder();
        let r = Registrar(&recorder);
        let per_protocol = |name: &'static str, help: &'static str, unit| {
            r.describe(name, help, unit);
            PerProtocol(PROTOCOLS.map(|p| r.counter(name, &[("protocol", p.name())])))
        };
        let logins = per_protocol(
            "parley_logins_total",
            "Successful logins, by protocol.",
            None,
        );
        let stored = per_protocol(
            "parley_messages_stored_total",
            "Messages stored (acknowledged to their sender), by the sender's protocol.",
            None,
        );
        let delivered = per_protocol(
            "parley_messages_delivered_total",
            "Messages written to recipients' sockets (live and catch-up), by protocol.",
            None,
        );
        let bytes_in = per_protocol(
            "parley_received_bytes_total",
            "Bytes read from clients, by protocol.",
            Some(Unit::Bytes),
        );
        let bytes_out = per_protocol(
            "parley_sent_bytes_total",
            "Bytes written to clients, by protocol.",
            Some(Unit::Bytes),
        );
        r.describe(
            "parley_connections",
            "Open connections, by protocol (http: HTTP connections not upgraded to a session).",
            None,
        );
        let connections = PerProtocol(
            PROTOCOLS.map(|p| r.gauge("parley_connections", &[("protocol", p.name())])),
        );
        let http_connections = r.gauge("parley_connections", &[("protocol", "http")]);
        r.describe(
            "parley_login_failures_total",
            "Failed logins: credentials (wrong password or token), throttled, refused (by the hub).",
            None,
        );
        let login_failures = ["credentials", "throttled", "refused"]
            .map(|reason| r.counter("parley_login_failures_total", &[("reason", reason)]));
        r.describe(
            "parley_slow_consumer_disconnects_total",
            "Sessions disconnected because their outbound queue filled.",
            None,
        );
        r.describe(
            "parley_hub_batch_size",
            "Operations the hub applied per batch (group commit).",
            None,
        );
        r.describe(
            "parley_store_commit_seconds",
            "Time of one batch's store commit (rows and message log).",
            Some(Unit::Seconds),
        );
        r.describe(
            "parley_store_commit_failures_total",
            "Batches whose commit failed (every request in them was answered with an error).",
            None,
        );
        r.describe(
            "parley_catchup_sessions",
            "Sessions replaying what their device missed.",
            None,
        );
        r.describe(
            "parley_catchup_backlog_messages",
            "Messages the catching-up sessions have still to read.",
            None,
        );
        r.describe(
            "parley_catchup_read_total",
            "Messages read from the store for devices catching up.",
            None,
        );
        r.describe(
            "parley_cluster_gap_read_total",
            "Messages a cluster node's hub read back from PostgreSQL: gaps NATS left, or \
             what a member here has not been given yet.",
            None,
        );
        r.describe(
            "parley_cluster_gap_read_batch_most",
            "The most messages a cluster node's hub read back from PostgreSQL in one batch.",
            None,
        );
        r.describe(
            "parley_cluster_nats_resyncs_total",
            "A cluster node's reconnections to NATS, and the times NATS dropped messages for it.",
            None,
        );
        r.describe(
            "parley_cluster_discoveries_total",
            "Reads of the conversations and rooms of every user online here that the node may \
             have missed while NATS was away (once per resync).",
            None,
        );
        r.describe(
            "parley_cluster_moderation_reads_total",
            "Times a cluster node read all of moderation again, having missed changes its \
             moderation log no longer held.",
            None,
        );
        r.describe(
            "parley_cluster_tombstone_reads_total",
            "Empty messages a cluster node asked PostgreSQL whether they are deletions' \
             tombstones (written by an earlier parley, which did not say).",
            None,
        );
        r.describe(
            "parley_cluster_moderation_version",
            "The count of moderation's changes a cluster node has applied.",
            None,
        );
        r.describe(
            "parley_store_bytes",
            "Size of the store's files: database, wal, log (messages), files (uploads).",
            Some(Unit::Bytes),
        );
        r.describe(
            "parley_store_damaged_records_total",
            "Damaged stretches of the message log found since the start (skipped at start, or \
             failing their check when read): their messages are lost; parley check lists them.",
            None,
        );
        r.describe(
            "parley_ready",
            "1 once the server accepts connections, 0 while it starts or shuts down.",
            None,
        );
        let store_bytes = [
            ("database", "parley.db"),
            ("wal", "parley.db-wal"),
            ("log", "messages.log"),
        ]
        .map(|(kind, file)| (file, r.gauge("parley_store_bytes", &[("file", kind)])));
        let metrics = Metrics {
            handle: recorder.handle(),
            process: metrics_process::Collector::default(),
            data_dir: data_dir.to_path_buf(),
            connections,
            http_connections,
            logins,
            login_failures,
            stored,
            hot: Shards::default(),
            hot_counters: [
                (Hot::BytesIn, bytes_in),
                (Hot::BytesOut, bytes_out),
                (Hot::Delivered, delivered),
            ],
            slow_consumers: r.counter("parley_slow_consumer_disconnects_total", &[]),
            batch_size: r.histogram("parley_hub_batch_size"),
            commit_seconds: r.histogram("parley_store_commit_seconds"),
            commit_failures: r.counter("parley_store_commit_failures_total", &[]),
            catchup_sessions: r.gauge("parley_catchup_sessions", &[]),
            catchup_backlog: r.gauge("parley_catchup_backlog_messages", &[]),
            replayed: r.counter("parley_catchup_read_total", &[]),
            cluster_gap_read: r.counter("parley_cluster_gap_read_total", &[]),
            cluster_gap_read_most: r.gauge("parley_cluster_gap_read_batch_most", &[]),
            cluster_resyncs: r.counter("parley_cluster_nats_resyncs_total", &[]),
            cluster_discoveries: r.counter("parley_cluster_discoveries_total", &[]),
            cluster_moderation_reads: r.counter("parley_cluster_moderation_reads_total", &[]),
            cluster_moderation_version: r.gauge("parley_cluster_moderation_version", &[]),
            cluster_tombstone_reads: r.counter("parley_cluster_tombstone_reads_total", &[]),
            store_bytes,
            files_bytes: r.gauge("parley_store_bytes", &[("file", "files")]),
            log: OnceLock::new(),
            store_damaged: r.counter("parley_store_damaged_records_total", &[]),
            ready: r.gauge("parley_ready", &[]),
            recorder,
        };
        metrics::with_local_recorder(&metrics.recorder, || metrics.process.describe());
        metrics
    }

    pub fn login_failed(&self, why: LoginFailure) {
        self.login_failures[why as usize].increment(1);
    }

    /// Watches the message log for damage from now on (the metrics exist before the store
    /// is opened).
    pub fn watch_log(&self, log: Arc<MessageLog>) {
        let _ = self.log.set(log);
    }

    /// Records whether the server is ready (`/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(f64::from(u8::from(ready)));
    }

    /// The metrics in Prometheus's text format, with what is measured when asked brought
    /// up to date first. Reads the file system: call it off the async threads.
    pub fn render(&self) -> String {
        for (what, counters) in &self.hot_counters {
            for protocol in PROTOCOLS {
                counters
                    .of(protocol)
                    .absolute(self.hot.total(*what, protocol));
            }
        }
        for (file, gauge) in &self.store_bytes {
            let len = std::fs::metadata(self.data_dir.join(file)).map_or(0, |m| m.len());
            gauge.set(len as f64);
        }
        self.files_bytes
            .set(dir_size(&self.data_dir.join("files"), 3) as f64);
        if let Some(log) = self.log.get() {
            self.store_damaged.absolute(log.damaged_found());
        }
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets. Run every few seconds: samples
    /// wait in a list until then, so without it an unscraped server's list would grow.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// How often [`Metrics::upkeep`] runs.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The bytes of the files under `dir`, `depth` levels down (the file store is
/// `files/<2 hex>/<sha256>`; a damaged or missing directory counts as empty).
fn dir_size(dir: &Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            Ok(t) if t.is_dir() && depth > 1 => dir_size(&entry.path(), depth - 1),
            _ => 0,
        })
        .sum()
}

/// Registers handles with one recorder.
struct Registrar<'r>(&'r PrometheusRecorder);

impl Registrar<'_> {
    fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
        let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
        Key::from_parts(name, labels)
    }

    fn describe(&self, name: &'static str, help: &'static str, unit: Option<Unit>) {
        // One call describes a name whatever its kind: the exporter keeps one table.
        self.0
            .describe_counter(name.into(), unit, SharedString::const_str(help));
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.0.register_counter(&Self::key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.0.register_gauge(&Self::key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str) -> Histogram {
        self.0.register_histogram(&Self::key(name, &[]), &METADATA)
    }
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);

#[cfg(test)]
mod tests {
    use super::*;

    /// Each server counts apart, and what is counted is rendered under its name and labels.
    #[test]
    fn two_servers_count_apart_and_render_prometheus_text() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Metrics::new(dir.path()), Metrics::new(dir.path()));
        a.stored.of(Protocol::Text).increment(3);
        a.login_failed(LoginFailure::Throttled);
        a.commit_seconds.record(0.003);
        b.stored.of(Protocol::Text).increment(1);
        std::fs::write(dir.path().join("messages.log"), [0; 100]).unwrap();
        let text = a.render();
        assert!(
            text.contains("parley_messages_stored_total{protocol=\"text\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("parley_login_failures_total{reason=\"throttled\"} 1\n"));
        assert!(text.contains("parley_login_failures_total{reason=\"credentials\"} 0\n"));
        assert!(
            text.contains("parley_store_commit_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("parley_store_bytes{file=\"log\"} 100\n"));
        assert!(text.contains("# HELP parley_messages_stored_total Messages stored"));
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "));
        assert!(text.contains("process_max_fds "));
        assert!(b
            .render()
            .contains("parley_messages_stored_total{protocol=\"text\"} 1\n"));
    }
}
