//! Moderation inside the chat over real sockets: each rule refuses those it must refuse, in
//! the text, JSON and binary protocols. Owners and operators, kicks, bans (across a
//! restart), mutes, invite-only rooms, topics, deleted messages (a tombstone: history shows
//! them deleted, devices that had them are told), blocks, the server's operators, and room
//! deletion.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::{bytes as b, parse, request, TestServer, PASSWORD};
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{action, change, code, kind, page, Frame};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// How long a wait that reads past other lines may take in all (each read has its own
/// timeout; this bounds the lines skipped).
const WAIT: Duration = Duration::from_secs(10);

/// `work`, which must finish within `WAIT`.
async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, work)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// A JSON session that keeps the pushes it reads while waiting for an answer.
struct Json {
    c: LineClient,
    events: VecDeque<Value>,
}

impl Json {
    /// Sends `request` and returns its answer; pushes read meanwhile are kept for `event`.
    async fn call(&mut self, request: Value) -> Value {
        self.c.send(&request.to_string()).await.unwrap();
        within("an answer", async {
            loop {
                let line = parse(&self.c.line().await.unwrap());
                if line.get("event").is_some() {
                    self.events.push_back(line);
                } else {
                    return line;
                }
            }
        })
        .await
    }

    /// `call`, which must succeed.
    async fn ok(&mut self, request: Value) -> Value {
        let answer = self.call(request.clone()).await;
        assert_eq!(answer["success"], true, "{request} → {answer}");
        answer
    }

    /// `call`, which must fail with a message that starts with `message`.
    async fn refused(&mut self, request: Value, message: &str) {
        let answer = self.call(request.clone()).await;
        assert_eq!(answer["success"], false, "{request} → {answer}");
        let got = answer["message"].as_str().unwrap();
        assert!(got.starts_with(message), "{request} → {answer}");
    }

    /// The next push.
    async fn event(&mut self) -> Value {
        match self.events.pop_front() {
            Some(event) => event,
            None => parse(&self.c.line().await.unwrap()),
        }
    }

    /// The next push `want` takes, skipping the others.
    async fn event_where(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        within("the push waited for", async {
            loop {
                let event = self.event().await;
                if want(&event) {
                    return event;
                }
            }
        })
        .await
    }

