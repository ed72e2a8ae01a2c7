//! `parley migrate --to-postgres`: a single node's store of 100,000 messages moved into
//! PostgreSQL, interrupted (kill -9) half way and resumed, verified by the migration's own
//! counts and checksums and then by a cluster node serving what was migrated.

mod common;
mod services;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{parley_command, Proc};
use parley_client::{Connection, Endpoint, LineClient, Link, LinkOptions, Push, Target};
use services::cluster::Node;
use services::{Nats, Postgres};

const PASSWORD: &str = "correct-horse";
const MESSAGES: usize = 100_000;
/// Messages bob received (and acknowledged) before the single node stopped.
const READ_BY_BOB: u64 = 500;

/// The single node's store: alice sends MESSAGES to bob (who read the first READ_BY_BOB),
/// a room holds a few, and a file was stored.
async fn fill(addr: std::net::SocketAddr) {
    let mut text = LineClient::connect(addr).await.unwrap();
    for name in ["alice", "bob"] {
        assert_eq!(
            text.ask(&format!("REGISTER {name} {PASSWORD}"))
                .await
                .unwrap(),
            "OK"
        );
    }
    let endpoint = Endpoint::tcp(addr.to_string());
    let (bob, mut bob_pushes) = Connection::connect(&endpoint).await.unwrap();
    bob.enable_acks().await.unwrap();
    bob.login_password("bob", PASSWORD, "phone", false)
        .await
        .unwrap();
    let (alice, _) = Connection::connect(&endpoint).await.unwrap();
    alice
        .login_password("alice", PASSWORD, "laptop", false)
        .await
        .unwrap();
    alice.join("#room").await.unwrap();
    for i in 0..5 {
        let body = Bytes::from(format!("room {i}"));
        alice
            .send("alice", &Target::Room("#room".into()), body, i)
            .await
            .unwrap();
    }
    // Pipelined, 256 in flight: a few seconds even in a debug build.
    let bob_target = Target::User("bob".into());
    let mut inflight: futures_util::stream::FuturesOrdered<_> = Default::default();
    for i in 0..MESSAGES {
        if inflight.len() == 256 {
            let sent: Result<(), parley_client::Error> =
                futures_util::StreamExt::next(&mut inflight).await.unwrap();
            sent.unwrap();
        }
        let body = Bytes::from(format!("m{i}"));
        inflight.push_back(alice.send("alice", &bob_target, body, i as u64));
        if i as u64 == READ_BY_BOB {
            // Every message so far stored, bob reads (and acks) them.
            while let Some(sent) = futures_util::StreamExt::next(&mut inflight).await {
                sent.unwrap();
            }
            let mut read = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            while read < READ_BY_BOB {
                let push = tokio::time::timeout_at(deadline, bob_pushes.recv()).await;
                let Some(Push::Event(e)) = push.expect("bob reads his messages within 60 s") else {
                    panic!("bob's pushes ended")
                };
                if e.kind == parley_proto::binary::kind::DIRECT {
                    bob.ack(e.conversation, e.seq);
                    read = e.seq;
                }
            }
            // The acks went before this round trip: the server has them.
            bob.ping().await.unwrap();
            bob.close();
        }
    }
    while let Some(sent) = futures_util::StreamExt::next(&mut inflight).await {
        sent.unwrap();
    }
    alice.close();
}

/// A link (the client library's device) of `user` logged in with a password.
fn link(addr: std::net::SocketAddr, user: &str, device: &str) -> Link {
    let mut options = LinkOptions::new(Endpoint::tcp(addr.to_string()), user, device);
    options.password = Some(PASSWORD.to_string());
    options.max_attempts = Some(5);
    let (link, mut events) = Link::spawn(options);
    // Nobody reads this device's events: they are drained so its pushes never wait.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    link
}

/// The file stored on the single node.
fn file_content() -> Vec<u8> {
    (0..700_000u32).map(|i| (i * 13 % 251) as u8).collect()
}

