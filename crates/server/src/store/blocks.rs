//! Messages kept in blocks: a commit's messages, in id order, packed a few dozen to a row.
//!
//! A row per message cost the hub thread about a microsecond each in SQLite (binding eight
//! values, seeking the primary key, building the record, inserting it into a B-tree page):
//! a quarter of the server's CPU per message at full load. A block is one row of as many
//! messages as fit in about a page ([`BLOCK_BYTES`]), keyed by its last id, its messages
//! encoded here, so a commit inserts a row per block instead. Readers get a conversation's
//! ids from the index (index.rs) and find each by one seek (the first block whose last id
//! is not below it) and a scan of that block; ids asked for in ascending order load each
//! block once.
//!
//! `data` is a version byte (1), then per message: varints (varint.rs) of the id less the
//! previous one's in the block (the first: the id), the conversation, the sequence, the
//! sender, the sender's device; the client's timestamp as 8 bytes little-endian; varints of
//! the receive time (Unix ms) and the body's length; the body. Signed values go in as their
//! 64 bits, so any value reads back bit for bit.

use anyhow::Context;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};

use super::{varint, ConvId, DeviceId, NewMessage, Seq, UserId};

pub(super) const TABLE: &str = "CREATE TABLE IF NOT EXISTS message_blocks (
    last_id INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    data BLOB NOT NULL
)";

const VERSION: u8 = 1;
/// A block takes messages while its encoding stays within this many bytes (a block holds
/// at least one message, however large): with the row's other columns it still fits in
/// one 4 KiB page, which SQLite fills to at most 4,061 bytes before it spills a row onto
/// overflow pages. So a block is one page of the WAL and of the database, nearly full: 75
/// of the benchmark's 32-byte messages.
const BLOCK_BYTES: usize = 4_000;

/// One message as a block holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record<'a> {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub sent_at: u64,
    pub received_at: i64,
    pub body: &'a [u8],
}

/// Writes `messages` (ids ascending, as the hub hands them out) as blocks, inside the
/// caller's transaction; `data` is scratch space kept between calls.
pub(super) fn insert(
    tx: &Connection,
    messages: &[NewMessage],
    data: &mut Vec<u8>,
) -> anyhow::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO message_blocks (last_id, first_id, data) VALUES (?1, ?2, ?3)",
    )?;
    let mut rest = messages;
    let mut below = 0;
    while let Some(first) = rest.first() {
        anyhow::ensure!(
            first.id > below,
            "message {} stored after message {below}: ids must ascend",
            first.id
        );
        let (block, after) = rest.split_at(encode(rest, data)?);
        let last = block.last().expect("a block holds a message");
        stmt.execute(params![last.id, first.id, &data[..]])
            .with_context(|| format!("storing messages {} to {}", first.id, last.id))?;
        (rest, below) = (after, last.id);
    }
    Ok(())
}

/// Encodes messages from the front of `messages` into `out` while the block stays within
/// [`BLOCK_BYTES`], and at least one; returns how many it took.
fn encode(messages: &[NewMessage], out: &mut Vec<u8>) -> anyhow::Result<usize> {
    out.clear();
    out.push(VERSION);
    let mut previous = 0;
    for (taken, m) in messages.iter().enumerate() {
        if taken > 0 && out.len() + m.body.len() > BLOCK_BYTES {
            return Ok(taken);
        }
        anyhow::ensure!(
            m.id > previous,
            "message {} stored after message {previous}: ids must ascend",
            m.id
        );
        let start = out.len();
        varint::put(out, (m.id - previous) as u64);
        for v in [m.conv, m.seq, m.sender, m.sender_device] {
            varint::put(out, v as u64);
        }
        out.extend_from_slice(&m.sent_at.to_le_bytes());
        varint::put(out, m.received_at as u64);
        varint::put(out, m.body.len() as u64);
        out.extend_from_slice(&m.body);
        if taken > 0 && out.len() > BLOCK_BYTES {
            out.truncate(start);
            return Ok(taken);
        }
        previous = m.id;
    }
    Ok(messages.len())
}

/// The records of one block, in order, from a position inside it.
struct Records<'a> {
    rest: &'a [u8],
    /// The id of the record before `rest` (0 at the start).
    previous: i64,
}

impl<'a> Records<'a> {
    fn new(data: &'a [u8]) -> anyhow::Result<Self> {
        match data.split_first() {
            Some((&VERSION, rest)) => Ok(Records { rest, previous: 0 }),
            Some((v, _)) => anyhow::bail!("message block of unknown version {v}"),
            None => anyhow::bail!("empty message block"),
        }
    }

