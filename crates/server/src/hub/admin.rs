//! What `parley admin` asks of the hub: who is online, ending sessions, and the changes to
//! accounts and rooms that the hub's maps must see (so they go through the one writer, in
//! its batches, like every other change).

use std::sync::Arc;

use parley_proto::ErrorKind;
use serde::Serialize;

use super::core::{internal, Core, Effect};
use super::{Auth, Done, ANONYMOUS};
use crate::outbound::{Kill, Link, ModerationChange};
use crate::store::{Batch, DeviceId, Revoke, UserId, UserState};

/// An operator's request to the hub.
#[derive(Debug)]
pub enum AdminOp {
    /// Every logged-in session.
    Sessions,
    /// Ends sessions, gracefully, telling them why where the protocol can.
    End { target: Whom, why: Kill },
    /// Counts for `server stats`.
    Stats,
    /// Refuses (or allows again) every login of a user; disabling ends its sessions.
    SetDisabled { name: String, disabled: bool },
    /// Deletes an account: see [`Core::delete_user`].
    DeleteUser { name: String },
    /// Deletes a room: see [`Core::delete_room`].
    DeleteRoom { name: String },
    /// The rules a configuration reload changes.
    Rules {
        require_accounts: bool,
        contacts_only_dms: bool,
    },
}

/// Which sessions an operator means.
#[derive(Debug, Clone)]
pub enum Whom {
    /// Every session of a user, or of one of its devices.
    User {
        name: String,
        device: Option<String>,
    },
    /// Sessions by the ids `sessions list` and the logs show.
    Sessions(Vec<u64>),
    /// Every session (draining).
    Everyone,
}

/// The hub's answer to an [`AdminOp`].
#[derive(Debug)]
pub enum AdminAnswer {
    Sessions(Vec<SessionInfo>),
    /// How many sessions were ended.
    Ended(usize),
    Stats(HubStats),
    Done,
}

/// A logged-in session, as `parley admin sessions list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub session: u64,
    pub user: String,
    pub device: String,
    pub protocol: &'static str,
    /// The peer's address (empty if the session did not record it).
    pub peer: String,
    /// When it logged in (Unix ms; 0 for anonymous sessions).
    pub since: i64,
    /// Still replaying what the device missed.
    pub catching_up: bool,
}

/// The hub's counts for `parley admin server stats`.
#[derive(Debug, Clone, Serialize)]
pub struct HubStats {
    pub users: usize,
    pub accounts: usize,
    pub users_online: usize,
    pub sessions: usize,
    pub anonymous_sessions: usize,
    pub rooms: usize,
    pub next_message_id: i64,
}

pub(super) type AdminDone = Done<Result<AdminAnswer, ErrorKind>>;

impl Core {
    /// Applies an operator's request.
    pub(super) fn admin(
        &mut self,
        op: AdminOp,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
        done: AdminDone,
    ) {
        let result = match op {
            AdminOp::Sessions => Ok(AdminAnswer::Sessions(self.session_list())),
            AdminOp::End { target, why } => self.end_sessions(&target, why, effects),
            AdminOp::Stats => Ok(AdminAnswer::Stats(self.stats())),
            AdminOp::SetDisabled { name, disabled } => {
                self.set_disabled(&name, disabled, batch, effects)
            }
            AdminOp::DeleteUser { name } => self.delete_user(&name, batch, effects),
            AdminOp::DeleteRoom { name } => self.delete_room(&name, batch, effects),
            AdminOp::Rules {
                require_accounts,
                contacts_only_dms,
            } => {
                self.require_accounts = require_accounts;
                self.contacts_only_dms = contacts_only_dms;
                Ok(AdminAnswer::Done)
            }
        };
        // Answered once the commit is known: a change that was not stored is an error.
        effects.push(Effect::Answer(Box::new(move |committed| {
            let result = match result {
                Ok(_) if !committed => Err(ErrorKind::Internal),
                other => other,
            };
            let _ = done.send(result);
        })));
    }

    /// Loads what operators made of accounts (at start, and again after a failed commit).
    pub(super) fn load_user_states(&mut self) -> anyhow::Result<()> {
        self.disabled.clear();
        self.deleted_names.clear();
        for (user, state) in self.store_user_states()? {
            if state.disabled || state.deleted {
                self.disabled.insert(user);
            }
            if state.deleted {
                self.forget_name(user);
            }
        }
        Ok(())
    }

