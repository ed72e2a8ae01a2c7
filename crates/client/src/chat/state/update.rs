//! What the network reports, applied to the model, and what the model asks of the network.

use std::collections::BTreeSet;
use std::path::PathBuf;

use parley_proto::binary::{change, contact, kind, ContactEntry, Event, RoomEntry, UserEntry};

use super::super::text;
use super::super::view::mentions;
use super::conv::DELETED;
use super::{App, ConnState, ConvKey, Delivery, Entry, Member, Msg, NoteKind, Transfer};
use crate::{FileInfo, LinkStatus};

/// What the network tells the model.
#[derive(Debug, Clone)]
pub enum Update {
    Link(LinkStatus),
    /// A pushed message (live, or catch-up after a login).
    Message(Event),
    /// A message was deleted: `event` is the deletion (its conversation), `message_seq`
    /// the deleted message's place.
    Deleted {
        event: Event,
        message_seq: u64,
    },
    /// Something happened in a room, or to a contact (`binary::change`).
    Notice {
        room: String,
        change: u8,
        user: String,
        by: String,
        text: String,
    },
    /// A page of history for `conv`; `asked` is how many were asked for.
    History {
        conv: ConvKey,
        events: Vec<Event>,
        asked: u16,
    },
    HistoryFailed {
        conv: ConvKey,
        error: String,
    },
    /// The answer to a send.
    Sent {
        conv: ConvKey,
        local: u64,
        result: Result<(), String>,
    },
    Joined(String),
    Left(String),
    /// The rooms this user is a member of (found at login).
    MyRooms(Vec<String>),
    Rooms(Vec<RoomEntry>),
    Members {
        room: String,
        members: Vec<UserEntry>,
    },
    Users(Vec<UserEntry>),
    /// The contact list; `show`: print it (for `/contacts`).
    Contacts {
        list: Vec<ContactEntry>,
        show: bool,
    },
    /// A file message of ours was stored: shown like any message of ours.
    FileSent {
        conv: ConvKey,
        text: String,
        time: u64,
    },
    /// A user exists (for `/dm`).
    UserFound(String),
    Progress(Transfer),
    TransferDone {
        id: u64,
        conv: ConvKey,
        result: Result<String, String>,
    },
    /// A line for a conversation (`None`: the current one).
    Note {
        conv: Option<ConvKey>,
        text: String,
        kind: NoteKind,
    },
    /// The device token was stored (or could not be).
    TokenSaved(Result<(), String>),
}

/// What the model asks the network to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        conv: ConvKey,
        local: u64,
        text: String,
        time: u64,
    },
    Join(String),
    Leave(String),
    History {
        conv: ConvKey,
        before: Option<u64>,
        limit: u16,
    },
    Members(String),
    /// Everyone, with presence (at login, and for `/who` outside a room).
    Users,
    /// Watch these users' presence (what is on screen: direct conversations, contacts,
    /// the open room's members); changes are pushed from then on.
    Watch(Vec<String>),
    Rooms,
    /// Rooms listed, for `/rooms` (shown as a note).
    ListRooms,
    Contacts {
        show: bool,
    },
    ContactRequest(String),
    ContactAnswer {
        user: String,
        accept: bool,
    },
    ContactRemove(String),
    FindUser(String),
    Upload {
        conv: ConvKey,
        path: PathBuf,
        caption: String,
        id: u64,
        time: u64,
    },
    Download {
        conv: ConvKey,
        file: FileInfo,
        dest: PathBuf,
        id: u64,
    },
    Quit,
}

impl App {
    // ---------------------------------------------------------------------------------
    // Network updates
    // ---------------------------------------------------------------------------------

