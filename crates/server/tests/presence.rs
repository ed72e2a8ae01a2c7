//! Live presence over real sockets: a session watches the users it shows (`WATCH`) and is
//! told when each comes online or goes offline (with when), in the JSON protocol after
//! `SUBSCRIBE` and in the binary protocol after `EnableAcks`. Sessions that watch nothing
//! keep the old behaviour (JSON's `disconnected` to everyone); a seed-000 style binary
//! session and a text session get nothing new.

mod common;

use common::{bytes as b, now_ms, parse, request, TestServer, PASSWORD};
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{code, Frame};
use serde_json::{json, Value};

async fn ask(c: &mut LineClient, request: Value) -> Value {
    let answer = parse(&c.ask(&request.to_string()).await.unwrap());
    assert_eq!(answer["success"], true, "{request} → {answer}");
    answer
}

/// A JSON session of the account `name` (created first), subscribed.
async fn json_user(server: &TestServer, name: &str) -> LineClient {
    server.register(name).await;
    let mut c = server.json().await;
    ask(
        &mut c,
        json!({"command": "LOGIN", "data": name, "password": PASSWORD}),
    )
    .await;
    ask(&mut c, json!({"command": "SUBSCRIBE"})).await;
    c
}

async fn next(c: &mut LineClient) -> Value {
    parse(&c.line().await.unwrap())
}

/// Proves nothing was pushed: PING's answer comes next.
async fn json_quiet(c: &mut LineClient) {
    let pong = ask(c, json!({"command": "PING"})).await;
    assert_eq!(pong["message"], "PONG", "{pong}");
}

async fn binary_quiet(c: &mut BinaryClient) {
    c.send(&Frame::CorrelationTest { cid: 99 }).await.unwrap();
    match c.recv().await.unwrap() {
        Frame::Response { cid: 99, code } => assert_eq!(code, code::OK),
        other => panic!("a frame came first: {other:?}"),
    }
}

/// A watching JSON session is told when a watched user comes online (first session) and
/// goes offline (last session), with when; not about others, not for a second device;
/// the answer to `WATCH` says where each stands now.
#[tokio::test]
async fn a_json_session_is_told_when_a_watched_user_comes_and_goes() {
    let server = TestServer::start().await;
    let mut alice = json_user(&server, "alice").await;
    server.register("bob").await;
    server.register("carol").await;
    let watch = ask(
        &mut alice,
        json!({"command": "WATCH", "users": ["bob", "nobody"]}),
    )
    .await;
    let list = watch["data"].as_array().unwrap();
    assert_eq!(list.len(), 1, "unknown names are left out: {watch}");
    assert_eq!(
        (&list[0]["name"], &list[0]["online"]),
        (&json!("bob"), &json!(false))
    );

    let mut bob = server.text().await;
    let login = format!("LOGIN bob {PASSWORD} laptop");
    assert_eq!(bob.ask(&login).await.unwrap(), "OK");
    assert_eq!(
        next(&mut alice).await,
        json!({"event": "online", "user": "bob"})
    );
    // A second device of bob: he was online already.
    let mut bob2 = server.text().await;
    let login2 = format!("LOGIN bob {PASSWORD} phone");
    assert_eq!(bob2.ask(&login2).await.unwrap(), "OK");
    // carol is not watched.
    let mut carol = server.text().await;
    assert_eq!(
        carol.ask(&format!("LOGIN carol {PASSWORD}")).await.unwrap(),
        "OK"
    );
    drop(carol);
    json_quiet(&mut alice).await;

    drop(bob2);
    let before = now_ms() as i64;
    drop(bob);
    let offline = next(&mut alice).await;
    assert_eq!(
        (&offline["event"], &offline["user"]),
        (&json!("offline"), &json!("bob"))
    );
    let seen = offline["last_seen"].as_i64().unwrap();
    assert!(seen >= before && seen <= now_ms() as i64 + 1, "{offline}");
    // A watching session is not sent everyone's disconnects (carol's among them).
    json_quiet(&mut alice).await;
    let watch = ask(&mut alice, json!({"command": "WATCH", "users": ["bob"]})).await;
    assert_eq!(watch["data"][0]["last_seen"], json!(seen), "{watch}");
    server.stop().await;
}

