//! A timer that a connection's loop may poll on every turn at little cost.
//!
//! A tokio `Sleep` registers the polling task's waker every time it is polled: the task
//! budget, an atomic waker swap, the entry's state, about 120 instructions. The session's
//! read loop polls its timer after every read and the writer after every write, yet the
//! timer rarely fires (an idle timeout of an hour, a report every 20 ms): at one message per
//! read and write that was about 650 instructions a message (callgrind, `parley bench dm
//! --window 1`). Once polled, the waker stays with the timer's entry until the timer
//! fires, which marks the entry elapsed and wakes the task; so the `Sleep` is polled again
//! only when it may have something new to say: after it was aimed anew, or once elapsed.
//!
//! One task polls a timer for as long as it is aimed (its waker is the one left): the
//! session's task its read loop's, the writer task its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A boxed `Sleep` and whether it holds the polling task's waker.
#[derive(Debug)]
pub struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// Polled since it was last aimed, and pending then: its entry holds the waker.
    waiting: bool,
}

impl Timer {
    /// A timer that fires at `at`.
    pub fn at(at: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            waiting: false,
        }
    }

    /// When it fires.
    pub fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Whether it has fired.
    pub fn is_elapsed(&self) -> bool {
        self.sleep.is_elapsed()
    }

    /// Makes it fire at `at` instead.
    pub fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.waiting = false;
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting && !self.sleep.is_elapsed() {
            // The entry holds this task's waker from the last poll: it wakes the task when
            // it fires, and this poll would only leave the same waker again.
            return Poll::Pending;
        }
        // Polled when the task's budget is spent, a `Sleep` answers Pending without leaving
        // the waker with its entry (tokio wakes the task to be polled again instead): then
        // it must be polled again, or it would never fire.
        let budget = tokio::task::coop::has_budget_remaining();
        let fired = self.sleep.as_mut().poll(cx);
        self.waiting = fired.is_pending() && budget;
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Polled on every turn of a loop that is woken for other reasons too, the timer still
    /// fires (once its deadline passed), and fires again after being aimed anew.
    #[tokio::test]
    async fn fires_when_polled_among_other_wake_ups() {
        let mut timer = Timer::at(Instant::now() + Duration::from_millis(30));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ticker = tokio::spawn(async move {
            // Wake-ups that are not the timer's, for a while.
            for i in 0..20u32 {
                if tx.send(i).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let fired = async {
            let mut other = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut timer => return other,
                    Some(_) = rx.recv() => other += 1,
                }
            }
        };
        let other = tokio::time::timeout(Duration::from_secs(5), fired)
            .await
            .expect("the timer fires");
        assert!(other > 0, "other wake-ups came in between");
        assert!(timer.is_elapsed());

        timer.reset(Instant::now() + Duration::from_millis(10));
        assert!(!timer.is_elapsed(), "aimed anew");
        tokio::time::timeout(Duration::from_secs(5), &mut timer)
            .await
            .expect("fires again once aimed anew");
        ticker.abort();
    }

    /// First polled when the task's budget is spent (a busy connection's turn), it still
    /// fires: that poll left no waker with its entry.
    #[tokio::test]
    async fn fires_though_first_polled_with_the_budget_spent() {
        let mut timer = Timer::at(Instant::now() + Duration::from_millis(20));
        std::future::poll_fn(|cx| {
            // Spend the task's budget, as a burst of ready reads does.
            for _ in 0..10_000 {
                let mut spend = std::pin::pin!(tokio::task::coop::consume_budget());
                if spend.as_mut().poll(cx).is_pending() {
                    break;
                }
            }
            assert!(!tokio::task::coop::has_budget_remaining());
            assert!(Pin::new(&mut timer).poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        tokio::time::timeout(Duration::from_secs(5), &mut timer)
            .await
            .expect("the timer fires");
    }

    /// Aimed earlier after it left its waker, it fires at the earlier deadline.
    #[tokio::test]
    async fn aimed_earlier_fires_earlier() {
        let mut timer = Timer::at(Instant::now() + Duration::from_secs(3_600));
        let first = tokio::time::timeout(Duration::from_millis(5), &mut timer).await;
        assert!(first.is_err(), "an hour away");
        timer.reset(Instant::now() + Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(5), &mut timer)
            .await
            .expect("fires at the new deadline");
    }
}
