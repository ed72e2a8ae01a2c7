//! What travels from the hub to sessions: stored messages, a room's run of them, and
//! presence notices (not stored), each with room for its bytes per style (`encode` makes
//! them, at most once per style).

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use parley_proto::ConversationKind;

use super::Style;
use crate::store::{ConvId, Seq};

/// One stored message as recipients see it. Fan-out shares one `Arc<Delivery>` among every
/// recipient; the first session of each style to write it encodes it, the rest reuse the
/// bytes.
#[derive(Debug)]
pub struct Delivery {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub kind: ConversationKind,
    pub from: Arc<str>,
    /// The recipient's name (direct), the room's name (room) or `*` (broadcast).
    pub to: Arc<str>,
    pub body: Bytes,
    /// The sender's timestamp, untouched (binary clients put Unix nanoseconds here).
    pub sent_at: u64,
    /// A deletion (a tombstone: `from` deleted), of the message with this (id, sequence).
    pub deletes: Option<(i64, Seq)>,
    pub(super) encoded: ByStyle,
}

/// What a message takes in a write besides its body and names, about (a binary frame's
/// header and time, an event's ids, a line's keyword, a JSON object's keys).
pub const MESSAGE_OVERHEAD: usize = 48;

/// A value's bytes per style, each encoded by the first session of that style to write it
/// and shared by the rest. The slots are allocated on first use: a direct message to one
/// device never needs them (see `Delivery::write_to`), and inline they made every
/// delivery 200 bytes larger to build, move and drop.
#[derive(Debug, Default)]
pub(super) struct ByStyle(OnceLock<Box<[OnceLock<Bytes>; Style::COUNT]>>);

impl ByStyle {
    pub(super) fn get(&self, style: Style, encode: impl FnOnce(&mut BytesMut)) -> &Bytes {
        self.0.get_or_init(Default::default)[style as usize].get_or_init(|| {
            let mut buf = BytesMut::new();
            encode(&mut buf);
            buf.freeze()
        })
    }

    /// The bytes in `style` if some session encoded them already.
    pub(super) fn cached(&self, style: Style) -> Option<&Bytes> {
        self.0.get()?[style as usize].get()
    }
}

impl Delivery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        conv: ConvId,
        seq: Seq,
        kind: ConversationKind,
        from: Arc<str>,
        to: Arc<str>,
        body: Bytes,
        sent_at: u64,
    ) -> Self {
        Delivery {
            id,
            conv,
            seq,
            kind,
            from,
            to,
            body,
            sent_at,
            deletes: None,
            encoded: Default::default(),
        }
    }

    /// About the bytes this takes in any style, for the queue's byte bound: the body, the
    /// names and a few words.
    pub fn weight(&self) -> usize {
        self.body.len() + self.from.len() + self.to.len() + MESSAGE_OVERHEAD
    }

    /// This delivery as the deletion of the message `id` at `seq` (see store/deletions.rs).
    pub fn deleting(mut self, id: i64, seq: Seq) -> Self {
        self.deletes = Some((id, seq));
        self
    }

    /// Whether this is a direct message that `user` sent to someone else (seen on another
    /// of their devices).
    pub fn sent_by(&self, user: Option<&String>) -> bool {
        self.kind == ConversationKind::Direct
            && user.is_some_and(|name| **name == *self.from)
            && self.from != self.to
    }

    /// The body as text (lossy for bytes that are not UTF-8).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// A room's messages of one batch, in order, shared by every member the batch reaches: a
/// member gets one queue item for a stretch of them (`Item::Run`) instead of one per
/// message, and the stretch's bytes are encoded once per style for all members, each member
/// copying its stretch in one go. A batch of the benchmark's one publisher holds 15 messages
/// on average for 1,000 members.
#[derive(Debug)]
pub struct RoomRun {
    pub conv: ConvId,
    /// Set once the batch is complete, before any session is given the run.
    pub(super) deliveries: OnceLock<Vec<Arc<Delivery>>>,
    /// The weight of the run's first `i` messages at `i` (set with `deliveries`): a
    /// stretch's weight in two reads, for every member it is queued for.
    weights: OnceLock<Vec<usize>>,
    /// Per style: the messages' bytes one after the other, and where each ends.
    pub(super) encoded: [OnceLock<(Bytes, Vec<usize>)>; Style::COUNT],
}

impl RoomRun {
    pub fn new(conv: ConvId) -> Self {
        RoomRun {
            conv,
            deliveries: OnceLock::new(),
            weights: OnceLock::new(),
            encoded: Default::default(),
        }
    }

