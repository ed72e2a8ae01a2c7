//! JSON lines (seed 001 and parley's extensions) and delivery across protocols, over real
//! sockets: what a seed-001 client sees byte for byte, what parley adds, and a message sent
//! over one protocol arriving over another.

mod common;

use common::parse;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use common::TestServer;
use parley_client::LineClient;
use parley_proto::binary::{code, Frame};
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const WELCOME: &str =
    r#"{"success":true,"message":"Welcome to TCP/IP Educational Server!","data":""}"#;

/// How long to listen to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

/// A successful response line with empty data, as the server writes it.
fn ok(message: &str) -> String {
    format!(r#"{{"success":true,"message":"{message}","data":""}}"#)
}

/// A successful response line whose data is the (already escaped) string `data`.
fn ok_with(message: &str, data: &str) -> String {
    format!(r#"{{"success":true,"message":"{message}","data":"{data}"}}"#)
}

/// A failed response line.
fn failed(message: &str) -> String {
    format!(r#"{{"success":false,"message":"{message}","data":""}}"#)
}

fn request(command: &str, data: &str) -> String {
    json!({"command": command, "data": data}).to_string()
}

/// A JSON client on the JSON port, registered as `name`.
async fn register(server: &TestServer, name: &str) -> LineClient {
    let mut client = server.json().await;
    let reply = client.ask(&request("REGISTER", name)).await.unwrap();
    assert_eq!(
        reply,
        ok(&format!("Registration successful. Welcome, {name}!"))
    );
    client
}

/// A text client logged in as `nick` with seed 004's slash commands, in `room`.
async fn slash_member(server: &TestServer, nick: &str, room: &str) -> LineClient {
    let mut client = server.text().await;
    let reply = client.ask(&format!("/nick {nick}")).await.unwrap();
    assert_eq!(reply, format!("> all right, I will call you {nick}"));
    let reply = client.ask(&format!("/join {room}")).await.unwrap();
    assert_eq!(reply, format!("> welcome to {room}"));
    client
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Whether `s` is a clock time `HH:MM:SS`; returns its seconds since midnight.
fn clock_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let part = |at: usize| -> Option<u64> {
        let digits = &s[at..at + 2];
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (h, m, sec) = (part(0)?, part(3)?, part(6)?);
    (h < 24 && m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
}

/// Whether two times of day are within `slack` seconds of each other (across midnight too).
fn close_in_the_day(a: u64, b: u64, slack: u64) -> bool {
    let diff = (a as i64 - b as i64).rem_euclid(86_400) as u64;
    diff <= slack || diff >= 86_400 - slack
}

// ---------------------------------------------------------------------------------------
// Seed 001 on the JSON port, byte for byte
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_json_port_greets_before_the_client_sends_anything() {
    let server = TestServer::start().await;
    let mut client = LineClient::connect(server.json_addr).await.unwrap();
    assert_eq!(client.line().await.unwrap(), WELCOME);
    server.stop().await;
}

#[tokio::test]
async fn echo_answers_with_the_data() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client
        .ask(r#"{"command":"ECHO","data":"Hello, Server!"}"#)
        .await
        .unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"Echo response","data":"Hello, Server!"}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn html_characters_are_escaped_like_gos_encoder() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(&request("ECHO", "<b>&</b>")).await.unwrap();
    assert_eq!(
        reply,
        ok_with("Echo response", r"\u003cb\u003e\u0026\u003c/b\u003e")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_from_field_in_requests_is_ignored() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client
        .ask(r#"{"command":"REGISTER","data":"alice","from":"someone else"}"#)
        .await
        .unwrap();
    assert_eq!(reply, ok("Registration successful. Welcome, alice!"));
    let reply = client
        .ask(r#"{"command":"ECHO","data":"hi","from":"alice"}"#)
        .await
        .unwrap();
    assert_eq!(reply, ok_with("Echo response", "hi"));
    server.stop().await;
}

#[tokio::test]
async fn register_welcomes_the_user_by_name() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(&request("REGISTER", "Alice")).await.unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"Registration successful. Welcome, Alice!","data":""}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn message_is_answered_message_broadcasted() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let reply = alice
        .ask(&request("MESSAGE", "Hello everyone!"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"Message broadcasted","data":""}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_before_register_is_broadcast_as_anonymous() {
    let server = TestServer::start().await;
    let mut anonymous = server.json().await;
    let reply = anonymous.ask(&request("MESSAGE", "hi all")).await.unwrap();
    assert_eq!(reply, ok("Message broadcasted"));
    let reply = anonymous.ask(&request("LIST_MESSAGES", "")).await.unwrap();
    let data = parse(&reply)["data"].as_str().unwrap().to_string();
    assert!(data.ends_with("] anonymous: hi all"), "{data:?}");
    server.stop().await;
}

#[tokio::test]
async fn list_users_names_everyone_online_and_anonymous_for_the_unregistered() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let _bob = register(&server, "bob").await;
    let _never_registered = server.json().await;
    let reply = alice.ask(&request("LIST_USERS", "")).await.unwrap();
    assert_eq!(reply, ok_with("Online users", "alice, bob, anonymous"));
    server.stop().await;
}

#[tokio::test]
async fn list_messages_says_no_messages_yet_when_there_are_none() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(&request("LIST_MESSAGES", "")).await.unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"Recent messages","data":"No messages yet"}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn list_messages_shows_the_last_20_with_time_and_sender() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    for i in 1..=25 {
        let reply = alice
            .ask(&request("MESSAGE", &format!("message #{i}")))
            .await
            .unwrap();
        assert_eq!(reply, ok("Message broadcasted"));
    }

    let reply = alice.ask(&request("LIST_MESSAGES", "")).await.unwrap();
    assert!(
        reply.starts_with(r#"{"success":true,"message":"Recent messages","data":"["#),
        "{reply}"
    );
    let data = parse(&reply)["data"].as_str().unwrap().to_string();
    let lines: Vec<&str> = data.split('\n').collect();
    assert_eq!(lines.len(), 20, "{data:?}");
    let now = now_nanos() / 1_000_000_000 % 86_400;
    for (line, i) in lines.iter().zip(6..) {
        let clock = line
            .strip_prefix('[')
            .and_then(|rest| rest.get(..8))
            .and_then(clock_seconds)
            .unwrap_or_else(|| panic!("no [HH:MM:SS] in {line:?}"));
        assert!(close_in_the_day(clock, now, 5), "{line:?} is not UTC now");
        assert_eq!(&line[10..], format!(" alice: message #{i}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn time_is_rfc3339_in_utc_without_fractional_seconds() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(&request("TIME", "")).await.unwrap();
    let response = parse(&reply);
    assert_eq!(response["success"], true);
    assert_eq!(response["message"], "Server time");
    let time = response["data"].as_str().unwrap();

    let (stamp, offset) = time.split_at(19);
    assert!(offset == "Z" || offset == "+00:00", "{time:?}");
    let b = stamp.as_bytes();
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T')] {
        assert_eq!(b[at], sep, "{time:?}");
    }
    assert!(
        stamp[..10]
            .bytes()
            .filter(|c| *c != b'-')
            .all(|c| c.is_ascii_digit()),
        "{time:?}"
    );
    let clock = clock_seconds(&stamp[11..]).unwrap_or_else(|| panic!("{time:?}"));
    let now = now_nanos() / 1_000_000_000 % 86_400;
    assert!(close_in_the_day(clock, now, 5), "{time:?} is not UTC now");
    server.stop().await;
}

#[tokio::test]
async fn quit_says_goodbye_and_the_server_closes() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(&request("QUIT", "")).await.unwrap();
    assert_eq!(reply, r#"{"success":true,"message":"Goodbye!","data":""}"#);
    assert_eq!(client.line_or_eof().await.unwrap(), None);
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_command_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(&request("DANCE", "")).await.unwrap();
    assert_eq!(
        reply,
        r#"{"success":false,"message":"Validation error: unknown command: DANCE","data":""}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_answered_as_seed_001_does() {
    let server = TestServer::start().await;
    let mut client = server.json().await;
    let reply = client.ask(r#"{"command":"ECHO","data":"#).await.unwrap();
    assert_eq!(reply, failed("Validation error: command cannot be empty"));
    let reply = client.ask(&request("ECHO", "still here")).await.unwrap();
    assert_eq!(reply, ok_with("Echo response", "still here"));
    server.stop().await;
}

#[tokio::test]
async fn ten_requests_in_one_write_get_ten_responses_in_order() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    // Stored messages (answered by the hub) interleaved with echoes (answered at once).
    let mut batch = String::new();
    for i in 0..10 {
        let command = if i % 2 == 0 { "MESSAGE" } else { "ECHO" };
        batch.push_str(&request(command, &format!("request {i}")));
        batch.push('\n');
    }
    alice.send_raw(batch.as_bytes()).await.unwrap();

    for i in 0..10 {
        let expected = if i % 2 == 0 {
            ok("Message broadcasted")
        } else {
            ok_with("Echo response", &format!("request {i}"))
        };
        assert_eq!(alice.line().await.unwrap(), expected, "response {i}");
    }
    alice.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_unsubscribed_json_client_is_never_pushed_anything() {
    let server = TestServer::start().await;
    let mut carol = register(&server, "carol").await;
    let mut anonymous = server.json().await;
    assert_eq!(
        carol
            .ask(r##"{"command":"JOIN","room":"#r"}"##)
            .await
            .unwrap(),
        ok("Joined")
    );
    let mut alice = register(&server, "alice").await;

    // Every reply to alice comes after the server handed out what the request caused.
    let requests = [
        (request("MESSAGE", "to everyone"), "Message broadcasted"),
        (
            r#"{"command":"DM","to":"carol","data":"just for you"}"#.to_string(),
            "Message sent",
        ),
        (r##"{"command":"JOIN","room":"#r"}"##.to_string(), "Joined"),
        (
            r##"{"command":"SAY","room":"#r","data":"to the room"}"##.to_string(),
            "Message sent",
        ),
    ];
    for (line, answer) in requests {
        assert_eq!(alice.ask(&line).await.unwrap(), ok(answer), "{line}");
    }

    let (c, a) = tokio::join!(carol.no_line_within(QUIET), anonymous.no_line_within(QUIET));
    c.expect("carol (registered) got an unsolicited line");
    a.expect("an anonymous client got an unsolicited line");
    let reply = carol.ask(&request("ECHO", "next")).await.unwrap();
    assert_eq!(reply, ok_with("Echo response", "next"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// JSON on the shared port
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_first_byte_brace_on_the_shared_port_is_served_json_without_a_welcome() {
    let server = TestServer::start().await;
    let mut client = LineClient::connect(server.addr).await.unwrap();
    let reply = client.ask(&request("ECHO", "shared")).await.unwrap();
    assert_eq!(reply, ok_with("Echo response", "shared"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// parley's JSON extensions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_id_is_echoed_at_the_end_of_the_response() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let reply = alice.ask(r#"{"command":"PING","id":7}"#).await.unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"PONG","data":"","id":7}"#
    );
    let reply = alice
        .ask(r#"{"command":"MESSAGE","data":"hi","id":"m-1"}"#)
        .await
        .unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"Message broadcasted","data":"","id":"m-1"}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn dm_reaches_the_user_named_in_to() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let mut alice = register(&server, "alice").await;
    let reply = alice
        .ask(r#"{"command":"DM","to":"bob","data":"hi bob"}"#)
        .await
        .unwrap();
    assert_eq!(reply, ok("Message sent"));
    assert_eq!(bob.line().await.unwrap(), "DM alice hi bob");
    server.stop().await;
}

#[tokio::test]
async fn dm_to_a_user_that_never_existed_is_user_not_found() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let reply = alice
        .ask(r#"{"command":"DM","to":"nobody","data":"hello?"}"#)
        .await
        .unwrap();
    assert_eq!(reply, failed("User not found"));
    server.stop().await;
}

#[tokio::test]
async fn dm_before_register_is_refused() {
    let server = TestServer::start().await;
    let _bob = server.text_login("bob").await;
    let mut anonymous = server.json().await;
    let reply = anonymous
        .ask(r#"{"command":"DM","to":"bob","data":"hi"}"#)
        .await
        .unwrap();
    assert_eq!(reply, failed("Register first"));
    server.stop().await;
}

#[tokio::test]
async fn join_takes_a_room_or_several_and_rooms_lists_them() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let reply = alice
        .ask(r##"{"command":"JOIN","room":"#a"}"##)
        .await
        .unwrap();
    assert_eq!(reply, ok("Joined"));
    let reply = alice
        .ask(r##"{"command":"JOIN","rooms":["#b","#c"]}"##)
        .await
        .unwrap();
    assert_eq!(reply, ok("Joined"));

    let reply = alice.ask(r#"{"command":"ROOMS"}"#).await.unwrap();
    let response = parse(&reply);
    assert_eq!(response["message"], "Rooms");
    assert_eq!(
        response["data"],
        json!([
            {"name": "#a", "members": 1, "online": 1},
            {"name": "#b", "members": 1, "online": 1},
            {"name": "#c", "members": 1, "online": 1},
        ])
    );
    server.stop().await;
}

#[tokio::test]
async fn say_reaches_the_other_members_of_the_room() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let reply = alice
        .ask(r##"{"command":"JOIN","room":"#a"}"##)
        .await
        .unwrap();
    assert_eq!(reply, ok("Joined"));
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");

    let reply = alice
        .ask(r##"{"command":"SAY","room":"#a","data":"hello room"}"##)
        .await
        .unwrap();
    assert_eq!(reply, ok("Message sent"));
    assert_eq!(bob.line().await.unwrap(), "ROOM #a alice hello room");
    server.stop().await;
}

#[tokio::test]
async fn say_outside_a_room_is_refused() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    let mut alice = register(&server, "alice").await;
    let reply = alice
        .ask(r##"{"command":"SAY","room":"#a","data":"let me in"}"##)
        .await
        .unwrap();
    assert_eq!(reply, failed("Not a member of that room"));
    let reply = alice
        .ask(r##"{"command":"SAY","room":"#nowhere","data":"anyone?"}"##)
        .await
        .unwrap();
    assert_eq!(reply, failed("Room not found"));
    server.stop().await;
}

#[tokio::test]
async fn who_answers_an_array_of_names() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    let _bob = server.text_login("bob").await;
    let _never_registered = server.json().await;
    let reply = alice.ask(r#"{"command":"WHO"}"#).await.unwrap();
    assert_eq!(
        reply,
        r#"{"success":true,"message":"Online users","data":["alice","bob","anonymous"]}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn history_returns_the_latest_messages_of_a_conversation_oldest_first() {
    let server = TestServer::start().await;
    let _bob = server.text_login("bob").await;
    let mut alice = register(&server, "alice").await;
    for text in ["one", "two", "three"] {
        let reply = alice
            .ask(&json!({"command": "DM", "to": "bob", "data": text}).to_string())
            .await
            .unwrap();
        assert_eq!(reply, ok("Message sent"));
    }

    let reply = alice
        .ask(r#"{"command":"HISTORY","target":"bob","limit":2}"#)
        .await
        .unwrap();
    let response = parse(&reply);
    assert_eq!(response["message"], "History");
    let items = response["data"].as_array().unwrap();
    let got: Vec<(&str, &str, i64)> = items
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap(),
                m["text"].as_str().unwrap(),
                m["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("alice", "two", 2), ("alice", "three", 3)]);
    server.stop().await;
}

#[tokio::test]
async fn after_subscribe_messages_arrive_as_event_lines() {
    let server = TestServer::start().await;
    let mut alice = register(&server, "alice").await;
    assert_eq!(
        alice.ask(r#"{"command":"SUBSCRIBE"}"#).await.unwrap(),
        ok("Subscribed")
    );
    let mut bob = server.text_login("bob").await;

    bob.send("DM alice hi alice").await.unwrap();
    let line = alice.line().await.unwrap();
    assert!(line.starts_with(r#"{"event":"message""#), "{line}");
    let event = parse(&line);
    assert_eq!(
        (&event["kind"], &event["from"], &event["to"], &event["text"]),
        (
            &json!("dm"),
            &json!("bob"),
            &json!("alice"),
            &json!("hi alice")
        )
    );

    bob.send("MSG hi everyone").await.unwrap();
    let line = alice.line().await.unwrap();
    assert!(line.starts_with(r#"{"event":"message""#), "{line}");
    let event = parse(&line);
    assert_eq!(
        (&event["kind"], &event["from"], &event["to"], &event["text"]),
        (
            &json!("broadcast"),
            &json!("bob"),
            &json!("*"),
            &json!("hi everyone")
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn subscribe_delivers_the_dms_sent_while_offline_in_order() {
    let server = TestServer::start().await;
    let mut carol = register(&server, "carol").await;
    assert_eq!(
        carol.ask(&request("QUIT", "")).await.unwrap(),
        ok("Goodbye!")
    );
    assert_eq!(carol.line_or_eof().await.unwrap(), None);

    let mut alice = register(&server, "alice").await;
    for i in 1..=3 {
        let dm = json!({"command": "DM", "to": "carol", "data": format!("missed {i}")});
        assert_eq!(
            alice.ask(&dm.to_string()).await.unwrap(),
            ok("Message sent")
        );
    }

    let mut carol = register(&server, "carol").await;
    carol.send(r#"{"command":"SUBSCRIBE"}"#).await.unwrap();
    let mut answered = false;
    let mut missed = Vec::new();
    while missed.len() < 3 || !answered {
        let line = carol.line().await.unwrap();
        if line == ok("Subscribed") {
            assert!(!answered, "SUBSCRIBE answered twice");
            answered = true;
            continue;
        }
        let event = parse(&line);
        assert_eq!(event["event"], "message", "{line}");
        assert_eq!(
            (&event["from"], &event["to"]),
            (&json!("alice"), &json!("carol"))
        );
        missed.push(event["text"].as_str().unwrap().to_string());
    }
    assert_eq!(missed, ["missed 1", "missed 2", "missed 3"]);
    carol.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Delivery across protocols
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_text_dm_reaches_a_binary_user_stamped_with_server_time() {
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    let mut alice = server.text_login("alice").await;

    let before = now_nanos();
    alice.send("DM bob hi from text").await.unwrap();
    let (body, from, to, time) = bob.expect_push().await.unwrap();
    let after = now_nanos();

    assert_eq!(&body[..], b"hi from text");
    assert_eq!((from.as_str(), to.as_str()), ("alice", "bob"));
    let slack = 5_000_000_000;
    assert!(
        (before - slack..=after + slack).contains(&time),
        "time {time} is not Unix nanoseconds of now ({before}..{after})"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_binary_message_reaches_a_text_user_as_a_dm_line() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let mut alice = server.login("alice").await;
    let code = alice
        .message(2, "alice", "bob", b"hi from binary", now_nanos())
        .await
        .unwrap();
    assert_eq!(code, code::OK);
    assert_eq!(bob.line().await.unwrap(), "DM alice hi from binary");
    server.stop().await;
}

#[tokio::test]
async fn a_text_broadcast_reaches_text_and_binary_users_and_is_stored() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let mut carol = server.login("carol").await;
    let mut dave = server.json().await;
    let mut alice = server.text_login("alice").await;

    alice.send("MSG hello all").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "MSG alice hello all");
    let (body, from, to, _) = carol.expect_push().await.unwrap();
    assert_eq!(&body[..], b"hello all");
    assert_eq!((from.as_str(), to.as_str()), ("alice", "*"));

    let reply = dave.ask(&request("LIST_MESSAGES", "")).await.unwrap();
    let data = parse(&reply)["data"].as_str().unwrap().to_string();
    assert!(
        data.starts_with('[') && data.ends_with("] alice: hello all"),
        "{data:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_json_message_reaches_text_users_as_msg() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let mut alice = register(&server, "alice").await;
    let reply = alice.ask(&request("MESSAGE", "hello text")).await.unwrap();
    assert_eq!(reply, ok("Message broadcasted"));
    assert_eq!(bob.line().await.unwrap(), "MSG alice hello text");
    server.stop().await;
}

#[tokio::test]
async fn who_from_text_lists_users_of_every_protocol() {
    let server = TestServer::start().await;
    let _bob = server.login("bob").await;
    let _carol = register(&server, "carol").await;
    let mut alice = server.text_login("alice").await;

    alice.send("WHO").await.unwrap();
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(alice.line().await.unwrap());
    }
    assert_eq!(users, ["USER alice", "USER bob", "USER carol"]);
    server.stop().await;
}

#[tokio::test]
async fn a_room_message_from_text_reaches_slash_and_text_members_in_their_style() {
    let server = TestServer::start().await;
    let mut carol = slash_member(&server, "carol", "lobby").await;
    let mut dave = server.text_login("dave").await;
    assert_eq!(dave.ask("JOIN lobby").await.unwrap(), "OK");
    assert_eq!(carol.line().await.unwrap(), "> dave joined the room");
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN lobby").await.unwrap(), "OK");
    assert_eq!(carol.line().await.unwrap(), "> bob joined the room");
    assert_eq!(dave.line().await.unwrap(), "INFO bob joined lobby");

    bob.send("SAY lobby hello room").await.unwrap();
    assert_eq!(carol.line().await.unwrap(), "> bob: hello room");
    assert_eq!(dave.line().await.unwrap(), "ROOM lobby bob hello room");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Protocol detection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_binary_login_whose_first_packet_is_one_byte_is_served() {
    let server = TestServer::start().await;
    let mut frame = BytesMut::new();
    Frame::Login {
        cid: 1,
        username: Bytes::from_static(b"alice"),
    }
    .encode(&mut frame)
    .unwrap();

    let mut client = server.client().await;
    client.send_raw(&frame[..1]).await.unwrap();
    // Not synchronisation: lets the lone byte leave as a packet of its own.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.send_raw(&frame[1..]).await.unwrap();
    assert_eq!(client.expect_response(1).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_json_request_whose_first_packet_is_a_lone_brace_is_served() {
    let server = TestServer::start().await;
    let line = format!("{}\n", request("ECHO", "split"));
    let mut client = LineClient::connect(server.addr).await.unwrap();
    client.send_raw(&line.as_bytes()[..1]).await.unwrap();
    // Not synchronisation: lets the lone brace leave as a packet of its own.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.send_raw(&line.as_bytes()[1..]).await.unwrap();
    assert_eq!(
        client.line().await.unwrap(),
        ok_with("Echo response", "split")
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_overlong_json_line_is_refused_and_the_next_request_works() {
    let server = TestServer::start_with(|c| c.max_line_bytes = 100).await;
    let mut client = server.json().await;
    let reply = client
        .ask(&request("ECHO", &"x".repeat(200)))
        .await
        .unwrap();
    assert_eq!(
        reply,
        r#"{"success":false,"message":"Line too long","data":""}"#
    );
    let reply = client.ask(&request("ECHO", "short")).await.unwrap();
    assert_eq!(reply, ok_with("Echo response", "short"));
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_made_before_registering_gets_live_messages_after_it() {
    let server = TestServer::start().await;
    let mut alice = server.json().await;
    assert_eq!(
        alice.ask(r#"{"command":"SUBSCRIBE"}"#).await.unwrap(),
        ok("Subscribed")
    );
    let line = alice
        .ask(r#"{"command":"REGISTER","data":"alice"}"#)
        .await
        .unwrap();
    assert_eq!(line, ok("Registration successful. Welcome, alice!"));
    let mut bob = server.text_login("bob").await;
    bob.send("DM alice are you there").await.unwrap();
    let event = parse(&alice.line().await.unwrap());
    assert_eq!(
        (&event["event"], &event["text"]),
        (&json!("message"), &json!("are you there"))
    );
    server.stop().await;
}
