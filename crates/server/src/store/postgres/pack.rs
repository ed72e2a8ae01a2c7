//! Messages stored a pack at a time: one row of `message_packs` per conversation per batch.
//!
//! A row of its own per message cost PostgreSQL about 6.5 µs of CPU and 320 WAL bytes
//! (a heap row, two index entries); a pack of the messages one batch writes to one
//! conversation costs one row and two index entries for all of them, about half the CPU
//! and WAL per message (docs/perf/2026-12-07-cluster-pack.md). Reads unpack.
//!
//! A pack holds the consecutive sequences `first_seq ..= last_seq` of one conversation:
//! no gap inside a pack, so `last_seq - first_seq + 1` is its count. At most
//! [`MAX_MESSAGES`] messages and, but for a single larger message, [`MAX_BYTES`] bytes of
//! messages: a read that needs one message of a pack reads no more than that besides.
//!
//! `data` is each message in turn, big-endian (the schema's migration writes the same
//! bytes with `int8send`/`int4send`):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | id |
//! | 8 | sender (user id) |
//! | 8 | sender's device |
//! | 8 | sent_at (the client's 64 bits as they came) |
//! | 8 | received_at (ms) |
//! | 4 | body length n, and two flags in its top bits |
//! | n | body |
//!
//! The flags: bit 31 set says whether the message is a deletion's tombstone, in bit 30
//! (a tombstone's body is then the deleted message's id and sequence, 8 bytes each). A
//! message written before the flags (bit 31 clear: packs of schema version 3 written by an
//! earlier parley, and the messages that version's migration packed) does not say; an
//! empty one may be a tombstone, and `deletions` tells (hub/cluster_moderation.rs).

use anyhow::Context;
use bytes::Bytes;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::store::{ConvId, NewMessage, Seq, Tombstone};

/// Messages in one pack at most.
pub const MAX_MESSAGES: i64 = 256;

/// Bytes of messages in one pack at most, unless one message alone is larger.
pub const MAX_BYTES: usize = 64 * 1024;

/// Bytes before each message's body.
const HEAD: usize = 44;

/// The body length's flags (see the module's doc), and the bits of the length itself.
const SAYS: u32 = 1 << 31;
const TOMBSTONE: u32 = 1 << 30;
const LENGTH: u32 = TOMBSTONE - 1;

/// One stored message, unpacked (the sender as a user id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed<'a> {
    pub id: i64,
    pub seq: Seq,
    pub sender: i64,
    pub sender_device: i64,
    pub sent_at: i64,
    pub received_at: i64,
    pub body: &'a [u8],
    pub tombstone: Tombstone,
}

/// A pack being written: a conversation's consecutive messages of one batch.
pub struct Builder {
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub last_id: i64,
    pub data: Vec<u8>,
}

impl Builder {
    pub fn new(first_seq: Seq) -> Builder {
        Builder {
            first_seq,
            last_seq: first_seq - 1,
            last_id: 0,
            data: Vec::new(),
        }
    }

    /// Whether `m` may go into this pack (an empty pack takes any message). A body counts
    /// at least 16 bytes: what a tombstone (an empty message) stores in its place.
    pub fn fits(&self, m: &NewMessage) -> bool {
        let count = self.last_seq - self.first_seq + 1;
        let body = m.body.len().max(16);
        count == 0 || (count < MAX_MESSAGES && self.data.len() + HEAD + body <= MAX_BYTES)
    }

    /// Appends `m`, stored as `id`, as the pack's next sequence; `tombstone` says whether
    /// it is one (`Unknown` writes the head without the flags).
    pub fn push(&mut self, id: i64, m: &NewMessage, tombstone: Tombstone) {
        self.last_seq += 1;
        self.last_id = id;
        for v in [
            id,
            m.sender,
            m.sender_device,
            m.sent_at as i64,
            m.received_at,
        ] {
            self.data.extend_from_slice(&v.to_be_bytes());
        }
        // A message is far below 2^30 bytes (max_message_bytes).
        let len = m.body.len() as u32 & LENGTH;
        match tombstone {
            Tombstone::Unknown => {
                self.data.extend_from_slice(&len.to_be_bytes());
                self.data.extend_from_slice(&m.body);
            }
            Tombstone::No => {
                self.data.extend_from_slice(&(len | SAYS).to_be_bytes());
                self.data.extend_from_slice(&m.body);
            }
            Tombstone::Of(message, seq) => {
                self.data
                    .extend_from_slice(&(16 | SAYS | TOMBSTONE).to_be_bytes());
                self.data.extend_from_slice(&message.to_be_bytes());
                self.data.extend_from_slice(&seq.to_be_bytes());
            }
        }
    }
}

