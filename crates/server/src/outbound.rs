//! A session's bounded outbound queue and the writer task that drains it.
//!
//! The hub never waits on a socket: it pushes into this queue without waiting and, when the
//! queue is full, disconnects the session as a slow consumer (what it missed stays in the
//! log). The writer takes everything queued, encodes it into one buffer and writes it with
//! one call; it reports how far each conversation got once the peer's TCP stack
//! acknowledged the bytes (see `tcp_ack`), which becomes the device's cursor. A writer task
//! runs only while there is something to do: the first push into an empty queue starts it,
//! and after `LINGER` with nothing to write it parks its state in the link and ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use parley_proto::Reply;
use tokio::sync::Semaphore;

use crate::conn::WriteHalf;
use crate::delivery::{Delivery, RoomRun, SharedNotice};
use crate::hub::Hub;
use crate::queue::{Pushed, Queue, Refused};
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
    Notice(Arc<SharedNotice>),
    /// A live push from the hub.
    Deliver(Arc<Delivery>),
    /// Live pushes of a room: messages `start..end` of a batch's run.
    Run(Arc<RoomRun>, u32, u32),
    /// A message replayed from the log while catching up; holds one `replay` permit.
    Replay(Arc<Delivery>),
}

impl Outbound {
    /// How many pushes this is, for the session's push limit (`SessionLink::pushed`).
    fn pushes(&self) -> usize {
        match self {
            Outbound::Deliver(_) | Outbound::Notice(_) => 1,
            Outbound::Run(_, start, end) => (end - start) as usize,
            _ => 0,
        }
    }

    /// The bytes this takes in a write in `style`: exact for messages and notices (encoded
    /// once per style and shared) and rendered bytes, a guess for replies.
    fn encoded_len_hint(&self, style: Style) -> usize {
        match self {
            Outbound::Deliver(d) | Outbound::Replay(d) => d.encoded_len_hint(style),
            Outbound::Run(run, start, end) => {
                run.encoded_len_hint(style, *start as usize..*end as usize)
            }
            Outbound::Bytes(bytes) => bytes.len(),
            Outbound::Notice(notice) => notice.encoded(style).len(),
            Outbound::Reply(..) => 64,
        }
    }
}

/// What the hub holds of a session: its queue, its kill switch, its in-flight budget, and
/// its writer while no writer task runs.
#[derive(Debug)]
pub struct SessionLink {
    pub id: u64,
    pub protocol: Protocol,
    /// How pushes are written to this session (a `Style` as u8; the text protocol switches
    /// between its two dialects).
    pub style: AtomicU8,
    /// What waits to be written; empty (and unallocated) while the session is idle.
    pub queue: Queue<Outbound>,
    /// Why the connection is dropped at once, once it is (a [`Kill`] as u8, 0 before);
    /// see [`SessionLink::kill`].
    kill: AtomicU8,
    /// Wakes the session's task: in `poll_killed` (a waker slot here instead of a waiter
    /// node in the future of every session, which waits for its kill for as long as it
    /// lives) and in `close_writer`, when the writer has stopped.
    session_waker: AtomicWaker,
    /// The writer has stopped for good.
    writer_done: AtomicBool,
    /// The device the session logged in on, 0 before (device 0 is the anonymous sender's,
    /// never a logged-in session's): cursors are reported for it.
    device: AtomicI64,
    /// One permit per request in flight; the hub returns it once the reply is queued.
    pub inflight: Semaphore,
    /// Pushes (deliveries, notices) waiting in the queue, and how many may
    /// (`outbound_queue`): the queue's other slots are for replies and catch-up, which have
    /// their own bounds.
    pub pushed: std::sync::atomic::AtomicUsize,
    /// A u32 like the other limits: the link is allocated for every connection, and these
    /// pack beside its flags.
    push_limit: u32,
    /// The client acks what it received (binary `EnableAcks`, JSON `SUBSCRIBE` with acks):
    /// its acks, not TCP's, move the device's cursor.
    pub acks: std::sync::atomic::AtomicBool,
    /// Slots of the queue that catch-up may fill, so a long replay never leaves the hub
    /// without room for replies and live pushes. The writer returns them.
    pub replay: Semaphore,
    /// The writer's state while no writer task runs (see [`Writer`]).
    parked: Mutex<Option<Box<Output>>>,
    /// Where writer tasks run (pushes come from the hub's thread too).
    runtime: tokio::runtime::Handle,
    me: Weak<SessionLink>,
    flush_timeout_ms: u32,
}

