//! The output path: everything written to a client, from the hub's hands to the socket.
//!
//! ```text
//! hub batch ─► Staging (items gathered per session) ─► Link (bounded queue, kill switch)
//!                                                        │ first push starts
//!                                                        ▼
//!           ProgressSink (the hub) ◄── Writer task (encode, one write call, TCP acks)
//! ```
//!
//! The hub never waits on a socket: it pushes [`Item`]s into a session's [`Link`] without
//! waiting and, when the queue is full, disconnects the session as a slow consumer (what it
//! missed stays in the log). A [`Writer`] task takes everything queued, encodes it into one
//! buffer (`encode`; a message shared by many sessions is encoded once per style,
//! `delivery`) and writes it with one call. It reports how far each conversation got once
//! the peer's TCP stack acknowledged the bytes (`tcp_ack`) to a [`ProgressSink`], which
//! makes it the device's cursor. A writer task runs only while there is something to do: the
//! first push into an empty queue starts it, and after a moment with nothing to write it
//! parks its state in the link and ends.
//!
//! Dependencies point one way: the hub and sessions use this module; it knows neither (the
//! progress sink is the one thing it calls back, through a trait). Inside it too: `queue`,
//! `tcp_ack` and `delivery` use nothing here but [`Style`]; `encode` uses `delivery`;
//! `link` and `writer`, the two halves of a session's output (the link holds the parked
//! writer, the writer drains the link), and `staging` use those.
//!
//! A *protocol* is how a session reads; a *style* is how it is written to (the text
//! protocol has two dialects, a binary session that acks gets `Event` frames, and a JSON
//! session over WebSocket gets its lines in WebSocket frames).

mod delivery;
mod encode;
mod link;
mod queue;
pub mod simpletcp;
mod staging;
mod tcp_ack;
mod writer;

use std::sync::Arc;

use bytes::Bytes;
use parley_proto::Reply;

pub use delivery::{
    ContactChange, Delivery, ModerationChange, Notice, RoomRun, SharedNotice, MESSAGE_OVERHEAD,
};
pub use encode::{json_error, slash_error, StoredTag, Tag};
pub use link::{Kill, Link, LinkLimits};
pub use queue::Waiter;
pub use staging::Staging;
pub use writer::{ProgressSink, Writer};

/// The weight of an item with no body: a reply, a notice.
const SMALL_ITEM: usize = 64;

/// How a connection's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The seed-000 length-prefixed binary protocol.
    Binary,
    /// Lines a person types (seed 002 words and seed 004 slash commands).
    Text,
    /// JSON lines (seed 001 and parley's extensions).
    Json,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::Text => "text",
            Protocol::Json => "json",
        }
    }

    /// The style a session of this protocol starts with.
    pub fn style(self) -> Style {
        match self {
            Protocol::Binary => Style::Binary,
            Protocol::Text => Style::Line,
            Protocol::Json => Style::Json,
        }
    }
}

/// How pushed messages and notices are written to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Style {
    Binary = 0,
    /// Seed 002: `DM <from> <text>`, `MSG <from> <text>`, `INFO ...`.
    Line = 1,
    /// Seed 004: `> <nick>: <text>`, `> <nick> joined the room`.
    Slash = 2,
    Json = 3,
    /// Binary `Event` frames (0x2E), with conversation and sequence, for sessions that ack.
    Events = 4,
    /// JSON objects, each in a WebSocket text frame (the JSON protocol over `/ws`).
    WebSocket = 5,
    /// Seed 003's framed JSON: direct messages as `FORWARDMSG` frames, nothing else.
    SimpleTcp = 6,
}

impl Style {
    /// Number of styles (size of per-style caches).
    pub const COUNT: usize = 7;

    /// The text protocol's dialects (seed 002's lines and seed 004's slash commands).
    pub fn is_text(self) -> bool {
        matches!(self, Style::Line | Style::Slash)
    }

    pub fn from_u8(v: u8) -> Style {
        match v {
            0 => Style::Binary,
            1 => Style::Line,
            2 => Style::Slash,
            3 => Style::Json,
            5 => Style::WebSocket,
            6 => Style::SimpleTcp,
            _ => Style::Events,
        }
    }
}

/// One thing to write to a client.
#[derive(Debug)]
pub enum Item {
    Reply(Tag, Reply),
    /// Bytes the session rendered itself.
    Bytes(Bytes),
    /// A presence notice, written in the session's style.
    Notice(Arc<SharedNotice>),
    /// A live push from the hub.
    Deliver(Arc<Delivery>),
    /// Live pushes of a room: messages `start..end` of a batch's run.
    Run(Arc<RoomRun>, u32, u32),
    /// A message replayed from the log while catching up; holds one `replay` permit.
    Replay(Arc<Delivery>),
    /// Bytes written as they are, whatever the style (a WebSocket control frame).
    Raw(Bytes),
    /// Nothing to write: from now on the session is logged in as this name, so a direct
    /// message from it (sent on another device) is written showing its recipient. Queued
    /// before the login, so it precedes every message the login brings. (The writer keeps
    /// it: the link is at its allocation class.)
    Me(Arc<String>),
}

impl Item {
    /// The bytes this takes in a write in `style`: exact for messages and notices (encoded
    /// once per style and shared) and rendered bytes, a guess for replies.
    fn encoded_len_hint(&self, style: Style) -> usize {
        match self {
            Item::Deliver(d) | Item::Replay(d) => d.encoded_len_hint(style),
            Item::Run(run, start, end) => {
                run.encoded_len_hint(style, *start as usize..*end as usize)
            }
            // A WebSocket frame's header is at most 10 bytes.
            Item::Bytes(bytes) | Item::Raw(bytes) => bytes.len() + 10,
            Item::Notice(notice) => notice.encoded(style).len(),
            Item::Reply(..) => 64,
            Item::Me(_) => 0,
        }
    }
}

impl queue::Weigh for Item {
    /// How many pushes this is, for the session's push limit (`outbound_queue`), and about
    /// the memory it holds until it is written, the same whatever the style: what it takes
    /// in a write, give or take a few words per message (the byte bound). One match: two
    /// cost a staged answer about 10 instructions more.
    #[inline]
    fn tally(&self) -> queue::Tally {
        let (pushes, bytes) = match self {
            Item::Deliver(d) => (1, d.weight()),
            Item::Replay(d) => (0, d.weight()),
            Item::Run(run, start, end) => {
                let (start, end) = (*start as usize, *end as usize);
                (end - start, run.weight(start..end))
            }
            Item::Bytes(bytes) | Item::Raw(bytes) => (0, bytes.len()),
            Item::Notice(_) => (1, SMALL_ITEM),
            Item::Reply(..) | Item::Me(_) => (0, SMALL_ITEM),
        };
        queue::Tally { pushes, bytes }
    }
}
