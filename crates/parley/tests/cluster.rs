//! Several parley nodes on one PostgreSQL and one NATS: real processes on loopback ports,
//! clients of every protocol on different nodes.

mod common;
mod services;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parley_client::{
    Connection, Endpoint, Error, LineClient, Link, LinkEvent, LinkOptions, Push, Target,
};
use serde_json::Value;
use services::cluster::{Cluster, Node, Proxy};
use services::{Nats, Postgres};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const PASSWORD: &str = "correct-horse";

/// Sends PING to a nats-server and reads up to its PONG.
fn nats_ping(nats: &Nats) -> std::io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", nats.port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    assert!(line.starts_with("INFO "), "{line}");
    (&stream).write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    assert_eq!(line, "PONG\r\n");
    Ok(())
}

/// The harness itself: both services start on free loopback ports, keep what they hold
/// across a restart on the same port, and answer again after it.
#[test]
fn services_start_restart_and_keep_their_data() {
    if !services::available() {
        return;
    }
    let mut pg = Postgres::start();
    pg.psql(
        "parley",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (42)",
    );
    pg.restart();
    assert_eq!(pg.psql("parley", "SELECT v FROM t"), "42");
    pg.kill();
    assert!(!pg.ready(), "a killed server does not answer");

    let mut nats = Nats::start();
    nats_ping(&nats).unwrap();
    nats.stop();
    assert!(
        nats_ping(&nats).is_err(),
        "a stopped nats-server does not answer"
    );
    nats.restart();
    nats_ping(&nats).unwrap();
}

/// A text session logged in as `name` on `addr`.
async fn text(addr: std::net::SocketAddr, login: &str) -> LineClient {
    let mut c = LineClient::connect(addr).await.expect("connect");
    assert_eq!(
        c.ask(&format!("LOGIN {login}")).await.unwrap(),
        "OK",
        "LOGIN {login}"
    );
    c
}

/// Reads lines until one satisfies `want` (other lines, such as presence notices, are
/// skipped); fails after 10 s.
async fn until(c: &mut LineClient, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no matching line in 10 s");
        let line = c.line().await.expect("a line");
        if want(&line) {
            return line;
        }
    }
}

/// The `HISTORY` lines `command` answers, up to its `OK`; fails after 10 s.
async fn history(c: &mut LineClient, command: &str) -> Vec<String> {
    c.send(command).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut page = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "{command}: no OK in 10 s");
        let line = c.line().await.expect("a line");
        if line == "OK" {
            return page;
        }
        if line.starts_with("HISTORY ") {
            page.push(line);
        }
    }
}

