//! Rooms in the hub: joining, leaving, listing; members are users (persistent, they get
//! what they missed at their next login) or anonymous sessions (until they disconnect).

use std::net::IpAddr;
use std::sync::Arc;

use parley_proto::ErrorKind;
use tracing::warn;

use super::core::{internal, Audience, Core, Effect, FreshJoin, FreshLeave, Joiner, Room};
use super::moderation::RoomRules;
use super::{Actor, RoomInfo, Set, ANONYMOUS};
use crate::outbound::{Link, Notice, SharedNotice};
use crate::store::{Batch, ConvId, Seq, UserId};

impl Core {
    /// Joins `room` (creating it). Members see `joined`.
    pub(super) fn join_room(
        &mut self,
        link: &Arc<Link>,
        actor: Actor,
        room: &str,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<(), ErrorKind> {
        if self.cluster.is_some() && !self.rooms.contains_key(room) {
            // Another node may have made it; else it is made here, at once (hub/cluster.rs).
            if let Err(ErrorKind::RoomNotFound) = self.cluster_room(room, None, false) {
                let creator = match &actor {
                    Actor::Member(identity) => Some(identity.user),
                    Actor::Guest => None,
                };
                self.count_new_room(creator, link.peer())?;
                self.cluster_room(room, creator, true)?;
            }
        }
        if !self.rooms.contains_key(room) {
            // A new room's name meets the name profile and looks like no other room's;
            // it is taken once the creator's room count allows it.
            let existing = || self.rooms.keys().map(|name| &**name);
            let lookalike = ErrorKind::InvalidName;
            let unique = self.room_lookalikes.check(room, existing, lookalike)?;
            let creator = match &actor {
                Actor::Member(identity) => Some(identity.user),
                Actor::Guest => None,
            };
            self.count_new_room(creator, link.peer())?;
            self.room_lookalikes.take(unique);
            let conv = self.new_conv_id();
            let name: Arc<str> = Arc::from(room);
            batch.rooms.push((conv, room.to_string(), creator));
            let new = Room {
                conv,
                name: name.clone(),
                members: Set::default(),
                guests: Vec::new(),
                rules: RoomRules {
                    owner: creator,
                    ..RoomRules::default()
                },
            };
            self.room_order.insert(name.clone());
            self.rooms.insert(name, new);
        }
        let conv = self.rooms[room].conv;
        // In a cluster the room is delivered here from now on (guests need it too).
        let at = match self.cluster {
            Some(_) => self.last_seq(conv).map_err(internal)?,
            None => 0,
        };
        let user = match actor {
            Actor::Member(identity) => identity.user,
            Actor::Guest => self.anonymous,
        };
        let entry = &self.rooms[room];
        let inside = match actor {
            Actor::Member(identity) => entry.members.contains(&identity.user),
            Actor::Guest => entry.guests.iter().any(|g| g.id == link.id),
        };
        if !inside {
            let member = matches!(actor, Actor::Member(_)).then_some(user);
            self.may_join(member, room, batch)?;
        }
        let who = match actor {
            Actor::Member(identity) => {
                if self.rooms[room].members.contains(&identity.user) {
                    return Ok(());
                }
                let joined_seq = self.last_seq(conv).map_err(internal)?;
                self.add_membership(identity.user, conv, joined_seq)
                    .map_err(internal)?;
                batch.join(identity.user, conv, joined_seq);
                self.fresh_joins.push(FreshJoin {
                    conv,
                    seq: joined_seq,
                    who: Joiner::Member(identity.user),
                    answer: usize::MAX,
                });
                let room = self.rooms.get_mut(room).expect("created above");
                room.members.insert(identity.user);
                self.users[&identity.user].clone()
            }
            Actor::Guest => {
                let entry = self.rooms.get_mut(room).expect("created above");
                if entry.guests.iter().any(|g| g.id == link.id) {
                    return Ok(());
                }
                entry.guests.push(link.clone());
                self.guests.insert(link.id, link.clone());
                let seq = match self.cluster {
                    Some(_) => {
                        // Its start, as a member's (hub/cluster.rs `relay_room`).
                        self.cluster_guest(conv, link.id, Some(at));
                        at
                    }
                    None => self.last_seq(conv).map_err(internal)?,
                };
                self.fresh_joins.push(FreshJoin {
                    conv,
                    seq,
                    who: Joiner::Guest(link.id),
                    answer: usize::MAX,
                });
                Arc::from(ANONYMOUS)
            }
        };
        if self.cluster.is_some() {
            self.cluster_room_event(conv, room, user, true, at);
        }
        let notice = Notice::Joined {
            room: self.rooms[room].name.clone(),
            name: who,
        };
        effects.push(Effect::Notify {
            notice: Arc::new(SharedNotice::new(notice)),
            audience: Audience::Room(self.rooms[room].name.clone()),
            except: link.id,
        });
        Ok(())
    }

    /// Leaves `room`. Members that remain see `left`.
    pub(super) fn leave_room(
        &mut self,
        link: &Link,
        actor: Actor,
        room: &str,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<(), ErrorKind> {
        let anonymous = self.anonymous;
        let entry = self.rooms.get_mut(room).ok_or(ErrorKind::RoomNotFound)?;
        let name = match actor {
            Actor::Member(identity) => {
                if !entry.members.remove(&identity.user) {
                    return Err(ErrorKind::NotMember);
                }
                batch.leave(identity.user, entry.conv);
                let conv = entry.conv;
                self.cluster_left(conv, identity.user);
                let mut start = 0;
                if let Some(list) = self.memberships.get_mut(&identity.user) {
                    start = list
                        .iter()
                        .find(|m| m.conv == conv)
                        .map_or(0, |m| m.joined_seq);
                    list.retain(|m| m.conv != conv);
                }
                self.left_now(conv, Joiner::Member(identity.user), start, effects.len());
                self.users[&identity.user].clone()
            }
            Actor::Guest => {
                let before = entry.guests.len();
                entry.guests.retain(|g| g.id != link.id);
                if entry.guests.len() == before {
                    return Err(ErrorKind::NotMember);
                }
                let conv = entry.conv;
                let start = self.cluster_guest(conv, link.id, None).unwrap_or(0);
                self.left_now(conv, Joiner::Guest(link.id), start, effects.len());
                self.users[&anonymous].clone()
            }
        };
        if self.cluster.is_some() {
            let (conv, user) = match actor {
                Actor::Member(identity) => (self.rooms[room].conv, identity.user),
                Actor::Guest => (self.rooms[room].conv, anonymous),
            };
            self.cluster_room_event(conv, room, user, false, 0);
        }
        let room = self.rooms[room].name.clone();
        let notice = Notice::Left {
            room: room.clone(),
            name,
        };
        effects.push(Effect::Notify {
            notice: Arc::new(SharedNotice::new(notice)),
            audience: Audience::Room(room),
            except: link.id,
        });
        Ok(())
    }

    /// `who` leaves room `conv` in this batch, a member since `start`, at `at` among the
    /// batch's effects: the room's messages before it still reach them (`FreshLeave`).
    fn left_now(&mut self, conv: ConvId, who: Joiner, start: Seq, at: usize) {
        // In a cluster, and what other nodes committed up to the leave, however late it
        // is relayed here (hub/cluster.rs; the leave stands if PostgreSQL cannot say).
        if self.cluster.is_some() {
            match self.last_seq(conv) {
                Ok(upto) => self.cluster_departed(conv, who, start, upto),
                Err(e) => warn!(error = %format!("{e:#}"), conv, "reading a room at a leave"),
            }
        }
        self.fresh_leaves.push(FreshLeave {
            conv,
            who,
            start,
            at,
        });
    }

    /// An anonymous session ended: it leaves every room it was in.
    pub(super) fn drop_guest_from_rooms(&mut self, link_id: u64, effects: &mut Vec<Effect>) {
        let mut left = Vec::new();
        for room in self.rooms.values_mut() {
            let before = room.guests.len();
            room.guests.retain(|g| g.id != link_id);
            if room.guests.len() != before {
                left.push((room.name.clone(), room.conv));
            }
        }
        for &(_, conv) in &left {
            self.cluster_guest(conv, link_id, None);
        }
        for (room, _) in left {
            let notice = Notice::Left {
                room: room.clone(),
                name: Arc::from(ANONYMOUS),
            };
            effects.push(Effect::Notify {
                notice: Arc::new(SharedNotice::new(notice)),
                audience: Audience::Room(room),
                except: link_id,
            });
        }
    }

    /// The rooms after `after`, sorted by name, at most `limit`, with member counts: what
    /// it shows is all it visits.
    pub(super) fn room_page(&self, after: &str, limit: usize) -> Vec<RoomInfo> {
        use std::ops::Bound;
        let from: (Bound<&str>, Bound<&str>) = (Bound::Excluded(after), Bound::Unbounded);
        let names = self.room_order.range::<str, _>(from).take(limit);
        let rooms = names.filter_map(|name| self.rooms.get(name));
        rooms.map(|room| self.room_info(room)).collect()
    }

    fn room_info(&self, room: &Room) -> RoomInfo {
        RoomInfo {
            name: room.name.clone(),
            members: room.members.len() + room.guests.len(),
            online: room
                .members
                .iter()
                .filter(|u| self.online.contains_key(*u))
                .count()
                + room.guests.len(),
        }
    }
}

impl Core {
    /// Counts a room about to be created by `creator` (a user, or a guest) from `peer`, or
    /// refuses it when either has created as many as the config allows.
    fn count_new_room(
        &mut self,
        creator: Option<UserId>,
        peer: Option<IpAddr>,
    ) -> Result<(), ErrorKind> {
        let by_user = creator.map_or(0, |u| {
            self.rooms_created.by_user.get(&u).copied().unwrap_or(0)
        });
        let by_peer = peer.map_or(0, |ip| {
            self.rooms_created.by_address.get(&ip).copied().unwrap_or(0)
        });
        if by_user >= self.rooms_created.per_user || by_peer >= self.rooms_created.per_address {
            return Err(ErrorKind::TooManyRooms);
        }
        if let Some(user) = creator {
            *self.rooms_created.by_user.entry(user).or_default() += 1;
        }
        if let Some(ip) = peer {
            *self.rooms_created.by_address.entry(ip).or_default() += 1;
        }
        Ok(())
    }
}
