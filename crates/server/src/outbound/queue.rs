//! A session's outbound queue: bounded, never blocking the hub, and holding no memory
//! while it is empty.
//!
//! A bounded tokio channel allocates its slot blocks up front (about 1.7 KB per session,
//! idle or not) and keeps them for as long as it lives. Most sessions are idle most of the
//! time, so this queue is a `VecDeque` behind a mutex that grows with what is pushed and is
//! released when the writer has taken everything: an idle session costs one empty deque.
//! Pushing is one uncontended lock; the writer takes everything pending in one lock too,
//! and leaves its waker under the same lock when there is nothing (a `Notify` beside the
//! lock took a second lock to wait and a third when the wait was dropped, for every turn
//! of a writer: at one message per turn, about 750 instructions a message).

use std::collections::VecDeque;
#[cfg(test)]
use std::future::poll_fn;
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
    /// The queue holds `capacity` items: the reader is not keeping up.
    Full,
    /// The writer has stopped: nothing will be written any more.
    Closed,
}

/// A bounded multi-producer, single-consumer queue.
#[derive(Debug)]
pub struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
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
}

impl<T> State<T> {
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

    fn take_into(&mut self, into: &mut Vec<T>, max: usize) -> usize {
        let n = self.items.len().min(max);
        into.extend(self.items.drain(..n));
        if self.items.is_empty() && self.items.capacity() > KEEP_SLOTS {
            self.items = VecDeque::new();
        }
        n
    }
}

impl<T> Queue<T> {
    /// A queue whose consumer runs from the start.
    #[cfg(test)]
    pub fn new(capacity: usize) -> Self {
        Self::with_consumer(capacity, false)
    }

    /// A queue with no consumer yet: the first push asks for one.
    pub fn parked(capacity: usize) -> Self {
        Self::with_consumer(capacity, true)
    }

