//! `parley backup` while the server runs under load, and `parley restore` into an empty data
//! directory: every message acknowledged before the backup began is in the restored server.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{parse, test_config, TestServer};
use parley_client::LineClient;
use parley_server::admin::{self, Request};
use parley_server::backup;
use serde_json::{json, Value};

/// Senders, each sending to a recipient of its own (offline: nothing is pushed back).
const SENDERS: usize = 4;
/// At most this many messages per sender (the load stops once the backup is answered).
const MOST: usize = 5_000;

/// A JSON-lines session logged in as `name` (password-less).
async fn json_login(server: &TestServer, name: &str) -> LineClient {
    let mut c = LineClient::connect(server.addr).await.unwrap();
    let login = json!({"command": "LOGIN", "data": name}).to_string();
    let answer = parse(&c.ask(&login).await.unwrap());
    assert_eq!(answer["success"], true, "{answer}");
    c
}

/// Sends `s{i}-{n}` to `r{i}` one at a time, each after the last was acknowledged, and
/// counts the acknowledged ones in `acked`, until `stop` or [`MOST`].
async fn send(mut c: LineClient, i: usize, acked: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    for n in 1..=MOST {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let dm = json!({"command": "DM", "to": format!("r{i}"), "data": format!("s{i}-{n}")});
        let answer = parse(&c.ask(&dm.to_string()).await.unwrap());
        assert_eq!(answer["message"], "Message sent", "{answer}");
        acked.store(n, Ordering::Release);
    }
}

/// The texts of every message between `me` and `other`, paging through the history.
async fn history(c: &mut LineClient, other: &str) -> BTreeSet<String> {
    let mut texts = BTreeSet::new();
    let mut after = 0;
    for _ in 0..100 {
        let ask = json!({"command": "HISTORY", "target": other, "limit": 1000, "after": after});
        let answer = parse(&c.ask(&ask.to_string()).await.unwrap());
        let page = answer["data"].as_array().expect("a page").clone();
        let Some(last) = page.last() else {
            return texts;
        };
        after = last["id"].as_i64().unwrap();
        texts.extend(page.iter().map(|m| m["text"].as_str().unwrap().to_string()));
    }
    panic!("more than 100 pages of history");
}

async fn ask_admin(dir: &Path, request: Request) -> Value {
    let socket = admin::socket_path(dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match admin::ask(&socket, &request).await.expect("admin socket") {
        Ok(data) => data,
        Err(e) => panic!("{request:?}: {}", e.0),
    }
}

/// A backup taken while four clients send as fast as the server acknowledges holds every
/// message acknowledged before it began; restored into an empty directory, the server
/// serves all of them, and the manifest's counts and checksums describe what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_acknowledged_message() {
    let server = TestServer::start().await;
    for i in 0..SENDERS {
        drop(json_login(&server, &format!("r{i}")).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicUsize>> = (0..SENDERS).map(|_| Arc::default()).collect();
    let mut senders = Vec::new();
    for (i, acked) in acked.iter().enumerate() {
        let c = json_login(&server, &format!("s{i}")).await;
        senders.push(tokio::spawn(send(c, i, acked.clone(), stop.clone())));
    }
    // Under way: every sender has had some acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.iter().any(|a| a.load(Ordering::Acquire) < 50) {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("backup");
    let before: Vec<usize> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let request = Request::ServerBackup {
        out: out.to_string_lossy().into_owned(),
    };
    let manifest = ask_admin(server.dir.path(), request).await;
    let during: Vec<usize> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let sent: usize = acked.iter().map(|a| a.load(Ordering::Acquire)).sum();
    server.stop().await;

    let messages = manifest["messages"].as_u64().unwrap() as usize;
    assert!(
        messages >= before.iter().sum::<usize>(),
        "{messages} messages in the backup, {before:?} acknowledged before it"
    );
    assert!(
        messages <= sent,
        "{messages} in the backup, {sent} sent in all"
    );
    assert!(
        during.iter().zip(&before).any(|(d, b)| d > b),
        "the load went on during the backup: {before:?} then {during:?}"
    );
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["parley.db", "messages.log"]);
    assert!(out.join(backup::MANIFEST).exists());

    let data = tempfile::tempdir().unwrap();
    let (restored, report) = backup::restore(&out, data.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(restored.messages as usize, messages);
    let running = parley_server::start(test_config(data.path()))
        .await
        .unwrap();
    let server = TestServer::adopt(running, data);
    for (i, &before) in before.iter().enumerate() {
        let mut c = json_login(&server, &format!("r{i}")).await;
        let texts = history(&mut c, &format!("s{i}")).await;
        for n in 1..=before {
            assert!(texts.contains(&format!("s{i}-{n}")), "s{i}-{n} is missing");
        }
    }
    server.stop().await;
}

/// A stopped server's data is backed up without a server; a backup refuses a directory
/// that is not empty, and a restore both a target that is not empty and a backup whose
/// files do not match their manifest.
#[tokio::test]
async fn a_restore_checks_the_backup_and_the_target() {
    let mut server = TestServer::start().await;
    let mut c = json_login(&server, "alice").await;
    let dm = json!({"command": "DM", "to": "alice", "data": "note to self"});
    assert_eq!(
        parse(&c.ask(&dm.to_string()).await.unwrap())["success"],
        true
    );
    drop(c);
    let config = test_config(server.dir.path());
    server.running.take().unwrap().stop().await.unwrap();
    let backups = tempfile::tempdir().unwrap();
    let out = backups.path().join("backup");
    let request = Request::ServerBackup {
        out: out.to_string_lossy().into_owned(),
    };
    let taken = admin::run_offline(config.clone(), request.clone()).await;
    let taken = taken.unwrap().map_err(|e| e.0).unwrap();
    assert_eq!(taken["messages"], 1);
    assert_eq!(taken["users"], 1);
    let again = admin::run_offline(config, request).await.unwrap();
    assert!(again.unwrap_err().0.contains("is not empty"));

    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("something"), "x").unwrap();
    let refused = backup::restore(&out, busy.path()).unwrap_err();
    assert!(
        format!("{refused:#}").contains("is not empty"),
        "{refused:#}"
    );

    let log = out.join("messages.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let refused = backup::restore(&out, empty.path()).unwrap_err();
    assert!(
        format!("{refused:#}").contains("messages.log does not match the manifest"),
        "{refused:#}"
    );
}
