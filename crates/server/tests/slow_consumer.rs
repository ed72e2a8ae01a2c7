//! A reader that stops reading is disconnected once its queue is full, nobody else waits
//! for it, and it gets everything it missed when it logs in again.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::TestServer;
use parley_client::BinaryClient;
use parley_proto::binary::{self, code, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

/// Messages sent to the stalled reader, each large enough to fill buffers quickly.
const MESSAGES: u32 = 400;
const BODY: usize = 16 * 1024;

fn body(i: u32) -> Vec<u8> {
    let mut body = format!("{i:06}").into_bytes();
    body.resize(BODY, b'.');
    body
}

/// A binary connection with a tiny receive buffer, logged in as `name`, that then reads
/// nothing.
async fn stalled_reader(server: &TestServer, name: &str) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let mut login = BytesMut::new();
    let username = bytes::Bytes::copy_from_slice(name.as_bytes());
    Frame::Login { cid: 1, username }
        .encode(&mut login)
        .unwrap();
    stream.write_all(&login).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_dropped_and_gets_everything_at_its_next_login() {
    let server = TestServer::start_with(|c| {
        c.outbound_queue = 16;
        c.messages_per_second = 0;
    })
    .await;
    drop(server.login("bob").await);
    let stalled = stalled_reader(&server, "bob").await;
    let mut alice = server.login("alice").await;
    let mut carol = server.login("carol").await;
    let mut dave = server.login("dave").await;

    // Everything alice sends is acknowledged: it is stored, whatever bob does.
    for window in (0..MESSAGES).collect::<Vec<_>>().chunks(50) {
        for &i in window {
            alice
                .send_message(i, "alice", "bob", &body(i), i as u64)
                .await
                .unwrap();
        }
        for &i in window {
            assert_eq!(
                alice.expect_response(i).await.unwrap(),
                code::OK,
                "message {i}"
            );
        }
    }
    // Others are not slowed down by bob: carol and dave still talk at once.
    assert_eq!(
        carol
            .message(9, "carol", "dave", b"still here", 0)
            .await
            .unwrap(),
        code::OK
    );
    let (text, ..) = dave.expect_push().await.unwrap();
    assert_eq!(&text[..], b"still here");

    // bob's stalled session was dropped as a slow consumer. What its kernel had already
    // taken (and acknowledged) is still in that socket for it to read; everything else
    // comes to its next session. Together: every message, each stream in order.
    let mut bob = BinaryClient::connect(server.addr).await.unwrap();
    bob.timeout = Duration::from_secs(20);
    let mut logged_in = false;
    for attempt in 0..20 {
        // A login of an online name waits for the old session to finish closing.
        if bob.login(100 + attempt, "bob").await.unwrap() == code::OK {
            logged_in = true;
            break;
        }
    }
    assert!(logged_in, "bob's stalled session should have been dropped");
    let buffered = frames_until_closed(stalled).await;
    let first_new = expect_index(&mut bob).await;
    let last_buffered = buffered.last().copied();
    assert_eq!(
        buffered,
        (0..buffered.len() as u32).collect::<Vec<_>>(),
        "in order"
    );
    assert!(
        first_new <= last_buffered.map_or(0, |i| i + 1),
        "nothing between {last_buffered:?} and {first_new} may be missing"
    );
    for expected in first_new + 1..MESSAGES {
        assert_eq!(expect_index(&mut bob).await, expected);
    }
    // Nothing more: a ping's answer is the next frame.
    bob.send(&Frame::CorrelationTest { cid: 7 }).await.unwrap();
    assert!(matches!(
        bob.recv().await.unwrap(),
        Frame::Response { cid: 7, .. }
    ));
    server.stop().await;
}

/// The index of the next message pushed to `client` (its `time` field).
async fn expect_index(client: &mut BinaryClient) -> u32 {
    let (text, from, _, time) = client.expect_push().await.unwrap();
    assert_eq!(from, "alice");
    let i = u32::try_from(time).unwrap();
    assert_eq!(&text[..], &body(i)[..]);
    i
}

/// The indices of the complete message frames left in a socket the server closed.
async fn frames_until_closed(mut stream: tokio::net::TcpStream) -> Vec<u32> {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::new();
    let read_all = async { while stream.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {} };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the server closed the stalled connection");
    let mut indices = Vec::new();
    while let Ok(Some(frame)) = binary::decode(&mut buf, usize::MAX >> 1) {
        match frame {
            Frame::Message { time, .. } => indices.push(time as u32),
            Frame::Response { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    indices
}
