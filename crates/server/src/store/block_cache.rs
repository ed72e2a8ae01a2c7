//! The blocks of the message log that readers used last, checked and indexed once, shared
//! by the read pool.
//!
//! After a network blip thousands of devices catch up at once, and the messages each one
//! missed lie interleaved with everyone else's in the same blocks (75 small messages to a
//! block). Read one message at a time, each block was read (`pread`, CRC) and scanned from
//! its start once for every message of it that any device asked for: 37 % of the server's
//! CPU in a storm of 10,000 devices × 100 messages (`parley bench storm`). Here a block is
//! read and checked once, with where each of its records starts, and a message is found by
//! a binary search.
//!
//! The log never changes what it has written, so a cached block never goes stale. Memory is
//! bounded by [`CACHE_BYTES`]: two generations of blocks, the young one taking every block
//! read or used; when it is full the old one is dropped and the young one becomes old (an
//! approximation of least-recently-used eviction at the cost of a map lookup).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::blocks::{Record, Records};
use super::log::{Block, MessageLog, Span};

/// Most bytes the cached blocks take (about 8,000 blocks of 4 KB): a storm's working set
/// (the blocks written while its devices were away that are being caught up at the same
/// moment) is a fraction of it.
pub(super) const CACHE_BYTES: usize = 32 << 20;

/// Cached blocks of one log.
pub(super) struct BlockCache {
    log: Arc<MessageLog>,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    /// Keyed by the record's offset in the log.
    young: HashMap<u64, Arc<Cached>>,
    old: HashMap<u64, Arc<Cached>>,
    young_bytes: usize,
}

/// One block as read: its records' bytes, checked, and where each record starts.
struct Cached {
    span: Span,
    data: Vec<u8>,
    /// Per record: its id and the offset of its encoding in `data`.
    starts: Vec<(i64, u32)>,
    /// The block failed its check (reported by the log when read): its ids are lost.
    damaged: bool,
}

impl Cached {
    fn read(log: &MessageLog, span: Span) -> anyhow::Result<Cached> {
        let mut data = Vec::new();
        let damaged = log.read(&span, &mut data)? == Block::Damaged;
        let mut starts = Vec::new();
        if !damaged {
            let mut records = Records::new(&data)?;
            loop {
                let at = (data.len() - records.rest.len()) as u32;
                let Some(r) = records.next()? else { break };
                starts.push((r.id, at));
            }
            anyhow::ensure!(
                records.previous == span.last,
                "the block of messages up to {} ends early",
                span.last
            );
        }
        Ok(Cached {
            span,
            data,
            starts,
            damaged,
        })
    }

    /// Bytes this block holds.
    fn size(&self) -> usize {
        self.data.capacity() + self.starts.capacity() * std::mem::size_of::<(i64, u32)>()
    }

    /// Message `id`, if this block holds it.
    fn find(&self, id: i64) -> anyhow::Result<Option<Record<'_>>> {
        let Ok(k) = self.starts.binary_search_by_key(&id, |&(id, _)| id) else {
            return Ok(None);
        };
        let previous = if k == 0 { 0 } else { self.starts[k - 1].0 };
        let mut records = Records {
            rest: &self.data[self.starts[k].1 as usize..],
            previous,
        };
        records.next()
    }
}

impl BlockCache {
    pub fn new(log: Arc<MessageLog>) -> BlockCache {
        BlockCache {
            log,
            generations: Mutex::default(),
        }
    }

    /// The log these blocks are read from.
    pub(super) fn log(&self) -> &MessageLog {
        &self.log
    }

