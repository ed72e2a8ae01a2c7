//! What nodes tell each other over NATS, and its bytes.
//!
//! Committed messages go on [`MESSAGES`] as one NATS message per batch (a node's commit of a
//! few thousand messages costs one publish, not thousands), each message with what a node
//! needs to deliver it without reading anything: its ids, conversation, sequence, who it
//! is between and the names to show, and whether it is a deletion's tombstone. The layout,
//! little-endian: a `u32` count, then per message `id i64, conv i64, seq i64, kind u8,
//! sender_device i64, a i64, b i64, sent_at u64`, for a tombstone the deleted message's
//! `id i64, seq i64`, the sender's name and the recipient's (`u16` length, UTF-8), the body
//! (`u32` length, bytes). Version 2 (this one) sets the count's top bit, and `kind`'s top
//! bit for a tombstone; a batch of version 1 (an earlier parley's: no such bits, nothing
//! said of tombstones) reads with each message's tombstone [`Tombstone::Unknown`]. An
//! earlier parley refuses a version 2 batch as malformed, and reads its messages from
//! PostgreSQL as it does a gap. Anything else a node has to say is an [`Event`] on
//! [`EVENTS`], in JSON: they are rare, and readable with `nats sub` when debugging.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parley_proto::ConversationKind;
use serde::{Deserialize, Serialize};

use crate::store::{ConvId, DeviceId, Seq, Tombstone, UserId};

/// Committed messages, in batches.
pub const MESSAGES: &str = "parley.messages";
/// Everything else ([`Event`]).
pub const EVENTS: &str = "parley.events";

/// A committed message as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    pub head: Head,
    /// The sender's name.
    pub from: Arc<str>,
    /// The recipient's name (direct), the room's (room) or `*` (broadcast).
    pub to: Arc<str>,
    pub body: Bytes,
}

/// Bytes of a message's fixed part.
const FIXED: usize = 8 * 3 + 1 + 8 * 4;

/// The count's bit that says version 2, and `kind`'s that says a tombstone.
const VERSION_2: u32 = 1 << 31;
const TOMBSTONE: u8 = 0x80;

/// Encodes a batch of messages.
#[cfg(test)]
pub fn encode(messages: &[Wired]) -> Bytes {
    let mut batch = Encoder::with_capacity(messages.len());
    for m in messages {
        batch.push(m.head, &m.from, &m.to, &m.body);
    }
    batch.finish()
}

/// A message's fixed part (and what it deletes, for a tombstone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub kind: ConversationKind,
    pub sender_device: DeviceId,
    /// A direct message's two users (lower id first); 0 for rooms and broadcast.
    pub a: UserId,
    pub b: UserId,
    pub sent_at: u64,
    /// Written as `No` when `Unknown`; `Unknown` only as read from a version 1 batch.
    pub tombstone: Tombstone,
}

/// Writes a batch a message at a time, straight from the hub's deliveries (no [`Wired`]
/// made, no name or body shared just to be copied).
pub struct Encoder {
    buf: BytesMut,
    count: u32,
}

impl Encoder {
    /// For about `messages` messages of short names and bodies (it grows as needed).
    pub fn with_capacity(messages: usize) -> Encoder {
        let mut buf = BytesMut::with_capacity(4 + messages * (FIXED + 64));
        buf.put_u32_le(VERSION_2);
        Encoder { buf, count: 0 }
    }

