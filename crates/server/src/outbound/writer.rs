//! The writer task: drains a session's queue into its socket.
//!
//! It takes everything queued (up to `BATCH` items), encodes it into one buffer sized for
//! the whole write first, and writes it with one call (a turn with more than `WRITE_BYTES`
//! to write writes that much at a time, so a writer holds at most about that much encoded).
//! After each write it notes what the write delivered; once the peer's TCP stack
//! acknowledged those bytes (`tcp_ack`), it reports how far each conversation got, which
//! becomes the device's cursor. A write the peer takes nothing of for `write_timeout_ms`
//! ends the session: a client that does not read is a slow consumer, whatever it holds.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;

use super::encode::{encode_reply, frame_json, frame_line};
use super::link::Link;
use super::tcp_ack::AckTracker;
use super::{Item, Style};
use crate::conn::WriteHalf;
use crate::store::{ConvId, DeviceId, Seq};
use crate::timer::Timer;

/// Largest number of queued items taken in one go.
pub(super) const BATCH: usize = 512;
/// About the most bytes encoded for one write (at least one item's): what a writer whose
/// client reads slowly holds besides its queue.
const WRITE_BYTES: usize = 64 * 1024;
/// A write buffer that grew past this is released after use.
const KEEP_BUFFER: usize = 64 * 1024;
/// A write buffer or item list larger than these is released when the queue runs empty, so
/// a session that had a burst does not keep its memory while idle (and a busy one keeps
/// what it needs while the queue keeps filling). 64 items (2.5 KB, held by a running
/// writer only) as the queue and the hub's staging keep: a session given a few dozen items
/// a batch passes one list around (staged, queued, taken) where, released at every turn
/// past 16, a new one grew at the hub's (about 60 instructions a message at W = 64).
const KEEP_IDLE_BUFFER: usize = 4 * 1024;
const KEEP_ITEMS: usize = 64;
/// How often unacknowledged deliveries are checked again while a session closes.
const ACK_POLL: Duration = Duration::from_millis(5);
/// How long a closing session waits for the peer to acknowledge its last deliveries.
const ACK_GRACE: Duration = Duration::from_millis(200);
/// How often the peer's acknowledgements are checked and the progress they confirm is
/// reported (and always at the end): each check is a system call and each report an operation
/// and a row update, and a busy receiver writes many times a second.
const REPORT_EVERY: Duration = Duration::from_millis(20);
/// How long a writer task with nothing to do stays before it parks: a busy session does not
/// start a task per write.
const LINGER: Duration = Duration::from_millis(100);

