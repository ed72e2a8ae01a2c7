//! Contacts and files over real sockets (issue #7): user search, contact requests and their
//! answers with notices, the contacts-only DM option; uploads in chunks (resumed,
//! de-duplicated, verified), messages carrying files, downloads (resumed, members only), the
//! size limit, and a 100 MiB round trip that never holds the file in memory.

mod common;

use common::{bytes as b, parse, quit, request, PASSWORD};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use common::TestServer;
use parley_client::{BinaryClient, LineClient};
use parley_proto::binary::{code, contact, ContactEntry, Frame, UserEntry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long a client listens to prove that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

/// The largest chunk the server takes in one request.
const CHUNK: usize = 60 * 1024;

/// Chunk requests a client keeps in flight.
const WINDOW: usize = 32;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Helpers: connections
// ---------------------------------------------------------------------------------------

/// A binary connection logged in to the account `name` as `device`.
async fn device(server: &TestServer, name: &str, device: &str) -> BinaryClient {
    let mut c = server.client().await;
    let login = Frame::LoginPassword {
        cid: 1,
        username: b(name),
        password: b(PASSWORD),
        device: b(device),
        flags: 0,
    };
    assert_eq!(request(&mut c, login).await, code::OK, "{name} on {device}");
    c
}

/// A JSON connection logged in (password-less) as `name`, subscribed to pushes.
async fn json_login(server: &TestServer, name: &str) -> LineClient {
    let mut c = server.json().await;
    let login = parse(
        &c.ask(&json!({"command": "LOGIN", "data": name}).to_string())
            .await
            .unwrap(),
    );
    assert_eq!(login["success"], true, "{login}");
    let subscribe = parse(
        &c.ask(&json!({"command": "SUBSCRIBE"}).to_string())
            .await
            .unwrap(),
    );
    assert_eq!(subscribe["success"], true, "{subscribe}");
    c
}

/// Sends a multi-line command and returns its lines up to and including the final `OK`.
async fn listing(c: &mut LineClient, command: &str) -> Vec<String> {
    c.send(command).await.unwrap();
    let mut lines = Vec::new();
    loop {
        let line = c.line().await.unwrap();
        let done = line == "OK" || line.starts_with("ERR");
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// alice and bob logged in (text), with alice's contact request to bob accepted.
async fn contacts_alice_and_bob(server: &TestServer) -> (LineClient, LineClient) {
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(alice.ask("CONTACT ADD bob").await.unwrap(), "OK");
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice wants to be your contact"
    );
    assert_eq!(bob.ask("CONTACT ACCEPT alice").await.unwrap(), "OK");
    assert_eq!(
        alice.line().await.unwrap(),
        "INFO bob accepted your contact request"
    );
    (alice, bob)
}

// ---------------------------------------------------------------------------------------
// Helpers: file content and transfers
// ---------------------------------------------------------------------------------------

/// Pseudo-random content made on demand, chunk by chunk, so no test ever holds a whole
/// file: byte `i` is byte `i % 8` of a SplitMix64 output for word `i / 8`.
struct Content {
    seed: u64,
    size: u64,
    sha256: String,
}

impl Content {
    /// Content of `size` bytes; its SHA-256 is computed by streaming it once.
    fn new(seed: u64, size: u64) -> Content {
        let mut hasher = Sha256::new();
        let mut content = Content {
            seed,
            size,
            sha256: String::new(),
        };
        for offset in (0..size).step_by(CHUNK) {
            hasher.update(content.chunk(offset));
        }
        content.sha256 = hex(hasher);
        content
    }

    /// The bytes from `offset` (a multiple of 8) up to the next chunk boundary or the end.
    fn chunk(&self, offset: u64) -> Bytes {
        assert_eq!(offset % 8, 0);
        let len = (self.size - offset).min(CHUNK as u64) as usize;
        let mut out = Vec::with_capacity(len + 8);
        let mut word = offset / 8;
        while out.len() < len {
            out.extend_from_slice(&splitmix64(self.seed, word).to_le_bytes());
            word += 1;
        }
        out.truncate(len);
        Bytes::from(out)
    }
}

fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `FileOffer`: returns the server's (have, offset).
async fn offer(c: &mut BinaryClient, content: &Content) -> (u8, u64) {
    let frame = Frame::FileOffer {
        cid: 1,
        sha256: b(&content.sha256),
        size: content.size,
    };
    c.send(&frame).await.unwrap();
    let status = match c.recv().await.unwrap() {
        Frame::FileStatus {
            cid: 1,
            have,
            offset,
        } => (have, offset),
        other => panic!("expected a FileStatus, got {other:?}"),
    };
    assert_eq!(c.expect_response(1).await.unwrap(), code::OK);
    status
}

fn chunk_frame(cid: u32, content: &Content, offset: u64) -> Frame {
    Frame::FileChunk {
        cid,
        sha256: b(&content.sha256),
        size: content.size,
        offset,
        data: content.chunk(offset),
    }
}

/// Uploads bytes `from..to` of `content` with up to `WINDOW` chunks in flight. Every chunk
/// but the last must be answered OK; returns the last one's code.
async fn upload_range(c: &mut BinaryClient, content: &Content, from: u64, to: u64) -> u16 {
    let offsets: Vec<u64> = (from..to).step_by(CHUNK).collect();
    let cid = |i: usize| 1000 + i as u32;
    let mut codes = Vec::with_capacity(offsets.len());
    for (i, &offset) in offsets.iter().enumerate() {
        if i >= WINDOW {
            codes.push(c.expect_response(cid(i - WINDOW)).await.unwrap());
        }
        c.send(&chunk_frame(cid(i), content, offset)).await.unwrap();
    }
    for i in offsets.len().saturating_sub(WINDOW)..offsets.len() {
        codes.push(c.expect_response(cid(i)).await.unwrap());
    }
    let last = codes.pop().expect("at least one chunk");
    assert!(
        codes.iter().all(|&code| code == code::OK),
        "every chunk before the last is OK: {codes:?}"
    );
    last
}

/// Uploads all of `content` from `from`; returns the last chunk's code.
async fn upload(c: &mut BinaryClient, content: &Content, from: u64) -> u16 {
    upload_range(c, content, from, content.size).await
}

/// Offers `content` (new to the server) and uploads it whole.
async fn store(c: &mut BinaryClient, content: &Content) {
    assert_eq!(offer(c, content).await, (0, 0), "a new upload starts at 0");
    assert_eq!(upload(c, content, 0).await, code::OK, "stored");
}

fn send_file_frame(cid: u32, target_kind: u8, target: &str, content: &Content) -> Frame {
    Frame::SendFile {
        cid,
        target_kind,
        target: b(target),
        sha256: b(&content.sha256),
        name: b("report.pdf"),
        mime: b("application/pdf"),
        caption: b("the numbers"),
        time: 42,
    }
}

/// Sends the stored `content` to the user `to` as report.pdf; returns the response code.
async fn send_file(c: &mut BinaryClient, to: &str, content: &Content) -> u16 {
    request(c, send_file_frame(2, 1, to, content)).await
}

/// The text of a message carrying `content` as `send_file_frame` names it.
fn file_text(content: &Content) -> String {
    format!(
        "[file name=\"report.pdf\" size={} type=application/pdf sha256={}] the numbers",
        content.size, content.sha256
    )
}

/// Downloads bytes `from..to` of `hash` with up to `WINDOW` requests in flight, feeding
/// them to `hasher` in order.
async fn download(c: &mut BinaryClient, hash: &str, from: u64, to: u64, hasher: &mut Sha256) {
    let offsets: Vec<u64> = (from..to).step_by(CHUNK).collect();
    let cid = |i: usize| 5000 + i as u32;
    let length = |offset: u64| (to - offset).min(CHUNK as u64);
    for (i, &offset) in offsets.iter().enumerate() {
        if i >= WINDOW {
            let (at, want) = (offsets[i - WINDOW], length(offsets[i - WINDOW]));
            hasher.update(file_data(c, cid(i - WINDOW), at, want).await);
        }
        let frame = Frame::Download {
            cid: cid(i),
            sha256: b(hash),
            offset,
            length: length(offset) as u32,
        };
        c.send(&frame).await.unwrap();
    }
    let unanswered = offsets.len().saturating_sub(WINDOW);
    for (i, &at) in offsets.iter().enumerate().skip(unanswered) {
        hasher.update(file_data(c, cid(i), at, length(at)).await);
    }
}

/// The `FileData` answering the download `cid` (at `offset`, `len` bytes), then its OK.
async fn file_data(c: &mut BinaryClient, cid: u32, offset: u64, len: u64) -> Bytes {
    let data = match c.recv().await.unwrap() {
        Frame::FileData {
            cid: got,
            offset: at,
            data,
        } if got == cid && at == offset => data,
        other => panic!("expected FileData for {cid} at {offset}, got {other:?}"),
    };
    assert_eq!(data.len() as u64, len, "bytes at {offset}");
    assert_eq!(c.expect_response(cid).await.unwrap(), code::OK);
    data
}

/// The SHA-256 of all of `hash` (of `size` bytes) as downloaded by `c`.
async fn download_hash(c: &mut BinaryClient, hash: &str, size: u64) -> String {
    let mut hasher = Sha256::new();
    download(c, hash, 0, size, &mut hasher).await;
    hex(hasher)
}

/// A single `Download` of 1 KiB at 0 that must be refused; returns its code.
async fn refused_download(c: &mut BinaryClient, hash: &str) -> u16 {
    let frame = Frame::Download {
        cid: 9,
        sha256: b(hash),
        offset: 0,
        length: 1024,
    };
    request(c, frame).await
}

/// How many files the server's content store holds (`files/<2 hex>/<sha256>`).
fn stored_files(server: &TestServer) -> usize {
    let root = server.dir.path().join("files");
    std::fs::read_dir(root)
        .unwrap()
        .map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap().count())
        .sum()
}

/// This process's resident memory, in bytes (the in-process server included).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// The highest resident memory seen while it runs: a thread samples every 5 ms.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss()));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        PeakRss { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed).max(rss())
    }
}