/// A session that watches nothing keeps the old notices: JSON's `disconnected` for
/// everyone, no `online`. Text sessions get only seed 002's `INFO <name> disconnected`.
#[tokio::test]
async fn sessions_that_watch_nothing_keep_the_old_notices() {
    let server = TestServer::start().await;
    let mut old = json_user(&server, "old").await;
    let mut text = server.text_login("ted").await;
    let mut bob = server.text_login("bob").await;
    json_quiet(&mut old).await;
    assert_eq!(
        text.ask("PING").await.unwrap(),
        "PONG",
        "no line for bob's login"
    );
    assert_eq!(bob.ask("QUIT").await.unwrap(), "BYE");
    assert_eq!(
        next(&mut old).await,
        json!({"event": "disconnected", "user": "bob"})
    );
    assert_eq!(text.line().await.unwrap(), "INFO bob disconnected");
    server.stop().await;
}

/// A binary session that enabled acks gets `Presence` frames for the users it watches; a
/// seed-000 style session (no acks) is never sent a frame it did not ask for.
#[tokio::test]
async fn a_binary_session_with_acks_gets_presence_frames() {
    let server = TestServer::start().await;
    server.register("alice").await;
    server.register("bob").await;
    let mut alice = server.client().await;
    assert_eq!(
        request(&mut alice, Frame::EnableAcks { cid: 1 }).await,
        code::OK
    );
    let login = Frame::LoginPassword {
        cid: 2,
        username: b("alice"),
        password: b(PASSWORD),
        device: b("term"),
        flags: 0,
    };
    assert_eq!(request(&mut alice, login).await, code::OK);
    let mut seed = server.login("seed").await;
    for c in [&mut alice, &mut seed] {
        c.send(&Frame::Watch {
            cid: 3,
            users: vec![b("bob")],
        })
        .await
        .unwrap();
        match c.recv().await.unwrap() {
            Frame::Users { cid: 3, users } => {
                assert_eq!(users.len(), 1);
                assert_eq!((&users[0].name[..], users[0].online), (&b"bob"[..], false));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.expect_response(3).await.unwrap(), code::OK);
    }

    let mut bob = server.client().await;
    let login = Frame::LoginPassword {
        cid: 1,
        username: b("bob"),
        password: b(PASSWORD),
        device: b("phone"),
        flags: 0,
    };
    assert_eq!(request(&mut bob, login).await, code::OK);
    match alice.recv().await.unwrap() {
        Frame::Presence {
            cid: 0,
            user,
            online,
            ..
        } => assert_eq!((&user[..], online), (&b"bob"[..], true)),
        other => panic!("{other:?}"),
    }
    common::close(bob).await;
    match alice.recv().await.unwrap() {
        Frame::Presence {
            cid: 0,
            user,
            online,
            last_seen,
        } => {
            assert_eq!((&user[..], online), (&b"bob"[..], false));
            assert!(last_seen > 0);
        }
        other => panic!("{other:?}"),
    }
    binary_quiet(&mut seed).await;
    server.stop().await;
}

/// A watch list is bounded (`max_watched_users`): a longer one is refused, not cut.
#[tokio::test]
async fn a_watch_list_past_the_limit_is_refused() {
    let server = TestServer::start_with(|c| c.max_watched_users = 2).await;
    let mut alice = json_user(&server, "alice").await;
    let answer = parse(
        &alice
            .ask(&json!({"command": "WATCH", "users": ["a", "b", "c"]}).to_string())
            .await
            .unwrap(),
    );
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["message"], "Line too long", "{answer}");
    ask(&mut alice, json!({"command": "WATCH", "users": ["a", "b"]})).await;
    server.stop().await;
}
