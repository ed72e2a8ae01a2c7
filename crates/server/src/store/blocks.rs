//! Messages in blocks: a commit's messages, in id order, encoded a few dozen to a block.
//!
//! A block is the unit the message log (log.rs) stores and reads: one record of the log
//! holds one block of as many messages as fit in about a page ([`BLOCK_BYTES`]), so a reader
//! that wants one message reads one page, and a conversation written in a run (the offline
//! case) comes back in a few reads. (Blocks began as rows of a SQLite table: a row per
//! message had cost the hub thread about a microsecond each.)
//!
//! A block is a version byte (1), then per message: varints (varint.rs) of the id less the
//! previous one's in the block (the first: the id), the conversation, the sequence, the
//! sender, the sender's device; the client's timestamp as 8 bytes little-endian; varints of
//! the receive time (Unix ms) and the body's length; the body. Signed values go in as their
//! 64 bits, so any value reads back bit for bit.

use anyhow::Context;

use super::{varint, ConvId, DeviceId, NewMessage, Seq, UserId};

pub(super) const VERSION: u8 = 1;
/// A block takes messages while its encoding stays within this many bytes (a block holds
/// at least one message, however large): with the log record's 8-byte header, a block of
/// small messages is about one 4 KiB page: 75 of the benchmark's 32-byte messages.
pub(super) const BLOCK_BYTES: usize = 4_000;

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

/// Encodes `messages` (ids ascending, as the hub hands them out) block by block, calling
/// `f` with each block's first and last id and its bytes; `data` is scratch space kept
/// between calls.
pub(super) fn each_block(
    messages: &[NewMessage],
    data: &mut Vec<u8>,
    mut f: impl FnMut(i64, i64, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
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
        f(first.id, last.id, data)?;
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
        anyhow::ensure!(
            m.id > previous,
            "message {} stored after message {previous}: ids must ascend",
            m.id
        );
        // The fixed part is put together on the stack and copied once: pushed byte by
        // byte, each with its capacity check, it was most of the hub's cost of writing a
        // message to the log.
        let mut head = [0; HEAD_MAX];
        let mut n = 0;
        let mut put = |at: &mut usize, v: u64| {
            let window = (&mut head[*at..*at + varint::MAX_LEN]).try_into();
            *at += varint::put_into(window.expect("HEAD_MAX leaves room"), v);
        };
        put(&mut n, (m.id - previous) as u64);
        for v in [m.conv, m.seq, m.sender, m.sender_device] {
            put(&mut n, v as u64);
        }
        let at = n;
        n += 8;
        put(&mut n, m.received_at as u64);
        put(&mut n, m.body.len() as u64);
        head[at..at + 8].copy_from_slice(&m.sent_at.to_le_bytes());
        if taken > 0 && out.len() + n + m.body.len() > BLOCK_BYTES {
            return Ok(taken);
        }
        out.extend_from_slice(&head[..n]);
        out.extend_from_slice(&m.body);
        previous = m.id;
    }
    Ok(messages.len())
}

/// The most bytes of a message's fixed part: seven varints and the 8-byte timestamp.
const HEAD_MAX: usize = 7 * varint::MAX_LEN + 8;

/// The records of one block, in order, from a position inside it.
pub(super) struct Records<'a> {
    pub rest: &'a [u8],
    /// The id of the record before `rest` (0 at the start).
    pub previous: i64,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> anyhow::Result<Self> {
        match data.split_first() {
            Some((&VERSION, rest)) => Ok(Records { rest, previous: 0 }),
            Some((v, _)) => anyhow::bail!("message block of unknown version {v}"),
            None => anyhow::bail!("empty message block"),
        }
    }

    pub fn next(&mut self) -> anyhow::Result<Option<Record<'a>>> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;

    /// A message whose every field differs from its neighbours', for round trips.
    pub fn message(id: i64, body_len: usize) -> NewMessage {
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

    pub fn record(m: &NewMessage) -> Record<'_> {
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

    /// Every block of `messages`, as (first id, last id, bytes).
    fn blocks(messages: &[NewMessage]) -> anyhow::Result<Vec<(i64, i64, Vec<u8>)>> {
        let mut out = Vec::new();
        each_block(messages, &mut Vec::new(), |first, last, data| {
            out.push((first, last, data.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn every_message_reads_back_bit_for_bit_from_its_block() {
        // Ids with gaps, bodies from empty to larger than a block.
        let messages: Vec<NewMessage> = (1..400)
            .filter(|id| id % 7 != 0)
            .map(|id| message(id, [0, 1, 32, 300, 9_000][id as usize % 5]))
            .collect();
        let blocks = blocks(&messages).unwrap();
        assert!(blocks.len() > 1 && blocks.len() < messages.len());
        let mut expected = messages.iter();
        for (first, last, data) in &blocks {
            let mut records = Records::new(data).unwrap();
            let mut ids = Vec::new();
            while let Some(r) = records.next().unwrap() {
                assert_eq!(Some(r.clone()), expected.next().map(record));
                ids.push(r.id);
            }
            assert_eq!((ids[0], ids[ids.len() - 1]), (*first, *last));
        }
        assert!(expected.next().is_none());
    }

    #[test]
    fn small_messages_fill_blocks_of_about_a_page() {
        let messages: Vec<NewMessage> = (1..=1_000).map(|id| message(id, 32)).collect();
        let blocks = blocks(&messages).unwrap();
        let (full, last) = blocks.split_at(blocks.len() - 1);
        assert!(last[0].2.len() <= BLOCK_BYTES);
        for (_, _, data) in full {
            let len = data.len();
            assert!(len <= BLOCK_BYTES && len > BLOCK_BYTES - 80, "{len} bytes");
        }
    }

    #[test]
    fn ids_that_do_not_ascend_are_refused() {
        let err = blocks(&[message(5, 1), message(5, 1)]).unwrap_err();
        assert!(format!("{err:#}").contains("ids must ascend"), "{err:#}");
        // Across blocks too: the second message is too large to share the first's block.
        let err = blocks(&[message(5, 1), message(4, 5_000)]).unwrap_err();
        assert!(format!("{err:#}").contains("ids must ascend"), "{err:#}");
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_wrong_message() {
        let (_, _, data) = blocks(&[message(1, 40)]).unwrap().remove(0);
        let read = |data: &[u8]| -> anyhow::Result<Vec<i64>> {
            let mut records = Records::new(data)?;
            let mut ids = Vec::new();
            while let Some(r) = records.next()? {
                ids.push(r.id);
            }
            Ok(ids)
        };
        assert_eq!(read(&data).unwrap(), [1]);
        // Cut inside the record (a cut right after the version byte is an empty block).
        for cut in 2..data.len() {
            assert!(read(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = data.clone();
        other[0] = 9;
        assert!(read(&other).is_err());
    }
}