// ---------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn text_search_lists_the_users_whose_names_start_with_the_prefix() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let _albert = server.text_login("albert").await;
    server.register("alfred").await;
    let _bob = server.text_login("bob").await;

    assert_eq!(
        listing(&mut alice, "SEARCH al").await,
        [
            "FOUND albert online",
            "FOUND alfred offline",
            "FOUND alice online",
            "OK"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn binary_search_answers_a_users_frame_before_the_ok() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;
    server.register("bobby").await;

    let search = Frame::Search {
        cid: 3,
        prefix: b("bo"),
        limit: 10,
    };
    alice.send(&search).await.unwrap();

    let names = match alice.recv().await.unwrap() {
        Frame::Users { cid: 3, users } => users
            .into_iter()
            .map(|u| (String::from_utf8(u.name.to_vec()).unwrap(), u.online))
            .collect::<Vec<_>>(),
        other => panic!("expected Users, got {other:?}"),
    };
    assert_eq!(names, [("bob".to_string(), true), ("bobby".into(), false)]);
    assert_eq!(alice.expect_response(3).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_search_returns_at_most_max_search_results() {
    let server = TestServer::start_with(|c| c.max_search_results = 2).await;
    let mut alice = server.login("alice").await;
    for name in ["user1", "user2", "user3"] {
        server.register(name).await;
    }

    let search = Frame::Search {
        cid: 3,
        prefix: b("user"),
        limit: 100,
    };
    alice.send(&search).await.unwrap();

    let users = match alice.recv().await.unwrap() {
        Frame::Users { cid: 3, users } => users,
        other => panic!("expected Users, got {other:?}"),
    };
    let names: Vec<&[u8]> = users.iter().map(|u: &UserEntry| &u.name[..]).collect();
    assert_eq!(names, [&b"user1"[..], b"user2"]);
    assert_eq!(alice.expect_response(3).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn json_search_lists_names_with_presence() {
    let server = TestServer::start().await;
    let mut alice = json_login(&server, "alice").await;
    server.register("carol").await;

    let found = parse(
        &alice
            .ask(&json!({"command": "SEARCH", "data": "ca"}).to_string())
            .await
            .unwrap(),
    );

    assert_eq!(found["success"], true, "{found}");
    assert_eq!(found["data"], json!([{"name": "carol", "online": false}]));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Contact requests and answers (text)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_contact_request_is_seen_live_by_the_other() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;

    assert_eq!(alice.ask("CONTACT ADD bob").await.unwrap(), "OK");

    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice wants to be your contact"
    );
    assert_eq!(
        listing(&mut bob, "CONTACTS").await,
        ["CONTACT alice pending online", "OK"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_to_an_offline_user_is_pending_in_their_contacts_at_next_login() {
    let server = TestServer::start().await;
    server.register("bob").await;
    let mut alice = server.text_login("alice").await;

    assert_eq!(alice.ask("CONTACT ADD bob").await.unwrap(), "OK");
    let mut bob = server.text().await;
    assert_eq!(
        bob.ask(&format!("LOGIN bob {PASSWORD} phone"))
            .await
            .unwrap(),
        "OK"
    );

    assert_eq!(
        listing(&mut bob, "CONTACTS").await,
        ["CONTACT alice pending online", "OK"]
    );
    server.stop().await;
}

#[tokio::test]
async fn contacts_lists_each_contact_with_its_state_and_presence() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = contacts_alice_and_bob(&server).await;
    server.register("carol").await;
    assert_eq!(alice.ask("CONTACT ADD carol").await.unwrap(), "OK");
    let mut dave = server.text_login("dave").await;
    assert_eq!(dave.ask("CONTACT ADD alice").await.unwrap(), "OK");
    assert_eq!(
        alice.line().await.unwrap(),
        "INFO dave wants to be your contact"
    );

    assert_eq!(
        listing(&mut alice, "CONTACTS").await,
        [
            "CONTACT bob accepted online",
            "CONTACT carol requested offline",
            "CONTACT dave pending online",
            "OK"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn contacts_shows_a_contact_offline_once_they_quit() {
    let server = TestServer::start().await;
    let (mut alice, bob) = contacts_alice_and_bob(&server).await;

    quit(bob).await;

    assert_eq!(alice.line().await.unwrap(), "INFO bob disconnected");
    assert_eq!(
        listing(&mut alice, "CONTACTS").await,
        ["CONTACT bob accepted offline", "OK"]
    );
    server.stop().await;
}

#[tokio::test]
async fn accepting_tells_the_requester_and_both_sides_are_accepted() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = contacts_alice_and_bob(&server).await;

    assert_eq!(
        listing(&mut alice, "CONTACTS").await,
        ["CONTACT bob accepted online", "OK"]
    );
    assert_eq!(
        listing(&mut bob, "CONTACTS").await,
        ["CONTACT alice accepted online", "OK"]
    );
    server.stop().await;
}

#[tokio::test]
async fn asking_back_someone_who_asked_first_accepts() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(alice.ask("CONTACT ADD bob").await.unwrap(), "OK");
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice wants to be your contact"
    );

    assert_eq!(bob.ask("CONTACT ADD alice").await.unwrap(), "OK");

    assert_eq!(
        alice.line().await.unwrap(),
        "INFO bob accepted your contact request"
    );
    server.stop().await;
}

#[tokio::test]
async fn declining_tells_the_requester_and_forgets_the_request() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(alice.ask("CONTACT ADD bob").await.unwrap(), "OK");
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice wants to be your contact"
    );

    assert_eq!(bob.ask("CONTACT DECLINE alice").await.unwrap(), "OK");

    assert_eq!(
        alice.line().await.unwrap(),
        "INFO bob declined your contact request"
    );
    assert_eq!(listing(&mut alice, "CONTACTS").await, ["OK"]);
    assert_eq!(listing(&mut bob, "CONTACTS").await, ["OK"]);
    server.stop().await;
}

#[tokio::test]
async fn removing_a_contact_tells_the_other_and_empties_both_lists() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = contacts_alice_and_bob(&server).await;

    assert_eq!(alice.ask("CONTACT REMOVE bob").await.unwrap(), "OK");

    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice removed you from their contacts"
    );
    assert_eq!(listing(&mut alice, "CONTACTS").await, ["OK"]);
    assert_eq!(listing(&mut bob, "CONTACTS").await, ["OK"]);
    server.stop().await;
}

#[tokio::test]
async fn accepting_a_request_that_was_never_made_is_not_a_contact() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;

    assert_eq!(
        bob.ask("CONTACT ACCEPT alice").await.unwrap(),
        "ERR not-a-contact"
    );
    alice.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_contact_request_to_an_unknown_user_is_user_not_found() {
    let server = TestServer::start().await;
    let mut alice = server.text_login("alice").await;

    assert_eq!(
        alice.ask("CONTACT ADD nobody").await.unwrap(),
        "ERR user-not-found"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Contacts over JSON and binary
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn json_contact_request_is_pushed_to_the_subscribed_other_and_listed() {
    let server = TestServer::start().await;
    let mut alice = json_login(&server, "alice").await;
    let mut bob = json_login(&server, "bob").await;

    let asked = alice
        .ask(&json!({"command": "CONTACT_REQUEST", "to": "bob"}).to_string())
        .await
        .unwrap();
    assert_eq!(asked, r#"{"success":true,"message":"Done","data":""}"#);

    let pushed = parse(&bob.line().await.unwrap());
    assert_eq!(
        pushed,
        json!({"event": "contact_requested", "user": "alice"})
    );
    let list = parse(
        &bob.ask(&json!({"command": "CONTACTS"}).to_string())
            .await
            .unwrap(),
    );
    let alice_entry = &list["data"][0];
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        (
            &alice_entry["name"],
            &alice_entry["state"],
            &alice_entry["online"]
        ),
        (&json!("alice"), &json!("pending"), &json!(true))
    );
    server.stop().await;
}

#[tokio::test]
async fn json_accept_decline_and_remove_answer_done() {
    let server = TestServer::start().await;
    let mut alice = json_login(&server, "alice").await;
    let mut bob = json_login(&server, "bob").await;
    let done = r#"{"success":true,"message":"Done","data":""}"#;
    let command = |name: &str| json!({"command": name, "to": "alice"}).to_string();
    alice
        .send(&json!({"command": "CONTACT_REQUEST", "to": "bob"}).to_string())
        .await
        .unwrap();
    assert_eq!(alice.line().await.unwrap(), done);
    assert_eq!(
        parse(&bob.line().await.unwrap())["event"],
        "contact_requested"
    );

    assert_eq!(bob.ask(&command("CONTACT_ACCEPT")).await.unwrap(), done);
    assert_eq!(
        parse(&alice.line().await.unwrap())["event"],
        "contact_accepted"
    );
    assert_eq!(bob.ask(&command("CONTACT_REMOVE")).await.unwrap(), done);
    assert_eq!(
        parse(&alice.line().await.unwrap())["event"],
        "contact_removed"
    );
    let declined = parse(&bob.ask(&command("CONTACT_DECLINE")).await.unwrap());
    assert_eq!(declined["success"], false, "nothing left to decline");
    server.stop().await;
}

#[tokio::test]
async fn binary_request_answer_list_and_remove() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let request_bob = Frame::ContactRequest {
        cid: 2,
        name: b("bob"),
    };
    assert_eq!(request(&mut alice, request_bob).await, code::OK);
    let accept = Frame::ContactAnswer {
        cid: 3,
        name: b("alice"),
        accept: 1,
    };
    assert_eq!(request(&mut bob, accept).await, code::OK);

    alice.send(&Frame::ListContacts { cid: 4 }).await.unwrap();
    let contacts = match alice.recv().await.unwrap() {
        Frame::Contacts { cid: 4, contacts } => contacts,
        other => panic!("expected Contacts, got {other:?}"),
    };
    let listed: Vec<(&[u8], u8, bool)> = contacts
        .iter()
        .map(|c: &ContactEntry| (&c.name[..], c.state, c.online))
        .collect();
    assert_eq!(listed, [(&b"bob"[..], contact::ACCEPTED, true)]);
    assert_eq!(alice.expect_response(4).await.unwrap(), code::OK);

    let remove = Frame::ContactRemove {
        cid: 5,
        name: b("bob"),
    };
    assert_eq!(request(&mut alice, remove).await, code::OK);
    bob.send(&Frame::ListContacts { cid: 6 }).await.unwrap();
    assert_eq!(
        bob.recv().await.unwrap(),
        Frame::Contacts {
            cid: 6,
            contacts: vec![]
        }
    );
    assert_eq!(bob.expect_response(6).await.unwrap(), code::OK);
    server.stop().await;
}

#[tokio::test]
async fn binary_declining_a_request_that_was_never_made_is_not_contact() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;

    let decline = Frame::ContactAnswer {
        cid: 2,
        name: b("bob"),
        accept: 0,
    };
    assert_eq!(request(&mut alice, decline).await, code::NOT_CONTACT);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// The contacts-only option
// ---------------------------------------------------------------------------------------

fn contacts_only(c: &mut parley_server::Config) {
    c.contacts_only_dms = true;
}

#[tokio::test]
async fn contacts_only_refuses_a_text_dm_to_a_stranger() {
    let server = TestServer::start_with(contacts_only).await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;

    assert_eq!(
        alice.ask("DM bob hello stranger").await.unwrap(),
        "ERR not-a-contact"
    );
    bob.no_line_within(QUIET).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn contacts_only_refuses_a_dm_while_the_request_is_pending() {
    let server = TestServer::start_with(contacts_only).await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(alice.ask("CONTACT ADD bob").await.unwrap(), "OK");
    assert_eq!(
        bob.line().await.unwrap(),
        "INFO alice wants to be your contact"
    );

    assert_eq!(
        alice.ask("DM bob please accept").await.unwrap(),
        "ERR not-a-contact"
    );
    assert_eq!(
        bob.ask("DM alice who are you?").await.unwrap(),
        "ERR not-a-contact"
    );
    server.stop().await;
}

#[tokio::test]
async fn contacts_only_lets_a_dm_through_after_acceptance() {
    let server = TestServer::start_with(contacts_only).await;
    let (mut alice, mut bob) = contacts_alice_and_bob(&server).await;

    alice.send("DM bob hello friend").await.unwrap();

    assert_eq!(bob.line().await.unwrap(), "DM alice hello friend");
    server.stop().await;
}

#[tokio::test]
async fn contacts_only_refuses_a_binary_dm_with_not_contact() {
    let server = TestServer::start_with(contacts_only).await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;

    let sent = alice.message(2, "alice", "bob", b"hello", 0).await.unwrap();

    assert_eq!(sent, code::NOT_CONTACT);
    server.stop().await;
}

#[tokio::test]
async fn contacts_only_refuses_a_json_dm_saying_why() {
    let server = TestServer::start_with(contacts_only).await;
    let mut alice = json_login(&server, "alice").await;
    let _bob = server.text_login("bob").await;

    let answer = parse(
        &alice
            .ask(&json!({"command": "DM", "to": "bob", "data": "hello"}).to_string())
            .await
            .unwrap(),
    );

    assert_eq!(answer["success"], false, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("contacts"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn contacts_only_still_lets_everyone_talk_in_rooms() {
    let server = TestServer::start_with(contacts_only).await;
    let mut alice = server.text_login("alice").await;
    let mut bob = server.text_login("bob").await;
    assert_eq!(alice.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN #a").await.unwrap(), "OK");
    assert_eq!(alice.line().await.unwrap(), "INFO bob joined #a");

    alice.send("SAY #a hi all").await.unwrap();

    assert_eq!(bob.line().await.unwrap(), "ROOM #a alice hi all");
    server.stop().await;
}

#[tokio::test]
async fn contacts_only_refuses_a_file_sent_to_a_stranger() {
    let server = TestServer::start_with(contacts_only).await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;
    let content = Content::new(1, 1000);
    store(&mut alice, &content).await;

    assert_eq!(
        send_file(&mut alice, "bob", &content).await,
        code::NOT_CONTACT
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Files: messages that carry them
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_recipient_sees_the_file_message_with_name_size_type_and_hash() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let content = Content::new(1, 3 * CHUNK as u64 + 17);
    store(&mut alice, &content).await;

    assert_eq!(send_file(&mut alice, "bob", &content).await, code::OK);

    let (message, from, to, time) = bob.expect_push().await.unwrap();
    assert_eq!(
        String::from_utf8(message.to_vec()).unwrap(),
        file_text(&content)
    );
    assert_eq!((from.as_str(), to.as_str(), time), ("alice", "bob", 42));
    server.stop().await;
}

#[tokio::test]
async fn a_text_recipient_gets_the_file_message_as_a_dm_line() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.text_login("bob").await;
    let content = Content::new(1, 5000);
    store(&mut alice, &content).await;

    assert_eq!(send_file(&mut alice, "bob", &content).await, code::OK);

    assert_eq!(
        bob.line().await.unwrap(),
        format!("DM alice {}", file_text(&content))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_senders_other_device_sees_the_file_message() {
    let server = TestServer::start().await;
    server.register("alice").await;
    let mut phone = device(&server, "alice", "phone").await;
    let mut laptop = device(&server, "alice", "laptop").await;
    let _bob = server.login("bob").await;
    let content = Content::new(1, 5000);
    store(&mut phone, &content).await;

    assert_eq!(send_file(&mut phone, "bob", &content).await, code::OK);

    let (message, from, to, _) = laptop.expect_push().await.unwrap();
    assert_eq!(
        String::from_utf8(message.to_vec()).unwrap(),
        file_text(&content)
    );
    assert_eq!((from.as_str(), to.as_str()), ("alice", "bob"));
    server.stop().await;
}

#[tokio::test]
async fn sending_a_file_that_was_never_uploaded_is_a_bad_transfer() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let content = Content::new(1, 5000);

    assert_eq!(
        send_file(&mut alice, "bob", &content).await,
        code::BAD_TRANSFER
    );
    bob.send(&Frame::CorrelationTest { cid: 7 }).await.unwrap();
    assert_eq!(bob.expect_response(7).await.unwrap(), code::OK, "no push");
    server.stop().await;
}

#[tokio::test]
async fn json_upload_send_and_download_of_a_small_file() {
    let server = TestServer::start().await;
    let mut alice = json_login(&server, "alice").await;
    let mut bob = server.text_login("bob").await;
    let content = Content::new(3, 10_000);
    let ask = |value: Value| value.to_string();
    let offered = parse(
        &alice
            .ask(&ask(
                json!({"command": "FILE_OFFER", "sha256": content.sha256, "size": content.size}),
            ))
            .await
            .unwrap(),
    );
    assert_eq!(offered["data"], json!({"have": false, "offset": 0}));

    // Base64 chunks small enough for a JSON line.
    let bytes: Vec<u8> = (0..content.size)
        .step_by(CHUNK)
        .flat_map(|offset| content.chunk(offset))
        .collect();
    let mut last = Value::Null;
    for (i, piece) in bytes.chunks(4000).enumerate() {
        let chunk = json!({"command": "FILE_CHUNK", "sha256": content.sha256, "size": content.size,
            "offset": i * 4000, "data": BASE64.encode(piece)});
        last = parse(&alice.ask(&ask(chunk)).await.unwrap());
    }
    assert_eq!(last["data"], json!({"complete": true}), "{last}");
    let sent = alice
        .ask(&ask(
            json!({"command": "SEND_FILE", "to": "bob", "sha256": content.sha256,
            "name": "a.bin", "type": "application/octet-stream", "data": ""}),
        ))
        .await
        .unwrap();
    assert_eq!(sent, r#"{"success":true,"message":"File sent","data":""}"#);
    assert_eq!(
        bob.line().await.unwrap(),
        format!(
            "DM alice [file name=\"a.bin\" size=10000 type=application/octet-stream sha256={}]",
            content.sha256
        )
    );

    let downloaded = parse(
        &alice
            .ask(&ask(json!({"command": "DOWNLOAD", "sha256": content.sha256, "offset": 100, "length": 50})))
            .await
            .unwrap(),
    );
    let data = BASE64
        .decode(downloaded["data"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, &bytes[100..150]);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Files: uploads
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upload_resumes_after_a_dropped_connection() {
    let server = TestServer::start().await;
    let mut first = server.login("alice").await;
    let content = Content::new(7, 20 * CHUNK as u64 + 999);
    let half = 10 * CHUNK as u64;
    assert_eq!(offer(&mut first, &content).await, (0, 0));
    assert_eq!(upload_range(&mut first, &content, 0, half).await, code::OK);
    first.stream().set_zero_linger().unwrap();
    drop(first);

    let mut again = server.login("alice").await;
    assert_eq!(
        offer(&mut again, &content).await,
        (0, half),
        "resumes where the server stopped"
    );
    assert_eq!(upload(&mut again, &content, half).await, code::OK);

    let _bob = server.login("bob").await;
    assert_eq!(send_file(&mut again, "bob", &content).await, code::OK);
    assert_eq!(
        download_hash(&mut again, &content.sha256, content.size).await,
        content.sha256
    );
    server.stop().await;
}

#[tokio::test]
async fn a_second_upload_of_the_same_content_sends_no_bytes() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let mut carol = server.login("carol").await;
    let content = Content::new(1, 4 * CHUNK as u64);
    store(&mut alice, &content).await;

    assert_eq!(offer(&mut bob, &content).await, (1, content.size));
    assert_eq!(send_file(&mut bob, "carol", &content).await, code::OK);

    let (message, from, _, _) = carol.expect_push().await.unwrap();
    assert_eq!(
        String::from_utf8(message.to_vec()).unwrap(),
        file_text(&content)
    );
    assert_eq!(from, "bob");
    let hash = download_hash(&mut carol, &content.sha256, content.size).await;
    assert_eq!(hash, content.sha256);
    assert_eq!(stored_files(&server), 1, "one copy in the store");
    server.stop().await;
}

#[tokio::test]
async fn a_corrupted_upload_is_refused_and_forgotten() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;
    let real = Content::new(1, 5 * CHUNK as u64 + 5);
    let forged = Content {
        sha256: real.sha256.clone(),
        ..Content::new(2, real.size)
    };

    assert_eq!(offer(&mut alice, &forged).await, (0, 0));
    assert_eq!(upload(&mut alice, &forged, 0).await, code::CORRUPT);

    assert_eq!(offer(&mut alice, &real).await, (0, 0), "nothing kept");
    assert_eq!(
        send_file(&mut alice, "bob", &real).await,
        code::BAD_TRANSFER,
        "nothing stored to send"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_chunk_at_the_wrong_offset_is_a_bad_transfer() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let content = Content::new(1, 3 * CHUNK as u64);
    assert_eq!(offer(&mut alice, &content).await, (0, 0));

    let skipping = chunk_frame(2, &content, CHUNK as u64);
    assert_eq!(request(&mut alice, skipping).await, code::BAD_TRANSFER);

    assert_eq!(offer(&mut alice, &content).await, (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn an_offer_above_max_file_bytes_is_a_bad_transfer() {
    let server = TestServer::start_with(|c| c.max_file_bytes = 1000).await;
    let mut alice = server.login("alice").await;
    let fits = Content::new(1, 1000);
    let too_big = Content::new(1, 1001);

    let refused = Frame::FileOffer {
        cid: 2,
        sha256: b(&too_big.sha256),
        size: too_big.size,
    };
    assert_eq!(request(&mut alice, refused).await, code::BAD_TRANSFER);
    assert_eq!(offer(&mut alice, &fits).await, (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn the_default_limit_refuses_an_offer_of_one_byte_over_100_mib() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let hash = "ab".repeat(32);
    let offer = |size| Frame::FileOffer {
        cid: 2,
        sha256: b(&hash),
        size,
    };

    assert_eq!(
        request(&mut alice, offer(100 * MIB + 1)).await,
        code::BAD_TRANSFER
    );
    alice.send(&offer(100 * MIB)).await.unwrap();
    assert_eq!(
        alice.recv().await.unwrap(),
        Frame::FileStatus {
            cid: 2,
            have: 0,
            offset: 0
        }
    );
    assert_eq!(alice.expect_response(2).await.unwrap(), code::OK);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Files: downloads
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_download_resumes_from_an_offset() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let content = Content::new(5, 12 * CHUNK as u64 + 321);
    store(&mut alice, &content).await;
    assert_eq!(send_file(&mut alice, "bob", &content).await, code::OK);
    bob.expect_push().await.unwrap();
    let half = 6 * CHUNK as u64;
    let mut hasher = Sha256::new();
    download(&mut bob, &content.sha256, 0, half, &mut hasher).await;
    bob.stream().set_zero_linger().unwrap();
    drop(bob);

    let mut again = server.login("bob").await;
    download(&mut again, &content.sha256, half, content.size, &mut hasher).await;

    assert_eq!(hex(hasher), content.sha256);
    server.stop().await;
}

#[tokio::test]
async fn a_download_past_the_end_is_empty() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;
    let content = Content::new(5, 5000);
    store(&mut alice, &content).await;
    assert_eq!(send_file(&mut alice, "bob", &content).await, code::OK);

    let at_end = Frame::Download {
        cid: 3,
        sha256: b(&content.sha256),
        offset: content.size,
        length: 1024,
    };
    alice.send(&at_end).await.unwrap();

    assert_eq!(file_data(&mut alice, 3, content.size, 0).await.len(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_download_is_refused_to_a_user_outside_the_conversation() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let _bob = server.login("bob").await;
    let mut carol = server.login("carol").await;
    let content = Content::new(1, 5000);
    store(&mut alice, &content).await;
    assert_eq!(send_file(&mut alice, "bob", &content).await, code::OK);

    assert_eq!(
        refused_download(&mut carol, &content.sha256).await,
        code::FORBIDDEN
    );
    server.stop().await;
}

#[tokio::test]
async fn an_uploaded_file_not_yet_sent_cannot_be_downloaded() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let content = Content::new(1, 5000);
    store(&mut alice, &content).await;

    assert_eq!(
        refused_download(&mut alice, &content.sha256).await,
        code::FORBIDDEN
    );
    server.stop().await;
}

#[tokio::test]
async fn a_room_member_downloads_a_file_sent_to_the_room_and_a_non_member_cannot() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    let mut carol = server.login("carol").await;
    for c in [&mut alice, &mut bob] {
        let join = Frame::Join {
            cid: 2,
            room: b("#files"),
        };
        assert_eq!(request(c, join).await, code::OK);
    }
    let content = Content::new(9, 7 * CHUNK as u64 + 1);
    store(&mut alice, &content).await;

    let to_room = send_file_frame(3, 2, "#files", &content);
    assert_eq!(request(&mut alice, to_room).await, code::OK);

    let (message, from, to, _) = bob.expect_push().await.unwrap();
    assert_eq!(
        String::from_utf8(message.to_vec()).unwrap(),
        file_text(&content)
    );
    assert_eq!((from.as_str(), to.as_str()), ("alice", "#files"));
    let hash = download_hash(&mut bob, &content.sha256, content.size).await;
    assert_eq!(hash, content.sha256);
    assert_eq!(
        refused_download(&mut carol, &content.sha256).await,
        code::FORBIDDEN
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// A 100 MiB round trip
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_file_round_trips_with_its_hash_and_memory_stays_flat() {
    let server = TestServer::start().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    // Verifying 100 MiB on the last chunk takes a while in debug builds.
    alice.timeout = Duration::from_secs(60);
    let content = Content::new(100, 100 * MIB);
    let started = Instant::now();
    let before = rss();
    let peak = PeakRss::start();

    store(&mut alice, &content).await;
    assert_eq!(send_file(&mut alice, "bob", &content).await, code::OK);
    bob.expect_push().await.unwrap();
    let hash = download_hash(&mut bob, &content.sha256, content.size).await;

    let growth = peak.stop().saturating_sub(before);
    println!(
        "100 MiB up and down in {:.1} s; resident memory grew by {:.1} MiB",
        started.elapsed().as_secs_f64(),
        growth as f64 / MIB as f64
    );
    assert_eq!(hash, content.sha256);
    assert!(
        growth < 40 * MIB,
        "memory grew by {growth} bytes during a 100 MiB transfer"
    );
    server.stop().await;
}
