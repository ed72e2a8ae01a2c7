//! Starting a real server on 127.0.0.1 port 0 with a fresh database, for tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::Frame;
use parley_server::{Config, Running};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// The password of every account the tests create.
pub const PASSWORD: &str = "correct-horse";

pub struct TestServer {
    pub running: Option<Running>,
    /// The shared port (every protocol).
    pub addr: SocketAddr,
    /// The JSON-only port, where the server speaks first.
    pub json_addr: SocketAddr,
    pub dir: TempDir,
}

/// A config for tests: port 0, data in `dir`, short timeouts.
pub fn test_config(dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        listen_json: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: dir.to_path_buf(),
        shutdown_timeout_ms: 2_000,
        // Cheap hashing keeps account tests fast; production uses the defaults.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test config changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let running = parley_server::start(config).await.expect("server starts");
        TestServer {
            addr: running.addr,
            json_addr: running.json_addr.expect("json port"),
            running: Some(running),
            dir,
        }
    }

    /// A server started some other way (with options, say), on data in `dir`.
    pub fn adopt(running: Running, dir: TempDir) -> TestServer {
        TestServer {
            addr: running.addr,
            json_addr: running.json_addr.expect("json port"),
            running: Some(running),
            dir,
        }
    }

    /// A text-protocol connection to the shared port (as `ncat` would be).
    pub async fn text(&self) -> LineClient {
        LineClient::connect(self.addr).await.expect("connect")
    }

    /// A text connection logged in as `name` (its `OK` consumed).
    pub async fn text_login(&self, name: &str) -> LineClient {
        let mut c = self.text().await;
        c.send(&format!("LOGIN {name}")).await.unwrap();
        assert_eq!(c.line().await.unwrap(), "OK", "LOGIN {name}");
        c
    }

    /// A JSON connection to the JSON-only port, welcome line consumed.
    pub async fn json(&self) -> LineClient {
        let mut c = LineClient::connect(self.json_addr).await.expect("connect");
        let welcome = c.line().await.unwrap();
        assert!(
            welcome.contains("Welcome to TCP/IP Educational Server!"),
            "{welcome}"
        );
        c
    }

    /// Creates the account `name` with [`PASSWORD`] from a connection of its own (which
    /// never logs in).
    pub async fn register(&self, name: &str) {
        let mut c = self.text().await;
        let answer = c.ask(&format!("REGISTER {name} {PASSWORD}")).await.unwrap();
        assert_eq!(answer, "OK", "REGISTER {name}");
    }

    pub async fn client(&self) -> BinaryClient {
        BinaryClient::connect(self.addr).await.expect("connect")
    }

    /// A client already logged in as `name`.
    pub async fn login(&self, name: &str) -> BinaryClient {
        let mut c = self.client().await;
        assert_eq!(
            c.login(1, name).await.expect("login"),
            0x01,
            "login of {name}"
        );
        c
    }

    /// Stops gracefully and starts again on the same data directory (a new port).
    pub async fn restart(&mut self) {
        self.restart_after(|_| {}).await
    }

    /// Stops gracefully, lets `change` work on the data directory, and starts again on it.
    pub async fn restart_after(&mut self, change: impl FnOnce(&Path)) {
        self.running
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        change(self.dir.path());
        self.start_again(|_| {}).await;
    }

    /// Stops gracefully and starts again on the same data directory with the test config
    /// changed by `tweak`.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut Config)) {
        self.running
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        self.start_again(tweak).await;
    }

    async fn start_again(&mut self, tweak: impl FnOnce(&mut Config)) {
        let mut config = test_config(self.dir.path());
        tweak(&mut config);
        let running = parley_server::start(config).await.expect("server restarts");
        self.addr = running.addr;
        self.json_addr = running.json_addr.expect("json port");
        self.running = Some(running);
    }

    pub async fn stop(mut self) {
        self.running
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARLEY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `s` as `Bytes` (frame fields).
pub fn bytes(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sends `frame` and returns the code of its response.
pub async fn request(c: &mut BinaryClient, frame: Frame) -> u16 {
    let cid = frame.cid();
    c.send(&frame).await.unwrap();
    c.expect_response(cid).await.unwrap()
}

/// A JSON line as a value.
pub fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

/// `QUIT`, then waits for the server to close.
pub async fn quit(mut c: LineClient) {
    assert_eq!(c.ask("QUIT").await.unwrap(), "BYE");
    assert_eq!(c.line_or_eof().await.unwrap(), None, "closed after BYE");
}

/// Closes a binary connection and waits until the server has closed its side too (no frame
/// may come before the close).
pub async fn close(mut c: BinaryClient) {
    c.stream().shutdown().await.unwrap();
    assert_eq!(
        c.recv_or_eof().await.unwrap(),
        None,
        "expected the server to close the connection"
    );
}

/// Unix ms as the line protocols write times: `2024-05-01T12:00:00.000Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&format)
        .unwrap()
}

/// Whether `s` is an RFC 3339 time in UTC (`Z`).
pub fn is_rfc3339_utc(s: &str) -> bool {
    s.ends_with('Z')
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::now_utc()
        .date()
        .format(&format)
        .unwrap()
}