    /// The block whose span holds `id` (read and cached if it is not), if any.
    fn block_of(&self, id: i64) -> anyhow::Result<Option<Arc<Cached>>> {
        let Some(span) = self.log.span_of(id) else {
            return Ok(None);
        };
        if let Some(block) = self.lock().get(span.offset) {
            return Ok(Some(block));
        }
        // Read outside the lock: two readers may read the same block at once, and the
        // second to finish keeps the first one's copy.
        let block = Arc::new(Cached::read(&self.log, span)?);
        Ok(Some(self.lock().put(block)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().expect("block cache poisoned")
    }
}

impl Generations {
    fn get(&mut self, offset: u64) -> Option<Arc<Cached>> {
        if let Some(block) = self.young.get(&offset) {
            return Some(block.clone());
        }
        let block = self.old.remove(&offset)?;
        Some(self.keep(block))
    }

    fn put(&mut self, block: Arc<Cached>) -> Arc<Cached> {
        match self.get(block.span.offset) {
            Some(theirs) => theirs,
            None => self.keep(block),
        }
    }

    /// Puts `block` in the young generation, ageing it first if it is full.
    fn keep(&mut self, block: Arc<Cached>) -> Arc<Cached> {
        let size = block.size();
        if self.young_bytes + size > CACHE_BYTES / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += size;
        self.young.insert(block.span.offset, block.clone());
        block
    }
}

/// Finds messages by id through the cache, keeping the block it used last: ids of one
/// block asked for one after another take the cache's lock once.
pub(super) struct Finder<'c> {
    cache: &'c BlockCache,
    last: Option<Arc<Cached>>,
}

impl<'c> Finder<'c> {
    pub fn new(cache: &'c BlockCache) -> Self {
        Finder { cache, last: None }
    }

    /// Message `id`, if stored (and not in a damaged block).
    pub fn find(&mut self, id: i64) -> anyhow::Result<Option<Record<'_>>> {
        let held = self
            .last
            .as_ref()
            .is_some_and(|b| (b.span.first..=b.span.last).contains(&id));
        if !held {
            self.last = self.cache.block_of(id)?;
        }
        match &self.last {
            Some(block) if !block.damaged => block.find(id),
            _ => Ok(None),
        }
    }

    /// Whether the id asked for last lies in a damaged block (and so was not found).
    pub fn lost(&self, id: i64) -> bool {
        self.last
            .as_ref()
            .is_some_and(|b| b.damaged && (b.span.first..=b.span.last).contains(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blocks::tests::{message, record};

    fn log_of(ids: std::ops::RangeInclusive<i64>, body: usize) -> (tempfile::TempDir, BlockCache) {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = MessageLog::open(dir.path(), false, Vec::new()).unwrap();
        let messages: Vec<_> = ids.map(|id| message(id, body)).collect();
        writer.append(&messages).unwrap();
        (dir, BlockCache::new(log))
    }

    #[test]
    fn finds_every_message_in_any_order() {
        let (_dir, cache) = log_of(1..=500, 40);
        let mut finder = Finder::new(&cache);
        for id in (1..=500).rev().chain((1..=500).step_by(7)) {
            let m = message(id, 40);
            assert_eq!(finder.find(id).unwrap(), Some(record(&m)), "{id}");
        }
        assert_eq!(finder.find(501).unwrap(), None);
        assert!(!finder.lost(501));
    }

    #[test]
    fn a_block_is_read_once_and_shared() {
        let (_dir, cache) = log_of(1..=50, 10);
        let (mut a, mut b) = (Finder::new(&cache), Finder::new(&cache));
        a.find(3).unwrap();
        b.find(40).unwrap();
        let (a, b) = (a.last.unwrap(), b.last.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one block, read once");
    }

    #[test]
    fn a_damaged_block_reads_as_lost_and_the_others_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = MessageLog::open(dir.path(), false, Vec::new()).unwrap();
        writer.append(&[message(1, 40)]).unwrap();
        writer.append(&[message(2, 40)]).unwrap();
        let path = dir.path().join(crate::store::log::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8 + 20] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let cache = BlockCache::new(log);
        let mut finder = Finder::new(&cache);
        for _ in 0..2 {
            assert_eq!(finder.find(1).unwrap(), None);
            assert!(finder.lost(1));
            assert_eq!(finder.find(2).unwrap(), Some(record(&message(2, 40))));
            assert!(!finder.lost(2));
        }
    }

    #[test]
    fn memory_stays_within_its_bound() {
        // Blocks of one large message each, twice the cache's bound in all.
        let body = 64 * 1024;
        let count = (2 * CACHE_BYTES / body) as i64;
        let (_dir, cache) = log_of(1..=count, body);
        let mut finder = Finder::new(&cache);
        for id in 1..=count {
            assert!(finder.find(id).unwrap().is_some(), "{id}");
        }
        let g = cache.lock();
        let held: usize = g
            .young
            .values()
            .chain(g.old.values())
            .map(|b| b.size())
            .sum();
        assert!(held <= CACHE_BYTES, "{held} bytes held");
        assert!(g
            .young
            .contains_key(&finder.last.as_ref().unwrap().span.offset));
    }
}
