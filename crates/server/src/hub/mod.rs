//! The hub: the one place that changes shared state.
//!
//! Sessions send it operations over a channel; a single thread ([`core`]) takes whatever has
//! queued up, applies it in order, writes it to the store in one transaction (group commit),
//! and only then answers senders and pushes messages to online recipients. So an OK always
//! follows the commit, delivery order is the log's order, and no lock is shared with the
//! sessions. In a cluster (cluster.rs) the same steps run on every node, PostgreSQL decides
//! ids and sequences at the commit, and NATS brings what the other nodes committed.

mod admin;
mod cluster;
mod cluster_moderation;
mod contacts;
mod core;
mod moderation;
mod presence;
mod rooms;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parley_proto::{ErrorKind, Reply, Target};
use tokio::sync::oneshot;

use crate::outbound::{Item, Link, ProgressSink, Tag};
use crate::store::{ConvId, DeviceId, NewToken, ProfileChange, Revoke, Seq, UserId};

pub use self::admin::{AdminAnswer, AdminOp, Whom};
pub use self::core::spawn;
pub use self::moderation::{Doomed, Rank};
pub use self::presence::RenderWatch;

/// The hub's maps, looked up for every operation, hashed with aHash: a fraction of the cost
/// of std's SipHash, and randomly keyed like it, so names chosen by clients cannot be made
/// to collide.
pub(crate) type Map<K, V> = HashMap<K, V, ahash::RandomState>;
pub(crate) type Set<K> = std::collections::HashSet<K, ahash::RandomState>;

/// A user name as the hub's name map holds it, looked up by its bytes: a binary client's
/// recipient needs no second UTF-8 check in the hub (its session checked the name).
/// Hashed and compared as its bytes, so a `&[u8]` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameKey(pub Arc<str>);

impl std::hash::Hash for NameKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state)
    }
}

impl std::borrow::Borrow<[u8]> for NameKey {
    fn borrow(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The reserved name anonymous sessions speak as (the store keeps it as a user row).
pub use crate::store::ANONYMOUS;

/// A logged-in session as the hub knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub device: DeviceId,
}

/// The answer to a successful login.
#[derive(Debug, Clone)]
pub struct LoginOk {
    pub identity: Identity,
    pub name: Arc<str>,
    /// The device had nothing to replay and receives live pushes already: no catch-up.
    pub live: bool,
}

/// How a login proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// It did not (seed 000 and seed 002 logins): refused for names that are accounts.
    None,
    /// The session checked the password of this user.
    Password(UserId),
    /// The session checked a valid token of this user's device.
    Token(UserId, DeviceId),
}

/// What a user does with a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactAction {
    Request,
    Accept,
    Decline,
    Remove,
}

/// A change to an account, written in the hub's next batch.
#[derive(Debug, Clone)]
pub enum AccountChange {
    /// A new password; every token but `keep`'s is revoked.
    Password {
        hash: String,
        keep: DeviceId,
    },
    Token(NewToken),
    Revoke(Revoke),
    Profile(ProfileChange),
}

/// Who acts: a logged-in device, or an anonymous session.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    Member(Identity),
    Guest,
}

/// What a room's owner or operators (or the server's administrator) do in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomAction {
    /// Sets the topic (`None` or empty: none).
    Topic(Option<String>),
    InviteOnly(bool),
    Invite(String),
    /// Out of the room (the user may join again, unless banned).
    Kick(String),
    /// Out of the room, and kept out until unbanned.
    Ban(String),
    Unban(String),
    /// Stays in the room, but their messages to it are refused.
    Mute(String),
    Unmute(String),
    /// Makes an operator (the owner only).
    Op(String),
    Deop(String),
    /// Deletes the room (the owner only): members, marks and cursors go, the name is free.
    Delete,
}

