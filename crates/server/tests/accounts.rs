//! Accounts over real sockets (docs/PROTOCOL.md "Accounts"): registration, password and
//! token logins, revocation, devices, throttling of failed logins, the per-address and
//! per-session limits, profiles, and who may read what.

mod common;

use common::{bytes, close, now_ms, parse, quit, request, today, PASSWORD};

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use common::TestServer;
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{code, flags, Frame};
use serde_json::{json, Value};

/// How long a client listens to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A text connection logged in to the account `name` as `device`.
async fn device(server: &TestServer, name: &str, device: &str) -> LineClient {
    let mut c = server.text().await;
    assert_eq!(
        c.ask(&format!("LOGIN {name} {PASSWORD} {device}"))
            .await
            .unwrap(),
        "OK",
        "LOGIN {name} as {device}"
    );
    c
}

/// Asks for a token; returns it after checking the line's shape.
async fn token(c: &mut LineClient) -> String {
    let line = c.ask("TOKEN").await.unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 3, "not a TOKEN line: {line:?}");
    assert_eq!(fields[0], "TOKEN", "{line:?}");
    assert!(is_hex_token(fields[1]), "{line:?}");
    fields[1].to_string()
}

fn is_hex_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `RESUME <token>` on a new connection; returns the connection and the answer.
async fn resume(server: &TestServer, token: &str) -> (LineClient, String) {
    let mut c = server.text().await;
    let answer = c.ask(&format!("RESUME {token}")).await.unwrap();
    (c, answer)
}

/// The connection must be closed by the server.
async fn expect_closed(c: &mut LineClient) {
    assert_eq!(
        c.line_or_eof().await.unwrap(),
        None,
        "expected the server to close the connection"
    );
}

/// A binary connection that is closed by the server (no frame before the close).
async fn expect_binary_closed(c: &mut BinaryClient) {
    assert_eq!(
        c.recv_or_eof().await.unwrap(),
        None,
        "expected the server to close the connection"
    );
}

fn json_request(value: Value) -> String {
    value.to_string()
}

// ---------------------------------------------------------------------------------------
// Registration and password logins (text)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn register_is_answered_ok() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(c.ask("REGISTER alice correct-horse").await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn registering_a_taken_name_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("REGISTER alice another-password").await.unwrap(),
        "ERR username-taken"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_password_shorter_than_8_bytes_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("REGISTER alice short").await.unwrap(),
        "ERR invalid-password"
    );
    server.stop().await;
}

#[tokio::test]
async fn login_with_the_password_is_ok() {
    let server = TestServer::start().await;
    let mut c = server.text().await;
    assert_eq!(c.ask("REGISTER alice password1").await.unwrap(), "OK");
    assert_eq!(c.ask("LOGIN alice password1").await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_password_is_invalid_credentials() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("LOGIN alice wrong-password").await.unwrap(),
        "ERR invalid-credentials"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_name_gets_the_same_error_as_a_wrong_password() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.text().await;
    let wrong_password = c.ask("LOGIN alice wrong-password").await.unwrap();
    let unknown_name = c.ask("LOGIN nobody wrong-password").await.unwrap();
    assert_eq!(wrong_password, "ERR invalid-credentials");
    assert_eq!(unknown_name, wrong_password);
    server.stop().await;
}

#[tokio::test]
async fn a_password_less_text_login_of_an_account_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.text().await;
    assert_eq!(c.ask("LOGIN alice").await.unwrap(), "ERR username-taken");
    server.stop().await;
}

#[tokio::test]
async fn a_password_less_binary_login_of_an_account_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.client().await;
    assert_eq!(
        c.login(1, "alice").await.unwrap(),
        code::USER_ALREADY_LOGGED
    );
    server.stop().await;
}

