//! Durable state: users, devices, conversations and their ordered message logs, cursors.
//!
//! The hub thread is the only writer. It assigns every id itself and hands the store one
//! [`Batch`] per group commit, so the write interface is a single call and a second backend
//! (PostgreSQL, for several nodes) has little to implement. Messages go to an append-only
//! log of their own (log.rs), everything else to SQLite. Sessions read catch-up pages
//! through a [`Reader`], which never blocks the writer (SQLite WAL, positional reads of the
//! log).

pub mod admin;
pub mod backup;
mod block_cache;
mod blocks;
mod check;
mod deletions;
mod index;
mod log;
pub mod postgres;
mod read;
mod reader;
mod sqlite;
mod varint;

use std::collections::HashMap;

use bytes::Bytes;
use parley_proto::ConversationKind;

pub use check::{check, Report as CheckReport};
pub use deletions::Kind as MessageKind;
pub use index::MessageIndex;
pub use log::MessageLog;
pub use read::Reader;
pub use reader::{ConvPosition, Page, Profile, Resolved, SqliteReader, StoredMessage, UserRow};
pub use sqlite::SqliteStore;

pub type UserId = i64;
pub type DeviceId = i64;
pub type ConvId = i64;
pub type Seq = i64;

/// A message to append to a conversation's log.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub body: Bytes,
    /// The client's timestamp, passed through untouched (stored bit for bit).
    pub sent_at: u64,
    /// Server receive time, Unix milliseconds.
    pub received_at: i64,
}

/// Everything one group commit writes, in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub users: Vec<(UserId, String)>,
    pub devices: Vec<(DeviceId, UserId, String)>,
    /// New direct conversations: (id, lower user id, higher user id).
    pub directs: Vec<(ConvId, UserId, UserId)>,
    /// New rooms: (id, name, the user who created it; none for a guest).
    pub rooms: Vec<(ConvId, String, Option<UserId>)>,
    /// Room memberships that begin: (user, room, the room's last sequence at the join).
    pub joins: Vec<(UserId, ConvId, Seq)>,
    /// Room memberships that end.
    pub leaves: Vec<(UserId, ConvId)>,
    /// New messages. A conversation's last sequence is its highest stored message's, so
    /// nothing else records it.
    pub messages: Vec<NewMessage>,
    /// Highest sequence received per (device, conversation).
    pub cursors: HashMap<(DeviceId, ConvId), Seq, ahash::RandomState>,
    /// Users and devices last seen at (Unix ms).
    pub seen: Vec<(UserId, DeviceId, i64)>,
    /// The next message id after this batch: the store makes sure no id up to it is handed
    /// out again after a restart.
    pub next_message_id: i64,
    /// Passwords set (PHC strings).
    pub passwords: Vec<(UserId, String)>,
    pub tokens: Vec<NewToken>,
    pub revocations: Vec<Revoke>,
    pub profiles: Vec<ProfileChange>,
    /// Contact rows to set (`Some`) or delete (`None`): (user, other, state).
    pub contacts: Vec<(UserId, UserId, Option<ContactState>)>,
    /// Files now complete in the content store: (sha256 hex, size).
    pub files: Vec<(String, u64)>,
    /// Files attached to messages of a conversation: (sha256 hex, conversation).
    pub attachments: Vec<(String, ConvId)>,
    /// Accounts an operator disabled, enabled or deleted (`parley admin`).
    pub user_states: Vec<(UserId, UserState)>,
    /// Rooms an operator deleted: their name is freed, their members and cursors go.
    pub rooms_deleted: Vec<ConvId>,
    /// Room settings changed (topic, invite-only).
    pub room_settings: Vec<(ConvId, RoomSetting)>,
    /// Per-user marks of rooms set or cleared (operator, banned, muted, invited).
    pub room_marks: Vec<MarkChange>,
    /// Blocks begun (`true`) or ended: (user, the user they block).
    pub blocks: Vec<(UserId, UserId, bool)>,
    /// Messages deleted by this batch, each announced by a tombstone among its messages.
    pub deletions: Vec<Deletion>,
    /// A cluster node's moderation events of this batch, each as JSON: logged with the
    /// batch's moderation rows (store/postgres/moderation.rs), so that a node that missed
    /// one on NATS reads it there. Not a row of its own (the embedded store has no use).
    pub moderation_log: Vec<String>,
}

/// What an operator made of an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserState {
    /// Its logins are refused.
    pub disabled: bool,
    /// Deleted: disabled for good, password removed; its row stays (see schema V8).
    pub deleted: bool,
}

