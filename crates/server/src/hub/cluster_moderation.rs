//! Moderation on a cluster node: the rules are decided where the request arrives, as on
//! one node (moderation.rs, admin.rs), stored in PostgreSQL with the batch
//! (store/postgres/moderation.rs), and announced over NATS once committed; every other node
//! applies the announcement at once:
//! - a room's change: the room (members and rules) is read again from PostgreSQL, a user
//!   kicked or banned leaves it there too, and its sessions there get the same notice as on
//!   one node; a room deleted is taken out, its members and guests there told;
//! - a block: the blocker's list;
//! - an account disabled or deleted: its sessions there end, its logins are refused;
//! - a deleted message: its tombstone comes like any message, and is known for one by its
//!   empty body and the `deletions` row committed with it (`tombstone`).
//!
//! NATS is not the only way a change arrives: every batch that changes moderation counts in
//! `moderation_version` and logs its events by that count (`moderation_log`), which the
//! cluster tasks read at each reconciliation. A node that sees a count it has not applied
//! reads the log after its own and applies the events it has not heard yet — a change
//! made while NATS was away reaches its sessions as its event would have (a kick's or a
//! room deletion's notice), and a change heard on NATS costs one small read, not a read
//! of every rule. Each event carries a stamp, so it is applied once whichever way it
//! comes first. Only a node further behind than the log reads every rule again
//! (`moderation_read`), and whether the users online here are still members of their
//! rooms (a kick leaves no mark to read).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tracing::{debug, warn};

use super::core::{Audience, Core, Effect};
use super::moderation::RoomRules;
use super::Whom;
use crate::cluster::wire::Stamp;
use crate::cluster::Event;
use crate::outbound::{Delivery, Kill, ModerationChange, Notice, SharedNotice};
use crate::store::postgres::Moderation;
use crate::store::{Batch, ConvId, Tombstone, UserId, UserState};

impl Core {
    /// A change to room `room` made here: told to the other nodes once committed.
    pub(super) fn cluster_moderated(
        &mut self,
        conv: ConvId,
        room: &str,
        user: Option<UserId>,
        by: &str,
        change: &ModerationChange,
    ) {
        let topic = match change {
            ModerationChange::Topic(topic) => Some(topic.to_string()),
            _ => None,
        };
        let user_name = user.and_then(|u| self.users.get(&u)).map(|n| n.to_string());
        let event = Event::Moderation {
            conv,
            room: room.to_string(),
            user,
            user_name,
            by: by.to_string(),
            change: change.name().to_string(),
            topic,
            stamp: self.state().heard.stamp(),
        };
        self.state().events.push(event);
    }

    /// A block begun or ended here.
    pub(super) fn cluster_blocked(&mut self, user: UserId, other: UserId, on: bool) {
        let stamp = self.state().heard.stamp();
        let event = Event::Block {
            user,
            other,
            on,
            stamp,
        };
        self.state().events.push(event);
    }

    /// An operator's decision about an account, made here.
    pub(super) fn cluster_user_state(&mut self, user: UserId, disabled: bool, deleted: bool) {
        let name = self
            .users
            .get(&user)
            .map_or(String::new(), |n| n.to_string());
        let event = Event::UserState {
            user,
            name,
            disabled,
            deleted,
            stamp: self.state().heard.stamp(),
        };
        self.state().events.push(event);
    }

    /// The batch's moderation events go into its moderation log too (a node that misses
    /// one on NATS reads it there: `moderation_version`).
    pub(super) fn cluster_log(&mut self, batch: &mut Batch) {
        let Some(state) = self.cluster.as_ref() else {
            return;
        };
        for event in &state.events {
            if stamp_of(event).is_none() {
                continue;
            }
            match serde_json::to_string(event) {
                Ok(json) => batch.moderation_log.push(json),
                Err(e) => warn!(error = %e, "logging a moderation event"),
            }
        }
    }

    /// Reads room `name`'s rules (its owner is its creator, `creator`) from PostgreSQL into
    /// the cache.
    pub(super) fn cluster_rules(&mut self, name: &str, conv: ConvId) {
        let (owner, rules) = match self.pg().room_rules(conv) {
            Ok(found) => found,
            Err(e) => {
                return warn!(error = %format!("{e:#}"), room = name, "reading a room's rules")
            }
        };
        for (user, _) in &rules.marks {
            // Named in the room's details: the cache must know them.
            let _ = self.name_of(*user);
        }
        if let Some(room) = self.rooms.get_mut(name) {
            room.rules = RoomRules::stored(owner, rules.topic, rules.invite_only, &rules.marks);
        }
    }

