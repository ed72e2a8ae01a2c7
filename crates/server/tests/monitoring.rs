//! `/metrics`, `/healthz` and `/readyz` over real sockets: what clients do shows in the
//! counters, the admin port answers while the server starts, and keeps `/metrics` private.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{bytes, request, test_config, TestServer, PASSWORD};
use parley_proto::binary::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// `GET path`: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// The value of the sample `series` (name and labels as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `addr` until `series` satisfies `want` (writers count just after the bytes left,
/// which the client may see first); panics with the last page after 5 s.
async fn until(addr: SocketAddr, series: &str, want: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        if sample(&text, series).is_some_and(&want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never as wanted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages, logins, failed logins, connections and bytes show per protocol, on the admin
/// port only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_clients_do_shows_in_the_metrics() {
    let server =
        TestServer::start_with(|c| c.listen_admin = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = server.running.as_ref().unwrap().admin_addr.unwrap();
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    for i in 0..5u32 {
        let frame = Frame::Message {
            cid: 10 + i,
            message: bytes("hello"),
            from: bytes("alice"),
            to: bytes("bob"),
            time: 1,
        };
        assert_eq!(request(&mut alice, frame).await, 0x01);
    }
    for _ in 0..5 {
        bob.recv().await.unwrap();
    }
    server.register("carol").await;
    let mut text = server.text().await;
    let wrong = text.ask("LOGIN carol not-the-password").await.unwrap();
    assert_eq!(wrong, "ERR invalid-credentials");
    let right = text.ask(&format!("LOGIN carol {PASSWORD}")).await.unwrap();
    assert_eq!(right, "OK");

    // Counted just after the reply is queued: the client may see the OK first.
    until(admin, r#"parley_logins_total{protocol="text"}"#, |v| {
        v == 1.0
    })
    .await;
    until(admin, r#"parley_logins_total{protocol="binary"}"#, |v| {
        v == 2.0
    })
    .await;
    let page = until(
        admin,
        r#"parley_messages_delivered_total{protocol="binary"}"#,
        |v| v == 5.0,
    )
    .await;
    let at = |series: &str| sample(&page, series).unwrap_or_else(|| panic!("{series}:\n{page}"));
    assert_eq!(
        at(r#"parley_messages_stored_total{protocol="binary"}"#),
        5.0
    );
    assert_eq!(at(r#"parley_messages_stored_total{protocol="text"}"#), 0.0);
    assert_eq!(at(r#"parley_logins_total{protocol="binary"}"#), 2.0);
    assert_eq!(at(r#"parley_logins_total{protocol="text"}"#), 1.0);
    assert_eq!(
        at(r#"parley_login_failures_total{reason="credentials"}"#),
        1.0
    );
    assert_eq!(at(r#"parley_connections{protocol="binary"}"#), 2.0);
    // 5 frames of 9 + 4 + 5 + 2 + 5 + 2 + 3 + 8 bytes, and two logins, at least.
    assert!(at(r#"parley_received_bytes_total{protocol="binary"}"#) > 5.0 * 30.0);
    assert!(at(r#"parley_sent_bytes_total{protocol="binary"}"#) > 5.0 * 30.0);
    assert!(at("parley_hub_batch_size_count") >= 1.0);
    assert!(at("parley_store_commit_seconds_count") >= 1.0);
    assert!(at(r#"parley_store_bytes{file="log"}"#) > 0.0);
    assert_eq!(at("parley_ready"), 1.0);
    assert!(at("process_resident_memory_bytes") > 0.0);
    assert!(at("process_open_fds") > 0.0 && at("process_open_fds") <= at("process_max_fds"));

    // Connections are counted down as they end.
    common::close(bob).await;
    until(admin, r#"parley_connections{protocol="binary"}"#, |v| {
        v == 1.0
    })
    .await;

    // Private: the shared port has the probes but not the numbers.
    assert_eq!(get(server.addr, "/metrics").await.0, 404);
    assert_eq!(get(server.addr, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        get(admin, "/").await.0,
        404,
        "the admin port serves nothing else"
    );
    server.stop().await;
}

/// Without an admin port, the shared port serves `/metrics`.
#[tokio::test]
async fn the_shared_port_serves_metrics_without_an_admin_port() {
    let server = TestServer::start().await;
    let _alice = server.login("alice").await;
    let page = until(
        server.addr,
        r#"parley_connections{protocol="binary"}"#,
        |v| v == 1.0,
    )
    .await;
    assert!(
        page.contains("# TYPE parley_store_commit_seconds histogram"),
        "{page}"
    );
    server.stop().await;
}

/// The admin port answers while the store is still being opened, and says the server is not
/// ready until it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_starting() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the database locked: the server's start waits for it (up to 5 s).
    let lock = rusqlite::Connection::open(dir.path().join("parley.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut config = test_config(dir.path());
    config.listen_admin = Some("127.0.0.1:0".parse().unwrap());
    let running = parley_server::start(config).await.unwrap();
    let admin = running.admin_addr.unwrap();
    assert_eq!(get(admin, "/readyz").await, (503, "starting\n".into()));
    assert_eq!(get(admin, "/healthz").await.0, 200, "alive while starting");
    let (_, page) = get(admin, "/metrics").await;
    assert_eq!(sample(&page, "parley_ready"), Some(0.0), "{page}");
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let deadline = Instant::now() + WAIT;
    while get(admin, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await.unwrap();
}
