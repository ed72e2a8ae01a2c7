//! A session's outbound queue: bounded in items and in bytes, never blocking the hub, and
//! holding no memory while it is empty.
//!
//! A bounded tokio channel allocates its slot blocks up front (about 1.7 KB per session,
//! idle or not) and keeps them for as long as it lives. Most sessions are idle most of the
//! time, so this queue is a `VecDeque` behind a mutex that grows with what is pushed and is
//! released when the writer has taken everything: an idle session costs one empty deque.
//! Pushing is one uncontended lock; the writer takes everything pending in one lock too,
//! and leaves its waker under the same lock when there is nothing (a `Notify` beside the
//! lock took a second lock to wait and a third when the wait was dropped, for every turn
//! of a writer: at one message per turn, about 750 instructions a message).
//!
//! Bytes are counted under the same lock, as each item is pushed (its weight, given by the
//! caller, who has the item at hand or weighed it when it staged it). What the consumer took
//! stays counted until its next take, which means it wrote it: the bytes in its hands are
//! memory too, and the queue already knows their weight (the consumer weighs nothing). Two bounds apply: the hub's pushes may fill the queue to its limits
//! (past them a push is refused: the reader is not keeping up); producers that can wait (the
//! session's own answers, the catch-up) wait for *room* instead, which stops at a fraction
//! of the limits, so they never push the hub's items out.

use std::collections::VecDeque;
#[cfg(test)]
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// A deque that grew past this many slots is released once the writer has emptied it.
const KEEP_SLOTS: usize = 64;

/// What a push asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The consumer had parked (see [`Queue::park`]): the caller must start one.
    Start,
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its most items or bytes: the reader is not keeping up.
    Full,
    /// The writer has stopped: nothing will be written any more.
    Closed,
}

/// A queue's bounds: what the hub may fill it to, and where room for waiting producers ends.
/// u32s: every connection's link holds them.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most items.
    items: u32,
    /// Most pushes (deliveries and notices: see [`Tally`]) queued: the queue's other items
    /// are replies in flight and the session's own output, which have bounds of their own.
    pushes: u32,
    /// Most bytes (a first item is always taken, however large).
    bytes: u32,
    /// Producers that wait ([`Queue::poll_push_in_room`]) push only while the queue holds
    /// fewer items and bytes than these.
    room_items: u32,
    room_bytes: u32,
}

impl Bounds {
    /// At most `items` items and `bytes` bytes; room for waiting producers below
    /// `room_items` items and half the bytes. Pushes are not bounded apart from items
    /// unless [`Bounds::pushes`] says so.
    pub fn new(items: usize, bytes: usize, room_items: usize) -> Bounds {
        Bounds {
            items: u32_of(items),
            pushes: u32::MAX,
            bytes: u32_of(bytes),
            room_items: u32_of(room_items),
            room_bytes: u32_of(bytes / 2),
        }
    }

    /// These bounds with at most `pushes` pushes queued.
    pub fn pushes(self, pushes: usize) -> Bounds {
        let pushes = u32_of(pushes);
        Bounds { pushes, ..self }
    }
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What items add up to: pushes, for the push bound (a delivery or a notice is one, a
/// stretch of a room's messages one per message, an answer none), and their weight, for the
/// byte bound (about the memory they hold until written).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub pushes: usize,
    pub bytes: usize,
}

impl Tally {
    /// Counts `item` in.
    #[inline]
    pub fn add<T: Weigh>(&mut self, item: &T) {
        let t = item.tally();
        self.pushes += t.pushes;
        self.bytes += t.bytes;
    }

