//! Every setting of the server, with safe defaults.
//!
//! The `parley` binary fills this from a TOML file, `PARLEY_*` environment variables and
//! command-line flags (in rising priority); tests build it directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How hard the store pushes each commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// WAL with `synchronous=NORMAL`: a committed message survives a crash or kill of the
    /// server process; the last commits may be lost if the whole machine loses power.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: every commit is fsynced, surviving power loss too.
    Full,
}

/// Server settings. Field names are the TOML keys and, upper-cased with a `PARLEY_` prefix,
/// the environment variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the shared port (every protocol, chosen by the first bytes).
    pub listen: SocketAddr,
    /// Optional port serving only JSON lines, where the server speaks first (seed 001's
    /// clients wait for a welcome line before they send anything).
    pub listen_json: Option<SocketAddr>,
    /// Optional port serving only the text protocol.
    pub listen_text: Option<SocketAddr>,
    /// Optional port serving only the binary protocol.
    pub listen_binary: Option<SocketAddr>,
    /// Optional port serving only HTTP (the web app, files, WebSocket), plain.
    pub listen_http: Option<SocketAddr>,
    /// Optional port serving seed 003's framed JSON (Simple-TCP-Server's clients; the
    /// seed's own port is 20706). Never sniffed on the shared port: its first bytes are a
    /// binary length that can look like anything.
    pub listen_simpletcp: Option<SocketAddr>,
    /// Origins whose pages may open the WebSocket at `/ws`, besides the server's own
    /// (`*`: any), e.g. `["https://chat.example.org"]`.
    pub web_origins: Vec<String>,
    /// Optional private port serving only `/metrics`, `/healthz` and `/readyz` (plain
    /// HTTP), from the server's first moment on. When set, `/metrics` is served there only.
    pub listen_admin: Option<SocketAddr>,
    /// Directory holding the database (created if missing).
    pub data_dir: PathBuf,
    /// Largest binary frame accepted, in bytes (length prefix value). The default is the
    /// largest legal seed-000 frame (a message of three 65,535-byte strings, 196,626
    /// bytes): every frame a seed client may send is read. A connection's read buffer
    /// grows to the frame it is reading, so this bounds each connection's input memory.
    pub max_frame_bytes: usize,
    /// Longest user or room name, in bytes.
    pub max_name_bytes: usize,
    /// Longest text or JSON line, in bytes; a longer one is discarded and answered with an
    /// error.
    pub max_line_bytes: usize,
    /// A text connection that sends nothing for this long is told so and closed (ms; 0:
    /// never).
    pub idle_timeout_ms: u64,
    /// The same for JSON connections (ms; 0: never).
    pub json_idle_timeout_ms: u64,
    /// The same for binary connections, silently: generous, since a binary client that
    /// only listens sends nothing (ms; 0: never). Only complete requests count as activity
    /// for every idle timeout, not bytes.
    pub binary_idle_timeout_ms: u64,
    /// The same for seed-003 (`listen_simpletcp`) connections, silently: long, since the
    /// seed's client keeps its connection open without a request while its user reads,
    /// and does not connect again after the server closes it (ms; 0: never).
    pub simpletcp_idle_timeout_ms: u64,
    /// Bytes of seed-003 file payloads the server holds at once while they arrive, over
    /// every connection (each is held whole until stored): a payload announced past it is
    /// refused and its connection closed, so clients cannot grow memory together.
    pub simpletcp_upload_bytes: u64,
    /// A request (a line, a frame, a WebSocket message) must be complete within this many
    /// ms of its first byte, however its bytes trickle in, or the connection is closed
    /// (0: no limit). An HTTP upload's body may take longer, while no gap between its
    /// bytes is this long.
    pub request_timeout_ms: u64,
    /// Commands per second a text or JSON connection may send (twice that in a burst);
    /// faster ones are slowed down, not refused.
    pub commands_per_second: u32,
    /// Most messages one history request returns.
    pub max_history: usize,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Threads that run the sessions (tokio's workers; 0: one per core). Several nodes
    /// sharing a machine each want fewer than its cores, or they wake each other's threads
    /// more than they work.
    pub worker_threads: usize,
    /// Frames a session may have queued for its socket before it counts as a slow consumer
    /// and is disconnected (its messages stay in the log for its next login).
    pub outbound_queue: usize,
    /// Bytes a session may have queued for its socket (pushes, answers, catch-up together)
    /// before it counts as a slow consumer; its own answers and its catch-up wait while it
    /// holds half of this (the session reads no more requests meanwhile).
    pub outbound_bytes: usize,
    /// A client that takes nothing of what is written to it for this long is a slow
    /// consumer and is disconnected (ms; 0: never).
    pub write_timeout_ms: u64,
    /// Requests one session may have in flight (pipelined) before the server stops reading
    /// from it until some are answered.
    pub max_inflight: usize,
    /// Devices replaying what they missed at once; the others wait their turn (0: two per
    /// core). See `catchup::Gate`.
    pub catchups_at_once: usize,
    /// How long a login of a name that is online elsewhere waits for that other connection
    /// to finish closing before it is refused, in milliseconds.
    pub login_grace_ms: u64,
    /// How long a graceful shutdown waits for sessions to flush, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Most operations committed in one store transaction (group commit).
    pub batch_max: usize,
    /// Delivery progress (cursors) reported by sessions is written at most this long after
    /// it is reported (ms), or sooner once `cursor_flush_messages` messages' worth waits.
    /// After a crash, what was delivered but not yet written is delivered again.
    pub cursor_flush_ms: u64,
    /// Progress of at most this many messages waits to be written (see `cursor_flush_ms`).
    pub cursor_flush_messages: u64,
    /// Rooms one user may create (counted over the server's life); joining existing rooms
    /// is never limited.
    pub max_rooms_per_user: u32,
    /// Rooms the connections of one address may create since the server started (guests
    /// and users alike).
    pub max_rooms_per_address: u32,
    /// Durability of each commit.
    pub sync: SyncMode,
    /// Argon2id cost: memory in KiB, iterations, lanes (OWASP's baseline by default).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Refuse password-less logins of names that are not accounts too.
    pub require_accounts: bool,
    /// Refuse requests that carry a password (register, password login, password change)
    /// on connections without TLS. Off by default: the seeds' clients speak plain TCP.
    pub require_tls_for_passwords: bool,
    /// Allow DMs only between users who accepted each other as contacts.
    pub contacts_only_dms: bool,
    /// The server's operators: accounts (never password-less names) that may moderate
    /// every room, above each room's owner, e.g. `["alice"]`.
    pub operators: Vec<String>,
    /// Longest room topic, in bytes.
    pub max_topic_bytes: usize,
    /// Most users one session may watch for presence pushes (`WATCH`).
    pub max_watched_users: usize,
    /// Most users one name search returns.
    pub max_search_results: usize,
    /// Most entries one page of a listing (users, rooms) holds; a client asks for the
    /// next page by the last name of the one before.
    pub max_list_page: usize,
    /// Largest file accepted for upload, in bytes.
    pub max_file_bytes: u64,
    /// How long a device token stays valid, in seconds (default 30 days).
    pub token_ttl_secs: u64,
    /// Failed logins of one name from one address before that pair backs off (see
    /// `throttle.rs` for the whole policy).
    pub login_failures_free: u32,
    /// The pair's first back-off after the free failures, in ms; it doubles with each
    /// failure.
    pub login_backoff_base_ms: u64,
    /// The longest back-off, in ms.
    pub login_backoff_max_ms: u64,
    /// Failed logins from one address, over every name and token (one leaks away a
    /// minute), before its attempts take turns.
    pub login_address_failures_free: u32,
    /// The time between two turns of such an address, in ms; an attempt more than ten
    /// turns away is refused.
    pub login_address_spacing_ms: u64,
    /// The memory the login throttle may hold, in bytes.
    pub login_throttle_bytes: usize,
    /// Most connections from one IP address (0: no limit).
    pub max_connections_per_ip: usize,
    /// Messages per second one session may send (bursts of `message_burst`); more are
    /// refused with a rate-limit error (0: no limit).
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// A binary connection must log in within this many ms or is closed (0: no limit).
    pub login_timeout_ms: u64,
    /// Largest avatar image, in bytes.
    pub max_avatar_bytes: usize,
    /// Longest display name, in bytes.
    pub max_display_name_bytes: usize,
    /// TLS certificate chain and private key (PEM). With both set, a connection whose first
    /// byte is 0x16 on the shared port is TLS, and `listen_tls` serves TLS only. Reloaded
    /// on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Optional port serving only TLS (any protocol inside).
    pub listen_tls: Option<SocketAddr>,
    /// TCP keepalive: a connection silent this long is probed, and closed after 3 probes
    /// 10 s apart go unanswered, so a peer that vanished (no FIN) is noticed and its
    /// undelivered messages wait in the log for its return (s; 0: off).
    pub keepalive_secs: u64,
    /// Run as one node of a cluster: PostgreSQL (`postgres`) is the store, NATS (`nats`)
    /// carries live traffic between nodes; `data_dir` then only holds uploads in progress.
    pub cluster: bool,
    /// The cluster's PostgreSQL, e.g. `postgres://parley@db.internal/parley`.
    pub postgres: Option<String>,
    /// The cluster's NATS, e.g. `nats://nats.internal:4222`.
    pub nats: Option<String>,
    /// This node's name in the cluster (unique: a node restarted under its name takes its
    /// own sessions back).
    pub node_id: Option<String>,
    /// A node's sessions count as online while its lease runs: it is renewed every fifth
    /// of this (ms), and a node that stops renewing has its users offline after it.
    pub cluster_lease_ms: u64,
    /// How often a node compares what it delivered with PostgreSQL (ms): a message lost on
    /// NATS with nothing after it is delivered at most this much later.
    pub cluster_reconcile_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5555".parse().expect("valid default address"),
            listen_json: None,
            listen_text: None,
            listen_binary: None,
            listen_http: None,
            listen_simpletcp: None,
            web_origins: Vec::new(),
            listen_admin: None,
            data_dir: PathBuf::from("parley-data"),
            max_frame_bytes: parley_proto::binary::MAX_MESSAGE_FRAME,
            max_name_bytes: 32,
            max_line_bytes: 8 * 1024,
            idle_timeout_ms: 60_000,
            json_idle_timeout_ms: 300_000,
            binary_idle_timeout_ms: 3_600_000,
            simpletcp_idle_timeout_ms: 86_400_000,
            simpletcp_upload_bytes: 256 << 20,
            request_timeout_ms: 30_000,
            commands_per_second: 100,
            max_history: 1000,
            max_connections: 19_000,
            worker_threads: 0,
            outbound_queue: 4096,
            outbound_bytes: 4 << 20,
            write_timeout_ms: 10_000,
            max_inflight: 256,
            catchups_at_once: 0,
            login_grace_ms: 200,
            shutdown_timeout_ms: 10_000,
            batch_max: 4096,
            cursor_flush_ms: 100,
            cursor_flush_messages: 10_000,
            max_rooms_per_user: 1_000,
            max_rooms_per_address: 10_000,
            sync: SyncMode::Normal,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            require_accounts: false,
            require_tls_for_passwords: false,
            contacts_only_dms: false,
            operators: Vec::new(),
            max_topic_bytes: 512,
            max_watched_users: 256,
            max_search_results: 50,
            max_list_page: 1000,
            max_file_bytes: 100 * 1024 * 1024,
            token_ttl_secs: 30 * 86_400,
            login_failures_free: 3,
            login_backoff_base_ms: 1000,
            login_backoff_max_ms: 900_000,
            login_address_failures_free: 20,
            login_address_spacing_ms: 1000,
            login_throttle_bytes: 8 << 20,
            max_connections_per_ip: 256,
            messages_per_second: 500,
            message_burst: 5000,
            login_timeout_ms: 30_000,
            max_avatar_bytes: 48 * 1024,
            max_display_name_bytes: 64,
            tls_cert: None,
            tls_key: None,
            listen_tls: None,
            keepalive_secs: 30,
            cluster: false,
            postgres: None,
            nats: None,
            node_id: None,
            cluster_lease_ms: 10_000,
            cluster_reconcile_ms: 1_000,
        }
    }
}