    fn next(&mut self) -> anyhow::Result<Option<Record<'a>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let blob = &mut self.rest;
        let delta = i64::try_from(varint::take(blob)?).context("id step out of range")?;
        anyhow::ensure!(delta > 0, "message ids do not ascend in a block");
        let id = self
            .previous
            .checked_add(delta)
            .context("id out of range")?;
        let mut signed = || varint::take(blob).map(|v| v as i64);
        let (conv, seq, sender, sender_device) = (signed()?, signed()?, signed()?, signed()?);
        let (sent_at, rest) = blob.split_first_chunk::<8>().context("block cut short")?;
        *blob = rest;
        let sent_at = u64::from_le_bytes(*sent_at);
        let received_at = varint::take(blob)? as i64;
        let len = usize::try_from(varint::take(blob)?)?;
        anyhow::ensure!(
            len <= blob.len(),
            "a body of {len} bytes in {} left",
            blob.len()
        );
        let (body, rest) = blob.split_at(len);
        *blob = rest;
        self.previous = id;
        Ok(Some(Record {
            id,
            conv,
            seq,
            sender,
            sender_device,
            sent_at,
            received_at,
            body,
        }))
    }
}

/// Calls `f` with every stored message whose id is above `after`, in id order.
pub(super) fn each_after(
    conn: &Connection,
    after: i64,
    mut f: impl FnMut(&Record<'_>),
) -> anyhow::Result<()> {
    let mut stmt =
        conn.prepare("SELECT data FROM message_blocks WHERE last_id > ?1 ORDER BY last_id")?;
    let mut rows = stmt.query([after])?;
    while let Some(row) = rows.next()? {
        let mut records = Records::new(row.get_ref(0)?.as_blob()?)?;
        while let Some(r) = records.next()? {
            if r.id > after {
                f(&r);
            }
        }
    }
    Ok(())
}

/// Finds messages by id, keeping the last block it read: ids asked for in ascending order
/// read each block once.
pub(super) struct Lookup<'c> {
    stmt: CachedStatement<'c>,
    /// The block read last, and the ids it spans (none read yet: an empty span).
    data: Vec<u8>,
    span: (i64, i64),
    /// Where the scan stopped in `data`, and the id of the record before that point.
    at: usize,
    previous: i64,
}

impl<'c> Lookup<'c> {
    pub fn new(conn: &'c Connection) -> anyhow::Result<Self> {
        Ok(Lookup {
            stmt: conn.prepare_cached(
                "SELECT first_id, last_id, data FROM message_blocks
                 WHERE last_id >= ?1 ORDER BY last_id LIMIT 1",
            )?,
            data: Vec::new(),
            span: (1, 0),
            at: 0,
            previous: 0,
        })
    }