    /// Proves that no push is waiting: a PING's answer comes next.
    async fn quiet(&mut self) {
        assert!(self.events.is_empty(), "{:?}", self.events);
        self.c.send(r#"{"command":"PING"}"#).await.unwrap();
        let line = parse(&self.c.line().await.unwrap());
        assert_eq!(line["message"], "PONG", "a push came first: {line}");
    }
}

/// A JSON session logged in to the account `name` (created first), subscribed.
async fn json_user(server: &TestServer, name: &str) -> Json {
    server.register(name).await;
    json_again(server, name).await
}

/// A JSON session logged in to the existing account `name`, subscribed.
async fn json_again(server: &TestServer, name: &str) -> Json {
    let mut j = Json {
        c: server.json().await,
        events: VecDeque::new(),
    };
    j.ok(json!({"command": "LOGIN", "data": name, "password": PASSWORD, "device": "json"}))
        .await;
    j.ok(json!({"command": "SUBSCRIBE"})).await;
    j
}

/// A text session logged in to the account `name` (created first).
async fn text_user(server: &TestServer, name: &str) -> LineClient {
    server.register(name).await;
    text_again(server, name).await
}

async fn text_again(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.text().await;
    let login = format!("LOGIN {name} {PASSWORD} text");
    assert_eq!(c.ask(&login).await.unwrap(), "OK", "{login}");
    c
}

/// A binary session logged in to the account `name` (created first); with `acks`, it
/// enabled acks first (pushes are `Event` frames and parley's notices).
async fn binary_user(server: &TestServer, name: &str, acks: bool) -> BinaryClient {
    server.register(name).await;
    binary_again(server, name, acks).await
}

async fn binary_again(server: &TestServer, name: &str, acks: bool) -> BinaryClient {
    let mut c = server.client().await;
    if acks {
        assert_eq!(
            request(&mut c, Frame::EnableAcks { cid: 1 }).await,
            code::OK
        );
    }
    let login = Frame::LoginPassword {
        cid: 2,
        username: b(name),
        password: b(PASSWORD),
        device: b("binary"),
        flags: 0,
    };
    assert_eq!(request(&mut c, login).await, code::OK, "{name}");
    c
}

/// Proves that nothing was pushed to a binary session: a correlation test's answer comes
/// next.
async fn binary_quiet(c: &mut BinaryClient) {
    c.send(&Frame::CorrelationTest { cid: 99 }).await.unwrap();
    match c.recv().await.unwrap() {
        Frame::Response { cid: 99, code } => assert_eq!(code, code::OK),
        other => panic!("a frame came first: {other:?}"),
    }
}

fn moderate(cid: u32, room: &str, action: u8, user: &str) -> Frame {
    Frame::Moderate {
        cid,
        room: b(room),
        action,
        user: b(user),
    }
}

/// Sends a multi-line text command; its lines up to the final `OK` (or an `ERR`).
async fn listing(c: &mut LineClient, command: &str) -> Vec<String> {
    c.send(command).await.unwrap();
    let mut lines = Vec::new();
    within(command, async move {
        loop {
            let line = c.line().await.unwrap();
            let done = line == "OK" || line.starts_with("ERR");
            lines.push(line);
            if done {
                return lines;
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Owners and operators
// ---------------------------------------------------------------------------------------

/// The creator owns the room; members may not kick, operators may (but not the owner, nor
/// make operators); each refusal in each protocol's words.
#[tokio::test]
async fn only_operators_kick_and_nobody_kicks_the_owner() {
    let server = TestServer::start().await;
    let mut alice = json_user(&server, "alice").await;
    alice.ok(json!({"command": "JOIN", "room": "#r"})).await;
    let mut bob = text_user(&server, "bob").await;
    assert_eq!(bob.ask("JOIN #r").await.unwrap(), "OK");
    let mut carol = binary_user(&server, "carol", false).await;
    assert_eq!(
        request(
            &mut carol,
            Frame::Join {
                cid: 3,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    assert_eq!(bob.line().await.unwrap(), "INFO carol joined #r");

    // Members may not.
    assert_eq!(bob.ask("KICK #r carol").await.unwrap(), "ERR not-operator");
    let kick = moderate(4, "#r", action::KICK, "bob");
    assert_eq!(request(&mut carol, kick).await, code::NOT_OPERATOR);

    // The owner makes bob an operator: he may kick carol now.
    alice
        .ok(json!({"command": "OP", "room": "#r", "user": "bob"}))
        .await;
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice made bob an operator of #r"
    );
    let info = alice
        .ok(json!({"command": "ROOM_INFO", "room": "#r"}))
        .await;
    assert_eq!(info["data"]["owner"], "alice", "{info}");
    assert_eq!(info["data"]["operators"], json!(["bob"]), "{info}");
    assert_eq!(info["data"]["role"], "owner", "{info}");
    assert_eq!(bob.ask("KICK #r carol").await.unwrap(), "OK");
    let kicked = alice.event_where(|e| e["event"] == "moderation").await;
    assert_eq!(
        (
            &kicked["change"],
            &kicked["user"],
            &kicked["by"],
            &kicked["room"]
        ),
        (
            &json!("kicked"),
            &json!("carol"),
            &json!("bob"),
            &json!("#r")
        ),
        "{kicked}"
    );
    // carol is out: her message to the room is refused. A seed-000 style session (no acks)
    // got no frame it did not ask for.
    binary_quiet(&mut carol).await;
    let say = Frame::SendRoom {
        cid: 5,
        room: b("#r"),
        message: b("still here?"),
        time: 1,
    };
    assert_eq!(request(&mut carol, say).await, code::NOT_MEMBER);
    // A kick is not a ban.
    assert_eq!(
        request(
            &mut carol,
            Frame::Join {
                cid: 6,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    assert_eq!(bob.line().await.unwrap(), "INFO carol joined #r");

    // An operator kicks neither the owner nor another operator, and makes no operators.
    assert_eq!(bob.ask("KICK #r alice").await.unwrap(), "ERR not-operator");
    assert_eq!(bob.ask("OP #r carol").await.unwrap(), "ERR not-operator");
    alice
        .ok(json!({"command": "OP", "room": "#r", "user": "carol"}))
        .await;
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice made carol an operator of #r"
    );
    assert_eq!(bob.ask("KICK #r carol").await.unwrap(), "ERR not-operator");
    // The owner takes it back.
    alice
        .ok(json!({"command": "DEOP", "room": "#r", "user": "bob"}))
        .await;
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice took operator of #r from bob"
    );
    assert_eq!(bob.ask("KICK #r carol").await.unwrap(), "ERR not-operator");
    // Unknown room, unknown user.
    assert_eq!(
        bob.ask("KICK #nope carol").await.unwrap(),
        "ERR room-not-found"
    );
    alice
        .refused(
            json!({"command": "KICK", "room": "#r", "user": "nobody"}),
            "User not found",
        )
        .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Bans
// ---------------------------------------------------------------------------------------

/// A banned user is out and stays out, across a restart, in every protocol, until unbanned.
#[tokio::test]
async fn a_banned_user_cannot_rejoin_even_after_a_restart() {
    let mut server = TestServer::start().await;
    let mut alice = text_user(&server, "alice").await;
    assert_eq!(alice.ask("JOIN #r").await.unwrap(), "OK");
    let mut bob = json_user(&server, "bob").await;
    bob.ok(json!({"command": "JOIN", "room": "#r"})).await;
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #r");

    assert_eq!(alice.ask("BAN #r bob").await.unwrap(), "OK");
    // bob is told, and is out.
    let banned = bob.event().await;
    assert_eq!(
        (
            &banned["event"],
            &banned["change"],
            &banned["user"],
            &banned["by"]
        ),
        (
            &json!("moderation"),
            &json!("banned"),
            &json!("bob"),
            &json!("alice")
        ),
        "{banned}"
    );
    bob.refused(json!({"command": "JOIN", "room": "#r"}), "Banned")
        .await;
    bob.refused(
        json!({"command": "SAY", "room": "#r", "data": "hi"}),
        "Not a member",
    )
    .await;
    let lines = listing(&mut alice, "ROOMINFO #r").await;
    assert!(lines.contains(&"BANNED #r bob".to_string()), "{lines:?}");
    drop(bob);

    server.restart().await;
    let mut bob = binary_again(&server, "bob", false).await;
    assert_eq!(
        request(
            &mut bob,
            Frame::Join {
                cid: 3,
                room: b("#r")
            }
        )
        .await,
        code::BANNED
    );
    let mut bob_text = text_again(&server, "bob").await;
    assert_eq!(bob_text.ask("JOIN #r").await.unwrap(), "ERR banned");
    // Inviting a banned user is refused too; unbanning lets him back.
    let mut alice = text_again(&server, "alice").await;
    assert_eq!(alice.ask("INVITE #r bob").await.unwrap(), "ERR banned");
    assert_eq!(alice.ask("UNBAN #r bob").await.unwrap(), "OK");
    assert_eq!(
        request(
            &mut bob,
            Frame::Join {
                cid: 4,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Mutes
// ---------------------------------------------------------------------------------------

/// A muted member's message is refused with an error (never dropped silently) and reaches
/// nobody; unmuted, it goes.
#[tokio::test]
async fn a_muted_members_message_is_refused_with_an_error() {
    let server = TestServer::start().await;
    let mut alice = json_user(&server, "alice").await;
    alice.ok(json!({"command": "JOIN", "room": "#r"})).await;
    let mut bob = text_user(&server, "bob").await;
    assert_eq!(bob.ask("JOIN #r").await.unwrap(), "OK");
    let mut carol = binary_user(&server, "carol", false).await;
    assert_eq!(
        request(
            &mut carol,
            Frame::Join {
                cid: 3,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    let mut dave = json_user(&server, "dave").await;
    dave.ok(json!({"command": "JOIN", "room": "#r"})).await;
    for who in ["bob", "carol", "dave"] {
        assert_eq!(
            alice.event().await,
            json!({"event": "joined", "room": "#r", "user": who})
        );
    }
    for who in ["carol", "dave"] {
        assert_eq!(bob.line().await.unwrap(), format!("INFO {who} joined #r"));
    }

    for user in ["bob", "carol", "dave"] {
        alice
            .ok(json!({"command": "MUTE", "room": "#r", "user": user}))
            .await;
        // Every member hears of it, the muted one too (but not the one who muted).
        assert_eq!(
            bob.line().await.unwrap(),
            format!("INFO alice muted {user} in #r")
        );
    }
    assert_eq!(bob.ask("SAY #r psst").await.unwrap(), "ERR muted");
    let say = Frame::SendRoom {
        cid: 4,
        room: b("#r"),
        message: b("psst"),
        time: 1,
    };
    assert_eq!(request(&mut carol, say).await, code::MUTED);
    dave.refused(
        json!({"command": "SAY", "room": "#r", "data": "psst"}),
        "Muted",
    )
    .await;
    // Nothing reached alice.
    alice.quiet().await;
    let history = alice
        .ok(json!({"command": "HISTORY", "target": "#r"}))
        .await;
    assert_eq!(history["data"], json!([]), "{history}");

    alice
        .ok(json!({"command": "UNMUTE", "room": "#r", "user": "bob"}))
        .await;
    assert_eq!(bob.line().await.unwrap(), "INFO alice unmuted bob in #r");
    bob.send("SAY #r free again").await.unwrap();
    let message = alice.event_where(|e| e["event"] == "message").await;
    assert_eq!(message["text"], "free again", "{message}");
    // The owner cannot be muted by an operator.
    alice
        .ok(json!({"command": "OP", "room": "#r", "user": "dave"}))
        .await;
    dave.refused(
        json!({"command": "MUTE", "room": "#r", "user": "alice"}),
        "Not allowed",
    )
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Invite-only rooms
// ---------------------------------------------------------------------------------------

/// An invite-only room refuses the uninvited (users and anonymous sessions); an invitation
/// lets its user in once.
#[tokio::test]
async fn an_invite_only_room_refuses_the_uninvited() {
    let server = TestServer::start().await;
    let mut alice = text_user(&server, "alice").await;
    assert_eq!(alice.ask("JOIN #club").await.unwrap(), "OK");
    assert_eq!(alice.ask("INVITEONLY #club on").await.unwrap(), "OK");
    let mut bob = json_user(&server, "bob").await;
    bob.refused(json!({"command": "JOIN", "room": "#club"}), "Invite-only")
        .await;
    let mut carol = binary_user(&server, "carol", false).await;
    let join = |cid| Frame::Join {
        cid,
        room: b("#club"),
    };
    assert_eq!(request(&mut carol, join(3)).await, code::INVITE_ONLY);
    let mut guest = server.text().await;
    assert_eq!(
        guest.ask("/join #club").await.unwrap(),
        "err: that room is invite-only"
    );

    assert_eq!(alice.ask("INVITE #club bob").await.unwrap(), "OK");
    let invited = bob.event().await;
    assert_eq!(
        (
            &invited["event"],
            &invited["change"],
            &invited["room"],
            &invited["by"]
        ),
        (
            &json!("moderation"),
            &json!("invited"),
            &json!("#club"),
            &json!("alice")
        ),
        "{invited}"
    );
    bob.ok(json!({"command": "JOIN", "room": "#club"})).await;
    // Once: after leaving, bob needs another invitation.
    bob.ok(json!({"command": "LEAVE", "room": "#club"})).await;
    bob.refused(json!({"command": "JOIN", "room": "#club"}), "Invite-only")
        .await;
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #club");
    assert_eq!(alice.line().await.unwrap(), "INFO bob left #club");
    // Open again: everyone may join.
    assert_eq!(alice.ask("INVITEONLY #club off").await.unwrap(), "OK");
    assert_eq!(request(&mut carol, join(4)).await, code::OK);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------

/// Operators set the topic, members are told, it is kept across a restart; members may
/// not set it.
#[tokio::test]
async fn operators_set_the_topic_and_members_see_it() {
    let mut server = TestServer::start().await;
    let mut alice = binary_user(&server, "alice", true).await;
    assert_eq!(
        request(
            &mut alice,
            Frame::Join {
                cid: 3,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    let mut bob = json_user(&server, "bob").await;
    bob.ok(json!({"command": "JOIN", "room": "#r"})).await;
    let mut carol = text_user(&server, "carol").await;
    assert_eq!(carol.ask("JOIN #r").await.unwrap(), "OK");
    let joined = bob.event().await;
    assert_eq!(
        joined,
        json!({"event": "joined", "room": "#r", "user": "carol"})
    );
    // alice (acks on) hears of the joins.
    for who in ["bob", "carol"] {
        match alice.recv().await.unwrap() {
            Frame::Notice {
                cid: 0,
                room,
                change: c,
                user,
                ..
            } => assert_eq!(
                (&room[..], c, &user[..]),
                (&b"#r"[..], change::JOINED, who.as_bytes())
            ),
            other => panic!("{other:?}"),
        }
    }

    bob.refused(
        json!({"command": "TOPIC", "room": "#r", "topic": "mine now"}),
        "Not allowed",
    )
    .await;
    let topic = Frame::SetTopic {
        cid: 4,
        room: b("#r"),
        topic: b("release on Friday"),
    };
    assert_eq!(request(&mut alice, topic).await, code::OK);
    let told = bob.event().await;
    assert_eq!(
        (&told["change"], &told["topic"], &told["by"]),
        (
            &json!("topic"),
            &json!("release on Friday"),
            &json!("alice")
        ),
        "{told}"
    );
    assert_eq!(
        carol.line().await.unwrap(),
        "INFO alice set the topic of #r: release on Friday"
    );
    drop((alice, bob, carol));

    server.restart().await;
    let mut carol = text_again(&server, "carol").await;
    let lines = listing(&mut carol, "ROOMINFO #r").await;
    assert_eq!(
        lines,
        [
            "TOPIC #r release on Friday",
            "MODE #r open",
            "OWNER #r alice",
            "RANK #r member",
            "OK"
        ]
    );
    let mut bob = binary_again(&server, "bob", false).await;
    bob.send(&Frame::GetRoomInfo {
        cid: 5,
        room: b("#r"),
    })
    .await
    .unwrap();
    match bob.recv().await.unwrap() {
        Frame::RoomInfo { cid: 5, info } => {
            assert_eq!(&info.topic[..], b"release on Friday");
            assert_eq!(&info.owner[..], b"alice");
            assert!(info.member && !info.invite_only);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bob.expect_response(5).await.unwrap(), code::OK);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Deleted messages
// ---------------------------------------------------------------------------------------

/// A deletion is a tombstone: every protocol's history shows the message as deleted (its
/// words never again), devices that had it are told where their protocol can carry it
/// (live, and at the next login of one that was away), a seed-000 style session is sent
/// nothing, and it all holds after a restart. Only the author or an operator may delete.
#[tokio::test]
async fn a_deleted_message_shows_as_deleted_in_every_protocols_history() {
    let mut server = TestServer::start().await;
    let mut alice = json_user(&server, "alice").await;
    alice.ok(json!({"command": "JOIN", "room": "#r"})).await;
    let mut bob = text_user(&server, "bob").await;
    assert_eq!(bob.ask("JOIN #r").await.unwrap(), "OK");
    let mut carol = binary_user(&server, "carol", true).await;
    assert_eq!(
        request(
            &mut carol,
            Frame::Join {
                cid: 3,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    let mut dave = binary_user(&server, "dave", false).await;
    assert_eq!(
        request(
            &mut dave,
            Frame::Join {
                cid: 3,
                room: b("#r")
            }
        )
        .await,
        code::OK
    );
    // erin acks what she receives, so her cursor says exactly what she had.
    server.register("erin").await;
    let mut erin = Json {
        c: server.json().await,
        events: VecDeque::new(),
    };
    let login = json!({"command": "LOGIN", "data": "erin", "password": PASSWORD, "device": "web"});
    erin.ok(login.clone()).await;
    erin.ok(json!({"command": "SUBSCRIBE", "acks": true})).await;
    erin.ok(json!({"command": "JOIN", "room": "#r"})).await;
    for who in ["carol", "dave", "erin"] {
        assert_eq!(bob.line().await.unwrap(), format!("INFO {who} joined #r"));
    }
    for _ in ["dave", "erin"] {
        assert!(matches!(
            carol.recv().await.unwrap(),
            Frame::Notice {
                change: change::JOINED,
                ..
            }
        ));
    }
    for who in ["bob", "carol", "dave", "erin"] {
        assert_eq!(
            alice.event().await,
            json!({"event": "joined", "room": "#r", "user": who})
        );
    }

    // Two messages, which everyone in the room receives.
    bob.send("SAY #r the secret is 42").await.unwrap();
    let first = alice.event().await;
    assert_eq!(
        (&first["text"], &first["seq"]),
        (&json!("the secret is 42"), &json!(1))
    );
    let conv = first["conversation"].as_i64().unwrap();
    match carol.recv().await.unwrap() {
        Frame::Event { event, .. } => assert_eq!(event.seq, 1),
        other => panic!("{other:?}"),
    }
    let say = Frame::SendRoom {
        cid: 4,
        room: b("#r"),
        message: b("me too"),
        time: 7,
    };
    assert_eq!(request(&mut carol, say).await, code::OK);
    for seq in [1, 2] {
        let e = erin.event().await;
        assert_eq!(e["seq"], seq, "{e}");
        erin.ok(json!({"command": "ACK", "conversation": conv, "seq": seq}))
            .await;
    }
    for _ in 0..2 {
        assert!(matches!(
            dave.recv().await.unwrap(),
            Frame::Message { cid: 0, .. }
        ));
    }
    assert_eq!(alice.event().await["text"], "me too");
    assert_eq!(bob.line().await.unwrap(), "ROOM #r carol me too");
    drop(erin);
    assert_eq!(bob.line().await.unwrap(), "INFO erin disconnected");
    assert_eq!(
        alice.event().await,
        json!({"event": "disconnected", "user": "erin"})
    );

    // Neither a member nor another's author may delete.
    let delete = |cid, seq| Frame::DeleteMessage {
        cid,
        target: b("#r"),
        seq,
    };
    assert_eq!(request(&mut dave, delete(5, 1)).await, code::NOT_OPERATOR);
    assert_eq!(bob.ask("DELETE #r 2").await.unwrap(), "ERR not-operator");
    // The owner deletes bob's message; carol deletes her own.
    alice
        .ok(json!({"command": "DELETE", "target": "#r", "seq": 1}))
        .await;
    assert_eq!(bob.line().await.unwrap(), "DELETED #r 1 alice");
    match carol.recv().await.unwrap() {
        Frame::Deleted {
            cid: 0,
            event,
            message_seq,
            ..
        } => {
            assert_eq!((event.seq, event.kind, message_seq), (3, kind::ROOM, 1));
            assert_eq!(
                (&event.from[..], &event.to[..]),
                (&b"alice"[..], &b"#r"[..])
            );
            assert!(event.message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(request(&mut carol, delete(6, 2)).await, code::OK);
    let deleted = alice.event().await;
    assert_eq!(
        (
            &deleted["event"],
            &deleted["seq"],
            &deleted["from"],
            &deleted["deleted"]["seq"]
        ),
        (&json!("deleted"), &json!(4), &json!("carol"), &json!(2)),
        "{deleted}"
    );
    assert_eq!(bob.line().await.unwrap(), "DELETED #r 2 carol");
    // Again: nothing more to announce. Past the end, or a tombstone: not a message.
    alice
        .ok(json!({"command": "DELETE", "target": "#r", "seq": 1}))
        .await;
    alice
        .refused(
            json!({"command": "DELETE", "target": "#r", "seq": 3}),
            "Message not found",
        )
        .await;
    assert_eq!(
        bob.ask("DELETE #r 99").await.unwrap(),
        "ERR message-not-found"
    );
    alice.quiet().await;
    // The seed-000 style session was sent nothing.
    binary_quiet(&mut dave).await;

    // Every protocol's history: deleted, in place, without the words or the tombstones.
    let check_text = |lines: &[String]| {
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("HISTORY #r 1 ") && lines[0].ends_with(" bob [message deleted]"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("HISTORY #r 2 ") && lines[1].ends_with(" carol [message deleted]"),
            "{lines:?}"
        );
        assert!(!lines.join("\n").contains("secret"));
    };
    check_text(&listing(&mut bob, "HISTORY #r").await);
    let history = alice
        .ok(json!({"command": "HISTORY", "target": "#r"}))
        .await;
    let items = history["data"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{history}");
    for (item, (seq, from)) in items.iter().zip([(1, "bob"), (2, "carol")]) {
        assert_eq!(
            (&item["seq"], &item["from"], &item["text"], &item["deleted"]),
            (&json!(seq), &json!(from), &json!(""), &json!(true)),
            "{item}"
        );
    }
    let page = Frame::History {
        cid: 7,
        target: b("#r"),
        mode: page::LATEST,
        value: 0,
        limit: 0,
    };
    dave.send(&page).await.unwrap();
    match dave.recv().await.unwrap() {
        Frame::HistoryPage { cid: 7, events } => {
            let seen: Vec<(u64, u8, usize)> = events
                .iter()
                .map(|e| (e.seq, e.kind, e.message.len()))
                .collect();
            let deleted_room = kind::ROOM | kind::DELETED;
            assert_eq!(seen, [(1, deleted_room, 0), (2, deleted_room, 0)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dave.expect_response(7).await.unwrap(), code::OK);

    // erin had both messages and was away: her next login brings the two deletions.
    let mut erin = Json {
        c: server.json().await,
        events: VecDeque::new(),
    };
    erin.ok(login.clone()).await;
    erin.ok(json!({"command": "SUBSCRIBE", "acks": true})).await;
    for (seq, of) in [(3, 1), (4, 2)] {
        let e = erin.event().await;
        assert_eq!(
            (&e["event"], &e["seq"], &e["deleted"]["seq"]),
            (&json!("deleted"), &json!(seq), &json!(of)),
            "{e}"
        );
    }
    erin.quiet().await;

    // A message to everyone, deleted by its author: seed 001's LIST_MESSAGES shows it so.
    bob.send("MSG oops, wrong window").await.unwrap();
    let everyone = listing(&mut bob, "HISTORY *").await;
    let seq: u64 = everyone[0].split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(bob.ask(&format!("DELETE * {seq}")).await.unwrap(), "OK");
    let mut seed001 = server.json().await;
    let recent = parse(&seed001.ask(r#"{"command":"LIST_MESSAGES"}"#).await.unwrap());
    let recent = recent["data"].as_str().unwrap();
    assert!(recent.ends_with("] bob: [message deleted]"), "{recent}");

    server.restart().await;
    let mut bob = text_again(&server, "bob").await;
    check_text(&listing(&mut bob, "HISTORY #r").await);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------

/// A user blocked by another can send them no DM and no contact request, in any protocol;
/// room messages still reach the room (the blocker's client hides them); unblocking ends it.
#[tokio::test]
async fn a_blocked_users_dms_and_contact_requests_are_refused() {
    let server = TestServer::start().await;
    let mut bob = json_user(&server, "bob").await;
    let mut carol = text_user(&server, "carol").await;
    let mut carol_bin = binary_again(&server, "carol", false).await;
    bob.ok(json!({"command": "BLOCK", "user": "carol"})).await;
    let blocks = bob.ok(json!({"command": "BLOCKS"})).await;
    assert_eq!(blocks["data"], json!(["carol"]), "{blocks}");

    assert_eq!(carol.ask("DM bob hello?").await.unwrap(), "ERR blocked");
    assert_eq!(carol.ask("CONTACT ADD bob").await.unwrap(), "ERR blocked");
    // One blocking recipient refuses the whole multi-recipient send: dave gets none of it.
    server.register("dave").await;
    assert_eq!(
        carol.ask("DM dave,bob hi both").await.unwrap(),
        "ERR blocked"
    );
    let mut dave = json_again(&server, "dave").await;
    let history = dave
        .ok(json!({"command": "HISTORY", "target": "carol"}))
        .await;
    assert_eq!(history["data"], json!([]), "{history}");
    let dm = Frame::Message {
        cid: 5,
        message: b("hello?"),
        from: b("carol"),
        to: b("bob"),
        time: 1,
    };
    assert_eq!(request(&mut carol_bin, dm).await, code::BLOCKED);
    let mut carol_json = json_again(&server, "carol").await;
    carol_json
        .refused(
            json!({"command": "DM", "to": "bob", "data": "hi"}),
            "Blocked",
        )
        .await;
    // Nothing reached bob.
    bob.quiet().await;
    // bob may still write to carol (a block stops what comes from them).
    bob.ok(json!({"command": "DM", "to": "carol", "data": "do not write"}))
        .await;
    assert_eq!(carol.line().await.unwrap(), "DM bob do not write");

    // In a room they share, carol's messages reach bob.
    bob.ok(json!({"command": "JOIN", "room": "#r"})).await;
    assert_eq!(carol.ask("JOIN #r").await.unwrap(), "OK");
    carol.send("SAY #r hello room").await.unwrap();
    let message = bob.event_where(|e| e["event"] == "message").await;
    assert_eq!(message["text"], "hello room");

    bob.ok(json!({"command": "UNBLOCK", "user": "carol"})).await;
    carol.send("DM bob thanks").await.unwrap();
    let dm = bob.event_where(|e| e["event"] == "message").await;
    assert_eq!((&dm["kind"], &dm["text"]), (&json!("dm"), &json!("thanks")));
    bob.refused(
        json!({"command": "BLOCK", "user": "nobody"}),
        "User not found",
    )
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// The server's operators
// ---------------------------------------------------------------------------------------

/// A server operator (an account named in `operators`) acts in any room, member or not,
/// above its owner; a password-less login of a configured name that is no account is
/// nobody's operator.
#[tokio::test]
async fn a_server_operator_can_act_in_any_room() {
    let server =
        TestServer::start_with(|c| c.operators = vec!["root".into(), "ghost".into()]).await;
    let mut alice = text_user(&server, "alice").await;
    assert_eq!(alice.ask("JOIN #r").await.unwrap(), "OK");
    assert_eq!(alice.ask("INVITEONLY #r on").await.unwrap(), "OK");
    let mut bob = text_user(&server, "bob").await;
    assert_eq!(alice.ask("INVITE #r bob").await.unwrap(), "OK");
    assert_eq!(bob.line().await.unwrap(), "INFO alice invited you to #r");
    assert_eq!(bob.ask("JOIN #r").await.unwrap(), "OK");
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #r");
    bob.send("SAY #r spam spam spam").await.unwrap();
    assert_eq!(alice.line().await.unwrap(), "ROOM #r bob spam spam spam");

    let mut root = json_user(&server, "root").await;
    let info = root.ok(json!({"command": "ROOM_INFO", "room": "#r"})).await;
    assert_eq!(
        (&info["data"]["role"], &info["data"]["member"]),
        (&json!("server-operator"), &json!(false))
    );
    // Not a member, yet: deletes, mutes, kicks, sets the topic, and outranks the owner.
    root.ok(json!({"command": "DELETE", "target": "#r", "seq": 1}))
        .await;
    assert_eq!(alice.line().await.unwrap(), "DELETED #r 1 root");
    assert_eq!(bob.line().await.unwrap(), "DELETED #r 1 root");
    root.ok(json!({"command": "KICK", "room": "#r", "user": "bob"}))
        .await;
    assert_eq!(alice.line().await.unwrap(), "INFO root kicked bob from #r");
    assert_eq!(bob.line().await.unwrap(), "INFO root kicked bob from #r");
    root.ok(json!({"command": "TOPIC", "room": "#r", "topic": "be nice"}))
        .await;
    root.ok(json!({"command": "MUTE", "room": "#r", "user": "alice"}))
        .await;
    assert_eq!(
        alice.line().await.unwrap(),
        "INFO root set the topic of #r: be nice"
    );
    assert_eq!(alice.line().await.unwrap(), "INFO root muted alice in #r");
    assert_eq!(alice.ask("SAY #r hey").await.unwrap(), "ERR muted");
    // The owner cannot undo it, nor act on a server operator.
    assert_eq!(
        alice.ask("UNMUTE #r alice").await.unwrap(),
        "ERR not-operator"
    );
    // Invite-only rooms let a server operator in without an invitation.
    root.ok(json!({"command": "JOIN", "room": "#r"})).await;
    assert_eq!(alice.line().await.unwrap(), "INFO root joined #r");
    assert_eq!(alice.ask("KICK #r root").await.unwrap(), "ERR not-operator");

    // "ghost" is configured but is no account: a password-less login of it is no operator.
    let mut ghost = server.text_login("ghost").await;
    assert_eq!(
        ghost.ask("KICK #r alice").await.unwrap(),
        "ERR not-operator"
    );
    assert_eq!(ghost.ask("JOIN #r").await.unwrap(), "ERR invite-only");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Room deletion
// ---------------------------------------------------------------------------------------

/// The owner deletes a room: its members are told and are members no more, the room is
/// gone from the listing, and its name can be taken again, by someone else, afresh.
/// Operators may not.
#[tokio::test]
async fn the_owner_deletes_a_room_and_its_name_is_free() {
    let mut server = TestServer::start().await;
    let mut alice = text_user(&server, "alice").await;
    assert_eq!(alice.ask("JOIN #old").await.unwrap(), "OK");
    let mut bob = json_user(&server, "bob").await;
    bob.ok(json!({"command": "JOIN", "room": "#old"})).await;
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #old");
    alice.send("SAY #old history").await.unwrap();
    assert_eq!(alice.ask("OP #old bob").await.unwrap(), "OK");
    bob.refused(
        json!({"command": "DELETE_ROOM", "room": "#old"}),
        "Not allowed",
    )
    .await;
    assert_eq!(alice.ask("DESTROY #old").await.unwrap(), "OK");
    let gone = bob.event_where(|e| e["change"] == "deleted").await;
    assert_eq!(
        (&gone["room"], &gone["by"]),
        (&json!("#old"), &json!("alice")),
        "{gone}"
    );
    let rooms = bob.ok(json!({"command": "ROOMS"})).await;
    assert_eq!(rooms["data"], json!([]), "{rooms}");
    let conversations = bob.ok(json!({"command": "CONVERSATIONS"})).await;
    assert_eq!(conversations["data"], json!([]), "{conversations}");
    drop((alice, bob));

    server.restart().await;
    let mut bob = json_again(&server, "bob").await;
    bob.ok(json!({"command": "JOIN", "room": "#old"})).await;
    let info = bob
        .ok(json!({"command": "ROOM_INFO", "room": "#old"}))
        .await;
    assert_eq!(info["data"]["owner"], "bob", "{info}");
    let history = bob
        .ok(json!({"command": "HISTORY", "target": "#old"}))
        .await;
    assert_eq!(history["data"], json!([]), "a new room: {history}");
    server.stop().await;
}
