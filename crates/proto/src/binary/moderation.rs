//! Moderation and presence (keys 0x50–0x5C): room topics, modes and operators' actions,
//! room details, deleting a message, blocking a user, watching users' presence; and the
//! pushes that carry them to sessions that enabled acks (`EnableAcks`): a deletion, a
//! moderation notice, a presence change. (`Event` in `Deleted` is `messaging.rs`'s.)

use bytes::Bytes;

use super::field::struct_field;

/// The moderation frames, for `define_frames!` (see `binary/table.rs`).
macro_rules! moderation_frames {
    ([$next:ident $($rest:ident)*] $($done:tt)*) => { $next! { [$($rest)*] $($done)*
        /// Sets a room's topic (empty: none). Operators.
        SetTopic = SET_TOPIC 0x50 { room: Bytes, topic: Bytes },
        /// Makes a room invite-only (1) or open (0). Operators.
        SetInviteOnly = SET_INVITE_ONLY 0x51 { room: Bytes, on: bool },
        /// One of `action::*` on `user` in `room`.
        Moderate = MODERATE 0x52 { room: Bytes, action: u8, user: Bytes },
        /// A room's details (answered with a `RoomInfo` frame).
        GetRoomInfo = GET_ROOM_INFO 0x53 { room: Bytes },
        RoomInfo = ROOM_INFO 0x54 { info: RoomInfoEntry },
        /// Deletes the message at `seq` of `target` (a room, a user, or `*`).
        DeleteMessage = DELETE_MESSAGE 0x55 { target: Bytes, seq: u64 },
        /// Blocks `user` (1) or stops (0): no DMs or contact requests from them.
        Block = BLOCK 0x56 { user: Bytes, on: bool },
        ListBlocks = LIST_BLOCKS 0x57 {},
        Blocks = BLOCKS 0x58 { users: Vec<Bytes> },
        /// Watches these users (replacing the list): their presence arrives as `Presence`
        /// pushes. Answered with a `Users` frame (their presence now).
        Watch = WATCH 0x59 { users: Vec<Bytes> },
        /// A watched user came online or went offline (cid 0).
        Presence = PRESENCE 0x5A { user: Bytes, online: bool, last_seen: u64 },
        /// A message was deleted (cid 0): `event` is the deletion's own place in its
        /// conversation (ack it like any event; its `from` deleted, its message is empty),
        /// `message_id` and `message_seq` the deleted message's.
        Deleted = DELETED 0x5B { event: Event, message_id: u64, message_seq: u64 },
        /// Something happened (cid 0): one of `change::*`, in `room` (empty for a contact
        /// change), to `user` (empty for the room itself), by `by`; `text` is the topic for
        /// `change::TOPIC`.
        Notice = NOTICE 0x5C { room: Bytes, change: u8, user: Bytes, by: Bytes, text: Bytes },
    } };
}
pub(super) use moderation_frames;

/// Actions of a `Moderate` frame.
pub mod action {
    pub const INVITE: u8 = 1;
    pub const KICK: u8 = 2;
    pub const BAN: u8 = 3;
    pub const UNBAN: u8 = 4;
    pub const MUTE: u8 = 5;
    pub const UNMUTE: u8 = 6;
    /// Makes an operator (the owner only).
    pub const OP: u8 = 7;
    pub const DEOP: u8 = 8;
    /// Deletes the room (the owner only; `user` empty).
    pub const DELETE_ROOM: u8 = 9;
}

/// What a `Notice` reports.
pub mod change {
    pub const INVITED: u8 = 1;
    pub const KICKED: u8 = 2;
    pub const BANNED: u8 = 3;
    pub const UNBANNED: u8 = 4;
    pub const MUTED: u8 = 5;
    pub const UNMUTED: u8 = 6;
    pub const OPPED: u8 = 7;
    pub const DEOPPED: u8 = 8;
    pub const DELETED: u8 = 9;
    pub const TOPIC: u8 = 10;
    pub const INVITE_ONLY: u8 = 11;
    pub const OPEN: u8 = 12;
    pub const JOINED: u8 = 13;
    pub const LEFT: u8 = 14;
    /// `user` asked to be a contact (no room).
    pub const CONTACT_REQUESTED: u8 = 15;
    pub const CONTACT_ACCEPTED: u8 = 16;
    pub const CONTACT_DECLINED: u8 = 17;
    pub const CONTACT_REMOVED: u8 = 18;
}

/// Ranks in a `RoomInfo`.
pub mod rank {
    pub const MEMBER: u8 = 0;
    pub const OPERATOR: u8 = 1;
    pub const OWNER: u8 = 2;
    pub const SERVER_OPERATOR: u8 = 3;
}

/// A room's details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfoEntry {
    pub room: Bytes,
    pub topic: Bytes,
    pub invite_only: bool,
    /// Empty when the room has none (made by a guest, or before owners were kept).
    pub owner: Bytes,
    /// The asking user's rank (`rank::*`).
    pub rank: u8,
    /// Whether the asking user is a member.
    pub member: bool,
    pub operators: Vec<Bytes>,
    pub banned: Vec<Bytes>,
    pub muted: Vec<Bytes>,
}

struct_field!(RoomInfoEntry {
    room,
    topic,
    invite_only,
    owner,
    rank,
    member,
    operators,
    banned,
    muted
});