    /// Applies what the network reported; returns the requests that follow from it.
    pub fn apply(&mut self, update: Update) -> Vec<Action> {
        match update {
            Update::Link(status) => return self.link(status),
            Update::Message(event) => return self.message(event),
            Update::Deleted { event, message_seq } => {
                let key = ConvKey::of(&event, &self.me);
                if let Some(i) = self.find(&key) {
                    self.convs[i].delete(message_seq);
                }
            }
            Update::Notice {
                room,
                change,
                user,
                by,
                text,
            } => return self.notice(room, change, user, by, text),
            Update::History {
                conv,
                events,
                asked,
            } => self.history(conv, events, asked),
            Update::HistoryFailed { conv, error } => {
                if let Some(i) = self.find(&conv) {
                    self.convs[i].loading = false;
                    // Nothing to page: say so once, where it was asked for.
                    self.convs[i].more_before = false;
                }
                self.note(Some(&conv), format!("history: {error}"), NoteKind::Error);
            }
            Update::Sent {
                conv,
                local,
                result,
            } => {
                if let Some(m) = self.find(&conv).and_then(|i| self.convs[i].own_mut(local)) {
                    m.status = match result {
                        Ok(()) => Delivery::Stored,
                        Err(e) => Delivery::Failed(e),
                    };
                }
            }
            Update::Joined(room) => {
                let key = ConvKey::Room(room.clone());
                let index = self.open(key);
                let mut actions = self.select(index);
                self.note(
                    Some(&ConvKey::Room(room.clone())),
                    format!("joined {room}"),
                    NoteKind::Info,
                );
                actions.extend(self.needs_if_selected(index));
                return dedup(actions);
            }
            Update::Left(room) => {
                if let Some(i) = self.find(&ConvKey::Room(room.clone())) {
                    self.close(i);
                }
                self.note(
                    Some(&ConvKey::Server),
                    format!("left {room}"),
                    NoteKind::Info,
                );
            }
            Update::MyRooms(rooms) => {
                for room in rooms {
                    self.open(ConvKey::Room(room));
                }
                return self.needs();
            }
            Update::Rooms(rooms) => self.rooms = rooms,
            Update::Members { room, members } => {
                for m in &members {
                    let name = String::from_utf8_lossy(&m.name).into_owned();
                    let entry = self.users.entry(name).or_insert((false, 0));
                    entry.0 = m.online;
                }
                if let Some(i) = self.find(&ConvKey::Room(room)) {
                    let mut list: Vec<Member> = members
                        .iter()
                        .map(|m| Member {
                            name: String::from_utf8_lossy(&m.name).into_owned(),
                            online: m.online,
                        })
                        .collect();
                    list.sort_by(|a, b| b.online.cmp(&a.online).then(a.name.cmp(&b.name)));
                    self.convs[i].members = list;
                }
                return self.watch().into_iter().collect();
            }
            Update::Users(users) => {
                // A listing of everyone, a search for a few, or a watched user's change:
                // what it says is news, for the member lists too.
                for u in users {
                    let name = String::from_utf8_lossy(&u.name).into_owned();
                    for conv in &mut self.convs {
                        if let Some(m) = conv.members.iter_mut().find(|m| m.name == name) {
                            m.online = u.online;
                        }
                    }
                    self.users.insert(name, (u.online, u.last_seen));
                }
            }
            Update::Contacts { list, show } => {
                self.contacts(&list);
                if show {
                    self.show_contacts(&list);
                }
                return self.watch().into_iter().collect();
            }
            Update::FileSent { conv, text, time } => {
                let local = self.local();
                let me = self.me.clone();
                let index = self.open(conv);
                let conv = &mut self.convs[index];
                conv.entries.push(Entry::Msg(Msg {
                    id: None,
                    seq: None,
                    from: me,
                    text,
                    time,
                    status: Delivery::Stored,
                    local: Some(local),
                }));
            }
            Update::UserFound(user) => {
                let index = self.open(ConvKey::Direct(user));
                let mut actions = self.select(index);
                actions.extend(self.needs_if_selected(index));
                return dedup(actions);
            }
            Update::Progress(transfer) => {
                match self.transfers.iter_mut().find(|t| t.id == transfer.id) {
                    Some(t) => *t = transfer,
                    None => self.transfers.push(transfer),
                }
            }
            Update::TransferDone { id, conv, result } => {
                self.transfers.retain(|t| t.id != id);
                match result {
                    Ok(text) => self.note(Some(&conv), text, NoteKind::Info),
                    Err(text) => self.note(Some(&conv), text, NoteKind::Error),
                }
            }
            Update::Note { conv, text, kind } => self.note(conv.as_ref(), text, kind),
            Update::TokenSaved(Err(e)) => self.note(
                Some(&ConvKey::Server),
                format!("device token not saved: {e}"),
                NoteKind::Error,
            ),
            Update::TokenSaved(Ok(())) => {}
        }
        Vec::new()
    }

    fn needs_if_selected(&mut self, index: usize) -> Vec<Action> {
        if index == self.current {
            self.needs()
        } else {
            Vec::new()
        }
    }