/// The messages of the pack that begins at `first_seq`, in order.
pub fn unpack(first_seq: Seq, data: &[u8]) -> anyhow::Result<Vec<Packed<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let head = data
            .get(at..at + HEAD)
            .context("a message pack ends inside a message's head")?;
        let int = |i: usize| i64::from_be_bytes(head[i * 8..i * 8 + 8].try_into().expect("8"));
        let word = u32::from_be_bytes(head[40..44].try_into().expect("4"));
        let len = (word & LENGTH) as usize;
        let mut body = data
            .get(at + HEAD..at + HEAD + len)
            .context("a message pack ends inside a message's body")?;
        let tombstone = match (word & SAYS != 0, word & TOMBSTONE != 0) {
            (false, _) => Tombstone::Unknown,
            (true, false) => Tombstone::No,
            (true, true) => {
                anyhow::ensure!(len == 16, "a tombstone of {len} bytes in a message pack");
                let int = |i: usize| i64::from_be_bytes(body[i..i + 8].try_into().expect("8"));
                let of = Tombstone::Of(int(0), int(8));
                body = &[];
                of
            }
        };
        out.push(Packed {
            id: int(0),
            seq: first_seq + out.len() as i64,
            sender: int(1),
            sender_device: int(2),
            sent_at: int(3),
            received_at: int(4),
            body,
            tombstone,
        });
        at += HEAD + len;
    }
    Ok(out)
}

/// A stored message read back, unpacked and owned.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: i64,
    pub seq: Seq,
    pub sender: i64,
    pub sender_device: i64,
    pub sent_at: i64,
    pub received_at: i64,
    pub body: Bytes,
    pub tombstone: Tombstone,
}

/// Where a scan of a conversation's messages starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Forwards, from the first message after this sequence.
    After(Seq),
    /// Backwards, from the last message before this sequence.
    Before(Seq),
    /// Backwards, from the last message.
    Latest,
    /// Forwards, from the first message whose id is above this one.
    AfterId(i64),
    /// Backwards, from the last message whose id is below this one.
    BeforeId(i64),
}

/// What a scan does with a message it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Yes,
    Skip,
    /// Ends the scan (this message not taken).
    Stop,
}

