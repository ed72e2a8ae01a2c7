//! Seed 003's framed JSON (Simple-TCP-Server's protocol) on `listen_simpletcp`, spoken
//! byte for byte as its Flutter client speaks it: `i32 LE json_len | i64 LE payload_len |
//! JSON | payload`, a token from a first short STATE connection, then a main connection
//! and short extra ones for files.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use common::TestServer;
use parley_proto::simpletcp::{md5_hex, message_md5};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// One frame, laid out by hand (not by the server's codec).
fn frame(json: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(json.len() as i32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as i64).to_le_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(payload);
    out
}

fn request(kind: &str, body: Value, token: Option<i64>) -> Vec<u8> {
    let json = json!({"request": kind, "body": body, "tokenid": token});
    frame(json.to_string().as_bytes(), b"")
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// The client's password field: the MD5 of what the user typed.
fn passwd(typed: &str) -> String {
    md5_hex(typed.as_bytes())
}

/// A seed-003 client connection.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// FORWARDMSG pushes read while waiting for a reply.
    pushes: Vec<Value>,
    token: Option<i64>,
}

/// A frame as read: its JSON and payload.
struct Reply {
    json: Value,
    /// Bytes of JSON the frame said it held.
    json_len: usize,
    payload: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            pushes: Vec::new(),
            token: None,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn send(&mut self, kind: &str, body: Value) {
        let bytes = request(kind, body, self.token);
        self.write(&bytes).await;
    }

    /// The next frame, checked byte for byte: ASCII JSON, the seed's four keys in order.
    async fn frame(&mut self) -> Option<Reply> {
        loop {
            if self.buf.len() >= 12 {
                let json_len = i32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                let payload_len = i64::from_le_bytes(self.buf[4..12].try_into().unwrap());
                let total = 12 + json_len + payload_len as usize;
                if self.buf.len() >= total {
                    self.buf.advance(12);
                    let json = self.buf.split_to(json_len);
                    let payload = self.buf.split_to(payload_len as usize).to_vec();
                    assert!(json.is_ascii(), "{:?}", String::from_utf8_lossy(&json));
                    let text = std::str::from_utf8(&json).unwrap();
                    assert!(text.starts_with(r#"{"response":""#), "{text}");
                    let value: Value = serde_json::from_str(text).unwrap();
                    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
                    assert_eq!(keys.len(), 4, "{text}");
                    let order = ["\"status\":", "\"info\":", "\"body\":"];
                    let at: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
                    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
                    return Some(Reply {
                        json: value,
                        json_len,
                        payload,
                    });
                }
            }
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await;
            match read.expect("a frame in time").expect("read") {
                0 => return None,
                _ => continue,
            }
        }
    }

    /// The next reply that is not a push (pushes are kept for `push`); it must answer
    /// `kind`.
    async fn reply(&mut self, kind: &str) -> Reply {
        loop {
            let reply = self.frame().await.expect("a reply, not the end");
            if reply.json["response"] == "FORWARDMSG" {
                self.pushes.push(reply.json);
                continue;
            }
            assert_eq!(reply.json["response"], kind, "{}", reply.json);
            return reply;
        }
    }

    /// Sends a request and reads its reply (taking a TOKEN reply first, when one comes).
    async fn ask(&mut self, kind: &str, body: Value) -> Value {
        self.send(kind, body).await;
        let mut reply = self.frame_not_push().await;
        if reply.json["response"] == "TOKEN" && kind != "TOKEN" {
            self.token = Some(reply.json["body"]["tokenid"].as_i64().unwrap());
            reply = self.frame_not_push().await;
        }
        assert_eq!(reply.json["response"], kind, "{}", reply.json);
        reply.json
    }

    async fn frame_not_push(&mut self) -> Reply {
        loop {
            let reply = self.frame().await.expect("a reply, not the end");
            if reply.json["response"] != "FORWARDMSG" {
                return reply;
            }
            self.pushes.push(reply.json);
        }
    }

    /// The next FORWARDMSG push's message.
    async fn push(&mut self) -> Value {
        if !self.pushes.is_empty() {
            return self.pushes.remove(0)["body"].clone();
        }
        let reply = self.frame().await.expect("a push");
        assert_eq!(reply.json["response"], "FORWARDMSG", "{}", reply.json);
        assert_eq!(reply.json["status"], "OK");
        assert!(reply.payload.is_empty());
        reply.json["body"].clone()
    }
}

/// What the client does at start-up: a short STATE connection that gets a token.
async fn first_token(addr: SocketAddr) -> i64 {
    let mut c = Client::connect(addr).await;
    let state = c.ask("STATE", json!({})).await;
    assert_eq!(state["status"], "ERR");
    assert_eq!(state["info"], "Exception: User not logged in");
    assert_eq!(state["body"], Value::Null);
    c.token.expect("a TOKEN reply came first")
}

/// A registered user's main connection, and their id.
async fn account(server: &TestServer, name: &str) -> (Client, i64) {
    let addr = simpletcp_addr(server);
    let token = first_token(addr).await;
    let mut c = Client::connect(addr).await;
    c.token = Some(token);
    let identity = json!({"username": b64(name), "passwd": passwd_of(name), "newPasswd": null});
    let reply = c.ask("REGISTER", identity).await;
    assert_eq!(reply["status"], "OK", "{reply}");
    assert_eq!(reply["info"], Value::Null);
    assert_eq!(reply["body"]["username"], b64(name));
    let id = reply["body"]["userid"].as_i64().unwrap();
    (c, id)
}

fn passwd_of(name: &str) -> String {
    passwd(&("pw-of-".to_string() + name))
}

fn simpletcp_addr(server: &TestServer) -> SocketAddr {
    server.running.as_ref().unwrap().simpletcp_addr.unwrap()
}

async fn start() -> TestServer {
    TestServer::start_with(|c| c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap())).await
}

/// What the client does with a FETCHMSG reply: it keeps the messages and acknowledges the
/// first (newest) one's timestamp.
async fn fetch_and_ack(c: &mut Client) -> Vec<Value> {
    let fetched = c.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["status"], "OK", "{fetched}");
    let messages = fetched["body"]["messages"].as_array().unwrap().clone();
    if let Some(newest) = messages.first() {
        c.send("ACKFETCH", json!({"timestamp": newest["timestamp"]}))
            .await;
    }
    messages
}

