//! Starting a real server on 127.0.0.1 port 0 with a fresh database, for tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use parley_client::{BinaryClient, LineClient};
use parley_server::{Config, Running};
use tempfile::TempDir;

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
        let config = test_config(self.dir.path());
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
