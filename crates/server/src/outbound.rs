//! A session's bounded outbound queue and the writer task that drains it.
//!
//! The hub never waits on a socket: it `try_send`s into this queue and, when the queue is
//! full, disconnects the session as a slow consumer (what it missed stays in the log). The
//! writer takes everything queued, encodes it into one buffer and writes it with one call;
//! it reports how far each conversation got once the peer's TCP stack acknowledged the
//! bytes (see `tcp_ack`), which becomes the device's cursor.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parley_proto::Reply;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::conn::WriteHalf;
use crate::delivery::{Delivery, Notice};
use crate::hub::Hub;
use crate::queue::{Queue, Refused};
use crate::store::{ConvId, DeviceId, Seq};
use crate::tcp_ack::AckTracker;
use crate::wire::{encode_reply, Protocol, Style, Tag};

/// One thing to write to a client.
#[derive(Debug)]
pub enum Outbound {
    Reply(Tag, Reply),
    /// Bytes the session rendered itself.
    Bytes(Bytes),
    /// A presence notice, written in the session's style.
    Notice(Arc<Notice>),
    /// A live push from the hub.
    Deliver(Arc<Delivery>),
    /// A message replayed from the log while catching up; holds one `replay` permit.
    Replay(Arc<Delivery>),
}

/// What the hub holds of a session: its queue, its kill switch, its in-flight budget.
#[derive(Debug)]
pub struct SessionLink {
    pub id: u64,
    pub protocol: Protocol,
    /// How pushes are written to this session (a `Style` as u8; the text protocol switches
    /// between its two dialects).
    pub style: AtomicU8,
    /// What waits to be written; empty (and unallocated) while the session is idle.
    pub queue: Queue<Outbound>,
    /// Cancelled to drop the connection at once (slow consumer, forced shutdown).
    pub kill: CancellationToken,
    pub kill_reason: OnceLock<&'static str>,
    /// One permit per request in flight; the hub returns it once the reply is queued.
    pub inflight: Arc<Semaphore>,
    /// Pushes (deliveries, notices) waiting in the queue, and how many may
    /// (`outbound_queue`): the queue's other slots are for replies and catch-up, which have
    /// their own bounds.
    pub pushed: std::sync::atomic::AtomicUsize,
    pub push_limit: usize,
    /// The client acks what it received (binary `EnableAcks`, JSON `SUBSCRIBE` with acks):
    /// its acks, not TCP's, move the device's cursor.
    pub acks: std::sync::atomic::AtomicBool,
    /// Slots of the queue that catch-up may fill, so a long replay never leaves the hub
    /// without room for replies and live pushes. The writer returns them.
    pub replay: Arc<Semaphore>,
}

impl SessionLink {
    /// Queues `item` without waiting. A full queue makes this session a slow consumer: it
    /// is disconnected, and whatever it had not received stays in the log for next time.
    pub fn push(&self, item: Outbound) {
        // The queue also holds room for the replies to requests in flight (bounded by
        // `max_inflight`) and for the slots catch-up may still claim: pushes may not use
        // either, so `outbound_queue` is the real limit on what waits for a slow reader.
        let pushed = matches!(item, Outbound::Deliver(_) | Outbound::Notice(_));
        if pushed {
            if self.pushed.load(Ordering::Relaxed) >= self.push_limit {
                return self.kill("slow consumer: outbound queue full");
            }
            self.pushed.fetch_add(1, Ordering::Relaxed);
        }
        match self.queue.push(item) {
            Ok(()) => {}
            Err(Refused::Full) => self.kill("slow consumer: outbound queue full"),
            // The writer has stopped: the session is ending, and what it did not write
            // stays in the log for the device's next login.
            Err(Refused::Closed) => {}
        }
    }

    pub fn kill(&self, reason: &'static str) {
        let _ = self.kill_reason.set(reason);
        self.kill.cancel();
    }
}