/// A writer task: drains the queue into the socket until the session closes (then flushes),
/// the socket fails or the session is killed, or it has had nothing to do for `LINGER`
/// (then it parks its state in the link and ends).
pub(super) async fn run(link: Arc<Link>, mut out: Box<Writer>) {
    let queue = &link.queue;
    let mut items = Vec::new();
    // One timer: the acknowledgement poll while deliveries wait for the peer's
    // acknowledgement or progress waits to be reported (at the reporting cadence however
    // often the writer wakes meanwhile), else the linger before parking. Polled at every
    // turn that waits: a `Timer` polls its `Sleep` only when that may have fired.
    let mut timer: Option<Timer> = None;
    let mut last_write = tokio::time::Instant::now();
    // When this turn began: the end of the last write, or the timer's firing (read once per
    // turn; a second read of the clock per write was about 40 instructions a message at
    // W = 1).
    let mut now = last_write;
    loop {
        // About to wait: what a burst grew is not kept by an idle session. (The queue's
        // lock is taken only when there is something to release: a lock per turn was about
        // 50 instructions a message at W = 1.)
        let grown = items.capacity() > KEEP_ITEMS || out.buf.capacity() > KEEP_IDLE_BUFFER;
        if grown && queue.is_empty() {
            if items.capacity() > KEEP_ITEMS {
                items = Vec::new();
            }
            if out.buf.capacity() > KEEP_IDLE_BUFFER {
                out.buf = BytesMut::new();
            }
        }
        let polling = out.acks.waiting() || !out.unreported.is_empty();
        let due = match polling {
            true => now + REPORT_EVERY,
            false => last_write + LINGER,
        };
        match &mut timer {
            // A timer that fires no later than needed stays as it is: when it fires early,
            // the turn finds what is due and aims it again. (Aimed anew after every write,
            // a linger behind the last one took the timer wheel's lock once a message.)
            Some(t) if !t.is_elapsed() && t.deadline() <= due => {}
            Some(t) => t.reset(due),
            None => timer = Some(Timer::at(due)),
        }
        let got = tokio::select! {
            biased;
            turn = std::future::poll_fn(|cx| link.poll_turn(cx, &mut items)) => match turn {
                // 0 once the session is closing (or the queue closed) and nothing is left.
                Some(n) => n,
                None => {
                    out.report(&link, true);
                    return link.writer_stopped();
                }
            },
            _ = timer.as_mut().expect("armed above") => {
                now = tokio::time::Instant::now();
                out.count_out(&link);
                if polling {
                    out.report(&link, true);
                    continue;
                }
                if now < last_write + LINGER {
                    // Armed before the last write: linger from that one.
                    continue;
                }
                // Nothing to do for a while: park, unless something arrived meanwhile. A
                // parked writer keeps no buffer.
                out.buf = BytesMut::new();
                match link.park(out) {
                    None => return,
                    Some(back) => out = back,
                }
                continue;
            }
        };
        if got == 0 {
            break;
        }
        if !out.write(&link, &mut items).await {
            out.report(&link, true);
            return link.writer_stopped();
        }
        last_write = tokio::time::Instant::now();
        now = last_write;
    }
    // Closing: write what is already queued, then give the peer a moment to acknowledge it,
    // all within the flush timeout (boxed: rarely run, and large).
    let flush = out.flush(&link, &mut items);
    let _ = tokio::time::timeout(link.flush_timeout(), Box::pin(flush)).await;
    link.writer_stopped();
}

/// Where writers report what a device received: in the server, the hub, which makes it the
/// device's cursor. A trait rather than the hub itself, so the output path depends on nothing
/// that depends on it.
pub trait ProgressSink: Send + Sync {
    /// `device` received each conversation of `progress` up to its sequence (the peer's TCP
    /// stack acknowledged the bytes).
    fn received(&self, device: DeviceId, progress: Vec<(ConvId, Seq)>);

    /// Writes of `bytes` in all, carrying `messages` messages, went to a session speaking
    /// `protocol` (the metrics). Counted by the writer and handed over with its reports
    /// (see [`Writer::count_out`]), not per write.
    fn wrote(&self, _protocol: super::Protocol, _messages: usize, _bytes: usize) {}
}

/// What a session's writer owns: the write half, the write buffer, and what the peer has
/// acknowledged. It is parked in the session's link while there is nothing to write; the
/// first push into the empty queue starts a task that writes, waits for the peer's
/// acknowledgements, lingers a moment, and parks again. An idle connection so holds no
/// writer task (about a kilobyte less).
pub struct Writer {
    socket: WriteHalf,
    progress_sink: Arc<dyn ProgressSink>,
    acks: AckTracker,
    buf: BytesMut,
    /// The highest sequence confirmed per conversation (a B-tree: 24 bytes inline against
    /// a hash map's 48, and this state is parked in every idle connection's link).
    progress: BTreeMap<ConvId, Seq>,
    /// Confirmed progress not yet reported.
    unreported: Vec<(ConvId, Seq)>,
    reported_at: tokio::time::Instant,
    /// The name the session is logged in as (`Item::Me`).
    me: Option<Arc<String>>,
    /// Bytes and messages written and not yet handed to the sink's metrics: counted here,
    /// handed over at the writer's timer (every `REPORT_EVERY` while progress waits, else
    /// within `LINGER`), when it parks and when it stops. A metrics call per write was
    /// about 58 instructions, a write per message at W = 1 (callgrind).
    out_bytes: u32,
    out_messages: u32,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// The writer of a connection: `socket` is its write half and `fd` the TCP socket
    /// underneath (for acknowledgement tracking, under TLS too).
    pub fn new(socket: WriteHalf, fd: RawFd, progress_sink: Arc<dyn ProgressSink>) -> Writer {
        Writer {
            acks: AckTracker::new(fd, !socket.is_tls()),
            socket,
            progress_sink,
            buf: BytesMut::new(),
            progress: BTreeMap::new(),
            unreported: Vec::new(),
            reported_at: tokio::time::Instant::now(),
            me: None,
            out_bytes: 0,
            out_messages: 0,
        }
    }

