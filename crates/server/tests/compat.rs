//! The seed systems' behaviours that earlier tests did not cover (issue 23's smaller gaps),
//! over real sockets with the default settings: each test names the seed whose client
//! depends on it (../shared/COMPAT.md, docs/PROTOCOL.md).

mod common;

use common::TestServer;
use parley_proto::binary::{self, code};

// ---------------------------------------------------------------------------------------
// Seed 000: the binary protocol
// ---------------------------------------------------------------------------------------

/// A text of the longest length a string may have (65,535 bytes), not all one byte.
fn longest_text() -> Vec<u8> {
    (0..u16::MAX as u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect()
}

#[tokio::test]
async fn seed000_a_message_of_the_longest_text_is_delivered_intact() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let text = longest_text();
    let sent = alice.message(2, "alice", "bob", &text, 42).await.unwrap();
    assert_eq!(sent, code::OK);
    let (body, from, to, time) = bob.expect_push().await.unwrap();
    assert_eq!((from.as_str(), to.as_str(), time), ("alice", "bob", 42));
    assert!(body[..] == text[..], "the text arrives byte for byte");
    // The connections go on.
    assert_eq!(
        alice
            .message(3, "alice", "bob", b"after", 43)
            .await
            .unwrap(),
        code::OK
    );
    assert_eq!(&bob.expect_push().await.unwrap().0[..], b"after");
    server.stop().await;
}

#[tokio::test]
async fn seed000_a_frame_of_three_longest_strings_is_answered_not_closed() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let long = vec![b'x'; u16::MAX as usize];
    let mut frame = bytes::BytesMut::new();
    binary::encode_message(5, &long, &long, &long, 0, &mut frame).unwrap();
    assert_eq!(
        frame.len(),
        4 + binary::MAX_MESSAGE_FRAME,
        "the largest legal frame"
    );
    alice.send_raw(&frame).await.unwrap();
    // Its `from` is not alice: refused with a code, on a connection that stays open.
    let refused = alice.expect_response(5).await.unwrap();
    assert_ne!(refused, code::OK);
    assert_eq!(
        alice
            .message(6, "alice", "bob", b"still here", 1)
            .await
            .unwrap(),
        code::OK
    );
    assert_eq!(&bob.expect_push().await.unwrap().0[..], b"still here");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Seed 002: text lines (SocketChat-Go)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn seed002_spaces_around_a_dm_text_are_not_part_of_it() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    alice.send("DM bob   spaced   reply  ").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice spaced   reply");
    alice.send("DM bob \tafter a tab").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice after a tab");
    server.stop().await;
}

#[tokio::test]
async fn seed002_spaces_around_a_msg_text_are_not_part_of_it() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    alice.send("MSG    hello   all  ").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "MSG alice hello   all");
    server.stop().await;
}