    /// Takes a deleted user's name out of the name index (nothing can reach it by name any
    /// more) and keeps it taken.
    pub(super) fn forget_name(&mut self, user: UserId) {
        if let Some(name) = self.users.get(&user).cloned() {
            self.names.remove(name.as_bytes());
            self.accounts.remove(&user);
            self.deleted_names.insert(name);
        }
    }

    /// Why an operator's decision refuses this login, if it does: a disabled or deleted
    /// account looks taken to the password-less protocols and like wrong credentials to
    /// the others (the same answers a name owned by someone else gets).
    pub(super) fn refused_by_operator(
        &self,
        name: &str,
        existing: Option<UserId>,
        auth: Auth,
    ) -> Option<ErrorKind> {
        let refused = self.deleted_names.contains(name)
            || existing.is_some_and(|user| self.disabled.contains(&user));
        refused.then_some(match auth {
            Auth::None => ErrorKind::AlreadyLoggedIn,
            Auth::Password(_) | Auth::Token(..) => ErrorKind::Unauthorized,
        })
    }

    /// The user an operator names (a deleted one is not found; in a cluster, one this node
    /// has not met yet is read from PostgreSQL).
    fn named(&mut self, name: &str) -> Result<UserId, ErrorKind> {
        match self.find_name(name.as_bytes()) {
            Some((_, user)) if user != self.anonymous && !self.deleted_names.contains(name) => {
                Ok(user)
            }
            _ => Err(ErrorKind::UserNotFound),
        }
    }

