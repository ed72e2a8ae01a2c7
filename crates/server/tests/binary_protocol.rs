//! The binary protocol as docs/PROTOCOL.md describes it, over real sockets: login, messages,
//! correlation ids, ordering and pipelining, reconnects, restarts and bad input.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::TestServer;
use parley_client::BinaryClient;
use parley_proto::binary::{self, code, key, Frame};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// alice and bob, both logged in.
async fn alice_and_bob(server: &TestServer) -> (BinaryClient, BinaryClient) {
    (server.login("alice").await, server.login("bob").await)
}

/// A frame with any version and key, its length prefix computed from `body`.
fn raw_frame(version: u8, key: u16, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(7 + body.len());
    frame.extend_from_slice(&(3 + body.len() as u32).to_be_bytes());
    frame.push(version);
    frame.extend_from_slice(&key.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

fn login_bytes(cid: u32, name: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    Frame::Login {
        cid,
        username: Bytes::copy_from_slice(name),
    }
    .encode(&mut out)
    .unwrap();
    out
}

fn message_bytes(cid: u32, from: &str, to: &str, body: &[u8], time: u64) -> BytesMut {
    let mut out = BytesMut::new();
    binary::encode_message(cid, body, from.as_bytes(), to.as_bytes(), time, &mut out).unwrap();
    out
}

/// Logs in with an arbitrary byte string as the name; returns the response code.
async fn login_as_bytes(client: &mut BinaryClient, cid: u32, name: &[u8]) -> u16 {
    client.send_raw(&login_bytes(cid, name)).await.unwrap();
    client.expect_response(cid).await.unwrap()
}

/// The next frame must be a pushed message from `from` with this body.
async fn expect_message(client: &mut BinaryClient, from: &str, body: &[u8]) {
    let (got, got_from, _, _) = client.expect_push().await.unwrap();
    assert_eq!(
        (got_from.as_str(), String::from_utf8_lossy(&got)),
        (from, String::from_utf8_lossy(body)),
    );
}

/// A live message alice → bob goes through: bob's next push is exactly it. Sent after
/// everything else, it also proves nothing else (a duplicate, a forged message) is queued
/// for bob before it.
async fn assert_alice_reaches_bob(alice: &mut BinaryClient, bob: &mut BinaryClient, body: &str) {
    let code = alice
        .message(777_777, "alice", "bob", body.as_bytes(), 1)
        .await
        .unwrap();
    assert_eq!(code, code::OK, "alice → bob: {body}");
    expect_message(bob, "alice", body.as_bytes()).await;
}

/// The server closed the connection without sending anything (a reset counts as closed).
async fn assert_closed_without_response(client: &mut BinaryClient) {
    match client.recv_or_eof().await {
        Ok(None) => {}
        Ok(Some(frame)) => panic!("expected the connection to close, got {frame:?}"),
        Err(e) => panic!("expected the connection to close, got {e:#}"),
    }
}

/// Closes the connection politely (FIN) and waits for the server to close its side, after
/// which the server writes nothing more to it: the user is offline, or about to be.
async fn disconnect(mut client: BinaryClient) {
    client.stream().shutdown().await.unwrap();
    assert_closed_without_response(&mut client).await;
}

/// A request answered with `expected`, on a connection that then keeps working.
async fn assert_answered_and_still_open(client: &mut BinaryClient, cid: u32, expected: u16) {
    assert_eq!(client.expect_response(cid).await.unwrap(), expected);
    client
        .send(&Frame::CorrelationTest { cid: 4242 })
        .await
        .unwrap();
    assert_eq!(client.expect_response(4242).await.unwrap(), code::OK);
}

/// Sends the numbered messages of `range` in one write; every answer must be OK, in order.
async fn send_numbered(
    client: &mut BinaryClient,
    from: &str,
    to: &str,
    range: std::ops::Range<u32>,
) {
    let mut out = BytesMut::new();
    for i in range.clone() {
        binary::encode_message(
            10_000 + i,
            format!("{from}→{to} #{i}").as_bytes(),
            from.as_bytes(),
            to.as_bytes(),
            i as u64,
            &mut out,
        )
        .unwrap();
    }
    client.send_raw(&out).await.unwrap();
    for i in range {
        assert_eq!(
            client.expect_response(10_000 + i).await.unwrap(),
            code::OK,
            "message #{i}"
        );
    }
}

/// The next pushes are exactly the numbered messages of `range`, in order.
async fn expect_numbered(
    client: &mut BinaryClient,
    from: &str,
    to: &str,
    range: std::ops::Range<u32>,
) {
    for i in range {
        let (body, got_from, got_to, time) = client
            .expect_push()
            .await
            .unwrap_or_else(|e| panic!("waiting for {from}→{to} #{i}: {e:#}"));
        assert_eq!(
            (
                String::from_utf8_lossy(&body),
                got_from.as_str(),
                got_to.as_str(),
                time
            ),
            (format!("{from}→{to} #{i}").into(), from, to, i as u64),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn login_is_answered_ok_with_its_cid() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_eq!(client.login(0xDEAD_BEEF, "user1").await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_second_login_on_the_same_connection_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.login("alice").await;
    assert_eq!(
        client.login(2, "carol").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    assert_eq!(
        client.login(3, "alice").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_online_on_another_connection_is_refused_and_the_first_keeps_working() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut impostor = server.client().await;
    assert_eq!(
        impostor.login(5, "alice").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    assert_alice_reaches_bob(&mut alice, &mut bob, "still me").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_client_sequence_login_relogin_close_login_again() {
    let server = TestServer::start().await;
    let mut first = server.client().await;
    assert_eq!(first.login(1, "user1").await.unwrap(), code::OK);
    assert_eq!(
        first.login(2, "user1").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    drop(first);
    let mut second = server.client().await;
    assert_eq!(second.login(3, "user1").await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_logs_in_again_after_its_connection_is_reset() {
    let server = TestServer::start().await;
    let mut first = server.login("alice").await;
    first.stream().set_zero_linger().unwrap();
    drop(first);
    let mut again = server.client().await;
    assert_eq!(again.login(2, "alice").await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_logs_in_again_after_its_connection_ends_in_the_middle_of_a_frame() {
    let server = TestServer::start().await;
    let mut first = server.login("alice").await;
    let frame = message_bytes(2, "alice", "alice", b"never finished", 1);
    first.send_raw(&frame[..frame.len() / 2]).await.unwrap();
    drop(first);
    let mut again = server.client().await;
    assert_eq!(again.login(3, "alice").await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_login_written_one_byte_at_a_time_works() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for byte in login_bytes(9, b"slowpoke").iter() {
        client.stream().write_all(&[*byte]).await.unwrap();
        client.stream().flush().await.unwrap();
    }
    assert_eq!(client.expect_response(9).await.unwrap(), code::OK);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_message_to_a_name_that_never_logged_in_is_user_not_found() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    assert_eq!(
        alice
            .message(2, "alice", "nobody", b"hello?", 1)
            .await
            .unwrap(),
        code::USER_NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_before_login_is_not_logged_in() {
    let server = TestServer::start().await;
    let (_alice, _bob) = alice_and_bob(&server).await;
    let mut anonymous = server.client().await;
    assert_eq!(
        anonymous
            .message(2, "alice", "bob", b"hi", 1)
            .await
            .unwrap(),
        code::NOT_LOGGED_IN
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_before_login_is_not_logged_in_whatever_the_recipient() {
    let server = TestServer::start().await;
    let mut anonymous = server.client().await;
    assert_eq!(
        anonymous
            .message(2, "alice", "no such name", b"hi", 1)
            .await
            .unwrap(),
        code::NOT_LOGGED_IN
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_with_a_forged_sender_is_forbidden_and_never_delivered() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut mallory = server.login("mallory").await;
    assert_eq!(
        mallory
            .message(2, "alice", "bob", b"forged", 1)
            .await
            .unwrap(),
        code::FORBIDDEN
    );
    assert_alice_reaches_bob(&mut alice, &mut bob, "the real alice").await;
    server.stop().await;
}

#[tokio::test]
async fn a_message_with_a_forged_sender_is_forbidden_whatever_the_recipient() {
    let server = TestServer::start().await;
    let mut mallory = server.login("mallory").await;
    assert_eq!(
        mallory
            .message(2, "alice", "no such name", b"forged", 1)
            .await
            .unwrap(),
        code::FORBIDDEN
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_to_oneself_is_delivered_to_oneself() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    alice
        .send_message(2, "alice", "alice", b"note to self", 42)
        .await
        .unwrap();
    // The OK and the push are two frames; the protocol does not order them.
    let (mut answered, mut pushed) = (false, false);
    for _ in 0..2 {
        match alice.recv().await.unwrap() {
            Frame::Response { cid: 2, code } => {
                assert_eq!(code, code::OK);
                answered = true;
            }
            Frame::Message {
                cid: 0,
                message,
                from,
                to,
                time: 42,
            } => {
                assert_eq!(
                    (&message[..], &from[..], &to[..]),
                    (&b"note to self"[..], &b"alice"[..], &b"alice"[..])
                );
                pushed = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(answered && pushed);
    server.stop().await;
}

#[tokio::test]
async fn a_non_utf8_body_is_delivered_byte_identical() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let body: Vec<u8> = (0..=255u8).rev().collect();
    assert_eq!(
        alice.message(2, "alice", "bob", &body, 7).await.unwrap(),
        code::OK
    );
    let (got, from, to, time) = bob.expect_push().await.unwrap();
    assert_eq!(&got[..], &body[..]);
    assert_eq!((from.as_str(), to.as_str(), time), ("alice", "bob", 7));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Correlation ids and pipelining
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn correlation_test_is_ok_before_login() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .send(&Frame::CorrelationTest { cid: 42 })
        .await
        .unwrap();
    assert_eq!(client.expect_response(42).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn correlation_test_is_ok_after_login() {
    let server = TestServer::start().await;
    let mut client = server.login("alice").await;
    client
        .send(&Frame::CorrelationTest { cid: 43 })
        .await
        .unwrap();
    assert_eq!(client.expect_response(43).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn correlation_test_ignores_bytes_after_the_cid() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let body = [&44u32.to_be_bytes()[..], b"\x00\x05user1"].concat();
    client
        .send_raw(&raw_frame(1, key::CORRELATION_TEST, &body))
        .await
        .unwrap();
    assert_eq!(client.expect_response(44).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn twenty_correlation_tests_in_one_write_are_answered_with_their_own_cids() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let cids: Vec<u32> = (0..20).map(|i| 1_000 + i * 37).collect();
    let mut out = BytesMut::new();
    for &cid in &cids {
        Frame::CorrelationTest { cid }.encode(&mut out).unwrap();
    }
    client.send_raw(&out).await.unwrap();
    for &cid in &cids {
        assert_eq!(client.expect_response(cid).await.unwrap(), code::OK);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_hundred_pipelined_messages_are_answered_in_request_order() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let cids: Vec<u32> = (0..100).map(|i| 0xFFFF_FFFF - i * 1_001).collect();
    let mut out = BytesMut::new();
    for (i, &cid) in cids.iter().enumerate() {
        out.extend_from_slice(&message_bytes(
            cid,
            "alice",
            "bob",
            format!("p{i}").as_bytes(),
            i as u64,
        ));
    }
    alice.send_raw(&out).await.unwrap();
    for &cid in &cids {
        assert_eq!(alice.expect_response(cid).await.unwrap(), code::OK);
    }
    for i in 0..100 {
        expect_message(&mut bob, "alice", format!("p{i}").as_bytes()).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn an_error_answer_keeps_its_place_among_pipelined_messages() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut out = message_bytes(1, "alice", "bob", b"first", 1);
    out.extend_from_slice(&raw_frame(1, 0x04, &2u32.to_be_bytes()));
    out.extend_from_slice(&message_bytes(3, "alice", "bob", b"second", 3));
    alice.send_raw(&out).await.unwrap();
    assert_eq!(alice.expect_response(1).await.unwrap(), code::OK);
    assert_eq!(
        alice.expect_response(2).await.unwrap(),
        code::UNKNOWN_COMMAND
    );
    assert_eq!(alice.expect_response(3).await.unwrap(), code::OK);
    expect_message(&mut bob, "alice", b"first").await;
    expect_message(&mut bob, "alice", b"second").await;
    server.stop().await;
}

#[tokio::test]
async fn refusals_and_other_requests_keep_their_places_among_pipelined_messages() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut carol = server.login("carol").await;
    let mut out = message_bytes(1, "alice", "bob", b"one", 1);
    out.extend_from_slice(&message_bytes(2, "alice", "nobody", b"lost", 2));
    out.extend_from_slice(&message_bytes(3, "mallory", "bob", b"forged", 3));
    out.extend_from_slice(&message_bytes(4, "alice", "carol", b"two", 4));
    Frame::CorrelationTest { cid: 5 }.encode(&mut out).unwrap();
    out.extend_from_slice(&message_bytes(6, "alice", "bad name", b"lost", 6));
    out.extend_from_slice(&message_bytes(7, "alice", "bob", b"three", 7));
    alice.send_raw(&out).await.unwrap();
    let expected = [
        (1, code::OK),
        (2, code::USER_NOT_FOUND),
        (3, code::FORBIDDEN),
        (4, code::OK),
        (5, code::OK),
        (6, code::USER_NOT_FOUND),
        (7, code::OK),
    ];
    for (cid, want) in expected {
        assert_eq!(alice.expect_response(cid).await.unwrap(), want, "cid {cid}");
    }
    expect_message(&mut bob, "alice", b"one").await;
    expect_message(&mut bob, "alice", b"three").await;
    expect_message(&mut carol, "alice", b"two").await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "after").await;
    server.stop().await;
}

#[tokio::test]
async fn a_write_of_more_messages_than_may_be_in_flight_is_answered_and_delivered_in_order() {
    // Four in flight: the session hands over what it has read each time it must wait for
    // the hub to answer, instead of waiting with the messages still in hand.
    let server = TestServer::start_with(|c| c.max_inflight = 4).await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut out = BytesMut::new();
    for i in 0..50u32 {
        let body = format!("m{i}");
        out.extend_from_slice(&message_bytes(100 + i, "alice", "bob", body.as_bytes(), 0));
    }
    alice.send_raw(&out).await.unwrap();
    for i in 0..50u32 {
        assert_eq!(alice.expect_response(100 + i).await.unwrap(), code::OK);
    }
    for i in 0..50 {
        expect_message(&mut bob, "alice", format!("m{i}").as_bytes()).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_login_and_fifty_messages_in_one_write_are_all_answered() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    let mut alice = server.client().await;
    let mut out = login_bytes(1, b"alice");
    for i in 0..50u32 {
        out.extend_from_slice(&message_bytes(
            2 + i,
            "alice",
            "bob",
            format!("m{i}").as_bytes(),
            0,
        ));
    }
    alice.send_raw(&out).await.unwrap();
    for cid in 1..=51 {
        assert_eq!(
            alice.expect_response(cid).await.unwrap(),
            code::OK,
            "cid {cid}"
        );
    }
    for i in 0..50 {
        expect_message(&mut bob, "alice", format!("m{i}").as_bytes()).await;
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Ordering and delivery
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn two_hundred_messages_arrive_in_order_with_their_bodies() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    for i in 0..200u32 {
        let body = format!("alice→bob #{i}");
        assert_eq!(
            alice
                .message(i + 1, "alice", "bob", body.as_bytes(), i as u64)
                .await
                .unwrap(),
            code::OK
        );
    }
    expect_numbered(&mut bob, "alice", "bob", 0..200).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_offline_messages_arrive_in_order_after_the_login_ok_and_before_live_ones() {
    let server = TestServer::start().await;
    disconnect(server.login("bob").await).await;
    let mut alice = server.login("alice").await;
    send_numbered(&mut alice, "alice", "bob", 0..1_000).await;

    let mut bob = server.client().await;
    assert_eq!(
        bob.login(7, "bob").await.unwrap(),
        code::OK,
        "the login OK comes first"
    );
    assert_eq!(
        alice.message(8, "alice", "bob", b"live", 8).await.unwrap(),
        code::OK
    );
    expect_numbered(&mut bob, "alice", "bob", 0..1_000).await;
    expect_message(&mut bob, "alice", b"live").await;
    server.stop().await;
}

/// One side of a pair: sends 50 messages in one write, then reads until it has all 50
/// answers (in order) and all 50 of the partner's messages (in order, each once).
async fn converse(mut me: BinaryClient, name: String, partner: String) -> BinaryClient {
    const N: u32 = 50;
    let mut out = BytesMut::new();
    for i in 0..N {
        let body = format!("{name}→{partner} #{i}");
        out.extend_from_slice(&message_bytes(
            i + 1,
            &name,
            &partner,
            body.as_bytes(),
            i as u64,
        ));
    }
    me.send_raw(&out).await.unwrap();
    let (mut answered, mut received) = (0, 0);
    while answered < N || received < N {
        match me.recv().await.unwrap() {
            Frame::Response { cid, code } => {
                assert_eq!((cid, code), (answered + 1, code::OK), "{name}");
                answered += 1;
            }
            Frame::Message {
                cid: 0,
                message,
                from,
                to,
                time,
            } => {
                let expected = format!("{partner}→{name} #{received}");
                assert_eq!(String::from_utf8_lossy(&message), expected, "{name}");
                assert_eq!(
                    (&from[..], &to[..], time),
                    (partner.as_bytes(), name.as_bytes(), received as u64)
                );
                received += 1;
            }
            other => panic!("{name} got {other:?}"),
        }
    }
    me
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pairs_exchanging_fifty_messages_each_get_everything_exactly_once() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for pair in 0..10 {
        for side in ["a", "b"] {
            let name = format!("{side}{pair}");
            clients.push((server.login(&name).await, name));
        }
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(client, name)| {
            let partner = match name.strip_prefix('a') {
                Some(n) => format!("b{n}"),
                None => format!("a{}", &name[1..]),
            };
            tokio::spawn(async move {
                let client = converse(client, name.clone(), partner.clone()).await;
                (client, name, partner)
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("a conversation failed"));
    }
    // A last message each way: the first push after the fifty, so nothing came twice.
    for pair in done.chunks_mut(2) {
        let [(a, a_name, _), (b, b_name, _)] = pair else {
            unreachable!()
        };
        assert_eq!(
            a.message(99, a_name, b_name, b"last", 99).await.unwrap(),
            code::OK
        );
        expect_message(b, a_name, b"last").await;
        assert_eq!(
            b.message(99, b_name, a_name, b"last", 99).await.unwrap(),
            code::OK
        );
        expect_message(a, b_name, b"last").await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_that_disconnects_gets_exactly_what_it_missed_on_its_next_login() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    send_numbered(&mut alice, "alice", "bob", 0..10).await;
    expect_numbered(&mut bob, "alice", "bob", 0..10).await;
    disconnect(bob).await;

    send_numbered(&mut alice, "alice", "bob", 10..20).await;
    let mut bob = server.client().await;
    assert_eq!(bob.login(2, "bob").await.unwrap(), code::OK);
    expect_numbered(&mut bob, "alice", "bob", 10..20).await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "and nothing else").await;
    server.stop().await;
}

/// A session's writer task ends after a moment with nothing to write and a new one starts
/// with the next push: quiet spells in both directions lose and reorder nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_quiet_spells_arrive_in_order() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    for round in 0..3u32 {
        // Longer than a writer lingers (100 ms) on both sides.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let first = round * 10;
        send_numbered(&mut alice, "alice", "bob", first..first + 10).await;
        expect_numbered(&mut bob, "alice", "bob", first..first + 10).await;
    }
    assert_alice_reaches_bob(&mut alice, &mut bob, "and nothing else").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_just_after_the_recipient_closes_is_delivered_at_its_next_login() {
    let server = TestServer::start().await;
    let (mut alice, bob) = alice_and_bob(&server).await;
    let mut bob = Some(bob);
    for round in 0..100 {
        drop(bob.take()); // no waiting for the server to notice
        send_numbered(&mut alice, "alice", "bob", round..round + 1).await;
        let mut again = server.client().await;
        again.timeout = Duration::from_secs(2);
        assert_eq!(again.login(round, "bob").await.unwrap(), code::OK);
        expect_numbered(&mut again, "alice", "bob", round..round + 1).await;
        bob = Some(again);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_survive_a_graceful_restart_and_are_delivered_once() {
    let mut server = TestServer::start().await;
    disconnect(server.login("bob").await).await;
    let mut alice = server.login("alice").await;
    send_numbered(&mut alice, "alice", "bob", 0..20).await;
    drop(alice);

    server.restart().await;
    let mut bob = server.client().await;
    assert_eq!(bob.login(2, "bob").await.unwrap(), code::OK);
    expect_numbered(&mut bob, "alice", "bob", 0..20).await;
    let mut alice = server.login("alice").await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "after the restart").await;
    drop(bob);

    let mut bob = server.client().await;
    assert_eq!(bob.login(3, "bob").await.unwrap(), code::OK);
    assert_alice_reaches_bob(&mut alice, &mut bob, "nothing redelivered").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_recipient_received_is_not_redelivered_after_a_restart() {
    let mut server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    send_numbered(&mut alice, "alice", "bob", 0..20).await;
    expect_numbered(&mut bob, "alice", "bob", 0..20).await;
    drop((alice, bob));

    server.restart().await;
    let mut bob = server.client().await;
    assert_eq!(bob.login(2, "bob").await.unwrap(), code::OK);
    let mut alice = server.login("alice").await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "only this").await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Bad input: each case also checks that alice and bob, already connected, are unaffected
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_length_above_max_frame_bytes_closes_the_connection_without_a_response() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bad = server.client().await;
    bad.send_raw(&[0x00, 0x03, 0x00, 0x13]).await.unwrap(); // length 196627
    assert_closed_without_response(&mut bad).await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn a_length_below_the_header_closes_the_connection() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    for len in 0u32..3 {
        let mut bad = server.client().await;
        bad.send_raw(&len.to_be_bytes()).await.unwrap();
        assert_closed_without_response(&mut bad).await;
    }
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_frame_too_short_to_carry_a_cid_closes_the_connection() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    for frame in [
        &[0, 0, 0, 3, 1, 0, 2][..],          // a message with an empty body
        &[0, 0, 0, 5, 1, 0, 4, 0, 0][..],    // an unknown key with 2 bytes of body
        &[0, 0, 0, 6, 2, 0, 1, 0, 0, 0][..], // an unknown version with 3 bytes of body
    ] {
        let mut bad = server.client().await;
        bad.send_raw(frame).await.unwrap();
        assert_closed_without_response(&mut bad).await;
    }
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_key_is_unknown_command_with_its_cid_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bad = server.client().await;
    bad.send_raw(&[0, 0, 0, 7, 1, 0, 4, 0, 0, 0, 5])
        .await
        .unwrap();
    assert_answered_and_still_open(&mut bad, 5, code::UNKNOWN_COMMAND).await;
    assert_eq!(bad.login(6, "carol").await.unwrap(), code::OK);
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_version_is_unknown_command_with_its_cid() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bad = server.client().await;
    bad.send_raw(&[0, 0, 0, 7, 2, 0, 9, 0, 0, 0, 6])
        .await
        .unwrap();
    assert_answered_and_still_open(&mut bad, 6, code::UNKNOWN_COMMAND).await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn a_login_whose_name_runs_past_the_frame_is_malformed() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bad = server.client().await;
    bad.send_raw(&[
        0, 0, 0, 0x0D, 1, 0, 1, 0, 0, 0, 8, 0, 9, b'u', b's', b'e', b'r',
    ])
    .await
    .unwrap();
    assert_answered_and_still_open(&mut bad, 8, code::MALFORMED).await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn trailing_bytes_after_a_login_are_malformed_and_do_not_log_in() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bad = server.client().await;
    let body = [&9u32.to_be_bytes()[..], b"\x00\x05carol", b"!"].concat();
    bad.send_raw(&raw_frame(1, key::LOGIN, &body))
        .await
        .unwrap();
    assert_answered_and_still_open(&mut bad, 9, code::MALFORMED).await;
    assert_eq!(bad.login(10, "carol").await.unwrap(), code::OK);
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn trailing_bytes_after_a_message_are_malformed_and_nothing_is_delivered() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let whole = message_bytes(12, "alice", "bob", b"with a tail", 1);
    let body = [&whole[7..], b"!"].concat();
    alice
        .send_raw(&raw_frame(1, key::MESSAGE, &body))
        .await
        .unwrap();
    assert_answered_and_still_open(&mut alice, 12, code::MALFORMED).await;
    // bob's next push is this one: the message with a tail was never delivered.
    assert_alice_reaches_bob(&mut alice, &mut bob, "after the tail").await;
    server.stop().await;
}

#[tokio::test]
async fn a_response_frame_sent_by_a_client_is_unknown_command() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bad = server.client().await;
    bad.send(&Frame::Response {
        cid: 11,
        code: code::OK,
    })
    .await
    .unwrap();
    assert_answered_and_still_open(&mut bad, 11, code::UNKNOWN_COMMAND).await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

/// A login as `name` is refused 0x07; the connection can then log in with a valid name.
async fn assert_invalid_name(name: &[u8]) {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut client = server.client().await;
    assert_eq!(
        login_as_bytes(&mut client, 12, name).await,
        code::INVALID_NAME,
        "{:?}",
        String::from_utf8_lossy(name)
    );
    assert_eq!(client.login(13, "carol").await.unwrap(), code::OK);
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_utf8_username_is_invalid_name() {
    assert_invalid_name(&[0xFF, 0xFE, b'x']).await;
}

#[tokio::test]
async fn an_empty_username_is_invalid_name() {
    assert_invalid_name(b"").await;
}

#[tokio::test]
async fn a_33_byte_username_is_invalid_name() {
    assert_invalid_name(&[b'a'; 33]).await;
}

#[tokio::test]
async fn a_32_byte_username_is_fine() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_eq!(login_as_bytes(&mut client, 1, &[b'a'; 32]).await, code::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_username_with_a_space_is_invalid_name() {
    assert_invalid_name(b"alice smith").await;
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn max_frame_bytes_is_honoured() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 128).await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    // length = 29 + body for alice → bob
    let fits = message_bytes(2, "alice", "bob", &[b'x'; 71], 0);
    assert_eq!(fits.len(), 4 + 100);
    alice.send_raw(&fits).await.unwrap();
    assert_eq!(alice.expect_response(2).await.unwrap(), code::OK);
    expect_message(&mut bob, "alice", &[b'x'; 71]).await;

    let mut big = server.login("carol").await;
    let too_big = message_bytes(3, "carol", "bob", &[b'y'; 171], 0);
    assert_eq!(too_big.len(), 4 + 200);
    big.send_raw(&too_big).await.unwrap();
    assert_closed_without_response(&mut big).await;
    assert_alice_reaches_bob(&mut alice, &mut bob, "unaffected").await;
    server.stop().await;
}

#[tokio::test]
async fn a_frame_of_exactly_max_frame_bytes_is_accepted_and_one_more_byte_is_not() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 128).await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let exact = message_bytes(2, "alice", "bob", &[b'x'; 99], 0);
    assert_eq!(exact.len(), 4 + 128);
    alice.send_raw(&exact).await.unwrap();
    assert_eq!(alice.expect_response(2).await.unwrap(), code::OK);
    expect_message(&mut bob, "alice", &[b'x'; 99]).await;

    let mut over = server.client().await;
    over.send_raw(&raw_frame(1, key::CORRELATION_TEST, &[0; 126]))
        .await
        .unwrap();
    assert_closed_without_response(&mut over).await;
    server.stop().await;
}
