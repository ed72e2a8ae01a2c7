//! Rooms created per user and per address are limited (`max_rooms_per_user`,
//! `max_rooms_per_address`); the refusal is a clear error in every protocol, and joining
//! rooms that exist is never limited.

mod common;

use common::TestServer;
use common::{bytes as b, parse, request, PASSWORD};
use parley_proto::binary::{code, Frame};

fn join(cid: u32, room: &str) -> Frame {
    Frame::Join { cid, room: b(room) }
}

/// Per user, in each protocol: the third room is refused with the protocol's error; a
/// room that exists can still be joined; the count holds across a restart.
#[tokio::test]
async fn a_user_past_max_rooms_per_user_is_refused_in_every_protocol() {
    let mut server = TestServer::start_with(|c| c.max_rooms_per_user = 2).await;

    let mut alice = server.login("alice").await;
    assert_eq!(request(&mut alice, join(2, "#a1")).await, code::OK);
    assert_eq!(request(&mut alice, join(3, "#a2")).await, code::OK);
    assert_eq!(
        request(&mut alice, join(4, "#a3")).await,
        code::TOO_MANY_ROOMS
    );

    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #b1").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN #b2").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN #b3").await.unwrap(), "ERR too-many-rooms");
    assert_eq!(bob.ask("JOIN #a1").await.unwrap(), "OK", "an existing room");

    let mut carol = server.json().await;
    let reply = parse(
        &carol
            .ask(r#"{"command":"REGISTER","data":"carol"}"#)
            .await
            .unwrap(),
    );
    assert_eq!(reply["success"], true, "{reply}");
    for room in ["#c1", "#c2"] {
        let ask = format!(r#"{{"command":"JOIN","room":"{room}"}}"#);
        let reply = parse(&carol.ask(&ask).await.unwrap());
        assert_eq!(reply["success"], true, "{room}: {reply}");
    }
    let reply = parse(
        &carol
            .ask(r##"{"command":"JOIN","room":"#c3"}"##)
            .await
            .unwrap(),
    );
    assert_eq!(reply["success"], false, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .starts_with("Too many rooms"),
        "{reply}"
    );
    drop((alice, bob, carol));

    // Rooms a user created are counted again at start.
    server.register("dave").await;
    let mut dave = server.text().await;
    let login = format!("LOGIN dave {PASSWORD} phone");
    assert_eq!(dave.ask(&login).await.unwrap(), "OK");
    assert_eq!(dave.ask("JOIN #d1").await.unwrap(), "OK");
    assert_eq!(dave.ask("JOIN #d2").await.unwrap(), "OK");
    drop(dave);
    server.restart_with(|c| c.max_rooms_per_user = 2).await;
    let mut dave = server.text().await;
    assert_eq!(dave.ask(&login).await.unwrap(), "OK");
    assert_eq!(dave.ask("JOIN #d3").await.unwrap(), "ERR too-many-rooms");
    assert_eq!(dave.ask("JOIN #d1").await.unwrap(), "OK", "his own room");
    server.stop().await;
}

/// Per address: many users from one address (all of a test's connections come from
/// 127.0.0.1) share its limit, and so do guests.
#[tokio::test]
async fn an_address_past_max_rooms_per_address_is_refused() {
    let server = TestServer::start_with(|c| c.max_rooms_per_address = 3).await;
    // Kept online: a disconnect's notice may reach the next one before its answer.
    let mut online = Vec::new();
    for (i, name) in ["u1", "u2", "u3"].iter().enumerate() {
        let mut c = server.text_login(name).await;
        assert_eq!(c.ask(&format!("JOIN #r{i}")).await.unwrap(), "OK");
        online.push(c);
    }
    let mut late = server.text_login("u4").await;
    assert_eq!(late.ask("JOIN #r9").await.unwrap(), "ERR too-many-rooms");
    assert_eq!(
        late.ask("JOIN #r0").await.unwrap(),
        "OK",
        "an existing room"
    );
    server.stop().await;
}