/// Why a session is dropped at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kill {
    /// Its queue passed its limit: it does not read what it is sent.
    SlowConsumer = 1,
    /// Reading what it missed from the store failed.
    CatchupFailed = 2,
}

impl Kill {
    fn from_u8(v: u8) -> Option<Kill> {
        match v {
            1 => Some(Kill::SlowConsumer),
            2 => Some(Kill::CatchupFailed),
            _ => None,
        }
    }

    /// What the session's disconnect line says.
    pub fn reason(self) -> &'static str {
        match self {
            Kill::SlowConsumer => "slow consumer: outbound queue full",
            Kill::CatchupFailed => "catch-up failed",
        }
    }
}

/// What a session's writer owns. It is parked in the session's link while there is nothing
/// to write; the first push into the empty queue starts a task that writes, waits for the
/// peer's acknowledgements, lingers a moment, and parks again. An idle connection so holds
/// no writer task (about a kilobyte less).
pub struct Writer {
    pub socket: WriteHalf,
    /// The TCP socket underneath (for acknowledgement tracking).
    pub fd: RawFd,
    pub hub: Hub,
    /// Bound on the closing flush.
    pub flush_timeout: Duration,
}

/// A session link's sizes.
pub struct LinkLimits {
    /// Every slot of the queue (pushes, replies in flight, replay window).
    pub queue: usize,
    pub pushes: usize,
    pub inflight: usize,
    pub replay: usize,
}

impl SessionLink {
    /// The link of a new session, with its writer parked (call inside the runtime).
    pub fn new(id: u64, protocol: Protocol, limits: LinkLimits, writer: Writer) -> Arc<Self> {
        let flush_timeout_ms = u32::try_from(writer.flush_timeout.as_millis()).unwrap_or(u32::MAX);
        let output = Output {
            acks: AckTracker::new(writer.fd, !writer.socket.is_tls()),
            socket: writer.socket,
            hub: writer.hub,
            buf: BytesMut::new(),
            progress: BTreeMap::new(),
            unreported: Vec::new(),
            reported_at: tokio::time::Instant::now(),
        };
        Arc::new_cyclic(|me| SessionLink {
            id,
            protocol,
            style: AtomicU8::new(protocol.style() as u8),
            queue: Queue::parked(limits.queue),
            kill: AtomicU8::new(0),
            session_waker: AtomicWaker::new(),
            writer_done: AtomicBool::new(false),
            device: AtomicI64::new(0),
            inflight: Semaphore::new(limits.inflight),
            pushed: Default::default(),
            push_limit: u32::try_from(limits.pushes).unwrap_or(u32::MAX),
            acks: Default::default(),
            replay: Semaphore::new(limits.replay),
            parked: Mutex::new(Some(Box::new(output))),
            runtime: tokio::runtime::Handle::current(),
            me: me.clone(),
            flush_timeout_ms,
        })
    }

    /// Queues `item` without waiting. A full queue makes this session a slow consumer: it
    /// is disconnected, and whatever it had not received stays in the log for next time.
    pub fn push(&self, item: Outbound) {
        // The queue also holds room for the replies to requests in flight (bounded by
        // `max_inflight`) and for the slots catch-up may still claim: pushes may not use
        // either, so `outbound_queue` is the real limit on what waits for a slow reader.
        if !self.claim_pushes(item.pushes()) {
            return self.kill(Kill::SlowConsumer);
        }
        match self.enqueue(item) {
            Ok(()) => {}
            Err(Refused::Full) => self.kill(Kill::SlowConsumer),
            // The writer has stopped: the session is ending, and what it did not write
            // stays in the log for the device's next login.
            Err(Refused::Closed) => {}
        }
    }

    /// Queues `items` (emptying it) in order, as `push` would one by one, with one lock and
    /// one wake-up: the hub's way when a batch has several items for one session.
    pub fn push_all(&self, items: &mut Vec<Outbound>) {
        // Past the limit one by one would queue some and then kill the session, whose
        // writer then writes none of them: the same as queueing none.
        if !self.claim_pushes(items.iter().map(Outbound::pushes).sum()) {
            items.clear();
            return self.kill(Kill::SlowConsumer);
        }
        match self.queue.push_all(items) {
            Ok(Pushed::Start) => self.start_writer(),
            Ok(Pushed::Queued) | Err(Refused::Closed) => {}
            Err(Refused::Full) => self.kill(Kill::SlowConsumer),
        }
    }

