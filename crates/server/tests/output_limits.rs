//! What a session may hold for a client is bounded in bytes and in time: a client that does
//! not read is cut off (and gets everything at its next login), one that asks faster than it
//! reads is slowed down (never cut off for asking), and no answer is larger than a frame.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::TestServer;
use parley_client::BinaryClient;
use parley_proto::binary::{self, code, page, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A large message body (the default `max_frame_bytes` is 64 KiB).
const BIG: usize = 60_000;

/// Body `i`: its index, then padding to `len` bytes.
fn body(i: u32, len: usize) -> Vec<u8> {
    let mut body = format!("{i:06}").into_bytes();
    body.resize(len, b'.');
    body
}

/// The index at the start of a body made by `body`.
fn index(body: &[u8]) -> u32 {
    std::str::from_utf8(&body[..6]).unwrap().parse().unwrap()
}

/// A binary connection with a tiny receive buffer, logged in as `name`, that then reads
/// nothing (so the kernel holds little of what is meant for it, and the server the rest).
async fn stalled_reader(server: &TestServer, name: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let mut login = BytesMut::new();
    let username = Bytes::copy_from_slice(name.as_bytes());
    Frame::Login { cid: 1, username }
        .encode(&mut login)
        .unwrap();
    stream.write_all(&login).await.unwrap();
    // Its login answered before anything is sent to it: a login still in flight when the
    // messages are stored would get them as a catch-up (paced by the queue, never cut).
    let mut answer = BytesMut::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(frame) = binary::decode(&mut answer, 1 << 20).unwrap() {
            match frame {
                Frame::Response { cid: 1, code, .. } => break code,
                other => panic!("a login answer first, not {other:?}"),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read_buf(&mut answer)).await;
        assert!(read.expect("a login answer in 10 s").unwrap() > 0, "closed");
    };
    assert_eq!(code, code::OK, "{name} logs in");
    stream
}

/// `count` DMs of `len` bytes from `from` to `to`, each acknowledged (stored).
async fn send_dms(from: &mut BinaryClient, sender: &str, to: &str, count: u32, len: usize) {
    for window in (0..count).collect::<Vec<_>>().chunks(16) {
        for &i in window {
            let body = body(i, len);
            let sent = from.send_message(i, sender, to, &body, u64::from(i));
            sent.await.unwrap();
        }
        for &i in window {
            assert_eq!(from.expect_response(i).await.unwrap(), code::OK, "DM {i}");
        }
    }
}

/// How long reading what the kernels already hold of a closed connection may take: up to
/// 4 MB through the stalled client's 4 KiB window over loopback, milliseconds on a quiet
/// machine, far longer on a loaded one.
const DRAIN: Duration = Duration::from_secs(5);

/// Whether the server had closed `stream` by `limit` from now. The client reads nothing
/// until then (so the server sees a client that does not read), then reads and drops what
/// the kernels still hold of the connection, which ends at once if the server closed it;
/// if it did not, the reading client keeps it open and this fails after `DRAIN`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::sleep(limit).await;
    tokio::time::timeout(DRAIN, read_all).await.is_ok()
}

/// Logs `name` in again (waiting for its old session to end) and expects the DMs `0..count`
/// from `from`, in order, each once: the ones its last connection did not get come now.
/// Returns how many came at this login.
async fn log_in_and_expect(server: &TestServer, name: &str, count: u32, len: usize) -> u32 {
    let mut client = BinaryClient::connect(server.addr).await.unwrap();
    client.timeout = Duration::from_secs(20);
    let mut logged_in = false;
    for attempt in 0..20 {
        if client.login(100 + attempt, name).await.unwrap() == code::OK {
            logged_in = true;
            break;
        }
    }
    assert!(logged_in, "{name}'s old session should have ended");
    // What the stalled socket's kernel had already taken counts as received; the rest
    // follows in order, with nothing missing up to the last one.
    let (text, ..) = client.expect_push().await.unwrap();
    let first = index(&text);
    for expected in first + 1..count {
        let (text, ..) = client.expect_push().await.unwrap();
        assert_eq!(index(&text), expected);
        assert_eq!(text.len(), len);
    }
    client
        .send(&Frame::CorrelationTest { cid: 7 })
        .await
        .unwrap();
    assert!(matches!(
        client.recv().await.unwrap(),
        Frame::Response { cid: 7, .. }
    ));
    count - first
}

