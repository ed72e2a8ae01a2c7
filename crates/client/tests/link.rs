//! `Link` against a real server: each message delivered once and in order across
//! reconnects and restarts, each message sent once when the network loses a request or its
//! answer, tokens, and files that arrive byte-identical (also after a cut download).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{text, Events, Proxy, Rule, Server, PASSWORD, WAIT};
use parley_client::{Endpoint, Error, FileInfo, Link, LinkEvent, LinkStatus, Page, Target};
use parley_proto::binary::{code, key, kind};

/// Long enough for a duplicate to have arrived if one were coming.
const QUIET: Duration = Duration::from_millis(600);

fn dm(to: &str) -> Target {
    Target::User(to.to_string())
}

async fn send(link: &Link, to: &Target, body: &str) {
    let time = link.fresh_time();
    link.send(to, Bytes::copy_from_slice(body.as_bytes()), time)
        .await
        .unwrap_or_else(|e| panic!("sending {body:?}: {e}"));
}

/// The texts of the next `n` messages.
async fn texts(events: &mut Events, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(text(&events.message().await));
    }
    out
}

#[tokio::test]
async fn messages_arrive_once_in_order_and_a_returning_device_gets_only_what_it_missed() {
    let server = Server::start().await;
    let (alice, _a) = server.link("alice", "laptop").await;
    let (bob, mut b) = server.link("bob", "phone").await;
    for i in 1..=3 {
        send(&alice, &dm("bob"), &format!("hello {i}")).await;
    }
    let first = b.message().await;
    assert_eq!(first.kind, kind::DIRECT);
    assert_eq!(&first.from[..], b"alice");
    assert_eq!(&first.to[..], b"bob");
    assert_eq!(text(&first), "hello 1");
    assert_eq!(texts(&mut b, 2).await, ["hello 2", "hello 3"]);

    // Away: the acks moved bob's cursor, so only what follows comes back.
    bob.close();
    drop(b);
    for i in 4..=5 {
        send(&alice, &dm("bob"), &format!("hello {i}")).await;
    }
    let (_bob, mut b) = server.link("bob", "phone").await;
    assert_eq!(texts(&mut b, 2).await, ["hello 4", "hello 5"]);
    b.no_message_within(QUIET).await;
}

#[tokio::test]
async fn a_restarted_server_delivers_what_was_sent_meanwhile_exactly_once() {
    let mut server = Server::start().await;
    let (alice, _a) = server.link("alice", "laptop").await;
    let (bob, mut b) = server.link("bob", "phone").await;
    alice
        .retry(|c| async move { c.join("#ops").await })
        .await
        .unwrap();
    bob.retry(|c| async move { c.join("#ops").await })
        .await
        .unwrap();
    send(&alice, &Target::Room("#ops".into()), "before").await;
    assert_eq!(text(&b.message().await), "before");

    server.stop().await;
    // Bob's link notices and waits to try again.
    b.until("bob offline", |event| match event {
        LinkEvent::Status(LinkStatus::Offline { .. }) => Some(()),
        LinkEvent::Message(m) => panic!("unexpected {m:?}"),
        _ => None,
    })
    .await;
    server.start_again().await;
    // Alice's sends wait for her link to be back, then go once each.
    let sender = alice.clone();
    let sent = tokio::spawn(async move {
        for i in 1..=3 {
            send(
                &sender,
                &Target::Room("#ops".into()),
                &format!("meanwhile {i}"),
            )
            .await;
        }
    });
    assert_eq!(
        texts(&mut b, 3).await,
        ["meanwhile 1", "meanwhile 2", "meanwhile 3"]
    );
    sent.await.unwrap();
    b.no_message_within(QUIET).await;
    drop(bob);
}

#[tokio::test]
async fn messages_whose_acks_were_lost_are_not_delivered_twice() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.addr).await;
    let (alice, _a) = server.link("alice", "laptop").await;
    proxy.set(Rule::Drop(key::ACK));
    let mut options = server.options("bob", "phone");
    options.endpoint = Endpoint::tcp(proxy.addr.to_string());
    let (_bob, events) = Link::spawn(options);
    let mut b = Events(events);
    b.until_online().await;
    send(&alice, &dm("bob"), "one").await;
    send(&alice, &dm("bob"), "two").await;
    assert_eq!(texts(&mut b, 2).await, ["one", "two"]);

    // The server never saw the acks: after the cut it sends both again; the link knows them.
    proxy.set(Rule::Pass);
    proxy.cut();
    b.until_online().await;
    b.no_message_within(QUIET).await;
    send(&alice, &dm("bob"), "three").await;
    assert_eq!(text(&b.message().await), "three");
    b.no_message_within(QUIET).await;
}