/// A room's settings, owner and marks, and where the asking user stands in it.
#[derive(Debug, Clone)]
pub struct RoomDetails {
    pub name: Arc<str>,
    pub topic: Option<Arc<str>>,
    pub invite_only: bool,
    pub owner: Option<Arc<str>>,
    pub operators: Vec<Arc<str>>,
    pub banned: Vec<Arc<str>>,
    pub muted: Vec<Arc<str>>,
    /// The asking user's rank in the room.
    pub rank: Rank,
    pub member: bool,
}

/// A room in a listing.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub name: Arc<str>,
    pub members: usize,
    pub online: usize,
}

/// Who is online.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Logged-in users, sorted.
    pub users: Vec<Arc<str>>,
    /// Connected sessions that never logged in and said they want to be counted.
    pub anonymous: usize,
}

/// The hub's answer to a catching-up session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoLive {
    /// Every conversation was read to its end: live pushes start now.
    Live,
    /// More was written meanwhile: read again, then ask again.
    Behind,
    /// The session is no longer online (or the hub stopped).
    Gone,
}

type Done<T> = oneshot::Sender<T>;

/// A room's members, each with whether they are online.
pub type MemberList = Vec<(Arc<str>, bool)>;

/// One direct message of a binary session's run (`Hub::send_direct`): the frame it came
/// in, its sender and recipient already checked by the session.
pub(crate) type DirectMessage = parley_proto::binary::MessageView;

pub(crate) enum Op {
    Login {
        link: Arc<Link>,
        name: String,
        device: String,
        auth: Auth,
        /// Queued on success before anything else can reach the session.
        welcome: Option<Item>,
        /// The session's current password-less name, given up for this one (a rename:
        /// seed 001's second `REGISTER`, seed 004's second `/nick`).
        replacing: Option<Identity>,
        done: Done<Result<LoginOk, ErrorKind>>,
    },
    /// Creates an account (or gives a password to a password-less name not online).
    Register {
        name: String,
        hash: String,
        done: Done<Result<(), ErrorKind>>,
    },
    Account {
        user: UserId,
        change: AccountChange,
        done: Done<Result<(), ErrorKind>>,
    },
    Contact {
        user: UserId,
        other: String,
        action: ContactAction,
        done: Done<Result<(), ErrorKind>>,
    },
    Send {
        link: Arc<Link>,
        from: Actor,
        to: Target,
        body: Bytes,
        sent_at: u64,
        tag: Tag,
        /// A stored file this message carries (its SHA-256): the conversation's members may
        /// download it from now on.
        attachment: Option<String>,
    },
    /// Direct messages a binary session read in one go, in order: one hand-over (and one
    /// wake-up of the hub) for all of them instead of one each.
    Direct {
        link: Arc<Link>,
        sender: Identity,
        messages: Vec<DirectMessage>,
    },
    /// A file was verified and stored.
    FileStored {
        hash: String,
        size: u64,
    },
    /// Output that must stay in order behind this session's earlier requests.
    Reply {
        link: Arc<Link>,
        item: Item,
    },
    Join {
        link: Arc<Link>,
        actor: Actor,
        room: String,
        /// Leave this room first (seed 004: one room at a time).
        leave: Option<String>,
        /// The session's answer to a successful join, queued by the hub before any of the
        /// room's messages (the session writes nothing more for it).
        ok: Option<Item>,
        done: Done<Result<(), ErrorKind>>,
    },
    Leave {
        link: Arc<Link>,
        actor: Actor,
        room: String,
        done: Done<Result<(), ErrorKind>>,
    },
    /// A page of the rooms, sorted by name: those after `after`, at most `limit`.
    Rooms {
        after: String,
        limit: usize,
        done: Done<Vec<RoomInfo>>,
    },
    Who {
        done: Done<Presence>,
    },
    /// Whether each of these users is online (a lookup each: a listing's page costs what
    /// it shows, not what is online).
    Online {
        names: Vec<String>,
        done: Done<Vec<bool>>,
    },
    /// A room's members (users and anonymous sessions), with whether each is online.
    Members {
        room: String,
        done: Done<Result<MemberList, ErrorKind>>,
    },
    /// Count this anonymous session in presence listings.
    Guest {
        link: Arc<Link>,
    },
    /// Start pushing to this device (JSON sessions push only once they ask).
    Subscribe {
        link_id: u64,
        user: UserId,
    },
    /// A catching-up session asks to receive live pushes from now on; granted only if it
    /// has read every conversation up to its end.
    GoLive {
        link_id: u64,
        user: UserId,
        progress: HashMap<ConvId, Seq>,
        done: Done<GoLive>,
    },
    Cursors {
        device: DeviceId,
        progress: Vec<(ConvId, Seq)>,
    },
    /// The session ended (logged in or not).
    Gone {
        link_id: u64,
        identity: Option<Identity>,
    },
    /// What the cluster's tasks bring (cluster mode only).
    Cluster(crate::cluster::Incoming),
    /// An operator's request (`parley admin`).
    Admin {
        op: AdminOp,
        done: admin::AdminDone,
    },
    /// A room's owner or operator (or, without `actor`, the administrator) acts.
    Moderate {
        link: Option<Arc<Link>>,
        actor: Option<Identity>,
        room: String,
        action: RoomAction,
        done: Done<Result<(), ErrorKind>>,
    },
    RoomDetails {
        room: String,
        user: Option<UserId>,
        done: Done<Result<RoomDetails, ErrorKind>>,
    },
    Block {
        user: UserId,
        other: String,
        on: bool,
        done: Done<Result<(), ErrorKind>>,
    },
    Blocks {
        user: UserId,
        done: Done<Vec<Arc<str>>>,
    },
    /// Replaces the watch list of a session; its answer is rendered by `render` and queued
    /// in order with the pushes that follow.
    Watch {
        link: Arc<Link>,
        user: UserId,
        names: Vec<String>,
        render: RenderWatch,
    },
    /// Deletes a stored message with a tombstone; answered once it is stored.
    DeleteMessage {
        link: Arc<Link>,
        actor: Identity,
        doomed: Doomed,
        done: Done<Result<(), ErrorKind>>,
    },
    Shutdown,
}