/// Pushes to a client that does not read are bounded in bytes, not only in count: 60 KB
/// DMs fill `outbound_bytes` long before `outbound_queue`, and the client is cut off; its
/// next login gets them all. (7.2 MB: the kernel takes up to 4 MB into the socket before
/// the queue grows at all, so anything less may never reach the bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_client_that_does_not_read_are_bounded_in_bytes() {
    const DMS: u32 = 120;
    let server = TestServer::start_with(|c| {
        c.outbound_bytes = 256 * 1024;
        c.write_timeout_ms = 0;
        c.messages_per_second = 0;
    })
    .await;
    drop(server.login("bob").await);
    let mut stalled = stalled_reader(&server, "bob").await;
    let mut alice = server.login("alice").await;
    send_dms(&mut alice, "alice", "bob", DMS, BIG).await;
    assert!(
        closed_within(&mut stalled, Duration::ZERO).await,
        "bob held 7.2 MB of pushes against a bound of 256 KiB"
    );
    // The kernels held at most about 4 MB (70 DMs) of what was written; the rest comes now.
    let again = log_in_and_expect(&server, "bob", DMS, BIG).await;
    assert!(
        again >= DMS - 72,
        "the DMs past the kernels come at the next login: {again}"
    );
    server.stop().await;
}

/// A client that reads nothing is cut off once a write has waited `write_timeout_ms`, even
/// with its queue under every bound, and gets what it missed at its next login. (9 MB: the
/// kernel takes up to 4 MB into the socket before a write has to wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_cut_off_after_the_write_timeout() {
    const DMS: u32 = 150;
    let server = TestServer::start_with(|c| {
        c.outbound_bytes = 64 << 20;
        c.write_timeout_ms = 300;
        c.messages_per_second = 0;
    })
    .await;
    drop(server.login("bob").await);
    let mut stalled = stalled_reader(&server, "bob").await;
    let mut alice = server.login("alice").await;
    send_dms(&mut alice, "alice", "bob", DMS, BIG).await;
    assert!(
        closed_within(&mut stalled, Duration::from_secs(2)).await,
        "bob read nothing for 2 s with 9 MB waiting"
    );
    log_in_and_expect(&server, "bob", DMS, BIG).await;
    server.stop().await;
}

/// What a device missed is replayed within the same bounds: a device that logs in to 15 MB
/// and reads none of it is cut off, and gets it all when it comes back reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_a_client_that_does_not_read_is_bounded_too() {
    const DMS: u32 = 250;
    let server = TestServer::start_with(|c| {
        c.outbound_bytes = 256 * 1024;
        c.write_timeout_ms = 300;
        c.messages_per_second = 0;
    })
    .await;
    drop(server.login("bob").await);
    let mut alice = server.login("alice").await;
    send_dms(&mut alice, "alice", "bob", DMS, BIG).await;
    let mut stalled = stalled_reader(&server, "bob").await;
    assert!(
        closed_within(&mut stalled, Duration::from_secs(2)).await,
        "bob's replay waited for a reader that never read"
    );
    log_in_and_expect(&server, "bob", DMS, BIG).await;
    server.stop().await;
}

/// Only `catchups_at_once` devices replay at a time, and a catch-up whose client reads
/// nothing gives its turn up while it waits: with one at a time, bob's replay of 6 MB to a
/// client that reads none of it (and is never cut off) does not keep carol, who logs in
/// next, from getting what she missed. (Before: she waited for bob's client to read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_is_not_read_holds_no_turn_of_the_others() {
    let server = TestServer::start_with(|c| {
        c.catchups_at_once = 1;
        c.outbound_bytes = 256 * 1024;
        c.write_timeout_ms = 0;
        c.messages_per_second = 0;
    })
    .await;
    drop(server.login("bob").await);
    drop(server.login("carol").await);
    let mut alice = server.login("alice").await;
    send_dms(&mut alice, "alice", "bob", 100, BIG).await;
    send_dms(&mut alice, "alice", "carol", 3, 100).await;
    // bob's replay has begun once some of his first message is here; then he reads no more.
    let mut stalled = stalled_reader(&server, "bob").await;
    let mut got = vec![0; 1024];
    let mut read = 0;
    while read < got.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut got[read..]))
            .await
            .expect("bob's login answer and replay begin")
            .unwrap();
        assert!(n > 0, "bob's connection closed");
        read += n;
    }
    let mut carol = BinaryClient::connect(server.addr).await.unwrap();
    carol.timeout = Duration::from_secs(10);
    assert_eq!(carol.login(1, "carol").await.unwrap(), code::OK);
    for i in 0..3 {
        let (text, ..) = carol
            .expect_push()
            .await
            .expect("carol's catch-up, beside bob's");
        assert_eq!(index(&text), i);
    }
    drop(stalled);
    server.stop().await;
}

