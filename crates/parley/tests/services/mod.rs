//! The real services a cluster test needs, as child processes on loopback ports: a private
//! PostgreSQL server (its own throwaway data directory and database) and a nats-server,
//! each stopped, restarted or killed on demand and killed when its guard drops (also when a
//! test fails, and, through the parent-death signal, when the test process dies).
//!
//! Debian's `postgresql` and `nats-server` packages must be installed (`.ci/run` installs
//! them). Without them a test calling [`available`] is skipped with a loud warning, or
//! fails when `PARLEY_REQUIRE_CLUSTER` (or `CI`) is set, as in CI.

// Each test file uses a part of it.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a service may take to start (a shared, busy machine).
const START: Duration = Duration::from_secs(30);

/// Whether PostgreSQL and nats-server can be run here. False only where they may be
/// missing: with `PARLEY_REQUIRE_CLUSTER` or `CI` set a missing one fails the test.
pub fn available() -> bool {
    let missing: Vec<&str> = [
        (
            "PostgreSQL (initdb, postgres)",
            pg_bin("postgres").is_some(),
        ),
        ("nats-server", nats_bin().is_some()),
    ]
    .into_iter()
    .filter(|(_, found)| !found)
    .map(|(name, _)| name)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var_os("PARLEY_REQUIRE_CLUSTER").is_some_and(|v| v != "0")
        || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "{} not installed: the cluster tests cannot run (apt-get install postgresql nats-server)",
        missing.join(" and ")
    );
    eprintln!(
        "WARNING: {} not installed; this cluster test did NOT run",
        missing.join(" and ")
    );
    false
}

/// A PostgreSQL binary (`initdb`, `postgres`, `psql`...): on `PATH`, else in Debian's
/// versioned directory (the highest version).
fn pg_bin(name: &str) -> Option<PathBuf> {
    if let Some(found) = on_path(name) {
        return Some(found);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort_by_key(|d| {
        let version = d.parent().and_then(|v| v.file_name()).unwrap_or_default();
        version.to_string_lossy().parse::<u32>().unwrap_or(0)
    });
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn nats_bin() -> Option<PathBuf> {
    on_path("nats-server").or_else(|| {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A loopback port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// The uid and gid PostgreSQL runs as: `postgres` when we are root (it refuses root),
/// else our own.
fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the postgres user (Debian's postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

/// Makes `cmd` die with us: SIGQUIT (PostgreSQL's immediate shutdown; nats-server quits)
/// when the thread that spawned it exits, if no guard got to kill it first.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A freshly initialised data directory, made once (initdb takes a second or two; a copy a
/// few milliseconds) and kept in the target directory for later runs: made under a name
/// of its own, then renamed into place, so test binaries running at once never see half of
/// one.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = root.join("pg-template");
        if dir.join("PG_VERSION").is_file() {
            return dir;
        }
        let fresh = root.join(format!("pg-template.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&fresh);
        std::fs::create_dir_all(&fresh).unwrap();
        own_for_pg(&fresh);
        let mut cmd = Command::new(pg_bin("initdb").expect("initdb"));
        cmd.args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "-D"])
            .arg(&fresh)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = pg_user() {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if std::fs::rename(&fresh, &dir).is_err() {
            // Another test binary got there first.
            let _ = std::fs::remove_dir_all(&fresh);
        }
        dir
    })
}

/// Gives `path` to the PostgreSQL user (when we are root).
fn own_for_pg(path: &Path) {
    if let Some((uid, gid)) = pg_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown for postgres");
    }
}

/// A private PostgreSQL server on 127.0.0.1 with a database `parley`.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Starts a server on a fresh copy of the template, and creates the database.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        own_for_pg(dir.path());
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(&data)
            .status()
            .expect("cp");
        assert!(status.success(), "copying the template data directory");
        let mut pg = Postgres {
            dir,
            port: free_port(),
            child: None,
        };
        pg.launch();
        pg.psql("postgres", "CREATE DATABASE parley");
        pg
    }

    /// The URL of the `parley` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/parley", self.port)
    }

    fn launch(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(pg_bin("postgres").expect("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // A test server: what it loses in a power cut does not matter, its speed does.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = pg_user() {
            cmd.uid(uid).gid(gid);
        }
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        let deadline = Instant::now() + START;
        loop {
            if self.ready() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited ({status}) before it accepted connections");
            }
            assert!(Instant::now() < deadline, "postgres not ready in {START:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server accepts connections (pg_isready).
    pub fn ready(&self) -> bool {
        Command::new(pg_bin("pg_isready").expect("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `sql` in `database` with psql; panics if it fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(pg_bin("psql").expect("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server with a fast shutdown (connections are cut, nothing is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGINT);
            wait_bounded(&mut child, "postgres");
        }
    }

    /// Starts it again after `stop`, on the same port and data.
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Stops it as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGQUIT);
            wait_bounded(&mut child, "postgres");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server on 127.0.0.1.
pub struct Nats {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nats = Nats {
            port: free_port(),
            child: None,
            log: dir.path().join("nats.log"),
            _dir: dir,
        };
        nats.launch();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(&self.log).expect("nats log file");
        let mut cmd = Command::new(nats_bin().expect("nats-server"));
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn nats-server"));
        let deadline = Instant::now() + START;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        loop {
            if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut first = String::new();
                let _ = BufReader::new(stream).read_line(&mut first);
                if first.starts_with("INFO ") {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let mut log = String::new();
                let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut log));
                panic!("nats-server exited ({status}) before it accepted connections:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready in {START:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            wait_bounded(&mut child, "nats-server");
        }
    }

    /// Stops it and starts it again on the same port: subscriptions and messages in
    /// flight are gone, clients reconnect.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to our child, not yet reaped (so its PID is still ours).
fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own unreaped child's PID.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Waits for `child` to exit, at most 30 s, then kills it.
fn wait_bounded(child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            eprintln!("{what} did not stop in 30 s: killing it");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
