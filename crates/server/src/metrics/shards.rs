//! Counters that every core adds to many times a second (bytes read and written, messages
//! written), kept in one slot per thread instead of one atomic per counter.
//!
//! Each session read and each writer write adds to these (a few times per message at
//! W = 1). Through the `metrics` crate's handles an add is a dynamic call and a locked add
//! on a cache line that both cores write, which bounces between them: about 40
//! instructions and a contended line per write (callgrind, `parley bench dm --window 1`).
//! Here a thread adds to its own slot (a thread-local index and one uncontended add on a
//! line no other thread writes); `/metrics` sums the slots when scraped.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::outbound::Protocol;

/// Slots; threads beyond this many share them (adds stay atomic, so sharing is only slower).
const SLOTS: usize = 16;

/// What is counted, per protocol.
#[derive(Debug, Clone, Copy)]
pub enum Hot {
    BytesIn = 0,
    BytesOut = 1,
    Delivered = 2,
}

/// One thread's counts, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Slot([[AtomicU64; 3]; 3]);

/// The per-thread counters of one server.
pub struct Shards {
    slots: Box<[Slot]>,
}

impl Default for Shards {
    fn default() -> Self {
        Shards {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

/// Which slot this thread adds to: assigned at its first add, in turn.
fn slot_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS);
        }
        index.get()
    })
}

fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Binary => 0,
        Protocol::Text => 1,
        Protocol::Json => 2,
    }
}

impl Shards {
    pub fn add(&self, what: Hot, protocol: Protocol, n: u64) {
        let slot = &self.slots[slot_index()];
        slot.0[what as usize][protocol_index(protocol)].fetch_add(n, Ordering::Relaxed);
    }

    /// A write of `bytes` carrying `messages` messages: both counts with one slot lookup.
    pub fn wrote(&self, protocol: Protocol, messages: u64, bytes: u64) {
        let slot = &self.slots[slot_index()].0;
        let p = protocol_index(protocol);
        slot[Hot::BytesOut as usize][p].fetch_add(bytes, Ordering::Relaxed);
        if messages > 0 {
            slot[Hot::Delivered as usize][p].fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// The sum over every thread.
    pub fn total(&self, what: Hot, protocol: Protocol) -> u64 {
        let (what, protocol) = (what as usize, protocol_index(protocol));
        let each = self
            .slots
            .iter()
            .map(|s| s.0[what][protocol].load(Ordering::Relaxed));
        each.fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_many_threads_sum_up() {
        let shards = Shards::default();
        std::thread::scope(|s| {
            for _ in 0..40 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        shards.add(Hot::BytesOut, Protocol::Json, 3);
                        shards.wrote(Protocol::Text, 1, 2);
                    }
                });
            }
        });
        assert_eq!(shards.total(Hot::BytesOut, Protocol::Json), 120_000);
        assert_eq!(shards.total(Hot::BytesOut, Protocol::Text), 80_000);
        assert_eq!(shards.total(Hot::Delivered, Protocol::Text), 40_000);
        assert_eq!(shards.total(Hot::BytesIn, Protocol::Json), 0);
    }
}
