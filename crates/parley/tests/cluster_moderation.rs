//! Moderation and an operator's decisions on a cluster: made on one node, enforced on every
//! other at once (or, for a node cut from NATS, at its next reconciliation), and still there
//! after a node's restart; and `parley admin`'s reads on one node showing what was made on
//! another. One cluster of real nodes on PostgreSQL and NATS a test, its checks in order
//! (each cluster costs seconds to start).
//!
//! Where a check needs another node to have heard of a change before it acts (a DM through
//! B refused by a block made on A), it waits for an event that left A after that change —
//! a notice another session on that node receives — not for time: a node publishes its
//! events in order, and hears another node's in order.

mod common;
mod services;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parley_client::{Connection, Endpoint, LineClient};
use services::cluster::{Cluster, Node, Proxy};

/// A text session logged in (without a password) as `name` on `addr`.
async fn text(addr: SocketAddr, name: &str) -> LineClient {
    let mut c = LineClient::connect(addr).await.expect("connect");
    assert_eq!(
        c.ask(&format!("LOGIN {name}")).await.unwrap(),
        "OK",
        "{name}"
    );
    c
}

/// Reads lines until one satisfies `want` (others, such as presence notices, are skipped);
/// fails after 10 s.
async fn until(c: &mut LineClient, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, c.line())
            .await
            .expect("no matching line in 10 s")
            .expect("a line");
        if want(&line) {
            return line;
        }
    }
}

/// Sends `request` and returns its answer: the first line that is `OK` or an error (the
/// pushes and notices before it are skipped). Not for a message sent: seed 002's dialect
/// answers only its errors.
async fn ask(c: &mut LineClient, request: &str) -> String {
    c.send(request).await.unwrap();
    until(c, |l| l == "OK" || l.starts_with("ERR")).await
}

/// The lines `command` answers up to its `OK` (or error).
async fn listing(c: &mut LineClient, command: &str) -> Vec<String> {
    c.send(command).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, c.line())
            .await
            .unwrap_or_else(|_| panic!("{command}: no OK in 10 s"))
            .expect("a line");
        if line == "OK" || line.starts_with("ERR") {
            return lines;
        }
        lines.push(line);
    }
}