    fn link(&mut self, status: LinkStatus) -> Vec<Action> {
        self.conn = match status {
            LinkStatus::Connecting { attempt } => ConnState::Connecting { attempt },
            LinkStatus::Online => {
                let first = !self.ever_online;
                self.ever_online = true;
                self.conn = ConnState::Online;
                if !first {
                    self.reconnected = self.convs.iter().map(|c| c.key.clone()).collect();
                    self.note(Some(&ConvKey::Server), "connected again", NoteKind::Info);
                }
                let mut actions = vec![
                    Action::Rooms,
                    Action::Users,
                    Action::Contacts { show: false },
                ];
                actions.extend(self.needs());
                return actions;
            }
            LinkStatus::Offline {
                attempt,
                retry_in,
                reason,
            } => {
                if self.conn == ConnState::Online {
                    self.note(
                        Some(&ConvKey::Server),
                        format!("disconnected: {reason}"),
                        NoteKind::Error,
                    );
                }
                ConnState::Offline {
                    attempt,
                    retry_at: self.now + retry_in.as_millis() as u64,
                    reason,
                }
            }
            LinkStatus::Stopped(e) => {
                let text = e.to_string();
                // A revoked token (a password changed elsewhere, a logout): the stored one is
                // gone, the next start asks for the password.
                let hint = if e.is_auth() {
                    " — /quit and start parley chat again to log in with the password"
                } else {
                    ""
                };
                let note = format!("offline: {text}{hint}");
                self.note(Some(&ConvKey::Server), note.clone(), NoteKind::Error);
                if self.current != 0 {
                    self.note(None, note, NoteKind::Error);
                }
                ConnState::Stopped(text)
            }
        };
        Vec::new()
    }

    fn message(&mut self, event: Event) -> Vec<Action> {
        let key = ConvKey::of(&event, &self.me);
        let from = String::from_utf8_lossy(&event.from).into_owned();
        let text = String::from_utf8_lossy(&event.message).into_owned();
        let mention = from != self.me && mentions(&text, &self.me);
        let msg = Msg {
            id: (event.id > 0).then_some(event.id),
            seq: (event.seq > 0).then_some(event.seq),
            from: from.clone(),
            text,
            time: event.time,
            status: Delivery::Stored,
            local: None,
        };
        // A sender of a message written in the last minute is online (catch-up can bring
        // older ones); presence is polled, and this keeps it from lagging behind the talk.
        let recent = text::unix_ms(event.time) + 60_000 > self.now;
        let seen = self.users.entry(from.clone()).or_insert((recent, 0));
        seen.0 |= recent;
        let index = self.open(key.clone());
        let me = self.me.clone();
        // Measured only when needed: wrapping a long conversation per message is slow.
        let before = if self.convs[index].scroll > 0 {
            self.rows(index)
        } else {
            0
        };
        if !self.convs[index].insert(msg, &me) {
            return Vec::new();
        }
        let current = index == self.current;
        let after_reconnect = self.reconnected.remove(&key);
        // Someone the member list does not know yet: it is out of date.
        let mut actions = Vec::new();
        if let ConvKey::Room(room) = &key {
            let members = &mut self.convs[index].members;
            if !members.iter().any(|m| m.name == from) {
                // Asked once: the answer replaces this guess.
                members.push(Member {
                    name: from.clone(),
                    online: true,
                });
                actions.push(Action::Members(room.clone()));
            }
        }
        let conv = &mut self.convs[index];
        if from != me {
            if !current {
                conv.unread += 1;
                conv.mentioned |= mention;
            }
            if (!current || after_reconnect) && conv.marker.is_none() && event.id > 0 {
                conv.marker = Some(event.id);
            }
        }
        if conv.scroll > 0 {
            // Keep the rows on screen where they are.
            conv.below += 1;
            let grown = self.rows(index).saturating_sub(before);
            let conv = &mut self.convs[index];
            conv.scroll += grown;
        }
        actions
    }

    fn history(&mut self, key: ConvKey, events: Vec<Event>, asked: u16) {
        let Some(index) = self.find(&key) else {
            return;
        };
        let me = self.me.clone();
        let conv = &mut self.convs[index];
        conv.loading = false;
        if events.len() < usize::from(asked) {
            conv.more_before = false;
        }
        for event in events {
            let text = match event.kind & kind::DELETED {
                0 => String::from_utf8_lossy(&event.message).into_owned(),
                _ => DELETED.to_string(),
            };
            let msg = Msg {
                id: Some(event.id),
                seq: Some(event.seq),
                from: String::from_utf8_lossy(&event.from).into_owned(),
                text,
                time: event.time,
                status: Delivery::Stored,
                local: None,
            };
            conv.insert(msg, &me);
        }
        // Older rows came in above: counted from the bottom, the view stays where it was.
    }