/// A text message as the client makes it.
fn text_message(from: i64, to: i64, text: &str, timestamp: i64) -> Value {
    json!({
        "userid": from, "targetid": to, "contenttype": "plaintext", "content": b64(text),
        "timestamp": timestamp, "md5encoded": message_md5(text.as_bytes(), from, to, timestamp),
        "filemd5": null,
    })
}

#[tokio::test]
async fn lengths_split_across_reads_and_requests_sharing_a_write_are_all_answered() {
    let server = start().await;
    let mut c = Client::connect(simpletcp_addr(&server)).await;
    // One byte per write: every header split every way.
    for byte in request("STATE", json!({}), None) {
        c.write(&[byte]).await;
    }
    let token = c.frame().await.unwrap().json;
    assert_eq!(token["response"], "TOKEN");
    assert_eq!(token["status"], "OK");
    let token = token["body"]["tokenid"].as_i64().unwrap();
    assert!(token > 0 && token < 1 << 53);
    assert_eq!(c.reply("STATE").await.json["status"], "ERR");

    // Three requests in one write, answered in order.
    let mut write = Vec::new();
    let identity = json!({"username": b64("ann"), "passwd": passwd("x"), "newPasswd": null});
    write.extend(request("REGISTER", identity, Some(token)));
    write.extend(request("STATE", json!({}), Some(token)));
    write.extend(request("FETCHCONTACT", Value::Null, Some(token)));
    c.write(&write).await;
    assert_eq!(c.reply("REGISTER").await.json["status"], "OK");
    let state = c.reply("STATE").await.json;
    assert_eq!(state["body"]["username"], b64("ann"));
    let contacts = c.reply("FETCHCONTACT").await.json;
    assert_eq!(
        contacts["body"],
        json!({"contacts": [], "pending": [], "requesting": []})
    );
}

