//! Servers spawned as child processes of the current executable (`parley serve`, `parley
//! bench relay`), each on 127.0.0.1 port 0.
//!
//! A child learns its port from the kernel and logs it; we read it from the child's stderr,
//! then keep draining stderr in a thread (a full pipe would block the server) and keep the
//! warnings it logs, which are part of what a run found. Dropping a `Server` kills the child
//! by its PID, so no server outlives the bench, even when a workload fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

/// Warning lines kept for the summary.
const KEEP_WARNINGS: usize = 5;

/// A server running as a child process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    log: Arc<Mutex<(u64, Vec<String>)>>,
    /// The parley server's fresh data directory, removed after the child is gone.
    _data: Option<TempDir>,
}

impl Server {
    /// `parley serve` on a fresh data directory.
    ///
    /// Some settings differ from the defaults, all of them abuse limits that would otherwise
    /// be what is measured: no command rate limit for text and JSON (`commands_per_second`),
    /// no message rate limit per session (`messages_per_second`), no limit of connections
    /// per IP address (every bench connection comes from 127.0.0.1), and no idle timeout
    /// (fanout members only listen). Logging stays at the default `info`. `exe` is another
    /// parley executable to run instead of this one (`--parley-exe`).
    pub fn parley(exe: Option<&Path>) -> anyhow::Result<Server> {
        let data = tempfile::tempdir().context("creating a data directory")?;
        let exe = match exe {
            Some(exe) => exe.to_path_buf(),
            None => std::env::current_exe()?,
        };
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data.path())
            .env("PARLEY_LOG", "info")
            .env("PARLEY_COMMANDS_PER_SECOND", "0")
            .env("PARLEY_MESSAGES_PER_SECOND", "0")
            .env("PARLEY_MAX_CONNECTIONS_PER_IP", "0")
            .env("PARLEY_IDLE_TIMEOUT_MS", "0")
            .env("PARLEY_JSON_IDLE_TIMEOUT_MS", "0")
            .env_remove("PARLEY_CONFIG");
        Server::start(cmd, "parley listening", Some(data))
    }

    /// `parley bench relay`.
    pub fn relay() -> anyhow::Result<Server> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["bench", "relay", "--listen", "127.0.0.1:0"]);
        Server::start(cmd, "relay listening", None)
    }

    fn start(mut cmd: Command, marker: &str, data: Option<TempDir>) -> anyhow::Result<Server> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning a server")?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new((0u64, Vec::new())));
        let (tx, rx) = mpsc::channel();
        let marker = marker.to_string();
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(&marker) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(listen_addr(&line));
                    }
                }
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    let mut kept = kept.lock().expect("not poisoned");
                    kept.0 += 1;
                    if kept.1.len() < KEEP_WARNINGS {
                        kept.1.push(line);
                    }
                }
            }
        });
        let pid = child.id();
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().expect("valid"),
            pid,
            log,
            _data: data,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => server.addr = addr,
            Ok(None) => bail!("the server's listening line has no address"),
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                bail!("the server did not say where it listens (exit status {status:?})")
            }
        }
        Ok(server)
    }

    /// Where a workload finds this server.
    pub fn at(&self, relay: bool) -> crate::At {
        crate::At {
            addr: self.addr,
            pid: Some(self.pid),
            relay,
        }
    }

    /// How many warning or error lines the server logged, and the first few.
    pub fn warnings(&self) -> (u64, Vec<String>) {
        self.log.lock().expect("not poisoned").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `addr=` in a log line.
fn listen_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("addr=")? + 5..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_address_in_a_log_line() {
        let line = "2026-01-01T00:00:00Z  INFO parley_server::server: parley listening \
                    addr=127.0.0.1:4567 protocol=\"every protocol\"";
        assert_eq!(
            super::listen_addr(line),
            Some("127.0.0.1:4567".parse().unwrap())
        );
    }
}
