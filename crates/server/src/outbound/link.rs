//! A session's link: what the hub and the session hold of its output.
//!
//! The link owns the session's bounded queue, its kill switch, its in-flight budget, and the
//! writer's state while no writer task runs (see `writer`): the first push into the empty
//! queue starts a task from any thread, the hub's included.
//!
//! Two kinds of producer share the queue. The hub cannot wait: its pushes fill the queue up
//! to `outbound_queue` pushes and `outbound_bytes` bytes, and past either the session is a
//! slow consumer, disconnected (what it missed stays in the log). The session's own answers
//! and its catch-up can wait: they push only while the queue has *room* (fewer than
//! `ROOM_ITEMS` items and half the bytes), else they wait for the writer, and the session
//! reads nothing meanwhile. So a client that does not read its answers is slowed down to
//! the pace it reads, never cut off for asking; one that reads nothing at all is cut off
//! by the write timeout.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::Semaphore;

use super::queue::{Bounds, Pushed, Queue, Refused, Tally, Waiter, Weigh};
use super::writer::{self, Writer, BATCH};
use super::Item;
use super::Protocol;
use crate::store::DeviceId;

/// What the hub holds of a session: its queue, its kill switch, its in-flight budget, and
/// its writer while no writer task runs.
#[derive(Debug)]
pub struct Link {
    pub id: u64,
    pub protocol: Protocol,
    /// How pushes are written to this session (a `Style` as u8; the text protocol switches
    /// between its two dialects).
    pub style: AtomicU8,
    /// What waits to be written; empty (and unallocated) while the session is idle.
    pub(super) queue: Queue<Item>,
    /// Why the connection is dropped at once, once it is (a [`Kill`] as u8, 0 before);
    /// see [`Link::kill`].
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
    /// How long a write may wait with the client taking nothing before it is a slow
    /// consumer (0: for ever).
    write_timeout_ms: u32,
    /// The client acks what it received (binary `EnableAcks`, JSON `SUBSCRIBE` with acks):
    /// its acks, not TCP's, move the device's cursor.
    pub acks: std::sync::atomic::AtomicBool,
    /// The writer's state while no writer task runs.
    parked: Mutex<Option<Box<Writer>>>,
    /// Where writer tasks run (pushes come from the hub's thread too).
    runtime: tokio::runtime::Handle,
    me: Weak<Link>,
    flush_timeout_ms: u32,
    /// The peer's address (rooms created per address are counted by it).
    peer: std::sync::OnceLock<std::net::IpAddr>,
}

/// Why a session is ended by someone else: dropped at once (hard), or asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kill {
    /// Its queue passed its limit (items or bytes): it does not read what it is sent.
    SlowConsumer = 1,
    /// Reading what it missed from the store failed.
    CatchupFailed = 2,
    /// The account's password changed on another device: the session ends gracefully
    /// (what is queued is written, and it is told why where the protocol can say so).
    SignedOut = 3,
    /// It took nothing of a write for the write timeout: it does not read.
    Stalled = 4,
    /// An operator ended it (`parley admin sessions kick`); graceful.
    Kicked = 5,
    /// An operator disabled or deleted the account; graceful.
    Disabled = 6,
    /// The server is draining: the client should reconnect to another server; graceful.
    Draining = 7,
}

impl Kill {
    fn from_u8(v: u8) -> Option<Kill> {
        match v {
            1 => Some(Kill::SlowConsumer),
            2 => Some(Kill::CatchupFailed),
            3 => Some(Kill::SignedOut),
            4 => Some(Kill::Stalled),
            5 => Some(Kill::Kicked),
            6 => Some(Kill::Disabled),
            7 => Some(Kill::Draining),
            _ => None,
        }
    }

    /// A hard kill drops the connection without writing what is queued.
    fn is_hard(self) -> bool {
        matches!(
            self,
            Kill::SlowConsumer | Kill::Stalled | Kill::CatchupFailed
        )
    }

    /// What the session's disconnect line says.
    pub fn reason(self) -> &'static str {
        match self {
            Kill::SlowConsumer => "slow consumer: outbound queue full",
            Kill::Stalled => "slow consumer: read nothing within the write timeout",
            Kill::CatchupFailed => "catch-up failed",
            Kill::SignedOut => "signed out: the password was changed",
            Kill::Kicked => "disconnected by an operator",
            Kill::Disabled => "the account was disabled",
            Kill::Draining => "server going away: reconnect elsewhere",
        }
    }
}