#[tokio::test]
async fn the_seed_clients_whole_session() {
    let server = start().await;
    let addr = simpletcp_addr(&server);
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (mut bob, bob_id) = account(&server, "bøb").await;
    assert_ne!(alice_id, bob_id);

    // A restart of the app: STATE on a short connection with the stored token.
    let mut again = Client::connect(addr).await;
    again.token = alice.token;
    let state = again.ask("STATE", json!({})).await;
    assert_eq!(state["body"]["userid"], alice_id);
    drop(again);

    // Contacts: alice asks, the server follows with the new lists; bob asks back.
    let found = alice
        .ask("SEARCHUSR", json!({"username": b64("bøb")}))
        .await;
    assert_eq!(found["body"]["userid"], bob_id);
    let added = alice.ask("ADDCONTACT", json!({"userid": bob_id})).await;
    assert_eq!(
        (&added["status"], &added["body"]),
        (&json!("OK"), &Value::Null)
    );
    let lists = alice.reply("FETCHCONTACT").await.json;
    assert_eq!(lists["body"]["pending"][0]["userid"], bob_id);
    let lists = bob.ask("FETCHCONTACT", json!({})).await;
    assert_eq!(lists["body"]["requesting"][0]["userid"], alice_id);
    // An unknown id: an ERR, and no lists after it.
    let unknown = bob.ask("ADDCONTACT", json!({"userid": 12345})).await;
    assert_eq!(unknown["info"], "Exception: User not found");
    bob.ask("ADDCONTACT", json!({"userid": alice_id})).await;
    let lists = bob.reply("FETCHCONTACT").await.json;
    assert_eq!(lists["body"]["contacts"][0]["username"], b64("alice"));
    let profile = bob.ask("PROFILE", json!({"userid": alice_id})).await;
    assert_eq!(profile["body"]["username"], b64("alice"));

    // A text message: OK with its id to the sender, pushed to the receiver as sent.
    let first = text_message(alice_id, bob_id, "hello bøb", 1_700_000_000_000);
    let sent = alice.ask("SENDMSG", first.clone()).await;
    assert_eq!(sent["status"], "OK", "{sent}");
    assert_eq!(sent["body"], json!({"md5encoded": first["md5encoded"]}));
    assert_eq!(bob.push().await, first);
    let second = text_message(bob_id, alice_id, "hi alice", 1_700_000_000_500);
    bob.ask("SENDMSG", second.clone()).await;
    assert_eq!(alice.push().await, second);

    // FETCHMSG: newest first, since what this token acknowledged. A token's first fetch is
    // the whole history; ACKFETCH acknowledges what the last reply held.
    let token = first_token(addr).await;
    let mut phone = Client::connect(addr).await;
    phone.token = Some(token);
    let login = json!({"username": b64("bøb"), "passwd": passwd_of("bøb"), "newPasswd": null});
    assert_eq!(phone.ask("LOGIN", login).await["body"]["userid"], bob_id);
    let fetched = phone.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"], json!([second, first]));
    let fetched = bob.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"], json!([second, first]));
    bob.send("ACKFETCH", json!({"timestamp": second["timestamp"]}))
        .await;
    let third = text_message(alice_id, bob_id, "still there?", 1_700_000_000_900);
    alice.ask("SENDMSG", third.clone()).await;
    assert_eq!(bob.push().await, third);
    // Every device of bob's; a device new to the server may first be sent again what it
    // missed before (pushes carry the same ids as FETCHMSG, so the client keeps one copy).
    let mut on_phone = Vec::new();
    while on_phone.last() != Some(&third) && on_phone.len() < 3 {
        on_phone.push(phone.push().await);
    }
    assert_eq!(on_phone.last(), Some(&third), "{on_phone:?}");
    let fetched = bob.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"], json!([third]));
    bob.send("ACKFETCH", json!({"timestamp": 1_700_000_000_900_i64}))
        .await;
    let fetched = bob.ask("FETCHMSG", json!({})).await;
    assert_eq!(
        fetched["body"]["messages"],
        json!([]),
        "no reply to ACKFETCH"
    );

    // A 10 MiB file, sent on an extra connection with the same token, as the client does.
    let data: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let file_md5 = md5_hex(&data);
    let ts = 1_700_000_001_000_i64;
    let file = json!({
        "userid": alice_id, "targetid": bob_id, "contenttype": "file", "content": b64("report.pdf"),
        "timestamp": ts, "md5encoded": message_md5(b"report.pdf", alice_id, bob_id, ts),
        "filemd5": file_md5,
    });
    let mut upload = Client::connect(addr).await;
    upload.token = alice.token;
    let json = json!({"request": "SENDMSG", "body": file, "tokenid": alice.token});
    upload
        .write(&frame(json.to_string().as_bytes(), &data))
        .await;
    let sent = upload.reply("SENDMSG").await.json;
    assert_eq!(sent["status"], "OK", "{sent}");
    drop(upload);
    let pushed = bob.push().await;
    assert_eq!(pushed, file);
    assert_eq!(
        alice.push().await,
        file,
        "the sender's other connections too"
    );
    let found = alice.ask("FINDFILE", json!({"filemd5": file_md5})).await;
    assert_eq!(found["status"], "OK");
    // bob downloads it on an extra connection: the exact bytes as the payload.
    let mut download = Client::connect(addr).await;
    download.token = bob.token;
    download
        .send("FETCHFILE", json!({"msgmd5": file["md5encoded"]}))
        .await;
    // A message to bob while the download waits to be read (pushes do not break it).
    let during = text_message(alice_id, bob_id, "did you get it?", ts + 1);
    assert_eq!(alice.ask("SENDMSG", during.clone()).await["status"], "OK");
    assert_eq!(bob.push().await, during);
    let fetched = download.reply("FETCHFILE").await;
    assert_eq!(fetched.json["status"], "OK");
    assert_eq!(fetched.json["body"], Value::Null);
    assert!(fetched.payload == data, "the file's bytes, exactly");

    // LOGOUT unbinds the token: STATE then says so.
    let out = alice.ask("LOGOUT", json!({})).await;
    assert_eq!((&out["status"], &out["body"]), (&json!("OK"), &Value::Null));
    assert_eq!(alice.ask("STATE", json!({})).await["status"], "ERR");
}

