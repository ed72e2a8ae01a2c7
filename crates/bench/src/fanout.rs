//! `fanout`: one room, N members, S publishers; deliveries per second at the members.
//!
//! Text protocol (the binary protocol has no rooms). Members `m0..` and publishers `p0..` log
//! in and `JOIN` a room of this run; once every member has seen the last publisher's join
//! notice (so the set-up's notices are out of the way), publishers `SAY` their share of the
//! messages. `SAY` has no answer, so each publisher keeps at most W messages that members
//! have not received yet, on average over the members. Publishers receive each other's
//! messages too; those are drained but not counted (only the N members are).
//!
//! The relay has no rooms: fanout measures parley alone. Given several `--addr` (a
//! cluster's nodes), members are spread over them in turn, and publisher j is on node j + 1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::conn::{each_line, read_more, Conn, SETUP_TIMEOUT};
use crate::report::{cpu_ns, cpu_per, rate, Figures, Tally};
use crate::{
    decimal, hex, now_ns, run_tag, share, stamp, unhex_prefix, unstamp, watch, Common, Ended,
};
use crate::{Proto, MAX_MESSAGES, PREFIX};

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members of the room (receivers).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Publishers (also members, not counted as receivers).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages in total over all publishers [default: 1,000,000 deliveries / members].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages not yet received by the members (on average), over all publishers: each
    /// keeps its share. One budget for the room, so that runs with 1 and 4 publishers
    /// carry the same load in flight and differ in how many senders it comes from.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Payload bytes per message (at least 16), sent as hex.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Connections set up at once (under the server's listen backlog, see `conns`).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
}

impl FanoutArgs {
    pub fn total_messages(&self) -> u64 {
        self.messages
            .unwrap_or_else(|| (1_000_000 / self.members.max(1) as u64).max(1))
    }
}

/// What the members have received of one publisher's messages, summed over members.
#[derive(Default)]
struct Publisher {
    received: AtomicU64,
    wake: Notify,
}