/// Whether the server closed `c` (it reads to the end within 10 s).
async fn closed(c: &mut LineClient) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.line()).await {
            Err(_) => return false,
            Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// `parley admin --data-dir DIR ARGS...` against a running node: (succeeded, output).
fn admin(node: &Node, args: &[&str]) -> (bool, String) {
    let mut cmd: Command = common::parley_command(["admin", "--data-dir"]);
    cmd.arg(node.dir.path()).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().expect("parley admin");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The room's owner (on A) sets a topic, which `witness` (on another node) is told of: a
/// barrier after every change A made before it.
async fn barrier(owner: &mut LineClient, witness: &mut LineClient, n: u32) {
    let topic = format!("barrier {n}");
    assert_eq!(ask(owner, &format!("TOPIC #mod {topic}")).await, "OK");
    let told = format!("INFO alice set the topic of #mod: {topic}");
    until(witness, |l| l == told).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_made_on_one_node_holds_on_every_node() {
    if !services::available() {
        return;
    }
    let pg = services::Postgres::start();
    let nats = services::Nats::start();
    // Node c reaches NATS through a link the test cuts.
    let link = Proxy::to_nats(&nats).await;
    let nodes = vec![
        Node::start("a", &pg.url(), &nats.url()),
        Node::start("b", &pg.url(), &nats.url()),
        Node::start("c", &pg.url(), &link.nats_url()),
    ];
    let mut cluster = Cluster { nodes, pg, nats };
    let (a, b, c) = (
        cluster.nodes[0].addr,
        cluster.nodes[1].addr,
        cluster.nodes[2].addr,
    );

    // alice owns #mod (she made it, on A); bob and mallory are members on B, carol on C.
    let mut alice = text(a, "alice").await;
    assert_eq!(ask(&mut alice, "JOIN #mod").await, "OK");
    let mut bob = text(b, "bob").await;
    let mut mallory = text(b, "mallory").await;
    let mut carol = text(c, "carol").await;
    for (who, session) in [
        ("bob", &mut bob),
        ("mallory", &mut mallory),
        ("carol", &mut carol),
    ] {
        assert_eq!(ask(session, "JOIN #mod").await, "OK");
        let joined = format!("INFO {who} joined #mod");
        until(&mut alice, |l| l == joined).await;
    }

    // A mute made on A: bob (on B) is told, and B refuses his words to the room.
    assert_eq!(ask(&mut alice, "MUTE #mod bob").await, "OK");
    until(&mut bob, |l| l == "INFO alice muted bob in #mod").await;
    assert_eq!(ask(&mut bob, "SAY #mod let me speak").await, "ERR muted");
    let details = listing(&mut carol, "ROOMINFO #mod").await;
    assert!(
        details.contains(&"MUTED #mod bob".to_string()),
        "{details:?}"
    );

    // A kick made on A takes mallory, connected to B, out of the room there: she gets the
    // notice one node gives, and B no longer takes her words to the room.
    assert_eq!(ask(&mut alice, "KICK #mod mallory").await, "OK");
    let kicked = "INFO alice kicked mallory from #mod";
    until(&mut mallory, |l| l == kicked).await;
    until(&mut carol, |l| l == kicked).await;
    assert_eq!(
        ask(&mut mallory, "SAY #mod still here?").await,
        "ERR not-a-member"
    );

    // A ban made on A: B refuses her join.
    assert_eq!(ask(&mut alice, "BAN #mod mallory").await, "OK");
    until(&mut mallory, |l| l == "INFO alice banned mallory from #mod").await;
    assert_eq!(ask(&mut mallory, "JOIN #mod").await, "ERR banned");

    // A block made on A holds for a DM sent through B.
    let mut eve = text(b, "eve").await;
    eve.send("DM alice hello from b").await.unwrap();
    until(&mut alice, |l| l.contains("hello from b")).await;
    assert_eq!(ask(&mut alice, "BLOCK eve").await, "OK");
    barrier(&mut alice, &mut bob, 1).await;
    assert_eq!(ask(&mut eve, "DM alice hello again").await, "ERR blocked");

    // A room deleted on A is gone on B too, its members there told; its name is free again.
    assert_eq!(ask(&mut alice, "JOIN #gone").await, "OK");
    assert_eq!(ask(&mut bob, "JOIN #gone").await, "OK");
    until(&mut alice, |l| l == "INFO bob joined #gone").await;
    assert_eq!(ask(&mut alice, "DESTROY #gone").await, "OK");
    until(&mut bob, |l| l == "INFO alice deleted #gone").await;
    assert_eq!(
        ask(&mut bob, "SAY #gone anyone?").await,
        "ERR room-not-found"
    );
    assert_eq!(ask(&mut bob, "JOIN #gone").await, "OK");
    let details = listing(&mut bob, "ROOMINFO #gone").await;
    assert!(
        details.contains(&"OWNER #gone bob".to_string()),
        "{details:?}"
    );

    // A message deleted on A is gone from the history read on C; the deletion reaches the
    // members on other nodes as it does on one node.
    carol.send("SAY #mod the secret is 42").await.unwrap();
    until(&mut alice, |l| l.ends_with("the secret is 42")).await;
    let history = listing(&mut carol, "HISTORY #mod").await;
    let said = history
        .iter()
        .find(|l| l.ends_with("carol the secret is 42"))
        .unwrap_or_else(|| panic!("{history:?}"));
    let seq: i64 = said.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(ask(&mut alice, &format!("DELETE #mod {seq}")).await, "OK");
    let deleted = format!("DELETED #mod {seq} alice");
    until(&mut bob, |l| l == deleted).await;
    until(&mut carol, |l| l == deleted).await;
    let history = listing(&mut carol, "HISTORY #mod").await;
    assert!(!history.iter().any(|l| l.contains("secret")), "{history:?}");
    let shown = history
        .iter()
        .find(|l| l.split(' ').nth(2) == Some(&*seq.to_string()));
    let shown = shown.unwrap_or_else(|| panic!("{history:?}"));
    assert!(shown.ends_with("carol [message deleted]"), "{shown}");

    // `parley admin users disable` against A ends frank's session on B, and C refuses his
    // login.
    let mut frank = text(b, "frank").await;
    let (ok, out) = admin(&cluster.nodes[0], &["users", "disable", "frank"]);
    assert!(ok, "{out}");
    assert!(
        closed(&mut frank).await,
        "frank's session on B was not closed"
    );
    barrier(&mut alice, &mut carol, 2).await;
    let mut again = LineClient::connect(c).await.unwrap();
    let answer = again.ask("LOGIN frank").await.unwrap();
    assert!(answer.starts_with("ERR"), "{answer}");

    // A cluster node keeps no data of its own to back up: it says what does.
    let out = cluster.nodes[0].dir.path().join("backup");
    let mut cmd: Command = common::parley_command(["backup", "--data-dir"]);
    cmd.arg(cluster.nodes[0].dir.path()).arg("--out").arg(&out);
    let backup = cmd.stdin(Stdio::null()).output().expect("parley backup");
    let said = String::from_utf8_lossy(&backup.stderr);
    assert!(
        !backup.status.success() && said.contains("pg_dump"),
        "{said}"
    );

    // C cut off from NATS hears of no change; it finds them in PostgreSQL at its next
    // reconciliation, and enforces them before NATS is back.
    link.cut();
    assert_eq!(ask(&mut alice, "BLOCK carol").await, "OK");
    assert_eq!(ask(&mut alice, "MUTE #mod carol").await, "OK");
    assert_eq!(ask(&mut alice, "KICK #mod carol").await, "OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let details = listing(&mut carol, "ROOMINFO #mod").await;
        if details.contains(&"MUTED #mod carol".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "C never read the mute: {details:?}"
        );
    }
    // The kick too, though it leaves no mark to read.
    assert_eq!(ask(&mut carol, "SAY #mod may I?").await, "ERR not-a-member");
    assert_eq!(ask(&mut carol, "DM alice may I?").await, "ERR blocked");
    link.heal();

    // All of it survives a restart of B: it reads it from PostgreSQL.
    drop((bob, mallory, eve, again));
    let node = &mut cluster.nodes[1];
    node.proc.signal(libc::SIGTERM);
    assert!(node.proc.wait_exit(Duration::from_secs(10)).success());
    let (pg, nats) = (cluster.pg.url(), cluster.nats.url());
    cluster.nodes[1] = Node::start("b", &pg, &nats);
    let b = cluster.nodes[1].addr;
    let mut bob = text(b, "bob").await;
    assert_eq!(ask(&mut bob, "SAY #mod let me speak").await, "ERR muted");
    let mut mallory = text(b, "mallory").await;
    assert_eq!(ask(&mut mallory, "JOIN #mod").await, "ERR banned");
    let mut eve = text(b, "eve").await;
    assert_eq!(ask(&mut eve, "DM alice hello again").await, "ERR blocked");
    let history = listing(&mut bob, "HISTORY #mod").await;
    assert!(!history.iter().any(|l| l.contains("secret")), "{history:?}");
    let mut again = LineClient::connect(b).await.unwrap();
    let answer = again.ask("LOGIN frank").await.unwrap();
    assert!(answer.starts_with("ERR"), "{answer}");

    // An account deleted through C: its session on B ends, nothing reaches it by name
    // there, and its name logs in nowhere.
    let (ok, out) = admin(&cluster.nodes[2], &["users", "delete", "eve"]);
    assert!(ok, "{out}");
    assert!(closed(&mut eve).await, "eve's session on B was not closed");
    assert_eq!(
        ask(&mut bob, "DM eve are you there").await,
        "ERR user-not-found"
    );
    let mut again = LineClient::connect(b).await.unwrap();
    let answer = again.ask("LOGIN eve").await.unwrap();
    assert!(answer.starts_with("ERR"), "{answer}");
}

/// `parley admin --json ARGS...` against `node`, parsed; panics if it fails.
fn admin_json(node: &Node, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out) = admin(node, &all);
    assert!(ok, "parley admin {args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What is made through one node, `parley admin`'s reads on another show: users (an
/// account and a password-less name), a device, rooms and their members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_on_a_node_show_what_another_made() {
    if !services::available() {
        return;
    }
    let cluster = Cluster::start(2);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);

    // On A: dora registers and logs in on her laptop, ed logs in without a password; both
    // join #lounge.
    let mut reg = LineClient::connect(a.addr).await.unwrap();
    assert_eq!(
        reg.ask("REGISTER dora a-long-password").await.unwrap(),
        "OK"
    );
    let mut dora = LineClient::connect(a.addr).await.unwrap();
    let login = "LOGIN dora a-long-password laptop";
    assert_eq!(dora.ask(login).await.unwrap(), "OK");
    assert_eq!(ask(&mut dora, "JOIN #lounge").await, "OK");
    let mut ed = text(a.addr, "ed").await;
    assert_eq!(ask(&mut ed, "JOIN #lounge").await, "OK");
    until(&mut dora, |l| l == "INFO ed joined #lounge").await;
    // Her phone logs in through the binary protocol and keeps a token.
    let (phone, _pushes) = Connection::connect(&Endpoint::tcp(a.addr.to_string()))
        .await
        .expect("connect");
    let token = phone
        .login_password("dora", "a-long-password", "phone", true)
        .await
        .expect("login");
    assert!(token.is_some());

    // On B: the same users, devices, rooms and members.
    let users = admin_json(b, &["users", "list"]);
    let names: Vec<&str> = users
        .as_array()
        .expect("a list")
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dora", "ed"], "{users}");
    assert_eq!(users[0]["account"], true, "{users}");
    assert_eq!(users[1]["account"], false, "{users}");
    assert_eq!(users[0]["disabled"], false, "{users}");

    let shown = admin_json(b, &["users", "show", "dora"]);
    assert_eq!(shown["user"]["name"], "dora", "{shown}");
    assert_eq!(shown["rooms"], serde_json::json!(["#lounge"]), "{shown}");
    let devices: Vec<&str> = shown["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["laptop", "phone"], "{shown}");
    assert_eq!(shown["user"]["devices"], 2, "{shown}");
    let tokens = &shown["devices"][1]["tokens"];
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(tokens[0]["valid"], true, "{shown}");

    let listed = admin_json(b, &["devices", "list", "dora"]);
    assert_eq!(listed, shown["devices"], "{listed}");
    let (ok, out) = admin(b, &["users", "show", "nobody"]);
    assert!(!ok && out.contains("no user nobody"), "{out}");

    let rooms = admin_json(b, &["rooms", "list"]);
    let lounge = rooms
        .as_array()
        .expect("a list")
        .iter()
        .find(|r| r["name"] == "#lounge")
        .unwrap_or_else(|| panic!("no lounge: {rooms}"));
    assert_eq!(lounge["members"], 2, "{rooms}");
    let members = admin_json(b, &["rooms", "members", "#lounge"]);
    let mut names: Vec<&str> = members
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dora", "ed"], "{members}");
}

/// A room's moderation made while members join it on the same node: the join and the
/// change can fall in one batch of the hub, whose read of the room from PostgreSQL does
/// not show the join yet (not committed), and nothing reads the room again until its next
/// change. Every joiner must still get the room's live messages. Many rounds make that
/// batch likely (without merging the batch's own joins it failed in each run tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_amid_moderation_keep_their_members() {
    if !services::available() {
        return;
    }
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    let mut alice = text(a, "alice").await;
    assert_eq!(ask(&mut alice, "JOIN #busy").await, "OK");
    let mut poster = text(b, "poster").await;
    assert_eq!(ask(&mut poster, "JOIN #busy").await, "OK");

    // Each round: joiners on A send their joins at once, alice (on A) a topic change in
    // their midst; then a message from B that every joiner must get live.
    for round in 0..12 {
        let mut joiners = Vec::new();
        for i in 0..24 {
            joiners.push(text(a, &format!("j{round}x{i}")).await);
        }
        for (i, c) in joiners.iter_mut().enumerate() {
            if i == 12 {
                alice.send(&format!("TOPIC #busy t{round}")).await.unwrap();
            }
            c.send("JOIN #busy").await.unwrap();
        }
        for c in &mut joiners {
            assert_eq!(until(c, |l| l == "OK" || l.starts_with("ERR")).await, "OK");
        }
        assert_eq!(
            until(&mut alice, |l| l == "OK" || l.starts_with("ERR")).await,
            "OK"
        );
        poster
            .send(&format!("SAY #busy live {round}"))
            .await
            .unwrap();
        let live = format!("ROOM #busy poster live {round}");
        for c in &mut joiners {
            until(c, |l| l == live).await;
        }
    }
}

/// Waits until the node at `addr` has applied every moderation change PostgreSQL counts
/// (its `parley_cluster_moderation_version`); fails after 10 s.
async fn caught_up(cluster: &Cluster, addr: SocketAddr) {
    let stored = cluster
        .pg
        .psql("parley", "SELECT version FROM moderation_version");
    let stored: f64 = stored.trim().parse().expect("a version");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied = services::cluster::metric(addr, "parley_cluster_moderation_version").await;
        if applied >= stored {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} applied {applied} of {stored}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes a node missed on NATS (its link cut) are told to its sessions when its
/// reconciliation finds them, as their events would have told them: a kick, a room
/// deleted, a message deleted (its tombstone read back from PostgreSQL says what it
/// deletes). And no change makes a node read all of moderation again: each is applied
/// from its event, or from the log of events a reconciliation reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_missed_on_nats_are_told_as_their_events_tell_them() {
    if !services::available() {
        return;
    }
    let pg = services::Postgres::start();
    let nats = services::Nats::start();
    let link = Proxy::to_nats(&nats).await;
    let nodes = vec![
        Node::start("a", &pg.url(), &nats.url()),
        Node::start("b", &pg.url(), &link.nats_url()),
    ];
    let cluster = Cluster { nodes, pg, nats };
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);

    let mut alice = text(a, "alice").await;
    let mut bob = text(b, "bob").await;
    for room in ["#mod", "#gone", "#keep"] {
        assert_eq!(ask(&mut alice, &format!("JOIN {room}")).await, "OK");
        assert_eq!(ask(&mut bob, &format!("JOIN {room}")).await, "OK");
        let joined = format!("INFO bob joined {room}");
        until(&mut alice, |l| l == joined).await;
    }
    bob.send("SAY #keep mine").await.unwrap();
    until(&mut alice, |l| l == "ROOM #keep bob mine").await;
    let history = listing(&mut alice, "HISTORY #keep").await;
    let seq: i64 = history
        .iter()
        .find(|l| l.ends_with("bob mine"))
        .and_then(|l| l.split(' ').nth(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{history:?}"));

    // B hears nothing of these on NATS; its reconciliation finds them, and bob is told.
    link.cut();
    assert_eq!(ask(&mut alice, "KICK #mod bob").await, "OK");
    assert_eq!(ask(&mut alice, "DESTROY #gone").await, "OK");
    assert_eq!(ask(&mut alice, "BLOCK bob").await, "OK");
    let delete = format!("DELETE #keep {seq}");
    assert_eq!(ask(&mut alice, &delete).await, "OK");
    let deleted = format!("DELETED #keep {seq} alice");
    until(&mut bob, |l| l == deleted).await;
    until(&mut bob, |l| l == "INFO alice kicked bob from #mod").await;
    until(&mut bob, |l| l == "INFO alice deleted #gone").await;
    assert_eq!(
        ask(&mut bob, "SAY #mod still here?").await,
        "ERR not-a-member"
    );
    assert_eq!(
        ask(&mut bob, "SAY #gone anyone?").await,
        "ERR room-not-found"
    );
    assert_eq!(ask(&mut bob, "DM alice may I?").await, "ERR blocked");
    link.heal();

    // Blocks and unblocks with NATS back: each node applies them as they come (B has
    // applied each once its count of changes is PostgreSQL's).
    for round in 0..3 {
        assert_eq!(ask(&mut alice, "UNBLOCK bob").await, "OK");
        caught_up(&cluster, b).await;
        bob.send(&format!("DM alice hello {round}")).await.unwrap();
        let hello = format!("hello {round}");
        until(&mut alice, |l| l.ends_with(&hello)).await;
        assert_eq!(ask(&mut alice, "BLOCK bob").await, "OK");
        caught_up(&cluster, b).await;
        assert_eq!(ask(&mut bob, "DM alice again?").await, "ERR blocked");
    }
    caught_up(&cluster, a).await;
    for node in [a, b] {
        let reads = services::cluster::metric(node, "parley_cluster_moderation_reads_total").await;
        assert_eq!(reads, 0.0, "{node} read all of moderation again");
        let asked = services::cluster::metric(node, "parley_cluster_tombstone_reads_total").await;
        assert_eq!(asked, 0.0, "{node} asked PostgreSQL what a message is");
    }
}

/// The same message deleted through two nodes at once: each node's hub finds it not
/// deleted yet and makes a tombstone, but only the first deletion committed is stored and
/// announced; the second is a no-op (answered OK, as a deletion of a deleted message is),
/// with no empty message stored or delivered. A witness on each node sees each deletion
/// once and nothing else; the history holds no empty message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_through_two_nodes_at_once_is_deleted_once() {
    if !services::available() {
        return;
    }
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    // alice owns #twice (on A); carol, the author, speaks through B; a witness on each.
    let mut alice = text(a, "alice").await;
    assert_eq!(ask(&mut alice, "JOIN #twice").await, "OK");
    let mut carol = text(b, "carol").await;
    let mut on_a = text(a, "wa").await;
    let mut on_b = text(b, "wb").await;
    for (who, c) in [("carol", &mut carol), ("wa", &mut on_a), ("wb", &mut on_b)] {
        assert_eq!(ask(c, "JOIN #twice").await, "OK");
        let joined = format!("INFO {who} joined #twice");
        until(&mut alice, |l| l == joined).await;
    }
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let said = format!("secret {round}");
        carol.send(&format!("SAY #twice {said}")).await.unwrap();
        let line = format!("ROOM #twice carol {said}");
        until(&mut alice, |l| l == line).await;
        let history = listing(&mut carol, "HISTORY #twice").await;
        let seq: i64 = history
            .iter()
            .find(|l| l.ends_with(&format!("carol {said}")))
            .and_then(|l| l.split(' ').nth(2))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{history:?}"));
        // Both deletions sent before either is answered.
        let delete = format!("DELETE #twice {seq}");
        alice.send(&delete).await.unwrap();
        carol.send(&delete).await.unwrap();
        for c in [&mut alice, &mut carol] {
            assert_eq!(until(c, |l| l == "OK" || l.starts_with("ERR")).await, "OK");
        }
    }
    // Each witness: every message and one deletion of each, then the end marker.
    carol.send("SAY #twice the end").await.unwrap();
    for (name, w) in [("wa", &mut on_a), ("wb", &mut on_b)] {
        let mut seen = Vec::new();
        loop {
            let line = until(w, |l| {
                l.starts_with("ROOM #twice") || l.starts_with("DELETED #twice")
            })
            .await;
            if line == "ROOM #twice carol the end" {
                break;
            }
            seen.push(line);
        }
        let deletions = seen.iter().filter(|l| l.starts_with("DELETED")).count();
        let said = seen
            .iter()
            .filter(|l| l.starts_with("ROOM #twice carol secret"))
            .count();
        assert_eq!(
            (said, deletions, seen.len()),
            (ROUNDS, ROUNDS, 2 * ROUNDS),
            "{name}: {seen:#?}"
        );
    }
    // The tombstones relayed said what they delete: no node asked PostgreSQL.
    for node in [a, b] {
        let asked = services::cluster::metric(node, "parley_cluster_tombstone_reads_total").await;
        assert_eq!(asked, 0.0, "{node} asked PostgreSQL what a message is");
    }
    let history = listing(&mut on_a, "HISTORY #twice").await;
    let deleted = history
        .iter()
        .filter(|l| l.ends_with("carol [message deleted]"))
        .count();
    assert_eq!(
        (deleted, history.len()),
        (ROUNDS, ROUNDS + 1),
        "{history:#?}"
    );
}