#[tokio::test]
async fn bad_requests_get_the_seeds_err_replies_and_nothing_else_breaks() {
    let server = start().await;
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (_bob, bob_id) = account(&server, "bob").await;

    // Not JSON, wrong types, an unknown type: ERR, the connection goes on.
    alice.write(&frame(b"{nope", b"")).await;
    let reply = alice.reply("UNKNOWN").await.json;
    assert_eq!(reply["status"], "ERR");
    assert!(reply["info"].as_str().unwrap().starts_with("Exception: "));
    let wrong = json!({"request": "PROFILE", "body": {"userid": "7"}, "tokenid": alice.token});
    alice.write(&frame(wrong.to_string().as_bytes(), b"")).await;
    let reply = alice.reply("PROFILE").await.json;
    assert_eq!(
        (&reply["status"], &reply["body"]),
        (&json!("ERR"), &Value::Null)
    );
    alice.send("DANCE", json!({})).await;
    let reply = alice.reply("UNKNOWN").await.json;
    assert_eq!(reply["info"], "Unkown request");

    // SENDMSG only as oneself.
    let forged = text_message(bob_id, alice_id, "I am bob", 1);
    let reply = alice.ask("SENDMSG", forged).await;
    assert_eq!(reply["status"], "ERR");
    // A file whose bytes do not have the announced MD5 is refused.
    let ts = 5;
    let file = json!({
        "userid": alice_id, "targetid": bob_id, "contenttype": "file", "content": b64("a.txt"),
        "timestamp": ts, "md5encoded": message_md5(b"a.txt", alice_id, bob_id, ts),
        "filemd5": md5_hex(b"other bytes"),
    });
    let json = json!({"request": "SENDMSG", "body": file, "tokenid": alice.token});
    alice
        .write(&frame(json.to_string().as_bytes(), b"these bytes"))
        .await;
    let reply = alice.reply("SENDMSG").await.json;
    assert_eq!(reply["status"], "ERR", "{reply}");
    let fetched = alice.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"], json!([]), "nothing was stored");

    // A wrong token: a new one, as for a first request.
    let mut stranger = Client::connect(simpletcp_addr(&server)).await;
    stranger.token = Some(alice.token.unwrap() ^ 1);
    let reply = stranger.ask("STATE", json!({})).await;
    assert_eq!(reply["status"], "ERR");
    assert_ne!(stranger.token, alice.token);

    // A payload length over the bound: an ERR, then the connection ends.
    let mut huge = Vec::new();
    huge.extend_from_slice(&2i32.to_le_bytes());
    huge.extend_from_slice(&(1i64 << 40).to_le_bytes());
    stranger.write(&huge).await;
    let reply = stranger.reply("UNKNOWN").await.json;
    assert_eq!(reply["status"], "ERR");
    assert!(stranger.frame().await.is_none(), "closed");

    // alice's connection is unaffected.
    assert_eq!(
        alice.ask("STATE", json!({})).await["body"]["userid"],
        alice_id
    );
}

