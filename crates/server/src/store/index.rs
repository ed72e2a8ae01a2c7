//! Which message ids make up each conversation, in sequence order, held in memory.
//!
//! Messages are stored in id order alone, the order the hub writes in (log.rs), so a commit
//! appends to the end of one file however many conversations the batch touches. (Stored by
//! conversation and sequence, as in the first SQLite layout, every commit rewrote the last
//! page of each conversation it touched: with 50 busy conversations, 50 pages for a few
//! hundred small messages.) What that order gave (finding a conversation's messages) this
//! index gives instead: the writer extends it after every commit, so a reader never sees an
//! id that is not committed, saves it at a clean stop, and a start reads that copy and the
//! messages stored after it (all of them only when there is no usable copy).
//!
//! Cost: 8 bytes per stored message (and up to as much again of spare capacity while a
//! conversation grows).

use std::collections::HashMap;
use std::sync::RwLock;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension};

use super::{varint, ConvId, MessageLog, NewMessage, Seq};

/// Message ids per conversation. Entry `i` is the id of sequence `i + 1`. A sequence with no
/// stored message (none is skipped today, but nothing here depends on it) repeats the id
/// before it, or holds 0 at the start, so every list stays sorted and can be searched.
#[derive(Default)]
pub struct MessageIndex {
    convs: RwLock<HashMap<ConvId, Vec<i64>, ahash::RandomState>>,
}

impl MessageIndex {
    /// Builds the index: from the copy saved at the last clean stop, if there is one, and
    /// the messages stored after it; else from every stored message. A stored message is
    /// never changed or removed, so a saved copy stays true of the ids it covers even after
    /// a crash (only the part read from the log grows); only a log that lost messages the
    /// copy names (a power loss) makes it unusable.
    pub(super) fn load(conn: &Connection, log: &MessageLog) -> anyhow::Result<Self> {
        let index = MessageIndex::default();
        {
            let mut convs = index.convs.write().expect("message index poisoned");
            let saved = read_saved(conn, &mut convs)
                .and_then(|saved| {
                    let stored = log.last_id();
                    anyhow::ensure!(saved <= stored, "it names message {saved}, the log ends at {stored}");
                    Ok(saved)
                })
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %format!("{e:#}"), "saved message index unusable; reading every message");
                    convs.clear();
                    0
                });
            log.each_after(saved, |m| {
                place(convs.entry(m.conv).or_default(), m.seq, m.id)
            })?;
            for list in convs.values_mut() {
                list.shrink_to_fit();
            }
        }
        Ok(index)
    }

    /// Saves the index (at a clean stop, inside the caller's transaction) so that the next
    /// start reads it instead of every message: per conversation its ids as varint deltas,
    /// about a byte or two a message.
    pub(super) fn save(&self, tx: &Connection) -> anyhow::Result<()> {
        let convs = self.convs.read().expect("message index poisoned");
        let covered = convs.values().filter_map(|ids| ids.last()).max().copied();
        tx.execute("DELETE FROM message_index", [])?;
        {
            let mut insert =
                tx.prepare("INSERT INTO message_index (conversation_id, ids) VALUES (?1, ?2)")?;
            let mut blob = Vec::new();
            for (conv, ids) in convs.iter() {
                blob.clear();
                encode(ids, &mut blob);
                insert.execute(rusqlite::params![conv, blob])?;
            }
        }
        tx.execute(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            rusqlite::params![SAVED_UP_TO, covered.unwrap_or(0)],
        )?;
        Ok(())
    }

    /// Adds committed messages.
    pub(super) fn append(&self, messages: &[NewMessage]) {
        if messages.is_empty() {
            return;
        }
        let mut convs = self.convs.write().expect("message index poisoned");
        // A batch holds runs of one conversation (a session's messages to one peer): one
        // lookup per run.
        for run in messages.chunk_by(|a, b| a.conv == b.conv) {
            let ids = convs.entry(run[0].conv).or_default();
            for m in run {
                place(ids, m.seq, m.id);
            }
        }
    }

    /// The highest sequence stored in `conv` (0 for none).
    pub fn last_seq(&self, conv: ConvId) -> Seq {
        self.with(conv, |ids| ids.len() as Seq)
    }

    /// Up to `limit` ids, ascending, of the messages from position `start` on.
    pub(super) fn from(&self, conv: ConvId, start: usize, limit: usize) -> Vec<i64> {
        self.starting_where(conv, start, limit, |_| true)
    }

    /// `from`, counting only the ids `keep` accepts (a history page leaves tombstones out).
    pub(super) fn starting_where(
        &self,
        conv: ConvId,
        start: usize,
        limit: usize,
        keep: impl Fn(i64) -> bool,
    ) -> Vec<i64> {
        self.with(conv, |ids| {
            let mut out = Vec::new();
            let start = start.min(ids.len());
            for (i, &id) in ids.iter().enumerate().skip(start) {
                if out.len() == limit {
                    break;
                }
                if stored(ids, i) && keep(id) {
                    out.push(id);
                }
            }
            out
        })
    }

    /// The last `limit` ids, ascending, of the messages before position `end`.
    #[cfg(test)]
    pub(super) fn before(&self, conv: ConvId, end: usize, limit: usize) -> Vec<i64> {
        self.before_where(conv, end, limit, |_| true)
    }

    /// `before`, counting only the ids `keep` accepts.
    pub(super) fn before_where(
        &self,
        conv: ConvId,
        end: usize,
        limit: usize,
        keep: impl Fn(i64) -> bool,
    ) -> Vec<i64> {
        self.with(conv, |ids| {
            let end = end.min(ids.len());
            let mut out: Vec<i64> = (0..end)
                .rev()
                .filter(|&i| stored(ids, i) && keep(ids[i]))
                .take(limit)
                .map(|i| ids[i])
                .collect();
            out.reverse();
            out
        })
    }

    /// The first position whose id does not satisfy `below` (ids ascend, so `below` must
    /// hold for a prefix: `|id| id < x`).
    pub(super) fn position(&self, conv: ConvId, below: impl Fn(i64) -> bool) -> usize {
        self.with(conv, |ids| ids.partition_point(|&id| below(id)))
    }

    /// The id at `position` (0 when there is none).
    pub(super) fn id_at(&self, conv: ConvId, position: usize) -> i64 {
        self.with(conv, |ids| ids.get(position).copied().unwrap_or(0))
    }

    fn with<T>(&self, conv: ConvId, f: impl FnOnce(&[i64]) -> T) -> T {
        let convs = self.convs.read().expect("message index poisoned");
        f(convs.get(&conv).map_or(&[], |ids| ids.as_slice()))
    }
}

