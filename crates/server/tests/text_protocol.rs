//! The text protocol as a person at `ncat` uses it, over real sockets: seed 002's words
//! (COMPAT.md "Seed 002"), seed 004's slash commands (COMPAT.md "Seed 004") and parley's own
//! room commands, with the limits and bad input of docs/PROTOCOL.md.

mod common;

use common::is_rfc3339_utc;

use std::time::Duration;

use common::TestServer;
use parley_client::LineClient;
use parley_proto::binary::code;

/// How long a client listens to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A gochat-style connection that took the nick `name`.
async fn nick(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.text().await;
    assert_eq!(
        c.ask(&format!("/nick {name}")).await.unwrap(),
        format!("> all right, I will call you {name}")
    );
    c
}

/// `/join room`, its welcome consumed.
async fn slash_join(c: &mut LineClient, room: &str) {
    assert_eq!(
        c.ask(&format!("/join {room}")).await.unwrap(),
        format!("> welcome to {room}")
    );
}

/// The connection must be closed by the server (after every line it already sent was read).
async fn expect_closed(c: &mut LineClient) {
    let next = c.line_or_eof().await.unwrap();
    assert_eq!(next, None, "expected the server to close the connection");
}

/// Lines up to and including the next `OK` (at most 100).
async fn lines_until_ok(c: &mut LineClient) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        let line = c.line().await.unwrap();
        if line == "OK" {
            return lines;
        }
        lines.push(line);
    }
    panic!("no OK after 100 lines: {lines:?}");
}

/// One `HISTORY <target> <seq> <time> <from> <text>` line, its time checked for shape.
#[derive(Debug, PartialEq)]
struct Entry {
    target: String,
    seq: i64,
    from: String,
    text: String,
}

fn entry(line: &str) -> Entry {
    let fields: Vec<&str> = line.splitn(6, ' ').collect();
    assert_eq!(fields.len(), 6, "not a HISTORY line: {line:?}");
    assert_eq!(fields[0], "HISTORY", "{line:?}");
    assert!(is_rfc3339_utc(fields[3]), "time of {line:?}");
    Entry {
        target: fields[1].to_string(),
        seq: fields[2].parse().expect("seq is a number"),
        from: fields[4].to_string(),
        text: fields[5].to_string(),
    }
}