    /// What `items` add up to.
    pub fn of<T: Weigh>(items: &[T]) -> Tally {
        let mut tally = Tally::default();
        items.iter().for_each(|item| tally.add(item));
        tally
    }
}

/// What an item counts for in the queue's bounds. Producers give it with each push (the hub
/// as it stages its items); a take of only part of what is queued counts it again for the
/// part taken.
pub trait Weigh {
    fn tally(&self) -> Tally;
}

/// Producers that may wait for room, each with a waker slot of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// The session's task: its own answers, and its reads (it stops reading while there
    /// is no room).
    Session = 0,
    /// The catch-up task.
    Replay = 1,
}

/// A bounded multi-producer, single-consumer queue.
#[derive(Debug)]
pub struct Queue<T> {
    state: Mutex<State<T>>,
    bounds: Bounds,
    /// Set under the lock whenever the queue passes its room, cleared when it falls back
    /// below: the session checks it before every request, and a lock there cost as much as
    /// a quarter of a small request's handling. Read without the lock it may be a change
    /// late, which lets one more request through: the room is a soft bound.
    roomless: AtomicBool,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// The weight of what is queued, and of what the consumer took and has not yet
    /// written (`taken`).
    bytes: usize,
    /// The weight of what the consumer took at its last take, counted off at its next (it
    /// wrote it meanwhile): handed over by the queue, which counted it when it was pushed,
    /// where the consumer weighed each item again (about 20 instructions a message). A
    /// u32, beside the flags (every connection's link holds this): what one take holds is
    /// at most the byte bound, a u32, and one item.
    taken: u32,
    /// The pushes queued (see [`Bounds::pushes`]): counted off as the consumer takes them,
    /// here under the lock where a count of its own beside the queue cost the consumer a
    /// walk over what it took (about 16 instructions a message) and each push an atomic.
    pushes: u32,
    closed: bool,
    /// No consumer runs: the next push starts one.
    parked: bool,
    /// No consumer may start any more: the one running, or whoever [`Queue::finish`]
    /// answered, consumes what is left.
    finishing: bool,
    /// The consumer waiting in [`Queue::take`]: woken when the queue goes from empty to not
    /// empty, and on close and finish. Left behind when its wait is dropped, it only makes
    /// a spurious wake-up; a consumer that parks clears it (it holds the task's memory).
    waiting: Option<Waker>,
    /// Producers waiting for room, by [`Waiter`]: woken when a take makes room, on close.
    room: [Option<Waker>; 2],
}

impl<T: Weigh> State<T> {
    /// The waiting consumer, to wake once the lock is released.
    fn wake(&mut self) -> Option<Waker> {
        self.waiting.take()
    }

    fn wait(&mut self, cx: &mut Context<'_>) {
        match &mut self.waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }

    /// Moves up to `max` items into `into`, first counting off what the last take took.
    fn take_into(&mut self, into: &mut Vec<T>, max: usize) -> usize {
        self.bytes = self.bytes.saturating_sub(self.taken as usize);
        let n = self.items.len().min(max);
        // All of it counts what is counted; only part of it, what its items count.
        if n == self.items.len() {
            (self.taken, self.pushes) = (u32_of(self.bytes), 0);
        } else {
            let mut part = Tally::default();
            self.items.iter().take(n).for_each(|item| part.add(item));
            self.taken = u32_of(part.bytes);
            self.pushes = self.pushes.saturating_sub(u32_of(part.pushes));
        }
        if n > 0 && n == self.items.len() && into.is_empty() {
            // All of it into an empty list: the two swap buffers (each conversion keeps its
            // allocation, and a deque a writer emptied starts at its buffer's front, so
            // neither moves an item), where a drain moved the items one by one (about 370
            // instructions a message at W = 1, callgrind). Also into a list with no room
            // (the writer released a grown one): the queue is left with none, and the hub's
            // next push into it swaps its staged list in.
            let spare = VecDeque::from(std::mem::take(into));
            *into = Vec::from(std::mem::replace(&mut self.items, spare));
        } else if n > 0 {
            into.extend(self.items.drain(..n));
        }
        if self.items.is_empty() && self.items.capacity() > KEEP_SLOTS {
            self.items = VecDeque::new();
        }
        n
    }