#[tokio::test]
async fn a_password_less_json_register_of_an_account_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut c = server.json().await;
    let reply = c
        .ask(&json_request(
            json!({"command": "REGISTER", "data": "alice"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        reply,
        r#"{"success":false,"message":"Username already taken","data":""}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn with_require_accounts_a_password_less_login_of_a_new_name_is_refused() {
    let server = TestServer::start_with(|c| c.require_accounts = true).await;
    let mut c = server.text().await;
    assert_eq!(
        c.ask("LOGIN newcomer").await.unwrap(),
        "ERR invalid-credentials"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Tokens (text)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn token_after_a_password_login_is_64_hex_digits_and_an_expiry() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;

    let line = alice.ask("TOKEN").await.unwrap();

    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 3, "{line:?}");
    assert_eq!(fields[0], "TOKEN");
    assert!(is_hex_token(fields[1]), "{line:?}");
    // RFC 3339 in UTC with milliseconds, 30 days ahead by default.
    let expiry = fields[2];
    assert_eq!(expiry.len(), "2025-01-01T00:00:00.000Z".len(), "{line:?}");
    assert!(
        expiry.ends_with('Z') && expiry.as_bytes()[10] == b'T',
        "{line:?}"
    );
    assert!(
        expiry[..10] > *today().as_str(),
        "expiry in the future: {line:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_password_less_session_gets_no_token() {
    let server = TestServer::start().await;
    let mut c = server.text_login("guest").await;
    assert_eq!(c.ask("TOKEN").await.unwrap(), "ERR invalid-credentials");
    server.stop().await;
}

#[tokio::test]
async fn resume_with_a_token_logs_in_on_a_new_connection() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut bob = server.text_login("bob").await;
    let mut alice = device(&server, "alice", "phone").await;
    let token = token(&mut alice).await;
    quit(alice).await;
    assert_eq!(bob.line().await.unwrap(), "INFO alice disconnected");

    let (mut alice, answer) = resume(&server, &token).await;

    assert_eq!(answer, "OK alice");
    alice.send("DM bob back again").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice back again");
    server.stop().await;
}

#[tokio::test]
async fn a_resume_that_waits_for_the_old_session_is_answered_ok_first() {
    let server = TestServer::start_with(|c| c.login_grace_ms = 5_000).await;
    server.register("alice").await;
    let mut old = device(&server, "alice", "phone").await;
    let token = token(&mut old).await;
    let mut new = server.text().await;
    new.send(&format!("RESUME {token}")).await.unwrap();
    // Gives the RESUME time to reach the hub and wait there (for up to 5 s) for the old
    // session of the device: the race this test reproduces.
    tokio::time::sleep(Duration::from_millis(200)).await;

    quit(old).await;

    assert_eq!(new.line().await.unwrap(), "OK alice");
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let server = TestServer::start_with(|c| c.token_ttl_secs = 1).await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;
    let token = token(&mut alice).await;
    quit(alice).await;

    // The token lives one second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (_, answer) = resume(&server, &token).await;
    assert_eq!(answer, "ERR invalid-credentials");
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_token_is_refused() {
    let server = TestServer::start().await;
    let (_, answer) = resume(&server, &"ab".repeat(32)).await;
    assert_eq!(answer, "ERR invalid-credentials");
    server.stop().await;
}

#[tokio::test]
async fn logout_answers_ok_and_closes() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;

    assert_eq!(alice.ask("LOGOUT").await.unwrap(), "OK");
    expect_closed(&mut alice).await;
    server.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_token_of_this_device() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;
    let token = token(&mut alice).await;

    assert_eq!(alice.ask("LOGOUT").await.unwrap(), "OK");
    expect_closed(&mut alice).await;

    let (_, answer) = resume(&server, &token).await;
    assert_eq!(answer, "ERR invalid-credentials");
    server.stop().await;
}

#[tokio::test]
async fn logout_keeps_the_tokens_of_other_devices() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut bob = server.text_login("bob").await;
    let mut phone = device(&server, "alice", "phone").await;
    let phone_token = token(&mut phone).await;
    quit(phone).await;
    assert_eq!(bob.line().await.unwrap(), "INFO alice disconnected");
    let mut laptop = device(&server, "alice", "laptop").await;

    assert_eq!(laptop.ask("LOGOUT").await.unwrap(), "OK");
    expect_closed(&mut laptop).await;
    assert_eq!(bob.line().await.unwrap(), "INFO alice disconnected");

    let (_, answer) = resume(&server, &phone_token).await;
    assert_eq!(answer, "OK alice");
    server.stop().await;
}

#[tokio::test]
async fn logout_all_revokes_the_tokens_of_every_device() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let phone_token = token(&mut phone).await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let laptop_token = token(&mut laptop).await;

    assert_eq!(laptop.ask("LOGOUT ALL").await.unwrap(), "OK");
    expect_closed(&mut laptop).await;

    let (_, phone_answer) = resume(&server, &phone_token).await;
    let (_, laptop_answer) = resume(&server, &laptop_token).await;
    assert_eq!(phone_answer, "ERR invalid-credentials");
    assert_eq!(laptop_answer, "ERR invalid-credentials");
    server.stop().await;
}

#[tokio::test]
async fn passwd_revokes_the_other_devices_tokens_but_not_this_ones() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let phone_token = token(&mut phone).await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let laptop_token = token(&mut laptop).await;

    let passwd = format!("PASSWD {PASSWORD} battery-staple");
    assert_eq!(laptop.ask(&passwd).await.unwrap(), "OK");
    quit(laptop).await;

    let (_, phone_answer) = resume(&server, &phone_token).await;
    let (_, laptop_answer) = resume(&server, &laptop_token).await;
    assert_eq!(phone_answer, "ERR invalid-credentials");
    assert_eq!(laptop_answer, "OK alice");
    server.stop().await;
}

