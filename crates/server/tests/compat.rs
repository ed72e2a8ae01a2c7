//! The seed systems' behaviours that earlier tests did not cover (issue 23's smaller gaps),
//! over real sockets with the default settings: each test names the seed whose client
//! depends on it (../shared/COMPAT.md, docs/PROTOCOL.md).

mod common;

use std::time::Duration;

use common::TestServer;
use parley_client::LineClient;
use parley_proto::binary::{self, code};

/// How long a client listens to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

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

/// Reads as the seed's Python client does: the length with one `recv`, the rest of the
/// frame with one more; each must return all it asked for.
async fn read_like_the_python_client(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let within = Duration::from_secs(10);
    let mut head = [0u8; 4];
    let n = tokio::time::timeout(within, stream.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 4, "the length in one read");
    let len = u32::from_be_bytes(head) as usize;
    let mut body = vec![0u8; len];
    let n = tokio::time::timeout(within, stream.read(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, len, "the rest of the frame in one more read");
    [&head[..], &body[..]].concat()
}

#[tokio::test]
async fn seed000_a_response_is_thirteen_bytes_and_each_frame_arrives_in_one_write() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let mut bob = server.login("bob").await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Login (cid 0x0A0B0C0D) as "al", written as a seed client writes it.
    let login = [
        0, 0, 0, 0x0B, 1, 0, 1, 0x0A, 0x0B, 0x0C, 0x0D, 0, 2, b'a', b'l',
    ];
    raw.write_all(&login).await.unwrap();
    let ok = read_like_the_python_client(&mut raw).await;
    assert_eq!(ok, [0, 0, 0, 9, 1, 0, 3, 0x0A, 0x0B, 0x0C, 0x0D, 0, 1]);
    // The correlation-id test: a bare cid (length 7).
    raw.write_all(&[0, 0, 0, 7, 1, 0, 9, 0, 0, 0, 42])
        .await
        .unwrap();
    let ok = read_like_the_python_client(&mut raw).await;
    assert_eq!(ok, [0, 0, 0, 9, 1, 0, 3, 0, 0, 0, 42, 0, 1]);
    // A push: one frame, cid 0, `from` and `time` as sent.
    let sent = bob.message(7, "bob", "al", b"hi al", 99).await.unwrap();
    assert_eq!(sent, code::OK);
    let push = read_like_the_python_client(&mut raw).await;
    let mut expected = bytes::BytesMut::new();
    binary::encode_message(0, b"hi al", b"bob", b"al", 99, &mut expected).unwrap();
    assert_eq!(push, &expected[..]);
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

// ---------------------------------------------------------------------------------------
// Seed 004: slash commands (gochat)
// ---------------------------------------------------------------------------------------

/// A gochat connection that took the nick `name` and is in `room` (replies consumed).
async fn gochat(server: &TestServer, name: &str, room: &str) -> LineClient {
    let mut c = server.text().await;
    let nick = c.ask(&format!("/nick {name}")).await.unwrap();
    assert_eq!(nick, format!("> all right, I will call you {name}"));
    let join = c.ask(&format!("/join {room}")).await.unwrap();
    assert_eq!(join, format!("> welcome to {room}"));
    c
}

#[tokio::test]
async fn seed004_nick_again_renames_the_session() {
    let server = TestServer::start().await;
    let mut amy = gochat(&server, "amy", "#g").await;
    let mut john = gochat(&server, "john", "#g").await;
    assert_eq!(amy.line().await.unwrap(), "> john joined the room");

    let renamed = john.ask("/nick johnny").await.unwrap();
    assert_eq!(renamed, "> all right, I will call you johnny");
    // The room sees john go and johnny come; later messages carry the new nick.
    assert_eq!(amy.line().await.unwrap(), "> john has left the room");
    assert_eq!(amy.line().await.unwrap(), "> johnny joined the room");
    john.send("/msg hi, new name").await.unwrap();
    assert_eq!(amy.line().await.unwrap(), "> johnny: hi, new name");
    amy.send("/msg welcome").await.unwrap();
    assert_eq!(john.line().await.unwrap(), "> amy: welcome");
    // The old nick is free again, and the new one is taken.
    let mut other = server.text().await;
    let taken = other.ask("/nick johnny").await.unwrap();
    assert_eq!(taken, "err: that nick is taken");
    let free = other.ask("/nick john").await.unwrap();
    assert_eq!(free, "> all right, I will call you john");
    server.stop().await;
}

#[tokio::test]
async fn seed004_nick_again_outside_a_room_renames_for_everyone() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/nick first").await.unwrap(),
        "> all right, I will call you first"
    );
    assert_eq!(
        c.ask("/nick second").await.unwrap(),
        "> all right, I will call you second"
    );
    assert_eq!(
        c.ask("/nick second").await.unwrap(),
        "> all right, I will call you second"
    );
    // The others see the new name online and the old one gone.
    let mut seer = server.text_login("seer").await;
    seer.send("WHO").await.unwrap();
    assert_eq!(seer.line().await.unwrap(), "USER second");
    assert_eq!(seer.line().await.unwrap(), "USER seer");
    seer.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn seed004_the_nick_of_a_registered_account_is_refused_with_a_clear_line() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let refusal = "> alice is a registered account, choose another nick. usage: /nick NAME";
    let mut c = server.text().await;
    assert_eq!(c.ask("/nick alice").await.unwrap(), refusal);
    // Also as a new name for a session that has one: it keeps its nick.
    let mut amy = gochat(&server, "amy", "#g").await;
    let mut bob = gochat(&server, "bob", "#g").await;
    assert_eq!(amy.line().await.unwrap(), "> bob joined the room");
    assert_eq!(bob.ask("/nick alice").await.unwrap(), refusal);
    bob.send("/msg still bob").await.unwrap();
    assert_eq!(amy.line().await.unwrap(), "> bob: still bob");
    server.stop().await;
}

