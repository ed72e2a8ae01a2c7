//! A real server on 127.0.0.1 port 0 for the client's tests, and links to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use parley_client::{Endpoint, Link, LinkEvent, LinkOptions, LinkStatus};
use parley_proto::binary::Event;
use parley_server::{Config, Running};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// The password every test account uses.
pub const PASSWORD: &str = "correct horse";
/// How long any wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    running: Option<Running>,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

fn config(dir: &TempDir, listen: SocketAddr) -> Config {
    Config {
        listen,
        data_dir: dir.path().to_path_buf(),
        shutdown_timeout_ms: 2_000,
        // Cheap hashing keeps account tests fast; production uses the defaults.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    }
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts with the test config changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(&dir, "127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let running = parley_server::start(config).await.expect("server starts");
        Server {
            addr: running.addr,
            running: Some(running),
            dir,
        }
    }

    /// Stops gracefully (clients see their connections end).
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
    }

    /// Starts again on the same data and the same port.
    pub async fn start_again(&mut self) {
        assert!(self.running.is_none());
        let running = parley_server::start(config(&self.dir, self.addr))
            .await
            .expect("server restarts on its port");
        self.running = Some(running);
    }

    /// Options for `user` on `device`, with a fast back-off for tests.
    pub fn options(&self, user: &str, device: &str) -> LinkOptions {
        LinkOptions {
            password: Some(PASSWORD.to_string()),
            register: true,
            backoff_first: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            ..LinkOptions::new(Endpoint::tcp(self.addr.to_string()), user, device)
        }
    }

    /// A link logged in as `user` (registered if new), once online.
    pub async fn link(&self, user: &str, device: &str) -> (Link, Events) {
        let (link, events) = Link::spawn(self.options(user, device));
        let mut events = Events(events);
        events.until_online().await;
        (link, events)
    }
}

/// A link's events, with bounded waits.
pub struct Events(pub mpsc::Receiver<LinkEvent>);

impl Events {
    pub async fn next(&mut self) -> LinkEvent {
        tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("an event within the wait")
            .expect("the link is running")
    }

    /// The first event `pick` maps to something, skipping the others: `what` must come
    /// within `WAIT` in all (a link that keeps reporting other events fails the test
    /// instead of keeping it waiting).
    pub async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(LinkEvent) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.0.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
                .expect("the link is running");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    }

    /// Skips statuses (and tokens) until the link is online.
    pub async fn until_online(&mut self) {
        self.until("online", |event| match event {
            LinkEvent::Status(LinkStatus::Online) => Some(()),
            LinkEvent::Status(LinkStatus::Stopped(e)) => panic!("link stopped: {e}"),
            LinkEvent::Message(m) => panic!("a message before online: {m:?}"),
            _ => None,
        })
        .await
    }

    /// The next message, skipping statuses.
    pub async fn message(&mut self) -> Event {
        self.until("a message", |event| match event {
            LinkEvent::Message(event) => Some(event),
            _ => None,
        })
        .await
    }

    /// The error that stopped the link, skipping other events; fails if it comes online.
    pub async fn stopped(&mut self) -> parley_client::Error {
        self.until("the link stopped", |event| match event {
            LinkEvent::Status(LinkStatus::Stopped(e)) => Some(e),
            LinkEvent::Status(LinkStatus::Online) => panic!("the link came online"),
            _ => None,
        })
        .await
    }

    /// Fails if a message arrives within `wait`.
    pub async fn no_message_within(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Err(_) => return,
                Ok(Some(LinkEvent::Message(m))) => panic!("unexpected message {m:?}"),
                Ok(Some(_)) => {}
                Ok(None) => return,
            }
        }
    }
}

/// The text of an event.
pub fn text(event: &Event) -> String {
    String::from_utf8_lossy(&event.message).into_owned()
}

/// What the proxy does to the frames a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Forward everything.
    Pass,
    /// Never forward frames with this key (acks, say): they are lost.
    Drop(u16),
    /// Once: forward the next frame with this key, then swallow its response and cut the
    /// connection, as if the network failed just after the server acted.
    LoseAnswer(u16),
    /// Once: swallow the next frame with this key and cut the connection, as if the
    /// network failed before the server saw it.
    LoseRequest(u16),
}

/// A TCP proxy in front of the server, to lose what a real network loses.
pub struct Proxy {
    pub addr: SocketAddr,
    rule: std::sync::Arc<std::sync::Mutex<Rule>>,
    cut: tokio::sync::broadcast::Sender<()>,
}

impl Proxy {
    pub async fn start(server: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rule = std::sync::Arc::new(std::sync::Mutex::new(Rule::Pass));
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let (rules, cuts) = (rule.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                    continue;
                };
                tokio::spawn(relay(client, upstream, rules.clone(), cuts.subscribe()));
            }
        });
        Proxy { addr, rule, cut }
    }

    pub fn set(&self, rule: Rule) {
        *self.rule.lock().unwrap() = rule;
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }
}

/// Whole frames off the front of `buf`: (key, cid, bytes).
fn frames(buf: &mut bytes::BytesMut) -> Vec<(u16, u32, bytes::Bytes)> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        if buf.len() < 4 + len {
            break;
        }
        let frame = buf.split_to(4 + len).freeze();
        let key = u16::from_be_bytes([frame[5], frame[6]]);
        let cid = match frame.len() >= 11 {
            true => u32::from_be_bytes(frame[7..11].try_into().unwrap()),
            false => 0,
        };
        out.push((key, cid, frame));
    }
    out
}

async fn relay(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    rule: std::sync::Arc<std::sync::Mutex<Rule>>,
    mut cut: tokio::sync::broadcast::Receiver<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut from_server) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    // The cid whose response is to be swallowed.
    let mut swallow: Option<u32> = None;
    loop {
        tokio::select! {
            _ = cut.recv() => return,
            read = client.read_buf(&mut from_client) => {
                if !matches!(read, Ok(n) if n > 0) { return; }
                for (key, cid, frame) in frames(&mut from_client) {
                    let current = *rule.lock().unwrap();
                    match current {
                        Rule::Drop(k) if k == key => continue,
                        Rule::LoseRequest(k) if k == key => {
                            *rule.lock().unwrap() = Rule::Pass;
                            return;
                        }
                        Rule::LoseAnswer(k) if k == key => {
                            *rule.lock().unwrap() = Rule::Pass;
                            swallow = Some(cid);
                        }
                        _ => {}
                    }
                    if server.write_all(&frame).await.is_err() { return; }
                }
            }
            read = server.read_buf(&mut from_server) => {
                if !matches!(read, Ok(n) if n > 0) { return; }
                for (key, cid, frame) in frames(&mut from_server) {
                    if key == 0x03 && Some(cid) == swallow {
                        return;
                    }
                    if client.write_all(&frame).await.is_err() { return; }
                }
            }
        }
    }
}