/// The counter that names the highest message id the saved index covers.
const SAVED_UP_TO: &str = "message_index_up_to";

/// Reads the saved index into `convs`; returns the highest message id it covers (0: none
/// saved).
pub(super) fn read_saved(
    conn: &Connection,
    convs: &mut HashMap<ConvId, Vec<i64>, ahash::RandomState>,
) -> anyhow::Result<i64> {
    let covered: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            [SAVED_UP_TO],
            |r| r.get(0),
        )
        .optional()?;
    let Some(covered) = covered else {
        return Ok(0);
    };
    let mut stmt = conn.prepare("SELECT conversation_id, ids FROM message_index")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let conv: ConvId = row.get(0)?;
        let blob = row.get_ref(1)?.as_blob()?;
        let ids = decode(blob).with_context(|| format!("conversation {conv}"))?;
        anyhow::ensure!(
            ids.last().is_none_or(|&id| id <= covered),
            "conversation {conv} goes past the saved mark"
        );
        convs.insert(conv, ids);
    }
    Ok(covered)
}

/// A conversation's ids as a count and the differences between neighbours (the list is
/// sorted), each an unsigned LEB128 varint.
fn encode(ids: &[i64], out: &mut Vec<u8>) {
    varint::put(out, ids.len() as u64);
    let mut last = 0;
    for &id in ids {
        varint::put(out, (id - last) as u64);
        last = id;
    }
}

fn decode(mut blob: &[u8]) -> anyhow::Result<Vec<i64>> {
    let n = varint::take(&mut blob)?;
    let n = usize::try_from(n)?;
    anyhow::ensure!(n <= blob.len(), "{n} ids in {} bytes", blob.len());
    let mut ids = Vec::with_capacity(n);
    let mut last: i64 = 0;
    for _ in 0..n {
        let delta = i64::try_from(varint::take(&mut blob)?)?;
        last = last.checked_add(delta).context("id out of range")?;
        ids.push(last);
    }
    anyhow::ensure!(blob.is_empty(), "{} bytes left over", blob.len());
    Ok(ids)
}

/// Whether position `i` holds a message of its own (not a gap's copy of the one before).
fn stored(ids: &[i64], i: usize) -> bool {
    ids[i] != 0 && (i == 0 || ids[i] != ids[i - 1])
}