impl Op {
    /// The protocol of the session that sends messages with this operation, if it does.
    pub(crate) fn protocol(&self) -> Option<crate::outbound::Protocol> {
        match self {
            Op::Send { link, .. } | Op::Direct { link, .. } => Some(link.protocol),
            _ => None,
        }
    }
}

/// A cloneable handle to the hub thread.
#[derive(Clone)]
pub struct Hub {
    ops: crossbeam_channel::Sender<Op>,
}

impl Hub {
    /// Queues `op`; gives it back (boxed: ops are large) if the hub has stopped.
    fn submit(&self, op: Op) -> Result<(), Box<Op>> {
        self.ops.send(op).map_err(|e| Box::new(e.0))
    }

    /// Sends `op` and waits for its answer; `fallback` if the hub is gone.
    async fn ask<T>(&self, make: impl FnOnce(Done<T>) -> Op, fallback: T) -> T {
        let (done, answer) = oneshot::channel();
        if self.submit(make(done)).is_err() {
            return fallback;
        }
        answer.await.unwrap_or(fallback)
    }

    /// Logs `link` in as `name` on `device`; with `replacing`, in place of that identity,
    /// which goes offline once `name` has passed the login's checks (see `Core::login`).
    pub async fn login(
        &self,
        link: Arc<Link>,
        name: String,
        device: String,
        auth: Auth,
        welcome: Option<Item>,
        replacing: Option<Identity>,
    ) -> Result<LoginOk, ErrorKind> {
        self.ask(
            |done| Op::Login {
                link,
                name,
                device,
                auth,
                welcome,
                replacing,
                done,
            },
            Err(ErrorKind::ShuttingDown),
        )
        .await
    }