    fn with_consumer(capacity: usize, parked: bool) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                parked,
                finishing: false,
                waiting: None,
            }),
            capacity,
        }
    }

    /// Queues `item` without waiting.
    pub fn push(&self, item: T) -> Result<Pushed, Refused> {
        let waiting = {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.items.push_back(item);
            if state.parked && !state.finishing {
                state.parked = false;
                return Ok(Pushed::Start);
            }
            // The consumer takes everything when it wakes, so only the first item after
            // it emptied the queue needs to wake it (a consumer about to wait finds the
            // item under the lock it would leave its waker under).
            if state.items.len() == 1 {
                state.wake()
            } else {
                None
            }
        };
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        Ok(Pushed::Queued)
    }

    /// Queues every item of `items` (emptying it), in order, as one push: one lock and at
    /// most one wake-up for all of them. All or nothing: nothing is queued when they do not
    /// all fit.
    pub fn push_all(&self, items: &mut Vec<T>) -> Result<Pushed, Refused> {
        let waiting = {
            let mut state = self.lock();
            if state.closed {
                items.clear();
                return Err(Refused::Closed);
            }
            if state.items.len() + items.len() > self.capacity {
                items.clear();
                return Err(Refused::Full);
            }
            let was_empty = state.items.is_empty();
            state.items.extend(items.drain(..));
            if state.parked && !state.finishing {
                state.parked = false;
                return Ok(Pushed::Start);
            }
            if was_empty {
                state.wake()
            } else {
                None
            }
        };
        if let Some(consumer) = waiting {
            consumer.wake();
        }
        Ok(Pushed::Queued)
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

    /// [`Queue::take`] as a poll: when nothing can be moved, the consumer's waker is left
    /// to be woken by the next push, close, finish or [`Queue::interrupt`].
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<T>, max: usize) -> Poll<usize> {
        let mut state = self.lock();
        let moved = state.take_into(into, max);
        if moved > 0 || state.closed || state.finishing {
            return Poll::Ready(moved);
        }
        state.wait(cx);
        Poll::Pending
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

    /// Moves up to `max` items into `into` without waiting.
    pub fn try_take(&self, into: &mut Vec<T>, max: usize) -> usize {
        self.lock().take_into(into, max)
    }

    /// Refuses every later push and drops what is queued (the writer has stopped).
    pub fn close(&self) {
        let (dropped, waiting) = {
            let mut state = self.lock();
            state.closed = true;
            (std::mem::take(&mut state.items), state.wake())
        };
        drop(dropped);
        if let Some(consumer) = waiting {
            consumer.wake();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
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

    #[test]
    fn bounded_and_in_order() {
        let q = Queue::new(3);
        for i in 0..3 {
            assert_eq!(q.push(i), Ok(Pushed::Queued));
        }
        assert_eq!(q.push(3), Err(Refused::Full));
        let mut out = Vec::new();
        assert_eq!(q.try_take(&mut out, 2), 2);
        assert_eq!(q.try_take(&mut out, 10), 1);
        assert_eq!(out, vec![0, 1, 2]);
        q.push(4).unwrap();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn several_items_go_in_at_once_in_order_or_not_at_all() {
        let q = Queue::parked(5);
        assert_eq!(q.push_all(&mut vec![1, 2]), Ok(Pushed::Start));
        assert_eq!(q.push_all(&mut vec![3, 4]), Ok(Pushed::Queued));
        let mut three = vec![5, 6, 7];
        assert_eq!(q.push_all(&mut three), Err(Refused::Full));
        assert!(three.is_empty());
        assert_eq!(q.len(), 4, "nothing of a refused list is queued");
        let mut out = Vec::new();
        q.try_take(&mut out, 10);
        assert_eq!(out, vec![1, 2, 3, 4]);
        q.close();
        assert_eq!(q.push_all(&mut vec![8]), Err(Refused::Closed));
    }

    #[test]
    fn a_parked_queue_asks_for_a_consumer_once() {
        let q = Queue::parked(10);
        assert_eq!(q.push(1), Ok(Pushed::Start));
        assert_eq!(q.push(2), Ok(Pushed::Queued));
        assert!(!q.park(), "items are waiting: the consumer must go on");
        let mut out = Vec::new();
        q.try_take(&mut out, 10);
        assert!(q.park());
        assert_eq!(q.push(3), Ok(Pushed::Start));
        assert!(!q.finish(), "a consumer runs");
        q.try_take(&mut out, 10);
        assert!(!q.park(), "a finishing queue keeps its consumer");
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn finishing_a_parked_queue_hands_it_to_the_caller() {
        let q = Queue::parked(10);
        assert!(q.finish());
        assert_eq!(q.push(1), Ok(Pushed::Queued), "no consumer starts any more");
    }

    #[test]
    fn releases_memory_once_emptied() {
        let q = Queue::new(10_000);
        for i in 0..1_000 {
            q.push(i).unwrap();
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
        let q = Arc::new(Queue::new(10));
        let consumer = consumer(&q);
        tokio::task::yield_now().await;
        q.push(1).unwrap();
        q.push(2).unwrap();
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
        let q = Arc::new(Queue::new(16));
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
                        q.push(next).unwrap();
                        next += 1;
                    } else {
                        q.push_all(&mut vec![next, next + 1, next + 2]).unwrap();
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
        let q = Arc::new(Queue::<u32>::new(10));
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
        let q = Queue::<u32>::new(10);
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
        let q = Queue::new(10);
        q.push(1).unwrap();
        let mut out = Vec::new();
        q.try_take(&mut out, 10);
        assert!(
            q.lock().items.capacity() > 0,
            "a small deque is kept while in use"
        );
        assert!(q.park());
        assert_eq!(q.lock().items.capacity(), 0);
    }

    #[test]
    fn closed_refuses_and_drops() {
        let q = Queue::new(10);
        let item = Arc::new(());
        q.push(item.clone()).unwrap();
        q.close();
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "queued items are dropped on close"
        );
        assert_eq!(q.push(item.clone()), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn take_waits_for_a_push_and_ends_on_close() {
        let q = Arc::new(Queue::new(10));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while q.take(&mut out, 10).await > 0 {}
                out
            })
        };
        for i in 0..5 {
            q.push(i).unwrap();
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