    fn has_room(&self, bounds: &Bounds) -> bool {
        self.items.len() < bounds.room_items as usize && self.bytes < bounds.room_bytes as usize
    }

    /// The producers waiting for room, once there is some (or the queue closed).
    fn wake_room(&mut self, bounds: &Bounds) -> [Option<Waker>; 2] {
        match self.room.iter().any(Option::is_some) && (self.closed || self.has_room(bounds)) {
            true => std::mem::take(&mut self.room),
            false => [None, None],
        }
    }

    /// Queues `item`, which counts `tally`, unless that passes the bounds.
    fn admit(&mut self, item: T, tally: Tally, bounds: &Bounds) -> Result<(), Refused> {
        if self.closed {
            return Err(Refused::Closed);
        }
        if self.items.len() >= bounds.items as usize || self.over(tally, bounds) {
            return Err(Refused::Full);
        }
        self.items.push_back(item);
        self.count(tally);
        Ok(())
    }

    /// Whether `tally` more would pass the push or the byte bound (the byte bound never
    /// for the first item).
    fn over(&self, tally: Tally, bounds: &Bounds) -> bool {
        self.pushes as usize + tally.pushes > bounds.pushes as usize
            || self.bytes > 0 && self.bytes + tally.bytes > bounds.bytes as usize
    }

    fn count(&mut self, tally: Tally) {
        self.bytes += tally.bytes;
        self.pushes = self.pushes.saturating_add(u32_of(tally.pushes));
    }

    /// What a push asks of the caller, and the consumer to wake: the first item after the
    /// consumer emptied the queue wakes it (it takes everything when it wakes, and a
    /// consumer about to wait finds the item under the lock it would leave its waker under).
    fn pushed(&mut self, was_empty: bool) -> (Pushed, Option<Waker>) {
        if self.parked && !self.finishing {
            self.parked = false;
            return (Pushed::Start, None);
        }
        match was_empty {
            true => (Pushed::Queued, self.wake()),
            false => (Pushed::Queued, None),
        }
    }
}

/// Wakes the producers `wakers` holds. Usually none: plain `if let`s, where iterating the
/// array (a `Flatten` built and dropped at every take) cost about 90 instructions a message.
fn wake_all([session, replay]: [Option<Waker>; 2]) {
    if let Some(waker) = session {
        waker.wake();
    }
    if let Some(waker) = replay {
        waker.wake();
    }
}

impl<T: Weigh> Queue<T> {
    /// A queue whose consumer runs from the start.
    #[cfg(test)]
    pub fn new(bounds: Bounds) -> Self {
        Self::with_consumer(bounds, false)
    }

    /// A queue with no consumer yet: the first push asks for one.
    pub fn parked(bounds: Bounds) -> Self {
        Self::with_consumer(bounds, true)
    }

