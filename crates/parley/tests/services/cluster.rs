//! A cluster of real `parley serve --cluster` processes on one PostgreSQL and one NATS, and
//! a TCP proxy to put in front of them: a load balancer for clients, or a link a test can
//! cut (a node partitioned from NATS).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Nats, Postgres};
use crate::common::{parley_command, Proc};

/// How long the nodes' leases run in tests (a dead node's users are offline after it).
pub const LEASE_MS: u64 = 2_000;

/// One node.
pub struct Node {
    pub id: String,
    pub proc: Proc,
    /// The shared port (every protocol).
    pub addr: SocketAddr,
    /// The JSON-only port (the server speaks first).
    pub json: SocketAddr,
    pub dir: TempDir,
}

impl Node {
    /// Starts node `id` on `postgres` and `nats`, on fresh loopback ports.
    pub fn start(id: &str, postgres: &str, nats: &str) -> Node {
        Node::start_with(id, postgres, nats, &[])
    }

    /// Starts node `id` with `env` set for it too.
    pub fn start_with(id: &str, postgres: &str, nats: &str, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = command(id, postgres, nats, dir.path());
        cmd.envs(env.iter().copied());
        let mut proc = Proc::spawn(cmd);
        let ports = proc.wait_for_start();
        let port = |protocol: &str| {
            ports
                .iter()
                .find(|p| p.protocol == protocol)
                .unwrap_or_else(|| panic!("no {protocol} port in {ports:?}"))
                .addr
        };
        Node {
            id: id.to_string(),
            addr: port("every protocol"),
            json: port("json"),
            proc,
            dir,
        }
    }

    /// Kills it as a crash would (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait_exit(Duration::from_secs(10));
    }
}

/// The command line of node `id`: short leases and reconciliation, cheap password hashing.
pub fn command(id: &str, postgres: &str, nats: &str, dir: &Path) -> std::process::Command {
    let mut cmd = parley_command([
        "serve",
        "--cluster",
        "--postgres",
        postgres,
        "--nats",
        nats,
        "--node-id",
        id,
        "--listen",
        "127.0.0.1:0",
        "--listen-json",
        "127.0.0.1:0",
        "--data-dir",
    ]);
    cmd.arg(dir)
        .env("PARLEY_ARGON2_MEMORY_KIB", "1024")
        .env("PARLEY_ARGON2_ITERATIONS", "1")
        .env("PARLEY_CLUSTER_LEASE_MS", LEASE_MS.to_string())
        .env("PARLEY_CLUSTER_RECONCILE_MS", "300")
        .env("PARLEY_SHUTDOWN_TIMEOUT_MS", "2000")
        .env("PARLEY_MESSAGES_PER_SECOND", "0")
        .env("PARLEY_COMMANDS_PER_SECOND", "0");
    // More of the nodes' logs when a test is run to be looked into.
    if let Ok(filter) = std::env::var("PARLEY_TEST_NODE_LOG") {
        cmd.env("PARLEY_LOG", filter);
    }
    cmd
}

/// PostgreSQL, NATS and `n` nodes named a, b, c...
pub struct Cluster {
    /// First, so that they stop before the services they use.
    pub nodes: Vec<Node>,
    pub pg: Postgres,
    pub nats: Nats,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// `n` nodes with `env` set for each.
    pub fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        let pg = Postgres::start();
        let nats = Nats::start();
        let nodes = (0..n)
            .map(|i| {
                let id = ((b'a' + i as u8) as char).to_string();
                Node::start_with(&id, &pg.url(), &nats.url(), env)
            })
            .collect();
        Cluster { nodes, pg, nats }
    }
}

/// A TCP proxy on 127.0.0.1: each connection goes to the next backend that accepts it
/// (round robin). `cut` closes every connection and refuses new ones until `heal`.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Cancelled by `cut`; replaced by `heal`.
    open: Mutex<CancellationToken>,
    stop: CancellationToken,
}

impl Proxy {
    /// A link to `nats` the test can cut: a node given [`Proxy::nats_url`] reaches NATS
    /// only through it.
    pub async fn to_nats(nats: &Nats) -> Proxy {
        Proxy::start(vec![([127, 0, 0, 1], nats.port).into()]).await
    }

    /// The NATS URL of a node whose link to NATS goes through this proxy.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub async fn start(backends: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            backends: Mutex::new(backends),
            next: AtomicUsize::new(0),
            open: Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let open = shared.open.lock().unwrap().clone();
                if open.is_cancelled() {
                    continue;
                }
                let backends = shared.backends.lock().unwrap().clone();
                let first = shared.next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let backend = backends[(first + i) % backends.len()];
                        let connecting = TcpStream::connect(backend);
                        let Ok(Ok(server)) =
                            tokio::time::timeout(Duration::from_secs(2), connecting).await
                        else {
                            continue;
                        };
                        let (mut client, mut server) = (client, server);
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        tokio::select! {
                            _ = open.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                        return;
                    }
                });
            }
        });
        Proxy { addr, state }
    }

    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.state.backends.lock().unwrap() = backends;
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.state.open.lock().unwrap().cancel();
    }

    pub fn heal(&self) {
        *self.state.open.lock().unwrap() = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.cancel();
        self.cut();
    }
}

/// The value of the metric `name` (a counter or gauge without labels) on the node at
/// `addr`, from its `/metrics` (the shared port serves it).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        String::from_utf8(raw).expect("utf-8")
    };
    let page = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .expect("/metrics answered in time");
    let prefix = format!("{name} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{page}"))
        .trim()
        .parse()
        .expect("a number")
}