pub async fn run(addr: SocketAddr, args: FanoutArgs) -> anyhow::Result<Figures> {
    ensure!(
        args.members > 0 && args.publishers > 0,
        "need members and publishers"
    );
    ensure!(
        args.window >= args.publishers as u64,
        "--window must give every publisher at least one message"
    );
    ensure!(args.size >= PREFIX, "--size must be at least {PREFIX}");
    ensure!(
        args.total_messages().saturating_mul(args.members as u64) <= MAX_MESSAGES,
        "messages × members is at most {MAX_MESSAGES}"
    );
    let deadline = args.common.deadline();
    let tag = run_tag();
    let room = format!("#b{tag}");
    let (n, s) = (args.members, args.publishers);
    let per_pub: Vec<u64> = (0..s).map(|j| share(args.total_messages(), s, j)).collect();
    let expected = args.total_messages() * n as u64;
    let pubs: Arc<Vec<Publisher>> = Arc::new((0..s).map(|_| Publisher::default()).collect());
    let total = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let last_join = format!("INFO {tag}p{} joined {room}", s - 1);

    // Members: log in, join, and start listening at once (the join notices of later members
    // must be read as they come).
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let nodes = args.common.nodes(addr);
    let mut setup = JoinSet::new();
    let mut members = JoinSet::new();
    for i in 0..n {
        let (limit, room) = (limit.clone(), room.clone());
        let addr = nodes[i % nodes.len()];
        let name = format!("{tag}m{i}");
        setup.spawn(async move {
            let _permit = limit.acquire().await?;
            let mut conn = Conn::login(addr, Proto::Text, &name).await?;
            conn.send_line(&format!("JOIN {room}")).await?;
            conn.text_ok().await.context("JOIN")?;
            anyhow::Ok(conn)
        });
    }
    while let Some(conn) = setup.join_next().await {
        let conn = conn??;
        let (pubs, total, ready, cancel) =
            (pubs.clone(), total.clone(), ready.clone(), cancel.clone());
        let (prefix, last_join, per_pub) = (format!("{tag}p"), last_join.clone(), per_pub.clone());
        members.spawn(async move {
            let mut member = Member {
                prefix,
                last_join,
                tally: Tally::new(&per_pub),
                counts: vec![0; per_pub.len()],
            };
            member.listen(conn, &pubs, &total, &ready, &cancel).await;
            member.tally
        });
    }
    let mut publishers = Vec::new();
    for j in 0..s {
        let node = nodes[(j + 1) % nodes.len()];
        let mut conn = Conn::login(node, Proto::Text, &format!("{tag}p{j}")).await?;
        conn.send_line(&format!("JOIN {room}")).await?;
        conn.text_ok().await.context("JOIN")?;
        publishers.push(conn);
    }
    let settled = tokio::time::timeout(SETUP_TIMEOUT, async {
        while ready.load(Ordering::Relaxed) < n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    settled
        .await
        .context("members did not see every join in time")?;

    let done = Arc::new(AtomicUsize::new(0));
    let cpu = args.common.pid.and_then(cpu_ns);
    let start = now_ns();
    let mut senders = JoinSet::new();
    for (j, conn) in publishers.into_iter().enumerate() {
        let (pubs, done, cancel) = (pubs.clone(), done.clone(), cancel.clone());
        let line = format!("SAY {room} ");
        let window = share(args.window, args.publishers, j);
        let (count, size) = (per_pub[j], args.size);
        let pace = (window, n as u64);
        senders.spawn(async move {
            publish(conn, &line, count, pace, size, &pubs[j], &done, &cancel).await
        });
    }
    let ended = watch("fanout", &total, expected, &done, s, deadline, &cancel).await;
    let cpu = cpu_per(cpu, args.common.pid, total.load(Ordering::Relaxed) / 1000);

    let mut sent = 0;
    while let Some(s) = senders.join_next().await {
        sent += s?;
    }
    let mut tally = Tally::new(&[]);
    while let Some(t) = members.join_next().await {
        tally.merge(&t?);
    }
    let seconds = tally.last_ns.saturating_sub(start) as f64 / 1e9;
    let mut figures = Figures::default();
    figures
        .put("deliveries", tally.received)
        .put("seconds", (seconds * 1000.0).round() / 1000.0)
        .put("deliveries_per_sec", rate(tally.received, seconds));
    tally.figures(expected, &mut figures);
    figures
        .put("sent", sent)
        .put("timed_out", ended == Ended::TimedOut);
    if let Some(cpu) = cpu {
        figures.put("server_cpu_us_per_1000_deliveries", cpu);
    }
    Ok(figures)
}

/// One member's reading loop and what it counted.
struct Member {
    /// Publishers are `<prefix><j>`.
    prefix: String,
    /// The notice that ends the set-up for this member.
    last_join: String,
    tally: Tally,
    /// Receipts per publisher in the current read, added to the shared counters after it.
    counts: Vec<u64>,
}

impl Member {
    async fn listen(
        &mut self,
        conn: Conn,
        pubs: &[Publisher],
        total: &AtomicU64,
        ready: &AtomicUsize,
        cancel: &CancellationToken,
    ) {
        let (stream, mut buf) = conn.into_parts();
        let (mut read, _write) = stream.into_split();
        loop {
            let now = now_ns();
            each_line(&mut buf, |line| self.line(line, now, ready));
            for (j, count) in self.counts.iter_mut().enumerate() {
                if *count > 0 {
                    pubs[j].received.fetch_add(*count, Ordering::Relaxed);
                    pubs[j].wake.notify_one();
                    total.fetch_add(*count, Ordering::Relaxed);
                    *count = 0;
                }
            }
            if read_more(&mut read, &mut buf, 16 * 1024, cancel)
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// `ROOM <room> <from> <hex>`; anything else is a notice.
    fn line(&mut self, line: &[u8], now: u64, ready: &AtomicUsize) {
        let Some(rest) = line.strip_prefix(b"ROOM ") else {
            if line == self.last_join.as_bytes() {
                ready.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        // Found with memchr: this function took 9 % of the generator's time in a fan-out
        // when it split the line byte by byte and parsed the number through `str`.
        let fields = memchr::memchr(b' ', rest).and_then(|room| {
            let rest = &rest[room + 1..];
            let from = memchr::memchr(b' ', rest)?;
            Some((&rest[..from], &rest[from + 1..]))
        });
        let Some((from, text)) = fields else {
            self.tally.unexpected += 1;
            return;
        };
        let source = from.strip_prefix(self.prefix.as_bytes()).and_then(decimal);
        match (source, unhex_prefix(text)) {
            (Some(j), Some(payload)) => {
                let (seq, sent) = unstamp(&payload).expect("16 bytes");
                let before = self.tally.received;
                self.tally.record(j, seq, sent, now);
                if let Some(count) = self.counts.get_mut(j) {
                    *count += self.tally.received - before;
                }
            }
            _ => self.tally.unexpected += 1,
        }
    }
}

/// Sends `count` room messages, keeping at most `window` of them not yet received by the
/// `members` (on average), and counts itself `done` when all are written. Drains what the
/// publisher itself receives, and keeps the connection until the phase ends.
#[allow(clippy::too_many_arguments)]
async fn publish(
    conn: Conn,
    say: &str,
    count: u64,
    (window, members): (u64, u64),
    size: usize,
    p: &Publisher,
    done: &AtomicUsize,
    cancel: &CancellationToken,
) -> u64 {
    let (stream, _) = conn.into_parts();
    let (mut read, mut write) = stream.into_split();
    let stop = cancel.clone();
    let drain = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while read_more(&mut read, &mut buf, 64 * 1024, &stop)
            .await
            .is_some()
        {
            buf.clear();
        }
    });
    let mut payload = vec![0u8; size];
    let mut out = Vec::new();
    let mut seq = 0u64;
    while seq < count && !cancel.is_cancelled() {
        let received = p.received.load(Ordering::Relaxed) / members;
        let outstanding = seq.saturating_sub(received);
        if outstanding >= window {
            tokio::select! {
                _ = p.wake.notified() => {}
                _ = cancel.cancelled() => break,
            }
            continue;
        }
        for _ in 0..(window - outstanding).min(count - seq) {
            stamp(&mut payload, seq);
            out.extend_from_slice(say.as_bytes());
            hex(&payload, &mut out);
            out.push(b'\n');
            seq += 1;
        }
        if write.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    done.fetch_add(1, Ordering::Relaxed);
    cancel.cancelled().await;
    let _ = drain.await;
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        Member {
            prefix: "run-p".into(),
            last_join: "JOIN room run-m9".into(),
            tally: Tally::new(&[10, 10]),
            counts: vec![0; 2],
        }
    }

    fn room_line(from: &str, seq: u64) -> Vec<u8> {
        let mut payload = [0u8; 32];
        stamp(&mut payload, seq);
        let mut line = format!("ROOM run-room {from} ").into_bytes();
        hex(&payload, &mut line);
        line
    }

    #[test]
    fn a_room_line_counts_for_its_publisher() {
        let (mut m, ready) = (member(), AtomicUsize::new(0));
        m.line(&room_line("run-p1", 3), now_ns(), &ready);
        m.line(&room_line("run-p0", 0), now_ns(), &ready);
        m.line(&room_line("run-p1", 3), now_ns(), &ready);
        assert_eq!((m.tally.received, m.tally.duplicated), (2, 1));
        assert_eq!(m.counts, [1, 1]);
        m.line(b"JOIN room run-m9", now_ns(), &ready);
        assert_eq!(ready.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_room_line_from_anyone_else_or_cut_short_is_unexpected() {
        let (mut m, ready) = (member(), AtomicUsize::new(0));
        for line in [
            room_line("someone", 0),
            room_line("run-p", 0),
            room_line("run-p+1", 0),
            room_line("run-p2", 0),
            b"ROOM run-room run-p1".to_vec(),
            b"ROOM run-room".to_vec(),
            b"ROOM run-room run-p1 not-hex-at-all-not-hex-at-all-xx".to_vec(),
        ] {
            m.line(&line, now_ns(), &ready);
        }
        assert_eq!((m.tally.received, m.tally.unexpected), (0, 7));
        assert_eq!(decimal(b"0123"), Some(123));
        assert_eq!(decimal(b"1234567890"), None, "too long to be a publisher");
    }
}