    fn contacts(&mut self, contacts: &[ContactEntry]) {
        let pending: BTreeSet<String> = contacts
            .iter()
            .filter(|c| c.state == contact::PENDING)
            .map(|c| String::from_utf8_lossy(&c.name).into_owned())
            .collect();
        for name in pending.difference(&self.pending.clone()) {
            self.note(
                Some(&ConvKey::Server),
                format!("{name} wants to be your contact: /accept {name} or /decline {name}"),
                NoteKind::Info,
            );
            if self.current != 0 {
                self.info(format!(
                    "{name} wants to be your contact: /accept {name} or /decline {name}"
                ));
            }
        }
        self.pending = pending;
        for c in contacts {
            let name = String::from_utf8_lossy(&c.name).into_owned();
            self.users.insert(name.clone(), (c.online, c.last_seen));
            if c.state == contact::ACCEPTED {
                self.open(ConvKey::Direct(name));
            }
        }
    }

    /// Shows the contact list (for `/contacts`).
    pub fn show_contacts(&mut self, contacts: &[ContactEntry]) {
        if contacts.is_empty() {
            self.info("no contacts yet: /contacts add NAME asks someone");
            return;
        }
        for c in contacts {
            let name = String::from_utf8_lossy(&c.name);
            let state = match c.state {
                contact::REQUESTED => "asked by you, waiting",
                contact::PENDING => "asks you: /accept or /decline",
                _ => "contact",
            };
            let presence = if c.online {
                "● online"
            } else {
                "○ offline"
            };
            self.info(format!("{name}  {presence}  {state}"));
        }
    }
}

impl App {
    /// A room notice (or a contact's change) as lines and member-list changes.
    fn notice(
        &mut self,
        room: String,
        change: u8,
        user: String,
        by: String,
        text: String,
    ) -> Vec<Action> {
        let key = ConvKey::Room(room.clone());
        let me = user == self.me;
        let who = if me { "you".to_string() } else { user.clone() };
        let line = match change {
            change::JOINED | change::LEFT => {
                if let Some(i) = self.find(&key) {
                    let members = &mut self.convs[i].members;
                    members.retain(|m| m.name != user);
                    if change == change::JOINED {
                        members.push(Member {
                            name: user.clone(),
                            online: true,
                        });
                        members.sort_by(|a, b| b.online.cmp(&a.online).then(a.name.cmp(&b.name)));
                    }
                }
                let what = if change == change::JOINED {
                    "joined"
                } else {
                    "left"
                };
                self.note(Some(&key), format!("{user} {what}"), NoteKind::Info);
                return self.watch().into_iter().collect();
            }
            change::CONTACT_REQUESTED
            | change::CONTACT_ACCEPTED
            | change::CONTACT_DECLINED
            | change::CONTACT_REMOVED => {
                // The list says what changed (a new request is announced from it).
                return vec![Action::Contacts { show: false }];
            }
            change::KICKED | change::BANNED | change::DELETED
                if me || change == change::DELETED =>
            {
                let what = match change {
                    change::KICKED => format!("{by} kicked you from {room}"),
                    change::BANNED => format!("{by} banned you from {room}"),
                    _ => format!("{room} was deleted"),
                };
                if let Some(i) = self.find(&key) {
                    self.close(i);
                }
                self.note(Some(&ConvKey::Server), what.clone(), NoteKind::Error);
                if self.current != 0 {
                    self.error(what);
                }
                return self.watch().into_iter().collect();
            }
            change::KICKED | change::BANNED => {
                if let Some(i) = self.find(&key) {
                    self.convs[i].members.retain(|m| m.name != user);
                }
                let what = if change == change::KICKED {
                    "kicked"
                } else {
                    "banned"
                };
                format!("{by} {what} {user}")
            }
            change::INVITED => {
                let what = format!("{by} invited you to {room}: /join {room}");
                self.note(Some(&ConvKey::Server), what, NoteKind::Info);
                return Vec::new();
            }
            change::UNBANNED => format!("{by} lifted the ban on {who}"),
            change::MUTED => format!("{by} muted {who}"),
            change::UNMUTED => format!("{by} unmuted {who}"),
            change::OPPED => format!("{by} made {who} an operator"),
            change::DEOPPED => format!("{by} took operator from {who}"),
            change::TOPIC if text.is_empty() => format!("{by} cleared the topic"),
            change::TOPIC => format!("{by} set the topic: {text}"),
            change::INVITE_ONLY => format!("{by} made the room invite-only"),
            change::OPEN => format!("{by} opened the room to everyone"),
            _ => return Vec::new(),
        };
        self.note(Some(&key), line, NoteKind::Info);
        Vec::new()
    }
}

fn dedup(mut actions: Vec<Action>) -> Vec<Action> {
    let mut seen = Vec::new();
    actions.retain(|a| {
        if seen.contains(a) {
            false
        } else {
            seen.push(a.clone());
            true
        }
    });
    actions
}
