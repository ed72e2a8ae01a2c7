//! The login throttle over real sockets (docs/PROTOCOL.md, "Failed logins are throttled"):
//! failures slow down guessing of one name from one address, and never refuse anyone
//! else's correct password or a valid token. Other machines are other loopback addresses
//! (Linux routes all of 127.0.0.0/8 to the loopback interface).

mod common;

use std::time::Duration;

use common::{bytes, TestServer};
use parley_client::LineClient;
use parley_proto::binary::{code, Frame};
use parley_server::Config;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const PASSWORD: &str = "correct-horse";

/// Two free failures per name and address, then 10 s of back-off (longer than any test).
fn two_free(c: &mut Config) {
    c.login_failures_free = 2;
    c.login_backoff_base_ms = 10_000;
    c.login_backoff_max_ms = 10_000;
}

async fn register(server: &TestServer, name: &str) {
    let mut c = server.text().await;
    let answer = c.ask(&format!("REGISTER {name} {PASSWORD}")).await.unwrap();
    assert_eq!(answer, "OK", "REGISTER {name}");
}

/// A text connection to the shared port from the loopback address `from`.
async fn connect_from(server: &TestServer, from: &str) -> BufReader<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    BufReader::new(socket.connect(server.addr).await.unwrap())
}

/// Sends `line` and reads the answer, within `wait` (None: nothing came in time).
async fn ask_within(c: &mut BufReader<TcpStream>, line: &str, wait: Duration) -> Option<String> {
    c.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    match tokio::time::timeout(wait, c.read_line(&mut answer)).await {
        Ok(read) => {
            read.unwrap();
            Some(answer.trim_end().to_string())
        }
        Err(_) => None,
    }
}

/// `line` on a new connection from `from`; its answer.
async fn ask_from(server: &TestServer, from: &str, line: &str) -> String {
    let mut c = connect_from(server, from).await;
    ask_within(&mut c, line, Duration::from_secs(10))
        .await
        .expect("an answer in time")
}

/// A token for the account `name`, from a device logged in over text.
async fn token_of(server: &TestServer, name: &str) -> String {
    let mut c = server.text().await;
    let login = c.ask(&format!("LOGIN {name} {PASSWORD} phone")).await;
    assert_eq!(login.unwrap(), "OK");
    let line = c.ask("TOKEN").await.unwrap();
    let token = line.split(' ').nth(1).expect("TOKEN <token> <expiry>");
    token.to_string()
}

async fn wrong_password(c: &mut LineClient, name: &str) {
    let answer = c
        .ask(&format!("LOGIN {name} wrong-password"))
        .await
        .unwrap();
    assert_eq!(answer, "ERR invalid-credentials", "LOGIN {name} (wrong)");
}

#[tokio::test]
async fn failures_on_one_account_do_not_refuse_another_accounts_login_from_that_address() {
    let server = TestServer::start_with(two_free).await;
    register(&server, "alice").await;
    register(&server, "bob").await;
    let mut c = server.text().await;
    wrong_password(&mut c, "alice").await;
    wrong_password(&mut c, "alice").await;

    let alice = c.ask(&format!("LOGIN alice {PASSWORD}")).await.unwrap();
    let bob = c.ask(&format!("LOGIN bob {PASSWORD}")).await.unwrap();

    assert_eq!(alice, "ERR too-many-attempts", "alice backs off from here");
    assert_eq!(bob, "OK", "bob, behind the same address, does not");
    server.stop().await;
}

