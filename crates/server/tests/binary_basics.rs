//! The seed-000 binary protocol's mandatory behaviour, over real sockets.

mod common;

use common::TestServer;
use parley_proto::binary::code;

#[tokio::test]
async fn a_message_reaches_an_online_recipient_as_sent() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;

    let code = alice
        .message(2, "alice", "bob", b"hi bob", 1_700_000_000_123_456_789)
        .await
        .unwrap();
    assert_eq!(code, code::OK);

    let (body, from, to, time) = bob.expect_push().await.unwrap();
    assert_eq!(&body[..], b"hi bob");
    assert_eq!((from.as_str(), to.as_str()), ("alice", "bob"));
    assert_eq!(time, 1_700_000_000_123_456_789);
    server.stop().await;
}

#[tokio::test]
async fn offline_messages_arrive_after_the_login_ok_in_order_before_new_ones() {
    let server = TestServer::start().await;
    drop(server.login("bob").await);
    let mut alice = server.login("alice").await;
    for i in 0..5u32 {
        let code = alice
            .message(
                10 + i,
                "alice",
                "bob",
                format!("offline {i}").as_bytes(),
                i as u64,
            )
            .await
            .unwrap();
        assert_eq!(code, code::OK);
    }

    let mut bob = server.client().await;
    assert_eq!(
        bob.login(7, "bob").await.unwrap(),
        code::OK,
        "the login OK comes first"
    );
    assert_eq!(
        alice
            .message(99, "alice", "bob", b"live", 99)
            .await
            .unwrap(),
        code::OK
    );
    for i in 0..5 {
        let (body, ..) = bob.expect_push().await.unwrap();
        assert_eq!(body, format!("offline {i}"));
    }
    let (body, ..) = bob.expect_push().await.unwrap();
    assert_eq!(&body[..], b"live");
    server.stop().await;
}

#[tokio::test]
async fn a_name_can_log_in_again_right_after_its_connection_closes() {
    let server = TestServer::start().await;
    let mut first = server.login("user1").await;
    assert_eq!(
        first.login(2, "user1").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    drop(first);
    let mut again = server.client().await;
    assert_eq!(again.login(3, "user1").await.unwrap(), code::OK);
    server.stop().await;
}