    /// Encodes and writes `items` (emptying it), `WRITE_BYTES` at most at a time. False
    /// when the socket failed or the session was killed. (The queue counts what they weigh
    /// off its byte bound at the next take.)
    async fn write(&mut self, link: &Link, items: &mut Vec<Item>) -> bool {
        let style = Style::from_u8(link.style.load(Ordering::Relaxed));
        while !items.is_empty() {
            // As many items as fit one write (at least one), and room for all of them at
            // once: grown item by item, the buffer doubled half a dozen times per write of
            // a fan-out (each a new allocation and a copy).
            let (mut n, mut hint) = (0, 0);
            for item in items.iter() {
                let len = item.encoded_len_hint(style);
                if n > 0 && hint + len > WRITE_BYTES {
                    break;
                }
                (n, hint) = (n + 1, hint + len);
            }
            self.buf.reserve(hint);
            if !self.write_some(link, style, items, n).await {
                return false;
            }
        }
        true
    }

    /// Encodes the first `n` of `items` into the buffer and writes it with one call. False
    /// when the socket failed or the session was killed.
    async fn write_some(
        &mut self,
        link: &Link,
        style: Style,
        items: &mut Vec<Item>,
        n: usize,
    ) -> bool {
        let buf = &mut self.buf;
        let mut messages = 0;
        // What the write carries goes straight to the acknowledgement tracker (no list per
        // write), as one entry per run of a conversation: only a conversation's furthest
        // sequence counts, and a fan-out write carries dozens of one room's messages.
        let acks = &mut self.acks;
        let mut progress = |conv: ConvId, seq: Seq| acks.carries(conv, seq);
        for item in items.drain(..n) {
            let d = match item {
                // A WebSocket's replies and rendered lines go in frames of their own.
                Item::Reply(tag, reply) if style == Style::WebSocket => {
                    frame_json(|out| encode_reply(&tag, &reply, out), buf);
                    continue;
                }
                Item::Bytes(bytes) if style == Style::WebSocket => {
                    frame_line(&bytes, buf);
                    continue;
                }
                Item::Reply(tag, reply) => {
                    encode_reply(&tag, &reply, buf);
                    continue;
                }
                Item::Me(name) => {
                    self.me = Some(name);
                    continue;
                }
                Item::Bytes(bytes) | Item::Raw(bytes) => {
                    buf.extend_from_slice(&bytes);
                    continue;
                }
                Item::Notice(notice) => {
                    buf.extend_from_slice(notice.encoded(style));
                    continue;
                }
                Item::Run(run, start, end) => {
                    let (start, end) = (start as usize, end as usize);
                    run.write_to(style, start..end, buf);
                    messages += end - start;
                    if let Some(seq) = end.checked_sub(1).and_then(|last| run.seq(last)) {
                        progress(run.conv, seq);
                    }
                    continue;
                }
                Item::Deliver(d) | Item::Replay(d) => d,
            };
            if style.is_text() && d.sent_by(self.me.as_deref()) {
                // The user's own message, from another of their devices: it shows whom
                // it went to, not who sent it.
                super::encode::encode_sent(&d, buf);
            } else {
                d.write_to(style, buf);
            }
            messages += 1;
            progress(d.conv, d.seq);
        }
        let written_bytes = buf.len();
        let written = send(&mut self.socket, link, buf).await;
        buf.clear();
        if buf.capacity() > KEEP_BUFFER {
            *buf = BytesMut::new();
        }
        if !written {
            self.acks.failed();
            return false;
        }
        let (bytes, messages) = (written_bytes as u32, messages as u32);
        if self.out_bytes.checked_add(bytes).is_none() {
            // u32s (every parked writer holds them): past 4 GB they are handed over first.
            self.count_out(link);
        }
        self.out_bytes += bytes;
        self.out_messages += messages;
        // Clients that ack move their cursors themselves; the bytes still count.
        let client_acks = link.acks.load(Ordering::Relaxed);
        // Confirmed (and reported) by the writer's poll timer: the peer cannot have
        // acknowledged these bytes yet.
        self.acks.written(written_bytes, !client_acks);
        true
    }