/// Records that sequence `seq` of a conversation is message `id`.
pub(super) fn place(ids: &mut Vec<i64>, seq: Seq, id: i64) {
    let Ok(position) = usize::try_from(seq - 1) else {
        return;
    };
    if position >= ids.len() {
        let fill = ids.last().copied().unwrap_or(0);
        ids.resize(position, fill);
        ids.push(id);
    } else {
        // Only a database with gaps written out of order gets here.
        ids[position] = id;
        let mut i = position + 1;
        while i < ids.len() && ids[i] < id {
            ids[i] = id;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(messages: &[(ConvId, Seq, i64)]) -> MessageIndex {
        let index = MessageIndex::default();
        let mut convs = index.convs.write().unwrap();
        for &(conv, seq, id) in messages {
            place(convs.entry(conv).or_default(), seq, id);
        }
        drop(convs);
        index
    }

    #[test]
    fn pages_come_in_sequence_order_per_conversation() {
        let index = index(&[(1, 1, 10), (2, 1, 11), (1, 2, 12), (1, 3, 14), (2, 2, 15)]);
        assert_eq!(index.last_seq(1), 3);
        assert_eq!(index.last_seq(2), 2);
        assert_eq!(index.last_seq(3), 0);
        assert_eq!(index.from(1, 0, 10), [10, 12, 14]);
        assert_eq!(index.from(1, 1, 1), [12]);
        assert_eq!(index.from(1, 3, 10), Vec::<i64>::new());
        assert_eq!(index.before(1, 3, 2), [12, 14]);
        assert_eq!(index.before(1, 2, 10), [10, 12]);
        assert_eq!(index.before(1, 99, 1), [14]);
        assert_eq!(index.position(1, |id| id < 13), 2);
        assert_eq!(index.position(1, |id| id <= 14), 3);
        assert_eq!(index.id_at(2, 1), 15);
        assert_eq!(index.id_at(2, 2), 0);
    }

    #[test]
    fn a_missing_sequence_is_skipped_and_keeps_the_list_sorted() {
        // Sequence 1 and 3 are missing.
        let index = index(&[(1, 2, 20), (1, 4, 40), (1, 5, 50)]);
        assert_eq!(index.last_seq(1), 5);
        assert_eq!(index.from(1, 0, 2), [20, 40]);
        assert_eq!(index.from(1, 2, 10), [40, 50]);
        assert_eq!(index.before(1, 5, 10), [20, 40, 50]);
        assert_eq!(index.before(1, 4, 1), [40]);
        assert_eq!(index.position(1, |id| id < 40), 3);
        // Filled in later, out of order.
        let index = index_with_late(&[(1, 2, 20), (1, 4, 40)], (1, 3, 30));
        assert_eq!(index.from(1, 0, 10), [20, 30, 40]);
    }

    #[test]
    fn saved_lists_read_back_the_same() {
        for ids in [
            vec![],
            vec![0, 0, 5],
            vec![3, 9, 9, 200, 1 << 40],
            vec![i64::MAX],
        ] {
            let mut blob = Vec::new();
            encode(&ids, &mut blob);
            assert_eq!(decode(&blob).unwrap(), ids);
            if !blob.is_empty() {
                assert!(
                    decode(&blob[..blob.len() - 1]).is_err(),
                    "cut short: {ids:?}"
                );
            }
        }
    }

    proptest::proptest! {
        /// Against a plain map of (sequence → id) per conversation: whatever sequences are
        /// missing, every page holds exactly the stored messages it should, in order.
        #[test]
        fn pages_match_a_plain_map(
            steps in proptest::collection::vec((1..4i64, proptest::bool::weighted(0.8)), 0..200),
            start in 0..80usize,
            limit in 1..20usize,
            bound in 0..250i64,
        ) {
            let index = MessageIndex::default();
            let mut model: HashMap<ConvId, Vec<(Seq, i64)>> = HashMap::new();
            let mut seqs: HashMap<ConvId, Seq> = HashMap::new();
            for (id, (conv, stored)) in (1..).zip(steps) {
                let seq = seqs.entry(conv).or_default();
                *seq += 1;
                if stored {
                    place(index.convs.write().unwrap().entry(conv).or_default(), *seq, id);
                    model.entry(conv).or_default().push((*seq, id));
                }
            }
            for conv in 1..4 {
                let all = model.remove(&conv).unwrap_or_default();
                let ids = |keep: &dyn Fn(&(Seq, i64)) -> bool| -> Vec<i64> {
                    all.iter().filter(|m| keep(m)).map(|m| m.1).collect()
                };
                proptest::prop_assert_eq!(index.last_seq(conv), all.last().map_or(0, |m| m.0));
                let after: Vec<i64> = ids(&|m| m.0 > start as Seq).into_iter().take(limit).collect();
                proptest::prop_assert_eq!(index.from(conv, start, limit), after);
                let below = ids(&|m| m.0 <= start as Seq);
                let newest = below[below.len().saturating_sub(limit)..].to_vec();
                proptest::prop_assert_eq!(index.before(conv, start, limit), newest);
                let from_bound = index.position(conv, |id| id < bound);
                let at_or_past: Vec<i64> = ids(&|m| m.1 >= bound).into_iter().take(limit).collect();
                proptest::prop_assert_eq!(index.from(conv, from_bound, limit), at_or_past);
                let mut blob = Vec::new();
                let list = index.convs.read().unwrap().get(&conv).cloned().unwrap_or_default();
                encode(&list, &mut blob);
                proptest::prop_assert_eq!(decode(&blob).unwrap(), list);
            }
        }
    }

    fn index_with_late(first: &[(ConvId, Seq, i64)], late: (ConvId, Seq, i64)) -> MessageIndex {
        let index = index(first);
        place(
            index.convs.write().unwrap().get_mut(&late.0).unwrap(),
            late.1,
            late.2,
        );
        index
    }
}