impl Config {
    /// Refuses settings the server cannot run with.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_frame_bytes >= 16,
            "max_frame_bytes must be at least 16"
        );
        anyhow::ensure!(
            (1..=255).contains(&self.max_name_bytes),
            "max_name_bytes must be between 1 and 255"
        );
        anyhow::ensure!(
            (64..=60_000).contains(&self.max_line_bytes),
            "max_line_bytes must be between 64 and 60000"
        );
        anyhow::ensure!(self.max_history > 0, "max_history must be positive");
        anyhow::ensure!(self.max_connections > 0, "max_connections must be positive");
        anyhow::ensure!(self.outbound_queue > 0, "outbound_queue must be positive");
        anyhow::ensure!(
            self.outbound_bytes >= 64 * 1024,
            "outbound_bytes must be at least 65536"
        );
        anyhow::ensure!(self.max_inflight > 0, "max_inflight must be positive");
        anyhow::ensure!(self.batch_max > 0, "batch_max must be positive");
        anyhow::ensure!(
            self.cursor_flush_messages > 0,
            "cursor_flush_messages must be positive"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key go together"
        );
        anyhow::ensure!(
            self.listen_tls.is_none() || self.tls_cert.is_some(),
            "listen_tls needs tls_cert and tls_key"
        );
        if self.cluster {
            anyhow::ensure!(
                self.postgres.is_some() && self.nats.is_some(),
                "cluster mode needs postgres and nats (--postgres URL --nats URL)"
            );
            let node = self.node_id.as_deref().unwrap_or_default();
            anyhow::ensure!(
                !node.is_empty() && node.len() <= 64 && !node.chars().any(char::is_control),
                "cluster mode needs a node id (--node-id ID, at most 64 bytes)"
            );
            anyhow::ensure!(
                self.cluster_lease_ms >= 500,
                "cluster_lease_ms must be at least 500"
            );
            anyhow::ensure!(
                self.cluster_reconcile_ms >= 50,
                "cluster_reconcile_ms must be at least 50"
            );
        }
        anyhow::ensure!(
            !self.require_tls_for_passwords || self.tls_cert.is_some(),
            "require_tls_for_passwords needs tls_cert and tls_key"
        );
        anyhow::ensure!(
            self.max_avatar_bytes <= 60_000,
            "max_avatar_bytes must fit a binary frame (at most 60000)"
        );
        Ok(())
    }

    pub(crate) fn login_grace(&self) -> Duration {
        Duration::from_millis(self.login_grace_ms)
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// The settings a reload (admin/control.rs) changes that are read outside the hub, where
/// they are read.
#[derive(Debug)]
pub struct Live {
    max_connections_per_ip: AtomicUsize,
}

impl Live {
    pub fn new(config: &Config) -> Live {
        Live {
            max_connections_per_ip: AtomicUsize::new(config.max_connections_per_ip),
        }
    }

    /// Most connections from one address (0: no limit), as last configured.
    pub fn max_connections_per_ip(&self) -> usize {
        self.max_connections_per_ip.load(Ordering::Relaxed)
    }

    /// Takes the live settings of `config`; returns the names of those it applies.
    pub(crate) fn apply(&self, config: &Config) -> Vec<&'static str> {
        let limit = config.max_connections_per_ip;
        self.max_connections_per_ip.store(limit, Ordering::Relaxed);
        vec![
            "max_connections_per_ip",
            "require_accounts",
            "contacts_only_dms",
        ]
    }
}
