//! Messaging beyond the seed (keys 0x20–0x2F): rooms, many recipients, broadcast, the room,
//! member and user lists, history pages, and the ack-capable `Event` pushes.

use bytes::{BufMut, Bytes, BytesMut};

use super::field::{put_header, struct_field, Field, StringTooLong};
use super::{key, HEADER};

/// The messaging frames, for `define_frames!` (see `binary/table.rs`).
macro_rules! messaging_frames {
    ([$next:ident $($rest:ident)*] $($done:tt)*) => { $next! { [$($rest)*] $($done)*
        Join = JOIN 0x20 { room: Bytes },
        Leave = LEAVE 0x21 { room: Bytes },
        SendRoom = SEND_ROOM 0x22 { room: Bytes, message: Bytes, time: u64 },
        /// One message to several users (all or none).
        SendMany = SEND_MANY 0x23 { to: Vec<Bytes>, message: Bytes, time: u64 },
        /// One message to everyone online.
        SendAll = SEND_ALL 0x24 { message: Bytes, time: u64 },
        /// The first page of the rooms; with `page`, the one it names.
        ListRooms = LIST_ROOMS 0x25 { page: Option<ListPage> },
        Rooms = ROOMS 0x26 { rooms: Vec<RoomEntry> },
        ListMembers = LIST_MEMBERS 0x27 { room: Bytes },
        Members = MEMBERS 0x28 { members: Vec<UserEntry> },
        /// The first page of the users; with `page`, the one it names.
        ListUsers = LIST_USERS 0x29 { page: Option<ListPage> },
        Users = USERS 0x2A { users: Vec<UserEntry> },
        History = HISTORY 0x2B {
            /// A room, a user (the direct conversation with them) or `*`.
            target: Bytes,
            /// One of `page::*`.
            mode: u8,
            /// The id or Unix-ms time the mode refers to.
            value: u64,
            limit: u16,
        },
        HistoryPage = HISTORY_PAGE 0x2C { events: Vec<Event> },
        /// From now on, pushes are `Event` frames and the device's cursor moves only on `Ack`.
        EnableAcks = ENABLE_ACKS 0x2D {},
        /// A pushed message (cid 0) for a session that enabled acks.
        Event = EVENT 0x2E { event: Event },
        /// "I have everything of `conversation` up to `seq`". A notification: no response.
        Ack = ACK 0x2F { conversation: u64, seq: u64 },
    } };
}
pub(super) use messaging_frames;

/// Kinds of conversation in an `Event`.
pub mod kind {
    pub const DIRECT: u8 = 1;
    pub const ROOM: u8 = 2;
    pub const BROADCAST: u8 = 3;
    /// Added to the kind of a message in a `HistoryPage` that was deleted (its `message`
    /// is empty).
    pub const DELETED: u8 = 0x80;
}

/// Which part of a history a `History` request wants.
pub mod page {
    pub const LATEST: u8 = 0;
    pub const BEFORE_ID: u8 = 1;
    pub const AFTER_ID: u8 = 2;
    pub const BEFORE_TIME: u8 = 3;
    pub const AFTER_TIME: u8 = 4;
}

/// A stored message as the ack-capable frames carry it: with its place in its
/// conversation, so a client sees gaps and can ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub conversation: u64,
    pub seq: u64,
    /// `kind::DIRECT`, `kind::ROOM` or `kind::BROADCAST`.
    pub kind: u8,
    pub from: Bytes,
    /// The recipient (direct), the room, or `*`.
    pub to: Bytes,
    /// The sender's timestamp.
    pub time: u64,
    pub message: Bytes,
}

struct_field!(Event {
    id,
    conversation,
    seq,
    kind,
    from,
    to,
    time,
    message
});

/// Which page of a listing a request wants: the names after `after` (the last one of the
/// page before; empty: from the first), at most `limit` of them (0: as many as the server
/// puts in a page). Sent after the cid, or not at all for the first page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub after: Bytes,
    pub limit: u16,
}

struct_field!(ListPage { after, limit });

/// A room in a `Rooms` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEntry {
    pub name: Bytes,
    pub members: u32,
    pub online: u32,
}

struct_field!(RoomEntry {
    name,
    members,
    online
});

/// A user in a `Users` or `Members` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: Bytes,
    pub online: bool,
    /// Unix ms of the end of the last session; 0 if unknown (`Members` always 0).
    pub last_seen: u64,
}

struct_field!(UserEntry {
    name,
    online,
    last_seen
});

/// Appends an `Event` push frame (cid 0) from borrowed parts.
pub fn encode_event(event: &Event, dst: &mut BytesMut) -> Result<(), StringTooLong> {
    put_header(dst, HEADER + 4 + event.wire_len()?, key::EVENT);
    dst.put_u32(0);
    event.write(dst);
    Ok(())
}
