//! History read back from message packs (a row per conversation per batch in PostgreSQL):
//! every kind of page — latest, by sequence, by id, by time — starts and ends inside packs
//! as well as at their edges, and reads what a row per message read.

mod common;
mod services;

use std::time::{Duration, Instant};

use parley_client::LineClient;
use serde_json::Value;
use services::cluster::Cluster;

/// Messages sent: more than a pack holds, so that batches split into several.
const SENT: usize = 600;
/// Messages per page asked for.
const PAGE: usize = 50;

/// Reads lines until one satisfies `want`; fails after 20 s.
async fn until(c: &mut LineClient, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no matching line in 20 s");
        let line = c.line().await.expect("a line");
        if want(&line) {
            return line;
        }
    }
}

/// One stored message as a JSON history page shows it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: i64,
    seq: i64,
    text: String,
    received_at: i64,
}

/// The messages of a JSON `HISTORY` of `#p` with `bound` (e.g. `"before":12`).
async fn page(c: &mut LineClient, bound: &str) -> Vec<Seen> {
    let comma = if bound.is_empty() { "" } else { "," };
    c.send(&format!(
        r##"{{"command":"HISTORY","target":"#p","limit":{PAGE}{comma}{bound}}}"##
    ))
    .await
    .unwrap();
    let line = until(c, |l| l.contains(r#""success""#)).await;
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    answer["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {answer}"))
        .iter()
        .map(|m| Seen {
            id: m["id"].as_i64().unwrap(),
            seq: m["seq"].as_i64().unwrap(),
            text: m["text"].as_str().unwrap().to_string(),
            received_at: unix_ms(m["received_at"].as_str().unwrap()),
        })
        .collect()
}

/// Unix ms of an RFC 3339 UTC time with milliseconds (`2026-12-07T00:10:56.070Z`).
fn unix_ms(time: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| -> i64 { time[range].parse().unwrap() };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

/// The sequences a text `HISTORY` command answers with, up to its `OK`.
async fn text_seqs(c: &mut LineClient, command: &str) -> Vec<i64> {
    c.send(command).await.unwrap();
    let mut seqs = Vec::new();
    loop {
        let line = until(c, |l| l == "OK" || l.starts_with("HISTORY ")).await;
        if line == "OK" {
            return seqs;
        }
        seqs.push(line.split(' ').nth(2).unwrap().parse().unwrap());
    }
}

#[test]
fn rfc3339_times_read_as_unix_ms() {
    assert_eq!(unix_ms("1970-01-01T00:00:00.000Z"), 0);
    assert_eq!(unix_ms("2026-12-07T00:10:56.070Z"), 1_796_602_256_070);
    assert_eq!(unix_ms("2024-02-29T23:59:59.999Z"), 1_709_251_199_999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_history_page_reads_through_packs() {
    if !services::available() {
        return;
    }
    let c = Cluster::start(1);
    let node = &c.nodes[0];

    // Sent without waiting, so that the node's batches hold many of them at once.
    let mut alice = LineClient::connect(node.addr).await.unwrap();
    assert_eq!(alice.ask("LOGIN alice").await.unwrap(), "OK");
    assert_eq!(alice.ask("JOIN #p").await.unwrap(), "OK");
    let mut lines = String::new();
    for i in 0..SENT {
        lines.push_str(&format!("SAY #p m{i}\n"));
    }
    alice.send(lines.trim_end()).await.unwrap();
    alice.send("PING").await.unwrap();
    until(&mut alice, |l| l == "PONG").await;
    let packs = c.pg.psql(
        "parley",
        "SELECT COUNT(*), MAX(last_seq - first_seq + 1), SUM(last_seq - first_seq + 1)
         FROM message_packs",
    );
    let fields: Vec<i64> = packs.split('|').map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[2], SENT as i64, "every message stored once: {packs}");
    assert!(
        fields[1] > 1 && fields[0] < SENT as i64,
        "packs of several messages: {packs}"
    );

    let mut jay = LineClient::connect(node.json).await.unwrap();
    assert!(jay.line().await.unwrap().contains("Welcome"));
    for request in [
        r#"{"command":"LOGIN","data":"jay"}"#,
        r##"{"command":"JOIN","room":"#p"}"##,
    ] {
        let answer: Value = serde_json::from_str(&jay.ask(request).await.unwrap()).unwrap();
        assert_eq!(answer["success"], true, "{answer}");
    }

    // Forwards by id from the start: every message once, in order.
    let mut all: Vec<Seen> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m.id);
        let next = page(&mut jay, &format!(r#""after":{after}"#)).await;
        if next.is_empty() {
            break;
        }
        assert!(next.len() == PAGE || all.len() + next.len() == SENT);
        all.extend(next);
        assert!(all.len() <= SENT, "read more than was sent");
    }
    let texts: Vec<String> = all.iter().map(|m| m.text.clone()).collect();
    let sent: Vec<String> = (0..SENT).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, sent);
    let seqs: Vec<i64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=SENT as i64).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids ascend");

    // Backwards by id from the end: the same messages.
    let mut back: Vec<Seen> = page(&mut jay, "").await;
    assert_eq!(back, all[SENT - PAGE..], "the latest page");
    while back.len() < SENT {
        let before = back[0].id;
        let mut older = page(&mut jay, &format!(r#""before":{before}"#)).await;
        assert_eq!(older.len(), PAGE.min(SENT - back.len()));
        older.extend(back);
        back = older;
    }
    assert_eq!(back, all);

    // Pages from every position (inside packs and at their edges), by id and by time.
    for at in (0..SENT).step_by(37).chain([SENT - 1]) {
        let m = &all[at];
        let after = page(&mut jay, &format!(r#""after":{}"#, m.id)).await;
        assert_eq!(
            after,
            all[at + 1..(at + 1 + PAGE).min(SENT)],
            "after id {}",
            m.id
        );
        let before = page(&mut jay, &format!(r#""before":{}"#, m.id)).await;
        assert_eq!(
            before,
            all[at.saturating_sub(PAGE)..at],
            "before id {}",
            m.id
        );

        let t = m.received_at;
        let later: Vec<Seen> = all.iter().filter(|m| m.received_at > t).cloned().collect();
        let after = page(&mut jay, &format!(r#""after_time":{t}"#)).await;
        assert_eq!(after, later[..later.len().min(PAGE)], "after time {t}");
        let earlier: Vec<Seen> = all.iter().filter(|m| m.received_at < t).cloned().collect();
        let before = page(&mut jay, &format!(r#""before_time":{t}"#)).await;
        assert_eq!(
            before,
            earlier[earlier.len().saturating_sub(PAGE)..],
            "before time {t}"
        );
    }

    // By sequence (the text protocol's pages).
    for bound in [1i64, 2, 100, 257, 300, SENT as i64, SENT as i64 + 1] {
        let before = text_seqs(&mut alice, &format!("HISTORY #p {PAGE} before {bound}")).await;
        let want: Vec<i64> = ((bound - PAGE as i64).max(1)..bound.min(SENT as i64 + 1)).collect();
        assert_eq!(before, want, "before {bound}");
        let after = text_seqs(&mut alice, &format!("HISTORY #p {PAGE} after {bound}")).await;
        let want: Vec<i64> = (bound + 1..=(bound + PAGE as i64).min(SENT as i64)).collect();
        assert_eq!(after, want, "after {bound}");
    }
    // A client's bound at the edge of the integers is the latest page, not an error.
    let edge = text_seqs(
        &mut alice,
        &format!("HISTORY #p {PAGE} before {}", i64::MAX),
    )
    .await;
    let want: Vec<i64> = (SENT as i64 - PAGE as i64 + 1..=SENT as i64).collect();
    assert_eq!(edge, want, "before i64::MAX");
}

/// A database of schema version 2 (a row per message) is migrated when a node starts:
/// its messages become packs of one, read as they were, and new ones follow them (their
/// ids a block at a time, version 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_keeps_its_messages_as_packs() {
    if !services::available() {
        return;
    }
    let mut c = Cluster::start(1);
    let mut alice = LineClient::connect(c.nodes[0].addr).await.unwrap();
    assert_eq!(alice.ask("LOGIN alice").await.unwrap(), "OK");
    assert_eq!(alice.ask("JOIN #v").await.unwrap(), "OK");
    drop(alice);
    c.nodes[0].kill();

    // The database as version 2 left it: the messages as rows of their own.
    c.pg.psql(
        "parley",
        "DROP TABLE message_packs;
         DROP TABLE moderation_log;
         CREATE TABLE messages (
             conversation_id BIGINT NOT NULL, seq BIGINT NOT NULL, id BIGINT NOT NULL,
             sender_id BIGINT NOT NULL, sender_device BIGINT NOT NULL,
             sent_at BIGINT NOT NULL, received_at BIGINT NOT NULL, body BYTEA NOT NULL,
             PRIMARY KEY (conversation_id, seq));
         CREATE INDEX messages_id ON messages (conversation_id, id);
         INSERT INTO messages
         SELECT c.id, s, 100 * s, u.id, 0, 7, 1800000000000 + s,
                convert_to('old ' || s, 'UTF8')
         FROM conversations c, users u, generate_series(1, 5) s
         WHERE c.kind = 2 AND u.name = 'alice';
         UPDATE conversations SET last_seq = 5 WHERE kind = 2;
         SELECT setval('message_ids', 500);
         UPDATE parley_schema SET version = 2;",
    );
    let node = services::cluster::Node::start("b", &c.pg.url(), &c.nats.url());
    assert_eq!(
        c.pg.psql("parley", "SELECT version FROM parley_schema"),
        "5"
    );
    assert_eq!(
        c.pg.psql(
            "parley",
            "SELECT COUNT(*) FROM message_packs WHERE first_seq = last_seq"
        ),
        "5"
    );

    let mut bob = LineClient::connect(node.addr).await.unwrap();
    assert_eq!(bob.ask("LOGIN bob").await.unwrap(), "OK");
    assert_eq!(bob.ask("JOIN #v").await.unwrap(), "OK");
    bob.send("SAY #v new").await.unwrap();
    bob.send("PING").await.unwrap();
    until(&mut bob, |l| l == "PONG").await;
    bob.send("HISTORY #v 10").await.unwrap();
    let mut lines = Vec::new();
    loop {
        let line = until(&mut bob, |l| l == "OK" || l.starts_with("HISTORY ")).await;
        if line == "OK" {
            break;
        }
        // HISTORY #v <seq> <time> <from> <text>
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        lines.push(format!("{} {} {}", fields[2], fields[4], fields[5]));
    }
    let want: Vec<String> = (1..=5)
        .map(|s| format!("{s} alice old {s}"))
        .chain(["6 bob new".to_string()])
        .collect();
    assert_eq!(lines, want);
    let ids = c.pg.psql(
        "parley",
        "SELECT string_agg(last_id::text, ',' ORDER BY last_seq) FROM message_packs",
    );
    let ids: Vec<i64> = ids.split(',').map(|i| i.parse().unwrap()).collect();
    assert_eq!(ids[..5], [100, 200, 300, 400, 500]);
    // Version 5 hands ids out in blocks of 64 (a `nextval` per block): the first block
    // after the old ids begins a step past the last of them.
    assert_eq!(
        ids[5],
        500 + 64,
        "a new message's id follows the old ones: {ids:?}"
    );
}
