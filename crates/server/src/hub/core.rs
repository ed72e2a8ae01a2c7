//! The hub thread: apply a batch of operations, commit once, then answer and deliver.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parley_proto::{ConversationKind, ErrorKind, Reply, Target};
use tracing::{debug, error, info, warn};

use super::moderation::{Blocked, RoomRules};
use super::presence::Watches;
use super::{
    AccountChange, Actor, Auth, Done, GoLive, Hub, Identity, LoginOk, Map, NameKey, Op, Presence,
    Set, ANONYMOUS,
};
use crate::config::Config;
use crate::lookalikes::Lookalikes;
use crate::monitor::Monitor;
use crate::outbound::{
    Delivery, Item, Kill, Link, Notice, Protocol, SharedNotice, Staging, StoredTag, Style, Tag,
};
use crate::store::{
    now_ms, Batch, ContactState, ConvId, DeviceId, LogStore, Membership, NewMessage, NextIds,
    Revoke, Seq, UserId, UserState,
};

/// Starts the hub thread over `store`; in cluster mode `cluster` is its end of the
/// cluster (hub/cluster.rs).
pub fn spawn(
    mut store: Box<dyn LogStore>,
    config: &Config,
    cluster: Option<crate::cluster::Link>,
    monitor: Arc<Monitor>,
) -> anyhow::Result<(Hub, JoinHandle<()>)> {
    let (broadcast, anonymous) = store.ensure_builtin(ANONYMOUS)?;
    let mut core = Core {
        next: store.next_ids()?,
        store,
        grace: config.login_grace(),
        batch_max: config.batch_max,
        anonymous,
        broadcast,
        names: Map::default(),
        users: Map::default(),
        accounts: Set::default(),
        require_accounts: config.require_accounts,
        contacts: Map::default(),
        contacts_only_dms: config.contacts_only_dms,
        blocked: Blocked::default(),
        watches: Watches::default(),
        server_operators: config.operators.iter().cloned().collect(),
        devices: Map::default(),
        directs: Map::default(),
        last_seqs: Map::default(),
        memberships: Map::default(),
        rooms: Map::default(),
        room_order: Default::default(),
        online: Map::default(),
        listeners: Map::default(),
        guests: Map::default(),
        waiting: Vec::new(),
        user_lookalikes: Lookalikes::default(),
        room_lookalikes: Lookalikes::default(),
        spare_messages: Vec::new(),
        spare_effects: Vec::new(),
        fresh_joins: Vec::new(),
        fresh_leaves: Vec::new(),
        performing: usize::MAX,
        pending_cursors: Default::default(),
        cursors_due: None,
        flushed_cursors: Default::default(),
        unsaved_progress: 0,
        cursor_flush: Duration::from_millis(config.cursor_flush_ms),
        cursor_flush_messages: config.cursor_flush_messages,
        cursors_wanted: false,
        staging: Staging::default(),
        batch_time: 0,
        rooms_created: RoomsCreated {
            by_user: Map::default(),
            by_address: Map::default(),
            per_user: config.max_rooms_per_user,
            per_address: config.max_rooms_per_address,
        },
        cluster: cluster.map(super::cluster::State::new),
        monitor,
        stored: [0; 3],
        disabled: Set::default(),
        deleted_names: Set::default(),
    };
    core.load()?;
    if core.cluster.is_some() {
        core.cluster_start(broadcast)?;
    }
    let (ops, rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("parley-hub".into())
        .spawn(move || core.run(rx))?;
    Ok((Hub { ops }, thread))
}

/// A device of a user with a session open.
pub(super) struct Online {
    pub link: Arc<Link>,
    pub device: DeviceId,
    /// False while the session replays what it missed from the store; it gets no pushes of
    /// its conversations until it has caught up (see `Op::GoLive`).
    pub live: bool,
    /// False for sessions that only speak when spoken to (JSON before `SUBSCRIBE`).
    pub push: bool,
    /// The login's success reply has been queued: nothing may reach the session before it.
    pub welcomed: bool,
    /// When it logged in (Unix ms), for `parley admin sessions list`.
    pub since: i64,
    /// A text or JSON session that watches nobody: it hears of every user's last session
    /// ending (`listeners`). One that watches hears of its watched users only.
    pub listens: bool,
    /// The user's first session: its watchers are told once its login is known to be
    /// committed.
    pub announce: bool,
}

/// A room and who is in it now.
pub(super) struct Room {
    pub conv: ConvId,
    pub name: Arc<str>,
    pub members: Set<UserId>,
    /// Anonymous sessions in the room (seed 004 before `/nick`); they leave with their
    /// connection.
    pub guests: Vec<Arc<Link>>,
    /// Its owner, topic, mode, operators, bans, mutes and invitations (moderation.rs).
    pub rules: RoomRules,
}

/// The most effects a kept effect list may hold (a batch of 4,096 requests of one message
/// each makes 8,192).
const SPARE_EFFECTS: usize = 16_384;

/// Reported progress waits to be written for up to `cursor_flush_ms` (100 ms by default) or
/// until `cursor_flush_messages` messages' worth of it (10,000) waits, whichever comes
/// first. Written with every batch, it made nearly every batch a SQLite commit (each of the
/// 50 receivers of a busy run reports every 20 ms); it still goes with any batch that
/// commits rows anyway, or that logs a device in (whose catch-up reads it back). A crash
/// loses at most that much of it: those messages are delivered again, never lost. (The
/// time bound alone let 6,200-24,260 messages through twice per crash at full load.)
///
/// The advance of a report is counted from the same device's last report in that
/// conversation when the hub still holds it (pending, or written at the last flushes: up
/// to `FLUSHED_KEPT` of those are kept), else as the whole sequence: it may flush early,
/// never late.
const FLUSHED_KEPT: usize = 65_536;

/// A login of a name that is online elsewhere, waiting for that session to end.
struct Waiting {
    deadline: Instant,
    op: Op,
}

/// A join applied in the current batch: who, to which conversation, and the room's last
/// sequence then (the membership gets what comes after it).
pub(super) struct FreshJoin {
    pub conv: ConvId,
    pub seq: Seq,
    pub who: Joiner,
    /// Where the join's answer is among the batch's effects: in a cluster, a room message
    /// for the joiner performed before it waits until it is (hub/cluster.rs).
    pub answer: usize,
}

/// A leave applied in the current batch: a room message applied before it (at an earlier
/// effect) still reaches the leaver's sessions, as on one node a member gets a room's
/// messages up to its leave (the room's member list no longer holds them by then).
pub(super) struct FreshLeave {
    pub conv: ConvId,
    pub who: Joiner,
    /// The membership's start: nothing up to it was theirs.
    pub start: Seq,
    /// Where the leave is among the batch's effects.
    pub at: usize,
}

#[derive(Clone, Copy)]
pub(super) enum Joiner {
    Member(UserId),
    /// A guest's session.
    Guest(u64),
}

pub(super) struct Core {
    pub(super) store: Box<dyn LogStore>,
    grace: Duration,
    batch_max: usize,
    pub next: NextIds,
    pub anonymous: UserId,
    broadcast: ConvId,
    pub names: Map<NameKey, UserId>,
    pub users: Map<UserId, Arc<str>>,
    /// Users with a password: password-less logins of these names are refused.
    pub(super) accounts: Set<UserId>,
    pub(super) require_accounts: bool,
    /// Contacts per user, loaded on first use.
    pub contacts: Map<UserId, Map<UserId, ContactState>>,
    pub contacts_only_dms: bool,
    /// Who blocks whom (moderation.rs).
    pub(super) blocked: Blocked,
    /// Who watches whom for presence (presence.rs).
    pub(super) watches: Watches,
    /// The names of the server's operators (`operators`; only accounts count).
    pub(super) server_operators: std::collections::HashSet<String>,
    pub(super) devices: Map<(UserId, String), DeviceId>,
    /// Direct conversations by (lower, higher) user id.
    directs: Map<(UserId, UserId), ConvId>,
    last_seqs: Map<ConvId, Seq>,
    pub memberships: Map<UserId, Vec<Membership>>,
    pub rooms: Map<Arc<str>, Room>,
    /// The rooms' names in order, for listing a page of them.
    pub room_order: std::collections::BTreeSet<Arc<str>>,
    /// How the users' and the rooms' names look: no new name may look like a taken one.
    user_lookalikes: Lookalikes,
    pub room_lookalikes: Lookalikes,
    pub online: Map<UserId, Vec<Online>>,
    /// Users online with sessions that show presence notices (text and JSON: binary has
    /// no frame for them), and how many such sessions each has. A notice to everyone visits
    /// only these, so a disconnect costs nothing per binary session online.
    listeners: Map<UserId, usize>,
    /// Anonymous sessions counted in presence, by session id.
    pub guests: Map<u64, Arc<Link>>,
    waiting: Vec<Waiting>,
    /// The last batch's message list, emptied, for the next batch.
    spare_messages: Vec<NewMessage>,
    /// The last batch's effect list, emptied (growing it again every batch was a tenth of
    /// the hub's copying at full load).
    spare_effects: Vec<Effect>,
    /// Joins applied in this batch: a room message applied before one (at or below its
    /// start) is performed after it, and must not reach the joiner (see `deliver`).
    pub(super) fresh_joins: Vec<FreshJoin>,
    /// Leaves applied in this batch (see `FreshLeave`).
    pub(super) fresh_leaves: Vec<FreshLeave>,
    /// The effect being performed, where a batch's room messages may wait for joins'
    /// answers (`perform_holding`); `usize::MAX` elsewhere.
    performing: usize,
    /// Progress reported by sessions and not written yet, and when it is due to be.
    pending_cursors: HashMap<(DeviceId, ConvId), Seq, ahash::RandomState>,
    cursors_due: Option<Instant>,
    /// Progress written at the last flushes, to count the next reports' advances from.
    flushed_cursors: HashMap<(DeviceId, ConvId), Seq, ahash::RandomState>,
    /// Messages' worth of progress in `pending_cursors`, and the bounds (see above).
    unsaved_progress: u64,
    cursor_flush: Duration,
    cursor_flush_messages: u64,
    /// Something in this batch reads the cursors back (a login's catch-up): the pending
    /// progress goes into it.
    cursors_wanted: bool,
    /// What the batch being performed queues for sessions (kept for its spare lists).
    pub(super) staging: Staging,
    /// When the batch being applied began (Unix ms): the receive time of all its messages
    /// (one clock read per batch instead of one per message).
    pub(super) batch_time: i64,
    /// Rooms created per user and per address, and how many each may (rooms.rs).
    pub(super) rooms_created: RoomsCreated,
    /// Cluster mode's state (hub/cluster.rs); `None` on a single node.
    pub(super) cluster: Option<Box<super::cluster::State>>,
    /// Accounts an operator disabled, and the names of deleted ones (no longer in `names`,
    /// so nothing reaches them, but taken: admin.rs).
    pub(super) disabled: Set<UserId>,
    pub(super) deleted_names: Set<Arc<str>>,
    /// The metrics, counted once per batch.
    pub(super) monitor: Arc<Monitor>,
    /// The batch's messages by the sender's protocol (see `count_stored`).
    stored: [u64; 3],
}

/// Rooms created per user (over the server's life: counted again at start) and per address
/// (since the start), against `max_rooms_per_user` and `max_rooms_per_address`.
pub(super) struct RoomsCreated {
    pub by_user: Map<UserId, u32>,
    pub by_address: Map<std::net::IpAddr, u32>,
    pub per_user: u32,
    pub per_address: u32,
}

/// Who a message goes to.
pub(super) enum Audience {
    Direct(UserId, UserId),
    /// Every session of one user (notices only).
    User(UserId),
    Room(Arc<str>),
    Everyone,
    /// The sessions watching a user (presence notices only).
    Watchers(UserId),
}

/// What a batch does once its commit is known.
pub(super) enum Effect {
    Reply {
        link: Arc<Link>,
        item: Item,
        /// The reply reports something written by this batch: if the commit fails it
        /// becomes an error.
        durable: bool,
    },
    Login {
        link: Arc<Link>,
        result: Result<LoginOk, ErrorKind>,
        welcome: Option<Item>,
        done: Done<Result<LoginOk, ErrorKind>>,
    },
    /// Completes a request once the commit is known.
    Answer(Box<dyn FnOnce(bool) + Send>),
    Deliver {
        delivery: Arc<Delivery>,
        audience: Audience,
        /// The sending device (it does not get its own message back) and session.
        from: (DeviceId, u64),
    },
    Notify {
        notice: Arc<SharedNotice>,
        audience: Audience,
        /// The session the notice is about (it is not told).
        except: u64,
    },
}

impl Core {
    fn load(&mut self) -> anyhow::Result<()> {
        self.names.clear();
        self.users.clear();
        self.accounts.clear();
        for (id, name, account) in self.store.load_users()? {
            if account {
                self.accounts.insert(id);
            }
            let name: Arc<str> = Arc::from(name);
            self.names.insert(NameKey(name.clone()), id);
            self.users.insert(id, name);
        }
        self.load_user_states()?;
        self.rooms.clear();
        self.room_order.clear();
        self.rooms_created.by_user.clear();
        for room in self.store.load_rooms()? {
            if let Some(user) = room.created_by {
                *self.rooms_created.by_user.entry(user).or_default() += 1;
            }
            let name: Arc<str> = Arc::from(room.name);
            self.room_order.insert(name.clone());
            self.rooms.insert(
                name.clone(),
                Room {
                    conv: room.conv,
                    name,
                    members: room.members.into_iter().collect(),
                    guests: Vec::new(),
                    rules: RoomRules::stored(
                        room.created_by,
                        room.topic,
                        room.invite_only,
                        &room.marks,
                    ),
                },
            );
        }
        self.load_blocks()?;
        // The reserved `anonymous` user is not one anybody registered: a new data
        // directory holds no users.
        let reserved = usize::from(self.users.contains_key(&self.anonymous));
        info!(
            users = self.users.len() - reserved,
            rooms = self.rooms.len(),
            "hub loaded state"
        );
        Ok(())
    }

    fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.batch_max);
        let mut stopping = false;
        while !stopping {
            let deadlines = self.waiting.iter().map(|w| w.deadline);
            let first = match deadlines.chain(self.cursors_due).min() {
                Some(deadline) => rx.recv_deadline(deadline),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(op) => ops.push(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            while ops.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            stopping |= self.process(&mut ops);
        }
        if !self.pending_cursors.is_empty() {
            self.cursors_wanted = true;
            self.process(&mut ops);
        }
        for w in self.waiting.drain(..) {
            if let Op::Login { done, .. } = w.op {
                let _ = done.send(Err(ErrorKind::ShuttingDown));
            }
        }
        info!("hub stopped");
    }

    /// Applies `ops`, commits, performs the effects. True when asked to stop.
    fn process(&mut self, ops: &mut Vec<Op>) -> bool {
        // The message list is the one that grows large: it is kept from batch to batch
        // instead of growing again from nothing every time.
        let mut batch = Batch {
            messages: std::mem::take(&mut self.spare_messages),
            ..Batch::default()
        };
        let mut effects = std::mem::take(&mut self.spare_effects);
        let mut stop = false;
        self.batch_time = now_ms();
        self.expire_waiting(&mut effects);
        if !ops.is_empty() {
            self.monitor.metrics.batch_size.record(ops.len() as f64);
        }
        for op in ops.drain(..) {
            match op {
                Op::Shutdown => stop = true,
                op => {
                    let (protocol, before) = (op.protocol(), batch.messages.len());
                    self.apply(op, &mut batch, &mut effects);
                    if let Some(protocol) = protocol {
                        self.stored[protocol as usize] += (batch.messages.len() - before) as u64;
                    }
                }
            }
        }
        let due = self.cursors_due.is_some_and(|at| at <= Instant::now());
        if due || stop || self.cursors_wanted || batch.has_rows() {
            batch.cursors = std::mem::take(&mut self.pending_cursors);
            self.cursors_due = None;
            self.cursors_wanted = false;
            self.unsaved_progress = 0;
            if self.flushed_cursors.len() + batch.cursors.len() > FLUSHED_KEPT {
                self.flushed_cursors.clear();
            }
            self.flushed_cursors.extend(&batch.cursors);
        }
        batch.next_message_id = self.next.message;
        self.cluster_log(&mut batch);
        let committed = batch.is_empty() || {
            let started = Instant::now();
            let written = self.store.commit(&batch);
            let metrics = &self.monitor.metrics;
            metrics.commit_seconds.record(started.elapsed());
            match written {
                Ok(None) => true,
                Ok(Some(assigned)) => {
                    self.cluster_committed(&batch, &assigned, &mut effects);
                    true
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), ops = effects.len(), "store commit failed");
                    metrics.commit_failures.increment(1);
                    self.forget_uncommitted();
                    false
                }
            }
        };
        self.count_stored(committed);
        if !batch.messages.is_empty() {
            debug!(messages = batch.messages.len(), "committed batch");
        }
        let mut staging = std::mem::take(&mut self.staging);
        if self.cluster.is_some() {
            self.cluster_after(committed, &mut effects);
            self.cluster_relay(&mut staging);
        }
        let holding = !self.fresh_leaves.is_empty()
            || match &self.cluster {
                Some(c) => c.holding() || !self.fresh_joins.is_empty(),
                None => false,
            };
        if !holding {
            for effect in effects.drain(..) {
                self.perform(effect, committed, &mut staging);
            }
        } else {
            self.perform_holding(&mut effects, committed, &mut staging);
        }
        staging.flush();
        self.staging = staging;
        self.fresh_joins.clear();
        self.fresh_leaves.clear();
        batch.messages.clear();
        self.spare_messages = batch.messages;
        // A burst's list is not kept for good.
        if effects.capacity() <= SPARE_EFFECTS {
            self.spare_effects = effects;
        }
        stop
    }

    /// Adds the batch's stored messages to the metrics, by the sender's protocol: three
    /// atomic adds per batch at most, whatever its size.
    fn count_stored(&mut self, committed: bool) {
        let stored = std::mem::take(&mut self.stored);
        if !committed {
            return;
        }
        for protocol in [Protocol::Binary, Protocol::Text, Protocol::Json] {
            let n = stored[protocol as usize];
            if n > 0 {
                self.monitor.metrics.stored.of(protocol).increment(n);
            }
        }
    }

    /// Whether each of `names` is online: a lookup each. In a cluster, against who is
    /// online anywhere (one read of PostgreSQL's list).
    fn online_among(&mut self, names: &[String]) -> Vec<bool> {
        if self.cluster.is_some() {
            let anywhere: Set<Arc<str>> = self.cluster_who().users.into_iter().collect();
            return names
                .iter()
                .map(|n| anywhere.contains(n.as_str()))
                .collect();
        }
        let online = |name: &String| {
            let user = self.names.get(name.as_bytes());
            user.is_some_and(|u| self.online.contains_key(u))
        };
        names.iter().map(online).collect()
    }

    fn apply(&mut self, op: Op, batch: &mut Batch, effects: &mut Vec<Effect>) {
        match op {
            Op::Login { .. } => self.login(op, batch, effects),
            Op::Register { name, hash, done } => {
                let result = self.register(&name, hash, batch);
                answer(effects, done, result);
            }
            Op::FileStored { hash, size } => batch.files.push((hash, size)),
            Op::Contact {
                user,
                other,
                action,
                done,
            } => {
                let result = self.contact(user, &other, action, batch, effects);
                answer(effects, done, result);
            }
            Op::Account { user, change, done } => {
                let signed_out = self.account(user, change, batch);
                answer(effects, done, Ok(()));
                if !signed_out.is_empty() {
                    // Once the new password is stored, the other devices' sessions end.
                    effects.push(Effect::Answer(Box::new(move |committed| {
                        for link in signed_out.iter().filter(|_| committed) {
                            link.kill(Kill::SignedOut);
                        }
                    })));
                }
            }
            Op::Send {
                link,
                from,
                to,
                body,
                sent_at,
                tag,
                attachment,
            } => {
                let to = match &to {
                    Target::Users(names) => {
                        let sent = self.send_many(&link, from, names, body, sent_at, batch);
                        if let (Ok(deliveries), Some(hash)) = (&sent, attachment) {
                            for d in deliveries {
                                if let Effect::Deliver { delivery, .. } = d {
                                    batch.attachments.push((hash.clone(), delivery.conv));
                                }
                            }
                        }
                        return answer_sent(effects, link, tag, sent);
                    }
                    Target::User(name) => To::User(name.as_bytes()),
                    Target::Room(name) => To::Room(name),
                    Target::Everyone => To::Everyone,
                };
                let sent = self.send(&link, from, to, body, sent_at, None, batch);
                if let (Ok(Effect::Deliver { delivery, .. }), Some(hash)) = (&sent, attachment) {
                    batch.attachments.push((hash, delivery.conv));
                }
                answer_sent(effects, link, tag, sent.map(std::iter::once));
            }
            Op::Direct {
                link,
                sender,
                messages,
            } => {
                // An answer and a delivery each.
                effects.reserve(messages.len() * 2);
                let name = self.users[&sender.user].clone();
                for m in messages {
                    // The name was checked by the session (and a name that breaks the rules
                    // names nobody).
                    let from = Actor::Member(sender);
                    let to = To::User(m.to());
                    let name = Some(name.clone());
                    let body = m.message_bytes();
                    let sent = self.send(&link, from, to, body, m.time, name, batch);
                    answer_direct(effects, &link, m.cid, sent);
                }
            }
            Op::Admin { op, done } => self.admin(op, batch, effects, done),
            Op::Reply { link, item } => effects.push(Effect::Reply {
                link,
                item,
                durable: false,
            }),
            Op::Join {
                link,
                actor,
                room,
                leave,
                ok,
                done,
            } => {
                if let Some(old) = leave.filter(|old| *old != room) {
                    let _ = self.leave_room(&link, actor, &old, batch, effects);
                }
                let joins = self.fresh_joins.len();
                let result = self.join_room(&link, actor, &room, batch, effects);
                if let Some(join) = self.fresh_joins.get_mut(joins) {
                    join.answer = effects.len();
                }
                match (result, ok) {
                    // Queued here, in order with what the hub queues for the session: the
                    // room's messages from the join on come after it.
                    (Ok(()), Some(ok)) => {
                        effects.push(Effect::Answer(Box::new(move |committed| {
                            let result = match committed {
                                true => {
                                    link.push(ok);
                                    Ok(())
                                }
                                false => Err(ErrorKind::Internal),
                            };
                            let _ = done.send(result);
                        })))
                    }
                    (result, _) => answer(effects, done, result),
                }
            }
            Op::Leave {
                link,
                actor,
                room,
                done,
            } => {
                let result = self.leave_room(&link, actor, &room, batch, effects);
                answer(effects, done, result);
            }
            // Presence is cluster-wide in a cluster: PostgreSQL's (hub/cluster.rs).
            Op::Rooms { after, limit, done } if self.cluster.is_some() => {
                let _ = done.send(self.cluster_rooms(&after, limit));
            }
            Op::Members { room, done } if self.cluster.is_some() => {
                let _ = done.send(self.cluster_members(&room));
            }
            Op::Who { done } if self.cluster.is_some() => {
                let _ = done.send(self.cluster_who());
            }
            Op::Rooms { after, limit, done } => {
                let _ = done.send(self.room_page(&after, limit));
            }
            Op::Online { names, done } => {
                let _ = done.send(self.online_among(&names));
            }
            Op::Members { room, done } => {
                let members = self.rooms.get(room.as_str()).map(|r| {
                    let mut list: super::MemberList = r
                        .members
                        .iter()
                        .map(|u| (self.users[u].clone(), self.online.contains_key(u)))
                        .collect();
                    list.extend(r.guests.iter().map(|_| (Arc::from(ANONYMOUS), true)));
                    list.sort();
                    list
                });
                let _ = done.send(members.ok_or(ErrorKind::RoomNotFound));
            }
            Op::Who { done } => {
                let mut users: Vec<Arc<str>> =
                    self.online.keys().map(|u| self.users[u].clone()).collect();
                users.sort();
                let _ = done.send(Presence {
                    users,
                    anonymous: self.guests.len(),
                });
            }
            Op::Guest { link } => {
                self.guests.insert(link.id, link);
            }
            Op::Subscribe { link_id, user } => {
                for online in self.online.get_mut(&user).into_iter().flatten() {
                    if online.link.id == link_id {
                        online.push = true;
                    }
                }
            }
            Op::GoLive {
                link_id,
                user,
                progress,
                done,
            } => {
                let answer = self.go_live(link_id, user, &progress);
                effects.push(Effect::Answer(Box::new(move |committed| {
                    let _ = done.send(if committed { answer } else { GoLive::Behind });
                })));
            }
            Op::Cursors { device, progress } => {
                for (conv, seq) in progress {
                    let key = (device, conv);
                    let before = self.pending_cursors.get(&key);
                    let before = before.or_else(|| self.flushed_cursors.get(&key));
                    let advance = seq - before.copied().unwrap_or(0);
                    self.unsaved_progress += advance.max(0) as u64;
                    let at = self.pending_cursors.entry(key).or_insert(seq);
                    *at = (*at).max(seq);
                }
                if self.unsaved_progress >= self.cursor_flush_messages {
                    self.cursors_wanted = true;
                }
                let flush = self.cursor_flush;
                self.cursors_due
                    .get_or_insert_with(|| Instant::now() + flush);
            }
            Op::Gone { link_id, identity } => self.gone(link_id, identity, batch, effects),
            Op::Moderate {
                link,
                actor,
                room,
                action,
                done,
            } => {
                let link = link.as_deref();
                let result = self.moderate(link, actor, &room, action, batch, effects);
                answer(effects, done, result);
            }
            Op::RoomDetails { room, user, done } => {
                let _ = done.send(self.room_details(&room, user));
            }
            Op::Block {
                user,
                other,
                on,
                done,
            } => {
                let result = self.block(user, &other, on, batch);
                answer(effects, done, result);
            }
            Op::Blocks { user, done } => {
                let _ = done.send(self.blocked_by(user));
            }
            Op::Watch {
                link,
                user,
                names,
                render,
            } => {
                let item = render(&self.watch(&link, user, &names));
                effects.push(Effect::Reply {
                    link,
                    item,
                    durable: false,
                });
            }
            Op::DeleteMessage {
                link,
                actor,
                doomed,
                done,
            } => match self.delete_message(&link, actor, doomed, batch) {
                Ok(delivery) => {
                    answer(effects, done, Ok(()));
                    effects.extend(delivery);
                }
                Err(kind) => answer(effects, done, Err(kind)),
            },
            Op::Cluster(incoming) => self.cluster_incoming(incoming, effects),
            Op::Shutdown => {}
        }
    }

    fn login(&mut self, op: Op, batch: &mut Batch, effects: &mut Vec<Effect>) {
        // Its catch-up reads the device's progress from the store.
        self.cursors_wanted = true;
        let Op::Login {
            link,
            name,
            device,
            auth,
            welcome,
            replacing,
            done,
        } = op
        else {
            return;
        };
        let existing = self.find_name(name.as_bytes()).map(|(_, user)| user);
        let allowed = self.may_login(&name, existing, auth).and_then(|()| {
            // A rename takes a new name only if it looks like no taken one (the check
            // `admit` makes), so that the old name is never given up for nothing.
            match (replacing, existing, &self.cluster) {
                (Some(_), None, None) => {
                    let taken = || self.users.values().map(|name| &**name);
                    let refused = ErrorKind::AlreadyLoggedIn;
                    self.user_lookalikes.check(&name, taken, refused).map(drop)
                }
                _ => Ok(()),
            }
        });
        if let Err(kind) = allowed {
            effects.push(Effect::Login {
                link,
                result: Err(kind),
                welcome,
                done,
            });
            return;
        }
        if let Some(user) = existing {
            // Password-less logins keep seed 000's rule: one session per name. Accounts may
            // have several devices online, one session each.
            let busy = self.online.get(&user).is_some_and(|d| match auth {
                Auth::None => !d.is_empty(),
                Auth::Token(_, id) => d.iter().any(|o| o.device == id),
                Auth::Password(_) => {
                    let id = self.devices.get(&(user, device.clone())).copied();
                    d.iter().any(|o| Some(o.device) == id)
                }
            });
            if busy {
                if self.grace.is_zero() {
                    let result = Err(ErrorKind::AlreadyLoggedIn);
                    effects.push(Effect::Login {
                        link,
                        result,
                        welcome,
                        done,
                    });
                } else {
                    let deadline = Instant::now() + self.grace;
                    let op = Op::Login {
                        link,
                        name,
                        device,
                        auth,
                        welcome,
                        replacing,
                        done,
                    };
                    self.waiting.push(Waiting { deadline, op });
                }
                return;
            }
        }
        if let (Some(user), Some(_)) = (existing, &self.cluster) {
            self.cluster_refresh(user);
        }
        if let Some(old) = replacing {
            // The new name may be taken: the old one goes offline as if its session had
            // ended.
            self.sign_off(link.id, old, batch, effects);
        }
        let mut result = self.admit(existing, &name, &device, &link, batch);
        if let (Ok(ok), Some(_)) = (&result, &self.cluster) {
            // Online on another node: refused as a second session here would be.
            let identity = ok.identity;
            if let Err(kind) = self.cluster_claim(link.id, identity, auth) {
                self.drop_online(identity.user, link.id);
                result = Err(kind);
            }
        }
        if replacing.is_some() && result.is_err() {
            // Refused after the old name was given up (a store error; in a cluster, another
            // node's claim): the session has no name now, which is what it is told.
            result = Err(ErrorKind::NotLoggedIn);
        }
        effects.push(Effect::Login {
            link,
            result,
            welcome,
            done,
        });
    }

    /// Whether `auth` is enough to log in as `name`.
    fn may_login(&self, name: &str, existing: Option<UserId>, auth: Auth) -> Result<(), ErrorKind> {
        if name == ANONYMOUS {
            return Err(ErrorKind::AlreadyLoggedIn);
        }
        if let Some(refused) = self.refused_by_operator(name, existing, auth) {
            return Err(refused);
        }
        match auth {
            Auth::None if self.require_accounts => Err(ErrorKind::Unauthorized),
            // The protocols without passwords know only "name taken" for this.
            Auth::None if existing.is_some_and(|u| self.accounts.contains(&u)) => {
                Err(ErrorKind::AlreadyLoggedIn)
            }
            Auth::None => Ok(()),
            Auth::Password(user) | Auth::Token(user, _) if existing == Some(user) => Ok(()),
            Auth::Password(_) | Auth::Token(..) => Err(ErrorKind::Unauthorized),
        }
    }

    /// Creates an account, or gives a password to a name that never had one (and is not
    /// online: its messages go to whoever holds the password from now on).
    fn register(&mut self, name: &str, hash: String, batch: &mut Batch) -> Result<(), ErrorKind> {
        if name == ANONYMOUS || self.deleted_names.contains(name) {
            return Err(ErrorKind::AlreadyLoggedIn);
        }
        if self.cluster.is_some() {
            let user = self.names.get(name.as_bytes()).copied();
            if user.is_some_and(|u| self.online.contains_key(&u)) {
                return Err(ErrorKind::AlreadyLoggedIn);
            }
            return self.cluster_register(name, &hash);
        }
        let user = match self.names.get(name.as_bytes()).copied() {
            Some(user)
                if self.accounts.contains(&user)
                    || self.online.contains_key(&user)
                    || self.disabled.contains(&user) =>
            {
                return Err(ErrorKind::AlreadyLoggedIn)
            }
            Some(user) => user,
            None => {
                self.take_user_name(name)?;
                let user = self.next.user;
                self.next.user += 1;
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(NameKey(shared.clone()), user);
                self.users.insert(user, shared);
                batch.users.push((user, name.to_string()));
                user
            }
        };
        batch.passwords.push((user, hash));
        self.accounts.insert(user);
        Ok(())
    }

    /// Checks a name about to become a new user against the name profile and the names
    /// taken (`lookalikes.rs`); one that looks like a taken name is taken.
    fn take_user_name(&mut self, name: &str) -> Result<(), ErrorKind> {
        let existing = || self.users.values().map(|name| &**name);
        let taken = ErrorKind::AlreadyLoggedIn;
        let unique = self.user_lookalikes.check(name, existing, taken)?;
        self.user_lookalikes.take(unique);
        Ok(())
    }

    /// Applies `change`; returns the sessions it signs out (a new password ends every other
    /// device's session, as it revokes their tokens).
    fn account(
        &mut self,
        user: UserId,
        change: AccountChange,
        batch: &mut Batch,
    ) -> Vec<Arc<Link>> {
        match change {
            AccountChange::Password { hash, keep } => {
                batch.passwords.push((user, hash));
                batch.revocations.push(Revoke::AllBut(user, keep));
                self.accounts.insert(user);
                if self.cluster.is_some() {
                    self.cluster_signed_out(user, keep);
                }
                let online = self.online.get(&user).into_iter().flatten();
                let others = online.filter(|o| o.device != keep);
                return others.map(|o| o.link.clone()).collect();
            }
            AccountChange::Token(token) => batch.tokens.push(token),
            AccountChange::Revoke(revoke) => batch.revocations.push(revoke),
            AccountChange::Profile(profile) => batch.profiles.push(profile),
        }
        Vec::new()
    }

    /// Creates the user and device as needed and registers the session (catching up).
    fn admit(
        &mut self,
        existing: Option<UserId>,
        name: &str,
        device: &str,
        link: &Arc<Link>,
        batch: &mut Batch,
    ) -> Result<LoginOk, ErrorKind> {
        let user = match existing {
            Some(user) => user,
            // Another node may be creating the same name: PostgreSQL decides.
            None if self.cluster.is_some() => self.cluster_user(name)?,
            None => {
                self.take_user_name(name)?;
                let user = self.next.user;
                self.next.user += 1;
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(NameKey(shared.clone()), user);
                self.users.insert(user, shared);
                batch.users.push((user, name.to_string()));
                self.memberships.insert(user, Vec::new());
                user
            }
        };
        let key = (user, device.to_string());
        let device = match self.devices.get(&key) {
            Some(&id) => id,
            None if self.cluster.is_some() => {
                let id = self.cluster_device(user, device)?;
                self.devices.insert(key, id);
                id
            }
            None => {
                // A user created by this login has no devices to look up.
                let found = match existing {
                    Some(_) => self.store.find_device(user, device).map_err(internal)?,
                    None => None,
                };
                let id = match found {
                    Some(id) => id,
                    None => {
                        let id = self.next.device;
                        self.next.device += 1;
                        batch.devices.push((id, user, device.to_string()));
                        id
                    }
                };
                self.devices.insert(key, id);
                id
            }
        };
        self.guests.remove(&link.id);
        if link.protocol != Protocol::Binary {
            *self.listeners.entry(user).or_default() += 1;
        }
        let push = link.protocol != Protocol::Json;
        // A user in no conversation (a first login, a name that never talked) has nothing
        // to replay: the device is live at once, with no catch-up read. JSON sessions catch
        // up when they subscribe, so they always take the usual path.
        let live = push && self.memberships_of(user).is_ok_and(|list| list.is_empty());
        let devices = self
            .online
            .entry(user)
            .or_insert_with(|| Vec::with_capacity(1));
        let listens = link.protocol != Protocol::Binary;
        let announce = devices.is_empty();
        devices.push(Online {
            link: link.clone(),
            device,
            live,
            push,
            welcomed: false,
            since: self.batch_time,
            listens,
            announce,
        });
        Ok(LoginOk {
            identity: Identity { user, device },
            name: self.users[&user].clone(),
            live,
        })
    }

    /// Appends a message to its conversation; the effect delivers it once committed.
    /// `from_name` is the sender's name when the caller has it at hand (a run of direct
    /// messages looks it up once).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        link: &Link,
        from: Actor,
        to: To<'_>,
        body: bytes::Bytes,
        sent_at: u64,
        from_name: Option<Arc<str>>,
        batch: &mut Batch,
    ) -> Result<Effect, ErrorKind> {
        let sender = match from {
            Actor::Member(identity) => identity,
            Actor::Guest => Identity {
                user: self.anonymous,
                device: 0,
            },
        };
        let (conv, audience, kind, to_name) = match to {
            To::User(name) => {
                let Actor::Member(_) = from else {
                    return Err(ErrorKind::NotLoggedIn);
                };
                // The map's key is the recipient's shared name: no second lookup for it.
                // Looked up here first: `find_name` (another node's users too) is a large
                // function, and a call to it cost about 60 instructions a message more.
                let found = match self.names.get_key_value(name) {
                    Some((key, &user)) => Some((key.0.clone(), user)),
                    None => self.find_name(name),
                };
                let (to, recipient) = found.ok_or(ErrorKind::UserNotFound)?;
                if !self.blocked.is_empty() && self.blocks(recipient, sender.user) {
                    return Err(ErrorKind::Blocked);
                }
                if self.contacts_only_dms && recipient != sender.user {
                    let state = self
                        .contact_state(sender.user, recipient)
                        .map_err(internal)?;
                    if state != Some(ContactState::Accepted) {
                        return Err(ErrorKind::NotContact);
                    }
                }
                let members = (sender.user.min(recipient), sender.user.max(recipient));
                let conv = self.direct(members, batch).map_err(internal)?;
                (
                    conv,
                    Audience::Direct(members.0, members.1),
                    ConversationKind::Direct,
                    to,
                )
            }
            To::Room(name) => {
                if self.cluster.is_some() && !self.rooms.contains_key(name) {
                    // Made on another node.
                    self.cluster_room(name, None, false)?;
                }
                let room = self.rooms.get(name).ok_or(ErrorKind::RoomNotFound)?;
                let member = match from {
                    Actor::Member(id) => room.members.contains(&id.user),
                    Actor::Guest => room.guests.iter().any(|g| g.id == link.id),
                };
                if !member {
                    return Err(ErrorKind::NotMember);
                }
                if let Actor::Member(id) = from {
                    self.may_speak(id.user, room)?;
                }
                let audience = Audience::Room(room.name.clone());
                (
                    room.conv,
                    audience,
                    ConversationKind::Room,
                    room.name.clone(),
                )
            }
            // Anonymous sessions may speak to everyone (seed 001 allows MESSAGE before
            // REGISTER); the text protocol asks for a login first on its own.
            To::Everyone => (
                self.broadcast,
                Audience::Everyone,
                ConversationKind::Broadcast,
                Arc::from("*"),
            ),
        };
        let seq = self.next_seq(conv).map_err(internal)?;
        let id = self.next.message;
        self.next.message += 1;
        batch.messages.push(NewMessage {
            id,
            conv,
            seq,
            sender: sender.user,
            sender_device: sender.device,
            body: body.clone(),
            sent_at,
            received_at: self.batch_time,
        });
        let from_name = from_name.unwrap_or_else(|| self.users[&sender.user].clone());
        let delivery = Delivery::new(id, conv, seq, kind, from_name, to_name, body, sent_at);
        Ok(Effect::Deliver {
            delivery: Arc::new(delivery),
            audience,
            from: (sender.device, link.id),
        })
    }

    /// One message to each of `names` (all must exist, or nothing is sent).
    fn send_many(
        &mut self,
        link: &Link,
        from: Actor,
        names: &[String],
        body: bytes::Bytes,
        sent_at: u64,
        batch: &mut Batch,
    ) -> Result<Vec<Effect>, ErrorKind> {
        if names.is_empty() {
            return Err(ErrorKind::Malformed);
        }
        if names.iter().any(|n| self.find_name(n.as_bytes()).is_none()) {
            return Err(ErrorKind::UserNotFound);
        }
        // One recipient who blocks the sender refuses the whole send, before any part of
        // it is stored.
        if let (Actor::Member(sender), false) = (from, self.blocked.is_empty()) {
            let blocks = |n: &String| {
                let found = self.names.get(n.as_bytes());
                found.is_some_and(|&recipient| self.blocks(recipient, sender.user))
            };
            if names.iter().any(blocks) {
                return Err(ErrorKind::Blocked);
            }
        }
        let mut unique: Vec<&String> = names.iter().collect();
        unique.sort();
        unique.dedup();
        unique
            .into_iter()
            .map(|name| {
                let to = To::User(name.as_bytes());
                self.send(link, from, to, body.clone(), sent_at, None, batch)
            })
            .collect()
    }

    /// The direct conversation of `members`, created (in this batch) if new.
    fn direct(&mut self, members: (UserId, UserId), batch: &mut Batch) -> anyhow::Result<ConvId> {
        if let Some(&conv) = self.directs.get(&members) {
            return Ok(conv);
        }
        if self.cluster.is_some() {
            let conv = self.cluster_direct(members)?;
            self.directs.insert(members, conv);
            return Ok(conv);
        }
        let conv = match self.store.find_direct(members.0, members.1)? {
            Some(found) => {
                self.last_seqs.entry(found.id).or_insert(found.last_seq);
                found.id
            }
            None => {
                let conv = self.next.conv;
                self.next.conv += 1;
                batch.directs.push((conv, members.0, members.1));
                self.last_seqs.insert(conv, 0);
                for user in [members.0, members.1] {
                    self.add_membership(user, conv, 0)?;
                }
                conv
            }
        };
        self.directs.insert(members, conv);
        Ok(conv)
    }

    pub(super) fn store_user_states(&mut self) -> anyhow::Result<Vec<(UserId, UserState)>> {
        self.store.load_user_states()
    }

    pub(super) fn store_blocks(&mut self) -> anyhow::Result<Vec<(UserId, UserId)>> {
        self.store.load_blocks()
    }

    pub(super) fn store_is_deleted(&mut self, id: i64) -> anyhow::Result<bool> {
        self.store.is_deleted(id)
    }

    pub(super) fn store_contacts(
        &mut self,
        user: UserId,
    ) -> anyhow::Result<Vec<(UserId, ContactState)>> {
        self.store.contacts(user)
    }

    pub(super) fn new_conv_id(&mut self) -> ConvId {
        let conv = self.next.conv;
        self.next.conv += 1;
        self.last_seqs.insert(conv, 0);
        conv
    }

    /// Adds `conv` to the cached memberships of `user` (loading them first, so the cache
    /// never holds a partial list).
    pub(super) fn add_membership(
        &mut self,
        user: UserId,
        conv: ConvId,
        joined_seq: Seq,
    ) -> anyhow::Result<()> {
        let list = self.memberships_of(user)?;
        list.retain(|m| m.conv != conv);
        list.push(Membership { conv, joined_seq });
        Ok(())
    }

    /// Hands out `conv`'s next sequence (one lookup when it is cached, as it nearly always is).
    /// Inlined, with the store's read apart: called, it cost about 50 instructions a message.
    #[inline]
    pub(super) fn next_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        if self.cluster.is_some() {
            // PostgreSQL hands out the sequence at the commit (`LogStore::commit`).
            return Ok(0);
        }
        if let Some(seq) = self.last_seqs.get_mut(&conv) {
            *seq += 1;
            return Ok(*seq);
        }
        self.first_seq(conv)
    }

    /// `next_seq` of a conversation whose last sequence is not cached yet.
    fn first_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        let seq = self.store.last_seq(conv)? + 1;
        self.last_seqs.insert(conv, seq);
        Ok(seq)
    }

    pub(super) fn last_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        if self.cluster.is_some() {
            return self.cluster_last_seq(conv);
        }
        if let Some(&seq) = self.last_seqs.get(&conv) {
            return Ok(seq);
        }
        let seq = self.store.last_seq(conv)?;
        self.last_seqs.insert(conv, seq);
        Ok(seq)
    }

    pub(super) fn memberships_of(&mut self, user: UserId) -> anyhow::Result<&mut Vec<Membership>> {
        if !self.memberships.contains_key(&user) {
            let list = self.store.memberships(user)?;
            self.memberships.insert(user, list);
        }
        Ok(self.memberships.get_mut(&user).expect("inserted above"))
    }

    /// Grants live delivery if `progress` reaches the end of every conversation of `user`.
    fn go_live(&mut self, link_id: u64, user: UserId, progress: &HashMap<ConvId, Seq>) -> GoLive {
        let is_online = self
            .online
            .get(&user)
            .is_some_and(|d| d.iter().any(|o| o.link.id == link_id));
        if !is_online {
            return GoLive::Gone;
        }
        if self.cluster.is_some() {
            if !self.cluster_go_live(user, progress).unwrap_or(false) {
                return GoLive::Behind;
            }
        } else {
            let list = match self.memberships_of(user) {
                Ok(list) => list.clone(),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "loading memberships");
                    return GoLive::Behind;
                }
            };
            for m in list {
                let have = progress
                    .get(&m.conv)
                    .copied()
                    .unwrap_or(0)
                    .max(m.joined_seq);
                match self.last_seq(m.conv) {
                    Ok(last) if last <= have => {}
                    _ => return GoLive::Behind,
                }
            }
        }
        for online in self.online.get_mut(&user).into_iter().flatten() {
            if online.link.id == link_id {
                online.live = true;
            }
        }
        GoLive::Live
    }

    /// A session ended: out of presence, out of its rooms as a guest, and the waiting
    /// logins of its name get their turn.
    fn gone(
        &mut self,
        link_id: u64,
        identity: Option<Identity>,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) {
        self.guests.remove(&link_id);
        self.drop_guest_from_rooms(link_id, effects);
        self.unwatch(link_id);
        if let Some(identity) = identity {
            self.sign_off(link_id, identity, batch, effects);
        }
    }

    /// Session `link_id` is no longer `identity`: out of presence (the others are told
    /// when it was the user's last session), and the waiting logins of its name get
    /// their turn.
    fn sign_off(
        &mut self,
        link_id: u64,
        identity: Identity,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) {
        let last_here = self.drop_online(identity.user, link_id);
        let now = now_ms();
        if self.cluster.is_some() {
            // The user may be online on another node: whether this was their last session
            // anywhere is known once its row is gone (`cluster_after`).
            self.cluster_gone(link_id, identity.user);
        } else if last_here {
            let notice = Notice::Disconnected {
                name: self.users[&identity.user].clone(),
            };
            effects.push(Effect::Notify {
                notice: Arc::new(SharedNotice::new(notice)),
                audience: Audience::Everyone,
                except: link_id,
            });
            self.announce(identity.user, Some(now), link_id, effects);
        }
        batch.seen.push((identity.user, identity.device, now));
        let user = identity.user;
        let (ready, rest): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|w| {
            matches!(&w.op, Op::Login { name, .. } if self.names.get(name.as_bytes()) == Some(&user))
        });
        self.waiting = rest;
        for w in ready {
            self.login(w.op, batch, effects);
        }
    }

    fn expire_waiting(&mut self, effects: &mut Vec<Effect>) {
        let now = Instant::now();
        let (expired, rest): (Vec<_>, Vec<_>) =
            self.waiting.drain(..).partition(|w| w.deadline <= now);
        self.waiting = rest;
        for w in expired {
            if let Op::Login { link, done, .. } = w.op {
                let result = Err(ErrorKind::AlreadyLoggedIn);
                effects.push(Effect::Login {
                    link,
                    result,
                    welcome: None,
                    done,
                });
            }
        }
    }

    /// Carries out one effect of a committed (or failed) batch. Inlined into the batch's
    /// loop (`always`: as a hint it was not), with the rare login in a function of its own:
    /// called apart, the effect is moved into the call and matched again, about 60
    /// instructions a message (callgrind, `parley bench dm`).
    #[inline(always)]
    fn perform(&mut self, effect: Effect, committed: bool, out: &mut Staging) {
        match effect {
            Effect::Reply {
                link,
                item,
                durable,
            } => {
                let item = match item {
                    Item::Reply(tag, Reply::Ok) if durable && !committed => {
                        Item::Reply(tag, Reply::Error(ErrorKind::Internal))
                    }
                    item => item,
                };
                out.reply(&link, item);
            }
            Effect::Login {
                link,
                result,
                welcome,
                done,
            } => self.logged_in(link, result, welcome, done, committed, out),
            Effect::Answer(answer) => {
                out.flush();
                answer(committed)
            }
            Effect::Deliver {
                delivery,
                audience,
                from,
            } => {
                if committed {
                    self.deliver(&delivery, &audience, from, out);
                }
            }
            Effect::Notify {
                notice,
                audience,
                except,
            } => self.notify(&notice, &audience, except, out),
        }
    }

    /// `perform` for a batch with leaves, or a cluster's batch with joins: a room message
    /// applied before a leave reaches the leaver too (`deliver_to_leavers`); in a cluster,
    /// one committed after a join's start, performed before its answer (relayed, or
    /// applied before the join), waits for the answer and is queued right after it
    /// (hub/cluster.rs).
    fn perform_holding(&mut self, effects: &mut Vec<Effect>, committed: bool, out: &mut Staging) {
        for (i, effect) in effects.drain(..).enumerate() {
            self.performing = i;
            if let Effect::Deliver {
                delivery,
                audience: Audience::Room(room),
                from,
            } = &effect
            {
                if committed {
                    self.hold_for_joins(delivery, *from, Some(i));
                    self.deliver_to_leavers(delivery, room, *from, i, out);
                }
            }
            self.perform(effect, committed, out);
            self.cluster_release(Some(i), out);
        }
        self.performing = usize::MAX;
        self.cluster_release(None, out);
    }

    /// Queues room message `delivery` (at effect `at`) for the sessions of those who left
    /// the room later in the batch: it was sent while they were members. Not for one back
    /// in the room (the room's delivery reaches them), nor back to the sender.
    fn deliver_to_leavers(
        &self,
        delivery: &Arc<Delivery>,
        room: &Arc<str>,
        from: (DeviceId, u64),
        at: usize,
        out: &mut Staging,
    ) {
        let Some(room) = self.rooms.get(room) else {
            return;
        };
        for leave in &self.fresh_leaves {
            if leave.conv != delivery.conv || leave.at <= at || delivery.seq <= leave.start {
                continue;
            }
            match leave.who {
                Joiner::Member(user) if !room.members.contains(&user) => {
                    let online = self.online.get(&user).into_iter().flatten();
                    for o in online.filter(|o| o.live && o.push && o.device != from.0) {
                        out.push(&o.link, Item::Deliver(delivery.clone()));
                    }
                }
                Joiner::Guest(link) if !room.guests.iter().any(|g| g.id == link) => {
                    if let Some(guest) = self.guests.get(&link).filter(|_| link != from.1) {
                        out.push(guest, Item::Deliver(delivery.clone()));
                    }
                }
                _ => {}
            }
        }
    }

    /// A login's effect: the session is told (and its watchers, at its first device) once
    /// the commit is known.
    fn logged_in(
        &mut self,
        link: Arc<Link>,
        result: Result<LoginOk, ErrorKind>,
        welcome: Option<Item>,
        done: Done<Result<LoginOk, ErrorKind>>,
        committed: bool,
        out: &mut Staging,
    ) {
        out.flush();
        let result = match result {
            Ok(ok) if !committed => {
                self.drop_online(ok.identity.user, link.id);
                Err(ErrorKind::Internal)
            }
            other => other,
        };
        if let Ok(ok) = &result {
            if let Some(welcome) = welcome {
                link.push(welcome);
            }
            let user = ok.identity.user;
            let mut first = false;
            for online in self.online.get_mut(&user).into_iter().flatten() {
                if online.link.id == link.id {
                    online.welcomed = true;
                    first = std::mem::take(&mut online.announce);
                }
            }
            if first {
                // Committed: the user's watchers may be told.
                let mut told = Vec::new();
                self.announce(user, None, link.id, &mut told);
                for effect in told {
                    self.perform(effect, true, out);
                }
            }
        }
        if done.send(result).is_err() {
            debug!(session = link.id, "login answered after the session ended");
        }
    }

    /// Pushes a committed message to every online session that should see it now. Inlined
    /// into `perform` (a call was about 40 instructions a message).
    #[inline(always)]
    pub(super) fn deliver(
        &self,
        delivery: &Arc<Delivery>,
        audience: &Audience,
        from: (DeviceId, u64),
        out: &mut Staging,
    ) {
        let mut push = |link: &Arc<Link>| out.push(link, Item::Deliver(delivery.clone()));
        match audience {
            Audience::Direct(a, b) => {
                let to_self = a == b;
                let sessions = || {
                    let users = [*a, *b].into_iter().take(if to_self { 1 } else { 2 });
                    let online = users.flat_map(|u| self.online.get(&u)).flatten();
                    let live = online.filter(|o| o.live && o.push);
                    live.map(|o| (&o.link, Some(o.device)))
                };
                // Not back to the sending device (unless it writes to itself).
                let skip = |device: Option<DeviceId>, _| !to_self && device == Some(from.0);
                out.push_direct((*a, *b), sessions, skip, delivery);
            }
            Audience::Room(name) => {
                let Some(room) = self.rooms.get(name) else {
                    return;
                };
                let sessions = || {
                    let members = room.members.iter().flat_map(|u| self.online.get(u));
                    let live = members.flatten().filter(|o| o.live && o.push);
                    let guests = room.guests.iter().map(|g| (g, None));
                    live.map(|o| (&o.link, Some(o.device))).chain(guests)
                };
                // Nor to a session that joined after this message was stored: its
                // member's membership starts past it (almost always none).
                let late = self.joined_after(delivery);
                // Not back to the sending device (or, for a guest, the sending session).
                let skip = |device: Option<DeviceId>, link: u64| {
                    let sender = match device {
                        Some(device) => device == from.0,
                        None => link == from.1,
                    };
                    sender || (!late.is_empty() && late.contains(&link))
                };
                out.push_room(name, sessions, skip, delivery);
            }
            Audience::User(_) | Audience::Watchers(_) => {}
            Audience::Everyone => {
                for online in self.online.values().flatten() {
                    if online.push && online.welcomed && online.link.id != from.1 {
                        push(&online.link);
                    }
                }
            }
        }
    }

    /// The sessions (by id) that joined `delivery`'s room in this batch at or after it
    /// was stored. The hub applies a whole batch before it performs any of it, so a
    /// room's member list then already holds a join applied after the message; on one
    /// node as in a cluster, a member gets a room's messages from its join on only. And
    /// in a cluster those whose join's answer is still to come: the message waits for
    /// it (`perform_holding`).
    fn joined_after(&self, delivery: &Delivery) -> Vec<u64> {
        if self.fresh_joins.is_empty() {
            return Vec::new();
        }
        let mut late = Vec::new();
        for join in &self.fresh_joins {
            let answered = join.answer <= self.performing;
            if join.conv != delivery.conv || (join.seq < delivery.seq && answered) {
                continue;
            }
            match join.who {
                Joiner::Guest(link) => late.push(link),
                Joiner::Member(user) => {
                    let online = self.online.get(&user).into_iter().flatten();
                    late.extend(online.map(|o| o.link.id));
                }
            }
        }
        late
    }

    /// Pushes a presence notice (not stored) to the sessions of `audience` but `except`,
    /// never to a session whose welcome is not queued yet, nor to the user it is about.
    pub(super) fn notify(
        &self,
        notice: &Arc<SharedNotice>,
        audience: &Audience,
        except: u64,
        out: &mut Staging,
    ) {
        let about = match &notice.notice {
            Notice::Disconnected { name } => self.names.get(name.as_bytes()).copied(),
            _ => None,
        };
        let mut send = |link: &Arc<Link>| {
            // A style with no words for this notice (seed 000's binary has none for any)
            // gets nothing queued.
            let style = Style::from_u8(link.style.load(std::sync::atomic::Ordering::Relaxed));
            if link.id != except && style.shows(&notice.notice) {
                out.push(link, Item::Notice(notice.clone()));
            }
        };
        let online = |user: &UserId| -> Vec<&Online> {
            if Some(*user) == about {
                return Vec::new();
            }
            let devices = self.online.get(user).into_iter().flatten();
            devices.filter(|o| o.push && o.welcomed).collect()
        };
        match audience {
            Audience::Room(name) => {
                if let Some(room) = self.rooms.get(name) {
                    for o in room.members.iter().flat_map(online) {
                        send(&o.link);
                    }
                    room.guests.iter().for_each(&mut send);
                }
            }
            Audience::User(user) => {
                for o in online(user) {
                    send(&o.link);
                }
            }
            Audience::Everyone | Audience::Direct(..) => {
                let listening = self.listeners.keys().flat_map(online);
                for o in listening.filter(|o| o.listens) {
                    send(&o.link);
                }
            }
            Audience::Watchers(user) => self.watchers_of(*user).for_each(&mut send),
        }
    }

    /// Session `link_id` of `user` stops hearing of every user's last session ending (it
    /// watches instead).
    pub(super) fn stop_listening(&mut self, user: UserId, link_id: u64) {
        let devices = self.online.get_mut(&user).into_iter().flatten();
        let Some(online) = devices.into_iter().find(|o| o.link.id == link_id) else {
            return;
        };
        if !std::mem::take(&mut online.listens) {
            return;
        }
        if let Some(n) = self.listeners.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.listeners.remove(&user);
            }
        }
    }

    /// Takes session `link_id` of `user` offline. True when that was the user's last one.
    pub(super) fn drop_online(&mut self, user: UserId, link_id: u64) -> bool {
        let Some(devices) = self.online.get_mut(&user) else {
            return false;
        };
        let Some(at) = devices.iter().position(|o| o.link.id == link_id) else {
            return false;
        };
        let gone = devices.swap_remove(at);
        if gone.listens {
            if let Some(n) = self.listeners.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    self.listeners.remove(&user);
                }
            }
        }
        if devices.is_empty() {
            self.online.remove(&user);
            return true;
        }
        false
    }

    /// After a failed commit the caches may name rows that were never written: reload.
    fn forget_uncommitted(&mut self) {
        self.devices.clear();
        self.directs.clear();
        self.last_seqs.clear();
        self.memberships.clear();
        self.contacts.clear();
        if self.cluster.is_some() {
            // Users, devices, conversations and rooms are created at once in a cluster,
            // never in a batch: nothing of them is uncommitted (and PostgreSQL may be away).
            return;
        }
        let guests: Vec<(Arc<str>, Vec<Arc<Link>>)> = self
            .rooms
            .values_mut()
            .map(|r| (r.name.clone(), std::mem::take(&mut r.guests)))
            .collect();
        if let Err(e) = self.load() {
            error!(error = %format!("{e:#}"), "reloading state after a failed commit");
        }
        for (name, list) in guests {
            if let Some(room) = self.rooms.get_mut(&name) {
                room.guests = list;
            }
        }
        match self.store.next_ids() {
            Ok(next) => {
                // Never hand out an id twice, even one from a failed batch.
                self.next.user = self.next.user.max(next.user);
                self.next.device = self.next.device.max(next.device);
                self.next.conv = self.next.conv.max(next.conv);
            }
            Err(e) => error!(error = %format!("{e:#}"), "reloading ids after a failed commit"),
        }
    }
}

