//! Moderation in the hub: who may do what in a room, what they did, and blocks between
//! users.
//!
//! A room's owner is its creator; the owner makes operators. An operator (or the owner)
//! sets the topic, makes the room invite-only, invites, kicks, bans, mutes, and deletes
//! others' messages; anyone deletes their own. A user acts only on users ranked below them
//! (member < operator < owner < server operator), so an operator cannot kick the owner nor
//! another operator. Server operators (`operators` in the config, accounts only: a
//! password-less login of the same name is never one) rank above every owner, in every
//! room. Everything is decided here, by the one writer, and stored with the batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use parley_proto::{ConversationKind, ErrorKind};

use super::core::{internal, Audience, Core, Effect, Room};
use super::{Identity, Map, RoomAction, RoomDetails, Set};
use crate::outbound::{Delivery, Item, Link, ModerationChange, Notice, SharedNotice, Style};
use crate::store::{Batch, ConvId, Deletion, Mark, MarkChange, NewMessage, RoomSetting, UserId};

/// What a room holds beyond its members: its owner, settings and marks.
#[derive(Default)]
pub(super) struct RoomRules {
    pub owner: Option<UserId>,
    pub topic: Option<Arc<str>>,
    pub invite_only: bool,
    pub operators: Set<UserId>,
    pub banned: Set<UserId>,
    pub muted: Set<UserId>,
    pub invited: Set<UserId>,
}

impl RoomRules {
    /// The rules as stored: `owner`, settings, and marks.
    pub fn stored(
        owner: Option<UserId>,
        topic: Option<String>,
        invite_only: bool,
        marks: &[(UserId, Mark)],
    ) -> RoomRules {
        let mut rules = RoomRules {
            owner,
            topic: topic.map(Arc::from),
            invite_only,
            ..RoomRules::default()
        };
        for &(user, mark) in marks {
            rules.marks(mark).insert(user);
        }
        rules
    }

    fn marks(&mut self, mark: Mark) -> &mut Set<UserId> {
        match mark {
            Mark::Operator => &mut self.operators,
            Mark::Banned => &mut self.banned,
            Mark::Muted => &mut self.muted,
            Mark::Invited => &mut self.invited,
        }
    }
}

/// How far a user's word goes in a room, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    Member,
    Operator,
    Owner,
    /// One of the server's operators (`operators` in the config).
    Server,
}