#[tokio::test]
async fn seed004_a_client_that_vanishes_is_announced_as_having_left() {
    let server = TestServer::start().await;
    let mut amy = gochat(&server, "amy", "#g").await;
    let john = gochat(&server, "john", "#g").await;
    assert_eq!(amy.line().await.unwrap(), "> john joined the room");
    let anon = {
        let mut c = server.text().await;
        assert_eq!(c.ask("/join #g").await.unwrap(), "> welcome to #g");
        c
    };
    assert_eq!(amy.line().await.unwrap(), "> anonymous joined the room");

    drop(john); // no /quit: the socket just closes
    assert_eq!(amy.line().await.unwrap(), "> john has left the room");
    drop(anon);
    assert_eq!(amy.line().await.unwrap(), "> anonymous has left the room");
    amy.no_line_within(QUIET).await.unwrap();
    // john is out of the room: the room lists amy alone.
    let mut seer = server.text_login("seer").await;
    seer.send("MEMBERS #g").await.unwrap();
    assert_eq!(seer.line().await.unwrap(), "MEMBER amy online");
    assert_eq!(seer.line().await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn seed004_a_line_without_a_slash_is_an_unknown_command() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/nick john").await.unwrap(),
        "> all right, I will call you john"
    );
    for (line, word) in [
        ("hello there", "hello"),
        ("LOGIN bob", "LOGIN"),
        ("PING", "PING"),
        ("  WHO", "WHO"),
        ("DM", "DM"),
    ] {
        let answer = c.ask(line).await.unwrap();
        assert_eq!(answer, format!("err: unknown command: {word}"), "{line:?}");
    }
    assert_eq!(c.ask("/rooms").await.unwrap(), "> available rooms: ");
    server.stop().await;
}

