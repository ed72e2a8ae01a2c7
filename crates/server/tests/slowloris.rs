//! Connections that hold a place without making progress are closed: a request must be
//! complete within `request_timeout_ms` of its first byte however its bytes trickle in,
//! every protocol has an idle timeout that only complete requests reset (binary included),
//! and one address gets far fewer connections than the server serves.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{code, Frame};

/// How long a test waits for the server to close a connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Sends `bytes` one at a time, `every` apart, until they run out or the server closes the
/// connection; then reads until the end. Returns how long after the first byte the
/// connection ended, or `None` if it was still open `CLOSE_WITHIN` after the last byte.
async fn trickle(
    stream: &mut tokio::net::TcpStream,
    bytes: &[u8],
    every: Duration,
) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut pace = tokio::time::interval(every);
    let mut buf = [0u8; 1024];
    for byte in bytes {
        pace.tick().await;
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // Whatever the server said meanwhile (nothing is asked): an end ends the trickle.
        let said = tokio::time::timeout(Duration::ZERO, stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = said {
            return Some(started.elapsed());
        }
    }
    let end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_WITHIN, end).await.ok()
}

/// A binary frame of `len` bytes after its length (version, key 0x09, then padding): the
/// server reads it whole before it can answer.
fn long_frame(len: u32) -> Vec<u8> {
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&[1, 0, 0x09]);
    frame.resize(4 + len as usize, 0);
    frame
}

/// A logged-in binary session whose next frame comes a byte every 100 ms is closed at the
/// request deadline, although bytes keep arriving (before: never, logged-in binary sessions
/// had no timeout at all).
#[tokio::test]
async fn a_binary_frame_that_trickles_in_is_cut_off_at_the_request_deadline() {
    let server = TestServer::start_with(|c| c.request_timeout_ms = 600).await;
    let mut alice = server.login("alice").await;
    let ended = trickle(alice.stream(), &long_frame(100), Duration::from_millis(50)).await;
    let ended = ended.expect("a frame trickling in for 5 s is cut off");
    assert!(
        ended >= Duration::from_millis(500),
        "not before its deadline: {ended:?}"
    );
    assert!(ended < Duration::from_secs(3), "at its deadline: {ended:?}");
    server.stop().await;
}

/// A text line trickling in is cut off the same way, whatever the idle timeout (before:
/// every byte reset it).
#[tokio::test]
async fn a_text_line_that_trickles_in_is_cut_off_at_the_request_deadline() {
    let server = TestServer::start_with(|c| {
        c.request_timeout_ms = 600;
        c.idle_timeout_ms = 60_000;
    })
    .await;
    let mut bob = server.text_login("bob").await;
    let line = [b'x'; 100];
    let ended = trickle(bob.stream(), &line, Duration::from_millis(50)).await;
    let ended = ended.expect("a line trickling in for 5 s is cut off");
    assert!(
        ended >= Duration::from_millis(500),
        "not before its deadline: {ended:?}"
    );
    server.stop().await;
}

/// The deadline is per request: requests that each take a while but complete in time are
/// all answered, for longer than the deadline in total.
#[tokio::test]
async fn requests_that_each_complete_in_time_go_on_for_ever() {
    let server = TestServer::start_with(|c| c.request_timeout_ms = 400).await;
    let mut alice = server.login("alice").await;
    let mut text = server.text_login("bob").await;
    // Eight requests, each completed 150 ms after it began (under the 400 ms deadline):
    // 1.2 s, three deadlines, in all. Each answer shows the session still serves.
    for cid in 0..8 {
        let mut frame = bytes::BytesMut::new();
        Frame::CorrelationTest { cid }.encode(&mut frame).unwrap();
        let (head, tail) = frame.split_at(5);
        alice.send_raw(head).await.unwrap();
        text.send_raw(b"PI").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        alice.send_raw(tail).await.unwrap();
        text.send_raw(b"NG\n").await.unwrap();
        assert_eq!(alice.expect_response(cid).await.unwrap(), code::OK);
        assert_eq!(text.line().await.unwrap(), "PONG");
    }
    server.stop().await;
}

/// A logged-in binary session that sends nothing is closed after `binary_idle_timeout_ms`;
/// one that sends a request now and then is not.
#[tokio::test]
async fn a_silent_binary_session_is_closed_after_its_idle_timeout() {
    let server = TestServer::start_with(|c| c.binary_idle_timeout_ms = 500).await;
    let mut silent = server.login("alice").await;
    let mut chatty = server.login("bob").await;
    let started = Instant::now();
    for cid in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let answer = request_or_eof(&mut chatty, cid).await;
        assert_eq!(answer, Some(code::OK), "bob sends every 150 ms: kept");
    }
    silent.timeout = CLOSE_WITHIN;
    assert!(
        silent.recv_or_eof().await.unwrap().is_none(),
        "alice sent nothing for {:?}: closed",
        started.elapsed()
    );
    server.stop().await;
}

/// A correlation test's answer, or `None` once the connection has ended.
async fn request_or_eof(c: &mut BinaryClient, cid: u32) -> Option<u16> {
    c.send(&Frame::CorrelationTest { cid }).await.ok()?;
    match c.recv_or_eof().await.ok()? {
        Some(Frame::Response { code, .. }) => Some(code),
        _ => None,
    }
}

/// Idle means no complete request, not no byte: a text connection sending a byte of a
/// line now and then, short of its end, is idle (told, and closed).
#[tokio::test]
async fn bytes_of_an_unfinished_line_do_not_keep_a_text_connection_alive() {
    let server = TestServer::start_with(|c| {
        c.idle_timeout_ms = 500;
        c.request_timeout_ms = 60_000;
    })
    .await;
    let mut bob = server.text_login("bob").await;
    let ended = trickle(bob.stream(), &[b'x'; 100], Duration::from_millis(50)).await;
    let ended = ended.expect("idle while no line completes");
    assert!(
        ended < Duration::from_secs(3),
        "at its idle timeout: {ended:?}"
    );
    server.stop().await;
}

/// By default one address gets 256 connections (of 19,000): the next is closed at once,
/// loopback included.
#[tokio::test]
async fn one_address_gets_256_connections_by_default() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    for _ in 0..256 {
        let mut c = server.text().await;
        assert_eq!(c.ask("PING").await.unwrap(), "PONG");
        open.push(c);
    }
    let mut next = LineClient::connect(server.addr).await.unwrap();
    next.timeout = CLOSE_WITHIN;
    assert_eq!(next.line_or_eof().await.unwrap(), None, "closed at once");
    server.stop().await;
}
