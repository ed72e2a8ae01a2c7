//! The JSON protocol over WebSocket at `/ws`, over real sockets, with an independent
//! client (tungstenite): the handshake and its origin check, login, rooms, DMs with text
//! and binary users, history, acks and catch-up after a reconnect, and the limits.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket client of the JSON protocol: answers by request id, pushes kept in order.
struct Ws {
    socket: WebSocketStream<TcpStream>,
    events: VecDeque<Value>,
    next_id: u64,
}

/// The handshake's request, from a page of `origin` (none: not a browser).
async fn handshake(
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(socket)
}

impl Ws {
    /// Connects as the server's own page would.
    async fn connect(addr: SocketAddr) -> Ws {
        let socket = handshake(addr, Some(&format!("http://{addr}")))
            .await
            .unwrap();
        Ws {
            socket,
            events: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Connects and logs in with a new account's password; returns the device token.
    async fn account(addr: SocketAddr, name: &str) -> (Ws, String) {
        let mut ws = Ws::connect(addr).await;
        let done = ws
            .ask(json!({"command": "REGISTER", "data": name, "password": "correct horse"}))
            .await;
        assert_eq!(done["success"], true, "{done}");
        let login = json!({"command": "LOGIN", "data": name, "password": "correct horse", "device": "browser", "want_token": true});
        let answer = ws.ask(login).await;
        let token = answer["data"]["token"]
            .as_str()
            .expect("a token")
            .to_string();
        (ws, token)
    }

    /// Logs in with a token on a new connection and subscribes with acks.
    async fn resume(addr: SocketAddr, token: &str) -> Ws {
        let mut ws = Ws::connect(addr).await;
        let answer = ws.ask(json!({"command": "RESUME", "token": token})).await;
        assert_eq!(answer["success"], true, "{answer}");
        let answer = ws.ask(json!({"command": "SUBSCRIBE", "acks": true})).await;
        assert_eq!(answer["success"], true, "{answer}");
        ws
    }

    async fn read(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message in time")?
                .ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Sends `request` with a fresh id; its answer (pushes read meanwhile are kept).
    async fn ask(&mut self, mut request: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = json!(id);
        self.socket
            .send(Message::Text(request.to_string()))
            .await
            .unwrap();
        loop {
            let value = self.read().await.expect("an answer");
            if value.get("event").is_some() {
                self.events.push_back(value);
            } else {
                assert_eq!(value["id"], json!(id), "answers come in order: {value}");
                return value;
            }
        }
    }

    /// The next push.
    async fn event(&mut self) -> Value {
        match self.events.pop_front() {
            Some(event) => event,
            None => self.read().await.expect("a push"),
        }
    }

    /// The next pushed message, skipping presence notices.
    async fn message(&mut self) -> Value {
        loop {
            let event = self.event().await;
            if event["event"] == "message" {
                return event;
            }
        }
    }
}

#[tokio::test]
async fn a_websocket_user_talks_with_text_and_binary_users_and_in_rooms() {
    let server = TestServer::start().await;
    let (mut alice, _) = Ws::account(server.addr, "alice").await;
    let (mut bob, _) = Ws::account(server.addr, "bob").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(
            ws.ask(json!({"command": "SUBSCRIBE"})).await["message"],
            "Subscribed"
        );
        assert_eq!(
            ws.ask(json!({"command": "JOIN", "room": "#general"})).await["message"],
            "Joined"
        );
    }
    let mut ncat = server.text_login("nick").await;
    let mut binary = server.login("bin").await;

    // A room message: stored, where the answer says, and pushed to the other member.
    let said = alice
        .ask(json!({"command": "SAY", "room": "#general", "data": "hello <b>room</b>"}))
        .await;
    assert_eq!(said["message"], "Message sent");
    let stored = &said["data"];
    assert!(
        stored["id"].as_i64().unwrap() > 0 && stored["seq"].as_i64().unwrap() > 0,
        "{said}"
    );
    let pushed = bob.message().await;
    assert_eq!(
        (pushed["kind"].as_str(), pushed["from"].as_str()),
        (Some("room"), Some("alice"))
    );
    assert_eq!(pushed["text"], "hello <b>room</b>");
    assert_eq!(
        (&pushed["id"], &pushed["seq"], &pushed["conversation"]),
        (&stored["id"], &stored["seq"], &stored["conversation"])
    );

    // DMs to a text user and a binary user, and their replies.
    assert_eq!(
        alice
            .ask(json!({"command": "DM", "to": "nick", "data": "hi nick"}))
            .await["success"],
        true
    );
    assert_eq!(ncat.line().await.unwrap(), "DM alice hi nick");
    assert_eq!(
        alice
            .ask(json!({"command": "DM", "to": "bin", "data": "hi bin"}))
            .await["success"],
        true
    );
    let (body, from, to, _) = binary.expect_push().await.unwrap();
    assert_eq!(
        (&body[..], from.as_str(), to.as_str()),
        (&b"hi bin"[..], "alice", "bin")
    );
    ncat.send("DM alice hello from ncat").await.unwrap();
    assert_eq!(
        binary
            .message(7, "bin", "alice", b"hello from binary", 1)
            .await
            .unwrap(),
        0x01
    );
    let first = alice.message().await;
    let second = alice.message().await;
    assert_eq!(
        (first["from"].as_str(), first["text"].as_str()),
        (Some("nick"), Some("hello from ncat"))
    );
    assert_eq!(
        (second["from"].as_str(), second["text"].as_str()),
        (Some("bin"), Some("hello from binary"))
    );

    // History and the conversation list.
    let history = alice
        .ask(json!({"command": "HISTORY", "target": "#general", "limit": 10}))
        .await;
    assert_eq!(history["data"][0]["text"], "hello <b>room</b>");
    let list = alice.ask(json!({"command": "CONVERSATIONS"})).await;
    let list = list["data"].as_array().unwrap().clone();
    let names: Vec<(&str, &str)> = list
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names[0], ("dm", "bin"), "most recent first: {names:?}");
    for expected in [("dm", "nick"), ("room", "#general")] {
        assert!(names.contains(&expected), "{expected:?} in {names:?}");
    }
    assert_eq!(list[0]["last"]["text"], "hello from binary");
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_device_gets_what_it_did_not_ack_once_in_order() {
    let server = TestServer::start().await;
    let (_first, token) = Ws::account(server.addr, "alice").await;
    drop(_first);
    let mut alice = Ws::resume(server.addr, &token).await;
    let mut bob = server.text_login("bob").await;
    for i in 1..=3 {
        bob.send(&format!("DM alice live {i}")).await.unwrap();
    }
    let mut last = Value::Null;
    for i in 1..=3 {
        last = alice.message().await;
        assert_eq!(last["text"], format!("live {i}"));
    }
    // Acks the first two only, then the socket goes.
    let (conversation, seq) = (last["conversation"].clone(), last["seq"].as_i64().unwrap());
    let ack = alice
        .ask(json!({"command": "ACK", "conversation": conversation, "seq": seq - 1}))
        .await;
    assert_eq!(ack["message"], "Acked");
    alice.socket.close(None).await.unwrap();
    drop(alice);
    for i in 4..=6 {
        bob.send(&format!("DM alice away {i}")).await.unwrap();
    }
    // Answered after the DMs before it are stored: they were sent while alice was away.
    assert_eq!(bob.ask("PING").await.unwrap(), "PONG");
    let mut back = Ws::resume(server.addr, &token).await;
    let texts: Vec<String> = {
        let mut texts = Vec::new();
        for _ in 0..4 {
            texts.push(back.message().await["text"].as_str().unwrap().to_string());
        }
        texts
    };
    assert_eq!(texts, ["live 3", "away 4", "away 5", "away 6"]);
    let ping = back.ask(json!({"command": "PING"})).await;
    assert_eq!(ping["message"], "PONG");
    assert!(
        back.events.iter().all(|e| e["event"] != "message"),
        "nothing twice: {:?}",
        back.events
    );
    server.stop().await;
}

/// A second tab of one browser is the same device: its login is refused in words of its
/// own (the web app offers to take the session over), and once the first tab's socket is
/// closed the same token logs in and catches up from the device's cursor.
#[tokio::test]
async fn a_second_session_of_one_device_is_told_the_device_is_connected() {
    let server = TestServer::start().await;
    let (mut first, token) = Ws::account(server.addr, "alice").await;
    let mut second = Ws::connect(server.addr).await;
    let busy =
        json!({"success": false, "message": "Device already connected", "data": "", "id": 1});
    let answer = second
        .ask(json!({"command": "RESUME", "token": token}))
        .await;
    assert_eq!(answer, busy);
    let login = json!({"command": "LOGIN", "data": "alice", "password": "correct horse", "device": "browser"});
    let answer = second.ask(login).await;
    assert_eq!(answer["message"], "Device already connected", "{answer}");
    // Another device of the account is welcome.
    let phone = json!({"command": "LOGIN", "data": "alice", "password": "correct horse", "device": "phone"});
    assert_eq!(
        Ws::connect(server.addr).await.ask(phone).await["success"],
        true
    );
    let mut bob = server.text_login("bob").await;
    bob.send("DM alice while handing over").await.unwrap();
    assert_eq!(bob.ask("PING").await.unwrap(), "PONG");

    // The first tab lets go: the second takes the device over and gets what it missed.
    first.socket.close(None).await.unwrap();
    while first.read().await.is_some() {}
    let mut taken = Ws::resume(server.addr, &token).await;
    assert_eq!(taken.message().await["text"], "while handing over");
    server.stop().await;
}

#[tokio::test]
async fn pages_of_other_origins_are_refused_unless_allowed() {
    let server =
        TestServer::start_with(|c| c.web_origins = vec!["https://chat.example.org".into()]).await;
    let refused = handshake(server.addr, Some("http://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert!(handshake(server.addr, Some("https://chat.example.org"))
        .await
        .is_ok());
    assert!(handshake(server.addr, None).await.is_ok(), "not a browser");
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_pings_are_answered() {
    let server = TestServer::start().await;
    let mut ws = Ws::connect(server.addr).await;
    ws.socket
        .send(Message::Ping(b"are you there".to_vec()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, ws.socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec()));
    let echo = ws.ask(json!({"command": "ECHO", "data": "x"})).await;
    assert_eq!(echo["data"], "x");
    let big = json!({"command": "ECHO", "data": "x".repeat(9000)}).to_string();
    ws.socket.send(Message::Text(big)).await.unwrap();
    let close = tokio::time::timeout(WAIT, ws.socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Nobody else noticed.
    let mut other = Ws::connect(server.addr).await;
    assert_eq!(
        other.ask(json!({"command": "PING"})).await["message"],
        "PONG"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_handshake_without_upgrade_is_refused_over_plain_http() {
    let server = TestServer::start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    server.stop().await;
}

/// The handshake and the first frames in one write: what hyper read past the handshake
/// reaches the session.
#[tokio::test]
async fn frames_sent_with_the_handshake_are_not_lost() {
    use bytes::BytesMut;
    use parley_proto::ws;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut out = BytesMut::from(
        &b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"[..],
    );
    for (i, command) in ["PING", "TIME", "PING"].iter().enumerate() {
        let request = json!({"command": command, "id": i}).to_string();
        ws::encode(
            ws::Opcode::Text,
            request.as_bytes(),
            Some([1, 2, 3, 4]),
            &mut out,
        );
    }
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break buf.split_to(end + 4);
        }
        let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during the handshake");
    };
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert!(String::from_utf8_lossy(&head).contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let mut answers = Vec::new();
    while answers.len() < 3 {
        match ws::decode(&mut buf, 1 << 20, false).unwrap() {
            Some(frame) => {
                let value: Value = serde_json::from_slice(&frame.payload).unwrap();
                answers.push((value["id"].clone(), value["message"].clone()));
            }
            None => {
                let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "closed before the answers");
            }
        }
    }
    assert_eq!(
        answers,
        [
            (json!(0), json!("PONG")),
            (json!(1), json!("Server time")),
            (json!(2), json!("PONG"))
        ]
    );
    server.stop().await;
}