/// Everything the writer task needs.
pub struct Writer {
    pub socket: WriteHalf,
    /// The TCP socket underneath (for acknowledgement tracking).
    pub fd: RawFd,
    pub link: Arc<SessionLink>,
    pub hub: Hub,
    /// Set once the session has logged in; cursors are reported for this device.
    pub device: Arc<OnceLock<DeviceId>>,
    /// Cancelled when the session ends: write what is queued (bounded in time), then stop.
    pub closing: CancellationToken,
    pub flush_timeout: Duration,
}

/// Largest number of queued items written in one go.
const BATCH: usize = 512;
/// A write buffer that grew past this is released after use.
const KEEP_BUFFER: usize = 64 * 1024;
/// A write buffer or item list larger than these is released when the queue runs empty, so
/// a session that had a burst does not keep its memory while idle (and a busy one keeps
/// what it needs while the queue keeps filling).
const KEEP_IDLE_BUFFER: usize = 4 * 1024;
const KEEP_ITEMS: usize = 16;
/// How often unacknowledged deliveries are checked again while a session closes.
const ACK_POLL: Duration = Duration::from_millis(5);
/// How long a closing session waits for the peer to acknowledge its last deliveries.
const ACK_GRACE: Duration = Duration::from_millis(200);
/// How often the peer's acknowledgements are checked and the progress they confirm is sent to
/// the hub (and always at the end): each check is a system call and each report an operation
/// and a row update, and a busy receiver writes many times a second.
const REPORT_EVERY: Duration = Duration::from_millis(20);

impl Writer {
    /// Runs until the session closes or the socket fails.
    pub async fn run(self) {
        let Writer {
            socket,
            fd,
            link,
            hub,
            device,
            closing,
            flush_timeout,
        } = self;
        let mut out = Output {
            acks: AckTracker::new(fd, !socket.is_tls()),
            socket,
            link,
            hub,
            device,
            buf: BytesMut::new(),
            progress: HashMap::new(),
            unreported: Vec::new(),
            reported_at: tokio::time::Instant::now(),
        };
        // Whatever ends the writer, later pushes are refused and nothing stays queued.
        let _closed = CloseOnDrop(out.link.clone());
        let queue = &_closed.0.queue;
        let mut items = Vec::new();
        // The poll timer runs only while deliveries wait for the peer's acknowledgement or
        // progress waits to be reported, at the reporting cadence however often the writer
        // wakes up meanwhile; an idle writer holds none (it is boxed, made when needed).
        let kill = out.link.kill.clone();
        let mut poll: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if queue.is_empty() {
                // About to wait: what a burst grew is not kept by an idle session.
                if items.capacity() > KEEP_ITEMS {
                    items = Vec::new();
                }
                if out.buf.capacity() > KEEP_IDLE_BUFFER {
                    out.buf = BytesMut::new();
                }
            }
            if out.acks.waiting() || !out.unreported.is_empty() {
                poll.get_or_insert_with(|| Box::pin(tokio::time::sleep(REPORT_EVERY)));
            } else {
                poll = None;
            }
            let got = tokio::select! {
                biased;
                _ = kill.cancelled() => return out.report(true),
                n = queue.take(&mut items, BATCH) => n,
                _ = closing.cancelled() => break,
                _ = async { poll.as_mut().expect("guarded").await }, if poll.is_some() => {
                    poll = None;
                    out.report(true);
                    continue;
                }
            };
            if got == 0 {
                break;
            }
            if !out.write(&mut items).await {
                return out.report(true);
            }
        }
        // Closing: write what is already queued, then give the peer a moment to
        // acknowledge it, all within the flush timeout.
        let drain = async {
            loop {
                queue.try_take(&mut items, BATCH);
                if items.is_empty() || !out.write(&mut items).await {
                    break;
                }
            }
            let deadline = tokio::time::Instant::now() + ACK_GRACE;
            while out.acks.waiting() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(ACK_POLL).await;
                out.report(false);
            }
            out.report(true);
            let _ = out.socket.shutdown().await;
        };
        // Boxed: otherwise every writer would carry this last step's state all its life.
        let _ = Box::pin(tokio::time::timeout(flush_timeout, drain)).await;
    }
}