/// A room setting, as `conversations` stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomSetting {
    /// The topic; `None` clears it.
    Topic(Option<String>),
    /// Only invited users (and operators) may join.
    InviteOnly(bool),
}

/// What a user is in a room beyond a member, one `room_marks` row each. The owner is the
/// room's creator (`conversations.created_by`), not a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mark {
    Operator = 1,
    Banned = 2,
    Muted = 3,
    /// May join an invite-only room (once: joining uses the invitation up).
    Invited = 4,
}

impl Mark {
    pub fn from_i64(v: i64) -> Option<Mark> {
        match v {
            1 => Some(Mark::Operator),
            2 => Some(Mark::Banned),
            3 => Some(Mark::Muted),
            4 => Some(Mark::Invited),
            _ => None,
        }
    }
}

/// A mark of a room set or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkChange {
    pub conv: ConvId,
    pub user: UserId,
    pub mark: Mark,
    pub set: bool,
    /// Who set it.
    pub by: UserId,
}

/// A deleted message. The message stays in the log as it was; so does the tombstone, a
/// message of the same conversation (its own sequence, an empty body, sent by whoever
/// deleted) that devices receive as the deletion's event. This row is what makes the one
/// read as deleted and the other as its tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    pub message: i64,
    pub conv: ConvId,
    /// The deleted message's sequence.
    pub seq: Seq,
    /// The id of the tombstone (a message of the same batch).
    pub tombstone: i64,
    pub by: UserId,
    /// Unix ms.
    pub at: i64,
}

/// Where a contact stands, seen from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactState {
    /// This user asked the other.
    Requested = 1,
    /// The other asked this user, who has not answered yet.
    Pending = 2,
    Accepted = 3,
}

impl ContactState {
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(ContactState::Requested),
            2 => Some(ContactState::Pending),
            3 => Some(ContactState::Accepted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ContactState::Requested => "requested",
            ContactState::Pending => "pending",
            ContactState::Accepted => "accepted",
        }
    }
}

/// A device token to store (only its hash).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub hash: Vec<u8>,
    pub user: UserId,
    pub device: DeviceId,
    /// Unix ms.
    pub expires_at: i64,
}

/// Tokens to revoke.
#[derive(Debug, Clone, Copy)]
pub enum Revoke {
    /// Every token of this device.
    Device(UserId, DeviceId),
    /// Every token of the user but this device's.
    AllBut(UserId, DeviceId),
}

/// A profile update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub user: UserId,
    pub display_name: Option<String>,
    pub avatar: Option<Vec<u8>>,
}

impl Batch {
    /// Records that `user` joins `conv` at `seq`, replacing a leave of the same batch.
    pub fn join(&mut self, user: UserId, conv: ConvId, seq: Seq) {
        self.leaves.retain(|l| *l != (user, conv));
        self.joins.push((user, conv, seq));
    }

    /// Records that `user` leaves `conv`, replacing a join of the same batch.
    pub fn leave(&mut self, user: UserId, conv: ConvId) {
        self.joins.retain(|j| (j.0, j.1) != (user, conv));
        self.leaves.push((user, conv));
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && !self.has_rows()
    }

    /// Whether the batch writes anything but messages (which go to the message log).
    pub fn has_rows(&self) -> bool {
        !(self.users.is_empty()
            && self.devices.is_empty()
            && self.directs.is_empty()
            && self.rooms.is_empty()
            && self.joins.is_empty()
            && self.leaves.is_empty()
            && self.cursors.is_empty()
            && self.seen.is_empty()
            && self.passwords.is_empty()
            && self.tokens.is_empty()
            && self.revocations.is_empty()
            && self.profiles.is_empty()
            && self.contacts.is_empty()
            && self.files.is_empty()
            && self.attachments.is_empty()
            && self.user_states.is_empty()
            && self.rooms_deleted.is_empty()
            && self.room_settings.is_empty()
            && self.room_marks.is_empty()
            && self.blocks.is_empty()
            && self.deletions.is_empty())
    }
}

/// Ids the hub continues from after a start.
#[derive(Debug, Clone, Copy)]
pub struct NextIds {
    pub user: UserId,
    pub device: DeviceId,
    pub conv: ConvId,
    pub message: i64,
}

/// A conversation a user belongs to, as the hub caches it.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub conv: ConvId,
    pub joined_seq: Seq,
}

