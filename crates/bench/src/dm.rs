//! `dm`: P sender/receiver pairs, M messages in all, at most W unanswered per sender.
//!
//! Receivers `r0..` log in first, then senders `s0..`; sender i sends its share of M to
//! receiver i. Given several `--addr` (a cluster's nodes), receiver i is on node i and its
//! sender on the next node (both modulo the nodes): every message crosses nodes. Each payload starts with the sender's sequence number and its send time, so
//! receivers measure end-to-end latency and find lost, duplicated and reordered messages.
//! The rate is counted where it matters, at the receivers: delivered / (last receipt − first
//! send).
//!
//! Flow control per protocol:
//! - binary and JSON: a sender has at most W requests without a response (W = 1 is a closed
//!   loop: send, wait for OK, send the next);
//! - text: `DM` has no answer on success, so a sender keeps at most W messages that its
//!   receiver has not received yet (counted by the receiver). With W = 1 this is a closed
//!   loop through the recipient rather than through the OK.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::ensure;
use anyhow::Context;
use bytes::BytesMut;
use parley_proto::binary::{self, code, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::conn::{each_line, read_more, Conn};
use crate::report::{cpu_ns, cpu_per, rate, Figures, Tally};
use crate::{hex, now_ns, run_tag, share, stamp, unhex_prefix, unstamp, watch, Common, Ended};
use crate::{Proto, MAX_MESSAGES, PREFIX};

/// Bytes a hot loop makes room for before each read.
const CHUNK: usize = 64 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct DmArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Messages in total (split evenly over the pairs).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Unanswered messages per sender (1: closed loop).
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Payload bytes per message (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Protocol of senders and receivers.
    #[arg(long, value_enum, default_value = "binary")]
    pub proto: Proto,
}

/// What the receiver of one pair has received so far, for text flow control.
#[derive(Default)]
pub struct Pair {
    pub received: AtomicU64,
    pub wake: Notify,
}

/// What a sender got back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub sent: u64,
    /// Answers other than OK (binary, JSON) or `ERR` lines (text).
    pub errors: u64,
}

pub async fn run(addr: SocketAddr, args: DmArgs) -> anyhow::Result<Figures> {
    ensure!(args.pairs > 0, "--pairs must be positive");
    ensure!(args.window > 0, "--window must be positive");
    ensure!(args.size >= PREFIX, "--size must be at least {PREFIX}");
    ensure!(
        args.messages <= MAX_MESSAGES,
        "--messages is at most {MAX_MESSAGES}"
    );
    let deadline = args.common.deadline();
    let tag = run_tag();
    let proto = args.proto;
    let nodes = args.common.nodes(addr);
    let mut receivers = Vec::new();
    for i in 0..args.pairs {
        let node = nodes[i % nodes.len()];
        receivers.push(Conn::login(node, proto, &format!("{tag}r{i}")).await?);
    }
    let mut senders = Vec::new();
    for i in 0..args.pairs {
        let node = nodes[(i + 1) % nodes.len()];
        senders.push(Conn::login(node, proto, &format!("{tag}s{i}")).await?);
    }

    let total = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let cpu = args.common.pid.and_then(cpu_ns);
    let start = now_ns();
    let mut rx_tasks = JoinSet::new();
    let mut tx_tasks = JoinSet::new();
    for (i, (rx, tx)) in receivers.into_iter().zip(senders).enumerate() {
        let pair = Arc::new(Pair::default());
        let count = share(args.messages, args.pairs, i);
        let from = format!("{tag}s{i}");
        let to = format!("{tag}r{i}");
        let (total, cancel2) = (total.clone(), cancel.clone());
        let p = pair.clone();
        rx_tasks.spawn(async move { receive(proto, rx, from, count, &p, &total, &cancel2).await });
        let (done, cancel) = (done.clone(), cancel.clone());
        let names = (format!("{tag}s{i}"), to);
        let (window, size) = (args.window, args.size);
        tx_tasks.spawn(async move {
            let (from, to) = (&names.0, &names.1);
            let sent = match proto {
                Proto::Binary => send_binary(tx, from, to, count, window, size, &cancel).await,
                Proto::Json | Proto::Ws => {
                    send_json(proto, tx, to, count, window, size, &cancel).await
                }
                Proto::Text => {
                    let pace = (&*pair, &*done);
                    return send_text(tx, to, count, window, size, pace, &cancel).await;
                }
            };
            done.fetch_add(1, Ordering::Relaxed);
            sent
        });
    }
    let ended = watch(
        "dm",
        &total,
        args.messages,
        &done,
        args.pairs,
        deadline,
        &cancel,
    )
    .await;

    let cpu = cpu_per(cpu, args.common.pid, total.load(Ordering::Relaxed));
    let mut tally = Tally::new(&[]);
    while let Some(t) = rx_tasks.join_next().await {
        tally.merge(&t?);
    }
    let mut sent = Sent::default();
    while let Some(s) = tx_tasks.join_next().await {
        let s = s?;
        sent.sent += s.sent;
        sent.errors += s.errors;
    }
    let seconds = tally.last_ns.saturating_sub(start) as f64 / 1e9;
    let mut figures = Figures::default();
    figures
        .put("delivered", tally.received)
        .put("seconds", (seconds * 1000.0).round() / 1000.0)
        .put("delivered_per_sec", rate(tally.received, seconds));
    tally.figures(args.messages, &mut figures);
    figures
        .put("sent", sent.sent)
        .put("errors", sent.errors)
        .put("timed_out", ended == Ended::TimedOut);
    if let Some(cpu) = cpu {
        figures.put("server_cpu_us_per_msg", cpu);
    }
    Ok(figures)
}

