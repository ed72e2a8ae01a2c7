//! `server stats | reload | drain`: the server itself.
//!
//! **Reload** (also SIGHUP, when the binary asks for it) reads the TLS certificate and key
//! again, and, when the server was given a way to read its configuration again (the
//! `parley` binary gives it the file, the environment and the flags it started with),
//! applies the settings that are safe to change live: `require_accounts`,
//! `contacts_only_dms` (the hub's rules, from its next batch) and `max_connections_per_ip`
//! (from the next connection). It names every other changed setting as needing a restart:
//! ports, the data directory, the store's settings and the sizes sessions were built with.
//!
//! **Drain** (lame duck): the server stops accepting and reports not ready (`/readyz`), then
//! ends its sessions gracefully, spread over the first half of the timeout (at most 10 s)
//! so that they do not all reconnect elsewhere at once, each told to reconnect elsewhere
//! where its protocol can say so (text: `INFO reconnect: ...`; JSON: a `reconnect` event;
//! WebSocket: close code 1001; binary: the connection closes). Once no session is left, or
//! at the timeout, it shuts down as on SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::users::refused;
use super::{Answer, Ctx, Failure};
use crate::config::Config;
use crate::hub::{AdminAnswer, AdminOp, Whom};
use crate::monitor::Phase;
use crate::outbound::Kill;
use crate::session::Shared;

/// Reads the configuration again, as the server was started (the `parley` binary's file,
/// environment and flags).
pub type ReloadConfig = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// What only a running server has: its shutdown, and how it reloads.
pub struct Control {
    shutdown: CancellationToken,
    reload_config: Option<ReloadConfig>,
    started: Instant,
    draining: AtomicBool,
}

/// Settings a reload changes live; the others need a restart.
const LIVE: &[&str] = &[
    "require_accounts",
    "contacts_only_dms",
    "max_connections_per_ip",
    "tls_cert",
    "tls_key",
];

impl Control {
    pub fn new(shutdown: CancellationToken, reload_config: Option<ReloadConfig>) -> Control {
        Control {
            shutdown,
            reload_config,
            started: Instant::now(),
            draining: AtomicBool::new(false),
        }
    }

    /// Reloads what can be reloaded (see the module doc); says what was and what needs a
    /// restart. `by` names who asked, for the log (`SIGHUP`, `admin`).
    pub async fn reload(&self, shared: &Shared, by: &str) -> Answer {
        let mut done = Map::new();
        if let Some(tls) = &shared.tls {
            match tls.reload() {
                Ok(()) => info!("{by}: TLS certificate reloaded"),
                Err(e) => {
                    let e = format!("{e:#}");
                    warn!(error = %e, "{by}: keeping the old certificate");
                    return Err(Failure(format!("TLS certificate: {e}")));
                }
            }
            done.insert("tls".into(), "reloaded".into());
        }
        let Some(read) = &self.reload_config else {
            return Ok(done.into());
        };
        let new = read().map_err(|e| Failure(format!("reading the configuration: {e:#}")))?;
        new.validate()
            .map_err(|e| Failure(format!("the new configuration: {e:#}")))?;
        let live = shared.live.apply(&new);
        let op = AdminOp::Rules {
            require_accounts: new.require_accounts,
            contacts_only_dms: new.contacts_only_dms,
        };
        shared.hub.admin(op).await.map_err(refused)?;
        let restart = changed(&shared.config, &new)
            .into_iter()
            .filter(|key| !LIVE.contains(&key.as_str()))
            .collect::<Vec<_>>();
        if !restart.is_empty() {
            warn!(settings = ?restart, "{by}: these settings take effect at the next start");
        }
        info!(?live, "{by}: configuration applied");
        done.insert("applied".into(), json!(live));
        done.insert("restart_needed".into(), json!(restart));
        Ok(done.into())
    }