    pub fn push(&mut self, m: Head, from: &str, to: &str, body: &[u8]) {
        let deletes = match m.tombstone {
            Tombstone::Of(id, seq) => Some((id, seq)),
            Tombstone::No | Tombstone::Unknown => None,
        };
        let buf = &mut self.buf;
        buf.reserve(FIXED + 16 + 2 + from.len() + 2 + to.len() + 4 + body.len());
        buf.put_i64_le(m.id);
        buf.put_i64_le(m.conv);
        buf.put_i64_le(m.seq);
        let flag = if deletes.is_some() { TOMBSTONE } else { 0 };
        buf.put_u8(m.kind.code() | flag);
        buf.put_i64_le(m.sender_device);
        buf.put_i64_le(m.a);
        buf.put_i64_le(m.b);
        buf.put_u64_le(m.sent_at);
        if let Some((id, seq)) = deletes {
            buf.put_i64_le(id);
            buf.put_i64_le(seq);
        }
        for name in [from, to] {
            buf.put_u16_le(name.len() as u16);
            buf.put_slice(name.as_bytes());
        }
        buf.put_u32_le(body.len() as u32);
        buf.put_slice(body);
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> Bytes {
        self.buf[..4].copy_from_slice(&(self.count | VERSION_2).to_le_bytes());
        self.buf.freeze()
    }
}

/// Decodes a whole batch; the bodies share `data`'s bytes. Anything malformed is an error,
/// not a wrong message.
#[cfg(test)]
pub fn decode(data: Bytes) -> anyhow::Result<Vec<Wired>> {
    decode_where(data, &mut Names::default(), |_, _, _| true)
}

/// Decodes the messages of a batch that `keep` wants (by conversation and, for a direct
/// message, its two users): every node reads every batch, and most of a batch is for other
/// nodes, so the rest is only stepped over (its lengths checked, nothing allocated, its
/// names not checked for UTF-8). Names come from `names`, shared with earlier batches'.
pub fn decode_where(
    mut data: Bytes,
    names: &mut Names,
    mut keep: impl FnMut(ConvId, UserId, UserId) -> bool,
) -> anyhow::Result<Vec<Wired>> {
    anyhow::ensure!(data.remaining() >= 4, "a message batch cut short");
    let count = data.get_u32_le();
    let says = count & VERSION_2 != 0;
    let count = (count & !VERSION_2) as usize;
    // Each message takes at least its fixed part: a count that does not fit is a lie.
    anyhow::ensure!(
        count <= data.remaining() / FIXED,
        "a message batch of {count} in {} bytes",
        data.remaining()
    );
    let mut out = Vec::new();
    for _ in 0..count {
        anyhow::ensure!(data.remaining() >= FIXED, "a message cut short");
        let id = data.get_i64_le();
        let conv = data.get_i64_le();
        let seq = data.get_i64_le();
        let code = data.get_u8();
        let flagged = says && code & TOMBSTONE != 0;
        let code = if says { code & !TOMBSTONE } else { code };
        let kind = ConversationKind::from_code(code)
            .ok_or_else(|| anyhow::anyhow!("a message of unknown kind"))?;
        let sender_device = data.get_i64_le();
        let a = data.get_i64_le();
        let b = data.get_i64_le();
        let sent_at = data.get_u64_le();
        let wanted = keep(conv, a, b);
        let tombstone = match (says, flagged) {
            (false, _) => Tombstone::Unknown,
            (true, false) => Tombstone::No,
            (true, true) => {
                anyhow::ensure!(data.remaining() >= 16, "a tombstone cut short");
                Tombstone::Of(data.get_i64_le(), data.get_i64_le())
            }
        };
        // A name's bytes, read in place (not split off: no count to change).
        let mut name = |wanted: bool| -> anyhow::Result<Option<Arc<str>>> {
            anyhow::ensure!(data.remaining() >= 2, "a name cut short");
            let len = data.get_u16_le() as usize;
            anyhow::ensure!(data.remaining() >= len, "a name cut short");
            let name = match wanted {
                true => Some(names.get(&data[..len])?),
                false => None,
            };
            data.advance(len);
            Ok(name)
        };
        let (from, to) = (name(wanted)?, name(wanted)?);
        anyhow::ensure!(data.remaining() >= 4, "a body cut short");
        let len = data.get_u32_le() as usize;
        anyhow::ensure!(data.remaining() >= len, "a body cut short");
        let (Some(from), Some(to)) = (from, to) else {
            data.advance(len);
            continue;
        };
        let body = data.split_to(len);
        out.push(Wired {
            head: Head {
                id,
                conv,
                seq,
                kind,
                sender_device,
                a,
                b,
                sent_at,
                tombstone,
            },
            from,
            to,
            body,
        });
    }
    anyhow::ensure!(!data.has_remaining(), "bytes after a message batch");
    Ok(out)
}

/// The names met in batches, each allocated once and shared by every message that names
/// it (as the hub shares its users' names), instead of once per message. Bounded: past
/// [`NAMES_BYTES`] it starts again empty.
#[derive(Default)]
pub struct Names {
    known: std::collections::HashSet<Arc<str>, ahash::RandomState>,
    bytes: usize,
}

/// About how many bytes of names [`Names`] keeps.
const NAMES_BYTES: usize = 1 << 20;

impl Names {
    fn get(&mut self, bytes: &[u8]) -> anyhow::Result<Arc<str>> {
        let name = std::str::from_utf8(bytes)?;
        if let Some(known) = self.known.get(name) {
            return Ok(known.clone());
        }
        if self.bytes > NAMES_BYTES {
            self.known.clear();
            self.bytes = 0;
        }
        let shared: Arc<str> = Arc::from(name);
        self.bytes += name.len() + 32;
        self.known.insert(shared.clone());
        Ok(shared)
    }
}

/// Something a node did that other nodes must know of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `user`'s last session anywhere ended (or its node's lease ran out).
    Offline { user: UserId, name: String },
    /// `user` joined or left `room` at `seq` (the anonymous user for a guest).
    Room {
        conv: ConvId,
        room: String,
        user: UserId,
        name: String,
        joined: bool,
        seq: Seq,
    },
    /// `from` changed their contact with `to` (`change` as the JSON event names it).
    Contact {
        from: UserId,
        from_name: String,
        to: UserId,
        change: String,
    },
    /// `user` has a password now (password-less logins of the name are refused).
    Account { user: UserId, name: String },
    /// `user` set a new password: every session of theirs but `keep`'s device ends.
    SignedOut { user: UserId, keep: DeviceId },
    /// A password attempt at `name` from `ip` began, or (`succeeded`) it succeeded, or
    /// (`unchecked`) the password could not be checked, or (`token`, `name` empty) a wrong
    /// device token came from `ip`: the login throttle counts the cluster's attempts
    /// (throttle.rs).
    Login {
        name: String,
        ip: std::net::IpAddr,
        succeeded: bool,
        /// Absent from nodes that predate it.
        #[serde(default)]
        unchecked: bool,
        /// Absent from nodes that predate it; such a node counts a wrong token as a failed
        /// password attempt of the empty name (no account's), so against `ip` just the same.
        #[serde(default)]
        token: bool,
    },
    /// An operator (`by`) changed room `room`'s rules, or acted on `user` in it (`change`
    /// as the JSON event names it; `topic` with a new topic). Other nodes read the room
    /// from PostgreSQL again and tell their sessions (hub/cluster_moderation.rs). A node
    /// that predates it ignores it (an unknown event), as it refuses moderation anyway.
    Moderation {
        conv: ConvId,
        room: String,
        #[serde(default)]
        user: Option<UserId>,
        #[serde(default)]
        user_name: Option<String>,
        by: String,
        change: String,
        #[serde(default)]
        topic: Option<String>,
        /// The event's own number ([`Stamp`]): absent (0) from nodes that predate it.
        #[serde(default)]
        stamp: Stamp,
    },
    /// `user` began (`on`) or ended blocking `other`.
    Block {
        user: UserId,
        other: UserId,
        on: bool,
        #[serde(default)]
        stamp: Stamp,
    },
    /// An operator disabled, enabled or deleted account `user`: its sessions end on every
    /// node, and its logins are refused.
    UserState {
        user: UserId,
        name: String,
        disabled: bool,
        #[serde(default)]
        deleted: bool,
        #[serde(default)]
        stamp: Stamp,
    },
}