#[tokio::test]
async fn seed_003_users_and_text_and_json_users_exchange_direct_messages() {
    let server = start().await;
    let (mut alice, alice_id) = account(&server, "alice").await;
    let mut carol = server.text_login("carol").await;
    server.register("dave").await;
    let mut dave = server.json().await;
    let login = json!({"command": "LOGIN", "data": "dave", "password": common::PASSWORD});
    let answer: Value = serde_json::from_str(&dave.ask(&login.to_string()).await.unwrap()).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    let subscribed = dave.ask(r#"{"command":"SUBSCRIBE"}"#).await.unwrap();
    assert!(subscribed.contains("true"), "{subscribed}");

    // A text user writes: a FORWARDMSG with the text user's id, the text as base64.
    carol.send("DM alice hi from ncat").await.unwrap();
    let pushed = alice.push().await;
    let carol_id = pushed["userid"].as_i64().unwrap();
    assert_eq!(pushed["targetid"], alice_id);
    assert_eq!(pushed["contenttype"], "plaintext");
    assert_eq!(pushed["content"], b64("hi from ncat"));
    let ts = pushed["timestamp"].as_i64().unwrap();
    assert_eq!(
        pushed["md5encoded"],
        message_md5(b"hi from ncat", carol_id, alice_id, ts)
    );
    // And alice answers by that id.
    let reply = text_message(alice_id, carol_id, "hi carol", 1_700_000_000_000);
    assert_eq!(alice.ask("SENDMSG", reply).await["status"], "OK");
    assert_eq!(carol.line().await.unwrap(), "DM alice hi carol");

    // A JSON user, found by name.
    let found = alice
        .ask("SEARCHUSR", json!({"username": b64("dave")}))
        .await;
    let dave_id = found["body"]["userid"].as_i64().unwrap();
    let message = text_message(alice_id, dave_id, "hi dave", 1_700_000_000_100);
    assert_eq!(alice.ask("SENDMSG", message).await["status"], "OK");
    let event: Value = serde_json::from_str(&dave.line().await.unwrap()).unwrap();
    assert_eq!(
        (&event["from"], &event["text"]),
        (&json!("alice"), &json!("hi dave"))
    );
    dave.send(r#"{"command":"DM","to":"alice","data":"hi alice"}"#)
        .await
        .unwrap();
    let pushed = alice.push().await;
    assert_eq!(
        (&pushed["userid"], &pushed["content"]),
        (&json!(dave_id), &json!(b64("hi alice")))
    );
}

#[tokio::test]
async fn a_binary_user_and_a_seed_003_user_exchange_direct_messages() {
    let server = start().await;
    let (mut alice, alice_id) = account(&server, "alice").await;
    let mut erin = server.login("erin").await;
    // A binary client's time is its own (Unix ns here): seed 003 sees it in ms.
    let time = 1_700_000_000_123_456_789;
    let code = erin
        .message(2, "erin", "alice", b"hi from binary", time)
        .await;
    assert_eq!(code.unwrap(), parley_proto::binary::code::OK);
    let pushed = alice.push().await;
    assert_eq!(pushed["content"], b64("hi from binary"));
    assert_eq!(pushed["timestamp"], 1_700_000_000_123_i64);
    let erin_id = pushed["userid"].as_i64().unwrap();
    let reply = text_message(alice_id, erin_id, "hi erin", 1_700_000_000_200);
    assert_eq!(alice.ask("SENDMSG", reply).await["status"], "OK");
    let (body, from, to, time) = erin.expect_push().await.unwrap();
    assert_eq!(
        (&body[..], from.as_str(), to.as_str()),
        (&b"hi erin"[..], "alice", "erin")
    );
    assert_eq!(time, 1_700_000_000_200_000_000, "parley keeps Unix ns");
}

#[tokio::test]
async fn profiles_and_password_changes() {
    let server = start().await;
    let addr = simpletcp_addr(&server);
    let (mut alice, alice_id) = account(&server, "alice").await;
    let avatar = b64("not really a png");
    let info = json!({"userid": alice_id, "username": b64("alice"), "avatar": avatar});
    let changed = alice.ask("MODIFYPROFILE", info).await;
    assert_eq!(changed["body"]["avatar"], avatar);
    let profile = alice.ask("PROFILE", json!({"userid": alice_id})).await;
    assert_eq!(profile["body"]["avatar"], avatar);

    let wrong =
        json!({"username": b64("alice"), "passwd": passwd("nope"), "newPasswd": passwd("new")});
    let refused = alice.ask("MODIFYPASSWD", wrong).await;
    assert_eq!(refused["info"], "Exception: Invalid password");
    let change =
        json!({"username": b64("alice"), "passwd": passwd_of("alice"), "newPasswd": passwd("new")});
    assert_eq!(alice.ask("MODIFYPASSWD", change).await["status"], "OK");

    // Another device logs in with the new password only; the name shows as sent.
    let mut phone = Client::connect(addr).await;
    phone.token = Some(first_token(addr).await);
    let old = json!({"username": b64("alice"), "passwd": passwd_of("alice"), "newPasswd": null});
    assert_eq!(
        phone.ask("LOGIN", old).await["info"],
        "Exception: Invalid password"
    );
    let nobody = json!({"username": b64("nobody"), "passwd": passwd("x"), "newPasswd": null});
    assert_eq!(
        phone.ask("LOGIN", nobody).await["info"],
        "Exception: User not found"
    );
    let new = json!({"username": b64("alice"), "passwd": passwd("new"), "newPasswd": null});
    let login = phone.ask("LOGIN", new).await;
    assert_eq!(login["body"]["userid"], alice_id);
    let taken = json!({"username": b64("alice"), "passwd": passwd("x"), "newPasswd": null});
    let mut other = Client::connect(addr).await;
    let refused = other.ask("REGISTER", taken).await;
    assert_eq!(refused["info"], "Exception: Username already exists");
}

#[tokio::test]
async fn no_clock_hides_a_stored_message_from_fetchmsg() {
    let server = start().await;
    let addr = simpletcp_addr(&server);
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (mut bob, bob_id) = account(&server, "bob").await;

    // alice's clock is far ahead, bob's far behind; both messages are stored.
    let ahead = text_message(alice_id, bob_id, "from the future", 4_000_000_000_000);
    assert_eq!(alice.ask("SENDMSG", ahead.clone()).await["status"], "OK");
    assert_eq!(bob.push().await, ahead);
    let behind = text_message(bob_id, alice_id, "from the past", 1_000);
    assert_eq!(bob.ask("SENDMSG", behind.clone()).await["status"], "OK");
    assert_eq!(alice.push().await, behind);
    // A send refused after its body was read moves nothing either.
    let mut bad = text_message(alice_id, bob_id, "x", 5_000_000_000_000);
    bad["contenttype"] = json!("image");
    assert_eq!(alice.ask("SENDMSG", bad).await["status"], "ERR");

    // alice's app starts again with her token: what bob sent is there (her own message,
    // whose send succeeded, is not sent back).
    let mut again = Client::connect(addr).await;
    again.token = alice.token;
    assert_eq!(fetch_and_ack(&mut again).await, vec![behind.clone()]);
    assert_eq!(fetch_and_ack(&mut again).await, Vec::<Value>::new());

    // Two more in the very millisecond alice acknowledged, and one before it: all come.
    let same = text_message(bob_id, alice_id, "same millisecond", 1_000);
    let earlier = text_message(bob_id, alice_id, "even earlier", 999);
    for m in [&same, &earlier] {
        assert_eq!(bob.ask("SENDMSG", m.clone()).await["status"], "OK");
    }
    assert_eq!(fetch_and_ack(&mut again).await, vec![same, earlier]);
    assert_eq!(fetch_and_ack(&mut again).await, Vec::<Value>::new());

    // An acknowledgement older than a message of the reply keeps that one to come again.
    let late = text_message(bob_id, alice_id, "late", 2_000);
    assert_eq!(bob.ask("SENDMSG", late.clone()).await["status"], "OK");
    let fetched = again.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"], json!([late]));
    again.send("ACKFETCH", json!({"timestamp": 1_999})).await;
    assert_eq!(fetch_and_ack(&mut again).await, vec![late]);
}

#[tokio::test]
async fn a_backlog_larger_than_a_frame_comes_a_bounded_reply_at_a_time_none_skipped() {
    const MAX_FRAME: usize = 2_000;
    let server = TestServer::start_with(|c| {
        c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap());
        c.max_frame_bytes = MAX_FRAME;
    })
    .await;
    let addr = simpletcp_addr(&server);
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (bob, bob_id) = account(&server, "bob").await;
    // 40 messages of about 250 bytes of JSON each, from a clock that runs backwards.
    let mut sent = Vec::new();
    for i in 0..40_i64 {
        let text = format!("message {i:02} {}", "x".repeat(100));
        let m = text_message(alice_id, bob_id, &text, 1_700_000_000_000 - i);
        assert_eq!(alice.ask("SENDMSG", m.clone()).await["status"], "OK");
        sent.push(m);
    }

    // bob's app starts: one FETCHMSG, then it acknowledges each reply as it comes; the
    // replies after the first come unasked until the backlog is through.
    let mut phone = Client::connect(addr).await;
    phone.token = bob.token;
    phone.send("FETCHMSG", json!({})).await;
    let mut got: Vec<Value> = Vec::new();
    let mut replies = 0;
    while got.len() < sent.len() && replies < sent.len() {
        let reply = phone.frame_not_push().await;
        assert_eq!(reply.json["response"], "FETCHMSG", "{}", reply.json);
        assert!(reply.json_len <= MAX_FRAME, "{} bytes", reply.json_len);
        let messages = reply.json["body"]["messages"].as_array().unwrap().clone();
        assert!(!messages.is_empty());
        let stamps: Vec<i64> = messages
            .iter()
            .map(|m| m["timestamp"].as_i64().unwrap())
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {stamps:?}"
        );
        phone
            .send("ACKFETCH", json!({"timestamp": messages[0]["timestamp"]}))
            .await;
        got.extend(messages);
        replies += 1;
    }
    assert!(replies > 1, "the backlog did not fit one reply");
    got.sort_by_key(|m| std::cmp::Reverse(m["timestamp"].as_i64().unwrap()));
    assert_eq!(got, sent, "every message once");
    // Through: the last acknowledgement brings nothing more.
    let fetched = phone.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"], json!([]));
}

