//! The binary protocol's requests as typed calls on a `Connection` (docs/PROTOCOL.md,
//! keys 0x10-0x45): accounts, messages, rooms, listings, history pages, contacts.

use bytes::Bytes;
use parley_proto::binary::{
    flags, page, ContactEntry, Event, Frame, ListPage, RoomEntry, UserEntry,
};

use crate::{Connection, Error};

/// A device token as the server issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// 64 hex characters.
    pub token: String,
    /// Unix milliseconds.
    pub expires_at: u64,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The direct conversation with this user.
    User(String),
    /// A room.
    Room(String),
}

impl Target {
    /// The name the server knows the conversation by (a user or a room).
    pub fn name(&self) -> &str {
        match self {
            Target::User(name) | Target::Room(name) => name,
        }
    }
}

/// Which page of a conversation's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Latest,
    /// Messages before this message id (older).
    BeforeId(u64),
    /// Messages after this message id (newer).
    AfterId(u64),
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn unexpected(what: &str, reply: &[Frame]) -> Error {
    Error::Protocol(format!("expected {what}, got {reply:?}"))
}

impl Connection {
    /// Creates an account (it does not log in).
    pub async fn register(&self, user: &str, password: &str) -> Result<(), Error> {
        self.request(|cid| Frame::Register {
            cid,
            username: b(user),
            password: b(password),
        })
        .await
        .map(drop)
    }

    /// Logs in with a password as `device`; with `want_token`, returns a token for it.
    pub async fn login_password(
        &self,
        user: &str,
        password: &str,
        device: &str,
        want_token: bool,
    ) -> Result<Option<Token>, Error> {
        let reply = self
            .request(|cid| Frame::LoginPassword {
                cid,
                username: b(user),
                password: b(password),
                device: b(device),
                flags: if want_token { flags::WANT_TOKEN } else { 0 },
            })
            .await?;
        Ok(reply.into_iter().find_map(|f| match f {
            Frame::Token {
                token, expires_at, ..
            } => Some(Token {
                token: String::from_utf8_lossy(&token).into_owned(),
                expires_at,
            }),
            _ => None,
        }))
    }

    /// Logs in with a device token (as the device it was issued to).
    pub async fn login_token(&self, token: &str) -> Result<(), Error> {
        self.request(|cid| Frame::LoginToken {
            cid,
            token: b(token),
        })
        .await
        .map(drop)
    }

    /// Revokes this device's tokens (`all`: every device's); the server then closes.
    pub async fn logout(&self, all: bool) -> Result<(), Error> {
        self.request(|cid| Frame::Logout {
            cid,
            scope: u8::from(all),
        })
        .await
        .map(drop)
    }

    /// From now on pushes are events, and the device's cursor moves only on acks. Sent
    /// before logging in, so the catch-up after the login comes as events too.
    pub async fn enable_acks(&self) -> Result<(), Error> {
        self.request(|cid| Frame::EnableAcks { cid })
            .await
            .map(drop)
    }

    /// Everything of `conversation` up to `seq` was received.
    pub fn ack(&self, conversation: u64, seq: u64) {
        self.notify(Frame::Ack {
            cid: 0,
            conversation,
            seq,
        });
    }

    /// A round trip that changes nothing (0x09): proves the connection is alive.
    pub async fn ping(&self) -> Result<(), Error> {
        self.request(|cid| Frame::CorrelationTest { cid })
            .await
            .map(drop)
    }

    /// Sends a message as `me`; resolves once the server stored it.
    pub async fn send(&self, me: &str, to: &Target, body: Bytes, time: u64) -> Result<(), Error> {
        self.request(|cid| match to {
            Target::User(user) => Frame::Message {
                cid,
                message: body,
                from: b(me),
                to: b(user),
                time,
            },
            Target::Room(room) => Frame::SendRoom {
                cid,
                room: b(room),
                message: body,
                time,
            },
        })
        .await
        .map(drop)
    }

    /// Joins a room (creating it if new); membership lasts until `leave`.
    pub async fn join(&self, room: &str) -> Result<(), Error> {
        self.request(|cid| Frame::Join { cid, room: b(room) })
            .await
            .map(drop)
    }

    pub async fn leave(&self, room: &str) -> Result<(), Error> {
        self.request(|cid| Frame::Leave { cid, room: b(room) })
            .await
            .map(drop)
    }