/// `parley migrate`, its stderr and stdout on pipes.
fn migrate(url: &str, dir: &std::path::Path) -> std::process::Command {
    let mut cmd = parley_command(["migrate", "--to-postgres", url, "--data-dir"]);
    cmd.arg(dir).stdout(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_100000_messages_migrates_resumes_and_serves() {
    if !services::available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut serve = parley_command(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir]);
    serve
        .env("PARLEY_MESSAGES_PER_SECOND", "0")
        .env("PARLEY_ARGON2_MEMORY_KIB", "1024")
        .env("PARLEY_ARGON2_ITERATIONS", "1");
    let mut single = Proc::spawn(serve);
    let addr = single.wait_for_start()[0].addr;
    fill(addr).await;
    // A file alice sent bob: its content moves with the rest.
    let files = tempfile::tempdir().unwrap();
    let source = files.path().join("photo.bin");
    std::fs::write(&source, file_content()).unwrap();
    let tablet = link(addr, "alice", "tablet");
    let info = tablet.upload(&source, |_, _| {}).await.expect("upload");
    tablet
        .send_file(&Target::User("bob".into()), &info, "a photo", 1)
        .await
        .expect("send the file");
    tablet.close();
    single.signal(libc::SIGTERM);
    assert!(single.wait_exit(Duration::from_secs(30)).success());

    let pg = Postgres::start();
    let url = pg.url();
    // The first run is killed once it has copied a part.
    let mut first = migrate(&url, data.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn parley migrate");
    let stderr = BufReader::new(first.stderr.take().unwrap());
    let mut progress = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.starts_with("copied ") {
            progress = Some(line);
            break;
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let copied: usize = pg
        .psql(
            "parley",
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM message_packs",
        )
        .parse()
        .unwrap();
    assert!(
        copied > 0 && copied < MESSAGES,
        "interrupted half way: {copied} copied ({progress:?})"
    );

    // Run again: it goes on where it stopped, and checks everything.
    let out = migrate(&url, data.path())
        .stderr(Stdio::inherit())
        .output()
        .expect("run parley migrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // The room's five and the file's message besides.
    let expected = MESSAGES + 6;
    assert!(
        stdout.contains(&format!(
            "messages: {expected} in {dir}, {expected} in PostgreSQL"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("counts and checksums agree"), "{stdout}");
    let resumed: usize = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("migrated: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    assert!(
        resumed < expected,
        "the second run copied only the rest: {resumed}"
    );
    // A third run finds nothing left to copy and agrees.
    let again = migrate(&url, data.path()).output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("migrated: 0 messages"));

    // A cluster node on the migrated database: bob's device goes on from its cursor.
    let nats = Nats::start();
    let node = Node::start("a", &url, &nats.url());
    let (bob, mut pushes) = Connection::connect(&Endpoint::tcp(node.addr.to_string()))
        .await
        .unwrap();
    bob.enable_acks().await.unwrap();
    bob.login_password("bob", PASSWORD, "phone", false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = READ_BY_BOB + 1;
    while next <= MESSAGES as u64 {
        assert!(Instant::now() < deadline, "catch-up stopped at {next}");
        let push = tokio::time::timeout(Duration::from_secs(30), pushes.recv())
            .await
            .expect("a push")
            .expect("open");
        let Push::Event(e) = push else { continue };
        assert_eq!(e.seq, next, "bob's messages in order from his cursor");
        assert_eq!(&e.message[..], format!("m{}", next - 1).as_bytes());
        if next.is_multiple_of(1000) {
            bob.ack(e.conversation, e.seq);
        }
        next += 1;
    }
    // alice's history of the room, and her password, came along.
    let (alice, _) = Connection::connect(&Endpoint::tcp(node.addr.to_string()))
        .await
        .unwrap();
    alice
        .login_password("alice", PASSWORD, "laptop", false)
        .await
        .unwrap();
    let history = alice
        .history("#room", parley_client::Page::Latest, 10)
        .await
        .unwrap();
    assert_eq!(history.len(), 5);
    // So did the file, from PostgreSQL now.
    let dest = files.path().join("copy.bin");
    link(node.addr, "bob", "tablet")
        .download(&info, &dest, |_, _| {})
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).unwrap(), file_content());
    drop(node);
}

/// Asks `c` and returns the first line that is `OK` or an error (notices are skipped);
/// fails after 10 s.
async fn answer(c: &mut LineClient, request: &str) -> String {
    c.send(request).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let line = tokio::time::timeout_at(deadline, c.line())
            .await
            .expect("an answer in 10 s")
            .expect("a line");
        if line == "OK" || line.starts_with("ERR") {
            return line;
        }
    }
}

/// A text session logged in (without a password) as `name` on `addr`.
async fn text(addr: std::net::SocketAddr, name: &str) -> LineClient {
    let mut c = LineClient::connect(addr).await.unwrap();
    assert_eq!(
        answer(&mut c, &format!("LOGIN {name}")).await,
        "OK",
        "{name}"
    );
    c
}

/// The lines `command` answers before its `OK`; fails after 10 s.
async fn listing(c: &mut LineClient, command: &str) -> Vec<String> {
    c.send(command).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    loop {
        let line = tokio::time::timeout_at(deadline, c.line())
            .await
            .expect("an answer in 10 s")
            .expect("a line");
        if line == "OK" || line.starts_with("ERR") {
            return lines;
        }
        lines.push(line);
    }
}

/// `parley admin --data-dir DIR ARGS...` against the running single node.
fn admin(dir: &std::path::Path, args: &[&str]) {
    let mut cmd = parley_command(["admin", "--data-dir"]);
    cmd.arg(dir).args(args).stdin(Stdio::null());
    let out = cmd.output().expect("parley admin");
    assert!(out.status.success(), "{out:?}");
}

/// An operator's decisions on the single node hold on the cluster after the migration: a
/// deleted account's name and a disabled account log in no more, a ban and a block hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_migrates_and_holds_on_the_cluster() {
    if !services::available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut single = Proc::spawn(parley_command([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
    ]));
    let addr = single.wait_for_start()[0].addr;
    // alice owns #room and bans mallory from it, and blocks bob; eve is deleted, frank
    // disabled.
    drop(text(addr, "bob").await);
    let mut alice = text(addr, "alice").await;
    assert_eq!(answer(&mut alice, "JOIN #room").await, "OK");
    assert_eq!(answer(&mut alice, "TOPIC #room rules").await, "OK");
    let mut mallory = text(addr, "mallory").await;
    assert_eq!(answer(&mut mallory, "JOIN #room").await, "OK");
    assert_eq!(answer(&mut alice, "BAN #room mallory").await, "OK");
    assert_eq!(answer(&mut mallory, "JOIN #room").await, "ERR banned");
    assert_eq!(answer(&mut alice, "BLOCK bob").await, "OK");
    // And deletes a message she said in the room.
    alice.send("SAY #room the secret is 42").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let seq: i64 = loop {
        let history = listing(&mut alice, "HISTORY #room").await;
        if let Some(said) = history.iter().find(|l| l.ends_with("the secret is 42")) {
            break said.split(' ').nth(2).unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "never stored: {history:?}");
    };
    assert_eq!(
        answer(&mut alice, &format!("DELETE #room {seq}")).await,
        "OK"
    );
    for name in ["eve", "frank"] {
        drop(text(addr, name).await);
    }
    admin(data.path(), &["users", "delete", "eve"]);
    admin(data.path(), &["users", "disable", "frank"]);
    drop((alice, mallory));
    single.signal(libc::SIGTERM);
    assert!(single.wait_exit(Duration::from_secs(30)).success());

    let pg = Postgres::start();
    let url = pg.url();
    let out = migrate(&url, data.path())
        .stderr(Stdio::inherit())
        .output()
        .expect("run parley migrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("user_states: 2 in {dir}, 2 in PostgreSQL")),
        "{stdout}"
    );
    // Run again: nothing doubles, and it still agrees.
    let again = migrate(&url, data.path()).output().unwrap();
    assert!(again.status.success(), "{again:?}");

    let nats = Nats::start();
    let node = Node::start("a", &url, &nats.url());
    for name in ["eve", "frank"] {
        let mut c = LineClient::connect(node.addr).await.unwrap();
        let said = answer(&mut c, &format!("LOGIN {name}")).await;
        assert!(said.starts_with("ERR"), "{name} logged in: {said}");
    }
    let mut mallory = text(node.addr, "mallory").await;
    assert_eq!(answer(&mut mallory, "JOIN #room").await, "ERR banned");
    let mut bob = text(node.addr, "bob").await;
    assert_eq!(answer(&mut bob, "DM alice hello").await, "ERR blocked");
    let mut alice = text(node.addr, "alice").await;
    let history = listing(&mut alice, "HISTORY #room").await;
    assert!(!history.iter().any(|l| l.contains("secret")), "{history:?}");
    assert!(
        history
            .iter()
            .any(|l| l.ends_with("alice [message deleted]")),
        "{history:?}"
    );
    drop(node);
}