#[tokio::test]
async fn a_logged_in_token_outlives_a_restart_and_a_logged_out_one_does_not() {
    let mut server = start().await;
    let (alice, alice_id) = account(&server, "alice").await;
    let (bob, bob_id) = account(&server, "bob").await;
    let (alice_token, bob_token) = (alice.token, bob.token);
    drop((alice, bob));
    let simpletcp =
        |c: &mut parley_server::Config| c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap());
    server.restart_with(simpletcp).await;

    // The app starts again with the token it kept: no new token, still alice.
    let mut c = Client::connect(simpletcp_addr(&server)).await;
    c.token = alice_token;
    let state = c.ask("STATE", json!({})).await;
    assert_eq!(state["body"]["userid"], alice_id, "{state}");
    assert_eq!(c.token, alice_token, "no TOKEN reply");
    // It works as before: a message to bob is sent.
    let m = text_message(alice_id, bob_id, "after the restart", 1_700_000_000_000);
    assert_eq!(c.ask("SENDMSG", m).await["status"], "OK");
    let out = c.ask("LOGOUT", json!({})).await;
    assert_eq!(out["status"], "OK");
    drop(c);

    server.restart_with(simpletcp).await;
    // alice logged out: her token is gone. bob's still holds, and sees the message.
    let mut c = Client::connect(simpletcp_addr(&server)).await;
    c.token = alice_token;
    let state = c.ask("STATE", json!({})).await;
    assert_eq!(state["info"], "Exception: User not logged in");
    assert_ne!(c.token, alice_token, "a new token");
    let mut b = Client::connect(simpletcp_addr(&server)).await;
    b.token = bob_token;
    let fetched = b.ask("FETCHMSG", json!({})).await;
    assert_eq!(b.token, bob_token);
    let messages = fetched["body"]["messages"].as_array().unwrap();
    assert_eq!(messages[0]["content"], b64("after the restart"));
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_simpletcp_idle_timeout_ms() {
    let server = TestServer::start_with(|c| {
        c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap());
        c.simpletcp_idle_timeout_ms = 300;
    })
    .await;
    let mut c = Client::connect(simpletcp_addr(&server)).await;
    assert_eq!(c.ask("STATE", json!({})).await["status"], "ERR");
    // Nothing more is sent: the server closes the connection (silently).
    assert!(c.frame().await.is_none(), "closed");
}