    /// Counts `n` more pushes waiting in the queue, unless that would pass the limit.
    fn claim_pushes(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if self.pushed.load(Ordering::Relaxed) + n > self.push_limit as usize {
            return false;
        }
        self.pushed.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Queues `item`, starting a writer task if none runs.
    pub fn enqueue(&self, item: Outbound) -> Result<(), Refused> {
        if self.queue.push(item)? == Pushed::Start {
            self.start_writer();
        }
        Ok(())
    }

    fn start_writer(&self) {
        let output = lock(&self.parked).take();
        match (output, self.me.upgrade()) {
            (Some(output), Some(link)) => drop(self.runtime.spawn(write(link, output))),
            // Only a writer that parked asks for a new one, and it parked its state first.
            _ => debug_assert!(false, "a writer was asked for, with none parked"),
        }
    }

    /// Drops the connection at once: its session stops reading and its writer stops
    /// writing. The first reason given is the one reported.
    pub fn kill(&self, why: Kill) {
        let _ = self
            .kill
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        // The writer (or a session flushing its own) waits with its waker in the queue.
        self.queue.interrupt();
        self.session_waker.wake();
    }

    pub fn is_killed(&self) -> bool {
        self.killed_for().is_some()
    }

    /// Why the session was killed, if it was.
    pub fn killed_for(&self) -> Option<Kill> {
        Kill::from_u8(self.kill.load(Ordering::Acquire))
    }

    /// Records the device the session logged in on.
    pub fn set_device(&self, device: DeviceId) {
        self.device.store(device, Ordering::Release);
    }

    fn device(&self) -> Option<DeviceId> {
        Some(self.device.load(Ordering::Acquire)).filter(|d| *d != 0)
    }

    fn flush_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.flush_timeout_ms))
    }

    /// Ready once the session is killed: the session's own wait (one task polls this).
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_session(cx, SessionLink::is_killed)
    }

    /// Ready once `done` holds, else the session's task is woken when it may: the waits of
    /// the session's task on its link.
    fn poll_session(&self, cx: &mut Context<'_>, done: impl Fn(&SessionLink) -> bool) -> Poll<()> {
        if !done(self) {
            // Registered before the second check, so a change between the two still wakes it.
            self.session_waker.register(cx.waker());
        }
        match done(self) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// The writer's wait for its next turn: up to `BATCH` items moved into `items` (0 once
    /// the queue is finishing and empty), or `None` once the session is killed. A kill wakes
    /// the writer through the waker it leaves in the queue, so a wait takes the queue's one
    /// lock (a wait on a `Notify` took two more locks every turn, and polling it one more).
    fn poll_turn(&self, cx: &mut Context<'_>, items: &mut Vec<Outbound>) -> Poll<Option<usize>> {
        if self.is_killed() {
            return Poll::Ready(None);
        }
        let turn = self.queue.poll_take(cx, items, BATCH);
        // Checked again once the waker is left: a kill in between still wakes it.
        if self.is_killed() {
            return Poll::Ready(None);
        }
        turn.map(Some)
    }

    /// Waits on `write` (a write the socket did not take at once) unless the session is
    /// killed meanwhile: false then, or if the write failed.
    fn poll_write<F>(&self, cx: &mut Context<'_>, write: Pin<&mut F>) -> Poll<bool>
    where
        F: Future<Output = std::io::Result<()>>,
    {
        if self.is_killed() {
            return Poll::Ready(false);
        }
        if let Poll::Ready(r) = write.poll(cx) {
            return Poll::Ready(r.is_ok());
        }
        self.queue.watch(cx);
        match self.is_killed() {
            true => Poll::Ready(false),
            false => Poll::Pending,
        }
    }

    /// Ends the writer: what is queued is written (unless the session was killed), the
    /// peer gets a moment to acknowledge it, its progress is reported, and the socket is
    /// shut down; bounded by the flush timeout. Returns once the writer has stopped.
    pub async fn close_writer(&self) {
        // A running writer's `take` returns 0 once the finishing queue is empty: it then
        // flushes and stops.
        if self.queue.finish() {
            // No writer task runs: this session flushes its own.
            let parked = lock(&self.parked).take();
            if let Some(mut output) = parked {
                let mut items = Vec::new();
                let flush = output.flush(self, &mut items);
                let _ = tokio::time::timeout(self.flush_timeout(), Box::pin(flush)).await;
            }
            self.writer_stopped();
        } else {
            let wait = self.flush_timeout() + Duration::from_secs(1);
            let stopped = std::future::poll_fn(|cx| {
                self.poll_session(cx, |link| link.writer_done.load(Ordering::Acquire))
            });
            let _ = tokio::time::timeout(wait, stopped).await;
        }
    }

    /// The writer is gone for good: later pushes are refused and nothing stays queued.
    fn writer_stopped(&self) {
        self.queue.close();
        drop(lock(&self.parked).take());
        self.writer_done.store(true, Ordering::Release);
        self.session_waker.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
/// How long a writer task with nothing to do stays before it parks: a busy session does not
/// start a task per write.
const LINGER: Duration = Duration::from_millis(100);

/// A writer task: drains the queue into the socket until the session closes (then flushes),
/// the socket fails or the session is killed, or it has had nothing to do for `LINGER`
/// (then it parks its state in the link and ends).
async fn write(link: Arc<SessionLink>, mut out: Box<Output>) {
    let queue = &link.queue;
    let mut items = Vec::new();
    // One boxed timer: the acknowledgement poll while deliveries wait for the peer's
    // acknowledgement or progress waits to be reported (at the reporting cadence however
    // often the writer wakes meanwhile), else the linger before parking.
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut last_write = tokio::time::Instant::now();
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
        let polling = out.acks.waiting() || !out.unreported.is_empty();
        let due = match polling {
            true => tokio::time::Instant::now() + REPORT_EVERY,
            false => last_write + LINGER,
        };
        match &mut timer {
            // A timer that fires no later than needed stays as it is: when it fires early,
            // the turn finds what is due and aims it again. (Aimed anew after every write,
            // a linger behind the last one took the timer wheel's lock once a message.)
            Some(t) if !t.is_elapsed() && t.deadline() <= due => {}
            Some(t) => t.as_mut().reset(due),
            None => timer = Some(Box::pin(tokio::time::sleep_until(due))),
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
            _ = async { timer.as_mut().expect("armed above").await } => {
                if polling {
                    out.report(&link, true);
                    continue;
                }
                if tokio::time::Instant::now() < last_write + LINGER {
                    // Armed before the last write: linger from that one.
                    continue;
                }
                // Nothing to do for a while: park, unless something arrived meanwhile. A
                // parked writer keeps no buffer.
                out.buf = BytesMut::new();
                *lock(&link.parked) = Some(out);
                if queue.park() {
                    return;
                }
                out = lock(&link.parked).take().expect("parked just above");
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
    }
    // Closing: write what is already queued, then give the peer a moment to acknowledge it,
    // all within the flush timeout (boxed: rarely run, and large).
    let flush = out.flush(&link, &mut items);
    let _ = tokio::time::timeout(link.flush_timeout(), Box::pin(flush)).await;
    link.writer_stopped();
}

/// The writer's socket side: encoding, writing, and reporting what the peer took.
struct Output {
    socket: WriteHalf,
    hub: Hub,
    acks: AckTracker,
    buf: BytesMut,
    /// The highest sequence confirmed per conversation (a B-tree: 24 bytes inline against
    /// a hash map's 48, and this state is parked in every idle connection's link).
    progress: BTreeMap<ConvId, Seq>,
    /// Confirmed progress not yet sent to the hub.
    unreported: Vec<(ConvId, Seq)>,
    reported_at: tokio::time::Instant,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").finish_non_exhaustive()
    }
}

impl Output {
    /// Encodes and writes `items`. False when the socket failed.
    async fn write(&mut self, link: &SessionLink, items: &mut Vec<Outbound>) -> bool {
        let style = Style::from_u8(link.style.load(Ordering::Relaxed));
        let buf = &mut self.buf;
        let mut delivered: Vec<(ConvId, Seq)> = Vec::new();
        let mut replayed = 0;
        let pushes = items.iter().map(Outbound::pushes).sum();
        link.pushed.fetch_sub(pushes, Ordering::Relaxed);
        // Room for the whole write at once: grown item by item, the buffer doubled half a
        // dozen times per write of a fan-out (each a new allocation and a copy).
        buf.reserve(items.iter().map(|i| i.encoded_len_hint(style)).sum());
        // Only a conversation's furthest sequence counts (the cursor moves to it), so a run
        // of one conversation's deliveries is one entry: a fan-out write carries dozens of
        // one room's messages.
        let mut progress = |conv: ConvId, seq: Seq| match delivered.last_mut() {
            Some(last) if last.0 == conv => last.1 = last.1.max(seq),
            _ => delivered.push((conv, seq)),
        };
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
                    buf.extend_from_slice(notice.encoded(style));
                    continue;
                }
                Outbound::Run(run, start, end) => {
                    let (start, end) = (start as usize, end as usize);
                    run.write_to(style, start..end, buf);
                    if let Some(seq) = end.checked_sub(1).and_then(|last| run.seq(last)) {
                        progress(run.conv, seq);
                    }
                    continue;
                }
                Outbound::Deliver(d) => d,
                Outbound::Replay(d) => {
                    replayed += 1;
                    d
                }
            };
            d.write_to(style, buf);
            progress(d.conv, d.seq);
        }
        let written_bytes = buf.len();
        let written = {
            let mut write = std::pin::pin!(self.socket.write_all(buf));
            // Most writes complete at once; the kill switch is watched only while one waits.
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(r) => r.is_ok(),
                Poll::Pending => {
                    std::future::poll_fn(|cx| link.poll_write(cx, write.as_mut())).await
                }
            }
        };
        link.replay.add_permits(replayed);
        buf.clear();
        if buf.capacity() > KEEP_BUFFER {
            *buf = BytesMut::new();
        }
        if !written {
            return false;
        }
        // Clients that ack move their cursors themselves; the bytes still count.
        let client_acks = link.acks.load(Ordering::Relaxed);
        if client_acks {
            delivered.clear();
        }
        // Confirmed (and reported) by the writer's poll timer: the peer cannot have
        // acknowledged these bytes yet.
        self.acks.written(written_bytes, delivered);
        true
    }

    /// The writer's end: writes what is queued, gives the peer a moment to acknowledge it,
    /// reports, shuts the socket down. A killed session only reports.
    async fn flush(&mut self, link: &SessionLink, items: &mut Vec<Outbound>) {
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

    /// Collects how far the peer acknowledged each conversation, and sends it to the hub
    /// (where it becomes the device's cursor) when `REPORT_EVERY` has passed or `now`.
    fn report(&mut self, link: &SessionLink, now: bool) {
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
        if let Some(device) = link.device() {
            self.hub.cursors(device, changed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Protocol;

    /// A link over a loopback connection whose peer (returned) never reads.
    async fn link_to_a_stalled_peer() -> (Arc<SessionLink>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        let socket = accepted.unwrap().0;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let (_read, write) = socket.into_split();
        let writer = Writer {
            socket: WriteHalf::Tcp(write),
            fd,
            hub: Hub::stopped(),
            flush_timeout: Duration::from_secs(1),
        };
        let limits = LinkLimits {
            queue: 8,
            pushes: 8,
            inflight: 8,
            replay: 8,
        };
        (
            SessionLink::new(1, Protocol::Binary, limits, writer),
            peer.unwrap(),
        )
    }

    /// The writer's two waits (for its next turn, and on a write the socket does not take)
    /// end when the session is killed: the kill wakes them through the queue.
    #[tokio::test]
    async fn a_kill_ends_the_writers_waits() {
        let (link, _peer) = link_to_a_stalled_peer().await;
        let turn = tokio::spawn({
            let link = link.clone();
            async move { std::future::poll_fn(|cx| link.poll_turn(cx, &mut Vec::new())).await }
        });
        tokio::task::yield_now().await;
        assert!(!turn.is_finished(), "nothing queued: the turn waits");
        link.kill(Kill::SlowConsumer);
        let turn = tokio::time::timeout(Duration::from_secs(5), turn).await;
        assert_eq!(turn.expect("woken by the kill").unwrap(), None);

        let (link, _peer) = link_to_a_stalled_peer().await;
        let write = tokio::spawn({
            let link = link.clone();
            async move {
                // A write the stalled peer never lets complete.
                let mut write = std::pin::pin!(std::future::pending::<std::io::Result<()>>());
                std::future::poll_fn(|cx| link.poll_write(cx, write.as_mut())).await
            }
        });
        tokio::task::yield_now().await;
        assert!(!write.is_finished(), "the write waits");
        link.kill(Kill::SlowConsumer);
        let written = tokio::time::timeout(Duration::from_secs(5), write).await;
        assert!(!written.expect("woken by the kill").unwrap());
    }

    /// Every connection holds a link, and an idle one its parked writer state: each fits
    /// the jemalloc size class it was trimmed to (320 and 192 bytes; the `Arc` adds 16 bytes
    /// of counts). A field more costs every connection the next class up.
    #[test]
    fn a_link_and_a_parked_writer_fit_their_allocation_classes() {
        assert!(std::mem::size_of::<SessionLink>() + 16 <= 320);
        assert!(std::mem::size_of::<Output>() <= 192);
    }
}