/// A link's sizes.
pub struct LinkLimits {
    /// Every slot of the queue (pushes, replies in flight, room for the session's own).
    pub queue: usize,
    /// The bytes the queue may hold (`outbound_bytes`); the session's own output and its
    /// catch-up wait while it holds half of it.
    pub bytes: usize,
    /// Items of the session's own output and catch-up the queue may hold before they wait.
    pub room: usize,
    pub pushes: usize,
    pub inflight: usize,
    /// Bound on the closing flush.
    pub flush_timeout: Duration,
    /// How long a write may take nothing (`write_timeout_ms`; zero: for ever).
    pub write_timeout: Duration,
}

impl Link {
    /// The link of a new session, with its writer parked (call inside the runtime).
    pub fn new(id: u64, protocol: Protocol, limits: LinkLimits, writer: Writer) -> Arc<Self> {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        // Pushes (deliveries, notices) may fill `outbound_queue` of the queue's slots: the
        // others are for replies and catch-up, which have their own bounds.
        let bounds = Bounds::new(limits.queue, limits.bytes, limits.room).pushes(limits.pushes);
        Arc::new_cyclic(|me| Link {
            id,
            protocol,
            style: AtomicU8::new(protocol.style() as u8),
            queue: Queue::parked(bounds),
            kill: AtomicU8::new(0),
            session_waker: AtomicWaker::new(),
            writer_done: AtomicBool::new(false),
            device: AtomicI64::new(0),
            inflight: Semaphore::new(limits.inflight),
            write_timeout_ms: ms(limits.write_timeout),
            acks: Default::default(),
            parked: Mutex::new(Some(Box::new(writer))),
            runtime: tokio::runtime::Handle::current(),
            me: me.clone(),
            flush_timeout_ms: ms(limits.flush_timeout),
            peer: std::sync::OnceLock::new(),
        })
    }

    /// Records the address of the connection's peer (once; later calls are ignored).
    pub fn set_peer(&self, ip: std::net::IpAddr) {
        let _ = self.peer.set(ip);
    }

    /// The address of the connection's peer, if the session recorded it.
    pub fn peer(&self) -> Option<std::net::IpAddr> {
        self.peer.get().copied()
    }

    /// Queues `item` without waiting. A full queue (in items or bytes) makes this session a
    /// slow consumer: it is disconnected, and whatever it had not received stays in the log
    /// for next time.
    pub fn push(&self, item: Item) {
        // The queue also holds room for the replies to requests in flight (bounded by
        // `max_inflight`) and for the session's own output and catch-up: pushes may not use
        // either, so `outbound_queue` is the real limit on what waits for a slow reader.
        let tally = item.tally();
        match self.queue.push(item, tally) {
            Ok(Pushed::Start) => self.start_writer(),
            Ok(Pushed::Queued) => {}
            Err(Refused::Full) => self.kill(Kill::SlowConsumer),
            // The writer has stopped: the session is ending, and what it did not write
            // stays in the log for the device's next login.
            Err(Refused::Closed) => {}
        }
    }

    /// Queues `items` (emptying it) in order, as `push` would one by one, with one lock and
    /// one wake-up: the hub's way when a batch has several items for one session. `tally`
    /// is what they add up to, counted as they were staged (a walk over them here was about
    /// 20 instructions a message).
    pub fn push_all(&self, items: &mut Vec<Item>, tally: Tally) {
        debug_assert_eq!(tally, Tally::of(items), "a staged tally matches its items");
        // Past a bound one by one would queue some and then kill the session, whose writer
        // then writes none of them: the same as queueing none.
        match self.queue.push_all(items, tally) {
            Ok(Pushed::Start) => self.start_writer(),
            Ok(Pushed::Queued) | Err(Refused::Closed) => {}
            Err(Refused::Full) => self.kill(Kill::SlowConsumer),
        }
    }