/// Receives the messages of one sender (`from`, `expected` of them) until all arrived or
/// `cancel`; the connection stays open until `cancel` (the end of the phase) either way.
pub async fn receive(
    proto: Proto,
    conn: Conn,
    from: String,
    expected: u64,
    pair: &Pair,
    total: &AtomicU64,
    cancel: &CancellationToken,
) -> Tally {
    let (stream, mut buf) = conn.into_parts();
    // Keep the write half: dropping it would shut the connection down for the server.
    let (mut read, _write) = stream.into_split();
    let mut tally = Tally::new(&[expected]);
    loop {
        let now = now_ns();
        let before = tally.received;
        let mut record = |sender: &[u8], payload: Option<[u8; PREFIX]>| match payload
            .filter(|_| sender == from.as_bytes())
        {
            Some(p) => {
                let (seq, sent) = unstamp(&p).expect("16 bytes");
                tally.record(0, seq, sent, now);
            }
            None => tally.unexpected += 1,
        };
        match proto {
            Proto::Binary => {
                while let Ok(Some(frame)) = binary::decode(&mut buf, usize::MAX >> 1) {
                    if let Frame::Message { message, from, .. } = frame {
                        let payload = message.get(..PREFIX).and_then(|p| p.try_into().ok());
                        record(&from, payload);
                    }
                }
            }
            Proto::Text => each_line(&mut buf, |line| {
                // DM <from> <hex>
                if let Some(rest) = line.strip_prefix(b"DM ") {
                    let mut parts = rest.splitn(2, |&b| b == b' ');
                    let sender = parts.next().unwrap_or_default();
                    record(sender, parts.next().and_then(unhex_prefix));
                }
            }),
            Proto::Json => each_line(&mut buf, |line| json_push(line, &mut record)),
            Proto::Ws => {
                if !crate::ws::each_frame(&mut buf, |json| json_push(json, &mut record)) {
                    return tally;
                }
            }
        }
        let got = tally.received - before;
        if got > 0 {
            pair.received.fetch_add(got, Ordering::Relaxed);
            pair.wake.notify_one();
            total.fetch_add(got, Ordering::Relaxed);
        }
        if tally.received >= expected {
            cancel.cancelled().await;
            return tally;
        }
        if read_more(&mut read, &mut buf, CHUNK, cancel)
            .await
            .is_none()
        {
            return tally;
        }
    }
}

/// Records a pushed JSON message (`record(sender, payload prefix)`); other lines are not
/// messages.
fn json_push(line: &[u8], record: &mut impl FnMut(&[u8], Option<[u8; PREFIX]>)) {
    if line.starts_with(br#"{"event":"message""#) {
        match serde_json::from_slice::<Push>(line) {
            Ok(push) => record(push.from.as_bytes(), unhex_prefix(push.text.as_bytes())),
            Err(_) => record(b"", None),
        }
    }
}

/// A pushed JSON message (the fields the bench reads), borrowed from the line: names and
/// hex payloads carry no escapes, and copying them cost the receivers an allocation each.
#[derive(serde::Deserialize)]
struct Push<'a> {
    from: &'a str,
    text: &'a str,
}