    /// Completes the run (once, before it is handed to any session).
    pub fn complete(&self, deliveries: Vec<Arc<Delivery>>) {
        let mut sum = 0;
        let mut weights = Vec::with_capacity(deliveries.len() + 1);
        weights.push(0);
        weights.extend(deliveries.iter().map(|d| {
            sum += d.weight();
            sum
        }));
        let _ = self.weights.set(weights);
        let _ = self.deliveries.set(deliveries);
    }

    /// The weight of messages `range` (see `Delivery::weight`).
    pub fn weight(&self, range: std::ops::Range<usize>) -> usize {
        let weights = self.weights.get().map_or(&[][..], Vec::as_slice);
        let at = |i: usize| weights.get(i).or(weights.last()).copied().unwrap_or(0);
        at(range.end).saturating_sub(at(range.start))
    }

    pub(super) fn deliveries(&self) -> &[Arc<Delivery>] {
        self.deliveries.get().map_or(&[], Vec::as_slice)
    }

    /// The sequence of message `i` of the run.
    pub fn seq(&self, i: usize) -> Option<Seq> {
        self.deliveries().get(i).map(|d| d.seq)
    }
}

/// A presence notice as it is pushed: the change, and its line per style, encoded by the
/// first session of each style to write it (a join in a room of 1,000 reaches 999 sessions,
/// and a room's reconnect storm a million: each line was formatted per recipient).
#[derive(Debug)]
pub struct SharedNotice {
    pub notice: Notice,
    pub(super) encoded: ByStyle,
}

impl SharedNotice {
    pub fn new(notice: Notice) -> SharedNotice {
        SharedNotice {
            notice,
            encoded: Default::default(),
        }
    }
}

/// A presence change, pushed live to the sessions concerned and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Joined {
        room: Arc<str>,
        name: Arc<str>,
    },
    Left {
        room: Arc<str>,
        name: Arc<str>,
    },
    /// The user's last session ended.
    Disconnected {
        name: Arc<str>,
    },
    /// `name` changed their contact with the recipient.
    Contact {
        name: Arc<str>,
        change: ContactChange,
    },
    /// An operator (`by`) changed something in `room`, to `user` or to the room itself.
    Moderation {
        room: Arc<str>,
        user: Option<Arc<str>>,
        by: Arc<str>,
        change: ModerationChange,
    },
    /// A watched user's first session began.
    Online {
        name: Arc<str>,
    },
    /// A watched user's last session ended, at `last_seen` (Unix ms).
    Offline {
        name: Arc<str>,
        last_seen: i64,
    },
}

/// What an operator changed in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModerationChange {
    Invited,
    Kicked,
    Banned,
    Unbanned,
    Muted,
    Unmuted,
    Opped,
    Deopped,
    /// The room itself was deleted.
    Deleted,
    /// The new topic (empty: none).
    Topic(Arc<str>),
    InviteOnly(bool),
}

impl ModerationChange {
    /// The JSON `change` name.
    pub fn name(&self) -> &'static str {
        match self {
            ModerationChange::Invited => "invited",
            ModerationChange::Kicked => "kicked",
            ModerationChange::Banned => "banned",
            ModerationChange::Unbanned => "unbanned",
            ModerationChange::Muted => "muted",
            ModerationChange::Unmuted => "unmuted",
            ModerationChange::Opped => "opped",
            ModerationChange::Deopped => "deopped",
            ModerationChange::Deleted => "deleted",
            ModerationChange::Topic(_) => "topic",
            ModerationChange::InviteOnly(true) => "invite_only",
            ModerationChange::InviteOnly(false) => "open",
        }
    }

    /// The binary `Notice` frame's `change` code (`binary::change`).
    pub fn code(&self) -> u8 {
        use parley_proto::binary::change;
        match self {
            ModerationChange::Invited => change::INVITED,
            ModerationChange::Kicked => change::KICKED,
            ModerationChange::Banned => change::BANNED,
            ModerationChange::Unbanned => change::UNBANNED,
            ModerationChange::Muted => change::MUTED,
            ModerationChange::Unmuted => change::UNMUTED,
            ModerationChange::Opped => change::OPPED,
            ModerationChange::Deopped => change::DEOPPED,
            ModerationChange::Deleted => change::DELETED,
            ModerationChange::Topic(_) => change::TOPIC,
            ModerationChange::InviteOnly(true) => change::INVITE_ONLY,
            ModerationChange::InviteOnly(false) => change::OPEN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactChange {
    Requested,
    Accepted,
    Declined,
    Removed,
}

impl ContactChange {
    /// The JSON event name.
    pub fn event(self) -> &'static str {
        match self {
            ContactChange::Requested => "contact_requested",
            ContactChange::Accepted => "contact_accepted",
            ContactChange::Declined => "contact_declined",
            ContactChange::Removed => "contact_removed",
        }
    }
}