    /// The writer's end: writes what is queued, gives the peer a moment to acknowledge it,
    /// reports, shuts the socket down. A killed session only reports.
    pub(super) async fn flush(&mut self, link: &Link, items: &mut Vec<Item>) {
        if !link.is_killed() {
            loop {
                link.queue.try_take(items, BATCH);
                if items.is_empty() || !self.write(link, items).await {
                    break;
                }
            }
            let deadline = tokio::time::Instant::now() + ACK_GRACE;
            while self.acks.waiting() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(ACK_POLL).await;
                self.report(link, false);
            }
        }
        self.report(link, true);
        let _ = self.socket.shutdown().await;
    }

    /// Collects how far the peer acknowledged each conversation, and reports it to the sink
    /// (where it becomes the device's cursor) when `REPORT_EVERY` has passed or `now`.
    fn report(&mut self, link: &Link, now: bool) {
        if now {
            self.count_out(link);
        }
        let (progress, unreported) = (&mut self.progress, &mut self.unreported);
        self.acks.confirmed(|conv, seq| {
            let at = progress.entry(conv).or_insert(0);
            if seq > *at {
                *at = seq;
                match unreported.iter_mut().find(|c| c.0 == conv) {
                    Some(c) => c.1 = seq,
                    None => unreported.push((conv, seq)),
                }
            }
        });
        let due = now || self.reported_at.elapsed() >= REPORT_EVERY;
        if self.unreported.is_empty() || !due {
            return;
        }
        self.reported_at = tokio::time::Instant::now();
        let changed = std::mem::take(&mut self.unreported);
        if let Some(device) = link.device() {
            self.progress_sink.received(device, changed);
        }
    }

    /// Hands what was written since the last call to the sink's metrics.
    fn count_out(&mut self, link: &Link) {
        if self.out_bytes > 0 {
            let (bytes, messages) = (self.out_bytes as usize, self.out_messages as usize);
            (self.out_bytes, self.out_messages) = (0, 0);
            self.progress_sink.wrote(link.protocol, messages, bytes);
        }
    }
}

/// Writes `buf` whole. Most writes complete at once; the kill switch is watched, and the
/// write timeout runs, only while one waits, and the timeout starts again whenever the
/// socket takes something (a client that reads slowly is not one that stopped). False when
/// the socket failed or the session was killed (a write that timed out kills it).
async fn send(socket: &mut WriteHalf, link: &Link, buf: &[u8]) -> bool {
    let mut at = 0;
    while at < buf.len() {
        match wait(link, socket.write(&buf[at..])).await {
            Some(0) | None => return false,
            Some(n) => at += n,
        }
    }
    // TLS holds what it encrypted until flushed; plain TCP has nothing to flush.
    !socket.is_tls() || wait(link, socket.flush()).await.is_some()
}

/// Completes `op`, a socket operation, within the write timeout.
async fn wait<T>(link: &Link, op: impl Future<Output = std::io::Result<T>>) -> Option<T> {
    let mut op = std::pin::pin!(op);
    let first = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => r.ok(),
        Poll::Pending => {
            let mut deadline = link
                .write_timeout()
                .map(|t| Box::pin(tokio::time::sleep(t)));
            std::future::poll_fn(|cx| {
                link.poll_write(cx, op.as_mut(), deadline.as_mut().map(|d| d.as_mut()))
            })
            .await
        }
    }
}
