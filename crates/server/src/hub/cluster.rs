//! The hub as one node of a cluster: the same apply → commit → perform, with PostgreSQL
//! deciding what it alone can (ids, sequences, names taken) and NATS bringing what other
//! nodes committed.
//!
//! What the hub adds in cluster mode, and where:
//! - after a commit (`committed`), each message of the batch gets the id and sequence
//!   PostgreSQL gave it before any reply or delivery is made, and the batch is published;
//! - it *follows* the conversations its sessions need (`Followed`): for each, the last
//!   sequence dispatched here. A message from another node (`remote`) with the next
//!   sequence is delivered; one already dispatched (a redelivery) is dropped; one further
//!   on means messages were missed, and they are read from PostgreSQL and delivered first
//!   (`fill`, a bounded number per batch: the rest of a long gap, and what comes after it,
//!   in later batches). Its own commits follow the same rule: a node's sequences may come
//!   after another node's not yet received. Reconciliation (cluster/tasks.rs) catches the
//!   last message of a run lost on NATS;
//! - a conversation is followed from where the sessions that need it stand: at a catch-up's
//!   go-live, from what PostgreSQL holds then (the session read up to there); for a
//!   conversation that begins while a device is live, from the membership's start; a
//!   room member's (or a guest's) start is the room's sequence in PostgreSQL at the
//!   join, and what is relayed here up to it skips that member, as on one node;
//! - presence: who is online is PostgreSQL's table (store/postgres/cluster.rs), a user's
//!   last session anywhere ending is an event every node hears.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parley_proto::{ConversationKind, ErrorKind};
use tracing::{debug, warn};

use super::core::{internal, Audience, Core, Effect, Joiner};
use super::{Auth, Identity, Map, NameKey, Presence, RoomInfo, ANONYMOUS};
use crate::cluster::{wire, Event, Incoming, Link, RoomMembership, Wired};
use crate::outbound::{
    ContactChange, Delivery, Item, Kill, Link as OutLink, Notice, SharedNotice, Staging, Tag,
};
use crate::store::postgres::{OnlineClaim, PgStore};
use crate::store::{Batch, ConvId, DeviceId, Membership, Seq, Tombstone, UserId};

/// Messages read from PostgreSQL at a time to fill a gap, and the most the hub reads in
/// one batch: a longer gap is filled over several batches (the cluster tasks hand the hub
/// a reconciliation of its conversation at once to go on with), and what comes after it
/// waits until then, so the hub never stalls on a long history.
const FILL_PAGE: i64 = 500;
const FILL_BUDGET: i64 = 2 * FILL_PAGE;

/// The hub's cluster state.
pub(crate) struct State {
    link: Link,
    /// Conversations delivered here, and where each stands.
    followed: Map<ConvId, Followed>,
    /// Each local session's row in the online table: session id → (user, device key);
    /// and how many local sessions hold each row (a login waiting for a session of its
    /// name to end takes the row over before the old session gives it up).
    claims: Map<u64, (UserId, DeviceId)>,
    held: Map<(UserId, DeviceId), u32>,
    /// Rows to delete once this batch is done.
    releasing: Vec<(UserId, DeviceId)>,
    /// What to tell the other nodes once this batch's commit is known.
    pub(super) events: Vec<Event>,
    /// Deliveries of messages committed elsewhere or read back, in order: performed
    /// before the batch's own.
    relays: Vec<Relay>,
    /// Room messages (relays, or the batch's own) for sessions whose join is in this
    /// batch, each queued right after the join's answer (`Core::perform_holding`): the
    /// joiner hears its OK first.
    waiting: Vec<Held>,
    /// Messages this batch may still read back from PostgreSQL, and the conversations
    /// whose gap it left partly filled.
    budget: i64,
    more: Vec<ConvId>,
    /// Messages read back in this batch, and the most any batch read.
    read: u64,
    most: u64,
    /// The count of moderation's changes last read (hub/cluster_moderation.rs).
    pub(super) moderation_seen: i64,
    /// Moderation events applied here, by stamp (hub/cluster_moderation.rs).
    pub(super) heard: super::cluster_moderation::Heard,
    /// Where each guest's presence in a room here starts (conversation, session id → the
    /// room's sequence at its join): what is relayed here up to it skips the guest, as a
    /// member's membership start does.
    guest_starts: Map<(ConvId, u64), Seq>,
    /// Sessions whose member (or guest) left a room here, until the room is delivered
    /// here up to the leave.
    departed: Vec<Departed>,
    /// Room memberships this batch began here, not committed yet: a read of PostgreSQL in
    /// the batch does not show them (hub/cluster_moderation.rs).
    pub(super) joined_now: Vec<(ConvId, UserId)>,
    /// Room memberships this batch ended here (a leave, a kick, a ban, a deletion), not
    /// committed yet: a read of PostgreSQL in the batch still shows them.
    pub(super) left_now: Vec<(ConvId, UserId)>,
    /// Rooms whose rules (marks, settings) this batch changed here, not committed yet: a
    /// read of moderation in the batch keeps them as they are (hub/cluster_moderation.rs).
    pub(super) ruled_now: Vec<ConvId>,
}

impl State {
    /// Whether messages wait for joins' answers in this batch.
    pub(super) fn holding(&self) -> bool {
        !self.waiting.is_empty()
    }

    pub fn new(link: Link) -> Box<State> {
        Box::new(State {
            link,
            followed: Map::default(),
            claims: Map::default(),
            held: Map::default(),
            releasing: Vec::new(),
            events: Vec::new(),
            relays: Vec::new(),
            waiting: Vec::new(),
            budget: FILL_BUDGET,
            more: Vec::new(),
            read: 0,
            most: 0,
            moderation_seen: 0,
            heard: super::cluster_moderation::Heard::new(),
            guest_starts: Map::default(),
            departed: Vec::new(),
            joined_now: Vec::new(),
            left_now: Vec::new(),
            ruled_now: Vec::new(),
        })
    }
}

/// A followed conversation.
struct Followed {
    /// The last sequence dispatched here.
    last: Seq,
    /// The latest start of a membership of a user online here (a room's sequence at their
    /// join): a message up to it may be one that member must not get (see `relay_room`).
    joins: Seq,
    to: Dest,
}

/// Who a conversation's messages go to.
#[derive(Clone)]
enum Dest {
    Direct(UserId, UserId),
    Room(Arc<str>),
    Everyone,
}

struct Relay {
    delivery: Arc<Delivery>,
    audience: Audience,
    from: (DeviceId, u64),
}

