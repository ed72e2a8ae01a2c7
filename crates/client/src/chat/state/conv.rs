//! One conversation: its entries in the server's order, unread counts, scroll position,
//! members; and how a message finds its place (or is recognised as one already shown).

use parley_proto::binary::{kind, Event};

use super::MAX_ENTRIES;
use crate::Target;

/// Which conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvKey {
    /// The client's own buffer: help, notices, errors.
    Server,
    Room(String),
    /// The direct conversation with this user.
    Direct(String),
    /// Messages to everyone (`*`).
    Everyone,
}

impl ConvKey {
    /// Where plain text typed here goes.
    pub fn target(&self) -> Option<Target> {
        match self {
            ConvKey::Room(r) => Some(Target::Room(r.clone())),
            ConvKey::Direct(u) => Some(Target::User(u.clone())),
            ConvKey::Server | ConvKey::Everyone => None,
        }
    }

    /// The name the server's history knows it by.
    pub fn history_name(&self) -> Option<&str> {
        match self {
            ConvKey::Room(n) | ConvKey::Direct(n) => Some(n),
            ConvKey::Everyone => Some("*"),
            ConvKey::Server => None,
        }
    }

    /// How the sidebar and title show it.
    pub fn label(&self) -> &str {
        match self {
            ConvKey::Server => "parley",
            ConvKey::Room(n) | ConvKey::Direct(n) => n,
            ConvKey::Everyone => "* everyone",
        }
    }

    /// The conversation an event belongs to, seen by `me`.
    pub fn of(event: &Event, me: &str) -> ConvKey {
        let to = String::from_utf8_lossy(&event.to).into_owned();
        match event.kind & !kind::DELETED {
            kind::ROOM => ConvKey::Room(to),
            kind::BROADCAST => ConvKey::Everyone,
            _ if *event.from == *me.as_bytes() => ConvKey::Direct(to),
            _ => ConvKey::Direct(String::from_utf8_lossy(&event.from).into_owned()),
        }
    }
}

/// What a deleted message shows instead of its words.
pub const DELETED: &str = "(message deleted)";

/// What became of a message this client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Stored by the server (or received).
    Stored,
    /// Sent, no answer yet.
    Pending,
    /// Refused: why.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The server's id and place in the conversation (unknown for our own sends until a
    /// history page shows them).
    pub id: Option<u64>,
    pub seq: Option<u64>,
    pub from: String,
    pub text: String,
    /// The time field as sent (the sender's clock); names our own messages.
    pub time: u64,
    pub status: Delivery,
    /// Our own number for a message we sent.
    pub local: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    Info,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Msg(Msg),
    /// A line from the client itself (command output, errors); `ms` when it was written.
    Note {
        ms: u64,
        text: String,
        kind: NoteKind,
    },
}

/// Someone in a room, or the other side of a direct conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub online: bool,
}

#[derive(Debug, Clone)]
pub struct Conv {
    pub key: ConvKey,
    pub entries: Vec<Entry>,
    /// Messages from others that arrived while this was not on screen.
    pub unread: usize,
    /// Whether one of them names this user.
    pub mentioned: bool,
    /// Rows scrolled up from the bottom (0: following new messages).
    pub scroll: usize,
    /// Messages that arrived while scrolled up.
    pub below: usize,
    /// Whether older messages may exist on the server.
    pub more_before: bool,
    /// A history request is in flight.
    pub loading: bool,
    /// The first page was asked for.
    pub loaded: bool,
    /// Members of a room, online first.
    pub members: Vec<Member>,
    /// The id of the first message that arrived unseen: a "new" line is drawn above it.
    pub marker: Option<u64>,
}

impl Conv {
    pub(super) fn new(key: ConvKey) -> Conv {
        Conv {
            key,
            entries: Vec::new(),
            unread: 0,
            mentioned: false,
            scroll: 0,
            below: 0,
            more_before: true,
            loading: false,
            loaded: false,
            members: Vec::new(),
            marker: None,
        }
    }

    /// The oldest message id known here.
    pub fn oldest_id(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Msg(m) => m.id,
                _ => None,
            })
            .min()
    }

    pub(super) fn has_id(&self, id: u64) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Msg(m) if m.id == Some(id)))
    }

    /// Inserts a stored message in its place: before the first message with a higher
    /// sequence number, else at the end. Own messages whose place is not known yet stay
    /// where they were sent. Returns false for a duplicate (same id, or an own message
    /// already shown, recognised by its time).
    pub(super) fn insert(&mut self, msg: Msg, me: &str) -> bool {
        if let Some(id) = msg.id {
            if self.has_id(id) {
                return false;
            }
        }
        if msg.from == me {
            let own = self.entries.iter_mut().find_map(|e| match e {
                Entry::Msg(m) if m.id.is_none() && m.local.is_some() && m.time == msg.time => {
                    Some(m)
                }
                _ => None,
            });
            if let Some(own) = own {
                own.id = msg.id;
                own.seq = msg.seq;
                if own.status == Delivery::Pending {
                    own.status = Delivery::Stored;
                }
                return false;
            }
        }
        let at = msg.seq.and_then(|seq| {
            self.entries
                .iter()
                .position(|e| matches!(e, Entry::Msg(m) if m.seq.is_some_and(|s| s > seq)))
        });
        match at {
            Some(i) => self.entries.insert(i, Entry::Msg(msg)),
            None => self.entries.push(Entry::Msg(msg)),
        }
        if self.entries.len() > MAX_ENTRIES {
            self.entries.drain(..self.entries.len() - MAX_ENTRIES);
            self.more_before = true;
        }
        true
    }

    pub(super) fn note(&mut self, ms: u64, text: impl Into<String>, kind: NoteKind) {
        self.entries.push(Entry::Note {
            ms,
            text: text.into(),
            kind,
        });
        if self.entries.len() > MAX_ENTRIES {
            self.entries.remove(0);
        }
    }

    /// Shows the message at `seq` as deleted; true if it is here.
    pub(super) fn delete(&mut self, seq: u64) -> bool {
        let found = self.entries.iter_mut().find_map(|e| match e {
            Entry::Msg(m) if m.seq == Some(seq) => Some(m),
            _ => None,
        });
        match found {
            Some(m) => {
                m.text = DELETED.to_string();
                true
            }
            None => false,
        }
    }

    pub(super) fn own_mut(&mut self, local: u64) -> Option<&mut Msg> {
        self.entries.iter_mut().find_map(|e| match e {
            Entry::Msg(m) if m.local == Some(local) => Some(m),
            _ => None,
        })
    }
}