/// Whatever runs a query: a reader's shared connections, or a client of its own.
pub trait Rows {
    async fn rows(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>>;
}

impl Rows for tokio_postgres::Client {
    async fn rows(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        Ok(self.query(sql, params).await?)
    }
}

/// The packs after a sequence, in order, as many as hold the next `$4` messages (at most
/// `$3` packs): PostgreSQL counts, so no pack past those is sent.
const FORWARD: &str = "
SELECT first_seq, data FROM (
    SELECT first_seq, data,
           SUM(last_seq - first_seq + 1) OVER (ORDER BY last_seq) - (last_seq - first_seq + 1)
               AS before
    FROM (SELECT first_seq, last_seq, data FROM message_packs
          WHERE conversation_id = $1 AND last_seq > $2 ORDER BY last_seq LIMIT $3) p
) w WHERE before < $4::int8 ORDER BY first_seq";

/// The packs before a sequence, latest first, likewise. A pack holds at most
/// MAX_MESSAGES sequences, so every pack that begins before `$2` ends before
/// `$2 + MAX_MESSAGES`: the index bounds the scan on both sides.
const BACKWARD: &str = "
SELECT first_seq, data FROM (
    SELECT first_seq, data,
           SUM(last_seq - first_seq + 1) OVER (ORDER BY last_seq DESC)
               - (last_seq - first_seq + 1) AS before
    FROM (SELECT first_seq, last_seq, data FROM message_packs
          WHERE conversation_id = $1 AND last_seq < $2::int8 + 256 AND first_seq < $2
          ORDER BY last_seq DESC LIMIT $3) p
) w WHERE before < $4::int8 ORDER BY first_seq DESC";

/// The first pack holding an id above (or at) `$2`.
const LOCATE_ID: &str = "
SELECT first_seq, last_seq FROM message_packs
WHERE conversation_id = $1 AND last_id >= $2 ORDER BY last_id LIMIT 1";

/// Packs a filtered scan reads per query (each at most MAX_BYTES but for one message).
const FILTERED_PACKS: i64 = 16;

/// Up to `limit` messages of `conv` from `start`, in the scan's direction (backwards ones
/// latest first), each as `take` says. `filtered`: `take` may skip many messages, so the
/// scan reads a few packs at a time instead of as many as `limit` messages need.
pub async fn scan(
    src: &impl Rows,
    conv: ConvId,
    start: Start,
    limit: usize,
    filtered: bool,
    mut take: impl FnMut(&Packed<'_>) -> Take,
) -> anyhow::Result<Vec<Message>> {
    // Ids ascend with sequences in a conversation: an id bound is a sequence bound, in the
    // pack that holds the id, with the messages of that pack on the wrong side skipped.
    let (forwards, mut bound, id_bound) = match start {
        Start::After(seq) => (true, seq, None),
        // A client's bound (any i64): kept far from overflowing the bound's arithmetic.
        Start::Before(seq) => (false, seq.min(i64::MAX / 2), None),
        // Far above any sequence, and far from overflowing the bound's arithmetic.
        Start::Latest => (false, i64::MAX / 2, None),
        Start::AfterId(id) => {
            let id_above = id.saturating_add(1);
            let rows = src.rows(LOCATE_ID, &[&conv, &id_above]).await?;
            match rows.first() {
                Some(r) => (true, r.get::<_, Seq>(0) - 1, Some(id)),
                None => return Ok(Vec::new()),
            }
        }
        Start::BeforeId(id) => {
            let rows = src.rows(LOCATE_ID, &[&conv, &id]).await?;
            let bound = rows
                .first()
                .map_or(i64::MAX / 2, |r| r.get::<_, Seq>(1) + 1);
            (false, bound, Some(id))
        }
    };
    let mut out = Vec::new();
    while out.len() < limit {
        let need = (limit - out.len()).min(i64::MAX as usize) as i64;
        let (packs, count) = if filtered {
            (FILTERED_PACKS, i64::MAX)
        } else {
            (need, need)
        };
        let sql = if forwards { FORWARD } else { BACKWARD };
        let rows = src.rows(sql, &[&conv, &bound, &packs, &count]).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let first: Seq = row.get(0);
            let mut messages = unpack(first, row.get(1))
                .with_context(|| format!("a message pack of conversation {conv} at {first}"))?;
            if !forwards {
                messages.reverse();
            }
            anyhow::ensure!(
                !messages.is_empty(),
                "an empty message pack in conversation {conv} at {first}"
            );
            // The first pack read may hold messages on the near side of the bound.
            let from = bound;
            bound = if forwards {
                first + messages.len() as i64 - 1
            } else {
                first
            };
            // A pack whose messages fell short of its sequences would be read again and
            // again: an error instead.
            anyhow::ensure!(
                !forwards || bound > from,
                "a message pack of conversation {conv} at {first} holds fewer messages than \
                 its sequences"
            );
            for m in &messages {
                let wrong_side = match id_bound {
                    _ if forwards && m.seq <= from => true,
                    _ if !forwards && m.seq >= from => true,
                    Some(id) if forwards => m.id <= id,
                    Some(id) => m.id >= id,
                    None => false,
                };
                if wrong_side || out.len() >= limit {
                    continue;
                }
                match take(m) {
                    Take::Yes => out.push(Message {
                        id: m.id,
                        seq: m.seq,
                        sender: m.sender,
                        sender_device: m.sender_device,
                        sent_at: m.sent_at,
                        received_at: m.received_at,
                        body: Bytes::copy_from_slice(m.body),
                        tombstone: m.tombstone,
                    }),
                    Take::Skip => {}
                    Take::Stop => return Ok(out),
                }
            }
        }
    }
    Ok(out)
}

/// The last sequence of `conv` whose message id is below `id` (0 if none).
pub async fn last_seq_below_id(src: &impl Rows, conv: ConvId, id: i64) -> anyhow::Result<Seq> {
    let rows = src
        .rows(
            "SELECT first_seq, data FROM message_packs
             WHERE conversation_id = $1 AND last_id >= $2 ORDER BY last_id LIMIT 1",
            &[&conv, &id],
        )
        .await?;
    if let Some(row) = rows.first() {
        let first: Seq = row.get(0);
        let below = unpack(first, row.get(1))?
            .iter()
            .filter(|m| m.id < id)
            .count();
        return Ok(first - 1 + below as i64);
    }
    let rows = src
        .rows(
            "SELECT COALESCE(MAX(last_seq), 0) FROM message_packs WHERE conversation_id = $1",
            &[&conv],
        )
        .await?;
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> NewMessage {
        NewMessage {
            id: 0,
            conv: 7,
            seq: 0,
            sender: 3,
            sender_device: 4,
            body: bytes::Bytes::copy_from_slice(body),
            sent_at: u64::MAX - 1,
            received_at: 1_800_000_000_000,
        }
    }

    #[test]
    fn messages_come_back_as_packed() {
        let mut pack = Builder::new(41);
        pack.push(100, &message(b"hello"), Tombstone::No);
        pack.push(105, &message(b""), Tombstone::No);
        let got = unpack(pack.first_seq, &pack.data).unwrap();
        assert_eq!(pack.last_seq, 42);
        assert_eq!(pack.last_id, 105);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Packed {
                id: 100,
                seq: 41,
                sender: 3,
                sender_device: 4,
                sent_at: (u64::MAX - 1) as i64,
                received_at: 1_800_000_000_000,
                body: b"hello",
                tombstone: Tombstone::No,
            }
        );
        assert_eq!((got[1].id, got[1].seq, got[1].body), (105, 42, &b""[..]));
    }