/// The sessions of a member (or guest) that left room `conv` here: what other nodes
/// committed to it after `start` and up to the leave (`upto`) still reaches them, however
/// late it is relayed here, as on one node a member gets a room's messages up to its leave.
struct Departed {
    conv: ConvId,
    start: Seq,
    upto: Seq,
    sessions: Vec<(Arc<OutLink>, Option<DeviceId>)>,
    /// Left in the batch being committed: where its own messages fall may raise `upto`.
    fresh: bool,
}

/// A room message to one session, waiting for the answer at `after` among the batch's
/// effects.
struct Held {
    after: usize,
    link: Arc<OutLink>,
    delivery: Arc<Delivery>,
}

impl Dest {
    fn audience(&self) -> Audience {
        match self {
            Dest::Direct(a, b) => Audience::Direct(*a, *b),
            Dest::Room(name) => Audience::Room(name.clone()),
            Dest::Everyone => Audience::Everyone,
        }
    }
}

impl Core {
    pub(super) fn state(&mut self) -> &mut State {
        self.cluster.as_mut().expect("cluster mode")
    }

    pub(super) fn pg(&mut self) -> &mut PgStore {
        self.store
            .cluster()
            .expect("cluster mode runs on PostgreSQL")
    }

    /// `user`'s name, read from PostgreSQL if this node has not met them yet.
    pub(super) fn name_of(&mut self, user: UserId) -> Option<Arc<str>> {
        if let Some(name) = self.users.get(&user) {
            return Some(name.clone());
        }
        let (name, account) = match self.pg().user_by_id(user) {
            Ok(found) => found?,
            Err(e) => {
                warn!(error = %format!("{e:#}"), user, "reading a user");
                return None;
            }
        };
        Some(self.learn_user(user, &name, account))
    }

    /// Caches a user met elsewhere.
    pub(super) fn learn_user(&mut self, user: UserId, name: &str, account: bool) -> Arc<str> {
        let name: Arc<str> = Arc::from(name);
        self.users.insert(user, name.clone());
        if self.deleted_names.contains(&name) {
            // Deleted by an operator: shown as a sender still, reached by name no more.
            return name;
        }
        self.names.insert(NameKey(name.clone()), user);
        if account {
            self.accounts.insert(user);
        }
        name
    }