    /// A moderation event another node published (over NATS, or read from the log): each
    /// applied once, whichever way it comes first.
    pub(super) fn moderation_event(&mut self, event: Event, effects: &mut Vec<Effect>) {
        let stamp = stamp_of(&event).unwrap_or(0);
        if !self.state().heard.first(stamp) {
            return debug!(stamp, "a moderation event applied already");
        }
        match event {
            Event::Moderation {
                conv,
                room,
                user,
                user_name,
                by,
                change,
                topic,
                ..
            } => {
                let change = (change.as_str(), topic);
                self.room_moderated(conv, &room, user, user_name, &by, change, effects)
            }
            Event::Block {
                user, other, on, ..
            } => {
                let list = self.blocked.entry(user).or_default();
                match on {
                    true => list.insert(other),
                    false => list.remove(&other),
                };
                if list.is_empty() {
                    self.blocked.remove(&user);
                }
            }
            Event::UserState {
                user,
                name,
                disabled,
                deleted,
                ..
            } => self.user_state_changed(user, &name, disabled, deleted, effects),
            _ => {}
        }
    }

    /// Room `room` changed on another node: read again, and told to its sessions here.
    #[allow(clippy::too_many_arguments)]
    fn room_moderated(
        &mut self,
        conv: ConvId,
        room: &str,
        user: Option<UserId>,
        user_name: Option<String>,
        by: &str,
        (change, topic): (&str, Option<String>),
        effects: &mut Vec<Effect>,
    ) {
        if let (Some(user), Some(name)) = (user, &user_name) {
            if !self.users.contains_key(&user) {
                self.learn_user(user, name, false);
            }
        }
        if change == "deleted" {
            // Gone from PostgreSQL: taken out here as the deleting node did (that node
            // wrote the rows; nothing is written here). Only that room: its name may be
            // another room's already.
            if self.rooms.get(room).is_some_and(|r| r.conv == conv) {
                let mut written_there = Batch::default();
                self.drop_room(room, Arc::from(by), 0, &mut written_there, effects);
            }
            return;
        }
        // Members and rules as PostgreSQL has them now.
        if let Err(kind) = self.cluster_room(room, None, false) {
            return debug!(?kind, room, "a moderation event for an unknown room");
        }
        let name = self.rooms[room].name.clone();
        let member = user.is_some_and(|u| self.rooms[room].members.contains(&u));
        if let (Some(user), false) = (user, member) {
            // Kicked or banned: the room is no longer among theirs here.
            if let Some(list) = self.memberships.get_mut(&user) {
                list.retain(|m| m.conv != conv);
            }
        }
        let Some(change) = moderation_change(change, topic) else {
            return debug!(change, "a moderation event of an unknown change");
        };
        let invited = change == ModerationChange::Invited;
        let notice = Notice::Moderation {
            room: name.clone(),
            user: user.and_then(|u| self.users.get(&u).cloned()),
            by: Arc::from(by),
            change,
        };
        let notice = Arc::new(SharedNotice::new(notice));
        if let (Some(user), false) = (user, member) {
            effects.push(Effect::Notify {
                notice: notice.clone(),
                audience: Audience::User(user),
                except: 0,
            });
        }
        if !invited {
            effects.push(Effect::Notify {
                notice,
                audience: Audience::Room(name),
                except: 0,
            });
        }
    }

    /// An account disabled, enabled or deleted on another node.
    fn user_state_changed(
        &mut self,
        user: UserId,
        name: &str,
        disabled: bool,
        deleted: bool,
        effects: &mut Vec<Effect>,
    ) {
        if !self.users.contains_key(&user) {
            self.learn_user(user, name, true);
        }
        if !(disabled || deleted) {
            self.disabled.remove(&user);
            return;
        }
        self.disabled.insert(user);
        self.end_user_sessions(user, effects);
        if deleted {
            for room in self.rooms.values_mut() {
                room.members.remove(&user);
            }
            self.memberships.remove(&user);
            self.contacts.remove(&user);
            for theirs in self.contacts.values_mut() {
                theirs.remove(&user);
            }
            self.forget_name(user);
        }
    }

