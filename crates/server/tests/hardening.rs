//! Issue 20's smaller defects, over real sockets: the message rate counts each delivery,
//! listings need a login and come a page at a time, a JSON object's id comes back with
//! its error, and the text protocol's second login and "never seen" users.

mod common;

use std::time::Duration;

use common::{bytes, parse, TestServer, PASSWORD};
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{code, Frame, ListPage, UserEntry};
use serde_json::{json, Value};

/// How long a client listens to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

fn five_messages_a_second(c: &mut parley_server::Config) {
    c.messages_per_second = 5;
    c.message_burst = 5;
}

/// A JSON connection logged in (password-less) as `name`.
async fn json_login(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.json().await;
    let login = json!({"command": "LOGIN", "data": name});
    let reply = parse(&c.ask(&login.to_string()).await.unwrap());
    assert_eq!(reply["success"], true, "{reply}");
    c
}

/// Sends a JSON request and returns its answer.
async fn ask_json(c: &mut LineClient, request: Value) -> Value {
    parse(&c.ask(&request.to_string()).await.unwrap())
}

/// The frame that answers `cid` next, data frames first, then its response code.
async fn answer(c: &mut BinaryClient, frame: Frame) -> (Vec<Frame>, u16) {
    let cid = frame.cid();
    c.send(&frame).await.unwrap();
    let mut data = Vec::new();
    loop {
        match c.recv().await.unwrap() {
            Frame::Response { cid: got, code } if got == cid => return (data, code),
            other => data.push(other),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Item 4: a send to several users counts one message per recipient
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_text_dm_to_several_users_takes_one_message_of_the_rate_per_recipient() {
    let server = TestServer::start_with(five_messages_a_second).await;
    let mut readers = Vec::new();
    for name in ["b", "c", "d"] {
        readers.push(server.text_login(name).await);
    }
    let mut alice = server.text_login("alice").await;

    // Three of the burst's five; three more do not fit, so none of them is sent.
    alice.send("DM b,c,d one").await.unwrap();
    assert_eq!(alice.ask("DM b,c,d two").await.unwrap(), "ERR rate-limited");
    // Six recipients at once are more than the whole burst: never sent.
    let six = "DM b,c,d,e,f,g three";
    assert_eq!(alice.ask(six).await.unwrap(), "ERR rate-limited");
    for reader in &mut readers {
        assert_eq!(reader.line().await.unwrap(), "DM alice one");
        reader.no_line_within(QUIET).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn a_binary_send_many_takes_one_message_of_the_rate_per_recipient() {
    let server = TestServer::start_with(five_messages_a_second).await;
    let mut bob = server.login("bob").await;
    let _carol = server.login("carol").await;
    let _dave = server.login("dave").await;
    let mut alice = server.login("alice").await;
    let many = |cid| Frame::SendMany {
        cid,
        to: vec![bytes("bob"), bytes("carol"), bytes("dave")],
        message: bytes("hi"),
        time: 1,
    };

    assert_eq!(answer(&mut alice, many(2)).await.1, code::OK);
    assert_eq!(answer(&mut alice, many(3)).await.1, code::RATE_LIMITED);
    assert_eq!(bob.expect_push().await.unwrap().0, bytes("hi"));
    bob.send(&Frame::CorrelationTest { cid: 9 }).await.unwrap();
    assert_eq!(
        bob.expect_response(9).await.unwrap(),
        code::OK,
        "one message, not two"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_json_dm_to_recipients_takes_one_message_of_the_rate_per_recipient() {
    let server = TestServer::start_with(five_messages_a_second).await;
    for name in ["b", "c", "d"] {
        drop(server.text_login(name).await);
    }
    let mut alice = json_login(&server, "alice").await;
    let dm = json!({"command": "DM", "recipients": ["b", "c", "d"], "data": "hi", "id": 1});

    let sent = ask_json(&mut alice, dm.clone()).await;
    assert_eq!(sent["message"], "Message sent", "{sent}");
    let refused = ask_json(&mut alice, dm).await;
    assert_eq!(
        (refused["success"].clone(), refused["id"].clone()),
        (json!(false), json!(1)),
        "{refused}"
    );
    assert_eq!(refused["message"], "Too many messages, slow down");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 6: listings need a login, and come a page at a time
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn binary_listings_and_profiles_are_refused_before_login() {
    let server = TestServer::start().await;
    drop(server.login("carol").await);
    let mut guest = server.client().await;
    let requests = [
        Frame::ListUsers { cid: 1, page: None },
        Frame::Search {
            cid: 2,
            prefix: bytes("c"),
            limit: 10,
        },
        Frame::ListRooms { cid: 3, page: None },
        Frame::GetProfile {
            cid: 4,
            username: bytes("carol"),
        },
    ];
    for request in requests {
        let asked = format!("{request:?}");
        let (data, code) = answer(&mut guest, request).await;
        assert_eq!(
            (data, code),
            (vec![], code::NOT_LOGGED_IN),
            "{asked}: no data, a clear error"
        );
    }
    // Logged in, the same requests are answered.
    assert_eq!(guest.login(5, "dave").await.unwrap(), code::OK);
    let (data, code) = answer(&mut guest, Frame::ListUsers { cid: 6, page: None }).await;
    assert_eq!(code, code::OK);
    assert!(matches!(&data[..], [Frame::Users { users, .. }] if users.len() == 2));
    server.stop().await;
}

#[tokio::test]
async fn json_listings_and_profiles_are_refused_before_login() {
    let server = TestServer::start().await;
    drop(server.login("carol").await);
    let mut guest = server.json().await;
    for command in ["USERS", "ROOMS", "SEARCH", "PROFILE"] {
        let request = json!({"command": command, "data": "carol", "id": command});
        let reply = ask_json(&mut guest, request).await;
        assert_eq!(
            reply,
            json!({"success": false, "message": "Register first", "data": "", "id": command})
        );
    }
    server.stop().await;
}

/// The names in a `Users` frame.
fn names(users: &[UserEntry]) -> Vec<String> {
    let names = users.iter().map(|u| String::from_utf8_lossy(&u.name));
    names.map(|n| n.into_owned()).collect()
}

/// The names a binary `ListUsers` of `page` lists.
async fn user_page(c: &mut BinaryClient, cid: u32, page: Option<ListPage>) -> Vec<String> {
    match answer(c, Frame::ListUsers { cid, page }).await {
        (frames, code::OK) => match &frames[..] {
            [Frame::Users { users, .. }] => names(users),
            other => panic!("expected one Users frame, got {other:?}"),
        },
        (_, code) => panic!("ListUsers refused with {code:#x}"),
    }
}

fn after(name: &str, limit: u16) -> Option<ListPage> {
    Some(ListPage {
        after: bytes(name),
        limit,
    })
}

#[tokio::test]
async fn users_come_a_page_at_a_time_in_every_protocol() {
    let server = TestServer::start_with(|c| c.max_list_page = 2).await;
    for name in ["u1", "u2", "u3", "u4"] {
        drop(server.login(name).await);
    }
    let mut u0 = server.login("u0").await;

    assert_eq!(user_page(&mut u0, 2, None).await, ["u0", "u1"]);
    assert_eq!(user_page(&mut u0, 3, after("u1", 0)).await, ["u2", "u3"]);
    assert_eq!(user_page(&mut u0, 4, after("u3", 0)).await, ["u4"]);
    assert!(user_page(&mut u0, 5, after("u4", 0)).await.is_empty());
    assert_eq!(user_page(&mut u0, 6, after("u0", 1)).await, ["u1"]);
    assert_eq!(
        user_page(&mut u0, 7, after("", 900)).await,
        ["u0", "u1"],
        "never more than a page"
    );

    let mut text = server.text_login("t").await;
    text.send("USERS u2").await.unwrap();
    for expected in ["PRESENCE u3 offline", "PRESENCE u4 offline"] {
        let line = text.line().await.unwrap();
        assert!(line.starts_with(expected), "{line:?}");
    }
    assert_eq!(text.line().await.unwrap(), "OK");

    let mut json = json_login(&server, "j").await;
    let page = ask_json(&mut json, json!({"command": "USERS", "after": "u3"})).await;
    let listed: Vec<&str> = (page["data"].as_array().unwrap().iter())
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["u4"], "{page}");
    server.stop().await;
}

#[tokio::test]
async fn rooms_come_a_page_at_a_time_in_every_protocol() {
    let server = TestServer::start_with(|c| c.max_list_page = 2).await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN r3 r1 r2").await.unwrap(), "OK");

    alice.send("ROOMS").await.unwrap();
    for expected in ["ROOM r1 1 1", "ROOM r2 1 1", "OK"] {
        assert_eq!(alice.line().await.unwrap(), expected);
    }
    alice.send("ROOMS r2").await.unwrap();
    for expected in ["ROOM r3 1 1", "OK"] {
        assert_eq!(alice.line().await.unwrap(), expected);
    }

    let mut bob = server.login("bob").await;
    let list = Frame::ListRooms {
        cid: 2,
        page: after("r1", 1),
    };
    match answer(&mut bob, list).await {
        (frames, code::OK) => match &frames[..] {
            [Frame::Rooms { rooms, .. }] => {
                let names: Vec<&[u8]> = rooms.iter().map(|r| &r.name[..]).collect();
                assert_eq!(names, [b"r2"]);
            }
            other => panic!("expected one Rooms frame, got {other:?}"),
        },
        (_, code) => panic!("ListRooms refused with {code:#x}"),
    }

    let mut json = json_login(&server, "j").await;
    let page = ask_json(&mut json, json!({"command": "ROOMS", "after": "r1"})).await;
    let listed: Vec<&str> = (page["data"].as_array().unwrap().iter())
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["r2", "r3"], "{page}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 17: a JSON object's id comes back with its error; a blank line is not answered
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_json_object_with_a_wrongly_typed_field_is_answered_with_its_id() {
    let server = TestServer::start().await;
    let mut c = server.json().await;
    let wrong = r#"{"command":"HISTORY","target":"*","limit":"abc","id":42}"#;
    assert_eq!(
        parse(&c.ask(wrong).await.unwrap()),
        json!({"success": false, "message": "Invalid message format", "data": "", "id": 42})
    );
    let no_command = r#"{"id":"x","data":"hi"}"#;
    assert_eq!(parse(&c.ask(no_command).await.unwrap())["id"], "x");
    // Not an object (or not JSON): nothing to take an id from.
    let not_json = parse(&c.ask(r#"{"id":7,"command":"#).await.unwrap());
    assert_eq!(not_json.get("id"), None, "{not_json}");
    server.stop().await;
}

#[tokio::test]
async fn a_blank_json_line_gets_no_answer() {
    let server = TestServer::start().await;
    let mut c = server.json().await;
    c.send_raw(b"\n   \n").await.unwrap();
    let ping = parse(&c.ask(r#"{"command":"PING","id":1}"#).await.unwrap());
    assert_eq!(
        (ping["message"].clone(), ping["id"].clone()),
        (json!("PONG"), json!(1))
    );
    c.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 18: a second login on a connection; users never seen
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_second_login_on_a_connection_is_already_logged_in_in_every_form() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.text().await;
    let login = format!("LOGIN alice {PASSWORD}");
    assert_eq!(c.ask(&login).await.unwrap(), "OK");
    assert_eq!(c.ask(&login).await.unwrap(), "ERR already-logged-in");
    assert_eq!(
        c.ask(&format!("LOGIN alice {PASSWORD} tablet"))
            .await
            .unwrap(),
        "ERR already-logged-in"
    );
    assert_eq!(c.ask("LOGIN bob").await.unwrap(), "ERR already-logged-in");
    assert_eq!(c.ask("RESUME abc").await.unwrap(), "ERR already-logged-in");

    let mut json = server.json().await;
    let login = json!({"command": "LOGIN", "data": "alice", "password": PASSWORD, "device": "web"});
    assert_eq!(ask_json(&mut json, login.clone()).await["success"], true);
    let again = ask_json(&mut json, login).await;
    assert_eq!(again["message"], "Already logged in", "{again}");

    // Binary keeps the seed's 0x04 for a second login on the connection.
    let mut binary = server.login("bob").await;
    assert_eq!(
        binary.login(2, "carol").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    server.stop().await;
}

#[tokio::test]
async fn an_account_that_never_logged_in_was_never_seen() {
    let server = TestServer::start().await;
    server.register("carol").await;
    let mut alice = server.text_login("alice").await;

    alice.send("USERS").await.unwrap();
    assert!(alice
        .line()
        .await
        .unwrap()
        .starts_with("PRESENCE alice online"));
    assert_eq!(alice.line().await.unwrap(), "PRESENCE carol offline never");
    assert_eq!(alice.line().await.unwrap(), "OK");

    let mut json = json_login(&server, "j").await;
    let users = ask_json(&mut json, json!({"command": "USERS", "after": "b"})).await;
    assert_eq!(
        users["data"][0],
        json!({"name": "carol", "online": false, "last_seen": null})
    );

    let mut bob = server.login("bob").await;
    let listed = answer(
        &mut bob,
        Frame::ListUsers {
            cid: 2,
            page: after("bob", 1),
        },
    )
    .await;
    match &listed.0[..] {
        [Frame::Users { users, .. }] => assert_eq!(
            users[..],
            [UserEntry {
                name: bytes("carol"),
                online: false,
                last_seen: 0
            }]
        ),
        other => panic!("expected one Users frame, got {other:?}"),
    }
    server.stop().await;
}

/// The JSON commands docs/PROTOCOL.md documents: the backquoted upper-case words of the
/// first column of every table in its "JSON lines" chapter.
fn documented_json_commands() -> Vec<String> {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let start = doc.find("\n## JSON lines").expect("a JSON lines chapter");
    // To the next chapter (`## `), the first after the heading's own line.
    let rest = &doc[start + 1..];
    let end = start + 1 + rest.find("\n## ").expect("the chapter after it");
    let mut commands = Vec::new();
    for row in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for word in first.split('`').skip(1).step_by(2) {
            let command =
                !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            if command && !commands.iter().any(|c| c == word) {
                commands.push(word.to_string());
            }
        }
    }
    commands
}

#[tokio::test]
async fn json_help_lists_every_documented_command() {
    let documented = documented_json_commands();
    assert!(documented.len() > 30, "read the tables: {documented:?}");
    let server = TestServer::start().await;
    let mut c = server.json().await;
    let help = ask_json(&mut c, json!({"command": "HELP"})).await;
    let lines: Vec<&str> = (help["data"].as_array().expect("a list").iter())
        .map(|l| l.as_str().expect("strings"))
        .collect();
    let missing: Vec<&String> = (documented.iter())
        .filter(|command| {
            !lines
                .iter()
                .any(|l| l.split(' ').next() == Some(command.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "HELP leaves out {missing:?}: {lines:#?}"
    );
    server.stop().await;
}

/// A text connection logged in to the account `name` as `device`.
async fn device(server: &TestServer, name: &str, device: &str) -> LineClient {
    let mut c = server.text().await;
    let login = format!("LOGIN {name} {PASSWORD} {device}");
    assert_eq!(c.ask(&login).await.unwrap(), "OK", "{login}");
    c
}

#[tokio::test]
async fn a_dm_from_another_device_of_the_account_shows_its_recipient() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut bob = server.text_login("bob").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;

    phone.send("DM bob one").await.unwrap();
    assert_eq!(
        bob.line().await.unwrap(),
        "DM alice one",
        "others: unchanged"
    );
    assert_eq!(laptop.line().await.unwrap(), "SENT bob one");
    bob.send("DM alice back").await.unwrap();
    assert_eq!(laptop.line().await.unwrap(), "DM bob back");
    assert_eq!(phone.line().await.unwrap(), "DM bob back");

    // Caught up after an absence, the same.
    common::quit(laptop).await;
    phone.send("DM bob two").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice two");
    let mut laptop = device(&server, "alice", "laptop").await;
    assert_eq!(laptop.line().await.unwrap(), "SENT bob two");
    laptop.no_line_within(QUIET).await.unwrap();
    phone.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 19: clients are told the server is going away; nothing acknowledged is lost
// ---------------------------------------------------------------------------------------

/// Reads lines until `last`, allowing only lines for which `before` holds ahead of it, then
/// the end of the connection.
async fn told_then_closed(c: &mut LineClient, last: &str, before: impl Fn(&str) -> bool) {
    loop {
        match c.line_or_eof().await.unwrap() {
            Some(line) if line == last => break,
            Some(line) if before(&line) => {}
            other => panic!("expected {last:?}, got {other:?}"),
        }
    }
    assert_eq!(
        c.line_or_eof().await.unwrap(),
        None,
        "closed after {last:?}"
    );
}

#[tokio::test]
async fn clients_are_told_of_a_shutdown_and_nothing_acknowledged_is_lost() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let mut server = TestServer::start().await;
    let mut text = server.text_login("tom").await;
    let mut slash = server.text().await;
    assert_eq!(
        slash.ask("/nick sam").await.unwrap(),
        "> all right, I will call you sam"
    );
    let mut subscribed = json_login(&server, "jo").await;
    let reply = ask_json(&mut subscribed, json!({"command": "SUBSCRIBE"})).await;
    assert_eq!(reply["message"], "Subscribed");
    let mut seed001 = json_login(&server, "ann").await;
    let request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let login = json!({"command": "LOGIN", "data": "wes", "id": 1}).to_string();
    ws.send(Message::Text(login)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(matches!(answer, Ok(Some(Ok(Message::Text(_))))));
    // A sender with messages in flight as the server stops.
    common::close(server.login("bob").await).await;
    let mut alice = server.login("alice").await;
    const SENT: u32 = 300;
    let flood: Vec<u8> = (1..=SENT)
        .flat_map(|cid| {
            let mut frame = bytes::BytesMut::new();
            let body = format!("m{cid}");
            parley_proto::binary::encode_message(
                cid,
                body.as_bytes(),
                b"alice",
                b"bob",
                0,
                &mut frame,
            )
            .unwrap();
            frame.to_vec()
        })
        .collect();
    alice.send_raw(&flood).await.unwrap();

    server.restart().await;

    let notice = |line: &str| line.starts_with("INFO ");
    told_then_closed(&mut text, "INFO server shutting down", notice).await;
    let slash_notice = |line: &str| line.starts_with("> ");
    told_then_closed(&mut slash, "> server shutting down", slash_notice).await;
    let event = json!({"event": "shutdown", "reason": "server shutting down"}).to_string();
    let other_event = |line: &str| line.starts_with(r#"{"event":"#);
    told_then_closed(&mut subscribed, &event, other_event).await;
    assert_eq!(
        seed001.line_or_eof().await.unwrap(),
        None,
        "an unsubscribed JSON client gets no unsolicited line"
    );
    let close = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match next.expect("a WebSocket frame within 10 s") {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close code"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        (close.code, close.reason.to_string()),
        (CloseCode::Away, "server shutting down".to_string())
    );

    let mut acknowledged = Vec::new();
    while let Some(frame) = alice.recv_or_eof().await.unwrap() {
        match frame {
            Frame::Response {
                cid,
                code: code::OK,
            } => acknowledged.push(format!("m{cid}")),
            other => panic!("only answers, got {other:?}"),
        }
    }
    let mut bob = server.login("bob").await;
    let mut received = Vec::new();
    for _ in 0..acknowledged.len() {
        let (body, ..) = bob.expect_push().await.unwrap();
        received.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert_eq!(
        received, acknowledged,
        "every acknowledged message, in order"
    );
    server.stop().await;
}
