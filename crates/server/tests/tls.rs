//! TLS over real sockets (docs/PROTOCOL.md "TLS"): every protocol inside TLS on the shared
//! port and on the TLS-only port, talking with plain-TCP users, and certificate reloads.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::TestServer;
use parley_client::LineClient;
use parley_proto::binary::{self, code, Frame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long any read waits.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A server with a fresh self-signed certificate, TLS on the shared port and on a TLS-only
/// port. The certificate files live in `certs` (cert.pem, key.pem).
struct TlsServer {
    server: TestServer,
    certs: TempDir,
}

impl TlsServer {
    async fn start() -> TlsServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with the TLS test config changed by `tweak`.
    async fn start_with(tweak: impl FnOnce(&mut parley_server::Config)) -> TlsServer {
        let certs = tempfile::tempdir().unwrap();
        let (cert, key) = parley_server::write_self_signed(certs.path()).unwrap();
        let server = TestServer::start_with(|c| {
            c.tls_cert = Some(cert);
            c.tls_key = Some(key);
            c.listen_tls = Some("127.0.0.1:0".parse().unwrap());
            tweak(c);
        })
        .await;
        TlsServer { server, certs }
    }

    /// A TLS connection to `addr` (one of the server's ports).
    async fn to(&self, addr: Option<std::net::SocketAddr>) -> Tls {
        Tls::connect(addr.expect("that port is configured"), &[self.cert()]).await
    }

    fn running(&self) -> &parley_server::Running {
        self.server.running.as_ref().unwrap()
    }

    fn tls_addr(&self) -> std::net::SocketAddr {
        self.server.running.as_ref().unwrap().tls_addr.unwrap()
    }

    fn cert_path(&self) -> PathBuf {
        self.certs.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.certs.path().join("key.pem")
    }

    /// The certificate the server was started with.
    fn cert(&self) -> CertificateDer<'static> {
        cert_der(&self.cert_path())
    }

    /// A TLS connection to the shared port.
    async fn shared(&self) -> Tls {
        Tls::connect(self.server.addr, &[self.cert()]).await
    }

    /// A TLS connection to the TLS-only port.
    async fn dedicated(&self) -> Tls {
        Tls::connect(self.tls_addr(), &[self.cert()]).await
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// A TLS client connection, read as lines or as binary frames.
struct Tls {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Tls {
    /// Connects to `addr` as `localhost`, trusting only `roots`.
    async fn connect(addr: std::net::SocketAddr, roots: &[CertificateDer<'static>]) -> Tls {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let connecting = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        let stream = tokio::time::timeout(WAIT, connecting)
            .await
            .expect("handshake in time")
            .expect("handshake");
        Tls {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The certificate the server presented.
    fn peer_cert(&self) -> CertificateDer<'static> {
        let certs = self.stream.get_ref().1.peer_certificates().unwrap();
        certs[0].clone().into_owned()
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    /// Reads more bytes into the buffer; fails on timeout or close.
    async fn fill(&mut self) {
        let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
            .await
            .expect("data in time")
            .unwrap();
        assert!(read > 0, "the server closed the connection");
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(end + 1);
                return String::from_utf8(line[..end].to_vec()).unwrap();
            }
            self.fill().await;
        }
    }

    async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    async fn send_frame(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out).unwrap();
        self.send_raw(&out).await;
    }

    /// Exactly `n` raw bytes.
    async fn bytes(&mut self, n: usize) -> Bytes {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.split_to(n).freeze()
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = binary::decode(&mut self.buf, 1 << 20).unwrap() {
                return frame;
            }
            self.fill().await;
        }
    }
}

fn login(cid: u32, name: &str) -> Frame {
    Frame::Login {
        cid,
        username: Bytes::copy_from_slice(name.as_bytes()),
    }
}

/// The 13 bytes of a response.
fn response(cid: u32, code: u16) -> Bytes {
    let mut out = BytesMut::new();
    binary::encode_response(cid, code, &mut out);
    out.freeze()
}

const ECHO: &str = r#"{"command":"ECHO","data":"x"}"#;
const ECHOED: &str = r#"{"success":true,"message":"Echo response","data":"x"}"#;

// ---------------------------------------------------------------------------------------
// The shared port
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn text_over_tls_on_the_shared_port_answers_ping() {
    let server = TlsServer::start().await;
    let mut c = server.shared().await;
    assert_eq!(c.ask("PING").await, "PONG");
    server.stop().await;
}

#[tokio::test]
async fn text_over_tls_and_plain_text_users_exchange_dms() {
    let server = TlsServer::start().await;
    let mut plain = server.server.text_login("bob").await;
    let mut secure = server.shared().await;
    assert_eq!(secure.ask("LOGIN alice").await, "OK");

    secure.send("DM bob over tls").await;
    assert_eq!(plain.line().await.unwrap(), "DM alice over tls");
    plain.send("DM alice over tcp").await.unwrap();
    assert_eq!(secure.line().await, "DM bob over tcp");
    server.stop().await;
}

#[tokio::test]
async fn binary_login_over_tls_on_the_shared_port_gets_the_13_byte_ok() {
    let server = TlsServer::start().await;
    let mut c = server.shared().await;
    c.send_frame(&login(7, "alice")).await;
    assert_eq!(c.bytes(13).await, response(7, code::OK));
    server.stop().await;
}

#[tokio::test]
async fn a_binary_message_over_tls_reaches_a_plain_binary_user() {
    let server = TlsServer::start().await;
    let mut bob = server.server.login("bob").await;
    let mut alice = server.shared().await;
    alice.send_frame(&login(1, "alice")).await;
    assert_eq!(alice.bytes(13).await, response(1, code::OK));

    let mut message = BytesMut::new();
    binary::encode_message(2, b"sealed", b"alice", b"bob", 42, &mut message).unwrap();
    alice.send_raw(&message).await;

    assert_eq!(
        alice.frame().await,
        Frame::Response {
            cid: 2,
            code: code::OK
        }
    );
    let (body, from, to, time) = bob.expect_push().await.unwrap();
    assert_eq!(
        (&body[..], from.as_str(), to.as_str(), time),
        (&b"sealed"[..], "alice", "bob", 42)
    );
    server.stop().await;
}

#[tokio::test]
async fn json_over_tls_on_the_shared_port_is_answered_without_a_welcome() {
    let server = TlsServer::start().await;
    let mut c = server.shared().await;
    assert_eq!(c.ask(ECHO).await, ECHOED);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// The TLS-only port
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn https_on_both_tls_ports_even_with_the_method_split_across_records() {
    let tls = TlsServer::start().await;
    for mut c in [tls.shared().await, tls.dedicated().await] {
        // "GE" alone could still be a text line: the rest of the request line decides.
        c.send_raw(b"GE").await;
        c.send_raw(b"T /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert_eq!(c.line().await, "HTTP/1.1 200 OK\r");
        let mut head = Vec::new();
        loop {
            let line = c.line().await;
            if line == "\r" {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        assert!(
            head.iter()
                .any(|h| h.starts_with("content-security-policy:")),
            "{head:?}"
        );
        assert_eq!(c.line().await, "ok");
    }
    // A short text line inside TLS is not kept waiting for more.
    let mut c = tls.shared().await;
    c.send_raw(b"P").await;
    assert_eq!(c.ask("ING").await, "PONG");
    tls.stop().await;
}

/// `wss://`: the WebSocket handshake and a frame inside TLS, on the shared port.
#[tokio::test]
async fn a_websocket_inside_tls_speaks_the_json_protocol() {
    use parley_proto::ws;
    let tls = TlsServer::start().await;
    let mut c = tls.shared().await;
    let mut out = BytesMut::from(
        &b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"[..],
    );
    ws::encode(
        ws::Opcode::Text,
        ECHO.as_bytes(),
        Some([9, 8, 7, 6]),
        &mut out,
    );
    c.send_raw(&out).await;
    assert_eq!(c.line().await, "HTTP/1.1 101 Switching Protocols\r");
    while c.line().await != "\r" {}
    let frame = loop {
        if let Some(frame) = ws::decode(&mut c.buf, 1 << 20, false).unwrap() {
            break frame;
        }
        c.fill().await;
    };
    assert_eq!(frame.payload, ECHOED.as_bytes());
    tls.stop().await;
}

#[tokio::test]
async fn text_over_the_tls_port_answers_ping() {
    let server = TlsServer::start().await;
    let mut c = server.dedicated().await;
    assert_eq!(c.ask("PING").await, "PONG");
    server.stop().await;
}

#[tokio::test]
async fn binary_over_the_tls_port_logs_in() {
    let server = TlsServer::start().await;
    let mut c = server.dedicated().await;
    c.send_frame(&login(3, "alice")).await;
    assert_eq!(c.bytes(13).await, response(3, code::OK));
    server.stop().await;
}

#[tokio::test]
async fn json_over_the_tls_port_is_answered() {
    let server = TlsServer::start().await;
    let mut c = server.dedicated().await;
    assert_eq!(c.ask(ECHO).await, ECHOED);
    server.stop().await;
}

#[tokio::test]
async fn a_plain_connection_to_the_tls_port_is_not_served() {
    let server = TlsServer::start().await;
    let mut c = LineClient::connect(server.tls_addr()).await.unwrap();
    c.timeout = WAIT;

    c.send("PING").await.unwrap();

    // The handshake fails: whatever comes back (a TLS alert, no line), then the close.
    assert_eq!(c.line_or_eof().await.unwrap(), None);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Certificate reload (what SIGHUP does)
// ---------------------------------------------------------------------------------------

/// Writes a second self-signed certificate over the configured files; returns it.
fn replace_certificate(server: &TlsServer) -> (CertificateDer<'static>, TempDir) {
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = parley_server::write_self_signed(other.path()).unwrap();
    std::fs::copy(&cert, server.cert_path()).unwrap();
    std::fs::copy(&key, server.key_path()).unwrap();
    (cert_der(&cert), other)
}

#[tokio::test]
async fn after_a_reload_new_connections_get_the_new_certificate() {
    let server = TlsServer::start().await;
    let old = server.cert();
    let (new, _dir) = replace_certificate(&server);

    server
        .server
        .running
        .as_ref()
        .unwrap()
        .reload_tls()
        .unwrap();

    let c = Tls::connect(server.server.addr, &[old.clone(), new.clone()]).await;
    assert_eq!(c.peer_cert(), new);
    assert_ne!(new, old);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_opened_before_a_reload_keeps_working() {
    let server = TlsServer::start().await;
    let mut before = server.dedicated().await;
    assert_eq!(before.ask("PING").await, "PONG");
    let (_new, _dir) = replace_certificate(&server);

    server
        .server
        .running
        .as_ref()
        .unwrap()
        .reload_tls()
        .unwrap();

    assert_eq!(before.ask("PING").await, "PONG");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_with_a_broken_key_fails_and_keeps_the_old_certificate() {
    let server = TlsServer::start().await;
    let old = server.cert();
    std::fs::write(server.key_path(), "not a key\n").unwrap();

    let reloaded = server.server.running.as_ref().unwrap().reload_tls();

    assert!(reloaded.is_err(), "a broken key is refused");
    let mut c = server.dedicated().await;
    assert_eq!(c.peer_cert(), old);
    assert_eq!(c.ask("PING").await, "PONG");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// The single-protocol ports, and passwords only over TLS
// ---------------------------------------------------------------------------------------

/// TLS on the text, binary and HTTP ports too, and plain connections still served there.
async fn single_protocol_ports() -> TlsServer {
    TlsServer::start_with(|c| {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        c.listen_text = Some(any);
        c.listen_binary = Some(any);
        c.listen_http = Some(any);
    })
    .await
}

#[tokio::test]
async fn the_text_port_serves_tls_and_plain_text() {
    let server = single_protocol_ports().await;
    let mut secure = server.to(server.running().text_addr).await;
    // A line that would read as HTTP on the shared port is text here, inside TLS or not.
    assert_eq!(secure.ask("GET /").await, "ERR unknown-cmd");
    assert_eq!(secure.ask("PING").await, "PONG");
    let mut plain = LineClient::connect(server.running().text_addr.unwrap())
        .await
        .unwrap();
    assert_eq!(plain.ask("PING").await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn the_binary_port_serves_tls_and_plain_binary() {
    let server = single_protocol_ports().await;
    let mut secure = server.to(server.running().binary_addr).await;
    secure.send_frame(&login(3, "alice")).await;
    assert_eq!(secure.bytes(13).await, response(3, code::OK));
    let mut plain = parley_client::BinaryClient::connect(server.running().binary_addr.unwrap())
        .await
        .unwrap();
    assert_eq!(plain.login(4, "bob").await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn the_http_port_serves_tls() {
    let server = single_protocol_ports().await;
    let mut secure = server.to(server.running().http_addr).await;
    secure
        .send_raw(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let status = secure.line().await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    server.stop().await;
}

fn require_tls(c: &mut parley_server::Config) {
    c.require_tls_for_passwords = true;
}

#[tokio::test]
async fn with_require_tls_for_passwords_plain_tcp_passwords_are_refused() {
    let server = TlsServer::start_with(require_tls).await;
    let mut secure = server.shared().await;
    assert_eq!(secure.ask("REGISTER alice correct-horse").await, "OK");
    let mut plain = server.server.text().await;

    let register = plain.ask("REGISTER bob correct-horse").await.unwrap();
    let login = plain.ask("LOGIN alice correct-horse").await.unwrap();

    assert_eq!(register, "ERR tls-required");
    assert_eq!(login, "ERR tls-required");
    assert_eq!(secure.ask("LOGIN alice correct-horse").await, "OK");
    assert_eq!(
        secure.ask("PASSWD correct-horse battery-staple").await,
        "OK"
    );
    server.stop().await;
}

#[tokio::test]
async fn with_require_tls_for_passwords_binary_and_json_refuse_plain_passwords_too() {
    let server = TlsServer::start_with(require_tls).await;
    let mut binary = server.server.client().await;
    let register = Frame::Register {
        cid: 5,
        username: Bytes::from_static(b"alice"),
        password: Bytes::from_static(b"correct-horse"),
    };
    binary.send(&register).await.unwrap();
    assert_eq!(binary.expect_response(5).await.unwrap(), code::TLS_REQUIRED);
    let mut json = server.server.json().await;
    let login = r#"{"command":"LOGIN","data":"alice","password":"correct-horse"}"#;
    let answer = json.ask(login).await.unwrap();
    assert!(
        answer.contains("Passwords need a TLS connection"),
        "{answer}"
    );
    // Password-less logins are the seeds' and stay as they are.
    assert_eq!(
        server
            .server
            .text_login("carol")
            .await
            .ask("PING")
            .await
            .unwrap(),
        "PONG"
    );
    server.stop().await;
}

#[tokio::test]
async fn require_tls_for_passwords_is_off_by_default() {
    let server = TlsServer::start().await;
    let mut plain = server.server.text().await;
    let register = plain.ask("REGISTER alice correct-horse").await.unwrap();
    assert_eq!(register, "OK");
    server.stop().await;
}