    /// Ends every session of `user` here, as an operator's disabling does.
    fn end_user_sessions(&mut self, user: UserId, effects: &mut Vec<Effect>) {
        let Some(name) = self.users.get(&user).map(|n| n.to_string()) else {
            return;
        };
        if !self.online.contains_key(&user) {
            return;
        }
        let target = Whom::User { name, device: None };
        if let Err(kind) = self.end_sessions(&target, Kill::Disabled, effects) {
            debug!(?kind, user, "ending a disabled user's sessions");
        }
    }

    /// Notes the count of moderation's changes that the start read first (`load`): a
    /// later one is read again, even one made while the start went on.
    pub(super) fn moderation_start(&mut self) -> anyhow::Result<()> {
        let version = match self.pg().moderation_loaded {
            Some(version) => version,
            None => self.pg().moderation_version()?,
        };
        self.moderation_seen(version);
        Ok(())
    }

    fn moderation_seen(&mut self, version: i64) {
        self.state().moderation_seen = version;
        let gauge = &self.monitor.metrics.cluster_moderation_version;
        gauge.set(version as f64);
    }

    /// The reconciliation's count of moderation's changes: if it is past the one this
    /// node last read, the events logged since are applied (those not heard on NATS yet:
    /// a change made elsewhere while NATS was away is told here as its event would have
    /// told it); if the log lacks some of them, moderation is read whole again.
    pub(super) fn moderation_version(&mut self, version: i64, effects: &mut Vec<Effect>) {
        let seen = self.state().moderation_seen;
        if seen == version {
            return;
        }
        if seen >= 0 && version > seen && self.moderation_replay(seen, version, effects) {
            return;
        }
        self.moderation_read(effects);
    }

    /// Applies the events logged after `seen` (up to `version` at least); false if the
    /// log does not hold them all.
    fn moderation_replay(&mut self, seen: i64, version: i64, effects: &mut Vec<Effect>) -> bool {
        let rows = match self.pg().moderation_log_after(seen, LOG_PAGE) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the moderation log");
                return false;
            }
        };
        // Every version after `seen`: one not logged (dropped as old, or counted by a
        // migration) means reading everything.
        let whole = rows.first().is_some_and(|(v, _)| *v == seen + 1)
            && rows.windows(2).all(|w| w[1].0 == w[0].0 + 1)
            && rows.last().is_some_and(|(v, _)| *v >= version);
        if !whole {
            debug!(seen, version, "the moderation log lacks some versions");
            return false;
        }
        for (at, events) in rows {
            let events: Vec<Event> = match serde_json::from_str(&events) {
                Ok(events) => events,
                Err(e) => {
                    warn!(error = %e, version = at, "a moderation log entry unread");
                    return false;
                }
            };
            for event in events {
                self.moderation_event(event, effects);
            }
            self.moderation_seen(at);
        }
        true
    }

    /// Reads all of moderation again, replacing what this node held.
    fn moderation_read(&mut self, effects: &mut Vec<Effect>) {
        let mut read = match self.pg().moderation() {
            Ok(read) => read,
            Err(e) => return warn!(error = %format!("{e:#}"), "reading moderation"),
        };
        // This batch's own changes are not committed yet, so PostgreSQL does not show
        // them: they are kept as the batch made them (as `cluster_room` keeps its joins).
        let state = self.state();
        let ruled = keep_own(&mut read, &state.events, &state.ruled_now);
        debug!(version = read.version, "moderation read again");
        self.monitor.metrics.cluster_moderation_reads.increment(1);
        self.moderation_seen(read.version);
        self.blocked.clear();
        for (user, other) in read.blocks {
            self.blocked.entry(user).or_default().insert(other);
        }
        // Operators' decisions replace what this node held: one enabled meanwhile is
        // enabled here too.
        let before = std::mem::take(&mut self.disabled);
        for (user, state) in read.user_states {
            if !(state.disabled || state.deleted) {
                continue;
            }
            self.disabled.insert(user);
            if !before.contains(&user) {
                self.end_user_sessions(user, effects);
            }
            if state.deleted && self.users.contains_key(&user) {
                self.forget_name(user);
            }
        }
        let mut rules = read.rules;
        for room in self.rooms.values_mut() {
            if ruled.contains(&room.conv) {
                continue;
            }
            let found = rules.remove(&room.conv).unwrap_or_default();
            let owner = room.rules.owner;
            room.rules = RoomRules::stored(owner, found.topic, found.invite_only, &found.marks);
            // A ban takes its user out (the ban's batch removed the membership too).
            let banned = &room.rules.banned;
            room.members.retain(|u| !banned.contains(u));
        }
        self.members_again();
    }

    /// A kick leaves no mark to read: which users online here are still members of their
    /// rooms is read again, one query for all of them, and those no longer are leave the
    /// room here (memberships begun in this batch, not committed yet, stay).
    fn members_again(&mut self) {
        let online = &self.online;
        let rooms: Vec<ConvId> = self
            .rooms
            .values()
            .filter(|r| r.members.iter().any(|u| online.contains_key(u)))
            .map(|r| r.conv)
            .collect();
        let users: Vec<UserId> = online.keys().copied().collect();
        if rooms.is_empty() {
            return;
        }
        let held: std::collections::HashSet<(ConvId, UserId)> =
            match self.pg().members_among(&users, &rooms) {
                Ok(held) => held.into_iter().collect(),
                Err(e) => return warn!(error = %format!("{e:#}"), "reading memberships"),
            };
        let now = std::mem::take(&mut self.state().joined_now);
        let mut gone: Vec<(ConvId, UserId)> = Vec::new();
        for room in self.rooms.values_mut() {
            if !rooms.contains(&room.conv) {
                continue;
            }
            let conv = room.conv;
            room.members.retain(|u| {
                let keep = !self.online.contains_key(u)
                    || held.contains(&(conv, *u))
                    || now.contains(&(conv, *u));
                if !keep {
                    gone.push((conv, *u));
                }
                keep
            });
        }
        self.state().joined_now = now;
        for (conv, user) in gone {
            debug!(conv, user, "no longer a member (read again)");
            if let Some(list) = self.memberships.get_mut(&user) {
                list.retain(|m| m.conv != conv);
            }
        }
    }

    /// A message another node committed (or read back from PostgreSQL), as delivered: a
    /// deletion's tombstone if it says it is one; one written before messages said (an
    /// earlier parley's) may be one if it is empty, which PostgreSQL says (`deletions`).
    pub(super) fn cluster_tombstone(&mut self, delivery: Delivery, said: Tombstone) -> Delivery {
        let unknown = match said {
            Tombstone::Of(id, seq) => return delivery.deleting(id, seq),
            Tombstone::No => return delivery,
            Tombstone::Unknown => delivery,
        };
        if !unknown.body.is_empty() || unknown.deletes.is_some() {
            return unknown;
        }
        let delivery = unknown;
        self.monitor.metrics.cluster_tombstone_reads.increment(1);
        match self.pg().tombstone(delivery.id) {
            Ok(Some((id, seq))) => delivery.deleting(id, seq),
            Ok(None) => delivery,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading whether a message is a tombstone");
                delivery
            }
        }
    }
}