    /// Message `id`, if stored.
    pub fn find(&mut self, id: i64) -> anyhow::Result<Option<Record<'_>>> {
        if !(self.span.0..=self.span.1).contains(&id) {
            let found = self
                .stmt
                .query_row([id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, Vec<u8>>(2)?))
                })
                .optional()
                .with_context(|| format!("reading the block of message {id}"))?;
            let Some((first, last, data)) = found else {
                return Ok(None);
            };
            (self.span, self.data) = ((first, last), data);
            (self.at, self.previous) = (0, 0);
            if id < first {
                return Ok(None);
            }
        }
        let mut records = if self.at == 0 || id <= self.previous {
            Records::new(&self.data)?
        } else {
            Records {
                rest: &self.data[self.at..],
                previous: self.previous,
            }
        };
        let found = loop {
            match records.next()? {
                Some(r) if r.id < id => continue,
                Some(r) if r.id == id => break Some(r),
                Some(_) => break None,
                None if records.previous < self.span.1 => {
                    anyhow::bail!("the block of messages up to {} ends early", self.span.1)
                }
                None => break None,
            }
        };
        (self.at, self.previous) = (self.data.len() - records.rest.len(), records.previous);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(id: i64, body_len: usize) -> NewMessage {
        NewMessage {
            id,
            conv: id % 3,
            seq: id / 3 + 1,
            sender: -id,
            sender_device: i64::MAX - id,
            body: Bytes::from(vec![id as u8; body_len]),
            sent_at: u64::MAX - id as u64,
            received_at: 1_800_000_000_000 + id,
        }
    }

    fn record(m: &NewMessage) -> Record<'_> {
        Record {
            id: m.id,
            conv: m.conv,
            seq: m.seq,
            sender: m.sender,
            sender_device: m.sender_device,
            sent_at: m.sent_at,
            received_at: m.received_at,
            body: &m.body,
        }
    }

    fn stored(messages: &[NewMessage]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(TABLE).unwrap();
        insert(&conn, messages, &mut Vec::new()).unwrap();
        conn
    }

    #[test]
    fn every_message_reads_back_bit_for_bit_in_any_order_of_asking() {
        // Ids with gaps, bodies from empty to larger than a block.
        let messages: Vec<NewMessage> = (1..400)
            .filter(|id| id % 7 != 0)
            .map(|id| message(id, [0, 1, 32, 300, 9_000][id as usize % 5]))
            .collect();
        let conn = stored(&messages);
        let blocks: i64 = conn
            .query_row("SELECT COUNT(*) FROM message_blocks", [], |r| r.get(0))
            .unwrap();
        assert!(
            blocks > 1 && blocks < messages.len() as i64,
            "{blocks} blocks"
        );

        let mut lookup = Lookup::new(&conn).unwrap();
        for m in messages.iter().chain(messages.iter().rev()) {
            assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
        }
        for missing in [0, 7, 14, 399, 1_000] {
            assert_eq!(lookup.find(missing).unwrap(), None, "message {missing}");
        }
        let mut after = Vec::new();
        each_after(&conn, 200, |r| after.push(r.id)).unwrap();
        let expected: Vec<i64> = messages
            .iter()
            .map(|m| m.id)
            .filter(|&id| id > 200)
            .collect();
        assert_eq!(after, expected);
    }

    #[test]
    fn small_messages_fill_blocks_of_one_page_each() {
        let messages: Vec<NewMessage> = (1..=1_000).map(|id| message(id, 32)).collect();
        let conn = stored(&messages);
        let (blocks, largest, smallest_full): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), MAX(length(data)),
                        (SELECT MIN(length(data)) FROM message_blocks
                         WHERE last_id < (SELECT MAX(last_id) FROM message_blocks))
                 FROM message_blocks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert!(largest as usize <= BLOCK_BYTES, "{largest} bytes");
        assert!(
            smallest_full as usize > BLOCK_BYTES - 80,
            "{smallest_full} bytes"
        );
        // No overflow pages: a page per block, and a few for the table's upper levels.
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert!(pages <= blocks + 4, "{pages} pages for {blocks} blocks");
    }

    #[test]
    fn ids_that_do_not_ascend_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(TABLE).unwrap();
        let err = insert(&conn, &[message(5, 1), message(5, 1)], &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("ids must ascend"), "{err:#}");
        // Across blocks too: the second message is too large to share the first's block.
        let err = insert(&conn, &[message(5, 1), message(4, 5_000)], &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("ids must ascend"), "{err:#}");
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_wrong_message() {
        let m = message(1, 40);
        let conn = stored(std::slice::from_ref(&m));
        let data: Vec<u8> = conn
            .query_row("SELECT data FROM message_blocks", [], |r| r.get(0))
            .unwrap();
        for cut in 1..data.len() {
            conn.execute("UPDATE message_blocks SET data = ?1", [&data[..cut]])
                .unwrap();
            assert!(Lookup::new(&conn).unwrap().find(1).is_err(), "cut at {cut}");
        }
        let mut other = data.clone();
        other[0] = 9;
        conn.execute("UPDATE message_blocks SET data = ?1", [&other])
            .unwrap();
        assert!(Lookup::new(&conn).unwrap().find(1).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the values, the body sizes and how the messages are split into
        /// commits, every message reads back as written, asked for in any order, and
        /// nothing else is found.
        #[test]
        fn any_messages_in_any_commits_read_back_as_written(
            steps in proptest::collection::vec(
                (1..4i64, proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>(),
                 0..6_000usize, proptest::bool::weighted(0.1)),
                1..120,
            ),
            probes in proptest::collection::vec(0..130usize, 0..40),
        ) {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(TABLE).unwrap();
            let (mut messages, mut id, mut batch) = (Vec::new(), 0, Vec::new());
            let mut data = Vec::new();
            for (step, value, sent_at, len, commit) in steps {
                id += step;
                let m = NewMessage {
                    id,
                    conv: value,
                    seq: value.wrapping_mul(3),
                    sender: value.rotate_left(7),
                    sender_device: !value,
                    body: Bytes::from(vec![(id % 251) as u8; len]),
                    sent_at,
                    received_at: value.wrapping_add(id),
                };
                batch.push(m.clone());
                messages.push(m);
                if commit {
                    insert(&conn, &batch, &mut data).unwrap();
                    batch.clear();
                }
            }
            insert(&conn, &batch, &mut data).unwrap();
            let mut lookup = Lookup::new(&conn).unwrap();
            for m in &messages {
                proptest::prop_assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
            }
            for &p in &probes {
                let Some(m) = messages.get(p) else { continue };
                proptest::prop_assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
                let absent = m.id + 1;
                if messages.iter().all(|o| o.id != absent) {
                    proptest::prop_assert_eq!(lookup.find(absent).unwrap(), None);
                }
            }
            let mut all = Vec::new();
            each_after(&conn, 0, |r| all.push(r.id)).unwrap();
            proptest::prop_assert_eq!(all, messages.iter().map(|m| m.id).collect::<Vec<_>>());
        }
    }
}