/// Answers `done` with `result` once the commit is known (an error if it failed).
fn answer(
    effects: &mut Vec<Effect>,
    done: Done<Result<(), ErrorKind>>,
    result: Result<(), ErrorKind>,
) {
    effects.push(Effect::Answer(Box::new(move |committed| {
        let result = if committed {
            result
        } else {
            Err(ErrorKind::Internal)
        };
        let _ = done.send(result);
    })));
}

/// Where one message goes (`Core::send`): a borrowed `Target` with one recipient.
#[derive(Clone, Copy)]
enum To<'a> {
    /// A user by name (the bytes of a name).
    User(&'a [u8]),
    Room(&'a str),
    Everyone,
}

/// Answers a send tagged `tag`: OK once committed, then its deliveries; or its error.
fn answer_sent(
    effects: &mut Vec<Effect>,
    link: Arc<Link>,
    tag: Tag,
    sent: Result<impl IntoIterator<Item = Effect>, ErrorKind>,
) {
    match sent {
        Ok(deliveries) => {
            let mut deliveries = deliveries.into_iter();
            let first = deliveries.next();
            // A WebSocket client learns where its message was stored (it gets no copy of
            // it), so it can place it among the ones it receives.
            let websocket = || {
                link.style.load(std::sync::atomic::Ordering::Relaxed)
                    == crate::outbound::Style::WebSocket as u8
            };
            let tag = match (tag, &first) {
                (Tag::Json { ok, id }, Some(Effect::Deliver { delivery, .. })) if websocket() => {
                    let stored = [delivery.id, delivery.conv, delivery.seq];
                    Tag::Stored(Box::new(StoredTag { ok, id, stored }))
                }
                (tag, _) => tag,
            };
            effects.push(Effect::Reply {
                link,
                item: Item::Reply(tag, Reply::Ok),
                durable: true,
            });
            effects.extend(first);
            effects.extend(deliveries);
        }
        Err(kind) => effects.push(Effect::Reply {
            link,
            item: Item::Reply(tag, Reply::Error(kind)),
            durable: false,
        }),
    }
}

/// [`answer_sent`] for one of a binary client's direct messages: its answer is by
/// correlation id, never placed as a WebSocket client's is, so nothing is looked at (the
/// tag's check and the iterator of deliveries were about 50 instructions a message).
fn answer_direct(
    effects: &mut Vec<Effect>,
    link: &Arc<Link>,
    cid: u32,
    sent: Result<Effect, ErrorKind>,
) {
    let (reply, durable) = match &sent {
        Ok(_) => (Reply::Ok, true),
        Err(kind) => (Reply::Error(*kind), false),
    };
    effects.push(Effect::Reply {
        link: link.clone(),
        item: Item::Reply(Tag::Cid(cid), reply),
        durable,
    });
    if let Ok(delivery) = sent {
        effects.push(delivery);
    }
}

pub(super) fn internal(e: anyhow::Error) -> ErrorKind {
    error!(error = %format!("{e:#}"), "store read failed");
    ErrorKind::Internal
}