/// Applies this batch's own moderation changes (`events`, made here and not committed yet)
/// to `read`, a read of PostgreSQL that cannot show them: its blocks and accounts' states
/// on top; returns the rooms whose rules it changed (its `Moderation` events, and
/// `ruled_now`: marks and settings, an invitation used up at a join included), whose
/// rules the hub keeps as it holds them.
fn keep_own(read: &mut Moderation, events: &[Event], ruled_now: &[ConvId]) -> HashSet<ConvId> {
    let mut ruled: HashSet<ConvId> = ruled_now.iter().copied().collect();
    for event in events {
        match *event {
            Event::Block {
                user, other, on, ..
            } => {
                read.blocks.retain(|b| *b != (user, other));
                if on {
                    read.blocks.push((user, other));
                }
            }
            Event::UserState {
                user,
                disabled,
                deleted,
                ..
            } => {
                read.user_states.retain(|(u, _)| *u != user);
                let state = UserState {
                    disabled: disabled || deleted,
                    deleted,
                };
                read.user_states.push((user, state));
            }
            Event::Moderation { conv, .. } => {
                ruled.insert(conv);
            }
            _ => {}
        }
    }
    ruled
}

/// Log entries read at a reconciliation at most: a node further behind reads moderation
/// whole.
const LOG_PAGE: i64 = 256;

/// A moderation event's stamp (`None`: not a moderation event).
fn stamp_of(event: &Event) -> Option<Stamp> {
    match event {
        Event::Moderation { stamp, .. }
        | Event::Block { stamp, .. }
        | Event::UserState { stamp, .. } => Some(*stamp),
        _ => None,
    }
}

