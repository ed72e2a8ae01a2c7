//! A `parley` child process as the tests run it: started with flags, its stderr collected,
//! signalled by its PID, killed (and reaped) when its guard drops, also when a test fails.
//! Every wait is bounded.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a start may take before the server must have logged that it started.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A `parley` command with a clean `PARLEY_*` environment, logging at info on a pipe.
pub fn parley_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parley"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PARLEY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env("PARLEY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// One port the server listens on, from its `parley listening` line.
#[derive(Debug, Clone)]
pub struct Listening {
    /// `every protocol`, `json`, `text`, `binary` or `tls`.
    pub protocol: String,
    pub addr: SocketAddr,
}

/// A child process of ours. Dropping it kills the child (if it still runs) and reaps it.
pub struct Proc {
    pub child: Child,
    /// Every stderr line so far (drained by a background thread until the pipe closes).
    pub log: Arc<Mutex<Vec<String>>>,
    lines: Option<mpsc::Receiver<String>>,
    drain: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn parley");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                // Nobody listens any more once the start is seen: keep draining.
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            log,
            lines: Some(rx),
            drain: Some(drain),
            status: None,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Sends `signal` to the child, which must not have been reaped yet.
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(self.status.is_none(), "signalling a reaped child");
        // SAFETY: kill(2) with the PID of our own child, not yet waited for, so the PID
        // cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Reads stderr until the server says it started; returns every port it listens on,
    /// in the order it logged them (the shared port first).
    pub fn wait_for_start(&mut self) -> Vec<Listening> {
        let rx = self.lines.take().expect("start already read");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ports = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("parley started") => return ports,
                Ok(line) if line.contains("parley listening") => {
                    ports.push(listening(&line).unwrap_or_else(|| panic!("bad line {line:?}")))
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("not started within {START_TIMEOUT:?}:\n{}", self.logs())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    panic!(
                        "parley exited ({status}) before it started:\n{}",
                        self.logs()
                    )
                }
            }
        }
    }

    /// Waits for the child to exit, at most `timeout` (panics past it).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status {
                return status;
            }
            match self.child.try_wait().expect("try_wait") {
                Some(status) => {
                    self.status = Some(status);
                    // The pipe is closed now: let the drain thread read the last lines.
                    if let Some(drain) = self.drain.take() {
                        let _ = drain.join();
                    }
                }
                None if Instant::now() >= deadline => {
                    panic!("parley still running after {timeout:?}:\n{}", self.logs())
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The port in a `parley listening addr=127.0.0.1:5555 protocol="every protocol"` line.
/// (Or the same line in `--log-format json`.)
fn listening(line: &str) -> Option<Listening> {
    if line.starts_with('{') {
        let line: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &line["fields"];
        return Some(Listening {
            protocol: fields["protocol"].as_str()?.to_string(),
            addr: fields["addr"].as_str()?.parse().ok()?,
        });
    }
    let addr = line.split_once("addr=")?.1.split_whitespace().next()?;
    let protocol = line.split_once("protocol=")?.1.trim().trim_matches('"');
    Some(Listening {
        protocol: protocol.to_string(),
        addr: addr.parse().ok()?,
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Ok(None) = self.child.try_wait() {
                // SIGKILL to our child's PID (it has not been reaped, so it is still ours).
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- parley (pid {}) stderr ---\n{}",
                self.child.id(),
                self.logs()
            );
        }
    }
}