    /// Queues `item` once the queue has room, waiting for the writer meanwhile: the way of
    /// the session's own output (`waiter` [`Waiter::Session`]) and of its catch-up
    /// ([`Waiter::Replay`]). False once the writer has stopped (nothing more is written).
    pub async fn push_in_room(&self, item: Item, waiter: Waiter) -> bool {
        let tally = item.tally();
        let mut item = Some(item);
        let queue = &self.queue;
        let pushed = poll_fn(|cx| queue.poll_push_in_room(cx, waiter, &mut item, tally)).await;
        if pushed == Some(Pushed::Start) {
            self.start_writer();
        }
        pushed.is_some()
    }

    /// Whether the queue had room when it last changed (no lock; see `room`).
    pub fn has_room(&self) -> bool {
        self.queue.has_room()
    }

    /// Waits until the queue has room for the session's own output (true), or the writer
    /// has stopped (false): a session handles no more requests while its answers are not
    /// being read. Nearly always there is room, seen without the queue's lock.
    pub async fn room(&self) -> bool {
        self.room_for(Waiter::Session).await
    }

    /// [`Link::room`] for `waiter` (the catch-up waits for room without holding a place
    /// among the catch-ups that replay at once).
    pub async fn room_for(&self, waiter: Waiter) -> bool {
        self.queue.has_room() || poll_fn(|cx| self.queue.poll_room(cx, waiter)).await
    }

    fn start_writer(&self) {
        let parked = lock(&self.parked).take();
        match (parked, self.me.upgrade()) {
            (Some(writer), Some(link)) => drop(self.runtime.spawn(writer::run(link, writer))),
            // Only a writer that parked asks for a new one, and it parked its state first.
            _ => debug_assert!(false, "a writer was asked for, with none parked"),
        }
    }