impl Rank {
    /// How the protocols name it.
    pub fn name(self) -> &'static str {
        match self {
            Rank::Member => "member",
            Rank::Operator => "operator",
            Rank::Owner => "owner",
            Rank::Server => "server-operator",
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A message to delete, as the session found it in the store.
#[derive(Debug, Clone)]
pub struct Doomed {
    pub conv: ConvId,
    pub kind: ConversationKind,
    /// Where it is: the room, the other user of a direct conversation, or `*`.
    pub target: String,
    pub id: i64,
    pub seq: i64,
    /// Its sender's name.
    pub author: Arc<str>,
}

impl Core {
    /// Whether `user` is one of the server's operators: named in the config, and an account.
    pub(super) fn is_server_operator(&self, user: UserId) -> bool {
        !self.server_operators.is_empty()
            && self.accounts.contains(&user)
            && self
                .users
                .get(&user)
                .is_some_and(|name| self.server_operators.contains(&**name))
    }

    pub(super) fn rank(&self, user: UserId, room: &Room) -> Rank {
        if self.is_server_operator(user) {
            Rank::Server
        } else if room.rules.owner == Some(user) {
            Rank::Owner
        } else if room.rules.operators.contains(&user) {
            Rank::Operator
        } else {
            Rank::Member
        }
    }

    /// Whether `blocker` blocks `user`.
    pub(super) fn blocks(&self, blocker: UserId, user: UserId) -> bool {
        self.blocked
            .get(&blocker)
            .is_some_and(|b| b.contains(&user))
    }

    /// Loads every block (at start).
    pub(super) fn load_blocks(&mut self) -> anyhow::Result<()> {
        self.blocked.clear();
        for (user, other) in self.store_blocks()? {
            self.blocked.entry(user).or_default().insert(other);
        }
        Ok(())
    }

    /// Whether a join of `user` (a guest: `None`) is refused by the room's rules; a join
    /// that an invitation allows uses it up.
    pub(super) fn may_join(
        &mut self,
        user: Option<UserId>,
        room: &str,
        batch: &mut Batch,
    ) -> Result<(), ErrorKind> {
        let Some(entry) = self.rooms.get(room) else {
            return Ok(());
        };
        let Some(user) = user else {
            return match entry.rules.invite_only {
                true => Err(ErrorKind::InviteOnly),
                false => Ok(()),
            };
        };
        let rank = self.rank(user, entry);
        // Only a higher rank bans: whoever is banned stays out, owner or not.
        if entry.rules.banned.contains(&user) {
            return Err(ErrorKind::Banned);
        }
        if entry.rules.invite_only && rank < Rank::Operator {
            if !entry.rules.invited.contains(&user) {
                return Err(ErrorKind::InviteOnly);
            }
            let conv = entry.conv;
            self.set_mark(room, conv, user, Mark::Invited, false, user, batch);
        }
        Ok(())
    }

    /// Whether `user` may speak in `room` (muted users may not: only a higher rank mutes).
    pub(super) fn may_speak(&self, user: UserId, room: &Room) -> Result<(), ErrorKind> {
        match room.rules.muted.contains(&user) {
            true => Err(ErrorKind::Muted),
            false => Ok(()),
        }
    }

    /// `actor` (`None`: the server's administrator, who may do anything) does `action` in
    /// `room`.
    pub(super) fn moderate(
        &mut self,
        link: Option<&Link>,
        actor: Option<Identity>,
        room: &str,
        action: RoomAction,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<(), ErrorKind> {
        if self.cluster.is_some() {
            // Made on another node, or changed there: as PostgreSQL has it now.
            self.cluster_room(room, None, false)?;
        }
        let entry = self.rooms.get(room).ok_or(ErrorKind::RoomNotFound)?;
        let (conv, name) = (entry.conv, entry.name.clone());
        let rank = actor.map_or(Rank::Server, |a| self.rank(a.user, entry));
        let needed = match action {
            RoomAction::Op(_) | RoomAction::Deop(_) | RoomAction::Delete => Rank::Owner,
            _ => Rank::Operator,
        };
        if rank < needed {
            return Err(ErrorKind::NotOperator);
        }
        let by_user = actor.map_or(self.anonymous, |a| a.user);
        let by = match actor {
            Some(a) => self.users[&a.user].clone(),
            None => Arc::from("server"),
        };
        let except = link.map_or(0, |l| l.id);
        let change = match action {
            RoomAction::Topic(topic) => {
                let topic = topic.filter(|t| !t.is_empty());
                batch
                    .room_settings
                    .push((conv, RoomSetting::Topic(topic.clone())));
                if let Some(state) = self.cluster.as_mut() {
                    state.ruled_now.push(conv);
                }
                let topic: Option<Arc<str>> = topic.map(Arc::from);
                self.room_mut(room).rules.topic = topic.clone();
                ModerationChange::Topic(topic.unwrap_or_else(|| Arc::from("")))
            }
            RoomAction::InviteOnly(on) => {
                batch
                    .room_settings
                    .push((conv, RoomSetting::InviteOnly(on)));
                if let Some(state) = self.cluster.as_mut() {
                    state.ruled_now.push(conv);
                }
                self.room_mut(room).rules.invite_only = on;
                ModerationChange::InviteOnly(on)
            }
            RoomAction::Delete => {
                if self.cluster.is_some() {
                    self.cluster_moderated(conv, &name, None, &by, &ModerationChange::Deleted);
                }
                self.drop_room(room, by, except, batch, effects);
                return Ok(());
            }
            RoomAction::Invite(ref target)
            | RoomAction::Kick(ref target)
            | RoomAction::Ban(ref target)
            | RoomAction::Unban(ref target)
            | RoomAction::Mute(ref target)
            | RoomAction::Unmute(ref target)
            | RoomAction::Op(ref target)
            | RoomAction::Deop(ref target) => {
                let user = self.user_named(target)?;
                let entry = &self.rooms[room];
                let target_rank = self.rank(user, entry);
                // Everything done to a user but inviting and making an operator is done
                // only to lower ranks (so nobody unmutes themself, either).
                let acts_on = !matches!(action, RoomAction::Invite(_) | RoomAction::Op(_));
                if acts_on && target_rank >= rank {
                    return Err(ErrorKind::NotOperator);
                }
                let member = entry.members.contains(&user);
                let change = match action {
                    RoomAction::Invite(_) if entry.rules.banned.contains(&user) => {
                        return Err(ErrorKind::Banned)
                    }
                    RoomAction::Invite(_) => {
                        self.set_mark(room, conv, user, Mark::Invited, true, by_user, batch);
                        ModerationChange::Invited
                    }
                    RoomAction::Kick(_) if !member => return Err(ErrorKind::NotMember),
                    RoomAction::Kick(_) => {
                        self.remove_member(room, user, batch);
                        ModerationChange::Kicked
                    }
                    RoomAction::Ban(_) => {
                        if member {
                            self.remove_member(room, user, batch);
                        }
                        for (mark, set) in [
                            (Mark::Banned, true),
                            (Mark::Operator, false),
                            (Mark::Invited, false),
                        ] {
                            self.set_mark(room, conv, user, mark, set, by_user, batch);
                        }
                        ModerationChange::Banned
                    }
                    RoomAction::Unban(_) => {
                        self.set_mark(room, conv, user, Mark::Banned, false, by_user, batch);
                        ModerationChange::Unbanned
                    }
                    RoomAction::Mute(_) => {
                        self.set_mark(room, conv, user, Mark::Muted, true, by_user, batch);
                        ModerationChange::Muted
                    }
                    RoomAction::Unmute(_) => {
                        self.set_mark(room, conv, user, Mark::Muted, false, by_user, batch);
                        ModerationChange::Unmuted
                    }
                    RoomAction::Op(_) => {
                        self.set_mark(room, conv, user, Mark::Operator, true, by_user, batch);
                        ModerationChange::Opped
                    }
                    RoomAction::Deop(_) => {
                        self.set_mark(room, conv, user, Mark::Operator, false, by_user, batch);
                        ModerationChange::Deopped
                    }
                    RoomAction::Topic(_) | RoomAction::InviteOnly(_) | RoomAction::Delete => {
                        unreachable!("handled above")
                    }
                };
                if self.cluster.is_some() {
                    self.cluster_moderated(conv, &name, Some(user), &by, &change);
                }
                // The user acted on is told too, member or not (a kicked or banned user is
                // no longer one; an invited one is not yet).
                let invited = change == ModerationChange::Invited;
                let notice = Notice::Moderation {
                    room: name.clone(),
                    user: Some(self.users[&user].clone()),
                    by: by.clone(),
                    change,
                };
                let notice = Arc::new(SharedNotice::new(notice));
                let still_member = self.rooms[room].members.contains(&user);
                if !still_member {
                    effects.push(Effect::Notify {
                        notice: notice.clone(),
                        audience: Audience::User(user),
                        except,
                    });
                }
                if invited {
                    return Ok(());
                }
                effects.push(Effect::Notify {
                    notice,
                    audience: Audience::Room(name),
                    except,
                });
                return Ok(());
            }
        };
        if self.cluster.is_some() {
            self.cluster_moderated(conv, &name, None, &by, &change);
        }
        let notice = Notice::Moderation {
            room: name.clone(),
            user: None,
            by,
            change,
        };
        effects.push(Effect::Notify {
            notice: Arc::new(SharedNotice::new(notice)),
            audience: Audience::Room(name),
            except,
        });
        Ok(())
    }

    /// The user named `name` (never the anonymous one; in a cluster, maybe one this node
    /// has not met yet).
    fn user_named(&mut self, name: &str) -> Result<UserId, ErrorKind> {
        match self.find_name(name.as_bytes()) {
            Some((_, user)) if user != self.anonymous => Ok(user),
            _ => Err(ErrorKind::UserNotFound),
        }
    }

    fn room_mut(&mut self, room: &str) -> &mut Room {
        self.rooms.get_mut(room).expect("looked up by the caller")
    }

    /// Sets or clears a mark of `user` in `room`, in memory and in the batch.
    #[allow(clippy::too_many_arguments)]
    fn set_mark(
        &mut self,
        room: &str,
        conv: ConvId,
        user: UserId,
        mark: Mark,
        set: bool,
        by: UserId,
        batch: &mut Batch,
    ) {
        let marks = self.room_mut(room).rules.marks(mark);
        let changed = match set {
            true => marks.insert(user),
            false => marks.remove(&user),
        };
        if changed {
            if let Some(state) = self.cluster.as_mut() {
                state.ruled_now.push(conv);
            }
            batch.room_marks.push(MarkChange {
                conv,
                user,
                mark,
                set,
                by,
            });
        }
    }

    /// Takes `user` out of `room`'s members (a kick or a ban).
    fn remove_member(&mut self, room: &str, user: UserId, batch: &mut Batch) {
        let entry = self.room_mut(room);
        entry.members.remove(&user);
        let conv = entry.conv;
        batch.leave(user, conv);
        self.cluster_left(conv, user);
        if let Some(list) = self.memberships.get_mut(&user) {
            list.retain(|m| m.conv != conv);
        }
    }

    /// Deletes `room`: its members are told, its rows go, its messages stay in the log
    /// where nobody reaches them. Its name may be taken again.
    pub(super) fn drop_room(
        &mut self,
        room: &str,
        by: Arc<str>,
        except: u64,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        let name = entry.name.clone();
        // Each member is told by name: the room is gone when the notice is sent.
        let notice = Notice::Moderation {
            room: name.clone(),
            user: None,
            by,
            change: ModerationChange::Deleted,
        };
        let notice = Arc::new(SharedNotice::new(notice));
        let members: Vec<UserId> = entry.members.iter().copied().collect();
        for user in &members {
            effects.push(Effect::Notify {
                notice: notice.clone(),
                audience: Audience::User(*user),
                except,
            });
        }
        let entry = self.rooms.remove(room).expect("found above");
        // Anonymous sessions in it are told by their link: the room is gone when the
        // notice goes out. They stay connected (and counted) outside it.
        for guest in &entry.guests {
            let style = Style::from_u8(guest.style.load(Ordering::Relaxed));
            if guest.id != except && style.shows(&notice.notice) {
                effects.push(Effect::Reply {
                    link: guest.clone(),
                    item: Item::Notice(notice.clone()),
                    durable: true,
                });
            }
        }
        for user in members {
            if let Some(list) = self.memberships.get_mut(&user) {
                list.retain(|m| m.conv != entry.conv);
            }
        }
        self.room_order.remove(&name);
        self.room_lookalikes.release(&name);
        // Its row stays, nameless (schema 8), so its id is never handed out again.
        batch.rooms_deleted.push(entry.conv);
    }

    /// `room` as `user` (if logged in) sees it.
    pub(super) fn room_details(
        &mut self,
        room: &str,
        user: Option<UserId>,
    ) -> Result<RoomDetails, ErrorKind> {
        if self.cluster.is_some() && !self.rooms.contains_key(room) {
            // Made on another node, and nobody here has been in it yet.
            self.cluster_room(room, None, false)?;
        }
        let entry = self.rooms.get(room).ok_or(ErrorKind::RoomNotFound)?;
        let names = |set: &Set<UserId>| {
            let mut list: Vec<Arc<str>> = set.iter().map(|u| self.users[u].clone()).collect();
            list.sort();
            list
        };
        let rank = user.map(|u| match entry.members.contains(&u) {
            true => self.rank(u, entry),
            false => self.rank(u, entry).max(Rank::Member),
        });
        Ok(RoomDetails {
            name: entry.name.clone(),
            topic: entry.rules.topic.clone(),
            invite_only: entry.rules.invite_only,
            owner: entry.rules.owner.map(|u| self.users[&u].clone()),
            operators: names(&entry.rules.operators),
            banned: names(&entry.rules.banned),
            muted: names(&entry.rules.muted),
            rank: rank.unwrap_or(Rank::Member),
            member: user.is_some_and(|u| entry.members.contains(&u)),
        })
    }

    /// `user` starts or stops blocking `other`.
    pub(super) fn block(
        &mut self,
        user: UserId,
        other: &str,
        on: bool,
        batch: &mut Batch,
    ) -> Result<(), ErrorKind> {
        let other = self.user_named(other)?;
        if other == user {
            return Err(ErrorKind::UserNotFound);
        }
        let list = self.blocked.entry(user).or_default();
        let changed = match on {
            true => list.insert(other),
            false => list.remove(&other),
        };
        if list.is_empty() {
            self.blocked.remove(&user);
        }
        if changed {
            batch.blocks.push((user, other, on));
            if self.cluster.is_some() {
                self.cluster_blocked(user, other, on);
            }
        }
        Ok(())
    }

    /// The users `user` blocks, sorted.
    pub(super) fn blocked_by(&self, user: UserId) -> Vec<Arc<str>> {
        let mut list: Vec<Arc<str>> = self
            .blocked
            .get(&user)
            .into_iter()
            .flatten()
            .map(|u| self.users[u].clone())
            .collect();
        list.sort();
        list
    }

    /// Deletes a message: its author, an operator of its room, or a server operator may.
    /// The deletion is a tombstone appended to the conversation, delivered like a message.
    pub(super) fn delete_message(
        &mut self,
        link: &Link,
        actor: Identity,
        doomed: Doomed,
        batch: &mut Batch,
    ) -> Result<Option<Effect>, ErrorKind> {
        if self.cluster.is_some() && doomed.kind == ConversationKind::Room {
            // As PostgreSQL has the room now (its rules may have changed elsewhere).
            self.cluster_room(&doomed.target, None, false)?;
        }
        let me = self.users[&actor.user].clone();
        let audience = match doomed.kind {
            ConversationKind::Room => {
                let room = self.rooms.get(doomed.target.as_str());
                let room = room
                    .filter(|r| r.conv == doomed.conv)
                    .ok_or(ErrorKind::RoomNotFound)?;
                let rank = self.rank(actor.user, room);
                if *doomed.author != *me && rank < Rank::Operator {
                    return Err(ErrorKind::NotOperator);
                }
                Audience::Room(room.name.clone())
            }
            ConversationKind::Direct => {
                let other = self.user_named(&doomed.target)?;
                if *doomed.author != *me && !self.is_server_operator(actor.user) {
                    return Err(ErrorKind::NotOperator);
                }
                Audience::Direct(actor.user.min(other), actor.user.max(other))
            }
            ConversationKind::Broadcast => {
                if *doomed.author != *me && !self.is_server_operator(actor.user) {
                    return Err(ErrorKind::NotOperator);
                }
                Audience::Everyone
            }
        };
        let again = batch.deletions.iter().any(|d| d.message == doomed.id);
        if again || self.store_is_deleted(doomed.id).map_err(internal)? {
            // Deleted already: nothing more to announce.
            return Ok(None);
        }
        let seq = self.next_seq(doomed.conv).map_err(internal)?;
        let id = self.next.message;
        self.next.message += 1;
        let sent_at = crate::store::now_ms() as u64 * 1_000_000;
        batch.messages.push(NewMessage {
            id,
            conv: doomed.conv,
            seq,
            sender: actor.user,
            sender_device: actor.device,
            body: Bytes::new(),
            sent_at,
            received_at: self.batch_time,
        });
        batch.deletions.push(Deletion {
            message: doomed.id,
            conv: doomed.conv,
            seq: doomed.seq,
            tombstone: id,
            by: actor.user,
            at: self.batch_time,
        });
        let to: Arc<str> = Arc::from(doomed.target.as_str());
        let delivery = Delivery::new(
            id,
            doomed.conv,
            seq,
            doomed.kind,
            me,
            to,
            Bytes::new(),
            sent_at,
        )
        .deleting(doomed.id, doomed.seq);
        Ok(Some(Effect::Deliver {
            delivery: Arc::new(delivery),
            audience,
            from: (actor.device, link.id),
        }))
    }
}

/// Blocks per user, as the hub holds them: who each user blocks.
pub(super) type Blocked = Map<UserId, Set<UserId>>;