/// Both ways a network loses a send: before the server saw it, or after it stored it but
/// before the OK came back. Either way the message is stored exactly once.
#[tokio::test]
async fn a_send_whose_request_or_answer_was_lost_is_stored_exactly_once() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.addr).await;
    let (_bob, mut b) = server.link("bob", "phone").await;
    let mut options = server.options("alice", "laptop");
    options.endpoint = Endpoint::tcp(proxy.addr.to_string());
    let (alice, events) = Link::spawn(options);
    let mut a = Events(events);
    a.until_online().await;

    proxy.set(Rule::LoseAnswer(key::MESSAGE));
    send(&alice, &dm("bob"), "answer lost").await;
    assert_eq!(text(&b.message().await), "answer lost");

    proxy.set(Rule::LoseRequest(key::MESSAGE));
    send(&alice, &dm("bob"), "request lost").await;
    assert_eq!(text(&b.message().await), "request lost");
    b.no_message_within(QUIET).await;

    let history = alice
        .retry(|c| async move { c.history("bob", Page::Latest, 10).await })
        .await
        .unwrap();
    let bodies: Vec<String> = history.iter().map(text).collect();
    assert_eq!(bodies, ["answer lost", "request lost"]);
}

#[tokio::test]
async fn a_refused_send_reports_why() {
    let server = Server::start().await;
    let (alice, _a) = server.link("alice", "laptop").await;
    let time = alice.fresh_time();
    let err = alice
        .send(&Target::Room("#nowhere".into()), Bytes::from("x"), time)
        .await
        .unwrap_err();
    assert_eq!(err, Error::Refused(code::ROOM_NOT_FOUND));
    let (bob, _b) = server.link("bob", "phone").await;
    bob.retry(|c| async move { c.join("#bobs").await })
        .await
        .unwrap();
    let err = alice
        .send(
            &Target::Room("#bobs".into()),
            Bytes::from("x"),
            alice.fresh_time(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Error::Refused(code::NOT_MEMBER));
    let err = alice
        .send(&dm("nobody"), Bytes::from("x"), alice.fresh_time())
        .await
        .unwrap_err();
    assert_eq!(err, Error::Refused(code::USER_NOT_FOUND));
}

#[tokio::test]
async fn a_token_logs_the_device_in_until_it_is_revoked() {
    let server = Server::start().await;
    let (alice, events) = Link::spawn(server.options("alice", "laptop"));
    let mut a = Events(events);
    let token = a
        .until("a token", |event| match event {
            LinkEvent::Token(token) => Some(token),
            LinkEvent::Status(LinkStatus::Stopped(e)) => panic!("{e}"),
            _ => None,
        })
        .await;
    assert_eq!(token.token.len(), 64);
    a.until_online().await;
    alice.close();

    // The token alone, no password.
    let mut options = server.options("alice", "laptop");
    options.password = None;
    options.register = false;
    options.token = Some(token.token.clone());
    let (resumed, events) = Link::spawn(options.clone());
    Events(events).until_online().await;
    let conn = resumed.connection().await.unwrap();
    conn.logout(false).await.unwrap();
    resumed.close();

    let (_again, events) = Link::spawn(options);
    let mut again = Events(events);
    // (Online would be a revoked token logging in.)
    assert_eq!(again.stopped().await, Error::Refused(code::UNAUTHORIZED));
}

#[tokio::test]
async fn a_wrong_password_stops_the_link_with_the_reason() {
    let server = Server::start().await;
    let (_alice, _a) = server.link("alice", "laptop").await;
    let mut options = server.options("alice", "other");
    options.password = Some(format!("{PASSWORD}!"));
    let (_link, events) = Link::spawn(options);
    let e = Events(events).stopped().await;
    assert!(e.is_auth(), "{e}");
}

/// Content the size of a few chunks and a bit, so the window and the short last chunk count.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn a_file_sent_to_a_room_downloads_byte_identical_and_a_cut_download_resumes() {
    let server = Server::start().await;
    let (alice, _a) = server.link("alice", "laptop").await;
    let (bob, mut b) = server.link("bob", "phone").await;
    for link in [&alice, &bob] {
        link.retry(|c| async move { c.join("#files").await })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let bytes = content(5 * parley_client::CHUNK + 1234);
    std::fs::write(&path, &bytes).unwrap();

    let mut seen = Vec::new();
    let info = alice
        .upload(&path, |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(seen.last(), Some(&(bytes.len() as u64, bytes.len() as u64)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    let room = Target::Room("#files".into());
    alice
        .send_file(&room, &info, "the data", alice.fresh_time())
        .await
        .unwrap();

    let event = b.message().await;
    let message = text(&event);
    let (got, caption) = FileInfo::parse(&message).expect("a file message");
    assert_eq!(caption, "the data");
    assert_eq!(got, info);
    assert_eq!(got.name, "data.bin");

    let out = dir.path().join("copy.bin");
    bob.download(&got, &out, |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // A cut download: the first 100,000 bytes are there already; the rest comes.
    let again = dir.path().join("again.bin");
    std::fs::write(parley_client::part_path(&again), &bytes[..100_000]).unwrap();
    let mut first = None;
    bob.download(&got, &again, |done, _| {
        first.get_or_insert(done);
    })
    .await
    .unwrap();
    assert_eq!(first, Some(100_000), "resumed where the part file ended");
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
    assert!(!parley_client::part_path(&again).exists());

    // A part file with wrong bytes fails the SHA-256 check and is removed.
    let bad = dir.path().join("bad.bin");
    let mut wrong = bytes[..1000].to_vec();
    wrong[10] ^= 0xff;
    std::fs::write(parley_client::part_path(&bad), &wrong).unwrap();
    let err = bob.download(&got, &bad, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!bad.exists() && !parley_client::part_path(&bad).exists());
}

#[tokio::test]
async fn an_upload_cut_midway_resumes_from_the_servers_copy() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut options = server.options("alice", "laptop");
    options.endpoint = Endpoint::tcp(proxy.addr.to_string());
    let (alice, events) = Link::spawn(options);
    let mut a = Events(events);
    a.until_online().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let bytes = content(20 * parley_client::CHUNK);
    std::fs::write(&path, &bytes).unwrap();

    // The connection dies at a chunk's answer.
    let mut offsets = Vec::new();
    proxy.set(Rule::LoseAnswer(key::FILE_CHUNK));
    let info = alice
        .upload(&path, |done, _| offsets.push(done))
        .await
        .unwrap();
    let mut cut = false;
    while let Ok(event) = a.0.try_recv() {
        cut |= matches!(event, LinkEvent::Status(LinkStatus::Offline { .. }));
    }
    assert!(cut, "the proxy cut the upload's connection");
    // Once from zero; after the reconnect, from where the server's copy ended.
    assert_eq!(
        offsets.iter().filter(|&&o| o == 0).count(),
        1,
        "{offsets:?}"
    );
    assert_eq!(offsets.last(), Some(&(bytes.len() as u64)));

    let (bob, _b) = server.link("bob", "phone").await;
    for link in [&alice, &bob] {
        link.retry(|c| async move { c.join("#big").await })
            .await
            .unwrap();
    }
    let room = Target::Room("#big".into());
    alice
        .send_file(&room, &info, "", alice.fresh_time())
        .await
        .unwrap();
    let out = dir.path().join("out.bin");
    bob.download(&info, &out, |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[tokio::test]
async fn a_link_speaks_tls_trusting_the_servers_certificate_only_when_told() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = parley_server::write_self_signed(certs.path()).unwrap();
    let server = Server::start_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key);
    })
    .await;
    let mut options = server.options("alice", "laptop");
    options.endpoint.tls = Some(parley_client::TlsOptions { ca: Some(cert) });
    let (alice, events) = Link::spawn(options.clone());
    Events(events).until_online().await;
    let rooms = alice.retry(|c| async move { c.rooms().await }).await;
    assert_eq!(rooms, Ok(vec![]));

    // The system's roots do not know a self-signed certificate: refused, and why.
    options.endpoint.tls = Some(parley_client::TlsOptions { ca: None });
    options.max_attempts = Some(1);
    let (_link, events) = Link::spawn(options);
    let e = Events(events).stopped().await;
    assert!(
        matches!(&e, Error::Connect(why) if why.contains("TLS") || why.contains("root")),
        "{e}"
    );
}

#[tokio::test]
async fn a_password_changed_on_another_device_stops_a_link_that_has_only_its_token() {
    let server = Server::start().await;
    let (first, events) = Link::spawn(server.options("alice", "laptop"));
    let mut first_events = Events(events);
    let token = first_events
        .until("a token", |event| match event {
            LinkEvent::Token(t) => Some(t.token),
            _ => None,
        })
        .await;
    first_events.until_online().await;
    first.close();
    let mut options = server.options("alice", "laptop");
    options.password = None;
    options.register = false;
    options.token = Some(token);
    let (_laptop, events) = Link::spawn(options);
    let mut laptop = Events(events);
    laptop.until_online().await;

    let (phone, _p) = server.link("alice", "phone").await;
    let conn = phone.connection().await.unwrap();
    conn.request(|cid| parley_proto::binary::Frame::ChangePassword {
        cid,
        old: Bytes::from(PASSWORD),
        new: Bytes::from("a new password"),
    })
    .await
    .unwrap();
    // The server ends the laptop's session; its token no longer logs in (online again
    // would fail).
    assert_eq!(laptop.stopped().await, Error::Refused(code::UNAUTHORIZED));
}

/// The next presence push, skipping statuses and tokens.
async fn presence(events: &mut Events) -> (String, bool, u64) {
    events
        .until("a presence push", |event| match event {
            LinkEvent::Presence {
                user,
                online,
                last_seen,
            } => Some((user, online, last_seen)),
            LinkEvent::Message(m) => panic!("a message before presence: {m:?}"),
            _ => None,
        })
        .await
}

/// Presence pushes until `done` says so, within `WAIT` in all.
async fn presence_until(events: &mut Events, mut done: impl FnMut(&(String, bool, u64)) -> bool) {
    tokio::time::timeout(WAIT, async { while !done(&presence(events).await) {} })
        .await
        .expect("the presence pushes waited for");
}

/// What `parley chat` shows as online comes from pushes: a watched user's first session
/// and last session each push a change (never a poll), and a watch survives the link's
/// reconnection (the server forgets it with the session; the link watches again).
#[tokio::test]
async fn watched_users_presence_is_pushed_and_rewatched_after_a_reconnect() {
    let mut server = Server::start().await;
    let (_carol, _c) = server.link("carol", "laptop").await;
    let (bob, _b) = server.link("bob", "phone").await;
    bob.close();
    let (alice, mut a) = server.link("alice", "laptop").await;
    // bob's first link is gone once the server says so (a bounded number of asks).
    let mut now = Vec::new();
    for _ in 0..200 {
        let found = alice
            .watch(vec!["bob".into(), "carol".into(), "nobody".into()])
            .await
            .unwrap();
        now = found.iter().map(|u| (u.name.to_vec(), u.online)).collect();
        if now.iter().any(|(name, online)| name == b"bob" && !online) {
            break;
        }
    }
    assert_eq!(now, [(b"bob".to_vec(), false), (b"carol".to_vec(), true)]);

    let (bob, _b) = server.link("bob", "phone").await;
    // (An earlier ask may have seen bob's first link end: that push comes first then.)
    let mut came = None;
    presence_until(&mut a, |p| {
        came = Some(p.clone());
        p.1
    })
    .await;
    assert_eq!(came, Some(("bob".into(), true, 0)));
    bob.close();
    let (user, online, last_seen) = presence(&mut a).await;
    assert_eq!((user.as_str(), online), ("bob", false));
    assert!(last_seen > 0);

    // The server restarts: the link reconnects and watches again, and says where each
    // watched user stands (carol's link came back too, or is on its way).
    server.stop().await;
    server.start_again().await;
    let mut seen = std::collections::HashMap::new();
    presence_until(&mut a, |(user, online, _)| {
        seen.insert(user.clone(), *online);
        seen.get("bob") == Some(&false) && seen.contains_key("carol")
    })
    .await;
    let (_bob, _b) = server.link("bob", "tablet").await;
    presence_until(&mut a, |p| *p == ("bob".into(), true, 0)).await;
}

/// A message deleted by its author reaches the other side's link as a deletion of that
/// message, in order with the messages.
#[tokio::test]
async fn a_deletion_reaches_the_other_link_in_order() {
    let server = Server::start().await;
    let (alice, _a) = server.link("alice", "laptop").await;
    let (_bob, mut b) = server.link("bob", "phone").await;
    send(&alice, &dm("bob"), "oops").await;
    let oops = b.message().await;
    alice
        .retry(|c| async move { c.delete_message("bob", 1).await })
        .await
        .unwrap();
    send(&alice, &dm("bob"), "sorry").await;
    let (event, message_id, message_seq) = b
        .until("the deletion", |event| match event {
            LinkEvent::Deleted {
                event,
                message_id,
                message_seq,
            } => Some((event, message_id, message_seq)),
            LinkEvent::Message(m) => panic!("the deletion comes first: {m:?}"),
            _ => None,
        })
        .await;
    assert_eq!((message_id, message_seq), (oops.id, oops.seq));
    assert_eq!((event.seq, &event.from[..]), (2, &b"alice"[..]));
    assert_eq!(text(&b.message().await), "sorry");
}
