//! Messaging over real sockets (issue #6): several recipients and everyone, rooms across
//! protocols, listings with presence, history paging across a restart, and the log seen by
//! the devices of an account: a cursor per device, acks, catch-up meeting live traffic, and
//! connections that die without a close.

mod common;

use common::{bytes as b, close, now_ms, parse, request, rfc3339_ms, PASSWORD};

use std::time::Duration;

use common::TestServer;
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{code, kind, page, Event, Frame, RoomEntry, UserEntry};
use serde_json::{json, Value};

/// How long a client listens to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn numbered(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// A binary session of the account `name` on `device`. Acks are enabled before the login,
/// so nothing counts as received until the client acks it.
async fn device(server: &TestServer, name: &str, device: &str) -> BinaryClient {
    let mut c = server.client().await;
    c.send(&Frame::EnableAcks { cid: 1 }).await.unwrap();
    assert_eq!(c.expect_response(1).await.unwrap(), code::OK);
    let login = Frame::LoginPassword {
        cid: 2,
        username: b(name),
        password: b(PASSWORD),
        device: b(device),
        flags: 0,
    };
    c.send(&login).await.unwrap();
    assert_eq!(c.expect_response(2).await.unwrap(), code::OK, "{device}");
    c
}

/// A text session of the account `name` on `device`.
async fn text_device(server: &TestServer, name: &str, device: &str) -> LineClient {
    let mut c = server.text().await;
    let login = format!("LOGIN {name} {PASSWORD} {device}");
    assert_eq!(c.ask(&login).await.unwrap(), "OK", "{device}");
    c
}

/// A JSON session of the password-less user `name`, subscribed to pushes.
async fn json_user(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.json().await;
    let register = json!({"command": "REGISTER", "data": name});
    let reply = parse(&c.ask(&register.to_string()).await.unwrap());
    assert_eq!(reply["success"], true, "{reply}");
    subscribe(&mut c).await;
    c
}