#[tokio::test]
async fn failures_from_one_address_do_not_refuse_that_account_from_another() {
    let server = TestServer::start_with(two_free).await;
    register(&server, "alice").await;
    let mut attacker = server.text().await;
    wrong_password(&mut attacker, "alice").await;
    wrong_password(&mut attacker, "alice").await;

    let login = format!("LOGIN alice {PASSWORD}");
    assert_eq!(
        ask_from(&server, "127.0.0.1", &login).await,
        "ERR too-many-attempts"
    );
    assert_eq!(ask_from(&server, "127.0.0.2", &login).await, "OK");
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_from_three_addresses_do_not_refuse_a_valid_resume_from_a_fourth() {
    let server = TestServer::start().await;
    register(&server, "alice").await;
    let token = token_of(&server, "alice").await;
    let bad = format!("RESUME {}", "0".repeat(64));
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert_eq!(
            ask_from(&server, from, &bad).await,
            "ERR invalid-credentials"
        );
    }

    let resume = ask_from(&server, "127.0.0.5", &format!("RESUME {token}")).await;

    assert_eq!(resume, "OK alice");
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_from_an_address_do_not_refuse_a_valid_token_from_it() {
    let server = TestServer::start_with(|c| c.login_address_failures_free = 3).await;
    register(&server, "alice").await;
    let token = token_of(&server, "alice").await;
    let mut c = server.text().await;
    for _ in 0..4 {
        let bad = c.ask(&format!("RESUME {}", "f".repeat(64))).await.unwrap();
        assert_eq!(bad, "ERR invalid-credentials");
    }

    let resume = c.ask(&format!("RESUME {token}")).await.unwrap();

    assert_eq!(resume, "OK alice");
    server.stop().await;
}

#[tokio::test]
async fn past_its_free_failures_an_address_is_slowed_but_a_correct_password_still_logs_in() {
    let server = TestServer::start_with(|c| {
        two_free(c);
        c.login_address_failures_free = 2;
        c.login_address_spacing_ms = 100;
    })
    .await;
    register(&server, "bob").await;
    let mut c = server.text().await;
    for name in ["alice", "carol", "dave", "erin", "frank"] {
        wrong_password(&mut c, name).await;
    }

    let bob = c.ask(&format!("LOGIN bob {PASSWORD}")).await.unwrap();

    assert_eq!(bob, "OK");
    server.stop().await;
}

/// With turns a minute apart, ten attempts wait for theirs (unanswered while the test
/// runs), one is checked at once, and the rest are refused at once.
#[tokio::test]
async fn an_address_with_too_many_attempts_waiting_is_refused() {
    let server = TestServer::start_with(|c| {
        c.login_address_failures_free = 1;
        c.login_address_spacing_ms = 60_000;
    })
    .await;
    let mut first = server.text().await;
    wrong_password(&mut first, "name0").await;
    let mut clients = Vec::new();
    for _ in 0..15 {
        clients.push(connect_from(&server, "127.0.0.1").await);
    }

    let attempts = clients.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move {
            let line = format!("LOGIN name{} wrong-password", i + 1);
            // Answers that come at all come at once; waiting ones take a minute or more.
            (ask_within(&mut c, &line, Duration::from_secs(3)).await, c)
        })
    });
    let mut answers = Vec::new();
    let mut open = Vec::new();
    for attempt in attempts.collect::<Vec<_>>() {
        let (answer, c) = attempt.await.unwrap();
        answers.push(answer);
        open.push(c);
    }

    let count = |want: Option<&str>| answers.iter().filter(|a| a.as_deref() == want).count();
    assert_eq!(count(Some("ERR invalid-credentials")), 1, "{answers:?}");
    assert_eq!(count(None), 10, "{answers:?}");
    assert_eq!(count(Some("ERR too-many-attempts")), 4, "{answers:?}");
    // Stopping ends the waits (the server does not wait ten minutes for them).
    server.stop().await;
    drop(open);
}

#[tokio::test]
async fn the_throttle_is_one_policy_for_every_protocol() {
    let server = TestServer::start_with(two_free).await;
    register(&server, "alice").await;
    register(&server, "bob").await;
    let mut json = server.json().await;
    for _ in 0..2 {
        let request = json!({"command": "LOGIN", "data": "alice", "password": "wrong-password"});
        let answer = json.ask(&request.to_string()).await.unwrap();
        assert!(answer.contains("Invalid credentials"), "{answer}");
    }

    let mut binary = server.client().await;
    let login = |cid, name: &str| Frame::LoginPassword {
        cid,
        username: bytes(name),
        password: bytes(PASSWORD),
        device: bytes(""),
        flags: 0,
    };
    binary.send(&login(1, "alice")).await.unwrap();
    let alice = binary.expect_response(1).await.unwrap();
    binary.send(&login(2, "bob")).await.unwrap();
    let bob = binary.expect_response(2).await.unwrap();

    assert_eq!(alice, code::TOO_MANY_ATTEMPTS);
    assert_eq!(bob, code::OK);
    server.stop().await;
}