/// A JSON session on `addr` (the JSON-only port), logged in as `name` and subscribed.
async fn json(addr: std::net::SocketAddr, name: &str) -> LineClient {
    let mut c = LineClient::connect(addr).await.expect("connect");
    let welcome = c.line().await.unwrap();
    assert!(welcome.contains("Welcome"), "{welcome}");
    let login = format!(r#"{{"command":"LOGIN","data":"{name}"}}"#);
    let answer: Value = serde_json::from_str(&c.ask(&login).await.unwrap()).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let answer: Value =
        serde_json::from_str(&c.ask(r#"{"command":"SUBSCRIBE"}"#).await.unwrap()).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    c
}

/// Sends a JSON request and returns its response (events before it are skipped).
async fn json_ask(c: &mut LineClient, request: &str) -> Value {
    c.send(request).await.unwrap();
    let line = until(c, |l| l.contains(r#""success""#)).await;
    serde_json::from_str(&line).unwrap()
}

/// The next JSON line that is an event named `event`.
async fn json_event(c: &mut LineClient, event: &str) -> Value {
    let line = until(c, |l| l.contains(&format!(r#""event":"{event}""#))).await;
    serde_json::from_str(&line).unwrap()
}

/// A binary connection with acks, logged in with a password as `device`.
async fn binary(
    addr: std::net::SocketAddr,
    user: &str,
    device: &str,
) -> (Connection, tokio::sync::mpsc::Receiver<Push>) {
    let (conn, pushes) = Connection::connect(&Endpoint::tcp(addr.to_string()))
        .await
        .expect("connect");
    conn.login_password(user, PASSWORD, device, false)
        .await
        .expect("login");
    conn.enable_acks().await.expect("acks");
    (conn, pushes)
}

/// The next pushed message (acked), within 10 s.
async fn pushed(
    pushes: &mut tokio::sync::mpsc::Receiver<Push>,
    conn: &Connection,
) -> (String, String) {
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .expect("a push in 10 s")
        .expect("connection open");
    let Push::Event(event) = push else {
        panic!("expected an event, got {push:?}")
    };
    conn.ack(event.conversation, event.seq);
    (
        String::from_utf8_lossy(&event.from).into_owned(),
        String::from_utf8_lossy(&event.message).into_owned(),
    )
}

/// Three nodes, each client on the node of its own: direct messages, rooms, broadcast,
/// presence, offline delivery, history, the one-session-per-name rule, several devices of
/// one account, contacts and a file all work across nodes as on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_every_protocol_as_one() {
    if !services::available() {
        return;
    }
    // A login back-off that outlasts a busy machine's delays (the test checks it holds).
    let cluster = Cluster::start_with(3, &[("PARLEY_LOGIN_BACKOFF_BASE_MS", "60000")]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    // Direct messages: text on A, text on B, JSON on C.
    let mut alice = text(a.addr, "alice").await;
    let mut bob = text(b.addr, "bob").await;
    let mut carol = json(c.json, "carol").await;
    alice.send("DM bob hello from a").await.unwrap();
    assert_eq!(
        until(&mut bob, |l| l.starts_with("DM ")).await,
        "DM alice hello from a"
    );
    bob.send("DM carol hello from b").await.unwrap();
    let event = json_event(&mut carol, "message").await;
    assert_eq!(
        (&event["from"], &event["text"]),
        (&"bob".into(), &"hello from b".into())
    );
    let sent = json_ask(
        &mut carol,
        r#"{"command":"DM","to":"alice","data":"hello from c"}"#,
    )
    .await;
    assert_eq!(sent["success"], true, "{sent}");
    assert_eq!(
        until(&mut alice, |l| l.starts_with("DM ")).await,
        "DM carol hello from c"
    );

    // WebSocket (the web app's JSON) on B: it hears C, and is told where PostgreSQL
    // stored its answer, as C is when it is pushed.
    let mut wendy = Ws::login(b.addr, "wendy").await;
    let sent = json_ask(
        &mut carol,
        r#"{"command":"DM","to":"wendy","data":"to the web"}"#,
    )
    .await;
    assert_eq!(sent["success"], true, "{sent}");
    let heard = wendy.message().await;
    assert_eq!(
        (&heard["from"], &heard["text"]),
        (&"carol".into(), &"to the web".into())
    );
    let said = wendy
        .ask(serde_json::json!({"command": "DM", "to": "carol", "data": "from the web"}))
        .await;
    assert_eq!(said["success"], true, "{said}");
    let event = json_event(&mut carol, "message").await;
    assert_eq!(event["text"], "from the web");
    let stored = &said["data"];
    assert_eq!(
        (&stored["id"], &stored["conversation"], &stored["seq"]),
        (&event["id"], &event["conversation"], &event["seq"]),
        "where the WebSocket sender was told its message is"
    );

    // Presence is the cluster's, and one session per name holds across nodes.
    alice.send("WHO").await.unwrap();
    let mut who = Vec::new();
    for _ in 0..4 {
        who.push(until(&mut alice, |l| l.starts_with("USER ")).await);
    }
    assert_eq!(who, ["USER alice", "USER bob", "USER carol", "USER wendy"]);
    let mut second = LineClient::connect(c.addr).await.unwrap();
    assert_eq!(second.ask("LOGIN bob").await.unwrap(), "ERR username-taken");

    // A room with members on three nodes.
    assert_eq!(alice.ask("JOIN #r").await.unwrap(), "OK");
    bob.send("JOIN #r").await.unwrap();
    assert_eq!(
        until(&mut bob, |l| l == "OK" || l.starts_with("ERR")).await,
        "OK"
    );
    assert_eq!(
        until(&mut alice, |l| l.starts_with("INFO")).await,
        "INFO bob joined #r"
    );
    let joined = json_ask(&mut carol, r##"{"command":"JOIN","room":"#r"}"##).await;
    assert_eq!(joined["success"], true, "{joined}");
    bob.send("SAY #r room hello").await.unwrap();
    assert_eq!(
        until(&mut alice, |l| l.starts_with("ROOM ")).await,
        "ROOM #r bob room hello"
    );
    let event = json_event(&mut carol, "message").await;
    assert_eq!(
        (&event["to"], &event["text"]),
        (&"#r".into(), &"room hello".into())
    );
    let members = json_ask(&mut carol, r##"{"command":"MEMBERS","room":"#r"}"##).await;
    let names: Vec<&str> = members["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{members}"))
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);

    // Broadcast reaches every node.
    alice.send("MSG to everyone").await.unwrap();
    assert_eq!(
        until(&mut bob, |l| l.starts_with("MSG ")).await,
        "MSG alice to everyone"
    );
    let event = json_event(&mut carol, "message").await;
    assert_eq!(event["kind"], "broadcast");

    // Offline delivery: dave leaves A; what he is sent from B reaches him on C, in order.
    let mut dave = text(a.addr, "dave").await;
    assert_eq!(dave.ask("QUIT").await.unwrap(), "BYE");
    drop(dave);
    // Everyone hears that dave left, on every node; from then on he may log in anywhere.
    until(&mut bob, |l| l == "INFO dave disconnected").await;
    for i in 0..5 {
        bob.send(&format!("DM dave offline {i}")).await.unwrap();
    }
    bob.send("PING").await.unwrap();
    until(&mut bob, |l| l == "PONG").await;
    let mut dave = text(c.addr, "dave").await;
    for i in 0..5 {
        assert_eq!(
            until(&mut dave, |l| l.starts_with("DM ")).await,
            format!("DM bob offline {i}")
        );
    }

    // History written on A and B, read on C, a page at a time.
    for i in 0..6 {
        alice.send(&format!("SAY #r page {i}")).await.unwrap();
    }
    alice.send("PING").await.unwrap();
    until(&mut alice, |l| l == "PONG").await;
    let mut reader = text(c.addr, "erwin").await;
    assert_eq!(reader.ask("JOIN #r").await.unwrap(), "OK");
    let page = history(&mut reader, "HISTORY #r 3").await;
    assert_eq!(page.len(), 3, "{page:?}");
    assert!(page[2].ends_with("alice page 5"), "{page:?}");
    let before: i64 = page[0].split(' ').nth(2).unwrap().parse().unwrap();
    let older = history(&mut reader, &format!("HISTORY #r 2 before {before}")).await;
    assert!(older[1].ends_with("alice page 2"), "{older:?}");

    // Two devices of one account on two nodes each get everything.
    let mut reg = LineClient::connect(a.addr).await.unwrap();
    for name in ["erin", "frank"] {
        let answer = reg
            .ask(&format!("REGISTER {name} {PASSWORD}"))
            .await
            .unwrap();
        assert_eq!(answer, "OK", "REGISTER {name}");
    }
    let (phone, mut phone_pushes) = binary(a.addr, "erin", "phone").await;
    let (laptop, mut laptop_pushes) = binary(b.addr, "erin", "laptop").await;
    let (frank, mut frank_pushes) = binary(c.addr, "frank", "desk").await;
    frank
        .send(
            "frank",
            &Target::User("erin".into()),
            Bytes::from_static(b"to both"),
            1,
        )
        .await
        .expect("frank sends");
    assert_eq!(
        pushed(&mut phone_pushes, &phone).await,
        ("frank".into(), "to both".into())
    );
    assert_eq!(
        pushed(&mut laptop_pushes, &laptop).await,
        ("frank".into(), "to both".into())
    );
    phone
        .send(
            "erin",
            &Target::User("frank".into()),
            Bytes::from_static(b"from the phone"),
            2,
        )
        .await
        .expect("erin sends");
    assert_eq!(
        pushed(&mut frank_pushes, &frank).await,
        ("erin".into(), "from the phone".into())
    );
    // The account's other device sees what the phone sent.
    assert_eq!(
        pushed(&mut laptop_pushes, &laptop).await,
        ("erin".into(), "from the phone".into())
    );

    // Contacts: asked on A, answered on C, seen on B.
    phone.contact_request("frank").await.expect("request");
    frank.contact_answer("erin", true).await.expect("accept");
    let contacts = laptop.contacts().await.expect("contacts");
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(&contacts[0].name[..], b"frank");

    // A file uploaded through A downloads through B.
    let files = tempfile::tempdir().unwrap();
    let source = files.path().join("report.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&source, &data).unwrap();
    let mut erin_link = link(a.addr, "erin", "tablet");
    let info = erin_link
        .0
        .upload(&source, |_, _| {})
        .await
        .expect("upload");
    erin_link
        .0
        .send_file(&Target::User("frank".into()), &info, "the report", 3)
        .await
        .expect("send file");
    let mut frank_link = link(b.addr, "frank", "phone");
    let dest = files.path().join("copy.bin");
    frank_link
        .0
        .download(&info, &dest, |_, _| {})
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    drain(&mut erin_link.1);
    drain(&mut frank_link.1);

    // Login back-off is the cluster's: failures on A make B refuse the name too.
    for _ in 0..3 {
        let mut guess = LineClient::connect(a.addr).await.unwrap();
        let answer = guess.ask("LOGIN erin not-her-password").await.unwrap();
        assert_eq!(answer, "ERR invalid-credentials");
    }
    // A barrier: an event A publishes after those attempts' reaches B after them too.
    let mut hal = text(a.addr, "hal").await;
    assert_eq!(hal.ask("QUIT").await.unwrap(), "BYE");
    until(&mut bob, |l| l == "INFO hal disconnected").await;
    let mut elsewhere = LineClient::connect(b.addr).await.unwrap();
    let answer = elsewhere
        .ask(&format!("LOGIN erin {PASSWORD} desk"))
        .await
        .unwrap();
    assert_eq!(answer, "ERR too-many-attempts", "B counted A's failures");
}

/// A WebSocket client of the JSON protocol at `/ws`: answers by id, pushes kept in order.
struct Ws {
    socket: WebSocketStream<tokio::net::TcpStream>,
    events: std::collections::VecDeque<Value>,
    next_id: u64,
}

impl Ws {
    /// Connects as the server's own page would, logs in as guest `name` and subscribes.
    async fn login(addr: std::net::SocketAddr, name: &str) -> Ws {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        let origin = format!("http://{addr}").parse().unwrap();
        request.headers_mut().insert("origin", origin);
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("WebSocket handshake");
        let mut ws = Ws {
            socket,
            events: Default::default(),
            next_id: 1,
        };
        for request in [
            serde_json::json!({"command": "LOGIN", "data": name}),
            serde_json::json!({"command": "SUBSCRIBE"}),
        ] {
            let answer = ws.ask(request).await;
            assert_eq!(answer["success"], true, "{answer}");
        }
        ws
    }

    async fn read(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("a WebSocket text message in 10 s")
                .expect("the WebSocket is open")
                .expect("a WebSocket message");
            if let Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// Sends `request` with a fresh id; its answer (pushes read meanwhile are kept).
    async fn ask(&mut self, mut request: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = id.into();
        let text = request.to_string();
        self.socket.send(Message::Text(text)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no answer to {id} in 10 s");
            let value = self.read().await;
            if value.get("event").is_some() {
                self.events.push_back(value);
            } else {
                assert_eq!(value["id"], id, "answers come in order: {value}");
                return value;
            }
        }
    }

    /// The next pushed message, skipping presence notices.
    async fn message(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no message in 10 s");
            let event = match self.events.pop_front() {
                Some(event) => event,
                None => self.read().await,
            };
            if event["event"] == "message" {
                return event;
            }
        }
    }
}

/// A link (the client library's reconnecting device) logged in with a password.
fn link(
    addr: std::net::SocketAddr,
    user: &str,
    device: &str,
) -> (Link, tokio::sync::mpsc::Receiver<LinkEvent>) {
    let mut options = LinkOptions::new(Endpoint::tcp(addr.to_string()), user, device);
    options.password = Some(PASSWORD.to_string());
    options.max_attempts = Some(5);
    Link::spawn(options)
}

fn drain(events: &mut tokio::sync::mpsc::Receiver<LinkEvent>) {
    while events.try_recv().is_ok() {}
}

/// A seed-001 request line as its Go client writes it (with its `from`).
fn edu(command: &str, data: &str) -> String {
    serde_json::json!({"command": command, "data": data, "from": "client"}).to_string()
}

/// A seed-001 response line, byte for byte.
fn edu_reply(success: bool, message: &str, data: &str) -> String {
    let data = Value::from(data);
    format!(r#"{{"success":{success},"message":"{message}","data":{data}}}"#)
}

/// The line dialects of seed 004 (gochat's slash commands) and seed 001 (the educational
/// server's JSON lines) on different nodes: a room across nodes, broadcast both ways, the
/// stored messages and who is online, cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_and_seed_001_sessions_span_nodes() {
    if !services::available() {
        return;
    }
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];

    // Seed 004 on both nodes, one room.
    let mut gochat = Vec::new();
    for (node, nick) in [(a, "amy"), (b, "john")] {
        let mut c = LineClient::connect(node.addr).await.unwrap();
        let answer = c.ask(&format!("/nick {nick}")).await.unwrap();
        assert_eq!(answer, format!("> all right, I will call you {nick}"));
        assert_eq!(c.ask("/join #g").await.unwrap(), "> welcome to #g");
        gochat.push(c);
    }
    let [amy, john] = &mut gochat[..] else {
        unreachable!()
    };
    let joined = until(amy, |l| l.contains("joined")).await;
    assert_eq!(joined, "> john joined the room");
    john.send("/msg hello from b").await.unwrap();
    let said = until(amy, |l| l.starts_with("> john:")).await;
    assert_eq!(said, "> john: hello from b");

    // Seed 001 on B's JSON port (the server speaks first), a text session on A.
    let mut edna = LineClient::connect(b.json).await.unwrap();
    let welcome = edna.line().await.unwrap();
    assert!(
        welcome.contains("Welcome to TCP/IP Educational Server!"),
        "{welcome}"
    );
    let answer = edna.ask(&edu("REGISTER", "edna")).await.unwrap();
    let welcomed = edu_reply(true, "Registration successful. Welcome, edna!", "");
    assert_eq!(answer, welcomed);
    let mut tex = text(a.addr, "tex").await;
    let answer = edna.ask(&edu("MESSAGE", "hi from b")).await.unwrap();
    assert_eq!(answer, edu_reply(true, "Message broadcasted", ""));
    let heard = until(&mut tex, |l| l.starts_with("MSG ")).await;
    assert_eq!(heard, "MSG edna hi from b");
    tex.send("MSG hello from a").await.unwrap();
    // Stored on A, listed on B (a request of its own each time: seed 001 has no pushes).
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let answer = edna.ask(&edu("LIST_MESSAGES", "")).await.unwrap();
        let list: Value = serde_json::from_str(&answer).unwrap();
        let list = list["data"].as_str().unwrap().to_string();
        if list.contains("] tex: hello from a") {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "A's broadcast listed on B: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(listed.contains("] edna: hi from b"), "{listed:?}");
    let users = edna.ask(&edu("LIST_USERS", "")).await.unwrap();
    assert_eq!(
        users,
        edu_reply(true, "Online users", "amy, edna, john, tex")
    );
}

/// A device's tokens revoked on one node (its logout) are refused on every other, as an
/// unknown token is, while the account's other tokens still log in there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_is_refused_on_the_others() {
    if !services::available() {
        return;
    }
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    let mut reg = LineClient::connect(a).await.unwrap();
    let register = format!("REGISTER ivy {PASSWORD}");
    assert_eq!(reg.ask(&register).await.unwrap(), "OK");
    let connect = |addr: SocketAddr| async move {
        Connection::connect(&Endpoint::tcp(addr.to_string())).await
    };
    let mut tokens = Vec::new();
    for device in ["tablet", "phone"] {
        let (conn, _pushes) = connect(a).await.unwrap();
        let token = conn.login_password("ivy", PASSWORD, device, true).await;
        tokens.push((conn, token.unwrap().expect("a token").token));
    }
    let (on_b, _pushes) = connect(b).await.unwrap();
    let Err(Error::Refused(unknown)) = on_b.login_token("no-such-token").await else {
        panic!("an unknown token is refused");
    };
    // The tablet logs out on A: its tokens are revoked (answered once committed).
    let (tablet, tablet_token) = tokens.remove(0);
    tablet.logout(false).await.expect("logout");
    let (on_b, _pushes) = connect(b).await.unwrap();
    let refused = on_b.login_token(&tablet_token).await;
    assert!(
        matches!(refused, Err(Error::Refused(code)) if code == unknown),
        "the revoked token on B: {refused:?}"
    );
    // The phone's token logs in on B once its session on A has ended.
    let (phone, phone_token) = tokens.remove(0);
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (on_b, _pushes) = connect(b).await.unwrap();
        match on_b.login_token(&phone_token).await {
            Ok(()) => break,
            Err(Error::Refused(code)) => assert_ne!(code, unknown, "the phone's token refused"),
            Err(e) => panic!("the phone's token on B: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the phone logs in on B within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rooms are listed in pages in the byte order of their names, as on one node, even on
/// a database whose collation sorts otherwise (ICU's: `alpha` before `Beta`): a page's last
/// name says where the next page starts, and every room comes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_paged_in_byte_order_whatever_the_databases_collation() {
    if !services::available() {
        return;
    }
    let pg = Postgres::start();
    pg.psql(
        "postgres",
        "CREATE DATABASE icu TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' \
         LOCALE_PROVIDER icu ICU_LOCALE 'und'",
    );
    let url = pg.url().replace("/parley", "/icu");
    let nats = Nats::start();
    let (a, b) = (
        Node::start("a", &url, &nats.url()),
        Node::start("b", &url, &nats.url()),
    );
    let names = [
        "#alpha", "#Beta", "#delta", "#Gamma", "#zeta", "#Omega", "#eta",
    ];
    let mut maker = json(a.json, "maker").await;
    for name in names {
        let join = format!(r#"{{"command":"JOIN","room":"{name}"}}"#);
        assert_eq!(json_ask(&mut maker, &join).await["success"], true);
    }
    let mut reader = json(b.json, "reader").await;
    let mut listed = Vec::new();
    let mut after = String::new();
    for _ in 0..names.len() + 1 {
        let ask = format!(r#"{{"command":"ROOMS","after":"{after}","limit":2}}"#);
        let answer = json_ask(&mut reader, &ask).await;
        let page = answer["data"].as_array().expect("a list").clone();
        if page.is_empty() {
            break;
        }
        for room in &page {
            listed.push(room["name"].as_str().unwrap().to_string());
            assert_eq!(room["members"], 1, "{room}");
        }
        after = listed.last().unwrap().clone();
    }
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "every room once, in byte order");
}

/// Wrong device tokens count against their address on every node: past the address's free
/// failures on A, a wrong token on B waits for a turn B booked when it heard of A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_on_one_node_make_the_address_wait_on_the_others() {
    if !services::available() {
        return;
    }
    const SPACING: Duration = Duration::from_millis(2000);
    let cluster = Cluster::start_with(
        2,
        &[
            ("PARLEY_LOGIN_ADDRESS_FAILURES_FREE", "2"),
            ("PARLEY_LOGIN_ADDRESS_SPACING_MS", "2000"),
        ],
    );
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    let mut bob = text(b, "bob").await;
    let wrong_token = |addr: SocketAddr| async move {
        let (conn, _pushes) = Connection::connect(&Endpoint::tcp(addr.to_string()))
            .await
            .unwrap();
        let refused = conn.login_token("no-such-token").await;
        assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    };
    // Two free failures on A, then a third: A books the address's next turn a spacing
    // later, and so does B on hearing of it (after this moment).
    wrong_token(a).await;
    wrong_token(a).await;
    let third = Instant::now();
    wrong_token(a).await;
    // A barrier: an event A publishes after those failures' reaches B after them too.
    let mut hal = text(a, "hal").await;
    assert_eq!(hal.ask("QUIT").await.unwrap(), "BYE");
    until(&mut bob, |l| l == "INFO hal disconnected").await;
    // B's first wrong token from this address waits for that turn.
    wrong_token(b).await;
    let waited = third.elapsed();
    assert!(
        waited >= SPACING,
        "B answered {waited:?} after A's third wrong token: B did not count A's"
    );
}

/// A node a long direct conversation is new to does not read it back whole in its hub:
/// ann, online on B but not live (a JSON session before `SUBSCRIBE`), writes to ben, who
/// sent her thousands of messages from A. B follows the conversation from its own message
/// on (no session of B's needs the rest live); ann's catch-up, once she subscribes, reads
/// it from PostgreSQL. Meanwhile B serves others, and ann gets every message once, in
/// order. (B once followed it from the start for a user merely online there, and its hub
/// read the whole history in one go.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_conversation_new_to_a_node_is_not_read_back_in_its_hub() {
    if !services::available() {
        return;
    }
    const N: usize = 3000;
    let cluster = Cluster::start(2);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut ann = text(a.addr, "ann").await;
    ann.send("QUIT").await.unwrap();
    let mut ben = text(a.addr, "ben").await;
    for i in 0..N {
        ben.send(&format!("DM ann m{i}")).await.unwrap();
    }
    ben.send("PING").await.unwrap();
    until(&mut ben, |l| l == "PONG").await;

    let mut ann = LineClient::connect(b.json).await.expect("connect");
    let welcome = ann.line().await.unwrap();
    assert!(welcome.contains("Welcome"), "{welcome}");
    let login = json_ask(&mut ann, r#"{"command":"LOGIN","data":"ann"}"#).await;
    assert_eq!(login["success"], true, "{login}");
    let sent = json_ask(&mut ann, r#"{"command":"DM","to":"ben","data":"hi"}"#).await;
    assert_eq!(sent["success"], true, "{sent}");
    assert_eq!(until(&mut ben, |l| l.starts_with("DM ")).await, "DM ann hi");
    // B's hub answers others (a round trip between two of its users).
    let mut carl = text(b.addr, "carl").await;
    let mut dan = text(b.addr, "dan").await;
    carl.send("DM dan are you there").await.unwrap();
    assert_eq!(
        until(&mut dan, |l| l.starts_with("DM ")).await,
        "DM carl are you there"
    );
    let read = services::cluster::metric(b.addr, "parley_cluster_gap_read_total").await;
    assert!(
        read < (N / 10) as f64,
        "B's hub read {read} messages of the conversation back"
    );

    // Ann's catch-up, then live: every message of ben's once, in order.
    let subscribed = json_ask(&mut ann, r#"{"command":"SUBSCRIBE"}"#).await;
    assert_eq!(subscribed["success"], true, "{subscribed}");
    ben.send("DM ann live").await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.last().map(String::as_str) != Some("live") {
        assert!(
            Instant::now() < deadline,
            "ann's messages within 60 s ({} read)",
            got.len()
        );
        let line = ann.line().await.expect("ann's session");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "message" && event["from"] == "ben" {
            got.push(event["text"].as_str().unwrap().to_string());
        }
    }
    let want: Vec<String> = (0..N)
        .map(|i| format!("m{i}"))
        .chain(["live".to_string()])
        .collect();
    assert_eq!(got.len(), want.len(), "ann got {} messages", got.len());
    assert!(got == want, "ann's messages out of order or doubled");
}

/// A joiner on one node gets its JOIN's OK before any of the room's messages, then the
/// room from its join on, each once, in order, while members on its node and on another
/// keep sending. In a cluster a message committed after the join's start may be performed
/// before the join's answer in the join's batch: relayed from B (over NATS, or read back
/// before one of A's own), or one of A's own applied before the join (PostgreSQL numbers
/// it after the join's start). Such a message waits for the answer, and the answer is
/// queued by the hub, not by the session after it, when the hub may already have queued
/// the next batch's messages. The cluster's form of
/// `text_protocol::a_joiner_gets_a_busy_rooms_messages_from_its_join_on_after_its_ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_gets_its_ok_before_a_busy_rooms_messages_from_two_nodes() {
    if !services::available() {
        return;
    }
    const ROUNDS: usize = 30;
    const BURST: usize = 40;
    let cluster = Cluster::start_with(2, &[("PARLEY_COMMANDS_PER_SECOND", "100000")]);
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    let mut alice = text(b, "alice").await;
    let mut bob = text(a, "bob").await;
    for sender in [&mut alice, &mut bob] {
        sender.send("JOIN #busy").await.unwrap();
        until(sender, |l| l == "OK").await;
    }
    for round in 0..ROUNDS {
        let mut joiner = text(a, &format!("joiner{round}")).await;
        // The bursts and the join meet in A's hub: some of them are committed before the
        // join's start, some after, often in the join's batch.
        for sender in [&mut alice, &mut bob] {
            let burst: String = (0..BURST)
                .map(|i| format!("SAY #busy r{round} m{i}\n"))
                .collect();
            sender.send_raw(burst.as_bytes()).await.unwrap();
        }
        joiner.send("JOIN #busy").await.unwrap();
        let first = until(&mut joiner, |l| !l.starts_with("INFO ")).await;
        assert_eq!(first, "OK", "round {round}: the join's answer first");
        // One more each, certainly after the join.
        for sender in [&mut alice, &mut bob] {
            sender
                .send(&format!("SAY #busy r{round} m{BURST}"))
                .await
                .unwrap();
        }
        // Each sender's messages from some message on (perhaps none of the burst), up to
        // the last: nothing before the join's start, nothing after it missed or doubled.
        let mut got: [Vec<usize>; 2] = Default::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.iter().any(|g| g.last() != Some(&BURST)) {
            assert!(Instant::now() < deadline, "round {round}: {got:?} in 20 s");
            let line = joiner.line().await.expect("a line");
            if line.starts_with("INFO ") {
                continue;
            }
            let parse = |who: &str| {
                let prefix = format!("ROOM #busy {who} r{round} m");
                line.strip_prefix(&prefix)
                    .map(|i| i.parse::<usize>().unwrap())
            };
            match (parse("alice"), parse("bob")) {
                (Some(i), _) => got[0].push(i),
                (_, Some(i)) => got[1].push(i),
                _ => panic!("round {round}: {line:?} after {got:?}"),
            }
        }
        for got in &got {
            let from = got[0];
            assert_eq!(got, &(from..=BURST).collect::<Vec<_>>(), "round {round}");
        }
        joiner.send("QUIT").await.unwrap();
        until(&mut joiner, |l| l == "BYE").await;
    }
}

/// A device gets a room it joined on another node once, in order: uma joins rooms one
/// after another from her phone on B while alice, on C, writes to all of them; her tablet
/// on A (where wes keeps the rooms delivered) gets each room from the join on, each
/// message once. A hears of each join from B and of alice's messages from C in any order:
/// a message relayed in the batch that brings the join reaches the tablet live, and is
/// not read back for it again. (It was: delivered live and again by the read, out of
/// order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_heard_from_another_node_reads_back_nothing_delivered_live() {
    if !services::available() {
        return;
    }
    const ROOMS: usize = 16;
    const ROUNDS: usize = 30;
    let cluster = Cluster::start_with(3, &[("PARLEY_COMMANDS_PER_SECOND", "100000")]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut reg = LineClient::connect(a.addr).await.unwrap();
    assert_eq!(
        reg.ask(&format!("REGISTER uma {PASSWORD}")).await.unwrap(),
        "OK"
    );
    let mut alice = text(c.addr, "alice").await;
    let mut wes = text(a.addr, "wes").await;
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("#d{r}")).collect();
    for member in [&mut alice, &mut wes] {
        member
            .send(&format!("JOIN {}", rooms.join(" ")))
            .await
            .unwrap();
        until(member, |l| l == "OK").await;
    }
    let mut tablet = text(a.addr, &format!("uma {PASSWORD} tablet")).await;
    let mut phone = text(b.addr, &format!("uma {PASSWORD} phone")).await;

    // alice writes round after round to every room while the phone joins them.
    let said: String = (0..ROUNDS)
        .flat_map(|i| rooms.iter().map(move |r| format!("SAY {r} {i}\n")))
        .collect();
    alice.send_raw(said.as_bytes()).await.unwrap();
    for room in &rooms {
        phone.send(&format!("JOIN {room}")).await.unwrap();
    }
    for _ in &rooms {
        until(&mut phone, |l| l == "OK").await;
    }
    for room in &rooms {
        alice.send(&format!("SAY {room} end")).await.unwrap();
    }

    // The tablet: each room from some round on, up to the end, once each, in order.
    let mut got: Vec<Vec<String>> = vec![Vec::new(); ROOMS];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got
        .iter()
        .any(|g| g.last().map(String::as_str) != Some("end"))
    {
        assert!(
            Instant::now() < deadline,
            "the tablet's rooms in 30 s: {got:?}"
        );
        let line = tablet.line().await.expect("the tablet's session");
        let Some(said) = line.strip_prefix("ROOM #d") else {
            continue;
        };
        let (room, text) = said.split_once(" alice ").unwrap();
        got[room.parse::<usize>().unwrap()].push(text.to_string());
    }
    for (room, got) in got.iter().enumerate() {
        let from: usize = match got[0].as_str() {
            "end" => ROUNDS,
            first => first.parse().unwrap(),
        };
        let want: Vec<String> = (from..ROUNDS)
            .map(|i| i.to_string())
            .chain(["end".to_string()])
            .collect();
        assert_eq!(got, &want, "#d{room}: once each, in order");
    }
}

/// A guest gets a room's messages from its join on, as a member does, on every node: a
/// message committed on A before the guest's join on C, which C hears of only after that
/// join (its NATS link is cut meanwhile), reaches the member C had, never the guest. (A
/// guest had no start: C handed it the late message.) The guest's form of
/// `cluster_faults::a_message_committed_before_a_join_elsewhere_never_reaches_the_joiner`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_before_a_guests_join_elsewhere_never_reaches_it() {
    if !services::available() {
        return;
    }
    let pg = services::Postgres::start();
    let nats = services::Nats::start();
    let link = Proxy::to_nats(&nats).await;
    // C reconciles only after a reconnection: what it hears of A's messages comes then.
    let a = Node::start("a", &pg.url(), &nats.url());
    let c = Node::start_with(
        "c",
        &pg.url(),
        &link.nats_url(),
        &[("PARLEY_CLUSTER_RECONCILE_MS", "600000")],
    );
    let mut alice = text(a.addr, "alice").await;
    let mut bob = text(c.addr, "bob").await;
    for member in [&mut alice, &mut bob] {
        member.send("JOIN #r").await.unwrap();
        until(member, |l| l == "OK").await;
    }
    // C delivers the room (bob is in it) and hears A.
    alice.send("SAY #r hello").await.unwrap();
    let heard = until(&mut bob, |l| l.starts_with("ROOM ")).await;
    assert_eq!(heard, "ROOM #r alice hello");

    link.cut();
    alice.send("SAY #r before the guest").await.unwrap();
    alice.send("PING").await.unwrap();
    until(&mut alice, |l| l == "PONG").await;
    // A seed-004 session that joins without a nick: a guest.
    let mut guest = LineClient::connect(c.addr).await.unwrap();
    guest.send("/join #r").await.unwrap();
    until(&mut guest, |l| l == "> welcome to #r").await;
    link.heal();
    let heard = until(&mut bob, |l| l.starts_with("ROOM ")).await;
    assert_eq!(heard, "ROOM #r alice before the guest");
    alice.send("SAY #r after the guest").await.unwrap();
    let heard = until(&mut guest, |l| l.starts_with("> alice")).await;
    assert_eq!(
        heard, "> alice: after the guest",
        "the guest's first room message"
    );
    let heard = until(&mut bob, |l| l.starts_with("ROOM ")).await;
    assert_eq!(heard, "ROOM #r alice after the guest");
}

/// The numbers of the `prefix` lines `c` reads before a line `end` accepts (other `ROOM`
/// lines fail; notices are skipped); fails after 20 s.
async fn numbered_until(
    c: &mut LineClient,
    prefix: &str,
    end: impl Fn(&str) -> bool,
) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no end line in 20 s: {got:?}");
        let line = c.line().await.expect("a line");
        if end(&line) {
            return got;
        }
        if let Some(i) = line.strip_prefix(prefix) {
            got.push(i.parse().unwrap());
        } else {
            assert!(!line.starts_with("ROOM "), "{line:?} after {got:?}");
        }
    }
}

/// A member gets a room's messages up to its leave, on every node as on one: bob leaves
/// a room on A while alice, on B, pipelines a burst into it; carol, who stays, sees where
/// the leave falls among the burst (her `INFO bob left` line). bob must have had every
/// message she had before it, and nothing out of order or twice: relayed in the leave's
/// batch, or committed on B before the leave and relayed later. (Relays were performed
/// once the leave was applied, to the room's members without bob: he missed them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_gets_a_busy_rooms_messages_up_to_its_leave_from_another_node() {
    if !services::available() {
        return;
    }
    const ROUNDS: usize = 20;
    const BURST: usize = 300;
    let cluster = Cluster::start_with(2, &[("PARLEY_COMMANDS_PER_SECOND", "100000")]);
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    let mut alice = text(b, "alice").await;
    let mut bob = text(a, "bob").await;
    let mut carol = text(a, "carol").await;
    for member in [&mut alice, &mut carol] {
        member.send("JOIN #busy").await.unwrap();
        until(member, |l| l == "OK").await;
    }
    for round in 0..ROUNDS {
        bob.send("JOIN #busy").await.unwrap();
        until(&mut bob, |l| l == "OK").await;
        until(&mut carol, |l| l == "INFO bob joined #busy").await;
        // A line at a time: B commits the burst in many batches, A hears it as a stream.
        let sending = tokio::spawn(async move {
            for i in 0..BURST {
                alice
                    .send(&format!("SAY #busy r{round} m{i}"))
                    .await
                    .unwrap();
            }
            alice
        });
        // bob leaves once the burst reaches A: its rest is relayed there meanwhile.
        let prefix = format!("ROOM #busy alice r{round} m");
        let first = format!("{prefix}0");
        until(&mut bob, |l| l == first).await;
        bob.send("LEAVE #busy").await.unwrap();
        let mut had = vec![0];
        had.extend(numbered_until(&mut bob, &prefix, |l| l == "OK").await);
        // carol: the burst, and where bob's leave falls in it.
        let mut before = None;
        let mut got = Vec::new();
        while before.is_none() || got.last() != Some(&(BURST - 1)) {
            let line = until(&mut carol, |l| {
                l.starts_with("ROOM ") || l.starts_with("INFO ")
            })
            .await;
            if line == "INFO bob left #busy" {
                before = Some(got.len());
            } else if let Some(i) = line.strip_prefix(&prefix) {
                got.push(i.parse::<usize>().unwrap());
            }
        }
        assert_eq!(got, (0..BURST).collect::<Vec<_>>(), "round {round}: carol");
        alice = sending.await.unwrap();
        // Everything of the burst is dispatched on A now: what bob has yet is queued.
        bob.send("PING").await.unwrap();
        had.extend(numbered_until(&mut bob, &prefix, |l| l == "PONG").await);
        let before = before.unwrap();
        assert_eq!(
            had,
            (0..had.len()).collect::<Vec<_>>(),
            "round {round}: bob's, once, in order"
        );
        assert!(
            had.len() >= before,
            "round {round}: bob had {} messages, carol {before} before his leave",
            had.len()
        );
    }
}