fn history_entry(target: &str, seq: i64, from: &str, text: &str) -> Entry {
    Entry {
        target: target.into(),
        seq,
        from: from.into(),
        text: text.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Seed 002: LOGIN
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn login_is_answered_ok() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(c.ask("LOGIN Naman").await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn a_name_online_elsewhere_is_taken() {
    let server = TestServer::start().await;
    let _naman = server.text_login("Naman").await;
    let mut other = server.text().await;
    assert_eq!(
        other.ask("LOGIN Naman").await.unwrap(),
        "ERR username-taken"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_name_longer_than_the_limit_is_invalid() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    let forty = "n".repeat(40);
    assert_eq!(
        c.ask(&format!("LOGIN {forty}")).await.unwrap(),
        "ERR invalid-username"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_name_with_a_control_character_is_invalid() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("LOGIN bad\u{1}name").await.unwrap(),
        "ERR invalid-username"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_reserved_name_anonymous_is_taken() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("LOGIN anonymous").await.unwrap(),
        "ERR username-taken"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_second_login_on_the_same_connection_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.text_login("Naman").await;
    assert_eq!(c.ask("LOGIN Yudi").await.unwrap(), "ERR already-logged-in");
    server.stop().await;
}

#[tokio::test]
async fn login_without_a_name_gets_its_usage_line() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("LOGIN").await.unwrap(),
        "ERR usage: LOGIN <username> [<password> [<device>]]"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Seed 002: MSG, DM, WHO, PING, disconnects
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn msg_reaches_every_other_logged_in_user_but_not_the_sender() {
    let server = TestServer::start().await;
    let mut naman = server.text_login("Naman").await;
    let mut yudi = server.text_login("Yudi").await;
    let mut anna = server.text_login("Anna").await;
    let mut stranger = server.text().await;
    assert_eq!(stranger.ask("PING").await.unwrap(), "PONG");

    naman.send("MSG hi everyone!").await.unwrap();

    assert_eq!(yudi.line().await.unwrap(), "MSG Naman hi everyone!");
    assert_eq!(anna.line().await.unwrap(), "MSG Naman hi everyone!");
    naman.no_line_within(QUIET).await.unwrap();
    stranger.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn msg_without_text_gets_its_usage_line() {
    let server = TestServer::start().await;
    let mut naman = server.text_login("Naman").await;
    assert_eq!(naman.ask("MSG").await.unwrap(), "ERR usage: MSG <text>");
    server.stop().await;
}

#[tokio::test]
async fn dm_reaches_only_its_recipient_without_echo() {
    let server = TestServer::start().await;
    let mut naman = server.text_login("Naman").await;
    let mut yudi = server.text_login("Yudi").await;
    let mut anna = server.text_login("Anna").await;

    yudi.send("DM Naman hey this is private!").await.unwrap();

    assert_eq!(naman.line().await.unwrap(), "DM Yudi hey this is private!");
    yudi.no_line_within(QUIET).await.unwrap();
    anna.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn dm_to_an_unknown_user_is_refused() {
    let server = TestServer::start().await;
    let mut naman = server.text_login("Naman").await;
    assert_eq!(
        naman.ask("DM Nobody hello?").await.unwrap(),
        "ERR user-not-found"
    );
    server.stop().await;
}

#[tokio::test]
async fn dm_without_text_gets_its_usage_line() {
    let server = TestServer::start().await;
    let mut naman = server.text_login("Naman").await;
    assert_eq!(
        naman.ask("DM Yudi").await.unwrap(),
        "ERR usage: DM <username> <text>"
    );
    server.stop().await;
}

#[tokio::test]
async fn who_lists_one_user_line_per_online_user_sorted() {
    let server = TestServer::start().await;
    let mut yudi = server.text_login("Yudi").await;
    let _naman = server.text_login("Naman").await;
    let _anna = server.text_login("Anna").await;

    yudi.send("WHO").await.unwrap();

    assert_eq!(yudi.line().await.unwrap(), "USER Anna");
    assert_eq!(yudi.line().await.unwrap(), "USER Naman");
    assert_eq!(yudi.line().await.unwrap(), "USER Yudi");
    yudi.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn ping_is_answered_pong_before_and_after_login() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    assert_eq!(c.ask("LOGIN Naman").await.unwrap(), "OK");
    assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn the_others_are_told_when_a_user_disconnects() {
    let server = TestServer::start().await;
    let mut naman = server.text_login("Naman").await;
    let yudi = server.text_login("Yudi").await;

    drop(yudi);

    assert_eq!(naman.line().await.unwrap(), "INFO Yudi disconnected");
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_command_is_reported() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(c.ask("SHOUT hello").await.unwrap(), "ERR unknown-cmd");
    server.stop().await;
}

#[tokio::test]
async fn commands_are_case_insensitive() {
    let server = TestServer::start().await;
    let mut yudi = server.text_login("Yudi").await;
    let mut naman = server.text().await;
    assert_eq!(naman.ask("login Naman").await.unwrap(), "OK");

    naman.send("Msg hello there").await.unwrap();
    assert_eq!(yudi.line().await.unwrap(), "MSG Naman hello there");
    assert_eq!(naman.ask("pInG").await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn crlf_and_lf_line_endings_both_work() {
    let server = TestServer::start().await;
    let mut yudi = server.text_login("Yudi").await;
    let mut naman = server.text().await;

    naman.send_raw(b"LOGIN Naman\r\n").await.unwrap();
    assert_eq!(naman.line().await.unwrap(), "OK");
    naman.send_raw(b"MSG with crlf\r\n").await.unwrap();
    assert_eq!(yudi.line().await.unwrap(), "MSG Naman with crlf");
    naman.send_raw(b"MSG with lf\n").await.unwrap();
    assert_eq!(yudi.line().await.unwrap(), "MSG Naman with lf");
    server.stop().await;
}

#[tokio::test]
async fn several_commands_in_one_write_are_all_answered_in_order() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    c.send_raw(b"PING\nLOGIN Naman\r\nWHO\nFOO\nPING\n")
        .await
        .unwrap();

    assert_eq!(c.line().await.unwrap(), "PONG");
    assert_eq!(c.line().await.unwrap(), "OK");
    assert_eq!(c.line().await.unwrap(), "USER Naman");
    assert_eq!(c.line().await.unwrap(), "ERR unknown-cmd");
    assert_eq!(c.line().await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn sending_before_login_is_refused() {
    let server = TestServer::start().await;
    let _yudi = server.text_login("Yudi").await;
    let mut c = server.text().await;
    assert_eq!(c.ask("MSG hi").await.unwrap(), "ERR login-required");
    assert_eq!(c.ask("DM Yudi hi").await.unwrap(), "ERR login-required");
    assert_eq!(c.ask("JOIN #a").await.unwrap(), "ERR login-required");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Idle timeout
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_idle_connection_is_told_and_closed() {
    let server = TestServer::start_with(|c| c.idle_timeout_ms = 300).await;
    let mut c = server.text_login("Naman").await;

    assert_eq!(
        c.line().await.unwrap(),
        "INFO disconnected due to inactivity"
    );
    expect_closed(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn activity_keeps_a_connection_alive() {
    let server = TestServer::start_with(|c| c.idle_timeout_ms = 300).await;
    let mut c = server.text_login("Naman").await;

    // Six pings 100 ms apart: twice as long as the idle timeout in all.
    let mut every_100ms = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..6 {
        every_100ms.tick().await;
        assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_over_long_line_is_refused_and_the_connection_goes_on() {
    let server = TestServer::start_with(|c| c.max_line_bytes = 100).await;
    let mut c = server.text_login("Naman").await;

    let line = format!("MSG {}", "x".repeat(996));
    for part in line.as_bytes().chunks(250) {
        c.send_raw(part).await.unwrap();
    }
    c.send_raw(b"\n").await.unwrap();

    assert_eq!(c.line().await.unwrap(), "ERR line-too-long");
    assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn an_over_long_line_in_the_slash_dialect_gets_an_err_line() {
    let server = TestServer::start_with(|c| c.max_line_bytes = 100).await;
    let mut john = nick(&server, "john").await;

    john.send(&format!("/msg {}", "x".repeat(200)))
        .await
        .unwrap();

    assert_eq!(john.line().await.unwrap(), "err: line too long");
    server.stop().await;
}

#[tokio::test]
async fn a_line_that_is_not_utf8_is_refused_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut c = server.text_login("Naman").await;

    c.send_raw(b"MSG caf\xe9\n").await.unwrap();

    assert_eq!(c.line().await.unwrap(), "ERR invalid-utf8");
    assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn a_message_cannot_forge_a_line() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    let mut alice = server.login("alice").await;

    let sent = alice
        .message(2, "alice", "bob", b"a\nINFO fake", 1)
        .await
        .unwrap();

    assert_eq!(sent, code::OK);
    assert_eq!(bob.line().await.unwrap(), "DM alice a INFO fake");
    bob.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_protocol_is_detected_from_a_first_packet_of_one_byte() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    c.send_raw(b"P").await.unwrap();
    c.send_raw(b"ING\n").await.unwrap();

    assert_eq!(c.line().await.unwrap(), "PONG");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Seed 004: slash commands
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn nick_is_confirmed() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/nick john").await.unwrap(),
        "> all right, I will call you john"
    );
    server.stop().await;
}

#[tokio::test]
async fn nick_without_a_name_gets_its_usage_line() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/nick").await.unwrap(),
        "> nick is required. usage: /nick NAME"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_nick_online_elsewhere_is_taken() {
    let server = TestServer::start().await;
    let _john = nick(&server, "john").await;
    let mut other = server.text().await;
    assert_eq!(
        other.ask("/nick john").await.unwrap(),
        "err: that nick is taken"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_logged_in_to_an_account_keeps_its_name() {
    // A password-less nick can change at any time (compat.rs, seed 004); an account cannot.
    let server = TestServer::start().await;
    server.register("john").await;
    let mut john = server.text().await;
    let login = format!("LOGIN john {}", common::PASSWORD);
    assert_eq!(john.ask(&login).await.unwrap(), "OK");
    assert_eq!(
        john.ask("/nick jack").await.unwrap(),
        "err: you are already called john"
    );
    server.stop().await;
}

#[tokio::test]
async fn join_welcomes_and_tells_the_other_members() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#general").await;
    let mut jack = nick(&server, "jack").await;

    assert_eq!(
        jack.ask("/join #general").await.unwrap(),
        "> welcome to #general"
    );

    assert_eq!(john.line().await.unwrap(), "> jack joined the room");
    server.stop().await;
}

#[tokio::test]
async fn join_without_a_room_gets_its_usage_line() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/join").await.unwrap(),
        "> room name is required. usage: /join ROOM_NAME"
    );
    server.stop().await;
}

#[tokio::test]
async fn slash_msg_reaches_the_other_room_members_but_not_the_sender() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#general").await;
    let mut jack = nick(&server, "jack").await;
    slash_join(&mut jack, "#general").await;
    assert_eq!(john.line().await.unwrap(), "> jack joined the room");
    let mut elsewhere = nick(&server, "jill").await;
    slash_join(&mut elsewhere, "#random").await;

    john.send("/msg hi there").await.unwrap();

    assert_eq!(jack.line().await.unwrap(), "> john: hi there");
    john.no_line_within(QUIET).await.unwrap();
    elsewhere.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn slash_msg_without_text_gets_its_usage_line() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#general").await;
    assert_eq!(
        john.ask("/msg").await.unwrap(),
        "> message is required, usage: /msg MSG"
    );
    server.stop().await;
}

#[tokio::test]
async fn slash_msg_outside_a_room_is_refused() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    assert_eq!(
        john.ask("/msg anyone?").await.unwrap(),
        "err: you are not in a room. usage: /join ROOM_NAME"
    );
    server.stop().await;
}

#[tokio::test]
async fn rooms_lists_the_room_names_sorted() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#zoo").await;
    let mut jack = nick(&server, "jack").await;
    slash_join(&mut jack, "#attic").await;

    assert_eq!(
        john.ask("/rooms").await.unwrap(),
        "> available rooms: #attic, #zoo"
    );
    server.stop().await;
}

#[tokio::test]
async fn joining_another_room_leaves_the_first() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#general").await;
    let mut jack = nick(&server, "jack").await;
    slash_join(&mut jack, "#general").await;
    assert_eq!(john.line().await.unwrap(), "> jack joined the room");

    slash_join(&mut john, "#random").await;

    assert_eq!(jack.line().await.unwrap(), "> john has left the room");
    jack.send("/msg still there?").await.unwrap();
    john.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn quit_says_goodbye_closes_and_tells_the_room() {
    let server = TestServer::start().await;
    let mut jack = nick(&server, "jack").await;
    slash_join(&mut jack, "#general").await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#general").await;
    assert_eq!(jack.line().await.unwrap(), "> john joined the room");

    assert_eq!(john.ask("/quit").await.unwrap(), "> sad to see you go =(");

    expect_closed(&mut john).await;
    assert_eq!(jack.line().await.unwrap(), "> john has left the room");
    jack.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_slash_command_is_reported() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("/foo bar").await.unwrap(),
        "err: unknown command: /foo"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_default_nick_is_anonymous() {
    let server = TestServer::start().await;
    let mut john = nick(&server, "john").await;
    slash_join(&mut john, "#general").await;
    let mut anon = server.text().await;

    slash_join(&mut anon, "#general").await;
    assert_eq!(john.line().await.unwrap(), "> anonymous joined the room");
    anon.send("/msg who am I?").await.unwrap();

    assert_eq!(john.line().await.unwrap(), "> anonymous: who am I?");
    anon.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn slash_commands_accept_crlf() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    c.send_raw(b"/nick john\r\n").await.unwrap();
    assert_eq!(c.line().await.unwrap(), "> all right, I will call you john");
    c.send_raw(b"/join #general\r\n").await.unwrap();
    assert_eq!(c.line().await.unwrap(), "> welcome to #general");
    server.stop().await;
}

#[tokio::test]
async fn several_slash_commands_in_one_write_are_all_answered() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    c.send_raw(b"/nick john\n/join #general\n/rooms\n/foo\n")
        .await
        .unwrap();

    assert_eq!(c.line().await.unwrap(), "> all right, I will call you john");
    assert_eq!(c.line().await.unwrap(), "> welcome to #general");
    assert_eq!(c.line().await.unwrap(), "> available rooms: #general");
    assert_eq!(c.line().await.unwrap(), "err: unknown command: /foo");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// parley's rooms: JOIN, SAY, LEAVE, ROOMS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn join_takes_several_rooms_at_once() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a #b").await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn members_are_told_who_joined() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    let mut alice = server.text_login("alice").await;

    assert_eq!(alice.ask("JOIN #a #b").await.unwrap(), "OK");

    assert_eq!(bob.line().await.unwrap(), "INFO alice joined #a");
    bob.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_joiner_gets_a_busy_rooms_messages_from_its_join_on_after_its_ok() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #busy").await.unwrap(), "OK");
    const BURST: usize = 40;
    // 8 rounds of 40 lines: within the command rate limit's burst.
    for round in 0..8 {
        let mut joiner = server.text_login(&format!("joiner{round}")).await;
        // alice's burst and the join reach the hub together: some of the burst is
        // stored before the join, some after, often in one batch.
        let burst: String = (0..BURST)
            .map(|i| format!("SAY #busy r{round} m{i}\n"))
            .collect();
        alice.send_raw(burst.as_bytes()).await.unwrap();
        joiner.send("JOIN #busy").await.unwrap();
        assert_eq!(
            joiner.line().await.unwrap(),
            "OK",
            "round {round}: the join's answer first"
        );
        // One more, certainly after the join.
        let last = format!("SAY #busy r{round} m{BURST}");
        alice.send(&last).await.unwrap();
        // What the joiner gets is the burst from some message on (perhaps none of it), then
        // the last: nothing stored before its join, nothing after it missed.
        let mut got = Vec::new();
        while got.last() != Some(&BURST) {
            let line = joiner.line().await.unwrap();
            let prefix = format!("ROOM #busy alice r{round} m");
            let i: usize = line
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{line}"))
                .parse()
                .unwrap();
            got.push(i);
        }
        let first = got[0];
        assert_eq!(got, (first..=BURST).collect::<Vec<_>>(), "round {round}");
        common::quit(joiner).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_room_name_follows_the_rules_of_user_names() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(
        alice.ask("JOIN bad\u{1}room").await.unwrap(),
        "ERR invalid-username"
    );
    server.stop().await;
}

#[tokio::test]
async fn say_reaches_the_other_members_without_echo() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #a");
    let mut carol = server.text_login("carol").await;

    alice.send("SAY #a hello room").await.unwrap();

    assert_eq!(bob.line().await.unwrap(), "ROOM #a alice hello room");
    alice.no_line_within(QUIET).await.unwrap();
    carol.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn say_to_a_room_you_are_not_in_is_refused() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    let mut bob = server.text_login("bob").await;

    assert_eq!(
        bob.ask("SAY #a let me in").await.unwrap(),
        "ERR not-a-member"
    );
    alice.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn say_to_a_room_that_does_not_exist_is_refused() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(
        alice.ask("SAY #nowhere hello").await.unwrap(),
        "ERR room-not-found"
    );
    server.stop().await;
}

#[tokio::test]
async fn after_leave_say_is_refused_and_the_members_are_told() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(bob.line().await.unwrap(), "INFO alice joined #a");

    assert_eq!(alice.ask("LEAVE #a").await.unwrap(), "OK");

    assert_eq!(bob.line().await.unwrap(), "INFO alice left #a");
    assert_eq!(
        alice.ask("SAY #a still here?").await.unwrap(),
        "ERR not-a-member"
    );
    server.stop().await;
}

#[tokio::test]
async fn leaving_a_room_you_are_not_in_is_refused() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("LEAVE #a").await.unwrap(), "ERR not-a-member");
    assert_eq!(
        alice.ask("LEAVE #nowhere").await.unwrap(),
        "ERR room-not-found"
    );
    server.stop().await;
}

#[tokio::test]
async fn rooms_lists_each_room_with_its_member_and_online_counts_then_ok() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #b #a").await.unwrap(), "OK");
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #a");
    // bob goes offline but stays a member of #a.
    assert_eq!(bob.ask("QUIT").await.unwrap(), "BYE");
    assert_eq!(alice.line().await.unwrap(), "INFO bob disconnected");

    alice.send("ROOMS").await.unwrap();

    assert_eq!(
        lines_until_ok(&mut alice).await,
        ["ROOM #a 2 1", "ROOM #b 1 1"]
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// HISTORY, HELP, QUIT
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn history_returns_the_last_n_messages_oldest_first_then_ok() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    for text in ["one", "two", "three"] {
        alice.send(&format!("SAY #a {text}")).await.unwrap();
        assert_eq!(bob.line().await.unwrap(), format!("ROOM #a alice {text}"));
    }

    bob.send("HISTORY #a 2").await.unwrap();

    let got: Vec<Entry> = lines_until_ok(&mut bob)
        .await
        .iter()
        .map(|l| entry(l))
        .collect();
    assert_eq!(
        got,
        [
            history_entry("#a", 2, "alice", "two"),
            history_entry("#a", 3, "alice", "three"),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn history_includes_what_the_asker_just_said() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");

    alice
        .send_raw(b"SAY #a just now\nHISTORY #a 1\n")
        .await
        .unwrap();

    let got: Vec<Entry> = lines_until_ok(&mut alice)
        .await
        .iter()
        .map(|l| entry(l))
        .collect();
    assert_eq!(got, [history_entry("#a", 1, "alice", "just now")]);
    server.stop().await;
}

#[tokio::test]
async fn history_of_a_dm_partner_shows_both_directions() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    alice.send("DM bob hi bob").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice hi bob");
    bob.send("DM alice hi alice").await.unwrap();
    assert_eq!(alice.line().await.unwrap(), "DM bob hi alice");

    alice.send("HISTORY bob").await.unwrap();

    let got: Vec<Entry> = lines_until_ok(&mut alice)
        .await
        .iter()
        .map(|l| entry(l))
        .collect();
    assert_eq!(
        got,
        [
            history_entry("bob", 1, "alice", "hi bob"),
            history_entry("bob", 2, "bob", "hi alice"),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn history_of_a_room_you_are_not_in_is_refused() {
    let server = TestServer::start().await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("HISTORY #a").await.unwrap(), "ERR not-a-member");
    server.stop().await;
}

#[tokio::test]
async fn history_of_an_unknown_name_is_not_found() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("HISTORY nobody").await.unwrap(), "ERR not-found");
    server.stop().await;
}

#[tokio::test]
async fn help_lists_every_command_then_ok() {
    let server = TestServer::start().await;
    let mut c = server.text().await;

    c.send("HELP").await.unwrap();

    let help = lines_until_ok(&mut c).await;
    for command in [
        "LOGIN", "MSG", "DM", "WHO", "PING", "JOIN", "LEAVE", "ROOMS", "SAY", "HISTORY", "HELP",
        "QUIT", "/nick", "/join", "/rooms", "/msg", "/quit",
    ] {
        assert!(
            help.iter().any(|l| l.contains(command)),
            "HELP does not mention {command}: {help:#?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn quit_says_bye_and_closes() {
    let server = TestServer::start().await;
    let mut c = server.text_login("Naman").await;
    assert_eq!(c.ask("QUIT").await.unwrap(), "BYE");
    expect_closed(&mut c).await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_member_gets_the_room_messages_sent_while_away_after_login() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(bob.ask("QUIT").await.unwrap(), "BYE");
    assert_eq!(alice.line().await.unwrap(), "INFO bob disconnected");
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    for text in ["one", "two", "three"] {
        alice.send(&format!("SAY #a {text}")).await.unwrap();
    }

    let mut bob = server.text().await;
    assert_eq!(bob.ask("LOGIN bob").await.unwrap(), "OK");

    for text in ["one", "two", "three"] {
        assert_eq!(bob.line().await.unwrap(), format!("ROOM #a alice {text}"));
    }
    bob.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn room_history_survives_a_restart() {
    let mut server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    alice.send("SAY #a before").await.unwrap();
    alice.send("SAY #a the restart").await.unwrap();
    // Answered in order behind the SAYs, so they are stored once PONG arrives.
    assert_eq!(alice.ask("PING").await.unwrap(), "PONG");

    server.restart().await;

    let mut alice = server.text_login("alice").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    alice.send("SAY #a after it").await.unwrap();
    assert_eq!(alice.ask("PING").await.unwrap(), "PONG");
    alice.send("HISTORY #a").await.unwrap();
    let got: Vec<Entry> = lines_until_ok(&mut alice)
        .await
        .iter()
        .map(|l| entry(l))
        .collect();
    // The room's sequence goes on where the stored log ends.
    assert_eq!(
        got,
        [
            history_entry("#a", 1, "alice", "before"),
            history_entry("#a", 2, "alice", "the restart"),
            history_entry("#a", 3, "alice", "after it"),
        ]
    );
    server.stop().await;
}

/// A member gets every message of a room up to its leave: bob leaves while alice's burst
/// is stored, and carol, who stays, sees where his leave falls (her `INFO bob left` line);
/// bob must have had exactly what she had before it, in order. (A message applied in the
/// leave's batch before it was performed once the room's member list no longer held bob:
/// he missed the end of the burst before his leave.)
#[tokio::test]
async fn a_leaver_gets_a_busy_rooms_messages_up_to_its_leave() {
    let server = TestServer::start_with(|c| c.commands_per_second = 100_000).await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    let mut carol = server.text_login("carol").await;
    for member in [&mut alice, &mut carol] {
        assert_eq!(member.ask("JOIN #busy").await.unwrap(), "OK");
    }
    const BURST: usize = 200;
    for round in 0..10 {
        bob.send("JOIN #busy").await.unwrap();
        assert_eq!(bob.line().await.unwrap(), "OK", "round {round}");
        assert_eq!(carol.line().await.unwrap(), "INFO bob joined #busy");
        // A line at a time: the hub stores the burst over many batches.
        let sending = tokio::spawn(async move {
            for i in 0..BURST {
                alice
                    .send(&format!("SAY #busy r{round} m{i}"))
                    .await
                    .unwrap();
            }
            alice
        });
        let prefix = format!("ROOM #busy alice r{round} m");
        let number = |line: &str| -> usize {
            let i = line.strip_prefix(&prefix);
            i.unwrap_or_else(|| panic!("round {round}: {line:?}"))
                .parse()
                .unwrap()
        };
        // bob leaves once the burst reaches him.
        let mut had = vec![number(&bob.line().await.unwrap())];
        bob.send("LEAVE #busy").await.unwrap();
        loop {
            let line = bob.line().await.unwrap();
            if line == "OK" {
                break;
            }
            had.push(number(&line));
        }
        let mut got = Vec::new();
        let mut before = None;
        while before.is_none() || got.last() != Some(&(BURST - 1)) {
            let line = carol.line().await.unwrap();
            if line == "INFO bob left #busy" {
                before = Some(got.clone());
            } else {
                got.push(number(&line));
            }
        }
        alice = sending.await.unwrap();
        assert_eq!(
            Some(had),
            before,
            "round {round}: bob's, and carol's before his leave"
        );
        // Nothing after it.
        assert_eq!(bob.ask("PING").await.unwrap(), "PONG", "round {round}");
    }
    server.stop().await;
}
