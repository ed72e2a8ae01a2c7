//! The hub thread: apply a batch of operations, commit once, then answer and deliver.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parley_proto::{ErrorKind, Reply};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::{finish, GoLive, Hub, Identity, LoginOk, Op};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::outbound::{Outbound, SessionLink};
use crate::store::{
    now_ms, Batch, ConvId, DeviceId, LogStore, Membership, NewMessage, NextIds, Seq, UserId,
};
use crate::wire::Tag;

/// Starts the hub thread over `store`.
pub fn spawn(
    mut store: Box<dyn LogStore>,
    config: &Config,
) -> anyhow::Result<(Hub, JoinHandle<()>)> {
    let mut core = Core {
        next: store.next_ids()?,
        store,
        grace: config.login_grace(),
        batch_max: config.batch_max,
        names: HashMap::new(),
        users: HashMap::new(),
        devices: HashMap::new(),
        directs: HashMap::new(),
        last_seqs: HashMap::new(),
        memberships: HashMap::new(),
        online: HashMap::new(),
        waiting: Vec::new(),
    };
    core.load_users()?;
    let (ops, rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("parley-hub".into())
        .spawn(move || core.run(rx))?;
    Ok((Hub { ops }, thread))
}

/// A device of a user with a session open.
struct Online {
    link: Arc<SessionLink>,
    device: DeviceId,
    /// False while the session replays what it missed from the store; it gets no pushes
    /// until it has caught up (see `Op::GoLive`).
    live: bool,
}

/// A login of a name that is online elsewhere, waiting for that session to end.
struct Waiting {
    deadline: Instant,
    op: Op,
}

struct Core {
    store: Box<dyn LogStore>,
    grace: Duration,
    batch_max: usize,
    next: NextIds,
    names: HashMap<Arc<str>, UserId>,
    users: HashMap<UserId, Arc<str>>,
    devices: HashMap<(UserId, String), DeviceId>,
    /// Direct conversations by (lower, higher) user id.
    directs: HashMap<(UserId, UserId), ConvId>,
    last_seqs: HashMap<ConvId, Seq>,
    memberships: HashMap<UserId, Vec<Membership>>,
    online: HashMap<UserId, Vec<Online>>,
    waiting: Vec<Waiting>,
}

/// What a batch does once its commit is known.
enum Effect {
    Reply {
        link: Arc<SessionLink>,
        tag: Tag,
        reply: Reply,
        /// The reply reports something written by this batch: if the commit fails it
        /// becomes an error.
        durable: bool,
    },
    Login {
        link: Arc<SessionLink>,
        tag: Tag,
        result: Result<LoginOk, ErrorKind>,
        done: oneshot::Sender<Result<LoginOk, ErrorKind>>,
    },
    Deliver {
        delivery: Arc<Delivery>,
        members: (UserId, UserId),
        sender_device: DeviceId,
    },
    Live {
        done: oneshot::Sender<GoLive>,
        answer: GoLive,
    },
}

impl Core {
    fn load_users(&mut self) -> anyhow::Result<()> {
        self.names.clear();
        self.users.clear();
        for (id, name) in self.store.load_users()? {
            let name: Arc<str> = Arc::from(name);
            self.names.insert(name.clone(), id);
            self.users.insert(id, name);
        }
        info!(users = self.users.len(), "hub loaded users");
        Ok(())
    }

    fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.batch_max);
        let mut stopping = false;
        while !stopping {
            let first = match self.waiting.iter().map(|w| w.deadline).min() {
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
        for w in self.waiting.drain(..) {
            if let Op::Login {
                link, tag, done, ..
            } = w.op
            {
                link.push(Outbound::Reply(tag, Reply::Error(ErrorKind::ShuttingDown)));
                let _ = done.send(Err(ErrorKind::ShuttingDown));
            }
        }
        info!("hub stopped");
    }

    /// Applies `ops`, commits, performs the effects. True when asked to stop.
    fn process(&mut self, ops: &mut Vec<Op>) -> bool {
        let mut batch = Batch::default();
        let mut effects = Vec::with_capacity(ops.len() * 2);
        let mut stop = false;
        self.expire_waiting(&mut effects);
        for op in ops.drain(..) {
            match op {
                Op::Shutdown => stop = true,
                op => self.apply(op, &mut batch, &mut effects),
            }
        }
        batch.next_message_id = self.next.message;
        let committed = batch.is_empty() || {
            match self.store.write(&batch) {
                Ok(()) => true,
                Err(e) => {
                    error!(error = %format!("{e:#}"), ops = effects.len(), "store commit failed");
                    self.forget_uncommitted();
                    false
                }
            }
        };
        if !batch.messages.is_empty() {
            debug!(messages = batch.messages.len(), "committed batch");
        }
        for effect in effects {
            self.perform(effect, committed);
        }
        stop
    }

    fn apply(&mut self, op: Op, batch: &mut Batch, effects: &mut Vec<Effect>) {
        match op {
            Op::Login { .. } => self.login(op, batch, effects),
            Op::Send {
                link,
                from,
                to,
                body,
                sent_at,
                tag,
            } => match self.send(from, &to, body, sent_at, batch) {
                Ok(deliver) => {
                    effects.push(Effect::Reply {
                        link,
                        tag,
                        reply: Reply::Ok,
                        durable: true,
                    });
                    effects.push(deliver);
                }
                Err(kind) => effects.push(Effect::Reply {
                    link,
                    tag,
                    reply: Reply::Error(kind),
                    durable: false,
                }),
            },
            Op::Reply { link, tag, reply } => effects.push(Effect::Reply {
                link,
                tag,
                reply,
                durable: false,
            }),
            Op::GoLive {
                link_id,
                user,
                progress,
                done,
            } => {
                let answer = self.go_live(link_id, user, &progress);
                effects.push(Effect::Live { done, answer });
            }
            Op::Cursors { device, progress } => {
                for (conv, seq) in progress {
                    let at = batch.cursors.entry((device, conv)).or_insert(seq);
                    *at = (*at).max(seq);
                }
            }
            Op::Logout { link_id, identity } => {
                if let Some(devices) = self.online.get_mut(&identity.user) {
                    devices.retain(|o| o.link.id != link_id);
                    if devices.is_empty() {
                        self.online.remove(&identity.user);
                    }
                }
                batch.seen.push((identity.user, identity.device, now_ms()));
                // A login that waited for this name gets its turn now.
                let (ready, rest): (Vec<_>, Vec<_>) = self
                    .waiting
                    .drain(..)
                    .partition(|w| matches!(&w.op, Op::Login { name, .. } if self.names.get(name.as_str()) == Some(&identity.user)));
                self.waiting = rest;
                for w in ready {
                    self.login(w.op, batch, effects);
                }
            }
            Op::Shutdown => {}
        }
    }

    fn login(&mut self, op: Op, batch: &mut Batch, effects: &mut Vec<Effect>) {
        let Op::Login {
            link,
            name,
            device,
            tag,
            done,
        } = op
        else {
            return;
        };
        let existing = self.names.get(name.as_str()).copied();
        if let Some(user) = existing {
            if self.online.get(&user).is_some_and(|d| !d.is_empty()) {
                if self.grace.is_zero() {
                    effects.push(Effect::Login {
                        link,
                        tag,
                        result: Err(ErrorKind::AlreadyLoggedIn),
                        done,
                    });
                } else {
                    let deadline = Instant::now() + self.grace;
                    let op = Op::Login {
                        link,
                        name,
                        device,
                        tag,
                        done,
                    };
                    self.waiting.push(Waiting { deadline, op });
                }
                return;
            }
        }
        let result = self.admit(existing, &name, &device, &link, batch);
        effects.push(Effect::Login {
            link,
            tag,
            result,
            done,
        });
    }

    /// Creates the user and device as needed and registers the session (catching up).
    fn admit(
        &mut self,
        existing: Option<UserId>,
        name: &str,
        device: &str,
        link: &Arc<SessionLink>,
        batch: &mut Batch,
    ) -> Result<LoginOk, ErrorKind> {
        let user = match existing {
            Some(user) => user,
            None => {
                let user = self.next.user;
                self.next.user += 1;
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(shared.clone(), user);
                self.users.insert(user, shared);
                batch.users.push((user, name.to_string()));
                user
            }
        };
        let key = (user, device.to_string());
        let device = match self.devices.get(&key) {
            Some(&id) => id,
            None => {
                let found = self.store.find_device(user, device).map_err(internal)?;
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
        self.online.entry(user).or_default().push(Online {
            link: link.clone(),
            device,
            live: false,
        });
        Ok(LoginOk {
            identity: Identity { user, device },
            name: self.users[&user].clone(),
        })
    }

    /// Appends a message to the direct conversation of `from` and `to`; the effect delivers
    /// it once committed.
    fn send(
        &mut self,
        from: Identity,
        to: &str,
        body: bytes::Bytes,
        sent_at: u64,
        batch: &mut Batch,
    ) -> Result<Effect, ErrorKind> {
        let recipient = *self.names.get(to).ok_or(ErrorKind::UserNotFound)?;
        let members = (from.user.min(recipient), from.user.max(recipient));
        let conv = self.direct(members, batch).map_err(internal)?;
        let seq = self.last_seq(conv).map_err(internal)? + 1;
        self.last_seqs.insert(conv, seq);
        batch.last_seqs.insert(conv, seq);
        let id = self.next.message;
        self.next.message += 1;
        batch.messages.push(NewMessage {
            id,
            conv,
            seq,
            sender: from.user,
            sender_device: from.device,
            body: body.clone(),
            sent_at,
            received_at: now_ms(),
        });
        let delivery = Delivery::new(
            id,
            conv,
            seq,
            self.users[&from.user].clone(),
            self.users[&recipient].clone(),
            body,
            sent_at,
        );
        Ok(Effect::Deliver {
            delivery: Arc::new(delivery),
            members,
            sender_device: from.device,
        })
    }

    /// The direct conversation of `members`, created (in this batch) if new.
    fn direct(&mut self, members: (UserId, UserId), batch: &mut Batch) -> anyhow::Result<ConvId> {
        if let Some(&conv) = self.directs.get(&members) {
            return Ok(conv);
        }
        let conv = match self.store.find_direct(members.0, members.1)? {
            Some(found) => {
                self.last_seqs.entry(found.id).or_insert(found.last_seq);
                found.id
            }
            None => {
                // Load both users' memberships before adding to them, so the cache never
                // holds a partial list.
                self.memberships_of(members.0)?;
                self.memberships_of(members.1)?;
                let conv = self.next.conv;
                self.next.conv += 1;
                batch.directs.push((conv, members.0, members.1));
                self.last_seqs.insert(conv, 0);
                let joined = Membership {
                    conv,
                    joined_seq: 0,
                };
                for user in [members.0, members.1] {
                    let list = self.memberships.get_mut(&user).expect("loaded above");
                    if !list.iter().any(|m| m.conv == conv) {
                        list.push(joined);
                    }
                }
                conv
            }
        };
        self.directs.insert(members, conv);
        Ok(conv)
    }

    fn last_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        if let Some(&seq) = self.last_seqs.get(&conv) {
            return Ok(seq);
        }
        let seq = self.store.last_seq(conv)?;
        self.last_seqs.insert(conv, seq);
        Ok(seq)
    }

    fn memberships_of(&mut self, user: UserId) -> anyhow::Result<&mut Vec<Membership>> {
        if !self.memberships.contains_key(&user) {
            let list = self.store.memberships(user)?;
            self.memberships.insert(user, list);
        }
        Ok(self.memberships.get_mut(&user).expect("inserted above"))
    }

    /// Grants live delivery if `progress` reaches the end of every conversation of `user`.
    fn go_live(&mut self, link_id: u64, user: UserId, progress: &HashMap<ConvId, Seq>) -> GoLive {
        let is_online = |core: &Self| {
            core.online
                .get(&user)
                .is_some_and(|d| d.iter().any(|o| o.link.id == link_id))
        };
        if !is_online(self) {
            return GoLive::Gone;
        }
        let list = match self.memberships_of(user) {
            Ok(list) => list.clone(),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "loading memberships");
                return GoLive::Behind;
            }
        };
        for m in list {
            let have = progress.get(&m.conv).copied().unwrap_or(m.joined_seq);
            match self.last_seq(m.conv) {
                Ok(last) if last <= have => {}
                _ => return GoLive::Behind,
            }
        }
        for online in self.online.get_mut(&user).into_iter().flatten() {
            if online.link.id == link_id {
                online.live = true;
            }
        }
        GoLive::Live
    }

    fn expire_waiting(&mut self, effects: &mut Vec<Effect>) {
        let now = Instant::now();
        let (expired, rest): (Vec<_>, Vec<_>) =
            self.waiting.drain(..).partition(|w| w.deadline <= now);
        self.waiting = rest;
        for w in expired {
            if let Op::Login {
                link, tag, done, ..
            } = w.op
            {
                effects.push(Effect::Login {
                    link,
                    tag,
                    result: Err(ErrorKind::AlreadyLoggedIn),
                    done,
                });
            }
        }
    }

    fn perform(&mut self, effect: Effect, committed: bool) {
        match effect {
            Effect::Reply {
                link,
                tag,
                reply,
                durable,
            } => {
                let reply = if durable && !committed {
                    Reply::Error(ErrorKind::Internal)
                } else {
                    reply
                };
                finish(&link, tag, reply);
            }
            Effect::Login {
                link,
                tag,
                result,
                done,
            } => {
                let result = match result {
                    Ok(ok) if !committed => {
                        self.drop_online(ok.identity.user, link.id);
                        Err(ErrorKind::Internal)
                    }
                    other => other,
                };
                let reply = match &result {
                    Ok(_) => Reply::Ok,
                    Err(kind) => Reply::Error(*kind),
                };
                link.push(Outbound::Reply(tag, reply));
                if done.send(result).is_err() {
                    debug!(session = link.id, "login answered after the session ended");
                }
            }
            Effect::Deliver {
                delivery,
                members,
                sender_device,
            } => {
                if !committed {
                    return;
                }
                let to_self = members.0 == members.1;
                let users: &[UserId] = if to_self {
                    &[members.0][..]
                } else {
                    &[members.0, members.1][..]
                };
                for user in users {
                    for online in self.online.get(user).into_iter().flatten() {
                        if online.live && (to_self || online.device != sender_device) {
                            online.link.push(Outbound::Deliver(delivery.clone()));
                        }
                    }
                }
            }
            Effect::Live { done, answer } => {
                let answer = if committed { answer } else { GoLive::Behind };
                let _ = done.send(answer);
            }
        }
    }

    fn drop_online(&mut self, user: UserId, link_id: u64) {
        if let Some(devices) = self.online.get_mut(&user) {
            devices.retain(|o| o.link.id != link_id);
            if devices.is_empty() {
                self.online.remove(&user);
            }
        }
    }

    /// After a failed commit the caches may name rows that were never written: reload.
    fn forget_uncommitted(&mut self) {
        self.devices.clear();
        self.directs.clear();
        self.last_seqs.clear();
        self.memberships.clear();
        if let Err(e) = self.load_users() {
            error!(error = %format!("{e:#}"), "reloading users after a failed commit");
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

fn internal(e: anyhow::Error) -> ErrorKind {
    error!(error = %format!("{e:#}"), "store read failed");
    ErrorKind::Internal
}