    /// Every room, with its member and online counts (page after page: the server sends
    /// at most `max_list_page` at a time).
    pub async fn rooms(&self) -> Result<Vec<RoomEntry>, Error> {
        let mut all: Vec<RoomEntry> = Vec::new();
        loop {
            let after = all.last().map(|r| r.name.clone()).unwrap_or_default();
            let page = Some(ListPage { after, limit: 0 });
            let reply = self.request(|cid| Frame::ListRooms { cid, page }).await?;
            match reply.into_iter().next() {
                Some(Frame::Rooms { rooms, .. }) if rooms.is_empty() => return Ok(all),
                Some(Frame::Rooms { rooms, .. }) => all.extend(rooms),
                other => return Err(unexpected("Rooms", other.as_slice())),
            }
        }
    }

    /// A room's members and whether each is online.
    pub async fn members(&self, room: &str) -> Result<Vec<UserEntry>, Error> {
        let reply = self
            .request(|cid| Frame::ListMembers { cid, room: b(room) })
            .await?;
        match reply.into_iter().next() {
            Some(Frame::Members { members, .. }) => Ok(members),
            other => Err(unexpected("Members", other.as_slice())),
        }
    }

    /// Every user, online or not, with when they were last seen (page after page, as
    /// `rooms`).
    pub async fn users(&self) -> Result<Vec<UserEntry>, Error> {
        let mut all: Vec<UserEntry> = Vec::new();
        loop {
            let after = all.last().map(|u| u.name.clone()).unwrap_or_default();
            let page = Some(ListPage { after, limit: 0 });
            let reply = self.request(|cid| Frame::ListUsers { cid, page }).await?;
            match reply.into_iter().next() {
                Some(Frame::Users { users, .. }) if users.is_empty() => return Ok(all),
                Some(Frame::Users { users, .. }) => all.extend(users),
                other => return Err(unexpected("Users", other.as_slice())),
            }
        }
    }

    /// Users whose names start with `prefix`.
    pub async fn search(&self, prefix: &str, limit: u16) -> Result<Vec<UserEntry>, Error> {
        let reply = self
            .request(|cid| Frame::Search {
                cid,
                prefix: b(prefix),
                limit,
            })
            .await?;
        match reply.into_iter().next() {
            Some(Frame::Users { users, .. }) => Ok(users),
            other => Err(unexpected("Users", other.as_slice())),
        }
    }

    /// A page of a conversation (`target`: a room, a user, or `*`), oldest first.
    pub async fn history(&self, target: &str, at: Page, limit: u16) -> Result<Vec<Event>, Error> {
        let (mode, value) = match at {
            Page::Latest => (page::LATEST, 0),
            Page::BeforeId(id) => (page::BEFORE_ID, id),
            Page::AfterId(id) => (page::AFTER_ID, id),
        };
        let reply = self
            .request(|cid| Frame::History {
                cid,
                target: b(target),
                mode,
                value,
                limit,
            })
            .await?;
        match reply.into_iter().next() {
            Some(Frame::HistoryPage { events, .. }) => Ok(events),
            other => Err(unexpected("HistoryPage", other.as_slice())),
        }
    }

    /// The contact list: accepted, asked by me, asking me.
    pub async fn contacts(&self) -> Result<Vec<ContactEntry>, Error> {
        let reply = self.request(|cid| Frame::ListContacts { cid }).await?;
        match reply.into_iter().next() {
            Some(Frame::Contacts { contacts, .. }) => Ok(contacts),
            other => Err(unexpected("Contacts", other.as_slice())),
        }
    }

    /// Asks `name` to be a contact (accepts, if they asked first).
    pub async fn contact_request(&self, name: &str) -> Result<(), Error> {
        self.request(|cid| Frame::ContactRequest { cid, name: b(name) })
            .await
            .map(drop)
    }

    /// Accepts or declines `name`'s request.
    pub async fn contact_answer(&self, name: &str, accept: bool) -> Result<(), Error> {
        self.request(|cid| Frame::ContactAnswer {
            cid,
            name: b(name),
            accept: u8::from(accept),
        })
        .await
        .map(drop)
    }

    pub async fn contact_remove(&self, name: &str) -> Result<(), Error> {
        self.request(|cid| Frame::ContactRemove { cid, name: b(name) })
            .await
            .map(drop)
    }
}