/// Closes the session's queue when the writer ends.
struct CloseOnDrop(Arc<SessionLink>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.queue.close();
    }
}

/// The writer's socket side: encoding, writing, and reporting what the peer took.
struct Output {
    socket: WriteHalf,
    link: Arc<SessionLink>,
    hub: Hub,
    device: Arc<OnceLock<DeviceId>>,
    acks: AckTracker,
    buf: BytesMut,
    /// The highest sequence confirmed per conversation.
    progress: HashMap<ConvId, Seq>,
    /// Confirmed progress not yet sent to the hub.
    unreported: Vec<(ConvId, Seq)>,
    reported_at: tokio::time::Instant,
}

impl Output {
    /// Encodes and writes `items`. False when the socket failed.
    async fn write(&mut self, items: &mut Vec<Outbound>) -> bool {
        let style = Style::from_u8(self.link.style.load(Ordering::Relaxed));
        let buf = &mut self.buf;
        let mut delivered: Vec<(ConvId, Seq)> = Vec::new();
        let mut replayed = 0;
        let pushes = items
            .iter()
            .filter(|i| matches!(i, Outbound::Deliver(_) | Outbound::Notice(_)))
            .count();
        self.link.pushed.fetch_sub(pushes, Ordering::Relaxed);
        for item in items.drain(..) {
            let d = match item {
                Outbound::Reply(tag, reply) => {
                    encode_reply(&tag, &reply, buf);
                    continue;
                }
                Outbound::Bytes(bytes) => {
                    buf.extend_from_slice(&bytes);
                    continue;
                }
                Outbound::Notice(notice) => {
                    style.encode_notice(&notice, buf);
                    continue;
                }
                Outbound::Deliver(d) => d,
                Outbound::Replay(d) => {
                    replayed += 1;
                    d
                }
            };
            buf.extend_from_slice(d.encoded(style));
            delivered.push((d.conv, d.seq));
        }
        let written_bytes = buf.len();
        let written = {
            let kill = &self.link.kill;
            let mut write = std::pin::pin!(self.socket.write_all(buf));
            // Most writes complete at once; the kill switch is watched only while one waits.
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(r) => r.is_ok(),
                Poll::Pending => tokio::select! {
                    biased;
                    _ = kill.cancelled() => false,
                    r = write => r.is_ok(),
                },
            }
        };
        self.link.replay.add_permits(replayed);
        buf.clear();
        if buf.capacity() > KEEP_BUFFER {
            *buf = BytesMut::new();
        }
        if !written {
            return false;
        }
        // Clients that ack move their cursors themselves; the bytes still count.
        let client_acks = self.link.acks.load(Ordering::Relaxed);
        if client_acks {
            delivered.clear();
        }
        // Confirmed (and reported) by the writer's poll timer: the peer cannot have
        // acknowledged these bytes yet.
        self.acks.written(written_bytes, delivered);
        true
    }

    /// Collects how far the peer acknowledged each conversation, and sends it to the hub
    /// (where it becomes the device's cursor) when `REPORT_EVERY` has passed or `now`.
    fn report(&mut self, now: bool) {
        for (conv, seq) in self.acks.confirmed() {
            let at = self.progress.entry(conv).or_insert(0);
            if seq > *at {
                *at = seq;
                match self.unreported.iter_mut().find(|c| c.0 == conv) {
                    Some(c) => c.1 = seq,
                    None => self.unreported.push((conv, seq)),
                }
            }
        }
        let due = now || self.reported_at.elapsed() >= REPORT_EVERY;
        if self.unreported.is_empty() || !due {
            return;
        }
        self.reported_at = tokio::time::Instant::now();
        let changed = std::mem::take(&mut self.unreported);
        if let Some(device) = self.device.get() {
            self.hub.cursors(*device, changed);
        }
    }
}