#[tokio::test]
async fn seed004_a_slash_session_hears_only_gochat_lines() {
    let server = TestServer::start().await;
    let mut john = gochat(&server, "john", "#g").await;
    let mut dave = server.text_login("dave").await;
    assert_eq!(dave.ask("JOIN #g").await.unwrap(), "OK");
    assert_eq!(john.line().await.unwrap(), "> dave joined the room");
    dave.send("DM john psst").await.unwrap();
    assert_eq!(john.line().await.unwrap(), "> dave (to you): psst");
    dave.send("MSG hello all").await.unwrap();
    assert_eq!(
        john.line().await.unwrap(),
        "> dave (to everyone): hello all"
    );
    assert_eq!(dave.ask("LEAVE #g").await.unwrap(), "OK");
    assert_eq!(john.line().await.unwrap(), "> dave has left the room");
    // dave's disconnect is not a room event: nothing in seed 002's style reaches john.
    dave.send("QUIT").await.unwrap();
    assert_eq!(dave.line().await.unwrap(), "BYE");
    john.no_line_within(QUIET).await.unwrap();
    // A text session still hears its own style.
    let mut erin = server.text_login("erin").await;
    let amy = gochat(&server, "amy", "#h").await;
    drop(amy);
    assert_eq!(erin.line().await.unwrap(), "INFO amy disconnected");
    john.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn seed004_an_account_session_in_a_gochat_room_is_signed_out_in_its_style() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let login = |device: &str| format!("LOGIN alice {} {device}", common::PASSWORD);
    let mut phone = server.text().await;
    assert_eq!(phone.ask(&login("phone")).await.unwrap(), "OK");
    assert_eq!(phone.ask("/join #g").await.unwrap(), "> welcome to #g");
    let mut laptop = server.text().await;
    assert_eq!(laptop.ask(&login("laptop")).await.unwrap(), "OK");
    let passwd = format!("PASSWD {} battery-staple", common::PASSWORD);
    assert_eq!(laptop.ask(&passwd).await.unwrap(), "OK");
    let told = phone.line().await.unwrap();
    assert_eq!(told, "> signed out: the password was changed");
    assert_eq!(phone.line_or_eof().await.unwrap(), None, "then closed");
    server.stop().await;
}

#[tokio::test]
async fn seed004_an_idle_slash_session_is_told_in_its_style() {
    let server = TestServer::start_with(|c| c.idle_timeout_ms = 300).await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/nick john").await.unwrap(),
        "> all right, I will call you john"
    );
    assert_eq!(c.line().await.unwrap(), "> disconnected due to inactivity");
    assert_eq!(c.line_or_eof().await.unwrap(), None, "closed");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Seed 001: JSON lines (the educational server)
// ---------------------------------------------------------------------------------------

/// A request line as the seed's Go client writes it (with its `from`).
fn edu(command: &str, data: &str) -> String {
    serde_json::json!({"command": command, "data": data, "from": "client"}).to_string()
}