    /// Starts draining (see the module doc); answers at once.
    pub async fn drain(&self, shared: &Arc<Shared>, timeout: Duration) -> Answer {
        if self.draining.swap(true, Ordering::AcqRel) {
            return Err(Failure("already draining".into()));
        }
        shared.monitor.advance(Phase::Draining);
        shared.stop_accepting.cancel();
        let sessions = session_ids(shared).await?;
        info!(
            sessions = sessions.len(),
            ?timeout,
            "draining: stopped accepting"
        );
        tokio::spawn(drain(
            shared.clone(),
            self.shutdown.clone(),
            sessions.clone(),
            timeout,
        ));
        Ok(json!({ "draining": sessions.len(), "timeout_secs": timeout.as_secs() }))
    }
}

/// Every session the hub knows (logged in, or counted as anonymous).
async fn session_ids(shared: &Shared) -> Result<Vec<u64>, Failure> {
    match shared.hub.admin(AdminOp::Sessions).await {
        Ok(AdminAnswer::Sessions(list)) => Ok(list.into_iter().map(|s| s.session).collect()),
        Ok(_) => Err(Failure("unexpected answer".into())),
        Err(kind) => Err(refused(kind)),
    }
}

/// Ends `sessions` in slices over the first half of `timeout` (at most 10 s), waits until
/// the hub knows of no session, then shuts the server down; at `timeout` in any case.
async fn drain(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    sessions: Vec<u64>,
    timeout: Duration,
) {
    const SLICES: usize = 10;
    let deadline = tokio::time::Instant::now() + timeout;
    let spread = (timeout / 2).min(Duration::from_secs(10));
    let per_slice = sessions.len().div_ceil(SLICES).max(1);
    for slice in sessions.chunks(per_slice) {
        let op = AdminOp::End {
            target: Whom::Sessions(slice.to_vec()),
            why: Kill::Draining,
        };
        let _ = shared.hub.admin(op).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(spread / SLICES as u32) => {}
        }
    }
    loop {
        let left = session_ids(&shared).await.map_or(0, |ids| ids.len());
        if left == 0 {
            info!("drained: no session left; shutting down");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(sessions = left, "drain timed out; shutting down");
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    shutdown.cancel();
}

/// The settings whose values differ between `old` and `new`.
fn changed(old: &Config, new: &Config) -> Vec<String> {
    let as_map = |c: &Config| match serde_json::to_value(c) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let (old, new) = (as_map(old), as_map(new));
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(key, value)| old.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect();
    keys.sort();
    keys
}

/// `server stats`: the server's phase and uptime, the hub's counts, connections, store size.
pub async fn stats(ctx: &Ctx) -> Answer {
    let shared = &ctx.shared;
    let hub = match shared.hub.admin(AdminOp::Stats).await {
        Ok(AdminAnswer::Stats(stats)) => serde_json::to_value(stats)?,
        Ok(_) => Value::Null,
        Err(kind) => return Err(refused(kind)),
    };
    let config = &shared.config;
    let dir = &config.data_dir;
    let size = |file: &str| std::fs::metadata(dir.join(file)).map_or(0, |m| m.len());
    let store = json!({
        "database_bytes": size("parley.db"),
        "wal_bytes": size("parley.db-wal"),
        "log_bytes": size("messages.log"),
    });
    let mut stats = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "data_dir": dir.display().to_string(),
        "hub": hub,
        "store": store,
    });
    match &ctx.control {
        Some(control) => {
            let open = config.max_connections - shared.seats.available_permits();
            stats["phase"] = shared.monitor.phase().name().into();
            stats["uptime_secs"] = control.started.elapsed().as_secs().into();
            stats["connections"] = open.into();
            stats["max_connections"] = config.max_connections.into();
        }
        None => stats["phase"] = "stopped".into(),
    }
    Ok(stats)
}

/// `server reload`.
pub async fn reload(ctx: &Ctx) -> Answer {
    let control = ctx.control.as_ref().ok_or_else(running)?;
    control.reload(&ctx.shared, "admin").await
}

/// `server drain`.
pub async fn drain_command(ctx: &Ctx, timeout_secs: u64) -> Answer {
    let control = ctx.control.as_ref().ok_or_else(running)?;
    control
        .drain(&ctx.shared, Duration::from_secs(timeout_secs.max(1)))
        .await
}

fn running() -> Failure {
    Failure("this command needs a running server".into())
}