/// A room as loaded at start.
#[derive(Debug, Clone)]
pub struct StoredRoom {
    pub conv: ConvId,
    pub name: String,
    pub members: Vec<UserId>,
    /// Who created it (rooms created by guests, or before schema version 7: none): its
    /// owner.
    pub created_by: Option<UserId>,
    pub topic: Option<String>,
    pub invite_only: bool,
    /// Its operators, bans, mutes and invitations.
    pub marks: Vec<(UserId, Mark)>,
}

/// A direct conversation as the hub caches it.
#[derive(Debug, Clone, Copy)]
pub struct DirectConv {
    pub id: ConvId,
    pub last_seq: Seq,
}

/// The write side of the store, owned by the hub thread.
pub trait LogStore: Send {
    /// Every user (and whether it is an account with a password), for the hub's index.
    fn load_users(&mut self) -> anyhow::Result<Vec<(UserId, String, bool)>>;
    fn next_ids(&mut self) -> anyhow::Result<NextIds>;
    fn find_device(&mut self, user: UserId, name: &str) -> anyhow::Result<Option<DeviceId>>;
    /// The direct conversation of `a` and `b` (a <= b), if they ever talked.
    fn find_direct(&mut self, a: UserId, b: UserId) -> anyhow::Result<Option<DirectConv>>;
    fn memberships(&mut self, user: UserId) -> anyhow::Result<Vec<Membership>>;
    fn last_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq>;
    /// Every room with its members, for the hub's room index.
    fn load_rooms(&mut self) -> anyhow::Result<Vec<StoredRoom>>;
    /// The id of the single broadcast conversation, created on first use; and the id of
    /// the reserved user `name` that anonymous sessions speak as, created likewise.
    fn ensure_builtin(&mut self, anonymous: &str) -> anyhow::Result<(ConvId, UserId)>;
    /// A user's contacts with their state.
    fn contacts(&mut self, user: UserId) -> anyhow::Result<Vec<(UserId, ContactState)>>;
    /// Accounts an operator disabled or deleted.
    fn load_user_states(&mut self) -> anyhow::Result<Vec<(UserId, UserState)>> {
        Ok(Vec::new())
    }
    /// Every block: (user, the user they block). Few, so the hub holds them all. (A store
    /// that keeps none, PostgreSQL so far, has none to load.)
    fn load_blocks(&mut self) -> anyhow::Result<Vec<(UserId, UserId)>> {
        Ok(Vec::new())
    }
    /// Whether message `id` is deleted.
    fn is_deleted(&mut self, id: i64) -> anyhow::Result<bool> {
        let _ = id;
        Ok(false)
    }
    /// Writes the whole batch, or reports an error: its rows in one transaction, then its
    /// messages. After an error its rows may be stored, but none of its messages.
    fn write(&mut self, batch: &Batch) -> anyhow::Result<()>;

    /// Writes the batch, and says what the store decided in it: a store that hands out
    /// message ids and sequences itself (PostgreSQL, where several nodes write a
    /// conversation) gives each message's (id, sequence), in the batch's order; the hub's
    /// are replaced before any reply or delivery is made. The embedded store keeps the
    /// hub's.
    fn commit(&mut self, batch: &Batch) -> anyhow::Result<Option<Vec<(i64, Seq)>>> {
        self.write(batch).map(|()| None)
    }

    /// The shared store of a cluster, for what only it does (creates that nodes race,
    /// gap reads, who is online where).
    fn cluster(&mut self) -> Option<&mut postgres::PgStore> {
        None
    }
}

/// Whether a stored or relayed message is a deletion's tombstone, as the message itself
/// says (a cluster's packs and NATS batches: store/postgres/pack.rs, cluster/wire.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstone {
    /// Written before messages said: an empty one may be a tombstone (`deletions` says).
    Unknown,
    /// A plain message.
    No,
    /// The tombstone of the message (id, sequence).
    Of(i64, Seq),
}

/// What [`LogStore::commit`] gives a message it did not store: a deletion's tombstone
/// whose message another node deleted first (a cluster's; the deletion here is a no-op).
pub const NOT_STORED: (i64, Seq) = (0, 0);

/// The reserved name anonymous sessions (seed 004 before `/nick`, seed 001 before
/// `REGISTER`) speak as: a user row like any other, but nobody can log in with it.
pub const ANONYMOUS: &str = "anonymous";

/// Kinds of conversation, as stored in `conversations.kind` (their codes).
pub const KIND_DIRECT: i64 = ConversationKind::Direct as i64;
pub const KIND_ROOM: i64 = ConversationKind::Room as i64;
pub const KIND_BROADCAST: i64 = ConversationKind::Broadcast as i64;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
