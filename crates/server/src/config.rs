//! Every setting of the server, with safe defaults.
//!
//! The `parley` binary fills this from a TOML file, `PARLEY_*` environment variables and
//! command-line flags (in rising priority); tests build it directly.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Directory holding the database (created if missing).
    pub data_dir: PathBuf,
    /// Largest binary frame accepted, in bytes (length prefix value).
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
    /// Commands per second a text or JSON connection may send (twice that in a burst);
    /// faster ones are slowed down, not refused.
    pub commands_per_second: u32,
    /// Most messages one history request returns.
    pub max_history: usize,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Frames a session may have queued for its socket before it counts as a slow consumer
    /// and is disconnected (its messages stay in the log for its next login).
    pub outbound_queue: usize,
    /// Requests one session may have in flight (pipelined) before the server stops reading
    /// from it until some are answered.
    pub max_inflight: usize,
    /// How long a login of a name that is online elsewhere waits for that other connection
    /// to finish closing before it is refused, in milliseconds.
    pub login_grace_ms: u64,
    /// How long a graceful shutdown waits for sessions to flush, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Most operations committed in one store transaction (group commit).
    pub batch_max: usize,
    /// Durability of each commit.
    pub sync: SyncMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5555".parse().expect("valid default address"),
            listen_json: None,
            listen_text: None,
            listen_binary: None,
            data_dir: PathBuf::from("parley-data"),
            max_frame_bytes: 64 * 1024,
            max_name_bytes: 32,
            max_line_bytes: 8 * 1024,
            idle_timeout_ms: 60_000,
            json_idle_timeout_ms: 300_000,
            commands_per_second: 100,
            max_history: 1000,
            max_connections: 19_000,
            outbound_queue: 4096,
            max_inflight: 256,
            login_grace_ms: 200,
            shutdown_timeout_ms: 10_000,
            batch_max: 4096,
            sync: SyncMode::Normal,
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
        anyhow::ensure!(self.max_inflight > 0, "max_inflight must be positive");
        anyhow::ensure!(self.batch_max > 0, "batch_max must be positive");
        Ok(())
    }

    pub(crate) fn login_grace(&self) -> Duration {
        Duration::from_millis(self.login_grace_ms)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}