    #[test]
    fn a_pack_is_bounded_in_messages_and_bytes() {
        let mut pack = Builder::new(1);
        let small = message(b"x");
        for id in 0..MAX_MESSAGES {
            assert!(pack.fits(&small));
            pack.push(id, &small, Tombstone::No);
        }
        assert!(!pack.fits(&small), "full at {MAX_MESSAGES} messages");

        let big = message(&vec![0; MAX_BYTES]);
        let mut pack = Builder::new(1);
        assert!(pack.fits(&big), "an empty pack takes any message");
        pack.push(1, &big, Tombstone::No);
        assert!(!pack.fits(&small));

        // Room for a head and 8 bytes of body: not for a tombstone, which stores 16.
        let mut pack = Builder::new(1);
        pack.push(
            1,
            &message(&vec![0; MAX_BYTES - 2 * HEAD - 8]),
            Tombstone::No,
        );
        let empty = message(b"");
        assert!(!pack.fits(&empty), "a tombstone would pass MAX_BYTES");
        pack = Builder::new(1);
        pack.push(
            1,
            &message(&vec![0; MAX_BYTES - 2 * HEAD - 16]),
            Tombstone::No,
        );
        assert!(pack.fits(&empty));
        pack.push(2, &empty, Tombstone::Of(1, 1));
        assert_eq!(pack.data.len(), MAX_BYTES, "exactly full");
    }

    #[test]
    fn a_tombstone_says_what_it_deletes_and_older_heads_say_nothing() {
        let mut pack = Builder::new(1);
        pack.push(10, &message(b""), Tombstone::Of(7, 3));
        pack.push(11, &message(b""), Tombstone::Unknown);
        pack.push(12, &message(b"plain"), Tombstone::Unknown);
        pack.push(13, &message(b""), Tombstone::No);
        let got = unpack(1, &pack.data).unwrap();
        let said: Vec<(&[u8], Tombstone)> = got.iter().map(|m| (m.body, m.tombstone)).collect();
        assert_eq!(
            said,
            [
                (&b""[..], Tombstone::Of(7, 3)),
                (&b""[..], Tombstone::Unknown),
                (&b"plain"[..], Tombstone::Unknown),
                (&b""[..], Tombstone::No),
            ]
        );
        // An earlier parley's head (a plain length) reads as it was written.
        let mut old = vec![0; 40];
        old[7] = 9;
        old.extend_from_slice(&5u32.to_be_bytes());
        old.extend_from_slice(b"hello");
        let got = unpack(4, &old).unwrap();
        assert_eq!(
            (got[0].id, got[0].body, got[0].tombstone),
            (9, &b"hello"[..], Tombstone::Unknown)
        );
        // A tombstone flag on a body that is not an id and a sequence is an error.
        let mut bad = pack.data[..HEAD].to_vec();
        bad[40..44].copy_from_slice(&(3 | SAYS | TOMBSTONE).to_be_bytes());
        bad.extend_from_slice(b"abc");
        assert!(unpack(1, &bad).is_err());
    }

    #[test]
    fn the_backward_scan_bounds_packs_by_their_size() {
        assert!(BACKWARD.contains(&format!("$2::int8 + {MAX_MESSAGES} ")));
    }

    #[test]
    fn a_truncated_pack_is_an_error_not_a_panic() {
        let mut pack = Builder::new(1);
        pack.push(1, &message(b"hello"), Tombstone::No);
        for cut in 1..pack.data.len() {
            assert!(unpack(1, &pack.data[..cut]).is_err(), "cut at {cut}");
        }
    }
}