/// A file SENDMSG frame whose payload is `data`, from `from` to `to`.
fn file_frame(token: Option<i64>, from: i64, to: i64, data: &[u8]) -> Vec<u8> {
    let ts = 1_700_000_002_000_i64;
    let file = json!({
        "userid": from, "targetid": to, "contenttype": "file", "content": b64("slow.bin"),
        "timestamp": ts, "md5encoded": message_md5(b"slow.bin", from, to, ts),
        "filemd5": md5_hex(data),
    });
    let json = json!({"request": "SENDMSG", "body": file, "tokenid": token});
    frame(json.to_string().as_bytes(), data)
}

#[tokio::test]
async fn a_payload_on_a_slow_link_is_read_while_it_progresses_and_cut_once_it_stalls() {
    // Each 64 KiB of payload restarts the request deadline (here 1 s).
    let server = TestServer::start_with(|c| {
        c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap());
        c.request_timeout_ms = 1_000;
    })
    .await;
    let addr = simpletcp_addr(&server);
    let (alice, alice_id) = account(&server, "alice").await;
    let (_bob, bob_id) = account(&server, "bob").await;
    let data: Vec<u8> = (0..512 * 1024).map(|i| (i * 13 % 256) as u8).collect();
    let bytes = file_frame(alice.token, alice_id, bob_id, &data);
    let (head, payload) = bytes.split_at(bytes.len() - data.len());

    // A slow link: 64 KiB every 400 ms, 3.2 s for the whole frame (the link's pace, not a
    // wait for the server).
    let mut upload = Client::connect(addr).await;
    upload.write(head).await;
    for piece in payload.chunks(64 * 1024) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        upload.write(piece).await;
    }
    let sent = upload.reply("SENDMSG").await.json;
    assert_eq!(sent["status"], "OK", "{sent}");

    // A payload that stops coming is cut once the deadline passes.
    let mut stalled = Client::connect(addr).await;
    stalled.write(head).await;
    stalled.write(&payload[..100 * 1024]).await;
    assert!(stalled.frame().await.is_none(), "closed");
}

#[tokio::test]
async fn fetchfile_finds_a_file_message_older_than_max_history_by_its_index() {
    let server = TestServer::start_with(|c| {
        c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap());
        c.max_history = 5;
    })
    .await;
    let addr = simpletcp_addr(&server);
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (bob, bob_id) = account(&server, "bob").await;
    let data: Vec<u8> = (0..300 * 1024).map(|i| (i * 31 % 256) as u8).collect();
    let mut upload = Client::connect(addr).await;
    upload.token = alice.token;
    upload
        .write(&file_frame(alice.token, alice_id, bob_id, &data))
        .await;
    assert_eq!(upload.reply("SENDMSG").await.json["status"], "OK");
    drop(upload);
    // More than `max_history` messages after it: the file message is not among the last.
    for i in 0..8 {
        let m = text_message(
            alice_id,
            bob_id,
            &format!("after {i}"),
            1_700_000_003_000 + i,
        );
        assert_eq!(alice.ask("SENDMSG", m).await["status"], "OK");
    }
    let ts = 1_700_000_002_000_i64;
    let msgmd5 = message_md5(b"slow.bin", alice_id, bob_id, ts);
    let mut download = Client::connect(addr).await;
    download.token = bob.token;
    download.send("FETCHFILE", json!({"msgmd5": msgmd5})).await;
    let fetched = download.reply("FETCHFILE").await;
    assert_eq!(fetched.json["status"], "OK", "{}", fetched.json);
    assert!(fetched.payload == data, "the file's bytes, exactly");
}