/// A history page holds as many messages as fit in a frame (`max_frame_bytes`), never more:
/// three 60 KB messages come in three pages, and paging back finds them all, in order.
#[tokio::test]
async fn a_history_page_never_exceeds_a_frame() {
    let server = TestServer::start_with(|c| c.messages_per_second = 0).await;
    let max_frame = common::test_config(server.dir.path()).max_frame_bytes;
    let mut bob = server.login("bob").await;
    let mut alice = server.login("alice").await;
    send_dms(&mut alice, "alice", "bob", 3, BIG).await;
    for _ in 0..3 {
        bob.expect_push().await.unwrap();
    }
    let (mut seen, mut mode, mut value) = (Vec::new(), page::LATEST, 0);
    for cid in 10..20 {
        let target = Bytes::from_static(b"alice");
        let ask = Frame::History {
            cid,
            target,
            mode,
            value,
            limit: 50,
        };
        bob.send(&ask).await.unwrap();
        let Frame::HistoryPage { events, .. } = bob.recv().await.unwrap() else {
            panic!("a history page first");
        };
        let mut encoded = BytesMut::new();
        let page = Frame::HistoryPage { cid, events };
        page.encode(&mut encoded).unwrap();
        assert!(
            encoded.len() - 4 <= max_frame,
            "a page of {} bytes, over max_frame_bytes ({max_frame})",
            encoded.len() - 4
        );
        assert_eq!(bob.expect_response(cid).await.unwrap(), code::OK);
        let Frame::HistoryPage { events, .. } = page else {
            unreachable!()
        };
        if events.is_empty() {
            break;
        }
        // Back from the oldest message of this page.
        (mode, value) = (page::BEFORE_ID, events[0].id);
        let mut indices: Vec<u32> = events.iter().map(|e| index(&e.message)).collect();
        indices.append(&mut seen);
        seen = indices;
    }
    assert_eq!(seen, [0, 1, 2], "every message once, in order");
    server.stop().await;
}

/// A client that pipelines far more requests than the queue holds, which the session
/// answers itself (correlation tests, messages before login, bad frames), and reads as fast
/// as it can, gets every answer, in order: the session reads no more while its answers wait
/// for the client, instead of cutting it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_the_session_answers_are_slowed_down_not_cut_off() {
    const REQUESTS: u32 = 30_000;
    let server = TestServer::start_with(|c| c.outbound_queue = 64).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut requests = BytesMut::new();
    for cid in 0..REQUESTS {
        match cid % 3 {
            0 => Frame::CorrelationTest { cid }
                .encode(&mut requests)
                .unwrap(),
            // A message before login: 0x05.
            1 => binary::encode_message(cid, b"hi", b"a", b"b", 0, &mut requests).unwrap(),
            // An unknown key: 0x09, and the next frame is read.
            _ => {
                requests.extend_from_slice(&[0, 0, 0, 7, 1, 0x7f, 0x7f]);
                requests.extend_from_slice(&cid.to_be_bytes());
            }
        }
    }
    let writing = tokio::spawn(async move {
        write.write_all(&requests).await.unwrap();
        write
    });
    let started = Instant::now();
    let mut buf = BytesMut::new();
    let mut answered = 0;
    while answered < REQUESTS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "answers stopped coming"
        );
        let read = tokio::time::timeout(Duration::from_secs(10), read.read_buf(&mut buf)).await;
        let n = read.expect("an answer within 10 s").unwrap();
        assert!(n > 0, "cut off after {answered} answers");
        while let Some(frame) = binary::decode(&mut buf, 1 << 20).unwrap() {
            let Frame::Response { cid, code } = frame else {
                panic!("{frame:?}")
            };
            assert_eq!(cid, answered, "in order");
            let expected = [code::OK, code::NOT_LOGGED_IN, code::UNKNOWN_COMMAND][cid as usize % 3];
            assert_eq!(code, expected, "request {cid}");
            answered += 1;
        }
    }
    drop(writing.await.unwrap());
    server.stop().await;
}