    /// The user named `name`: from the cache, else (in a cluster) from PostgreSQL, where
    /// another node may have created it.
    pub(super) fn find_name(&mut self, name: &[u8]) -> Option<(Arc<str>, UserId)> {
        if let Some((key, &user)) = self.names.get_key_value(name) {
            return Some((key.0.clone(), user));
        }
        self.cluster.as_ref()?;
        let name = std::str::from_utf8(name).ok()?;
        if self.deleted_names.contains(name) {
            // Deleted by an operator: nothing reaches it by name (hub/admin.rs).
            return None;
        }
        match self.pg().find_user(name) {
            Ok(Some((user, name, account))) => Some((self.learn_user(user, &name, account), user)),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading a user");
                None
            }
        }
    }

    /// A user created at once in PostgreSQL (another node may create it too).
    pub(super) fn cluster_user(&mut self, name: &str) -> Result<UserId, ErrorKind> {
        let (user, account) = self.pg().ensure_user(name).map_err(internal)?;
        self.learn_user(user, name, account);
        Ok(user)
    }

    pub(super) fn cluster_device(
        &mut self,
        user: UserId,
        name: &str,
    ) -> Result<DeviceId, ErrorKind> {
        self.pg().ensure_device(user, name).map_err(internal)
    }

    /// Registers `name` in PostgreSQL (see `PgStore::register`).
    pub(super) fn cluster_register(&mut self, name: &str, hash: &str) -> Result<(), ErrorKind> {
        let user = self
            .pg()
            .register(name, hash)
            .map_err(internal)?
            .ok_or(ErrorKind::AlreadyLoggedIn)?;
        self.learn_user(user, name, true);
        self.state().events.push(Event::Account {
            user,
            name: name.to_string(),
        });
        Ok(())
    }

    /// The direct conversation of `members`, created in PostgreSQL if new, and followed
    /// (it is a local sender's).
    pub(super) fn cluster_direct(&mut self, members: (UserId, UserId)) -> anyhow::Result<ConvId> {
        let (conv, _) = self.pg().ensure_direct(members.0, members.1)?;
        for user in [members.0, members.1] {
            if self.memberships.contains_key(&user) {
                self.add_membership(user, conv, 0)?;
            }
        }
        if !self.state().followed.contains_key(&conv) && self.live_here(members) {
            // New to this node while a member's session here is live: it has seen none of
            // it (a conversation a session read before it went live is followed since
            // its go-live), so from the start, read back a bounded part per batch. With
            // no live session here it is followed from this node's own message on (the
            // commit does that), and a catching-up session's go-live reads where it
            // stands.
            self.follow(conv, Dest::Direct(members.0, members.1), 0);
        }
        Ok(conv)
    }

    /// Member `user` leaves room `conv` in this batch (not committed yet): a read of
    /// PostgreSQL in the batch must not bring them back (`cluster_room`).
    pub(super) fn cluster_left(&mut self, conv: ConvId, user: UserId) {
        if let Some(state) = self.cluster.as_mut() {
            state.joined_now.retain(|j| *j != (conv, user));
            state.left_now.push((conv, user));
        }
    }

    /// Guest session `link` joined room `conv` here at sequence `at` (`Some`), or left it
    /// (`None`). Returns the start it had.
    pub(super) fn cluster_guest(
        &mut self,
        conv: ConvId,
        link: u64,
        at: Option<Seq>,
    ) -> Option<Seq> {
        let state = self.cluster.as_mut()?;
        match at {
            Some(at) => state.guest_starts.insert((conv, link), at),
            None => state.guest_starts.remove(&(conv, link)),
        }
    }

    /// `who` left room `conv` here in this batch, a member since `start`, with the room
    /// at `upto` in PostgreSQL: see `Departed`.
    pub(super) fn cluster_departed(&mut self, conv: ConvId, who: Joiner, start: Seq, upto: Seq) {
        let sessions: Vec<(Arc<OutLink>, Option<DeviceId>)> = match who {
            Joiner::Member(user) => (self.online.get(&user).into_iter().flatten())
                .filter(|o| o.live && o.push)
                .map(|o| (o.link.clone(), Some(o.device)))
                .collect(),
            Joiner::Guest(link) => self
                .guests
                .get(&link)
                .map(|g| (g.clone(), None))
                .into_iter()
                .collect(),
        };
        if sessions.is_empty() {
            return;
        }
        self.state().departed.push(Departed {
            conv,
            start,
            upto,
            sessions,
            fresh: true,
        });
    }

    /// Whether either of `members` has a live session here.
    fn live_here(&self, members: (UserId, UserId)) -> bool {
        [members.0, members.1].iter().any(|u| {
            self.online
                .get(u)
                .is_some_and(|sessions| sessions.iter().any(|o| o.live))
        })
    }

    /// Makes sure the cache knows room `name` as PostgreSQL does (created by `creator` if
    /// new); true if it was created now.
    pub(super) fn cluster_room(
        &mut self,
        name: &str,
        creator: Option<UserId>,
        create: bool,
    ) -> Result<bool, ErrorKind> {
        let (room, created) = if create {
            self.pg().ensure_room(name, creator).map_err(internal)?
        } else {
            match self.pg().find_room(name).map_err(internal)? {
                Some(room) => (room, false),
                None => return Err(ErrorKind::RoomNotFound),
            }
        };
        let members = room
            .members
            .iter()
            .map(|(id, member)| {
                if !self.users.contains_key(id) {
                    self.learn_user(*id, member, false);
                }
                *id
            })
            .collect();
        let shared: Arc<str> = Arc::from(name);
        let entry = self
            .rooms
            .entry(shared.clone())
            .or_insert_with(|| super::core::Room {
                conv: room.conv,
                name: shared,
                members: Default::default(),
                guests: Vec::new(),
                rules: Default::default(),
            });
        entry.members = members;
        // PostgreSQL does not show this batch's own joins and leaves yet: they stay as the
        // batch made them (else a member joined now would get none of the room's live
        // messages here, and a member gone now would get them again).
        let conv = entry.conv;
        let state = self.cluster.as_ref().expect("cluster mode");
        for (c, user) in &state.joined_now {
            if *c == conv {
                entry.members.insert(*user);
            }
        }
        for (c, user) in &state.left_now {
            if *c == conv {
                entry.members.remove(user);
            }
        }
        // Its owner and rules too (hub/cluster_moderation.rs).
        self.cluster_rules(name, room.conv);
        Ok(created)
    }

    /// A login in cluster mode, before the session is admitted: the user's memberships and
    /// rooms as PostgreSQL has them now (other nodes may have changed them).
    pub(super) fn cluster_refresh(&mut self, user: UserId) {
        // Read again at once (the go-live would read them anyway): the user's sessions
        // live here already need their memberships' starts (`relay_room`).
        self.memberships.remove(&user);
        if let Err(e) = self.memberships_of(user) {
            warn!(error = %format!("{e:#}"), "reading a user's memberships");
        }
        let rooms = match self.pg().rooms_of(user) {
            Ok(rooms) => rooms,
            Err(e) => return warn!(error = %format!("{e:#}"), "reading a user's rooms"),
        };
        for (_, _, name) in rooms {
            let known = self
                .rooms
                .get(name.as_str())
                .is_some_and(|r| r.members.contains(&user));
            if !known {
                if let Err(kind) = self.cluster_room(&name, None, false) {
                    debug!(?kind, room = %name, "refreshing a room");
                }
            }
        }
    }

    /// Claims the admitted login's row in the online table: refused if the name (or the
    /// device) is online on another node.
    pub(super) fn cluster_claim(
        &mut self,
        link_id: u64,
        identity: Identity,
        auth: Auth,
    ) -> Result<(), ErrorKind> {
        let (device, name_rule) = match auth {
            Auth::None => (0, true),
            _ => (identity.device, false),
        };
        match self.pg().claim_online(identity.user, device, name_rule) {
            Ok(OnlineClaim::Taken) => {
                let state = self.state();
                state.claims.insert(link_id, (identity.user, device));
                *state.held.entry((identity.user, device)).or_default() += 1;
                state.link.interest.user_online(identity.user, true);
                Ok(())
            }
            Ok(OnlineClaim::Busy) => Err(ErrorKind::AlreadyLoggedIn),
            Err(e) => Err(internal(e)),
        }
    }

    /// A session ended: its row goes once the batch is done; if it was the user's last
    /// here, the bus stops passing their new conversations.
    pub(super) fn cluster_gone(&mut self, link_id: u64, user: UserId) {
        let online_here = self.online.contains_key(&user);
        let state = self.state();
        if let Some(claim) = state.claims.remove(&link_id) {
            let held = state.held.entry(claim).or_default();
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.held.remove(&claim);
                state.releasing.push(claim);
            }
        }
        if !online_here {
            state.link.interest.user_online(user, false);
        }
    }

    /// A membership begins or ends here: other nodes update their rooms and tell their
    /// sessions.
    pub(super) fn cluster_room_event(
        &mut self,
        conv: ConvId,
        room: &str,
        user: UserId,
        joined: bool,
        seq: Seq,
    ) {
        let name = self
            .users
            .get(&user)
            .map_or(ANONYMOUS.into(), |n| n.to_string());
        // A member's join starts where its membership does (read after `seq`, it may be
        // later): every node filters by that.
        let seq = match self.memberships.get(&user) {
            Some(list) if joined => list
                .iter()
                .find(|m| m.conv == conv)
                .map_or(seq, |m| m.joined_seq.max(seq)),
            _ => seq,
        };
        if joined {
            self.follow_room(conv, room, seq);
            self.joined_here(conv, seq);
            if user != self.anonymous {
                let state = self.state();
                state.left_now.retain(|l| *l != (conv, user));
                state.joined_now.push((conv, user));
            }
        }
        self.state().events.push(Event::Room {
            conv,
            room: room.to_string(),
            user,
            name,
            joined,
            seq,
        });
    }

    /// A contact changed here: the other side may be online on another node.
    pub(super) fn cluster_contact(&mut self, from: UserId, to: UserId, change: ContactChange) {
        let from_name = self
            .users
            .get(&from)
            .map_or(String::new(), |n| n.to_string());
        self.state().events.push(Event::Contact {
            from,
            from_name,
            to,
            change: change.event().to_string(),
        });
    }

    /// A new password here: the user's sessions on other nodes but `keep`'s end too.
    pub(super) fn cluster_signed_out(&mut self, user: UserId, keep: DeviceId) {
        self.state().events.push(Event::SignedOut { user, keep });
    }

    /// Starts delivering room `conv` here from `from` on, if it is not yet.
    fn follow_room(&mut self, conv: ConvId, room: &str, from: Seq) {
        if !self.state().followed.contains_key(&conv) {
            self.follow(conv, Dest::Room(Arc::from(room)), from);
        }
    }

    fn follow(&mut self, conv: ConvId, to: Dest, last: Seq) {
        let state = self.state();
        state.link.interest.follow(conv);
        state.followed.insert(conv, Followed { last, joins: 0, to });
    }

    /// Where `conv` stands for a join made now: its last sequence in PostgreSQL (read
    /// now, and followed from there if it is not followed yet). Not the last one
    /// dispatched here: a message another node committed before the join may not have
    /// reached this node yet, and it comes before the membership's start as it would on
    /// one node. Joins are rare: one round trip each.
    pub(super) fn cluster_last_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        if let Some(last) = self.state().followed.get(&conv).map(|f| f.last) {
            use crate::store::LogStore;
            return Ok(self.pg().last_seq(conv)?.max(last));
        }
        self.follow_from_store(&[conv])?;
        Ok(self.state().followed.get(&conv).map_or(0, |f| f.last))
    }

    /// A membership of a user online here starts at `joined` in `conv`: what is relayed
    /// here up to there does not reach them.
    fn joined_here(&mut self, conv: ConvId, joined: Seq) {
        if let Some(f) = self.state().followed.get_mut(&conv) {
            f.joins = f.joins.max(joined);
        }
    }

    /// Follows each of `convs` not followed yet from its last sequence in PostgreSQL, read
    /// after the bus was told to pass them (so nothing committed after the read is missed).
    fn follow_from_store(&mut self, convs: &[ConvId]) -> anyhow::Result<()> {
        let state = self.state();
        let new: Vec<ConvId> = convs
            .iter()
            .copied()
            .filter(|c| !state.followed.contains_key(c))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        for &conv in &new {
            state.link.interest.follow(conv);
        }
        for row in self.pg().conversations(&new)? {
            let to = match row.kind {
                ConversationKind::Direct => Dest::Direct(row.a, row.b),
                ConversationKind::Room => Dest::Room(Arc::from(row.name.as_str())),
                ConversationKind::Broadcast => Dest::Everyone,
            };
            let state = self.state();
            state.followed.entry(row.id).or_insert(Followed {
                last: row.last_seq,
                joins: 0,
                to,
            });
        }
        Ok(())
    }

    /// Follows the broadcast conversation from where it stands (at start).
    pub(super) fn cluster_start(&mut self, broadcast: ConvId) -> anyhow::Result<()> {
        self.moderation_start()?;
        self.follow_from_store(&[broadcast])
    }

    /// A catching-up session asks to go live (see `Core::go_live`): every conversation of
    /// the user is followed, and it goes live if it read exactly what was dispatched here.
    /// If it read further (from PostgreSQL) than this node dispatched, the rest is read
    /// and delivered to the sessions already live, and this one asks again: made live now,
    /// it would get those messages twice.
    pub(super) fn cluster_go_live(
        &mut self,
        user: UserId,
        progress: &HashMap<ConvId, Seq>,
    ) -> Result<bool, ErrorKind> {
        let mut list: Vec<Membership> = self.memberships_of(user).map_err(internal)?.clone();
        // And what the session read of conversations the cached memberships lack (begun
        // on another node since they were read): followed from here on too, so a session
        // live here has seen nothing of a conversation this node does not follow.
        let listed: std::collections::HashSet<ConvId> = list.iter().map(|m| m.conv).collect();
        for (&conv, &seq) in progress {
            if seq > 0 && !listed.contains(&conv) {
                list.push(Membership {
                    conv,
                    joined_seq: 0,
                });
            }
        }
        let convs: Vec<ConvId> = list.iter().map(|m| m.conv).collect();
        self.follow_from_store(&convs).map_err(internal)?;
        let mut behind = false;
        for m in list {
            self.joined_here(m.conv, m.joined_seq);
            let have = progress
                .get(&m.conv)
                .copied()
                .unwrap_or(0)
                .max(m.joined_seq);
            let Some(last) = self.state().followed.get(&m.conv).map(|f| f.last) else {
                continue;
            };
            if have > last {
                // Filled in part or whole, this session asks again.
                self.fill(m.conv, have).map_err(internal)?;
                behind = true;
            }
            behind |= last > have;
        }
        if !behind {
            // What this batch gathered for the sessions already live goes to them now,
            // before this one is live: its catch-up read those messages already. Queued
            // at once: the staging remembers which sessions a conversation reached, and
            // later deliveries of this batch must reach this session too.
            let mut out = std::mem::take(&mut self.staging);
            self.cluster_relay(&mut out);
            out.flush();
            self.staging = out;
        }
        Ok(!behind)
    }

    /// Delivers `conv`'s messages after what was dispatched here up to `upto`, read from
    /// PostgreSQL: true once done, false if this batch's budget ran out first (the rest
    /// comes with a reconciliation asked for at the batch's end).
    fn fill(&mut self, conv: ConvId, upto: Seq) -> anyhow::Result<bool> {
        loop {
            let Some(f) = self.state().followed.get(&conv) else {
                return Ok(true);
            };
            let (last, to) = (f.last, f.to.clone());
            if last >= upto {
                return Ok(true);
            }
            let state = self.state();
            if state.budget <= 0 {
                if !state.more.contains(&conv) {
                    state.more.push(conv);
                }
                debug!(conv, last, upto, "fill: the rest in a later batch");
                return Ok(false);
            }
            let limit = state.budget.min(FILL_PAGE);
            debug!(conv, last, upto, limit, "fill");
            let page = self.pg().messages_after(conv, last, upto, limit)?;
            self.read_back(page.len());
            if page.is_empty() {
                anyhow::bail!("conversation {conv} has no message after {last} up to {upto}");
            }
            let kind = match &to {
                Dest::Direct(..) => ConversationKind::Direct,
                Dest::Room(_) => ConversationKind::Room,
                Dest::Everyone => ConversationKind::Broadcast,
            };
            for m in page {
                if m.seq != self.state().followed[&conv].last + 1 {
                    anyhow::bail!("conversation {conv} lacks sequence {}", m.seq - 1);
                }
                let from: Arc<str> = Arc::from(m.sender_name.as_str());
                let target = match &to {
                    Dest::Direct(a, b) => {
                        let other = if m.sender == *a { *b } else { *a };
                        self.name_of(other).unwrap_or_else(|| Arc::from(""))
                    }
                    Dest::Room(name) => name.clone(),
                    Dest::Everyone => Arc::from("*"),
                };
                let delivery = Delivery::new(
                    m.id,
                    conv,
                    m.seq,
                    kind,
                    from,
                    target,
                    m.body.into(),
                    m.sent_at,
                );
                let delivery = self.cluster_tombstone(delivery, m.tombstone);
                let state = self.state();
                state.relays.push(Relay {
                    delivery: Arc::new(delivery),
                    audience: to.audience(),
                    from: (m.sender_device, 0),
                });
                state.followed.get_mut(&conv).expect("followed").last = m.seq;
            }
        }
    }

    /// Counts `n` messages read back from PostgreSQL in this batch.
    fn read_back(&mut self, n: usize) {
        self.monitor.metrics.cluster_gap_read.increment(n as u64);
        let state = self.state();
        state.budget -= n.max(1) as i64;
        state.read += n as u64;
    }

    /// What the cluster's tasks hand the hub.
    pub(super) fn cluster_incoming(&mut self, incoming: Incoming, effects: &mut Vec<Effect>) {
        match incoming {
            Incoming::Messages(batch) => {
                for m in batch {
                    self.remote(m);
                }
            }
            Incoming::Event(event) => self.event(event, effects),
            Incoming::Reconcile(last) => {
                for (conv, seq) in last {
                    let behind = self
                        .state()
                        .followed
                        .get(&conv)
                        .is_some_and(|f| f.last < seq);
                    if behind {
                        debug!(conv, seq, "reconciling: reading what NATS did not bring");
                        if let Err(e) = self.fill(conv, seq) {
                            warn!(error = %format!("{e:#}"), conv, "filling a gap");
                        }
                    }
                }
            }
            Incoming::Discovered(found) => {
                for d in found {
                    let followed = self.state().followed.contains_key(&d.conv);
                    if followed || self.adopt_direct(d.conv, d.a, d.b) {
                        debug!(conv = d.conv, seq = d.last_seq, "discovered: reading it");
                        if let Err(e) = self.fill(d.conv, d.last_seq) {
                            warn!(error = %format!("{e:#}"), conv = d.conv, "filling a gap");
                        }
                    }
                }
            }
            Incoming::Memberships(found) => {
                for m in found {
                    self.membership_found(m, effects);
                }
            }
            Incoming::Collect => self.collect(),
            Incoming::Moderation(version) => self.moderation_version(version, effects),
        }
    }

    /// A room membership of a user online here, as PostgreSQL has it: if this node does
    /// not know of it (the join was made on another node while NATS was away), it is
    /// taken as that join's event would have been, and what the room said since is read.
    fn membership_found(&mut self, m: RoomMembership, effects: &mut Vec<Effect>) {
        if !self.online.contains_key(&m.user) {
            return;
        }
        let member = self
            .rooms
            .get(m.room.as_str())
            .is_some_and(|r| r.members.contains(&m.user));
        let listed = self
            .memberships
            .get(&m.user)
            .is_none_or(|list| list.iter().any(|l| l.conv == m.conv));
        let followed = self.state().followed.contains_key(&m.conv);
        if member && listed && followed {
            return;
        }
        let Some(name) = self.name_of(m.user) else {
            return;
        };
        debug!(
            conv = m.conv,
            user = m.user,
            "discovered: a room joined elsewhere"
        );
        let event = Event::Room {
            conv: m.conv,
            room: m.room,
            user: m.user,
            name: name.to_string(),
            joined: true,
            seq: m.joined_seq,
        };
        self.event(event, effects);
        if let Err(e) = self.fill(m.conv, m.last_seq) {
            warn!(error = %format!("{e:#}"), conv = m.conv, "filling a gap");
        }
    }

    /// A direct conversation this node does not follow, new to a user live here (it began
    /// after their go-live): followed from its start. False if no user of it is live here.
    fn adopt_direct(&mut self, conv: ConvId, a: UserId, b: UserId) -> bool {
        if !self.live_here((a, b)) {
            return false;
        }
        for user in [a, b] {
            if self.memberships.contains_key(&user) {
                let _ = self.add_membership(user, conv, 0);
            }
        }
        self.follow(conv, Dest::Direct(a, b), 0);
        true
    }

    /// A message another node committed.
    fn remote(&mut self, m: Wired) {
        let Wired {
            head: m,
            from,
            to,
            body,
        } = m;
        let followed = self.state().followed.get(&m.conv).map(|f| f.last);
        let last = match followed {
            Some(last) => last,
            // Anything but a direct conversation new to a live user here waits for a
            // go-live or a membership event to be followed.
            None if m.kind == ConversationKind::Direct && self.adopt_direct(m.conv, m.a, m.b) => 0,
            None => return,
        };
        if m.seq <= last {
            return;
        }
        if m.seq > last + 1 {
            // Not delivered out of order: the rest of the gap is read with it later.
            match self.fill(m.conv, m.seq - 1) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return warn!(error = %format!("{e:#}"), conv = m.conv, "filling a gap"),
            }
        }
        let audience = match m.kind {
            ConversationKind::Direct => Audience::Direct(m.a, m.b),
            ConversationKind::Room => Audience::Room(to.clone()),
            ConversationKind::Broadcast => Audience::Everyone,
        };
        let tombstone = m.tombstone;
        let delivery = Delivery::new(m.id, m.conv, m.seq, m.kind, from, to, body, m.sent_at);
        let delivery = self.cluster_tombstone(delivery, tombstone);
        let state = self.state();
        state.relays.push(Relay {
            delivery: Arc::new(delivery),
            audience,
            from: (m.sender_device, 0),
        });
        if let Some(f) = state.followed.get_mut(&m.conv) {
            f.last = m.seq;
        }
    }

    fn event(&mut self, event: Event, effects: &mut Vec<Effect>) {
        let notify = |effects: &mut Vec<Effect>, notice: Notice, audience: Audience| {
            effects.push(Effect::Notify {
                notice: Arc::new(SharedNotice::new(notice)),
                audience,
                except: 0,
            })
        };
        match event {
            Event::Offline { user, name } => {
                if !self.online.contains_key(&user) {
                    let name = self.learn_user(user, &name, self.accounts.contains(&user));
                    notify(effects, Notice::Disconnected { name }, Audience::Everyone);
                }
            }
            Event::Room {
                conv,
                room,
                user,
                name,
                joined,
                seq,
            } => {
                let room_name: Arc<str> = Arc::from(room.as_str());
                let who: Arc<str> = if user == self.anonymous {
                    Arc::from(ANONYMOUS)
                } else {
                    self.learn_user(user, &name, self.accounts.contains(&user))
                };
                let known = self.rooms.contains_key(room.as_str());
                if !known {
                    if let Err(kind) = self.cluster_room(&room, None, false) {
                        return debug!(?kind, %room, "a room event for an unknown room");
                    }
                }
                if user != self.anonymous {
                    if let Some(entry) = self.rooms.get_mut(room.as_str()) {
                        if joined {
                            entry.members.insert(user);
                        } else {
                            entry.members.remove(&user);
                        }
                    }
                    if self.online.contains_key(&user) {
                        self.member_here(user, conv, &room, joined, seq);
                    }
                }
                let notice = if joined {
                    Notice::Joined {
                        room: room_name.clone(),
                        name: who,
                    }
                } else {
                    Notice::Left {
                        room: room_name.clone(),
                        name: who,
                    }
                };
                notify(effects, notice, Audience::Room(room_name));
            }
            Event::Contact {
                from,
                from_name,
                to,
                change,
            } => {
                self.contacts.remove(&from);
                self.contacts.remove(&to);
                let change = match change.as_str() {
                    "contact_requested" => ContactChange::Requested,
                    "contact_accepted" => ContactChange::Accepted,
                    "contact_declined" => ContactChange::Declined,
                    _ => ContactChange::Removed,
                };
                if self.online.contains_key(&to) {
                    let name = self.learn_user(from, &from_name, self.accounts.contains(&from));
                    notify(
                        effects,
                        Notice::Contact { name, change },
                        Audience::User(to),
                    );
                }
            }
            Event::Account { user, name } => {
                self.learn_user(user, &name, true);
            }
            Event::SignedOut { user, keep } => {
                self.accounts.insert(user);
                let online = self.online.get(&user).into_iter().flatten();
                for o in online.filter(|o| o.device != keep) {
                    o.link.kill(Kill::SignedOut);
                }
            }
            Event::Login { .. } => {}
            Event::Moderation { .. } | Event::Block { .. } | Event::UserState { .. } => {
                self.moderation_event(event, effects)
            }
        }
    }

    /// `user`, online here, joined or left room `conv` on another node.
    fn member_here(&mut self, user: UserId, conv: ConvId, room: &str, joined: bool, seq: Seq) {
        if !joined {
            if let Some(list) = self.memberships.get_mut(&user) {
                list.retain(|m| m.conv != conv);
            }
            return;
        }
        if self.add_membership(user, conv, seq).is_err() {
            return;
        }
        let followed = self.state().followed.get(&conv).map(|f| f.last);
        self.joined_here(conv, seq);
        match followed {
            None => self.follow(conv, Dest::Room(Arc::from(room)), seq),
            // The room was delivered here past the join: this user's live sessions get
            // what they missed of it, if that is a bounded read. Not what this batch
            // relays of it (still to be performed, it reaches them as members now): the
            // read ends before it, and is delivered before it.
            Some(last) if last > seq => {
                let relays = &self.state().relays;
                let pending = relays.iter().position(|r| {
                    r.delivery.conv == conv && matches!(r.audience, Audience::Room(_))
                });
                let (upto, at) = match pending {
                    Some(i) => (relays[i].delivery.seq - 1, i),
                    None => (last, relays.len()),
                };
                if upto <= seq {
                    return;
                }
                let n = upto - seq;
                let read = match n <= FILL_BUDGET {
                    true => self.pg().messages_after(conv, seq, upto, n),
                    false => Err(anyhow::anyhow!("{n} messages since the join")),
                };
                let page = match read {
                    Ok(page) if page.len() as i64 == n => page,
                    Ok(page) => {
                        let why = anyhow::anyhow!("{} of {n} messages read", page.len());
                        return self.behind_in_room(user, conv, why);
                    }
                    Err(e) => return self.behind_in_room(user, conv, e),
                };
                self.read_back(page.len());
                let mut read = Vec::with_capacity(page.len());
                for m in page {
                    let delivery = Delivery::new(
                        m.id,
                        conv,
                        m.seq,
                        ConversationKind::Room,
                        Arc::from(m.sender_name.as_str()),
                        Arc::from(room),
                        m.body.into(),
                        m.sent_at,
                    );
                    let delivery = self.cluster_tombstone(delivery, m.tombstone);
                    read.push(Relay {
                        delivery: Arc::new(delivery),
                        // Every session of this one user, as a message to oneself.
                        audience: Audience::Direct(user, user),
                        from: (m.sender_device, 0),
                    });
                }
                self.state().relays.splice(at..at, read);
            }
            Some(_) => {}
        }
    }

    /// `user`'s live sessions here cannot be given what room `conv` said since their join
    /// (too much to read in the hub, or PostgreSQL failed): they end, rather than go on
    /// without it, and their next login's catch-up reads it (the membership starts at the
    /// join, so no cursor is past it).
    fn behind_in_room(&mut self, user: UserId, conv: ConvId, why: anyhow::Error) {
        warn!(error = %format!("{why:#}"), user, conv, "a member's sessions end to catch up");
        let sessions = self.online.get(&user).into_iter().flatten();
        for o in sessions.filter(|o| o.live) {
            o.link.kill(Kill::CatchupFailed);
        }
    }

    /// Stops following conversations nobody here needs (none of their users online here).
    fn collect(&mut self) {
        let online = &self.online;
        let rooms = &self.rooms;
        let state = self.cluster.as_mut().expect("cluster mode");
        state.followed.retain(|_, f| match &f.to {
            Dest::Direct(a, b) => online.contains_key(a) || online.contains_key(b),
            Dest::Room(name) => rooms.get(name).is_some_and(|r| {
                !r.guests.is_empty() || r.members.iter().any(|u| online.contains_key(u))
            }),
            Dest::Everyone => true,
        });
        let followed = &state.followed;
        state.link.interest.retain(|c| followed.contains_key(&c));
    }

    /// After the commit: each message takes the id and sequence PostgreSQL gave it, what
    /// other nodes committed before it in its conversation is delivered first, and the
    /// batch is published.
    pub(super) fn cluster_committed(
        &mut self,
        batch: &Batch,
        assigned: &[(i64, Seq)],
        effects: &mut [Effect],
    ) {
        let Some(first) = batch.messages.first().map(|m| m.id) else {
            return;
        };
        let mut wired = wire::Encoder::with_capacity(assigned.len());
        for effect in effects.iter_mut() {
            // A WebSocket sender is told where its message was stored: PostgreSQL's place.
            if let Effect::Reply {
                item: Item::Reply(Tag::Stored(tag), _),
                ..
            } = effect
            {
                let stored = &mut tag.stored;
                let at = assigned.get((stored[0] - first) as usize);
                if let Some(&(id, seq)) = at.filter(|a| **a != crate::store::NOT_STORED) {
                    stored[0] = id;
                    stored[2] = seq;
                }
                continue;
            }
            let Effect::Deliver {
                delivery,
                audience,
                from,
            } = effect
            else {
                continue;
            };
            let Some(&(id, seq)) = assigned.get((delivery.id - first) as usize) else {
                continue;
            };
            if (id, seq) == crate::store::NOT_STORED {
                // A tombstone of a message another node deleted first: nothing to say.
                *effect = Effect::Answer(Box::new(|_| {}));
                continue;
            }
            let Some(d) = Arc::get_mut(delivery) else {
                continue;
            };
            d.id = id;
            d.seq = seq;
            let conv = d.conv;
            let last = self.state().followed.get(&conv).map(|f| f.last);
            // Whether this message waits to be delivered here: what came before it could
            // not be read (PostgreSQL went away after the commit). Reconciliation reads it
            // with them, in order; the sender's OK and the other nodes are not held up.
            let mut wait = false;
            match last {
                Some(last) if seq > last + 1 => match self.fill(conv, seq - 1) {
                    Ok(true) => {}
                    Ok(false) => wait = true,
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), conv, "filling a gap before our own");
                        wait = true;
                    }
                },
                Some(_) => {}
                None => {
                    let to = match audience {
                        Audience::Direct(a, b) => Dest::Direct(*a, *b),
                        Audience::Room(name) => Dest::Room(name.clone()),
                        _ => Dest::Everyone,
                    };
                    self.follow(conv, to, seq - 1);
                }
            }
            if let Some(f) = self.state().followed.get_mut(&conv) {
                if !wait {
                    f.last = f.last.max(seq);
                }
            }
            let (a, b) = match audience {
                Audience::Direct(a, b) => (*a, *b),
                _ => (0, 0),
            };
            let head = wire::Head {
                id,
                conv,
                seq,
                kind: d.kind,
                sender_device: from.0,
                a,
                b,
                sent_at: d.sent_at,
                tombstone: match d.deletes {
                    Some((id, seq)) => Tombstone::Of(id, seq),
                    None => Tombstone::No,
                },
            };
            wired.push(head, &d.from, &d.to, &d.body);
            if wait {
                *effect = Effect::Answer(Box::new(|_| {}));
            }
        }
        // A leave in this batch is committed after what other nodes committed before
        // this batch's own messages: those (read back before them) were the leaver's.
        let state = self.cluster.as_mut().expect("cluster mode");
        if state.departed.iter().any(|p| p.fresh) {
            for effect in effects.iter() {
                let Effect::Deliver { delivery: d, .. } = effect else {
                    continue;
                };
                for dep in state
                    .departed
                    .iter_mut()
                    .filter(|p| p.fresh && p.conv == d.conv)
                {
                    dep.upto = dep.upto.max(d.seq - 1);
                }
            }
        }
        if !wired.is_empty() {
            self.state().link.publish(wire::MESSAGES, wired.finish());
        }
    }

    /// Delivers what other nodes committed (and gaps read back), before the batch's own.
    pub(super) fn cluster_relay(&mut self, out: &mut Staging) {
        let relays = std::mem::take(&mut self.state().relays);
        if !self.state().departed.is_empty() {
            self.relay_to_departed(&relays, out);
        }
        for r in &relays {
            let d = &r.delivery;
            let late = self
                .cluster
                .as_ref()
                .and_then(|s| s.followed.get(&d.conv))
                .is_some_and(|f| d.seq <= f.joins);
            match &r.audience {
                Audience::Room(name) if late || !self.fresh_joins.is_empty() => {
                    self.relay_room(d, name, r.from, out)
                }
                audience => self.deliver(d, audience, r.from, out),
            }
        }
    }

    /// Queues the room messages among `relays` that the sessions of those who left the
    /// room here had not had yet (see `Departed`); forgets a leave once the room is
    /// delivered here up to it.
    fn relay_to_departed(&mut self, relays: &[Relay], out: &mut Staging) {
        let state = self.cluster.as_mut().expect("cluster mode");
        for r in relays
            .iter()
            .filter(|r| matches!(r.audience, Audience::Room(_)))
        {
            let d = &r.delivery;
            let left = state.departed.iter();
            for dep in left.filter(|p| p.conv == d.conv && p.start < d.seq && d.seq <= p.upto) {
                for (link, device) in &dep.sessions {
                    let sender = match device {
                        Some(device) => *device == r.from.0,
                        None => link.id == r.from.1,
                    };
                    if !sender {
                        out.push(link, Item::Deliver(d.clone()));
                    }
                }
            }
        }
        let followed = &state.followed;
        state
            .departed
            .retain(|p| p.fresh || followed.get(&p.conv).is_some_and(|f| f.last < p.upto));
    }

    /// Holds room message `delivery` for the sessions that joined its room in this batch
    /// before it and whose join's answer is not performed yet (all of them before the
    /// batch's effects: `before` None; else the effect at `before` is being performed),
    /// until that answer is: in a cluster a message committed after a join's start may be
    /// performed before the join's answer (a relay, or the batch's own message applied
    /// before the join). Returns the sessions (by id) it holds it for.
    pub(super) fn hold_for_joins(
        &mut self,
        delivery: &Arc<Delivery>,
        from: (DeviceId, u64),
        before: Option<usize>,
    ) -> Vec<u64> {
        let mut held = Vec::new();
        let Some(state) = self.cluster.as_mut() else {
            return held;
        };
        for join in &self.fresh_joins {
            let answered = before.is_some_and(|i| join.answer <= i);
            if join.conv != delivery.conv || join.seq >= delivery.seq || answered {
                continue;
            }
            let links: Vec<&Arc<OutLink>> = match join.who {
                Joiner::Guest(link) => (self.guests.get(&link).into_iter())
                    .filter(|g| g.id != from.1)
                    .collect(),
                Joiner::Member(user) => (self.online.get(&user).into_iter().flatten())
                    .filter(|o| o.live && o.push && o.device != from.0)
                    .map(|o| &o.link)
                    .collect(),
            };
            for link in links {
                held.push(link.id);
                state.waiting.push(Held {
                    after: join.answer,
                    link: link.clone(),
                    delivery: delivery.clone(),
                });
            }
        }
        held
    }

    /// Queues the messages held for the answer at `after` among the batch's effects (all of
    /// them once the effects are done: `None`).
    pub(super) fn cluster_release(&mut self, after: Option<usize>, out: &mut Staging) {
        let Some(state) = self.cluster.as_mut() else {
            return;
        };
        if state.waiting.is_empty() {
            return;
        }
        let due = |h: &Held| after.is_none_or(|i| h.after == i);
        if !state.waiting.iter().any(due) {
            return;
        }
        let held = std::mem::take(&mut state.waiting);
        let (now, later): (Vec<Held>, Vec<Held>) = held.into_iter().partition(due);
        state.waiting = later;
        for h in now {
            out.push(&h.link, Item::Deliver(h.delivery));
        }
    }

    /// Delivers a room's message that some members online here joined at or after: to
    /// the others only. On one node a member gets a room's messages from its join on
    /// (the hub orders both); here a message committed on another node before a join
    /// may arrive after it, over NATS or read back in a gap. A session that joined in
    /// this batch and gets it, gets it after its join's answer (`held`): relays are
    /// performed before the batch's effects.
    fn relay_room(
        &mut self,
        delivery: &Arc<Delivery>,
        name: &Arc<str>,
        from: (DeviceId, u64),
        out: &mut Staging,
    ) {
        let held = self.hold_for_joins(delivery, from, None);
        let Some(room) = self.rooms.get(name) else {
            return;
        };
        let conv = delivery.conv;
        let joined_after = |user: &UserId| {
            self.memberships
                .get(user)
                .and_then(|list| list.iter().find(|m| m.conv == conv))
                .is_some_and(|m| m.joined_seq >= delivery.seq)
        };
        let excluded: Vec<DeviceId> = room
            .members
            .iter()
            .filter(|u| joined_after(u))
            .flat_map(|u| self.online.get(u).into_iter().flatten())
            .map(|o| o.device)
            .collect();
        // As `Core::deliver` for a room, the excluded devices skipped too.
        let sessions = || {
            let members = room.members.iter().flat_map(|u| self.online.get(u));
            let live = members.flatten().filter(|o| o.live && o.push);
            let guests = room.guests.iter().map(|g| (g, None));
            live.map(|o| (&o.link, Some(o.device))).chain(guests)
        };
        let guest_starts = &self.cluster.as_ref().expect("cluster mode").guest_starts;
        let guest_late = |link: u64| {
            (guest_starts.get(&(conv, link))).is_some_and(|&start| start >= delivery.seq)
        };
        let skip = |device: Option<DeviceId>, link: u64| {
            held.contains(&link)
                || match device {
                    Some(device) => device == from.0 || excluded.contains(&device),
                    None => link == from.1 || guest_late(link),
                }
        };
        out.push_room(name, sessions, skip, delivery);
    }

    /// Once the batch is done: the ended sessions' rows go (and users online nowhere now
    /// are announced), the events are published, the guests counted.
    pub(super) fn cluster_after(&mut self, committed: bool, effects: &mut Vec<Effect>) {
        let guests = self.guests.len() as i64;
        let state = self.state();
        state.link.guests.store(guests, Ordering::Relaxed);
        state.budget = FILL_BUDGET;
        if state.read > state.most {
            state.most = state.read;
            let most = state.most as f64;
            self.monitor.metrics.cluster_gap_read_most.set(most);
        }
        let state = self.state();
        state.read = 0;
        let more = std::mem::take(&mut state.more);
        if !more.is_empty() {
            state.link.interest.more(more);
        }
        let events = std::mem::take(&mut state.events);
        if committed {
            for event in &events {
                state.link.event(event);
            }
        } else if !events.is_empty() {
            // What this batch changed in memory was not stored: moderation is read again
            // from PostgreSQL at the next reconciliation (hub/cluster_moderation.rs).
            state.moderation_seen = -1;
        }
        state.joined_now.clear();
        state.left_now.clear();
        state.ruled_now.clear();
        for dep in &mut state.departed {
            dep.fresh = false;
        }
        let releasing = std::mem::take(&mut state.releasing);
        if releasing.is_empty() {
            return;
        }
        let offline = match self.pg().release_online(&releasing) {
            Ok(offline) => offline,
            Err(e) => {
                // Their node's rows go with its lease at the latest.
                return warn!(error = %format!("{e:#}"), "taking sessions offline");
            }
        };
        for user in offline {
            if self.online.contains_key(&user) {
                continue;
            }
            let Some(name) = self.name_of(user) else {
                continue;
            };
            let event = Event::Offline {
                user,
                name: name.to_string(),
            };
            self.state().link.event(&event);
            self.event(event, effects);
        }
    }

    /// Who is online anywhere.
    pub(super) fn cluster_who(&mut self) -> Presence {
        let users = match self.pg().online_users() {
            Ok(users) => users,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading who is online");
                self.online.keys().copied().collect()
            }
        };
        let mut names: Vec<Arc<str>> = users.into_iter().filter_map(|u| self.name_of(u)).collect();
        names.sort();
        let remote = self.pg().remote_guests().unwrap_or(0).max(0) as usize;
        Presence {
            users: names,
            anonymous: self.guests.len() + remote,
        }
    }

    /// A page of the rooms (those after `after`, at most `limit`) with their members and
    /// those online anywhere (guests: this node's).
    pub(super) fn cluster_rooms(&mut self, after: &str, limit: usize) -> Vec<RoomInfo> {
        let list = match self.pg().room_page(after, limit) {
            Ok(list) => list,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the rooms");
                return self.room_page(after, limit);
            }
        };
        list.into_iter()
            .map(|(name, members, online)| {
                let guests = self.rooms.get(name.as_str()).map_or(0, |r| r.guests.len());
                RoomInfo {
                    name: Arc::from(name),
                    members: members as usize + guests,
                    online: online as usize + guests,
                }
            })
            .collect()
    }

    /// A room's members, each with whether they are online anywhere.
    pub(super) fn cluster_members(&mut self, room: &str) -> Result<super::MemberList, ErrorKind> {
        if !self.rooms.contains_key(room) {
            self.cluster_room(room, None, false)?;
        }
        let (conv, guests) = {
            let r = &self.rooms[room];
            (r.conv, r.guests.len())
        };
        let mut list: super::MemberList = self
            .pg()
            .room_members(conv)
            .map_err(internal)?
            .into_iter()
            .map(|(name, online)| (Arc::from(name), online))
            .collect();
        list.extend((0..guests).map(|_| (Arc::from(ANONYMOUS), true)));
        list.sort();
        Ok(list)
    }
}