/// Moderation events applied here, by stamp: one that comes both over NATS and from the
/// log (a reconciliation reads the log after every change) is applied once. The newest
/// are kept: an event comes both ways within a reconciliation or two.
pub(crate) struct Heard {
    /// The last stamp given to an event made here.
    last: Stamp,
    applied: HashSet<Stamp>,
    order: VecDeque<Stamp>,
}

/// Stamps remembered.
const HEARD_KEPT: usize = 4096;

impl Heard {
    pub fn new() -> Heard {
        // A random start: nodes never give the same stamp (but by a 64-bit chance).
        let mut random = [0; 8];
        if let Err(e) = getrandom::getrandom(&mut random) {
            warn!(error = %e, "no randomness: moderation stamps start from the clock");
            random = (crate::store::now_ms() as u64).to_le_bytes();
        }
        Heard {
            last: u64::from_le_bytes(random),
            applied: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// A stamp for an event made here (never 0), applied already.
    fn stamp(&mut self) -> Stamp {
        self.last = self.last.wrapping_add(1).max(1);
        self.first(self.last);
        self.last
    }

    /// Whether `stamp` is new here (remembered from now on); an unstamped event always is.
    fn first(&mut self, stamp: Stamp) -> bool {
        if stamp == 0 {
            return true;
        }
        if !self.applied.insert(stamp) {
            return false;
        }
        self.order.push_back(stamp);
        if self.order.len() > HEARD_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.applied.remove(&old);
            }
        }
        true
    }
}

/// The change a moderation event names (`ModerationChange::name`).
fn moderation_change(name: &str, topic: Option<String>) -> Option<ModerationChange> {
    Some(match name {
        "invited" => ModerationChange::Invited,
        "kicked" => ModerationChange::Kicked,
        "banned" => ModerationChange::Banned,
        "unbanned" => ModerationChange::Unbanned,
        "muted" => ModerationChange::Muted,
        "unmuted" => ModerationChange::Unmuted,
        "opped" => ModerationChange::Opped,
        "deopped" => ModerationChange::Deopped,
        "deleted" => ModerationChange::Deleted,
        "topic" => ModerationChange::Topic(Arc::from(topic.unwrap_or_default())),
        "invite_only" => ModerationChange::InviteOnly(true),
        "open" => ModerationChange::InviteOnly(false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_reads_back_from_its_name() {
        let all = [
            ModerationChange::Invited,
            ModerationChange::Kicked,
            ModerationChange::Banned,
            ModerationChange::Unbanned,
            ModerationChange::Muted,
            ModerationChange::Unmuted,
            ModerationChange::Opped,
            ModerationChange::Deopped,
            ModerationChange::Deleted,
            ModerationChange::Topic(Arc::from("news")),
            ModerationChange::InviteOnly(true),
            ModerationChange::InviteOnly(false),
        ];
        for change in all {
            let topic = match &change {
                ModerationChange::Topic(t) => Some(t.to_string()),
                _ => None,
            };
            assert_eq!(moderation_change(change.name(), topic), Some(change));
        }
        assert_eq!(moderation_change("promoted", None), None);
    }

    #[test]
    fn a_read_keeps_the_batch_own_changes() {
        let disabled = UserState {
            disabled: true,
            deleted: false,
        };
        // As PostgreSQL has it before the batch's commit.
        let mut read = Moderation {
            version: 3,
            user_states: vec![(5, disabled)],
            blocks: vec![(1, 2)],
            rules: Default::default(),
        };
        let block = |other, on| Event::Block {
            user: 1,
            other,
            on,
            stamp: 1,
        };
        let state = |user, disabled| Event::UserState {
            user,
            name: String::new(),
            disabled,
            deleted: false,
            stamp: 2,
        };
        let kick = Event::Moderation {
            conv: 9,
            room: "#r".into(),
            user: Some(5),
            user_name: None,
            by: "alice".into(),
            change: "kicked".into(),
            topic: None,
            stamp: 3,
        };
        let online = Event::Offline {
            user: 7,
            name: "x".into(),
        };
        let events = [
            block(2, false),
            block(3, true),
            state(5, false),
            state(6, true),
            kick,
            online,
        ];
        let ruled = keep_own(&mut read, &events, &[4]);
        assert_eq!(read.blocks, [(1, 3)]);
        let enabled = UserState::default();
        assert_eq!(read.user_states, [(5, enabled), (6, disabled)]);
        assert_eq!(ruled, HashSet::from([4, 9]));
    }
}