#[tokio::test]
async fn an_ackfetch_covers_only_the_reply_written_on_its_own_connection() {
    let server = start().await;
    let addr = simpletcp_addr(&server);
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (bob, bob_id) = account(&server, "bob").await;
    let sent: Vec<Value> = (0..2)
        .map(|i| text_message(alice_id, bob_id, &format!("m{i}"), 1_700_000_000_000 + i))
        .collect();
    for m in &sent {
        assert_eq!(alice.ask("SENDMSG", m.clone()).await["status"], "OK");
    }

    // One connection of bob's token is offered the messages and goes without
    // acknowledging them (its app was closed while the reply was on its way).
    let mut gone = Client::connect(addr).await;
    gone.token = bob.token;
    let fetched = gone.ask("FETCHMSG", json!({})).await;
    assert_eq!(fetched["body"]["messages"].as_array().unwrap().len(), 2);
    drop(gone);

    // An acknowledgement on another connection of the token covers nothing it was not
    // written: the messages come to it whole.
    let mut other = Client::connect(addr).await;
    other.token = bob.token;
    other
        .send("ACKFETCH", json!({"timestamp": i64::MAX / 2}))
        .await;
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(fetch_and_ack(&mut other).await, newest_first);
    assert_eq!(fetch_and_ack(&mut other).await, Vec::<Value>::new());
}

#[tokio::test]
async fn fetchfile_of_unknown_messages_searches_the_history_at_most_once_a_second() {
    let server = start().await;
    let (mut alice, alice_id) = account(&server, "alice").await;
    let (_bob, bob_id) = account(&server, "bob").await;
    let m = text_message(alice_id, bob_id, "hello", 1_700_000_000_000);
    assert_eq!(alice.ask("SENDMSG", m).await["status"], "OK");

    // Each miss is answered as one (never a false answer), but a connection asking for
    // messages it does not have again and again is slowed to one search a second.
    let started = std::time::Instant::now();
    for i in 0..3 {
        let msgmd5 = md5_hex(format!("no such message {i}").as_bytes());
        let reply = alice.ask("FETCHFILE", json!({"msgmd5": msgmd5})).await;
        assert_eq!(reply["status"], "ERR", "{reply}");
        assert_eq!(reply["info"], "Exception: File not found");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "three searches in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn payloads_arriving_at_once_share_the_servers_upload_budget() {
    // A 1 MiB budget over every connection; each file is 700 KiB.
    let server = TestServer::start_with(|c| {
        c.listen_simpletcp = Some("127.0.0.1:0".parse().unwrap());
        c.simpletcp_upload_bytes = 1 << 20;
    })
    .await;
    let addr = simpletcp_addr(&server);
    let (alice, alice_id) = account(&server, "alice").await;
    let (_bob, bob_id) = account(&server, "bob").await;
    let file = |seed: usize| -> (Vec<u8>, usize) {
        let data: Vec<u8> = (0..700 * 1024).map(|i| (i * seed % 251) as u8).collect();
        let bytes = file_frame(alice.token, alice_id, bob_id, &data);
        let head = bytes.len() - data.len();
        (bytes, head)
    };

    // The first upload's header and half its payload: it holds 700 KiB of the budget.
    let (first, head) = file(7);
    let mut slow = Client::connect(addr).await;
    slow.write(&first[..head + 350 * 1024]).await;
    // Another 700 KiB announced meanwhile is refused at its header, with an ERR.
    let (second, head2) = file(11);
    let mut refused = Client::connect(addr).await;
    refused.write(&second[..head2]).await;
    let err = refused.frame().await.expect("an ERR").json;
    assert_eq!(err["status"], "ERR", "{err}");
    assert!(
        err["info"].as_str().unwrap().contains("Server busy"),
        "{err}"
    );
    assert!(refused.frame().await.is_none(), "closed");

    // The first upload completes; the budget comes back for the next one.
    slow.write(&first[head + 350 * 1024..]).await;
    assert_eq!(slow.reply("SENDMSG").await.json["status"], "OK");
    let mut next = Client::connect(addr).await;
    next.write(&second).await;
    assert_eq!(next.reply("SENDMSG").await.json["status"], "OK");

    // An upload cut off halfway gives its share back when its connection ends.
    let (third, head3) = file(13);
    let mut cut = Client::connect(addr).await;
    cut.write(&third[..head3 + 100 * 1024]).await;
    drop(cut);
    let mut accepted = None;
    for _ in 0..100 {
        let mut again = Client::connect(addr).await;
        again.write(&third).await;
        // (Pushes of the earlier uploads may come first: alice's token is on it.)
        let reply = again.frame_not_push().await.json;
        if reply["status"] == "OK" {
            accepted = Some(reply);
            break;
        }
        assert!(
            reply["info"].as_str().unwrap().contains("Server busy"),
            "{reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = accepted.expect("the cut upload's share came back within 5 s");
    assert_eq!(accepted["response"], "SENDMSG", "{accepted}");
}