/// A response line, byte for byte.
fn reply(success: bool, message: &str, data: &str) -> String {
    let data = serde_json::Value::from(data);
    format!(r#"{{"success":{success},"message":"{message}","data":{data}}}"#)
}

/// A seed-001 client registered as `name` (on the JSON port, welcome consumed).
async fn edu_client(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.json().await;
    let welcome = format!("Registration successful. Welcome, {name}!");
    let answer = c.ask(&edu("REGISTER", name)).await.unwrap();
    assert_eq!(answer, reply(true, &welcome, ""));
    c
}

#[tokio::test]
async fn seed001_register_again_changes_the_name() {
    let server = TestServer::start().await;
    let mut c = edu_client(&server, "alice").await;
    let answer = c.ask(&edu("REGISTER", "alicia")).await.unwrap();
    assert_eq!(
        answer,
        reply(true, "Registration successful. Welcome, alicia!", "")
    );
    let answer = c.ask(&edu("REGISTER", "alicia")).await.unwrap();
    assert_eq!(
        answer,
        reply(true, "Registration successful. Welcome, alicia!", "")
    );
    let users = c.ask(&edu("LIST_USERS", "")).await.unwrap();
    assert_eq!(users, reply(true, "Online users", "alicia"));
    // Later messages carry the new name.
    let sent = c.ask(&edu("MESSAGE", "hi")).await.unwrap();
    assert_eq!(sent, reply(true, "Message broadcasted", ""));
    let list = common::parse(&c.ask(&edu("LIST_MESSAGES", "")).await.unwrap());
    let list = list["data"].as_str().unwrap().to_string();
    assert!(list.ends_with("] alicia: hi"), "{list:?}");
    // The old name is free for anyone.
    let _other = edu_client(&server, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn seed001_a_taken_name_leaves_the_client_as_it_was() {
    let server = TestServer::start().await;
    let _alice = edu_client(&server, "alice").await;
    let mut bob = edu_client(&server, "bob").await;
    let answer = bob.ask(&edu("REGISTER", "alice")).await.unwrap();
    assert_eq!(answer, reply(false, "Username already taken", ""));
    let users = bob.ask(&edu("LIST_USERS", "")).await.unwrap();
    assert_eq!(users, reply(true, "Online users", "alice, bob"));
    server.stop().await;
}

#[tokio::test]
async fn seed001_commands_are_case_sensitive() {
    let server = TestServer::start().await;
    let mut c = server.json().await;
    for command in ["echo", "Echo", "register", "time", "list_users", "quit"] {
        let answer = c.ask(&edu(command, "x")).await.unwrap();
        let refusal = format!("Validation error: unknown command: {command}");
        assert_eq!(answer, reply(false, &refusal, ""), "{command}");
    }
    let answer = c.ask(&edu("ECHO", "x")).await.unwrap();
    assert_eq!(answer, reply(true, "Echo response", "x"));
    server.stop().await;
}

#[tokio::test]
async fn seed001_a_command_without_its_data_is_an_error() {
    let server = TestServer::start().await;
    let mut c = server.json().await;
    for command in ["ECHO", "REGISTER", "MESSAGE"] {
        let refusal = format!("Validation error: command {command} requires data");
        let refusal = reply(false, &refusal, "");
        assert_eq!(c.ask(&edu(command, "")).await.unwrap(), refusal);
        let no_data = format!(r#"{{"command":"{command}"}}"#);
        assert_eq!(c.ask(&no_data).await.unwrap(), refusal);
        // Go's decoder leaves a `data` that is not a string empty.
        let number = format!(r#"{{"command":"{command}","data":5}}"#);
        assert_eq!(c.ask(&number).await.unwrap(), refusal);
    }
    // Nothing was sent, and the commands without data need none.
    let list = c.ask(&edu("LIST_MESSAGES", "")).await.unwrap();
    assert_eq!(list, reply(true, "Recent messages", "No messages yet"));
    let time = common::parse(&c.ask(r#"{"command":"TIME"}"#).await.unwrap());
    assert_eq!(time["message"], "Server time");
    server.stop().await;
}

#[tokio::test]
async fn seed001_error_replies_are_the_seeds_own() {
    let server = TestServer::start().await;
    let mut c = server.json().await;
    let no_command = reply(false, "Validation error: command cannot be empty", "");
    for line in [
        r#"{"data":"x","from":"client"}"#,
        r#"{"command":"","data":"x"}"#,
        r#"{"command":5,"data":"x"}"#,
        r#"{"command":"ECHO","data":"#,
        r#"["ECHO","x"]"#,
        "hello",
    ] {
        assert_eq!(c.ask(line).await.unwrap(), no_command, "{line}");
    }
    let unknown = reply(false, "Validation error: unknown command: DANCE", "");
    assert_eq!(c.ask(&edu("DANCE", "x")).await.unwrap(), unknown);
    // Each got one line, and the connection goes on.
    let answer = c.ask(&edu("ECHO", "still here")).await.unwrap();
    assert_eq!(answer, reply(true, "Echo response", "still here"));
    server.stop().await;
}