    fn set_disabled(
        &mut self,
        name: &str,
        disabled: bool,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<AdminAnswer, ErrorKind> {
        let user = self.named(name)?;
        let state = UserState {
            disabled,
            deleted: false,
        };
        batch.user_states.push((user, state));
        if self.cluster.is_some() {
            // Its sessions on the other nodes end too, once this is committed.
            self.cluster_user_state(user, disabled, false);
        }
        if disabled {
            self.disabled.insert(user);
            let target = Whom::User {
                name: name.to_string(),
                device: None,
            };
            self.end_sessions(&target, Kill::Disabled, effects)?;
        } else {
            self.disabled.remove(&user);
        }
        Ok(AdminAnswer::Done)
    }

    /// Deletes an account: its sessions end, its logins are refused for good, its password
    /// and tokens go, it leaves its rooms and its contacts; nothing can be sent to it. Its
    /// messages stay (the log is never rewritten, and they belong to the conversations of
    /// the others too) under its name, which stays taken so that nobody else appears as
    /// their sender.
    fn delete_user(
        &mut self,
        name: &str,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<AdminAnswer, ErrorKind> {
        let user = self.named(name)?;
        if self.cluster.is_some() {
            // Every room of theirs in the cache, so that each membership goes below.
            self.cluster_refresh(user);
            self.cluster_user_state(user, true, true);
        }
        let target = Whom::User {
            name: name.to_string(),
            device: None,
        };
        self.end_sessions(&target, Kill::Disabled, effects)?;
        let state = UserState {
            disabled: true,
            deleted: true,
        };
        batch.user_states.push((user, state));
        batch.revocations.push(Revoke::AllBut(user, 0));
        let mut left = Vec::new();
        for room in self.rooms.values_mut() {
            if room.members.remove(&user) {
                batch.leave(user, room.conv);
                left.push(room.conv);
            }
        }
        for conv in left {
            self.cluster_left(conv, user);
        }
        self.memberships.remove(&user);
        let contacts: Vec<UserId> = match self.contacts.remove(&user) {
            Some(cached) => cached.into_keys().collect(),
            None => {
                let stored = self.store_contacts(user).map_err(internal)?;
                stored.into_iter().map(|(other, _)| other).collect()
            }
        };
        for other in contacts {
            batch.contacts.push((user, other, None));
            batch.contacts.push((other, user, None));
            if let Some(theirs) = self.contacts.get_mut(&other) {
                theirs.remove(&user);
            }
        }
        self.disabled.insert(user);
        self.forget_name(user);
        Ok(AdminAnswer::Done)
    }

    /// Deletes a room the way its owner would (`drop_room`): its members are told, anonymous
    /// sessions in it stay connected outside it, and its name is free for a new room. Its
    /// messages stay in the log, reachable by no one.
    fn delete_room(
        &mut self,
        name: &str,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<AdminAnswer, ErrorKind> {
        if self.cluster.is_some() {
            // Made on another node, maybe: as PostgreSQL has it now.
            self.cluster_room(name, None, false)?;
            let conv = self.rooms[name].conv;
            self.cluster_moderated(conv, name, None, "server", &ModerationChange::Deleted);
        }
        if !self.rooms.contains_key(name) {
            return Err(ErrorKind::RoomNotFound);
        }
        self.drop_room(name, Arc::from("server"), 0, batch, effects);
        Ok(AdminAnswer::Done)
    }

    /// Every session the hub knows: logged in, or counted in presence as anonymous.
    fn session_list(&self) -> Vec<SessionInfo> {
        let guests = self.guests.values().map(|link| SessionInfo {
            session: link.id,
            user: ANONYMOUS.to_string(),
            device: String::new(),
            protocol: link.protocol.name(),
            peer: link.peer().map(|ip| ip.to_string()).unwrap_or_default(),
            since: 0,
            catching_up: false,
        });
        let mut list: Vec<SessionInfo> = self
            .online
            .iter()
            .flat_map(|(user, sessions)| sessions.iter().map(move |o| (*user, o)))
            .map(|(user, o)| SessionInfo {
                session: o.link.id,
                user: self.users.get(&user).map_or("", |n| n).to_string(),
                device: self.device_name(user, o.device),
                protocol: o.link.protocol.name(),
                peer: o.link.peer().map(|ip| ip.to_string()).unwrap_or_default(),
                since: o.since,
                catching_up: !o.live,
            })
            .chain(guests)
            .collect();
        list.sort_by_key(|s| s.session);
        list
    }

    /// The name of `device` of `user` (the hub caches every online device's).
    fn device_name(&self, user: UserId, device: DeviceId) -> String {
        let found = self
            .devices
            .iter()
            .find(|((u, _), d)| *u == user && **d == device);
        found.map(|((_, name), _)| name.clone()).unwrap_or_default()
    }

    /// Ends the sessions `target` names, once the batch is committed (nothing of it is
    /// undone by a failed commit: ending a session needs no row).
    pub(super) fn end_sessions(
        &mut self,
        target: &Whom,
        why: Kill,
        effects: &mut Vec<Effect>,
    ) -> Result<AdminAnswer, ErrorKind> {
        let links: Vec<Arc<Link>> = match target {
            Whom::User { name, device } => {
                let user = *self
                    .names
                    .get(name.as_bytes())
                    .ok_or(ErrorKind::UserNotFound)?;
                let device = match device {
                    Some(d) => Some(
                        *self
                            .devices
                            .get(&(user, d.clone()))
                            .ok_or(ErrorKind::UserNotFound)?,
                    ),
                    None => None,
                };
                let online = self.online.get(&user).into_iter().flatten();
                let chosen = online.filter(|o| device.is_none_or(|d| o.device == d));
                chosen.map(|o| o.link.clone()).collect()
            }
            Whom::Sessions(ids) => {
                let all = self.online.values().flatten().map(|o| &o.link);
                let guests = self.guests.values();
                let chosen = all.chain(guests).filter(|l| ids.contains(&l.id));
                chosen.cloned().collect()
            }
            Whom::Everyone => {
                let all = self.online.values().flatten().map(|o| o.link.clone());
                all.chain(self.guests.values().cloned()).collect()
            }
        };
        let n = links.len();
        effects.push(Effect::Answer(Box::new(move |_committed| {
            for link in links {
                link.kill(why);
            }
        })));
        Ok(AdminAnswer::Ended(n))
    }

    fn stats(&self) -> HubStats {
        let reserved = usize::from(self.users.contains_key(&self.anonymous));
        HubStats {
            users: self.users.len() - reserved,
            accounts: self.accounts.len(),
            users_online: self.online.len(),
            sessions: self.online.values().map(Vec::len).sum(),
            anonymous_sessions: self.guests.len(),
            rooms: self.rooms.len(),
            next_message_id: self.next.message,
        }
    }
}