/// A moderation event's number, unique in the cluster (a node's random start, counted
/// up): the event comes over NATS and, once its batch is committed, from the
/// `moderation_log` in PostgreSQL too (hub/cluster_moderation.rs); a node applies each
/// stamp once, whichever way it came first. 0: unstamped (an older node's), applied as
/// it comes.
pub type Stamp = u64;

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, body: &'static [u8]) -> Wired {
        Wired {
            head: Head {
                id,
                conv: id.wrapping_mul(7),
                seq: id.wrapping_add(1),
                kind: ConversationKind::Direct,
                sender_device: -id,
                a: 3,
                b: 9,
                sent_at: u64::MAX - id as u64,
                tombstone: Tombstone::No,
            },
            from: Arc::from("alice"),
            to: Arc::from("bob"),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn a_batch_reads_back_as_it_was_written() {
        let mut tombstone = message(4, b"");
        tombstone.head.tombstone = Tombstone::Of(2, 9);
        let batch = vec![
            message(1, b""),
            message(2, b"hello"),
            tombstone,
            message(i64::MAX, &[0; 300]),
        ];
        assert_eq!(decode(encode(&batch)).unwrap(), batch);
        assert!(decode(encode(&[])).unwrap().is_empty());
    }

    #[test]
    fn a_version_1_batch_reads_without_saying_what_is_a_tombstone() {
        // An earlier parley's batch: the plain count and kind, no tombstone's fields.
        let mut old = BytesMut::new();
        old.put_u32_le(1);
        for v in [5i64, 6, 7] {
            old.put_i64_le(v);
        }
        old.put_u8(ConversationKind::Room.code());
        for v in [8i64, 0, 0] {
            old.put_i64_le(v);
        }
        old.put_u64_le(9);
        for name in ["carol", "#r"] {
            old.put_u16_le(name.len() as u16);
            old.put_slice(name.as_bytes());
        }
        old.put_u32_le(0);
        let read = decode(old.freeze()).unwrap();
        assert_eq!(
            (read[0].head.id, read[0].head.seq, read[0].head.kind),
            (5, 7, ConversationKind::Room)
        );
        assert_eq!(read[0].head.tombstone, Tombstone::Unknown);
        assert!(read[0].body.is_empty());
    }

    #[test]
    fn a_damaged_batch_is_an_error_not_a_wrong_message() {
        let mut tombstone = message(3, b"");
        tombstone.head.tombstone = Tombstone::Of(1, 1);
        let bytes = encode(&[message(1, b"hello"), message(2, b"world"), tombstone]);
        for cut in 0..bytes.len() {
            assert!(decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = BytesMut::from(&bytes[..]);
        longer.put_u8(0);
        assert!(decode(longer.freeze()).is_err());
        let mut lying = BytesMut::from(&bytes[..]);
        lying[..4].copy_from_slice(&(u32::MAX >> 1).to_le_bytes());
        assert!(decode(lying.freeze()).is_err());
    }

    #[test]
    fn only_the_wanted_messages_are_decoded_and_names_are_shared() {
        let mut other = message(2, b"for another node");
        other.head.conv = 99;
        other.from = Arc::from("\u{fffd}");
        let batch = vec![message(1, b"one"), other, message(3, b"three")];
        let mut bytes = BytesMut::from(&encode(&batch)[..]);
        // The skipped message's name is not even looked at: bytes that are not UTF-8.
        let at = 4 + FIXED + (batch[0].from.len() + batch[0].to.len() + 8 + 3) + FIXED + 2;
        bytes[at] = 0xff;
        let mut names = Names::default();
        let got = decode_where(bytes.freeze(), &mut names, |conv, _, _| conv != 99).unwrap();
        assert_eq!(got, vec![batch[0].clone(), batch[2].clone()]);
        assert!(Arc::ptr_eq(&got[0].from, &got[1].from));
        let again = decode_where(encode(&batch[..1]), &mut names, |_, _, _| true).unwrap();
        assert!(Arc::ptr_eq(&again[0].to, &got[1].to));
        // Cut short in a skipped message: still an error.
        let bytes = encode(&batch);
        for cut in 0..bytes.len() {
            let cut = bytes.slice(..cut);
            assert!(decode_where(cut, &mut names, |_, _, _| false).is_err());
        }
    }

    #[test]
    fn events_are_json_with_their_name() {
        let event = Event::Offline {
            user: 4,
            name: "carol".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json, r#"{"event":"offline","user":4,"name":"carol"}"#);
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
    }

    #[test]
    fn moderation_events_read_back_and_their_optional_fields_may_be_absent() {
        let kick = Event::Moderation {
            conv: 7,
            room: "lobby".into(),
            user: Some(3),
            user_name: Some("mallory".into()),
            by: "alice".into(),
            change: "kicked".into(),
            topic: None,
            stamp: 77,
        };
        let json = serde_json::to_string(&kick).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), kick);
        let bare = r#"{"event":"moderation","conv":7,"room":"lobby","by":"alice","change":"open"}"#;
        let Event::Moderation { user, topic, .. } = serde_json::from_str(bare).unwrap() else {
            panic!("not a moderation event");
        };
        assert_eq!((user, topic), (None, None));
        let state = r#"{"event":"user_state","user":3,"name":"mallory","disabled":true}"#;
        let expected = Event::UserState {
            user: 3,
            name: "mallory".into(),
            disabled: true,
            deleted: false,
            stamp: 0,
        };
        assert_eq!(serde_json::from_str::<Event>(state).unwrap(), expected);
    }

    #[test]
    fn a_login_event_from_an_older_node_reads_as_a_password_attempt() {
        let old = r#"{"event":"login","name":"bob","ip":"10.0.0.1","succeeded":false}"#;
        let event = serde_json::from_str::<Event>(old).unwrap();
        let expected = Event::Login {
            name: "bob".into(),
            ip: "10.0.0.1".parse().unwrap(),
            succeeded: false,
            unchecked: false,
            token: false,
        };
        assert_eq!(event, expected);
    }
}