    /// Drops the connection at once: its session stops reading and its writer stops
    /// writing. The first reason given is the one reported.
    pub fn kill(&self, why: Kill) {
        // The first reason stays, except that a hard kill replaces a graceful end (a
        // signed-out session that stops reading is still a slow consumer).
        let _ =
            self.kill.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                |now| match Kill::from_u8(now) {
                    None => Some(why as u8),
                    Some(end) if !end.is_hard() && why.is_hard() => Some(why as u8),
                    Some(_) => None,
                },
            );
        // The writer (or a session flushing its own) waits with its waker in the queue.
        self.queue.interrupt();
        self.session_waker.wake();
    }

    /// Killed hard: the writer stops without writing what is queued.
    pub fn is_killed(&self) -> bool {
        self.killed_for().is_some_and(Kill::is_hard)
    }

    /// Why the session was killed, if it was.
    pub fn killed_for(&self) -> Option<Kill> {
        Kill::from_u8(self.kill.load(Ordering::Acquire))
    }

    /// Records the device the session logged in on.
    pub fn set_device(&self, device: DeviceId) {
        self.device.store(device, Ordering::Release);
    }

    pub(super) fn device(&self) -> Option<DeviceId> {
        Some(self.device.load(Ordering::Acquire)).filter(|d| *d != 0)
    }

    pub(super) fn flush_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.flush_timeout_ms))
    }

    pub(super) fn write_timeout(&self) -> Option<Duration> {
        let ms = u64::from(self.write_timeout_ms);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Ready once the session is killed: the session's own wait (one task polls this).
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_session(cx, |link| link.killed_for().is_some())
    }

    /// Ready once `done` holds, else the session's task is woken when it may: the waits of
    /// the session's task on its link.
    fn poll_session(&self, cx: &mut Context<'_>, done: impl Fn(&Link) -> bool) -> Poll<()> {
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
    /// the queue is finishing and empty), or `None` once the session is killed (what it took
    /// at its last turn it has written). A kill wakes the writer through
    /// the waker it leaves in the queue, so a wait takes the queue's one lock (a wait on a
    /// `Notify` took two more locks every turn, and polling it one more).
    pub(super) fn poll_turn(
        &self,
        cx: &mut Context<'_>,
        items: &mut Vec<Item>,
    ) -> Poll<Option<usize>> {
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
    /// killed meanwhile, or `deadline` passes first (the session is then killed as
    /// [`Kill::Stalled`]): `None` then, or if the write failed.
    pub(super) fn poll_write<F, T>(
        &self,
        cx: &mut Context<'_>,
        write: Pin<&mut F>,
        deadline: Option<Pin<&mut tokio::time::Sleep>>,
    ) -> Poll<Option<T>>
    where
        F: Future<Output = std::io::Result<T>>,
    {
        if self.is_killed() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(r) = write.poll(cx) {
            return Poll::Ready(r.ok());
        }
        if deadline.is_some_and(|d| d.poll(cx).is_ready()) {
            self.kill(Kill::Stalled);
            return Poll::Ready(None);
        }
        self.queue.watch(cx);
        match self.is_killed() {
            true => Poll::Ready(None),
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
            if let Some(mut writer) = parked {
                let mut items = Vec::new();
                let flush = writer.flush(self, &mut items);
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

    /// Parks the writer's state in the link, unless items arrived meanwhile or the queue is
    /// finishing: then it is given back and the writer goes on.
    pub(super) fn park(&self, writer: Box<Writer>) -> Option<Box<Writer>> {
        *lock(&self.parked) = Some(writer);
        if self.queue.park() {
            return None;
        }
        Some(lock(&self.parked).take().expect("parked just above"))
    }

    /// The writer is gone for good: later pushes are refused and nothing stays queued.
    pub(super) fn writer_stopped(&self) {
        self.queue.close();
        drop(lock(&self.parked).take());
        self.writer_done.store(true, Ordering::Release);
        self.session_waker.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::WriteHalf;

    /// A sink for writers whose progress nobody needs.
    struct Nowhere;

    impl super::super::ProgressSink for Nowhere {
        fn received(&self, _: DeviceId, _: Vec<(crate::store::ConvId, crate::store::Seq)>) {}
    }

    /// A link over a loopback connection whose peer (returned) never reads.
    async fn link_to_a_stalled_peer() -> (Arc<Link>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        let socket = accepted.unwrap().0;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let (_read, write) = socket.into_split();
        let writer = Writer::new(WriteHalf::Tcp(write), fd, Arc::new(Nowhere));
        let limits = LinkLimits {
            queue: 8,
            bytes: 1 << 20,
            room: 8,
            pushes: 8,
            inflight: 8,
            flush_timeout: Duration::from_secs(1),
            write_timeout: Duration::ZERO,
        };
        (
            Link::new(1, Protocol::Binary, limits, writer),
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
            async move {
                let mut items = Vec::new();
                poll_fn(|cx| link.poll_turn(cx, &mut items)).await
            }
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
                poll_fn(|cx| link.poll_write(cx, write.as_mut(), None)).await
            }
        });
        tokio::task::yield_now().await;
        assert!(!write.is_finished(), "the write waits");
        link.kill(Kill::SlowConsumer);
        let written = tokio::time::timeout(Duration::from_secs(5), write).await;
        assert!(written.expect("woken by the kill").unwrap().is_none());
    }

    /// A write the peer takes nothing of until its deadline ends the session as stalled.
    #[tokio::test]
    async fn a_write_that_waits_past_its_deadline_stalls_the_session() {
        let (link, _peer) = link_to_a_stalled_peer().await;
        let mut write = std::pin::pin!(std::future::pending::<std::io::Result<()>>());
        let mut deadline = std::pin::pin!(tokio::time::sleep(Duration::from_millis(20)));
        let wait = poll_fn(|cx| link.poll_write(cx, write.as_mut(), Some(deadline.as_mut())));
        let written = tokio::time::timeout(Duration::from_secs(5), wait).await;
        assert!(written.expect("ends at its deadline").is_none());
        assert_eq!(link.killed_for(), Some(Kill::Stalled));
        assert!(link.is_killed(), "nothing more is written to it");
    }

    /// Every connection holds a link, and an idle one its parked writer state: each fits
    /// the jemalloc size class it was trimmed to (320 and 192 bytes; the `Arc` adds 16 bytes
    /// of counts). A field more costs every connection the next class up.
    #[test]
    fn a_link_and_a_parked_writer_fit_their_allocation_classes() {
        assert!(std::mem::size_of::<Link>() + 16 <= 320);
        assert!(std::mem::size_of::<Writer>() <= 192);
    }

    /// Every item the hub stages, a queue holds and a writer takes is moved whole: an item
    /// stays at five words (a `Bytes` and the variant), a larger answer's tag boxed.
    #[test]
    fn an_item_is_five_words() {
        assert!(std::mem::size_of::<Item>() <= 40);
    }
}