/// Sends `count` messages to `to`, keeping at most `window` without a response.
pub async fn send_binary(
    conn: Conn,
    from: &str,
    to: &str,
    count: u64,
    window: u64,
    size: usize,
    cancel: &CancellationToken,
) -> Sent {
    let (stream, mut buf) = conn.into_parts();
    let (mut read, mut write) = stream.into_split();
    let mut payload = vec![b'.'; size];
    let mut out = BytesMut::new();
    let (mut seq, mut answered, mut errors) = (0u64, 0u64, 0u64);
    while answered < count {
        while seq < count && seq - answered < window {
            stamp(&mut payload, seq);
            let cid = (seq as u32).wrapping_add(1);
            let _ =
                binary::encode_message(cid, &payload, from.as_bytes(), to.as_bytes(), 0, &mut out);
            seq += 1;
        }
        if !out.is_empty() {
            if write.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if read_more(&mut read, &mut buf, CHUNK, cancel)
            .await
            .is_none()
        {
            break;
        }
        while let Ok(Some(frame)) = binary::decode(&mut buf, usize::MAX >> 1) {
            if let Frame::Response { code, .. } = frame {
                answered += 1;
                errors += u64::from(code != code::OK);
            }
        }
    }
    Sent { sent: seq, errors }
}

/// Sends message `seq` (in the payload) to `names[i]` for each `(i, seq)` of `plan`, keeping
/// at most `window` without an answer, and waits for every answer (set-up work: an error
/// ends it).
pub async fn send_to_many(
    conn: Conn,
    from: &str,
    names: &[String],
    mut plan: impl Iterator<Item = (usize, u64)>,
    window: u64,
    size: usize,
) -> anyhow::Result<Sent> {
    let (mut stream, mut buf) = conn.into_parts();
    let mut payload = vec![b'.'; size];
    let mut out = BytesMut::new();
    let (mut sent, mut answered, mut errors) = (0u64, 0u64, 0u64);
    let mut more = true;
    loop {
        while more && sent - answered < window {
            let Some((i, seq)) = plan.next() else {
                more = false;
                break;
            };
            stamp(&mut payload, seq);
            let cid = (sent as u32).wrapping_add(1);
            let to = names[i].as_bytes();
            binary::encode_message(cid, &payload, from.as_bytes(), to, 0, &mut out)?;
            sent += 1;
        }
        if !out.is_empty() {
            stream.write_all(&out).await.context("sending")?;
            out.clear();
        }
        if !more && answered == sent {
            return Ok(Sent { sent, errors });
        }
        buf.reserve(64 * 1024);
        let read = tokio::time::timeout(crate::conn::SETUP_TIMEOUT, stream.read_buf(&mut buf))
            .await
            .context("no answer to a sender")??;
        ensure!(read > 0, "the server closed a sender's connection");
        while let Some(frame) = binary::decode(&mut buf, usize::MAX >> 1)? {
            if let Frame::Response { code, .. } = frame {
                answered += 1;
                errors += u64::from(code != binary::code::OK);
            }
        }
    }
}

/// The JSON twin of `send_binary`: `DM` requests with an `id`, one response line each.
/// JSON `DM`s, as lines or (`Proto::Ws`) in WebSocket frames, with ids: one answer each.
async fn send_json(
    proto: Proto,
    conn: Conn,
    to: &str,
    count: u64,
    window: u64,
    size: usize,
    cancel: &CancellationToken,
) -> Sent {
    let (stream, mut buf) = conn.into_parts();
    let (mut read, mut write) = stream.into_split();
    let mut payload = vec![0u8; size];
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut frames = bytes::BytesMut::new();
    let (mut seq, mut answered, mut errors) = (0u64, 0u64, 0u64);
    while answered < count {
        while seq < count && seq - answered < window {
            stamp(&mut payload, seq);
            line.clear();
            line.extend_from_slice(br#"{"command":"DM","to":""#);
            line.extend_from_slice(to.as_bytes());
            line.extend_from_slice(br#"","data":""#);
            hex(&payload, &mut line);
            line.extend_from_slice(format!("\",\"id\":{seq}}}").as_bytes());
            match proto {
                Proto::Ws => {
                    crate::ws::frame(&line, &mut frames);
                    out.extend_from_slice(&frames);
                    frames.clear();
                }
                _ => {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
            }
            seq += 1;
        }
        if !out.is_empty() {
            if write.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if read_more(&mut read, &mut buf, CHUNK, cancel)
            .await
            .is_none()
        {
            break;
        }
        let mut answer = |line: &[u8]| {
            if line.starts_with(br#"{"success":"#) {
                answered += 1;
                errors += u64::from(!line.starts_with(br#"{"success":true"#));
            }
        };
        match proto {
            Proto::Ws => {
                if !crate::ws::each_frame(&mut buf, answer) {
                    break;
                }
            }
            _ => each_line(&mut buf, &mut answer),
        }
    }
    Sent { sent: seq, errors }
}

/// Text `DM`s: no answer on success, so at most `window` not yet received by the receiver.
/// Counts itself `done` when everything is written, then keeps counting `ERR` lines until
/// the phase ends.
async fn send_text(
    conn: Conn,
    to: &str,
    count: u64,
    window: u64,
    size: usize,
    (pair, done): (&Pair, &AtomicUsize),
    cancel: &CancellationToken,
) -> Sent {
    let (stream, _) = conn.into_parts();
    let (mut read, mut write) = stream.into_split();
    // Errors come back as `ERR ...` lines: count them on the side.
    let errors = Arc::new(AtomicU64::new(0));
    let (errs, stop) = (errors.clone(), cancel.clone());
    let drain = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while read_more(&mut read, &mut buf, 4096, &stop).await.is_some() {
            each_line(&mut buf, |line| {
                if line.starts_with(b"ERR") {
                    errs.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut payload = vec![0u8; size];
    let mut out = Vec::new();
    let mut seq = 0u64;
    while seq < count && !cancel.is_cancelled() {
        let outstanding = seq - pair.received.load(Ordering::Relaxed).min(seq);
        if outstanding >= window {
            tokio::select! {
                _ = pair.wake.notified() => {}
                _ = cancel.cancelled() => break,
            }
            continue;
        }
        for _ in 0..(window - outstanding).min(count - seq) {
            stamp(&mut payload, seq);
            out.extend_from_slice(b"DM ");
            out.extend_from_slice(to.as_bytes());
            out.push(b' ');
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
    Sent {
        sent: seq,
        errors: errors.load(Ordering::Relaxed),
    }
}