#[tokio::test]
async fn after_passwd_the_old_password_is_refused_and_the_new_one_accepted() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;
    let passwd = format!("PASSWD {PASSWORD} battery-staple");
    assert_eq!(alice.ask(&passwd).await.unwrap(), "OK");

    let mut c = server.text().await;
    let old = c.ask(&format!("LOGIN alice {PASSWORD} laptop")).await;
    let new = c.ask("LOGIN alice battery-staple laptop").await;

    assert_eq!(old.unwrap(), "ERR invalid-credentials");
    assert_eq!(new.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn passwd_with_a_wrong_old_password_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;
    assert_eq!(
        alice
            .ask("PASSWD not-the-password new-password")
            .await
            .unwrap(),
        "ERR invalid-credentials"
    );
    server.stop().await;
}

#[tokio::test]
async fn passwd_ends_the_other_devices_sessions_and_tells_them_why() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut tablet = binary_login(&server, "alice", "tablet").await;
    let mut web = server.json().await;
    let login = json!({"command": "LOGIN", "data": "alice", "password": PASSWORD, "device": "web"});
    assert!(web
        .ask(&json_request(login))
        .await
        .unwrap()
        .contains("Welcome"));
    let subscribed = web
        .ask(&json_request(json!({"command": "SUBSCRIBE"})))
        .await;
    assert!(subscribed.unwrap().contains("Subscribed"));
    let mut laptop = device(&server, "alice", "laptop").await;

    let passwd = format!("PASSWD {PASSWORD} battery-staple");
    assert_eq!(laptop.ask(&passwd).await.unwrap(), "OK");

    assert_eq!(
        phone.line().await.unwrap(),
        "INFO signed out: the password was changed"
    );
    expect_closed(&mut phone).await;
    let event = parse(&web.line().await.unwrap());
    assert_eq!(event["event"], "signed_out", "{event}");
    assert_eq!(web.line_or_eof().await.unwrap(), None, "then closed");
    expect_binary_closed(&mut tablet).await;
    assert_eq!(
        laptop.ask("PING").await.unwrap(),
        "PONG",
        "this device goes on"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn two_devices_of_one_account_are_online_at_once() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;
    assert_eq!(phone.ask("PING").await.unwrap(), "PONG");
    assert_eq!(laptop.ask("PING").await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test]
async fn the_same_device_twice_is_refused() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let _phone = device(&server, "alice", "phone").await;
    let mut again = server.text().await;
    assert_eq!(
        again
            .ask(&format!("LOGIN alice {PASSWORD} phone"))
            .await
            .unwrap(),
        "ERR username-taken"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Throttling failed logins
// ---------------------------------------------------------------------------------------

/// Two free failures, then 300 ms of back-off (doubling up to 1 s).
fn short_backoff(c: &mut parley_server::Config) {
    c.login_failures_free = 2;
    c.login_backoff_base_ms = 300;
    c.login_backoff_max_ms = 1000;
}

/// Two wrong passwords for `name`: the free failures are used up.
async fn two_wrong_passwords(server: &TestServer, name: &str) {
    let mut c = server.text().await;
    for _ in 0..2 {
        assert_eq!(
            c.ask(&format!("LOGIN {name} wrong-password"))
                .await
                .unwrap(),
            "ERR invalid-credentials"
        );
    }
}

#[tokio::test]
async fn after_the_free_failures_even_the_right_password_is_refused() {
    let server = TestServer::start_with(short_backoff).await;
    server.register("alice").await;
    two_wrong_passwords(&server, "alice").await;

    let mut c = server.text().await;
    assert_eq!(
        c.ask(&format!("LOGIN alice {PASSWORD}")).await.unwrap(),
        "ERR too-many-attempts"
    );
    server.stop().await;
}

#[tokio::test]
async fn after_the_back_off_the_right_password_works_again() {
    let server = TestServer::start_with(short_backoff).await;
    server.register("alice").await;
    two_wrong_passwords(&server, "alice").await;

    // The back-off after two failures is 300 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut c = server.text().await;
    assert_eq!(
        c.ask(&format!("LOGIN alice {PASSWORD}")).await.unwrap(),
        "OK"
    );
    server.stop().await;
}

#[tokio::test]
async fn parallel_connections_during_the_back_off_are_all_refused() {
    let server = TestServer::start_with(|c| {
        short_backoff(c);
        // Long enough that every attempt surely lands inside it.
        c.login_backoff_base_ms = 10_000;
        c.login_backoff_max_ms = 10_000;
    })
    .await;
    server.register("alice").await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.text().await);
    }
    two_wrong_passwords(&server, "alice").await;

    let attempts = clients.into_iter().map(|mut c| {
        tokio::spawn(async move { c.ask(&format!("LOGIN alice {PASSWORD}")).await.unwrap() })
    });
    let answers: Vec<String> = join_all(attempts).await;

    assert!(
        answers.iter().all(|a| a == "ERR too-many-attempts"),
        "{answers:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn parallel_wrong_passwords_get_no_more_checks_than_the_free_failures() {
    let server = TestServer::start_with(|c| {
        short_backoff(c);
        c.login_backoff_base_ms = 10_000;
        c.login_backoff_max_ms = 10_000;
    })
    .await;
    server.register("alice").await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.text().await);
    }

    let guesses = clients.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move { c.ask(&format!("LOGIN alice guess-{i:04}")).await.unwrap() })
    });
    let answers: Vec<String> = join_all(guesses).await;

    let checked = answers
        .iter()
        .filter(|a| *a == "ERR invalid-credentials")
        .count();
    assert!(
        checked <= 2,
        "{checked} of 8 guesses were checked: {answers:?}"
    );
    server.stop().await;
}