async fn subscribe(c: &mut LineClient) {
    let reply = parse(&c.ask(r#"{"command":"SUBSCRIBE"}"#).await.unwrap());
    assert_eq!(reply["message"], "Subscribed", "{reply}");
}

/// The next line that is not a presence notice (`INFO ...`, a JSON `joined`/`left`/...).
async fn next_message(c: &mut LineClient) -> String {
    loop {
        let line = c.line().await.unwrap();
        let notice = line.starts_with("INFO ")
            || (line.starts_with(r#"{"event":"#) && !line.starts_with(r#"{"event":"message""#));
        if !notice {
            return line;
        }
    }
}

/// Reads lines until `line` arrives.
async fn wait_for_line(c: &mut LineClient, line: &str) {
    while c.line().await.unwrap() != line {}
}

/// Sends a direct message over the seed's 0x02 frame and waits for its OK.
async fn dm(c: &mut BinaryClient, from: &str, to: &str, text: &str) {
    let reply = c.message(7, from, to, text.as_bytes(), 1).await.unwrap();
    assert_eq!(reply, code::OK, "{from} -> {to}: {text}");
}

/// Sends `count` direct messages (`body(1..=count)`) in windows of 200 pipelined frames,
/// waiting for every OK.
async fn send_pipelined(
    c: &mut BinaryClient,
    from: &str,
    to: &str,
    count: usize,
    body: impl Fn(usize) -> String,
) {
    let all: Vec<u32> = (1..=count as u32).collect();
    for window in all.chunks(200) {
        for &i in window {
            let text = body(i as usize);
            c.send_message(i, from, to, text.as_bytes(), 1)
                .await
                .unwrap();
        }
        for &i in window {
            assert_eq!(c.expect_response(i).await.unwrap(), code::OK, "message {i}");
        }
    }
}

/// The next pushed `Event`, past the notices (joins, leaves) a session with acks is sent.
async fn event(c: &mut BinaryClient) -> Event {
    loop {
        match c.recv().await.unwrap() {
            Frame::Event { cid: 0, event } => return event,
            Frame::Notice { cid: 0, .. } => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

async fn events(c: &mut BinaryClient, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(event(c).await);
    }
    out
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.message.to_vec()).unwrap())
        .collect()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// "I have everything of this event's conversation up to it."
async fn ack(c: &mut BinaryClient, e: &Event) {
    let frame = Frame::Ack {
        cid: 0,
        conversation: e.conversation,
        seq: e.seq,
    };
    c.send(&frame).await.unwrap();
}

/// Nothing arrives within `QUIET` (and the connection stays open).
async fn nothing_more(c: &mut BinaryClient) {
    let saved = c.timeout;
    c.timeout = QUIET;
    let got = c.recv_or_eof().await;
    c.timeout = saved;
    match got {
        Err(e) if e.to_string().contains("timed out") => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// A page of history (`page::*` mode) of the conversation with `target`.
async fn history(
    c: &mut BinaryClient,
    target: &str,
    mode: u8,
    value: u64,
    limit: u16,
) -> Vec<Event> {
    let frame = Frame::History {
        cid: 9,
        target: b(target),
        mode,
        value,
        limit,
    };
    c.send(&frame).await.unwrap();
    let Frame::HistoryPage { cid: 9, events } = c.recv().await.unwrap() else {
        panic!("expected a history page");
    };
    assert_eq!(c.expect_response(9).await.unwrap(), code::OK);
    events
}

/// `(seq, sender, text)` of each line of a text `HISTORY` answer, up to its `OK`.
async fn text_history(c: &mut LineClient, command: &str) -> Vec<(u64, String, String)> {
    c.send(command).await.unwrap();
    let mut out = Vec::new();
    loop {
        let line = c.line().await.unwrap();
        if line == "OK" {
            return out;
        }
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        assert_eq!(fields[0], "HISTORY", "{line:?}");
        out.push((
            fields[2].parse().unwrap(),
            fields[4].to_string(),
            fields[5].to_string(),
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Several recipients and everyone
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn send_many_reaches_each_recipient_in_their_protocol() {
    let server = TestServer::start().await;
    server.register("bob").await;
    let mut bob = device(&server, "bob", "phone").await;
    let mut carol = server.text_login("carol").await;
    let mut dave = json_user(&server, "dave").await;
    let mut alice = server.login("alice").await;

    let send = Frame::SendMany {
        cid: 2,
        to: vec![b("bob"), b("carol"), b("dave")],
        message: b("hello all"),
        time: 1,
    };
    assert_eq!(request(&mut alice, send).await, code::OK);

    let e = event(&mut bob).await;
    assert_eq!(
        (e.kind, &e.from[..], &e.to[..], &e.message[..], e.seq),
        (
            kind::DIRECT,
            &b"alice"[..],
            &b"bob"[..],
            &b"hello all"[..],
            1
        )
    );
    assert_eq!(carol.line().await.unwrap(), "DM alice hello all");
    let pushed = parse(&dave.line().await.unwrap());
    assert_eq!(
        (&pushed["kind"], &pushed["from"], &pushed["to"]),
        (&json!("dm"), &json!("alice"), &json!("dave"))
    );
    assert_eq!(
        (&pushed["text"], &pushed["seq"]),
        (&json!("hello all"), &json!(1))
    );
    nothing_more(&mut bob).await;
    carol.no_line_within(QUIET).await.unwrap();
    dave.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn send_many_with_an_unknown_name_sends_to_nobody() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    let mut alice = server.login("alice").await;

    let send = Frame::SendMany {
        cid: 2,
        to: vec![b("bob"), b("nobody")],
        message: b("hello"),
        time: 1,
    };
    assert_eq!(request(&mut alice, send).await, code::USER_NOT_FOUND);
    nothing_more(&mut bob).await;
    server.stop().await;
}

#[tokio::test]
async fn a_name_repeated_in_send_many_gets_the_message_once() {
    let server = TestServer::start().await;
    server.register("bob").await;
    let mut bob = device(&server, "bob", "phone").await;
    let mut alice = server.login("alice").await;

    let send = Frame::SendMany {
        cid: 2,
        to: vec![b("bob"), b("bob")],
        message: b("once"),
        time: 1,
    };
    assert_eq!(request(&mut alice, send).await, code::OK);
    assert_eq!(texts(&[event(&mut bob).await]), ["once"]);
    nothing_more(&mut bob).await;
    server.stop().await;
}

#[tokio::test]
async fn a_text_dm_to_several_names_reaches_each_of_them() {
    let server = TestServer::start().await;
    server.register("bob").await;
    let mut bob = device(&server, "bob", "phone").await;
    let mut carol = json_user(&server, "carol").await;
    let mut alice = server.text_login("alice").await;

    alice.send("DM bob,carol hi both").await.unwrap();
    assert_eq!(alice.ask("PING").await.unwrap(), "PONG", "no error first");

    let e = event(&mut bob).await;
    assert_eq!(
        (&e.from[..], &e.message[..]),
        (&b"alice"[..], &b"hi both"[..])
    );
    let pushed = parse(&carol.line().await.unwrap());
    assert_eq!(
        (&pushed["from"], &pushed["to"], &pushed["text"]),
        (&json!("alice"), &json!("carol"), &json!("hi both"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_text_dm_naming_an_unknown_user_is_sent_to_nobody() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    let mut alice = server.text_login("alice").await;

    let reply = alice.ask("DM bob,nobody hello").await.unwrap();
    assert_eq!(reply, "ERR user-not-found");
    nothing_more(&mut bob).await;
    server.stop().await;
}

#[tokio::test]
async fn a_json_dm_with_recipients_reaches_each_of_them() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    let mut carol = server.text_login("carol").await;
    let mut dave = json_user(&server, "dave").await;

    let dm = json!({"command": "DM", "recipients": ["bob", "carol"], "data": "hi you two"});
    let reply = parse(&dave.ask(&dm.to_string()).await.unwrap());
    assert_eq!(reply["message"], "Message sent", "{reply}");

    let (text, from, to, _) = bob.expect_push().await.unwrap();
    assert_eq!(
        (&text[..], &*from, &*to),
        (&b"hi you two"[..], "dave", "bob")
    );
    assert_eq!(carol.line().await.unwrap(), "DM dave hi you two");
    server.stop().await;
}

#[tokio::test]
async fn send_all_reaches_everyone_online_in_every_protocol_but_the_sending_session() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let mut bob = server.text_login("bob").await;
    let mut carol = json_user(&server, "carol").await;
    let mut dave = server.login("dave").await;

    let send = Frame::SendAll {
        cid: 3,
        message: b("hello everyone"),
        time: 1,
    };
    assert_eq!(request(&mut phone, send).await, code::OK);

    let e = event(&mut laptop).await;
    assert_eq!(
        (e.kind, &e.from[..], &e.to[..], &e.message[..]),
        (
            kind::BROADCAST,
            &b"alice"[..],
            &b"*"[..],
            &b"hello everyone"[..]
        )
    );
    assert_eq!(bob.line().await.unwrap(), "MSG alice hello everyone");
    let pushed = parse(&carol.line().await.unwrap());
    assert_eq!(
        (&pushed["kind"], &pushed["from"], &pushed["text"]),
        (
            &json!("broadcast"),
            &json!("alice"),
            &json!("hello everyone")
        )
    );
    let (text, from, to, _) = dave.expect_push().await.unwrap();
    assert_eq!(
        (&text[..], &*from, &*to),
        (&b"hello everyone"[..], "alice", "*")
    );
    nothing_more(&mut phone).await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Rooms, members, users
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_user_in_three_rooms_joined_over_three_protocols_gets_each_rooms_messages() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut laptop = text_device(&server, "alice", "laptop").await;
    assert_eq!(laptop.ask("JOIN green").await.unwrap(), "OK");
    assert_eq!(laptop.ask("QUIT").await.unwrap(), "BYE");
    let mut web = server.json().await;
    let login = json!({"command": "LOGIN", "data": "alice", "password": PASSWORD, "device": "web"});
    assert_eq!(json_data(&mut web, login).await, "");
    let join = json!({"command": "JOIN", "room": "blue"});
    assert_eq!(json_data(&mut web, join).await, "");
    assert_eq!(json_data(&mut web, json!({"command": "QUIT"})).await, "");
    let mut phone = device(&server, "alice", "phone").await;
    let join = Frame::Join {
        cid: 3,
        room: b("red"),
    };
    assert_eq!(request(&mut phone, join).await, code::OK);

    let mut bob = server.login("bob").await;
    for (cid, room) in [(2, "red"), (3, "green"), (4, "blue")] {
        let join = Frame::Join { cid, room: b(room) };
        assert_eq!(request(&mut bob, join).await, code::OK);
        let say = Frame::SendRoom {
            cid,
            room: b(room),
            message: b(&format!("in {room}")),
            time: 1,
        };
        assert_eq!(request(&mut bob, say).await, code::OK);
    }

    let got = events(&mut phone, 3).await;
    let rooms: Vec<(u8, &[u8], &[u8])> = got
        .iter()
        .map(|e| (e.kind, &e.to[..], &e.from[..]))
        .collect();
    assert_eq!(
        rooms,
        [
            (kind::ROOM, &b"red"[..], &b"bob"[..]),
            (kind::ROOM, &b"green"[..], &b"bob"[..]),
            (kind::ROOM, &b"blue"[..], &b"bob"[..]),
        ]
    );
    assert_eq!(texts(&got), ["in red", "in green", "in blue"]);
    server.stop().await;
}

#[tokio::test]
async fn a_room_message_reaches_the_members_in_each_protocol() {
    let server = TestServer::start().await;
    server.register("erin").await;
    let mut erin = device(&server, "erin", "phone").await;
    let mut carol = server.text_login("carol").await;
    let mut dave = json_user(&server, "dave").await;
    let mut bob = server.login("bob").await;
    for (cid, c) in [(3, &mut erin), (4, &mut bob)] {
        let join = Frame::Join {
            cid,
            room: b("red"),
        };
        assert_eq!(request(c, join).await, code::OK);
    }
    assert_eq!(carol.ask("JOIN red").await.unwrap(), "OK");
    let join = json!({"command": "JOIN", "room": "red"});
    assert_eq!(json_data(&mut dave, join).await, "");

    let say = Frame::SendRoom {
        cid: 5,
        room: b("red"),
        message: b("hi room"),
        time: 1,
    };
    assert_eq!(request(&mut bob, say).await, code::OK);

    let e = event(&mut erin).await;
    assert_eq!(
        (e.kind, &e.from[..], &e.to[..], &e.message[..]),
        (kind::ROOM, &b"bob"[..], &b"red"[..], &b"hi room"[..])
    );
    assert_eq!(next_message(&mut carol).await, "ROOM red bob hi room");
    let pushed = parse(&next_message(&mut dave).await);
    assert_eq!(
        (
            &pushed["kind"],
            &pushed["from"],
            &pushed["to"],
            &pushed["text"]
        ),
        (
            &json!("room"),
            &json!("bob"),
            &json!("red"),
            &json!("hi room")
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn a_room_member_that_was_away_gets_the_rooms_messages_at_its_next_login() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let join = Frame::Join {
        cid: 3,
        room: b("red"),
    };
    assert_eq!(request(&mut phone, join).await, code::OK);
    close(phone).await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN red").await.unwrap(), "OK");
    bob.send("SAY red m1").await.unwrap();
    bob.send("SAY red m2").await.unwrap();
    assert_eq!(bob.ask("PING").await.unwrap(), "PONG");

    let mut phone = device(&server, "alice", "phone").await;
    let got = events(&mut phone, 2).await;
    assert_eq!(texts(&got), numbered(1..=2));
    assert!(got
        .iter()
        .all(|e| e.kind == kind::ROOM && &e.to[..] == b"red"));
    server.stop().await;
}

#[tokio::test]
async fn a_broadcast_is_not_replayed_to_a_device_that_was_offline() {
    let server = TestServer::start().await;
    server.register("alice").await;
    close(device(&server, "alice", "phone").await).await;
    let mut bob = server.text_login("bob").await;
    bob.send("MSG to whoever is here").await.unwrap();
    assert_eq!(bob.ask("PING").await.unwrap(), "PONG");

    let mut phone = device(&server, "alice", "phone").await;
    nothing_more(&mut phone).await;
    server.stop().await;
}

#[tokio::test]
async fn rooms_lists_every_room_with_its_member_and_online_counts() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN red green").await.unwrap(), "OK");
    let mut bob = server.login("bob").await;
    let join = Frame::Join {
        cid: 2,
        room: b("red"),
    };
    assert_eq!(request(&mut bob, join).await, code::OK);
    let mut carol = server.text_login("carol").await;
    assert_eq!(carol.ask("JOIN red").await.unwrap(), "OK");
    assert_eq!(carol.ask("QUIT").await.unwrap(), "BYE");
    wait_for_line(&mut alice, "INFO carol disconnected").await;

    bob.send(&Frame::ListRooms { cid: 3, page: None })
        .await
        .unwrap();
    let Frame::Rooms { cid: 3, rooms } = bob.recv().await.unwrap() else {
        panic!("expected a room list");
    };
    assert_eq!(bob.expect_response(3).await.unwrap(), code::OK);
    let room = |name: &str, members, online| RoomEntry {
        name: b(name),
        members,
        online,
    };
    assert_eq!(rooms, [room("green", 1, 1), room("red", 3, 2)]);
    alice.send("ROOMS").await.unwrap();
    assert_eq!(alice.line().await.unwrap(), "ROOM green 1 1");
    assert_eq!(alice.line().await.unwrap(), "ROOM red 3 2");
    assert_eq!(alice.line().await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn members_lists_a_rooms_members_online_or_not() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN red").await.unwrap(), "OK");
    let mut bob = server.login("bob").await;
    let join = Frame::Join {
        cid: 2,
        room: b("red"),
    };
    assert_eq!(request(&mut bob, join).await, code::OK);
    let mut carol = json_user(&server, "carol").await;
    let join = json!({"command": "JOIN", "room": "red"});
    assert_eq!(
        parse(&carol.ask(&join.to_string()).await.unwrap())["success"],
        true
    );
    let quit = json!({"command": "QUIT"});
    assert_eq!(
        parse(&carol.ask(&quit.to_string()).await.unwrap())["success"],
        true
    );
    wait_for_line(&mut alice, "INFO carol disconnected").await;

    alice.send("MEMBERS red").await.unwrap();
    for expected in [
        "MEMBER alice online",
        "MEMBER bob online",
        "MEMBER carol offline",
        "OK",
    ] {
        assert_eq!(alice.line().await.unwrap(), expected);
    }
    bob.send(&Frame::ListMembers {
        cid: 3,
        room: b("red"),
    })
    .await
    .unwrap();
    let Frame::Members { cid: 3, members } = bob.recv().await.unwrap() else {
        panic!("expected a member list");
    };
    assert_eq!(bob.expect_response(3).await.unwrap(), code::OK);
    let member = |name: &str, online| UserEntry {
        name: b(name),
        online,
        last_seen: 0,
    };
    assert_eq!(
        members,
        [
            member("alice", true),
            member("bob", true),
            member("carol", false)
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn users_lists_everyone_with_presence_and_when_they_were_last_seen() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let before = now_ms();
    let bob = server.login("bob").await;
    close(bob).await;
    wait_for_line(&mut alice, "INFO bob disconnected").await;
    let after = now_ms();
    let mut carol = server.login("carol").await;

    carol
        .send(&Frame::ListUsers { cid: 2, page: None })
        .await
        .unwrap();
    let Frame::Users { cid: 2, users } = carol.recv().await.unwrap() else {
        panic!("expected a user list");
    };
    assert_eq!(carol.expect_response(2).await.unwrap(), code::OK);
    let names: Vec<(&[u8], bool)> = users.iter().map(|u| (&u.name[..], u.online)).collect();
    assert_eq!(
        names,
        [
            (&b"alice"[..], true),
            (&b"bob"[..], false),
            (&b"carol"[..], true)
        ]
    );
    assert!(
        (before..=after).contains(&users[1].last_seen),
        "bob last seen at {} (between {before} and {after})",
        users[1].last_seen
    );

    alice.send("USERS").await.unwrap();
    let without_time = |line: String| line.rsplit_once(' ').unwrap().0.to_string();
    assert_eq!(
        without_time(alice.line().await.unwrap()),
        "PRESENCE alice online"
    );
    let bob_seen = rfc3339_ms(users[1].last_seen);
    assert_eq!(
        alice.line().await.unwrap(),
        format!("PRESENCE bob offline {bob_seen}")
    );
    assert_eq!(
        without_time(alice.line().await.unwrap()),
        "PRESENCE carol online"
    );
    assert_eq!(alice.line().await.unwrap(), "OK");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn history_pages_backwards_and_forwards_across_a_restart() {
    let mut server = TestServer::start().await;
    server.register("alice").await;
    server.register("bob").await;
    let mut alice = device(&server, "alice", "phone").await;
    for i in 1..=30 {
        dm(&mut alice, "alice", "bob", &format!("m{i}")).await;
    }
    close(alice).await;
    server.restart().await;
    let mut alice = device(&server, "alice", "phone").await;

    let mut backwards = Vec::new();
    let mut pages = 0;
    let mut page = history(&mut alice, "bob", page::LATEST, 0, 10).await;
    while !page.is_empty() {
        pages += 1;
        let oldest = page[0].id;
        backwards.splice(0..0, page);
        page = history(&mut alice, "bob", page::BEFORE_ID, oldest, 10).await;
    }
    assert_eq!(pages, 3);
    assert_eq!(texts(&backwards), numbered(1..=30));
    assert_eq!(seqs(&backwards), (1..=30).collect::<Vec<u64>>());

    let mut forwards = Vec::new();
    let mut newest = 0;
    loop {
        let page = history(&mut alice, "bob", page::AFTER_ID, newest, 10).await;
        let Some(last) = page.last() else { break };
        newest = last.id;
        forwards.extend(page);
    }
    assert_eq!(forwards, backwards);
    server.stop().await;
}

/// A conversation's last sequence and the next message id are not kept beside the log: after
/// a restart they come from the stored messages and the reserved id mark, and go on from there.
#[tokio::test]
async fn sequences_and_ids_go_on_after_restarts() {
    let mut server = TestServer::start().await;
    server.register("alice").await;
    server.register("bob").await;
    for round in 0..3 {
        let mut alice = device(&server, "alice", "phone").await;
        for i in 1..=4 {
            dm(&mut alice, "alice", "bob", &format!("m{}", round * 4 + i)).await;
        }
        close(alice).await;
        server.restart().await;
    }
    let mut bob = device(&server, "bob", "phone").await;
    // Catch-up finds the end of the log from the stored messages, too.
    let caught_up = events(&mut bob, 12).await;
    assert_eq!(texts(&caught_up), numbered(1..=12));
    let all = history(&mut bob, "alice", page::LATEST, 0, 20).await;
    assert_eq!(all, caught_up);
    assert_eq!(seqs(&all), (1..=12).collect::<Vec<u64>>());
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must grow: {ids:?}"
    );
    server.stop().await;
}

/// The layouts parley stored messages in before the message log, in SQLite: a row per
/// message ordered by conversation and sequence, then by id; then blocks of messages.
const OLD_LAYOUTS: [&str; 3] = [
    "CREATE TABLE messages (
         conversation_id INTEGER NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL,
         sender_id INTEGER NOT NULL, sender_device INTEGER NOT NULL,
         body BLOB NOT NULL, sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL,
         PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID",
    "CREATE TABLE messages (
         id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL, seq INTEGER NOT NULL,
         sender_id INTEGER NOT NULL, sender_device INTEGER NOT NULL,
         body BLOB NOT NULL, sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL)",
    "CREATE TABLE message_blocks (
         last_id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, data BLOB NOT NULL)",
];

/// Unsigned LEB128, as blocks hold their integers.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Puts in place of what the server stored (the message log and the saved index) a table
/// of `layout` holding alice's m1..m5 to bob and c1..c5 to carol, as a server of that
/// layout would have written them: rows, or blocks of three messages (version 1: per
/// message varints of the id step, conversation, sequence, sender and device, the client's
/// 8-byte timestamp, varints of the receive time and the body's length, the body).
fn write_old_layout(dir: &std::path::Path, layout: &str) {
    std::fs::remove_file(dir.join("messages.log")).unwrap();
    let db = rusqlite::Connection::open(dir.join("parley.db")).unwrap();
    let id = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let alice = id("SELECT id FROM users WHERE name = 'alice'");
    let phone = id("SELECT id FROM devices WHERE name = 'phone'");
    let with = |other: &str| {
        id(&format!(
            "SELECT c.id FROM conversations c JOIN users u ON u.id IN (c.user_a, c.user_b)
             WHERE c.kind = 1 AND u.name = '{other}'"
        ))
    };
    let (bob, carol) = (with("bob"), with("carol"));
    db.execute_batch(
        "DELETE FROM message_spans; DELETE FROM message_index;
         DELETE FROM counters WHERE name = 'message_index_up_to';
         PRAGMA user_version = 0;
         -- What came after schema versions began (versions 4, 6, 7, 8, 9).
         DROP INDEX memberships_conversation;
         ALTER TABLE devices DROP COLUMN first_message_id;
         ALTER TABLE conversations DROP COLUMN created_by;
         ALTER TABLE conversations DROP COLUMN deleted_at;
         ALTER TABLE users DROP COLUMN disabled_at;
         ALTER TABLE users DROP COLUMN deleted_at;
         ALTER TABLE conversations DROP COLUMN topic;
         ALTER TABLE conversations DROP COLUMN invite_only;
         DROP TABLE room_marks; DROP TABLE blocks; DROP TABLE deletions;",
    )
    .unwrap();
    db.execute_batch(layout).unwrap();
    let messages = (1..=5i64).flat_map(|i| [(2 * i - 1, bob, "m", i), (2 * i, carol, "c", i)]);
    if layout.contains("message_blocks") {
        let all: Vec<_> = messages.collect();
        for block in all.chunks(3) {
            let mut data = vec![1];
            let mut previous = 0;
            for &(id, conv, text, seq) in block {
                let body = format!("{text}{seq}").into_bytes();
                for v in [id - previous, conv, seq, alice, phone] {
                    varint(&mut data, v as u64);
                }
                data.extend_from_slice(&1u64.to_le_bytes());
                varint(&mut data, 1767225600000);
                varint(&mut data, body.len() as u64);
                data.extend_from_slice(&body);
                previous = id;
            }
            db.execute(
                "INSERT INTO message_blocks (last_id, first_id, data) VALUES (?1, ?2, ?3)",
                rusqlite::params![previous, block[0].0, data],
            )
            .unwrap();
        }
        return;
    }
    let mut insert = db
        .prepare(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, sender_device, body,
                                   sent_at, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, 1767225600000)",
        )
        .unwrap();
    for (id, conv, text, seq) in messages {
        let body = format!("{text}{seq}").into_bytes();
        insert
            .execute(rusqlite::params![id, conv, seq, alice, phone, body])
            .unwrap();
    }
}

/// Databases of every earlier layout are moved into the message log at start and read back
/// the same: catch-up, history by id, and the next message after them.
#[tokio::test]
async fn a_database_of_an_earlier_layout_is_moved_into_the_log_and_reads_the_same() {
    for layout in OLD_LAYOUTS {
        let mut server = TestServer::start().await;
        for name in ["alice", "bob", "carol"] {
            server.register(name).await;
        }
        let mut alice = device(&server, "alice", "phone").await;
        dm(&mut alice, "alice", "bob", "first").await;
        dm(&mut alice, "alice", "carol", "first").await;
        close(alice).await;
        server
            .restart_after(|dir| write_old_layout(dir, layout))
            .await;
        let mut bob = device(&server, "bob", "phone").await;
        let caught_up = events(&mut bob, 5).await;
        assert_eq!(texts(&caught_up), numbered(1..=5));
        assert_eq!(seqs(&caught_up), (1..=5).collect::<Vec<u64>>());
        let mut carol = device(&server, "carol", "phone").await;
        let carols = events(&mut carol, 5).await;
        assert_eq!(carols[0].message, b"c1"[..]);
        let latest = history(&mut carol, "alice", page::LATEST, 0, 3).await;
        assert_eq!(latest, carols[2..]);
        let earlier = history(&mut carol, "alice", page::BEFORE_ID, carols[2].id, 10).await;
        assert_eq!(earlier, carols[..2]);
        let mut alice = device(&server, "alice", "phone").await;
        dm(&mut alice, "alice", "bob", "m6").await;
        let next = event(&mut bob).await;
        assert_eq!(
            (next.seq, texts(std::slice::from_ref(&next))),
            (6, numbered(6..=6))
        );
        let db = rusqlite::Connection::open(server.dir.path().join("parley.db")).unwrap();
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'message%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["message_index", "message_spans"], "{layout}");
        server.stop().await;
    }
}

#[tokio::test]
async fn text_history_pages_before_and_after_a_sequence_across_a_restart() {
    let mut server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("QUIT").await.unwrap(), "BYE");
    let mut alice = server.text_login("alice").await;
    for i in 1..=30 {
        alice.send(&format!("DM bob m{i}")).await.unwrap();
    }
    assert_eq!(alice.ask("PING").await.unwrap(), "PONG");
    assert_eq!(alice.ask("QUIT").await.unwrap(), "BYE");
    server.restart().await;
    let mut alice = server.text_login("alice").await;

    let page = text_history(&mut alice, "HISTORY bob 10 before 21").await;
    let expected: Vec<(u64, String, String)> = (11..=20)
        .map(|i| (i as u64, "alice".to_string(), format!("m{i}")))
        .collect();
    assert_eq!(page, expected);
    let page = text_history(&mut alice, "HISTORY bob 10 after 20").await;
    let got: Vec<u64> = page.iter().map(|m| m.0).collect();
    assert_eq!(got, (21..=30).collect::<Vec<u64>>());
    assert!(text_history(&mut alice, "HISTORY bob 10 after 30")
        .await
        .is_empty());
    assert!(text_history(&mut alice, "HISTORY bob 10 before 1")
        .await
        .is_empty());
    server.stop().await;
}

#[tokio::test]
async fn json_history_pages_by_id_in_both_directions() {
    let server = TestServer::start().await;
    let mut bob = server.json().await;
    let register = json!({"command": "REGISTER", "data": "bob"});
    assert_eq!(json_data(&mut bob, register).await, "");
    let mut alice = server.login("alice").await;
    for i in 1..=12 {
        dm(&mut alice, "alice", "bob", &format!("m{i}")).await;
    }

    let latest = json!({"command": "HISTORY", "target": "alice", "limit": 5});
    let latest = json_data(&mut bob, latest).await;
    assert_eq!(history_texts(&latest), numbered(8..=12));
    let before =
        json!({"command": "HISTORY", "target": "alice", "limit": 5, "before": latest[0]["id"]});
    let before = json_data(&mut bob, before).await;
    assert_eq!(history_texts(&before), numbered(3..=7));
    let after =
        json!({"command": "HISTORY", "target": "alice", "limit": 3, "after": before[4]["id"]});
    assert_eq!(
        history_texts(&json_data(&mut bob, after).await),
        numbered(8..=10)
    );
    server.stop().await;
}

#[tokio::test]
async fn json_history_pages_by_receive_time() {
    let server = TestServer::start().await;
    let mut bob = server.json().await;
    let register = json!({"command": "REGISTER", "data": "bob"});
    assert_eq!(json_data(&mut bob, register).await, "");
    let mut alice = server.login("alice").await;
    let start = now_ms();
    for i in 1..=6 {
        dm(&mut alice, "alice", "bob", &format!("m{i}")).await;
    }
    let end = now_ms();

    let after =
        json!({"command": "HISTORY", "target": "alice", "limit": 2, "after_time": start - 1});
    assert_eq!(
        history_texts(&json_data(&mut bob, after).await),
        numbered(1..=2)
    );
    let before =
        json!({"command": "HISTORY", "target": "alice", "limit": 2, "before_time": end + 1});
    assert_eq!(
        history_texts(&json_data(&mut bob, before).await),
        numbered(5..=6)
    );
    let later = json!({"command": "HISTORY", "target": "alice", "after_time": end + 1});
    assert_eq!(json_data(&mut bob, later).await, json!([]));
    server.stop().await;
}

/// Sends a JSON request; returns the `data` of its successful response.
async fn json_data(c: &mut LineClient, request: Value) -> Value {
    let reply = parse(&c.ask(&request.to_string()).await.unwrap());
    assert_eq!(reply["success"], true, "{request} -> {reply}");
    reply["data"].clone()
}

fn history_texts(page: &Value) -> Vec<String> {
    let items = page.as_array().unwrap();
    items
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The devices of an account
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_online_device_of_an_account_gets_every_message() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let mut bob = server.login("bob").await;
    for i in 1..=3 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }

    for d in [&mut phone, &mut laptop] {
        let got = events(d, 3).await;
        assert_eq!(texts(&got), numbered(1..=3));
        assert_eq!(seqs(&got), [1, 2, 3]);
        assert!(got
            .iter()
            .all(|e| e.conversation == got[0].conversation && &e.from[..] == b"bob"));
        nothing_more(d).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_message_sent_from_one_device_reaches_the_accounts_other_devices() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let mut tablet = device(&server, "alice", "tablet").await;
    let mut bob = server.login("bob").await;

    dm(&mut tablet, "alice", "bob", "from the tablet").await;

    let (text, from, _, _) = bob.expect_push().await.unwrap();
    assert_eq!((&text[..], &*from), (&b"from the tablet"[..], "alice"));
    for d in [&mut phone, &mut laptop] {
        let e = event(d).await;
        assert_eq!(
            (e.kind, &e.from[..], &e.to[..], &e.message[..], e.seq),
            (
                kind::DIRECT,
                &b"alice"[..],
                &b"bob"[..],
                &b"from the tablet"[..],
                1
            )
        );
    }
    nothing_more(&mut tablet).await;
    server.stop().await;
}

#[tokio::test]
async fn a_device_that_was_away_gets_exactly_what_it_missed_in_order_before_anything_new() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut tablet = device(&server, "alice", "tablet").await;
    let mut bob = server.login("bob").await;
    dm(&mut bob, "bob", "alice", "m1").await;
    let seen = event(&mut tablet).await;
    ack(&mut tablet, &seen).await;
    close(tablet).await;

    for i in 2..=4 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
    for e in events(&mut phone, 4).await {
        ack(&mut phone, &e).await;
    }
    let mut tablet = device(&server, "alice", "tablet").await;
    dm(&mut bob, "bob", "alice", "m5").await;

    let got = events(&mut tablet, 4).await;
    assert_eq!(texts(&got), numbered(2..=5));
    assert_eq!(seqs(&got), [2, 3, 4, 5]);
    nothing_more(&mut tablet).await;
    server.stop().await;
}

#[tokio::test]
async fn after_an_ack_nothing_is_delivered_to_that_device_again() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    for i in 1..=3 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
    let got = events(&mut phone, 3).await;
    ack(&mut phone, &got[2]).await;
    close(phone).await;

    let mut phone = device(&server, "alice", "phone").await;
    nothing_more(&mut phone).await;
    dm(&mut bob, "bob", "alice", "m4").await;
    let e = event(&mut phone).await;
    assert_eq!((&e.message[..], e.seq), (&b"m4"[..], 4));
    server.stop().await;
}

#[tokio::test]
async fn acks_survive_a_restart() {
    let mut server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    for i in 1..=3 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
    let got = events(&mut phone, 3).await;
    ack(&mut phone, &got[2]).await;
    close(phone).await;
    server.restart().await;

    let mut phone = device(&server, "alice", "phone").await;
    nothing_more(&mut phone).await;
    server.stop().await;
}

/// With `sync = "full"` (a sync of the log and of SQLite at every commit) on a runtime of
/// several threads, messages sent at once from many connections all arrive, each sender's in
/// order, and all of them are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_writes_from_many_senders_arrive_and_survive_a_restart() {
    let mut server = TestServer::start_with(|c| c.sync = parley_server::SyncMode::Full).await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let senders = (0..8).map(|s| {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut c = BinaryClient::connect(addr).await.unwrap();
            let name = format!("s{s}");
            assert_eq!(c.login(1, &name).await.unwrap(), code::OK);
            for i in 1..=25 {
                dm(&mut c, &name, "alice", &format!("{name}-{i}")).await;
            }
        })
    });
    for sender in senders.collect::<Vec<_>>() {
        sender.await.unwrap();
    }
    let live = events(&mut phone, 200).await;
    close(phone).await;
    server.restart().await;
    let mut phone = device(&server, "alice", "phone").await;
    // Nothing was acked: catch-up replays all of it, as stored.
    let replayed = events(&mut phone, 200).await;
    assert_eq!(texts(&replayed), texts(&live));
    for s in 0..8 {
        let mine: Vec<String> = texts(&live)
            .into_iter()
            .filter(|t| t.starts_with(&format!("s{s}-")))
            .collect();
        let expected: Vec<String> = (1..=25).map(|i| format!("s{s}-{i}")).collect();
        assert_eq!(mine, expected, "each sender's messages in order");
    }
    nothing_more(&mut phone).await;
    server.stop().await;
}

#[tokio::test]
async fn a_device_gets_what_it_did_not_ack_again_when_it_reconnects() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    for i in 1..=3 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
    let got = events(&mut phone, 3).await;
    ack(&mut phone, &got[0]).await;
    close(phone).await;

    let mut phone = device(&server, "alice", "phone").await;
    let again = events(&mut phone, 2).await;
    assert_eq!(again, got[1..]);
    nothing_more(&mut phone).await;
    server.stop().await;
}

#[tokio::test]
async fn a_gap_left_by_the_devices_own_message_is_filled_from_history() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    dm(&mut bob, "bob", "alice", "one").await;
    let first = event(&mut phone).await;
    dm(&mut phone, "alice", "bob", "two").await;
    bob.expect_push().await.unwrap();
    dm(&mut bob, "bob", "alice", "three").await;
    let third = event(&mut phone).await;
    assert_eq!(third.seq, first.seq + 2, "a gap of one");

    let missing = history(&mut phone, "bob", page::AFTER_ID, first.id, 1).await;
    assert_eq!(missing.len(), 1);
    let m = &missing[0];
    assert_eq!(
        (
            m.conversation,
            m.seq,
            &m.from[..],
            &m.to[..],
            &m.message[..]
        ),
        (
            first.conversation,
            first.seq + 1,
            &b"alice"[..],
            &b"bob"[..],
            &b"two"[..]
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn a_device_that_acked_past_a_message_it_lost_fills_the_gap_from_history() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    dm(&mut bob, "bob", "alice", "m1").await;
    dm(&mut bob, "bob", "alice", "m2").await;
    let kept = event(&mut phone).await;
    let lost = event(&mut phone).await;
    ack(&mut phone, &lost).await;
    close(phone).await;
    dm(&mut bob, "bob", "alice", "m3").await;

    let mut phone = device(&server, "alice", "phone").await;
    let next = event(&mut phone).await;
    assert_eq!((&next.message[..], next.seq), (&b"m3"[..], kept.seq + 2));
    let missing = history(&mut phone, "bob", page::AFTER_ID, kept.id, 1).await;
    assert_eq!(missing, [lost]);
    server.stop().await;
}

#[tokio::test]
async fn a_message_no_device_received_goes_to_the_first_device_that_logs_in() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut bob = server.login("bob").await;
    dm(&mut bob, "bob", "alice", "m1").await;
    dm(&mut bob, "bob", "alice", "m2").await;

    let mut tablet = device(&server, "alice", "tablet").await;
    assert_eq!(texts(&events(&mut tablet, 2).await), numbered(1..=2));
    nothing_more(&mut tablet).await;
    server.stop().await;
}

/// Alice's device `a` received and acked m1..m5; m6..m8 were sent while she was offline.
async fn five_acked_three_missed(server: &TestServer) {
    server.register("alice").await;
    let mut a = device(server, "alice", "a").await;
    let mut bob = server.login("bob").await;
    for i in 1..=5 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
    let got = events(&mut a, 5).await;
    ack(&mut a, &got[4]).await;
    close(a).await;
    for i in 6..=8 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
}

#[tokio::test]
async fn a_new_device_starts_where_the_accounts_furthest_device_is() {
    let server = TestServer::start().await;
    five_acked_three_missed(&server).await;

    let mut b_device = device(&server, "alice", "b").await;
    let got = events(&mut b_device, 3).await;
    assert_eq!(texts(&got), numbered(6..=8));
    assert_eq!(seqs(&got), [6, 7, 8]);
    nothing_more(&mut b_device).await;
    server.stop().await;
}

/// A device that was away gets a conversation that began meanwhile, whole, though the
/// account's other devices received and acked it: it is not a new device. (Before, it
/// started where the furthest device was, and got nothing of it.)
#[tokio::test]
async fn a_returning_device_gets_a_conversation_that_began_while_it_was_away() {
    let server = TestServer::start().await;
    server.register("alice").await;
    close(device(&server, "alice", "tablet").await).await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let mut carol = server.login("carol").await;
    dm(&mut carol, "carol", "alice", "m1").await;
    dm(&mut carol, "carol", "alice", "m2").await;
    let got = events(&mut phone, 2).await;
    ack(&mut phone, &got[1]).await;
    assert_eq!(texts(&events(&mut laptop, 2).await), numbered(1..=2));
    // Through the hub after the ack: when it is answered, the hub holds the ack.
    dm(&mut phone, "alice", "carol", "m3").await;

    let mut tablet = device(&server, "alice", "tablet").await;
    assert_eq!(texts(&events(&mut tablet, 3).await), numbered(1..=3));
    nothing_more(&mut tablet).await;
    server.stop().await;
}

#[tokio::test]
async fn each_device_keeps_its_own_cursor() {
    let server = TestServer::start().await;
    five_acked_three_missed(&server).await;
    let mut b_device = device(&server, "alice", "b").await;
    let got = events(&mut b_device, 3).await;
    ack(&mut b_device, &got[2]).await;
    close(b_device).await;

    let mut a = device(&server, "alice", "a").await;
    assert_eq!(texts(&events(&mut a, 3).await), numbered(6..=8));
    nothing_more(&mut a).await;
    let mut b_device = device(&server, "alice", "b").await;
    nothing_more(&mut b_device).await;
    server.stop().await;
}

#[tokio::test]
async fn a_message_sent_while_a_device_replays_its_conversation_reaches_it_though_another_device_acked_it(
) {
    let (live, next) = tablet_replaying_while_the_phone_acks(true).await;
    assert!(
        matches!(&next, Ok(Frame::Event { event, .. }) if *event == live),
        "the tablet should get {live:?} after its replay, got {next:?}"
    );
}

#[tokio::test]
async fn a_message_opening_a_conversation_while_a_device_catches_up_reaches_it_though_another_device_acked_it(
) {
    let (live, next) = tablet_replaying_while_the_phone_acks(false).await;
    assert!(
        matches!(&next, Ok(Frame::Event { event, .. }) if *event == live),
        "the tablet should get {live:?} after its replay, got {next:?}"
    );
}

/// Alice's new tablet is replaying a long backlog from carol (her phone got it but acked
/// none) when bob writes to alice, and the phone acks that at once. Returns bob's message
/// and what the tablet gets after the backlog. `bob_wrote_before`: the conversation with
/// bob already had a message (then it is part of the replay from the start).
async fn tablet_replaying_while_the_phone_acks(
    bob_wrote_before: bool,
) -> (Event, anyhow::Result<Frame>) {
    const BACKLOG: usize = 5_000;
    // Big enough that the replay cannot all sit in buffers: it is under way while the
    // message arrives and the phone acks it.
    let padding = "x".repeat(4_000);
    // The phone reads its 20 MB only once all is sent: more than a queue holds by default.
    let server = TestServer::start_with(|c| {
        c.messages_per_second = 0;
        c.outbound_bytes = 64 << 20;
    })
    .await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    let before = usize::from(bob_wrote_before);
    if bob_wrote_before {
        dm(&mut bob, "bob", "alice", "before").await;
    }
    let mut carol = server.login("carol").await;
    send_pipelined(&mut carol, "carol", "alice", BACKLOG, |i| {
        format!("{i} {padding}")
    })
    .await;
    events(&mut phone, before + BACKLOG).await;

    let mut tablet = device(&server, "alice", "tablet").await;
    events(&mut tablet, 10).await;
    dm(&mut bob, "bob", "alice", "while the tablet catches up").await;
    let live = event(&mut phone).await;
    ack(&mut phone, &live).await;
    // The ack is read before the next request is answered, and committed before any later
    // operation is (the hub applies them in order).
    assert_eq!(
        request(&mut phone, Frame::CorrelationTest { cid: 5 }).await,
        code::OK
    );
    let mut dave = server.login("dave").await;
    dm(&mut dave, "dave", "carol", "a later commit").await;

    let rest = before + BACKLOG - 10;
    assert_eq!(events(&mut tablet, rest).await.len(), rest);
    let next = tablet.recv().await;
    server.stop().await;
    (live, next)
}

#[tokio::test]
async fn a_json_device_with_acks_gets_what_it_did_not_ack_again() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut bob = server.login("bob").await;
    let mut web = server.json().await;
    let login = json!({"command": "LOGIN", "data": "alice", "password": PASSWORD, "device": "web"});
    assert_eq!(
        parse(&web.ask(&login.to_string()).await.unwrap())["success"],
        true
    );
    let subscribe = json!({"command": "SUBSCRIBE", "acks": true}).to_string();
    assert_eq!(
        parse(&web.ask(&subscribe).await.unwrap())["message"],
        "Subscribed"
    );
    dm(&mut bob, "bob", "alice", "m1").await;
    dm(&mut bob, "bob", "alice", "m2").await;
    let first = parse(&web.line().await.unwrap());
    let second = parse(&web.line().await.unwrap());
    assert_eq!((&first["seq"], &second["seq"]), (&json!(1), &json!(2)));
    let ack = json!({"command": "ACK", "conversation": first["conversation"], "seq": 1});
    assert_eq!(
        parse(&web.ask(&ack.to_string()).await.unwrap())["message"],
        "Acked"
    );
    assert_eq!(
        parse(&web.ask(r#"{"command":"QUIT"}"#).await.unwrap())["message"],
        "Goodbye!"
    );
    assert_eq!(web.line_or_eof().await.unwrap(), None);

    let mut web = server.json().await;
    assert_eq!(
        parse(&web.ask(&login.to_string()).await.unwrap())["success"],
        true
    );
    web.send(&subscribe).await.unwrap();
    // The replay and the answer to SUBSCRIBE may come in either order.
    let mut lines = [
        parse(&web.line().await.unwrap()),
        parse(&web.line().await.unwrap()),
    ];
    lines.sort_by_key(|l| l["event"].is_null());
    assert_eq!(
        (&lines[0]["text"], &lines[0]["seq"]),
        (&json!("m2"), &json!(2))
    );
    assert_eq!(lines[1]["message"], "Subscribed");
    web.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Catch-up meets live traffic; connections that die
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn live_messages_sent_during_a_long_catch_up_arrive_after_it_none_missing() {
    const BACKLOG: usize = 10_000;
    const LIVE: usize = 50;
    // Bodies big enough that the backlog cannot all sit in socket buffers: the replay is
    // still under way while the live messages are sent.
    let padding = "x".repeat(2_000);
    let server = TestServer::start_with(|c| c.messages_per_second = 0).await;
    let run = async {
        server.register("alice").await;
        let mut bob = server.login("bob").await;
        send_pipelined(&mut bob, "bob", "alice", BACKLOG, |i| {
            format!("{i} {padding}")
        })
        .await;

        let mut phone = device(&server, "alice", "phone").await;
        let mut got = events(&mut phone, 100).await;
        let mut carol = server.login("carol").await;
        send_pipelined(&mut carol, "carol", "alice", LIVE, |i| format!("live {i}")).await;
        got.extend(events(&mut phone, BACKLOG + LIVE - 100).await);
        nothing_more(&mut phone).await;
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("all within 60 s");

    let (backlog, live) = got.split_at(BACKLOG);
    assert!(backlog.iter().all(|e| &e.from[..] == b"bob"));
    assert_eq!(seqs(backlog), (1..=BACKLOG as u64).collect::<Vec<_>>());
    let numbers: Vec<String> = texts(backlog)
        .iter()
        .map(|t| t.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(
        numbers,
        (1..=BACKLOG).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(live.iter().all(|e| &e.from[..] == b"carol"));
    assert_eq!(
        texts(live),
        (1..=LIVE).map(|i| format!("live {i}")).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_without_a_close_gets_its_unacked_messages_again() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut bob = server.login("bob").await;
    for i in 1..=3 {
        dm(&mut bob, "bob", "alice", &format!("m{i}")).await;
    }
    let got = events(&mut phone, 3).await;
    ack(&mut phone, &got[0]).await;
    // Answered only after the ack before it was read.
    assert_eq!(
        request(&mut phone, Frame::CorrelationTest { cid: 5 }).await,
        code::OK
    );
    // As if the process were killed: a reset, no FIN, nothing more from this client.
    phone.stream().set_zero_linger().unwrap();
    drop(phone);

    let mut phone = device(&server, "alice", "phone").await;
    assert_eq!(events(&mut phone, 2).await, got[1..]);
    nothing_more(&mut phone).await;
    server.stop().await;
}