    pub async fn register(&self, name: String, hash: String) -> Result<(), ErrorKind> {
        let op = |done| Op::Register { name, hash, done };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    pub async fn account(&self, user: UserId, change: AccountChange) -> Result<(), ErrorKind> {
        let op = |done| Op::Account { user, change, done };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    /// Sends `messages` from `sender`, each answered by its own correlation id, as `send`
    /// would one by one.
    pub fn send_direct(&self, link: Arc<Link>, sender: Identity, messages: Vec<DirectMessage>) {
        let op = Op::Direct {
            link,
            sender,
            messages,
        };
        if let Err(op) = self.submit(op) {
            if let Op::Direct { link, messages, .. } = *op {
                for m in messages {
                    let reply = Reply::Error(ErrorKind::ShuttingDown);
                    finish(&link, Item::Reply(Tag::Cid(m.cid), reply));
                }
            }
        }
    }

    /// Sends a message; the reply reaches `link` once the message is stored. `attachment`
    /// is a stored file the message carries (its SHA-256). The caller must hold one
    /// in-flight permit of `link`, which the hub returns.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        link: Arc<Link>,
        from: Actor,
        to: Target,
        body: Bytes,
        sent_at: u64,
        tag: Tag,
        attachment: Option<String>,
    ) {
        let op = Op::Send {
            link,
            from,
            to,
            body,
            sent_at,
            tag,
            attachment,
        };
        if let Err(op) = self.submit(op) {
            if let Op::Send { link, tag, .. } = *op {
                let reply = Reply::Error(ErrorKind::ShuttingDown);
                finish(&link, Item::Reply(tag, reply));
            }
        }
    }

    /// Records a verified file in the store's index.
    pub fn file_stored(&self, hash: String, size: u64) {
        let _ = self.submit(Op::FileStored { hash, size });
    }

    /// Queues `item` behind this session's requests already in the hub. The caller must
    /// hold one in-flight permit of `link`, which the hub returns.
    pub fn reply_in_order(&self, link: Arc<Link>, item: Item) {
        if let Err(op) = self.submit(Op::Reply { link, item }) {
            if let Op::Reply { link, item } = *op {
                finish(&link, item);
            }
        }
    }

    pub async fn join(
        &self,
        link: Arc<Link>,
        actor: Actor,
        room: String,
        leave: Option<String>,
        ok: Option<Item>,
    ) -> Result<(), ErrorKind> {
        self.ask(
            |done| Op::Join {
                link,
                actor,
                room,
                leave,
                ok,
                done,
            },
            Err(ErrorKind::ShuttingDown),
        )
        .await
    }

    pub async fn leave(
        &self,
        link: Arc<Link>,
        actor: Actor,
        room: String,
    ) -> Result<(), ErrorKind> {
        self.ask(
            |done| Op::Leave {
                link,
                actor,
                room,
                done,
            },
            Err(ErrorKind::ShuttingDown),
        )
        .await
    }

    /// The rooms after `after` ("": from the first), sorted by name, at most `limit`.
    pub async fn rooms(&self, after: String, limit: usize) -> Vec<RoomInfo> {
        let op = |done| Op::Rooms { after, limit, done };
        self.ask(op, Vec::new()).await
    }

    /// Whether each of `names` is online (`false` for a name nobody has).
    pub async fn online(&self, names: Vec<String>) -> Vec<bool> {
        self.ask(|done| Op::Online { names, done }, Vec::new())
            .await
    }

    pub async fn contact(
        &self,
        user: UserId,
        other: String,
        action: ContactAction,
    ) -> Result<(), ErrorKind> {
        let op = |done| Op::Contact {
            user,
            other,
            action,
            done,
        };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    pub async fn members(&self, room: String) -> Result<MemberList, ErrorKind> {
        let op = |done| Op::Members { room, done };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    pub async fn who(&self) -> Presence {
        self.ask(|done| Op::Who { done }, Presence::default()).await
    }

    pub fn guest(&self, link: Arc<Link>) {
        let _ = self.submit(Op::Guest { link });
    }

    pub fn subscribe(&self, link_id: u64, user: UserId) {
        let _ = self.submit(Op::Subscribe { link_id, user });
    }

    /// Asks to switch a catching-up session to live delivery.
    pub async fn go_live(
        &self,
        link_id: u64,
        user: UserId,
        progress: HashMap<ConvId, Seq>,
    ) -> GoLive {
        self.ask(
            |done| Op::GoLive {
                link_id,
                user,
                progress,
                done,
            },
            GoLive::Gone,
        )
        .await
    }

    /// Records that `device` received conversations up to the given sequences.
    pub fn cursors(&self, device: DeviceId, progress: Vec<(ConvId, Seq)>) {
        let _ = self.submit(Op::Cursors { device, progress });
    }

    /// The session ended: takes it offline and out of its rooms as a guest.
    pub fn gone(&self, link_id: u64, identity: Option<Identity>) {
        let _ = self.submit(Op::Gone { link_id, identity });
    }

    /// Carries out an operator's request.
    pub async fn admin(&self, op: AdminOp) -> Result<AdminAnswer, ErrorKind> {
        let op = |done| Op::Admin { op, done };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    /// Does `action` in `room` as `actor` (`None`: the server's administrator, allowed
    /// everything), from the session of `link` (which is not told its own notice).
    pub async fn moderate(
        &self,
        link: Option<Arc<Link>>,
        actor: Option<Identity>,
        room: String,
        action: RoomAction,
    ) -> Result<(), ErrorKind> {
        let op = |done| Op::Moderate {
            link,
            actor,
            room,
            action,
            done,
        };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    /// `room`'s settings and marks, and `user`'s rank in it.
    pub async fn room_details(
        &self,
        room: String,
        user: Option<UserId>,
    ) -> Result<RoomDetails, ErrorKind> {
        let op = |done| Op::RoomDetails { room, user, done };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    /// `user` starts (`on`) or stops blocking `other`.
    pub async fn block(&self, user: UserId, other: String, on: bool) -> Result<(), ErrorKind> {
        let op = |done| Op::Block {
            user,
            other,
            on,
            done,
        };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    /// The users `user` blocks, sorted.
    pub async fn blocks(&self, user: UserId) -> Vec<Arc<str>> {
        self.ask(|done| Op::Blocks { user, done }, Vec::new()).await
    }

    /// Makes `names` the watch list of `link` (a session of `user`): their presence is
    /// pushed to it from now on. The answer, `render`ed from the watched users that exist,
    /// is queued in order with those pushes. The caller must hold one in-flight permit of
    /// `link`, which the hub returns.
    pub fn watch(&self, link: Arc<Link>, user: UserId, names: Vec<String>, render: RenderWatch) {
        let op = Op::Watch {
            link,
            user,
            names,
            render,
        };
        if let Err(op) = self.submit(op) {
            if let Op::Watch { link, render, .. } = *op {
                finish(&link, render(&[]));
            }
        }
    }

    /// Deletes the message `doomed` as `actor`; answered once the tombstone is stored.
    pub async fn delete_message(
        &self,
        link: Arc<Link>,
        actor: Identity,
        doomed: Doomed,
    ) -> Result<(), ErrorKind> {
        let op = |done| Op::DeleteMessage {
            link,
            actor,
            doomed,
            done,
        };
        self.ask(op, Err(ErrorKind::ShuttingDown)).await
    }

    /// Asks the hub thread to finish what is queued and stop.
    pub fn shutdown(&self) {
        let _ = self.submit(Op::Shutdown);
    }
}

/// Writers report what devices received here: it becomes their cursors.
impl ProgressSink for Hub {
    fn received(&self, device: DeviceId, progress: Vec<(ConvId, Seq)>) {
        self.cursors(device, progress);
    }
}

/// The cluster's bus and tasks hand what they hear here (hub/cluster.rs applies it).
impl crate::cluster::IncomingSink for Hub {
    fn incoming(&self, incoming: crate::cluster::Incoming) {
        let _ = self.submit(Op::Cluster(incoming));
    }
}

/// Queues a reply and returns the request's in-flight permit.
fn finish(link: &Link, item: Item) {
    link.push(item);
    link.inflight.add_permits(1);
}