    fn with_consumer(bounds: Bounds, parked: bool) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                taken: 0,
                pushes: 0,
                closed: false,
                parked,
                finishing: false,
                waiting: None,
                room: [None, None],
            }),
            bounds,
            roomless: AtomicBool::new(false),
        }
    }

    /// Records whether `state` has room, for [`Queue::has_room`] (under the lock).
    fn note_room(&self, state: &State<T>) {
        let roomless = !state.closed && !state.has_room(&self.bounds);
        if self.roomless.load(Ordering::Relaxed) != roomless {
            self.roomless.store(roomless, Ordering::Relaxed);
        }
    }

    /// Whether the queue had room (or was closed) when it last changed: no lock, and a
    /// change may be seen late (see [`Queue::poll_room`] for the exact wait).
    pub fn has_room(&self) -> bool {
        !self.roomless.load(Ordering::Relaxed)
    }

    /// Queues `item`, which counts `tally`, without waiting.
    pub fn push(&self, item: T, tally: Tally) -> Result<Pushed, Refused> {
        let (pushed, waiting) = {
            let mut state = self.lock();
            let was_empty = state.items.is_empty();
            state.admit(item, tally, &self.bounds)?;
            self.note_room(&state);
            state.pushed(was_empty)
        };
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        Ok(pushed)
    }

    /// Queues every item of `items` (emptying it; together they count `tally`), in order,
    /// as one push: one lock and at most one wake-up for all of them. All or nothing:
    /// nothing is queued when they do not all fit.
    pub fn push_all(&self, items: &mut Vec<T>, tally: Tally) -> Result<Pushed, Refused> {
        let (pushed, waiting) = {
            let mut state = self.lock();
            let full = state.items.len() + items.len() > self.bounds.items as usize
                || state.over(tally, &self.bounds);
            if state.closed || full {
                items.clear();
                return Err(if state.closed {
                    Refused::Closed
                } else {
                    Refused::Full
                });
            }
            let was_empty = state.items.is_empty();
            if was_empty {
                // Into an empty queue the list is swapped in whole (a deque from a vector
                // keeps its buffer), and the caller keeps the emptied deque's buffer as its
                // next list: no item is moved, where extending moved each (about 60
                // instructions a message at W = 64, 190 at W = 1, callgrind).
                let spare =
                    std::mem::replace(&mut state.items, VecDeque::from(std::mem::take(items)));
                *items = Vec::from(spare);
            } else {
                state.items.extend(items.drain(..));
            }
            state.count(tally);
            self.note_room(&state);
            state.pushed(was_empty)
        };
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        Ok(pushed)
    }

    /// Queues the item in `item` (taking it) if there is room; else leaves `cx`'s waker as
    /// `waiter`'s, to be woken once a take makes room. The way of producers that can wait:
    /// they never fill the queue past its room, so the hub's pushes still fit. `None` once
    /// the queue is closed.
    pub fn poll_push_in_room(
        &self,
        cx: &mut Context<'_>,
        waiter: Waiter,
        item: &mut Option<T>,
        tally: Tally,
    ) -> Poll<Option<Pushed>> {
        let (pushed, waiting) = {
            let mut state = self.lock();
            if state.closed {
                *item = None;
                return Poll::Ready(None);
            }
            if !state.has_room(&self.bounds) {
                state.room[waiter as usize] = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let Some(item) = item.take() else {
                return Poll::Ready(Some(Pushed::Queued));
            };
            let was_empty = state.items.is_empty();
            state.items.push_back(item);
            state.count(tally);
            self.note_room(&state);
            state.pushed(was_empty)
        };
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        Poll::Ready(Some(pushed))
    }

    /// Ready once the queue has room (true), or is closed (false); else `cx`'s waker is
    /// left as `waiter`'s.
    pub fn poll_room(&self, cx: &mut Context<'_>, waiter: Waiter) -> Poll<bool> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(false);
        }
        if state.has_room(&self.bounds) {
            return Poll::Ready(true);
        }
        state.room[waiter as usize] = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The consumer stops if there is nothing to take: true when it may go (the next push
    /// asks for a new one), false when items arrived meanwhile or the queue is finishing.
    pub fn park(&self) -> bool {
        let mut state = self.lock();
        if state.items.is_empty() && !state.finishing && !state.closed {
            state.parked = true;
            state.waiting = None;
            // A parked queue is an idle session's: it keeps no slots (the first push
            // after a login left room for four, 160 bytes, in every idle session).
            state.items = VecDeque::new();
        }
        state.parked
    }

    /// No consumer starts from now on. True when none was running: the caller is the
    /// consumer of what is left.
    pub fn finish(&self) -> bool {
        let (was_parked, waiting) = {
            let mut state = self.lock();
            state.finishing = true;
            (std::mem::replace(&mut state.parked, false), state.wake())
        };
        // A consumer waiting in `take` returns once the queue is empty.
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        was_parked
    }

    /// Moves up to `max` items into `into`; waits while the queue is empty. Returns how
    /// many were moved: 0 only once the queue is empty and closed or finishing (the
    /// consumer then ends).
    #[cfg(test)]
    pub async fn take(&self, into: &mut Vec<T>, max: usize) -> usize {
        poll_fn(|cx| self.poll_take(cx, into, max)).await
    }

    /// [`Queue::take`] as a poll. A take means the consumer wrote what it took at its last
    /// one: that is counted off. When nothing can be moved, the consumer's waker is left to
    /// be woken by the next push, close, finish or [`Queue::interrupt`].
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<T>, max: usize) -> Poll<usize> {
        let (moved, room) = {
            let mut state = self.lock();
            let moved = state.take_into(into, max);
            self.note_room(&state);
            let room = state.wake_room(&self.bounds);
            if moved == 0 && !state.closed && !state.finishing {
                state.wait(cx);
                drop(state);
                wake_all(room);
                return Poll::Pending;
            }
            (moved, room)
        };
        wake_all(room);
        Poll::Ready(moved)
    }

    /// Leaves the consumer's waker to be woken as in [`Queue::poll_take`], for a consumer
    /// that waits on something else meanwhile (its socket) and must hear an interrupt.
    pub fn watch(&self, cx: &mut Context<'_>) {
        self.lock().wait(cx);
    }

    /// Wakes the waiting consumer, if any, without changing the queue: the caller changed
    /// something the consumer checks after leaving its waker (the session's kill switch).
    pub fn interrupt(&self) {
        let waiting = self.lock().wake();
        if let Some(consumer) = waiting {
            consumer.wake();
        }
    }

    /// Moves up to `max` items into `into` without waiting, first counting off what the
    /// last take took (see [`Queue::poll_take`]).
    pub fn try_take(&self, into: &mut Vec<T>, max: usize) -> usize {
        let (moved, room) = {
            let mut state = self.lock();
            let moved = state.take_into(into, max);
            self.note_room(&state);
            (moved, state.wake_room(&self.bounds))
        };
        wake_all(room);
        moved
    }

    /// Refuses every later push and drops what is queued (the writer has stopped).
    pub fn close(&self) {
        let (dropped, waiting, room) = {
            let mut state = self.lock();
            state.closed = true;
            (state.bytes, state.taken, state.pushes) = (0, 0, 0);
            self.note_room(&state);
            let room = std::mem::take(&mut state.room);
            (std::mem::take(&mut state.items), state.wake(), room)
        };
        drop(dropped);
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        wake_all(room);
    }

    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// The weight of what is queued or in the consumer's hands.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().items.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave the deque half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// The tests' items weigh what their pushes say; a part taken counts 1 byte an item.
    impl Weigh for u32 {
        fn tally(&self) -> Tally {
            w(1)
        }
    }

    impl Weigh for Arc<()> {
        fn tally(&self) -> Tally {
            w(1)
        }
    }

    /// `bytes` and no pushes.
    fn w(bytes: usize) -> Tally {
        Tally { pushes: 0, bytes }
    }

    /// Bounds of `n` items, with no bound on bytes.
    fn items(n: usize) -> Bounds {
        Bounds::new(n, usize::MAX, n)
    }

    #[test]
    fn bounded_and_in_order() {
        let q = Queue::new(items(3));
        for i in 0..3 {
            assert_eq!(q.push(i, w(1)), Ok(Pushed::Queued));
        }
        assert_eq!(q.push(3, w(1)), Err(Refused::Full));
        let mut out = Vec::new();
        assert_eq!(q.try_take(&mut out, 2), 2);
        assert_eq!(q.try_take(&mut out, 10), 1);
        assert_eq!(out, vec![0, 1, 2]);
        q.push(4, w(1)).unwrap();
        assert_eq!(q.len(), 1);
    }

    /// The hub's pushes fill the queue to its byte bound (a first item always goes in);
    /// what the consumer took counts until its next take (it wrote it meanwhile).
    #[test]
    fn bounded_in_bytes_until_written() {
        let q = Queue::new(Bounds::new(100, 1_000, 100));
        assert_eq!(
            q.push(1, w(5_000)),
            Ok(Pushed::Queued),
            "a first item, however large"
        );
        assert_eq!(q.push(2, w(1)), Err(Refused::Full));
        let mut out = Vec::new();
        assert_eq!(q.try_take(&mut out, 10), 1);
        assert_eq!(q.bytes(), 5_000, "taken, not yet written");
        assert_eq!(
            q.try_take(&mut out, 10),
            0,
            "a take: what the last took is written"
        );
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.push_all(&mut vec![3, 4], w(600)), Ok(Pushed::Queued));
        assert_eq!(q.push_all(&mut vec![5], w(401)), Err(Refused::Full));
        assert_eq!(q.push(6, w(400)), Ok(Pushed::Queued));
        assert_eq!(q.bytes(), 1_000);
        q.close();
        assert_eq!(q.bytes(), 0);
    }

    /// A take of part of what is queued hands over what that part weighs, and the rest stays
    /// counted as queued.
    #[test]
    fn a_partial_take_counts_off_what_it_took() {
        let q = Queue::new(Bounds::new(100, 1_000, 100));
        assert_eq!(q.push_all(&mut vec![1, 2, 3], w(3)), Ok(Pushed::Queued));
        let mut out = Vec::new();
        assert_eq!(q.try_take(&mut out, 2), 2);
        assert_eq!(q.bytes(), 3, "two taken, one queued");
        assert_eq!(q.try_take(&mut out, 2), 1);
        assert_eq!(q.bytes(), 1, "the two written, the last taken");
        assert_eq!(q.try_take(&mut out, 2), 0);
        assert_eq!(q.bytes(), 0);
        assert_eq!(out, [1, 2, 3]);
    }

    /// The hub's pushes are bounded apart from the queue's other items, and a take counts
    /// off the pushes it took: all of them, or those of the part it took.
    #[test]
    fn pushes_are_bounded_and_counted_off_as_taken() {
        struct Push;
        impl Weigh for Push {
            fn tally(&self) -> Tally {
                Tally {
                    pushes: 1,
                    bytes: 1,
                }
            }
        }
        let pushes = |n| Tally::of(&(0..n).map(|_| Push).collect::<Vec<_>>());
        let q = Queue::new(Bounds::new(100, 1_000, 100).pushes(3));
        assert_eq!(
            q.push_all(&mut vec![Push, Push], pushes(2)),
            Ok(Pushed::Queued)
        );
        let refused = q.push_all(&mut vec![Push, Push], pushes(2));
        assert_eq!(refused, Err(Refused::Full), "four pushes");
        assert_eq!(q.push(Push, pushes(1)), Ok(Pushed::Queued));
        assert_eq!(q.push(Push, pushes(1)), Err(Refused::Full));
        assert_eq!(q.push(Push, w(1)), Ok(Pushed::Queued), "not a push");
        let mut out = Vec::new();
        assert_eq!(q.try_take(&mut out, 2), 2);
        let pushed = q.push_all(&mut vec![Push, Push], pushes(2));
        assert_eq!(pushed, Ok(Pushed::Queued), "two taken");
        assert_eq!(q.try_take(&mut out, 10), 4);
        let pushed = q.push_all(&mut vec![Push, Push, Push], pushes(3));
        assert_eq!(pushed, Ok(Pushed::Queued), "all taken");
    }

    /// A producer that waits for room pushes below the room bound only, and is woken once a
    /// take (with what was written) makes room again, or the queue closes.
    #[tokio::test]
    async fn waiting_producers_push_only_in_room() {
        let q = Arc::new(Queue::new(Bounds::new(100, 1_000, 3)));
        let push = |q: &Arc<Queue<u32>>, item: u32, bytes: usize| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut item = Some(item);
                poll_fn(|cx| q.poll_push_in_room(cx, Waiter::Session, &mut item, w(bytes))).await
            })
        };
        push(&q, 1, 600).await.unwrap().expect("room");
        let waiting = push(&q, 2, 10);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "600 bytes are past the room");
        assert_eq!(
            q.push(3, w(300)),
            Ok(Pushed::Queued),
            "the hub's pushes still fit"
        );
        let mut out = Vec::new();
        q.try_take(&mut out, 10);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "taken but not written: still counted"
        );
        q.try_take(&mut out, 10);
        let pushed = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(
            pushed.expect("woken by the take").unwrap(),
            Some(Pushed::Queued)
        );
        q.try_take(&mut out, 10);
        assert_eq!(out, [1, 3, 2]);

        for i in 0..3 {
            q.push(i, w(1)).unwrap();
        }
        let waiting = push(&q, 9, 1);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "three items are past the room");
        q.close();
        let refused = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(refused.expect("woken by the close").unwrap(), None);
    }

    #[test]
    fn several_items_go_in_at_once_in_order_or_not_at_all() {
        let q = Queue::parked(items(5));
        assert_eq!(q.push_all(&mut vec![1, 2], w(0)), Ok(Pushed::Start));
        assert_eq!(q.push_all(&mut vec![3, 4], w(0)), Ok(Pushed::Queued));
        let mut three = vec![5, 6, 7];
        assert_eq!(q.push_all(&mut three, w(0)), Err(Refused::Full));
        assert!(three.is_empty());
        assert_eq!(q.len(), 4, "nothing of a refused list is queued");
        let mut out = Vec::new();
        q.try_take(&mut out, 10);
        assert_eq!(out, vec![1, 2, 3, 4]);
        q.close();
        assert_eq!(q.push_all(&mut vec![8], w(0)), Err(Refused::Closed));
    }

    #[test]
    fn a_parked_queue_asks_for_a_consumer_once() {
        let q = Queue::parked(items(10));
        assert_eq!(q.push(1, w(1)), Ok(Pushed::Start));
        assert_eq!(q.push(2, w(1)), Ok(Pushed::Queued));
        assert!(!q.park(), "items are waiting: the consumer must go on");
        let mut out = Vec::new();
        q.try_take(&mut out, 10);
        assert!(q.park());
        assert_eq!(q.push(3, w(1)), Ok(Pushed::Start));
        assert!(!q.finish(), "a consumer runs");
        q.try_take(&mut out, 10);
        assert!(!q.park(), "a finishing queue keeps its consumer");
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn finishing_a_parked_queue_hands_it_to_the_caller() {
        let q = Queue::parked(items(10));
        assert!(q.finish());
        assert_eq!(
            q.push(1, w(1)),
            Ok(Pushed::Queued),
            "no consumer starts any more"
        );
    }

    #[test]
    fn releases_memory_once_emptied() {
        let q = Queue::new(items(10_000));
        for i in 0..1_000 {
            q.push(i, w(1)).unwrap();
        }
        let mut out = Vec::new();
        q.try_take(&mut out, 10_000);
        assert_eq!(q.lock().items.capacity(), 0);
    }

    /// A consumer task that takes everything until the queue ends, and returns it.
    fn consumer(q: &Arc<Queue<u32>>) -> tokio::task::JoinHandle<Vec<u32>> {
        let q = q.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while q.take(&mut got, 10).await > 0 {}
            got
        })
    }

    #[tokio::test]
    async fn a_waiting_consumer_gets_what_is_left_then_ends_when_finishing() {
        let q = Arc::new(Queue::new(items(10)));
        let consumer = consumer(&q);
        tokio::task::yield_now().await;
        q.push(1, w(1)).unwrap();
        q.push(2, w(1)).unwrap();
        assert!(!q.finish(), "a consumer was running");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), consumer)
            .await
            .expect("the consumer ends once the queue is finishing and empty")
            .unwrap();
        assert_eq!(got, [1, 2]);
    }

    /// Pushes from another thread, one item or several at a time, each made while the
    /// consumer waits: every one wakes it (it takes the items within a second), and every
    /// item arrives once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_push_wakes_a_waiting_consumer_on_another_thread() {
        const PUSHES: u32 = 2_000;
        let q = Arc::new(Queue::new(items(16)));
        let consumer = consumer(&q);
        let producer = std::thread::spawn({
            let q = q.clone();
            move || {
                let until = |done: &dyn Fn() -> bool| {
                    let start = std::time::Instant::now();
                    while !done() {
                        assert!(start.elapsed() < Duration::from_secs(1), "a lost wake-up");
                        std::thread::yield_now();
                    }
                };
                let mut next = 0;
                for i in 0..PUSHES {
                    until(&|| q.lock().waiting.is_some());
                    if i % 2 == 0 {
                        q.push(next, w(1)).unwrap();
                        next += 1;
                    } else {
                        q.push_all(&mut vec![next, next + 1, next + 2], w(0))
                            .unwrap();
                        next += 3;
                    }
                    until(&|| q.is_empty());
                }
                q.finish();
                next
            }
        });
        let sent = producer.join().expect("no wake-up lost");
        let got = tokio::time::timeout(Duration::from_secs(10), consumer)
            .await
            .expect("the consumer ends once finished")
            .unwrap();
        assert_eq!(got, (0..sent).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn closing_wakes_a_waiting_consumer() {
        let q = Arc::new(Queue::<u32>::new(items(10)));
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.take(&mut Vec::new(), 10).await }
        });
        tokio::task::yield_now().await;
        assert!(q.lock().waiting.is_some(), "the consumer waits");
        q.close();
        let moved = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("woken by the close")
            .unwrap();
        assert_eq!(moved, 0);
    }

    /// A waker holds its task's memory: a consumer that parks must not leave one behind.
    #[tokio::test]
    async fn a_consumer_that_parks_leaves_no_waker() {
        let q = Queue::<u32>::new(items(10));
        let mut got = Vec::new();
        let waited = tokio::time::timeout(Duration::from_millis(10), q.take(&mut got, 10)).await;
        assert!(waited.is_err(), "nothing to take");
        assert!(
            q.lock().waiting.is_some(),
            "the dropped wait left its waker"
        );
        assert!(q.park());
        assert!(q.lock().waiting.is_none());
    }

    #[test]
    fn a_parked_queue_holds_no_slots() {
        let q = Queue::new(items(10));
        q.push(1, w(1)).unwrap();
        let mut out = Vec::with_capacity(4);
        q.try_take(&mut out, 10);
        assert!(
            q.lock().items.capacity() > 0,
            "a take swaps in the taker's list: its slots are kept while in use"
        );
        assert!(q.park());
        assert_eq!(q.lock().items.capacity(), 0);
    }

    #[test]
    fn closed_refuses_and_drops() {
        let q = Queue::new(items(10));
        let item = Arc::new(());
        q.push(item.clone(), w(1)).unwrap();
        q.close();
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "queued items are dropped on close"
        );
        assert_eq!(q.push(item.clone(), w(1)), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn take_waits_for_a_push_and_ends_on_close() {
        let q = Arc::new(Queue::new(items(10)));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while q.take(&mut out, 10).await > 0 {}
                out
            })
        };
        for i in 0..5 {
            q.push(i, w(1)).unwrap();
            // Let the consumer run (a current-thread runtime runs it on yield).
            for _ in 0..100 {
                if q.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        q.close();
        let out = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("consumer ends after close")
            .unwrap();
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
    }
}