/// Awaits every task (the test's own spawned attempts).
async fn join_all<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------
// Per-address connection limit, message rate limit, login deadline
// ---------------------------------------------------------------------------------------

/// Whether a new connection is served (answers PING) rather than closed at once.
async fn served(server: &TestServer) -> bool {
    let mut c = server.text().await;
    c.timeout = Duration::from_secs(2);
    if c.send("PING").await.is_err() {
        return false;
    }
    matches!(c.line_or_eof().await, Ok(Some(line)) if line == "PONG")
}

/// `n` text connections, each of which answered a PING.
async fn served_connections(server: &TestServer, n: usize) -> Vec<LineClient> {
    let mut open = Vec::new();
    for _ in 0..n {
        let mut c = server.text().await;
        assert_eq!(c.ask("PING").await.unwrap(), "PONG");
        open.push(c);
    }
    open
}

#[tokio::test]
async fn a_connection_past_the_per_address_limit_is_closed_at_once() {
    let server = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut first = served_connections(&server, 3).await;

    let mut fourth = server.text().await;
    fourth.timeout = Duration::from_secs(2);
    assert_eq!(fourth.line_or_eof().await.unwrap(), None, "closed at once");

    for c in &mut first {
        assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_place_freed_under_the_per_address_limit_is_given_to_a_new_connection() {
    let server = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut open = served_connections(&server, 3).await;
    assert!(!served(&server).await, "a fourth connection is refused");

    quit(open.pop().unwrap()).await;

    // The server notices the close asynchronously: poll, within a bound.
    let mut accepted = false;
    for _ in 0..100 {
        if served(&server).await {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        accepted,
        "a new connection is served after one of the 3 closed"
    );
    server.stop().await;
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_for_a_place() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let mut open = served_connections(&server, 2).await;
    // Connected by the kernel (the listen backlog), but not taken in while both places are.
    let mut third = server.text().await;
    third.send("PING").await.unwrap();
    third.timeout = Duration::from_millis(300);
    assert!(third.line_or_eof().await.is_err(), "not served while full");

    quit(open.pop().unwrap()).await;
    third.timeout = Duration::from_secs(5);
    assert_eq!(
        third.line_or_eof().await.unwrap().as_deref(),
        Some("PONG"),
        "served once a place is given back"
    );
    for c in &mut open {
        assert_eq!(c.ask("PING").await.unwrap(), "PONG");
    }
    server.stop().await;
}

fn five_messages_a_second(c: &mut parley_server::Config) {
    c.messages_per_second = 5;
    c.message_burst = 5;
}

#[tokio::test]
async fn the_sixth_text_dm_in_a_burst_is_rate_limited() {
    let server = TestServer::start_with(five_messages_a_second).await;
    let mut bob = server.text_login("bob").await;
    let mut alice = server.text_login("alice").await;

    let burst: String = (1..=6).map(|i| format!("DM bob m{i}\n")).collect();
    alice.send_raw(burst.as_bytes()).await.unwrap();

    assert_eq!(alice.line().await.unwrap(), "ERR rate-limited");
    for i in 1..=5 {
        assert_eq!(bob.line().await.unwrap(), format!("DM alice m{i}"));
    }
    bob.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_sixth_binary_message_in_a_burst_is_rate_limited() {
    let server = TestServer::start_with(five_messages_a_second).await;
    let mut bob = server.login("bob").await;
    let mut alice = server.login("alice").await;

    for cid in 1..=6 {
        alice
            .send_message(cid, "alice", "bob", b"hi", 0)
            .await
            .unwrap();
    }

    let mut codes = Vec::new();
    for cid in 1..=6 {
        codes.push(alice.expect_response(cid).await.unwrap());
    }
    let ok = code::OK;
    assert_eq!(codes, [ok, ok, ok, ok, ok, code::RATE_LIMITED]);
    for _ in 0..5 {
        assert_eq!(bob.expect_push().await.unwrap().1, "alice");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_sixth_json_dm_in_a_burst_is_rate_limited() {
    let server = TestServer::start_with(five_messages_a_second).await;
    let _bob = server.text_login("bob").await;
    let mut alice = server.json().await;
    let login = json_request(json!({"command": "REGISTER", "data": "alice"}));
    assert!(alice
        .ask(&login)
        .await
        .unwrap()
        .contains(r#""success":true"#));

    let burst: String = (1..=6)
        .map(|i| {
            json_request(json!({"command": "DM", "to": "bob", "data": format!("m{i}")})) + "\n"
        })
        .collect();
    alice.send_raw(burst.as_bytes()).await.unwrap();

    for _ in 0..5 {
        assert_eq!(
            alice.line().await.unwrap(),
            r#"{"success":true,"message":"Message sent","data":""}"#
        );
    }
    assert_eq!(
        alice.line().await.unwrap(),
        r#"{"success":false,"message":"Too many messages, slow down","data":""}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn a_binary_connection_that_never_logs_in_is_closed() {
    let server = TestServer::start_with(|c| c.login_timeout_ms = 200).await;
    let mut c = server.client().await;
    c.timeout = Duration::from_secs(3);
    c.send(&Frame::CorrelationTest { cid: 1 }).await.unwrap();
    assert_eq!(c.expect_response(1).await.unwrap(), code::OK);

    expect_binary_closed(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn a_binary_connection_that_logged_in_and_only_listens_outlives_the_login_deadline() {
    let server = TestServer::start_with(|c| c.login_timeout_ms = 200).await;
    let mut bob = server.login("bob").await;

    // Twice the deadline, bob only listening.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut alice = server.login("alice").await;
    let sent = alice.message(2, "alice", "bob", b"still there?", 0).await;
    assert_eq!(sent.unwrap(), code::OK);
    let (body, from, _, _) = bob.expect_push().await.unwrap();
    assert_eq!((&body[..], from.as_str()), (&b"still there?"[..], "alice"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Binary account frames (keys 0x10-0x18)
// ---------------------------------------------------------------------------------------

fn register_frame(cid: u32, name: &str, password: &str) -> Frame {
    Frame::Register {
        cid,
        username: bytes(name),
        password: bytes(password),
    }
}

fn login_frame(cid: u32, name: &str, password: &str, device: &str, flags: u8) -> Frame {
    Frame::LoginPassword {
        cid,
        username: bytes(name),
        password: bytes(password),
        device: bytes(device),
        flags,
    }
}

/// A binary connection logged in to the existing account `name` as `device`.
async fn binary_login(server: &TestServer, name: &str, device: &str) -> BinaryClient {
    let mut c = server.client().await;
    assert_eq!(
        request(&mut c, login_frame(1, name, PASSWORD, device, 0)).await,
        code::OK
    );
    c
}

/// A binary connection logged in to the account `name` (registered here) as `device`.
async fn binary_account(server: &TestServer, name: &str, device: &str) -> BinaryClient {
    let mut c = server.client().await;
    assert_eq!(
        request(&mut c, register_frame(1, name, PASSWORD)).await,
        code::OK
    );
    assert_eq!(
        request(&mut c, login_frame(2, name, PASSWORD, device, 0)).await,
        code::OK
    );
    c
}

/// Password login asking for a token: returns the token and its expiry (Unix ms), after
/// checking that the Token frame comes first with the same cid, then the OK.
async fn binary_login_with_token(c: &mut BinaryClient, cid: u32, name: &str) -> (String, u64) {
    let frame = login_frame(cid, name, PASSWORD, "phone", flags::WANT_TOKEN);
    c.send(&frame).await.unwrap();
    let (token, expires_at) = match c.recv().await.unwrap() {
        Frame::Token {
            cid: got,
            token,
            expires_at,
        } if got == cid => (String::from_utf8(token.to_vec()).unwrap(), expires_at),
        other => panic!("expected a Token frame for cid {cid}, got {other:?}"),
    };
    assert_eq!(c.expect_response(cid).await.unwrap(), code::OK);
    (token, expires_at)
}

#[tokio::test]
async fn binary_register_is_answered_ok() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert_eq!(
        request(&mut c, register_frame(7, "alice", PASSWORD)).await,
        code::OK
    );
    server.stop().await;
}

#[tokio::test]
async fn binary_wrong_password_and_unknown_name_both_get_unauthorized() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert_eq!(
        request(&mut c, register_frame(1, "alice", PASSWORD)).await,
        code::OK
    );
    let wrong = request(&mut c, login_frame(2, "alice", "wrong-password", "", 0)).await;
    let unknown = request(&mut c, login_frame(3, "nobody", PASSWORD, "", 0)).await;
    assert_eq!(wrong, code::UNAUTHORIZED);
    assert_eq!(unknown, code::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn binary_password_login_with_want_token_sends_the_token_before_the_ok() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert_eq!(
        request(&mut c, register_frame(1, "alice", PASSWORD)).await,
        code::OK
    );
    let before = now_ms();

    let (token, expires_at) = binary_login_with_token(&mut c, 5, "alice").await;

    assert!(is_hex_token(&token), "{token:?}");
    assert!(expires_at > before, "expiry {expires_at} is in the future");
    server.stop().await;
}

#[tokio::test]
async fn binary_token_login_on_a_new_connection_is_ok() {
    let server = TestServer::start().await;
    let mut first = server.client().await;
    assert_eq!(
        request(&mut first, register_frame(1, "alice", PASSWORD)).await,
        code::OK
    );
    let (token, _) = binary_login_with_token(&mut first, 2, "alice").await;
    close(first).await;

    let mut again = server.client().await;
    let frame = Frame::LoginToken {
        cid: 3,
        token: bytes(&token),
    };
    assert_eq!(request(&mut again, frame).await, code::OK);
    server.stop().await;
}

#[tokio::test]
async fn binary_logout_answers_ok_then_closes() {
    let server = TestServer::start().await;
    let mut c = binary_account(&server, "alice", "phone").await;

    assert_eq!(
        request(&mut c, Frame::Logout { cid: 9, scope: 0 }).await,
        code::OK
    );
    expect_binary_closed(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_change_password_replaces_the_password() {
    let server = TestServer::start().await;
    let mut c = binary_account(&server, "alice", "phone").await;
    let change = Frame::ChangePassword {
        cid: 3,
        old: bytes(PASSWORD),
        new: bytes("battery-staple"),
    };
    assert_eq!(request(&mut c, change).await, code::OK);

    let mut other = server.client().await;
    let old = request(&mut other, login_frame(4, "alice", PASSWORD, "laptop", 0)).await;
    let new = request(
        &mut other,
        login_frame(5, "alice", "battery-staple", "laptop", 0),
    )
    .await;
    assert_eq!(old, code::UNAUTHORIZED);
    assert_eq!(new, code::OK);
    server.stop().await;
}

#[tokio::test]
async fn binary_set_profile_then_get_profile_returns_it_before_the_ok() {
    let server = TestServer::start().await;
    let mut c = binary_account(&server, "alice", "phone").await;
    let avatar = Bytes::from_static(b"\x89PNG\r\n\x1a\n not really");
    let set = Frame::SetProfile {
        cid: 3,
        display_name: bytes("Alice Liddell"),
        avatar: avatar.clone(),
    };
    assert_eq!(request(&mut c, set).await, code::OK);

    let get = Frame::GetProfile {
        cid: 4,
        username: bytes("alice"),
    };
    c.send(&get).await.unwrap();
    assert_eq!(
        c.recv().await.unwrap(),
        Frame::Profile {
            cid: 4,
            username: bytes("alice"),
            display_name: bytes("Alice Liddell"),
            avatar,
        }
    );
    assert_eq!(c.expect_response(4).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn binary_an_avatar_over_the_limit_is_too_long() {
    let server = TestServer::start_with(|c| c.max_avatar_bytes = 100).await;
    let mut c = binary_account(&server, "alice", "phone").await;
    let set = Frame::SetProfile {
        cid: 3,
        display_name: Bytes::new(),
        avatar: Bytes::from(vec![7u8; 101]),
    };
    assert_eq!(request(&mut c, set).await, code::TOO_LONG);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Profiles over JSON and text
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn json_set_profile_with_a_base64_avatar_is_returned_by_profile() {
    let server = TestServer::start().await;
    let mut c = server.json().await;
    let register = json!({"command": "REGISTER", "data": "alice", "password": PASSWORD});
    let login = json!({"command": "LOGIN", "data": "alice", "password": PASSWORD});
    assert!(parse(&c.ask(&register.to_string()).await.unwrap())["success"] == true);
    assert!(parse(&c.ask(&login.to_string()).await.unwrap())["success"] == true);
    let avatar = BASE64.encode(b"\x89PNG\r\n\x1a\n tiny image");

    let set = json!({"command": "SET_PROFILE", "display_name": "Alice", "avatar": avatar});
    let saved = c.ask(&set.to_string()).await.unwrap();
    let profile = c
        .ask(&json!({"command": "PROFILE", "target": "alice"}).to_string())
        .await
        .unwrap();

    assert_eq!(
        saved,
        r#"{"success":true,"message":"Profile saved","data":""}"#
    );
    let profile = parse(&profile);
    assert_eq!(profile["success"], true, "{profile}");
    assert_eq!(
        profile["data"],
        json!({"name": "alice", "display_name": "Alice", "avatar": avatar})
    );
    server.stop().await;
}

#[tokio::test]
async fn text_setname_shows_in_the_profile_line() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut alice = device(&server, "alice", "phone").await;

    assert_eq!(alice.ask("SETNAME Alice Liddell").await.unwrap(), "OK");
    assert_eq!(
        alice.ask("PROFILE alice").await.unwrap(),
        "PROFILE alice 0 Alice Liddell"
    );
    assert_eq!(alice.line().await.unwrap(), "OK");
    server.stop().await;
}

#[tokio::test]
async fn a_password_less_session_cannot_set_a_name() {
    let server = TestServer::start().await;
    let mut guest = server.text_login("guest").await;
    assert_eq!(
        guest.ask("SETNAME The Guest").await.unwrap(),
        "ERR invalid-credentials"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Authorization: only the parties of a conversation receive or read it
// ---------------------------------------------------------------------------------------

/// alice and bob in #a (their OKs consumed), carol logged in but not a member.
async fn room_a(server: &TestServer) -> (LineClient, LineClient, LineClient) {
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    let carol = server.text_login("carol").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    (alice, bob, carol)
}

#[tokio::test]
async fn a_non_member_receives_nothing_of_a_rooms_messages() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = room_a(&server).await;

    alice.send("SAY #a members only").await.unwrap();

    assert_eq!(bob.line().await.unwrap(), "ROOM #a alice members only");
    carol.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_non_member_cannot_read_a_rooms_history() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = room_a(&server).await;
    alice.send("SAY #a members only").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "ROOM #a alice members only");

    assert_eq!(carol.ask("HISTORY #a").await.unwrap(), "ERR not-a-member");
    server.stop().await;
}

#[tokio::test]
async fn a_non_member_cannot_say_in_a_room() {
    let server = TestServer::start().await;
    let (_alice, mut bob, mut carol) = room_a(&server).await;

    assert_eq!(
        carol.ask("SAY #a let me in").await.unwrap(),
        "ERR not-a-member"
    );
    bob.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_dm_never_reaches_a_third_user() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    let mut carol = server.text_login("carol").await;

    alice.send("DM bob just between us").await.unwrap();
    assert_eq!(bob.line().await.unwrap(), "DM alice just between us");
    bob.send("DM alice agreed").await.unwrap();
    assert_eq!(alice.line().await.unwrap(), "DM bob agreed");

    carol.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}
