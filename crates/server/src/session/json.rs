//! Requests of the JSON-lines protocol: seed 001's commands and parley's extensions.
//!
//! Strictly one response line per request, in order; pushes (`{"event":...}`) only after
//! `SUBSCRIBE`, because seed-001 clients pair each line they read with their last request.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use parley_proto::json::{self, Command, Value};
use parley_proto::{text, validate_name, ErrorKind, Reply, Target};
use serde::Serialize;
use serde_json::json;

use super::history::HistoryMessage;
use super::messaging::unix_nanos;
use super::{Flow, Session, Who};
use crate::files::{Offer, Progress};
use crate::hub::{ContactAction, RoomAction};
use crate::outbound::{json_error, Item, Tag};
use crate::store::Page;

/// Messages LIST_MESSAGES shows (as seed 001 does).
const RECENT: usize = 20;

/// Seed 001's answer to a line without a command, or that is not a JSON object at all.
const NO_COMMAND: &str = "Validation error: command cannot be empty";

/// The answer to a password or token login whose device has a session open already (as a
/// second tab of one browser has): not "Username already taken", which would blame another
/// user, so that the web app can tell it apart and offer to take the session over.
const DEVICE_BUSY: &str = "Device already connected";

/// A request's id, shared by its response and anything queued for it.
type Id = Option<Arc<Value>>;

/// What a request answers when it succeeds: the response's `message` and `data`.
type Answer = Result<(String, Value), ErrorKind>;

/// One response line, ready to queue.
fn json_line(success: bool, message: &str, data: Value, id: Id) -> Item {
    let mut out = Vec::new();
    json::encode_response(success, message, &data, id.as_deref(), &mut out);
    Item::Bytes(Bytes::from(out))
}

/// The line a seed-001 client waits for after connecting.
pub(super) fn welcome() -> Bytes {
    let mut out = Vec::new();
    json::encode_response(true, json::WELCOME, &Value::from(""), None, &mut out);
    Bytes::from(out)
}

/// A success with an empty `data`.
fn done(message: impl Into<String>) -> Answer {
    Ok((message.into(), Value::from("")))
}

impl Session {
    pub(super) async fn json_line(&mut self, line: Bytes) -> Flow {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Flow::Continue;
        }
        if std::str::from_utf8(&line).is_err() {
            return self.json_error(None, ErrorKind::InvalidUtf8).await;
        }
        let request = match json::parse(&line) {
            Ok(request) => request,
            Err(invalid) => {
                // A JSON object keeps its id, whatever is wrong with it (boxed: rare).
                let id = json::request_id(&line).map(Arc::new);
                return match invalid {
                    json::Invalid::NoCommand => self.json_invalid(NO_COMMAND, id).await,
                    json::Invalid::Fields => {
                        Box::pin(self.json_error(id, ErrorKind::Malformed)).await
                    }
                };
            }
        };
        let id = request.id.map(Arc::new);
        if let Some(name) = request.command.missing_data() {
            let message = format!("Validation error: command {name} requires data");
            return self.json_invalid(&message, id).await;
        }
        let logged_in = self.login.is_some();
        match request.command {
            // The hot paths, not boxed: a box as large as the biggest command's state,
            // allocated and freed for every message, costs more than the message's own
            // work in the session. The rest is boxed, so idle sessions stay small.
            Command::Message(json::Text { data }) => {
                self.json_send(Target::Everyone, data, "Message broadcasted", id)
                    .await
            }
            Command::Dm(json::Dm {
                to: Some(to),
                recipients: None,
                data,
            }) if logged_in && self.recipient(to.as_bytes()).is_ok() => {
                self.json_send(Target::User(to), data, "Message sent", id)
                    .await
            }
            Command::Say(json::InRoom { room, data }) if logged_in => {
                let room = Target::Room(room.unwrap_or_default());
                self.json_send(room, data, "Message sent", id).await
            }
            command => return Box::pin(self.json_request(command, id)).await,
        }
        Flow::Continue
    }

    /// Every request but the hot paths of `json_line`.
    async fn json_request(&mut self, command: Command, id: Id) -> Flow {
        let answer: Answer = match command {
            Command::Echo(json::Text { data }) => Ok(("Echo response".into(), Value::from(data))),
            Command::Time => Ok(("Server time".into(), Value::from(rfc3339_now()))),
            Command::Ping => done("PONG"),
            Command::Help => Ok(("Commands".into(), Value::from(HELP.to_vec()))),
            Command::Quit => {
                self.json_reply(true, "Goodbye!", Value::from(""), id).await;
                return Flow::Close("quit".into());
            }
            Command::Register(json::Credentials {
                data,
                password: Some(password),
                ..
            }) => {
                let name = data.trim();
                let created = self.register(name, &password).await;
                created.map(|()| (format!("Account {name} created"), Value::from("")))
            }
            Command::Login(json::Credentials {
                data,
                password: Some(password),
                device,
                want_token,
            }) => {
                let name = data.trim();
                let message = format!("Welcome, {name}!");
                let device = device.unwrap_or_default();
                // With a token asked for, the answer carries it: it comes after the login.
                let welcome =
                    (!want_token).then(|| json_line(true, &message, Value::from(""), id.clone()));
                match self.password_login(name, &password, &device, welcome).await {
                    Ok(()) if !want_token => return Flow::Continue,
                    Ok(()) => self.issue_token().await.map(|(token, expires_at)| {
                        (message, json!({"token": token, "expires_at": expires_at}))
                    }),
                    Err(ErrorKind::AlreadyLoggedIn) => {
                        return self.json_invalid(DEVICE_BUSY, id).await
                    }
                    Err(kind) => Err(kind),
                }
            }
            // Seed 001: a name for this connection, no password; again, a new name.
            Command::Register(json::Credentials { data, .. })
            | Command::Login(json::Credentials { data, .. }) => {
                let name = data.trim();
                let max_name = self.shared.config.max_name_bytes;
                let message = format!("Registration successful. Welcome, {name}!");
                match &self.login {
                    _ if validate_name(name.as_bytes(), max_name).is_err() => {
                        Err(ErrorKind::InvalidName)
                    }
                    Some((_, current)) if **current == *name => done(message),
                    // An account keeps its name (it logged in with its password).
                    Some((_, current)) if self.account => {
                        let message = format!("Already registered as {current}");
                        self.json_reply(false, &message, Value::from(""), id).await;
                        return Flow::Continue;
                    }
                    _ => {
                        let welcome = json_line(true, &message, Value::from(""), id.clone());
                        match self.rename(name, Some(welcome)).await {
                            Ok(()) => return Flow::Continue,
                            Err(kind) => Err(kind),
                        }
                    }
                }
            }
            Command::Resume(json::Resume { token }) => {
                let welcome = |name: &str| {
                    let message = format!("Welcome back, {name}!");
                    Some(json_line(true, &message, Value::from(name), id.clone()))
                };
                match self
                    .token_login(token.as_deref().unwrap_or(""), welcome)
                    .await
                {
                    Ok(_) => return Flow::Continue,
                    Err(ErrorKind::AlreadyLoggedIn) => {
                        return self.json_invalid(DEVICE_BUSY, id).await
                    }
                    Err(kind) => Err(kind),
                }
            }
            Command::Token => self.issue_token().await.map(|(token, expires_at)| {
                let data = json!({"token": token, "expires_at": expires_at});
                ("Token issued".into(), data)
            }),
            Command::Passwd(json::Passwords {
                password,
                new_password,
            }) => {
                let (old, new) = (
                    password.unwrap_or_default(),
                    new_password.unwrap_or_default(),
                );
                let changed = self.change_password(&old, &new).await;
                changed.and_then(|()| done("Password changed"))
            }
            Command::Logout(json::Logout { all }) => match self.logout(all).await {
                Ok(()) => {
                    self.json_reply(true, "Logged out", Value::from(""), id)
                        .await;
                    return Flow::Close("logged out".into());
                }
                Err(kind) => Err(kind),
            },
            Command::Profile(json::Profile { target, data }) => {
                let name = target.unwrap_or(data);
                let profile = self.get_profile(&name, Who::Members).await;
                profile.map(|p| {
                    let avatar = p.avatar.map(|a| BASE64.encode(a));
                    let data = json!({
                        "name": p.name,
                        "display_name": p.display_name,
                        "avatar": avatar,
                    });
                    ("Profile".into(), data)
                })
            }
            Command::SetProfile(json::SetProfile {
                display_name,
                avatar,
            }) => match avatar.map(|a| BASE64.decode(a)).transpose() {
                Ok(avatar) => {
                    let saved = self.set_profile(display_name, avatar).await;
                    saved.and_then(|()| done("Profile saved"))
                }
                Err(_) => Err(ErrorKind::Malformed),
            },
            Command::Message(json::Text { data }) => {
                self.json_send(Target::Everyone, data, "Message broadcasted", id)
                    .await;
                return Flow::Continue;
            }
            Command::Dm(json::Dm {
                to,
                recipients,
                data,
            }) => {
                let name_ok = |name: &String| self.recipient(name.as_bytes()).is_ok();
                let to = match (recipients, to) {
                    _ if self.login.is_none() => Err(ErrorKind::NotLoggedIn),
                    (Some(names), _) if !names.is_empty() && names.iter().all(name_ok) => {
                        Ok(Target::Users(names))
                    }
                    (Some(_), _) => Err(ErrorKind::UserNotFound),
                    (None, to) => match to.unwrap_or_default() {
                        to if name_ok(&to) => Ok(Target::User(to)),
                        _ => Err(ErrorKind::UserNotFound),
                    },
                };
                match to {
                    Ok(to) => {
                        self.json_send(to, data, "Message sent", id).await;
                        return Flow::Continue;
                    }
                    Err(kind) => Err(kind),
                }
            }
            // Room commands need a login: an anonymous JSON session must never be pushed
            // room traffic it did not subscribe to.
            Command::Say(_) if self.login.is_none() => Err(ErrorKind::NotLoggedIn),
            Command::Say(json::InRoom { room, data }) => {
                let room = Target::Room(room.unwrap_or_default());
                self.json_send(room, data, "Message sent", id).await;
                return Flow::Continue;
            }
            Command::Join(json::Rooms { rooms, room, data }) => {
                let rooms = rooms.or(room.map(|r| vec![r])).unwrap_or(vec![data]);
                // The answer is queued by the hub, before the room's first message.
                let ok = Item::Reply(
                    Tag::Json {
                        ok: "Joined",
                        id: id.clone(),
                    },
                    Reply::Ok,
                );
                match self.join(&rooms, None, Who::Members, Some(ok)).await {
                    Ok(()) => return Flow::Continue,
                    Err(kind) => Err(kind),
                }
            }
            Command::Leave(json::Rooms { rooms, room, data }) => {
                let rooms = rooms.or(room.map(|r| vec![r])).unwrap_or(vec![data]);
                let left = self.leave(&rooms, Who::Members).await;
                left.and_then(|()| done("Left"))
            }
            Command::Rooms(json::Listing { after, limit }) => {
                let rooms = self.rooms(&after, limit.unwrap_or(0), Who::Members).await;
                rooms.map(|rooms| {
                    let rooms: Vec<Value> = (rooms.into_iter())
                        .map(
                            |r| json!({"name": &*r.name, "members": r.members, "online": r.online}),
                        )
                        .collect();
                    ("Rooms".into(), Value::from(rooms))
                })
            }
            Command::Members(json::InRoom { room, data }) => {
                let members = self.members(&room.unwrap_or(data)).await;
                members.map(|members| {
                    let members: Vec<Value> = (members.into_iter())
                        .map(|(name, online)| json!({"name": &*name, "online": online}))
                        .collect();
                    ("Members".into(), Value::from(members))
                })
            }
            Command::ListUsers | Command::Who => {
                let presence = self.who().await;
                let mut names: Vec<String> = presence.users.iter().map(|u| u.to_string()).collect();
                names.extend(std::iter::repeat_n(
                    crate::hub::ANONYMOUS.to_string(),
                    presence.anonymous,
                ));
                let names = match command {
                    Command::Who => Value::from(names),
                    _ => Value::from(names.join(", ")),
                };
                Ok(("Online users".into(), names))
            }
            Command::Users(json::Listing { after, limit }) => {
                let users = self.users(&after, limit.unwrap_or(0)).await;
                users.map(|users| {
                    let users: Vec<Value> = (users.into_iter())
                        .map(|u| {
                            json!({
                                "name": u.name,
                                "online": u.online,
                                "last_seen": u.last_seen,
                            })
                        })
                        .collect();
                    ("Users".into(), Value::from(users))
                })
            }
            Command::ListMessages => {
                Ok(("Recent messages".into(), Value::from(self.recent().await)))
            }
            Command::History(json::History {
                target,
                data,
                limit,
                before,
                after,
                before_time,
                after_time,
            }) => {
                let page = match (before, after, before_time, after_time) {
                    (Some(id), ..) => Page::BeforeId(id),
                    (_, Some(id), ..) => Page::AfterId(id),
                    (_, _, Some(ms), _) => Page::BeforeTime(ms),
                    (_, _, _, Some(ms)) => Page::AfterTime(ms),
                    _ => Page::Latest,
                };
                let history = self.history(&target.unwrap_or(data), page, limit).await;
                history.map(|messages| ("History".into(), history_items(messages)))
            }
            Command::Subscribe(json::Subscribe { acks }) => {
                if acks {
                    let _ = self.enable_acks();
                }
                self.subscribed = true;
                if let Some((identity, _)) = &self.login {
                    self.shared.hub.subscribe(self.link.id, identity.user);
                    self.start_catchup();
                }
                done("Subscribed")
            }
            Command::Conversations => self.conversations().await.map(|list| {
                let list: Vec<Value> = (list.into_iter())
                    .map(|c| {
                        let last = c.last.map(|m| {
                            json!({
                                "id": m.id,
                                "seq": m.seq,
                                "from": &*m.from,
                                "text": String::from_utf8_lossy(&m.body),
                                "time": m.time,
                                "received_at": rfc3339_ms(m.received_at),
                            })
                        });
                        json!({
                            "conversation": c.conv,
                            "kind": c.kind.name(),
                            "name": c.name,
                            "last_seq": c.last_seq,
                            "cursor": c.cursor,
                            "last": last,
                        })
                    })
                    .collect();
                ("Conversations".into(), Value::from(list))
            }),
            Command::Ack(json::Ack { conversation, seq }) => match (&self.login, conversation, seq)
            {
                (Some((identity, _)), Some(conv), Some(seq)) => {
                    self.shared.hub.cursors(identity.device, vec![(conv, seq)]);
                    done("Acked")
                }
                (None, ..) => Err(ErrorKind::NotLoggedIn),
                _ => Err(ErrorKind::Malformed),
            },
            Command::Search(json::Search { data, limit }) => {
                let found = self.search_users(&data, limit.unwrap_or(usize::MAX)).await;
                found.map(|found| {
                    let found: Vec<Value> = (found.into_iter())
                        .map(|u| json!({"name": u.name, "online": u.online}))
                        .collect();
                    ("Users found".into(), Value::from(found))
                })
            }
            Command::ContactRequest(json::Contact { to, data }) => {
                self.json_contact(to.unwrap_or(data), ContactAction::Request)
                    .await
            }
            Command::ContactAccept(json::Contact { to, data }) => {
                self.json_contact(to.unwrap_or(data), ContactAction::Accept)
                    .await
            }
            Command::ContactDecline(json::Contact { to, data }) => {
                self.json_contact(to.unwrap_or(data), ContactAction::Decline)
                    .await
            }
            Command::ContactRemove(json::Contact { to, data }) => {
                self.json_contact(to.unwrap_or(data), ContactAction::Remove)
                    .await
            }
            Command::Contacts => self.contact_list().await.map(|list| {
                let list: Vec<Value> = (list.into_iter())
                    .map(|c| {
                        json!({
                            "name": c.name,
                            "state": c.state.name(),
                            "online": c.online,
                            "last_seen": (c.last_seen > 0).then_some(c.last_seen),
                        })
                    })
                    .collect();
                ("Contacts".into(), Value::from(list))
            }),
            Command::FileOffer(json::FileOffer { sha256, size }) => {
                let hash = sha256.unwrap_or_default();
                match self.file_offer(&hash, size.unwrap_or(0)).await {
                    Ok(Offer::Have) => Ok(("Have".into(), json!({"have": true}))),
                    Ok(Offer::Upload { offset }) => {
                        Ok(("Upload".into(), json!({"have": false, "offset": offset})))
                    }
                    Err(kind) => Err(kind),
                }
            }
            Command::FileChunk(json::FileChunk {
                sha256,
                size,
                offset,
                data,
            }) => {
                let hash = sha256.unwrap_or_default();
                let (size, offset) = (size.unwrap_or(0), offset.unwrap_or(0));
                let stored = match BASE64.decode(data.as_bytes()) {
                    Ok(data) => {
                        self.file_chunk(&hash, size, offset, Bytes::from(data))
                            .await
                    }
                    Err(_) => Err(ErrorKind::Malformed),
                };
                match stored {
                    Ok(Progress::Complete) => Ok(("Stored".into(), json!({"complete": true}))),
                    Ok(Progress::Partial { received }) => Ok((
                        "Received".into(),
                        json!({"complete": false, "received": received}),
                    )),
                    Err(kind) => Err(kind),
                }
            }
            Command::SendFile(json::SendFile {
                room,
                to,
                sha256,
                name,
                mime,
                data,
            }) => {
                let (kind, target) = match (room, to) {
                    (Some(room), _) => (2, room),
                    (None, Some(to)) => (1, to),
                    _ => (0, String::new()),
                };
                let (hash, name) = (sha256.unwrap_or_default(), name.unwrap_or_default());
                let mime = mime.unwrap_or_default();
                let tag = Tag::Json {
                    ok: "File sent",
                    id: id.clone(),
                };
                let sent = match self.file_target(kind, &target) {
                    Ok(to) => {
                        let now = unix_nanos();
                        self.send_file(to, &hash, &name, &mime, &data, now, tag)
                            .await
                    }
                    Err(kind) => Err(kind),
                };
                match sent {
                    // The hub answers once the message is stored.
                    Ok(()) => return Flow::Continue,
                    Err(kind) => Err(kind),
                }
            }
            Command::Download(json::Download {
                sha256,
                offset,
                length,
            }) => {
                let hash = sha256.unwrap_or_default();
                let (offset, length) = (offset.unwrap_or(0), length.unwrap_or(4096));
                let data = self.download(&hash, offset, length).await;
                data.map(|data| {
                    let data = json!({"offset": offset, "data": BASE64.encode(&data)});
                    ("Data".into(), data)
                })
            }
            Command::Topic(json::Topic { room, topic }) => {
                let room = room.unwrap_or_default();
                let topic = topic.filter(|t| !t.is_empty());
                let set = self.moderate(&room, RoomAction::Topic(topic)).await;
                set.and_then(|()| done("Topic set"))
            }
            Command::InviteOnly(json::InviteOnly { room, on }) => {
                let room = room.unwrap_or_default();
                let set = self.moderate(&room, RoomAction::InviteOnly(on)).await;
                set.and_then(|()| done("Done"))
            }
            Command::Moderate(action, json::RoomUser { room, user }) => {
                let (room, user) = (room.unwrap_or_default(), user.unwrap_or_default());
                let action = super::moderation::action(moderation_word(action), user);
                match action {
                    Some(action) => {
                        let done_ = self.moderate(&room, action).await;
                        done_.and_then(|()| done("Done"))
                    }
                    None => Err(ErrorKind::Malformed),
                }
            }
            Command::DeleteRoom(json::InRoom { room, data }) => {
                let deleted = self
                    .moderate(&room.unwrap_or(data), RoomAction::Delete)
                    .await;
                deleted.and_then(|()| done("Room deleted"))
            }
            Command::RoomInfo(json::InRoom { room, data }) => {
                let details = self.room_details(&room.unwrap_or(data)).await;
                details.map(|d| {
                    let names = |list: &[Arc<str>]| -> Vec<String> {
                        list.iter().map(|n| n.to_string()).collect()
                    };
                    let data = json!({
                        "name": &*d.name,
                        "topic": d.topic.as_deref(),
                        "invite_only": d.invite_only,
                        "owner": d.owner.as_deref(),
                        "operators": names(&d.operators),
                        "banned": names(&d.banned),
                        "muted": names(&d.muted),
                        "role": d.rank.name(),
                        "member": d.member,
                    });
                    ("Room".into(), data)
                })
            }
            Command::Delete(json::Delete { target, seq }) => match seq {
                Some(seq) => {
                    let target = target.unwrap_or_default();
                    let deleted = self.delete_message(&target, seq).await;
                    deleted.and_then(|()| done("Message deleted"))
                }
                None => Err(ErrorKind::Malformed),
            },
            Command::Block(json::UserName { user }) => {
                let blocked = self.block(&user.unwrap_or_default(), true).await;
                blocked.and_then(|()| done("Done"))
            }
            Command::Unblock(json::UserName { user }) => {
                let unblocked = self.block(&user.unwrap_or_default(), false).await;
                unblocked.and_then(|()| done("Done"))
            }
            Command::Blocks => self.blocks().await.map(|list| {
                let list: Vec<&str> = list.iter().map(|n| &**n).collect();
                ("Blocked users".into(), Value::from(list))
            }),
            Command::Watch(json::Watch { users }) => {
                let reply_id = id.clone();
                let render = move |found: Vec<super::moderation::WatchedUser>| {
                    let list: Vec<Value> = found
                        .iter()
                        .map(|u| {
                            let seen = (u.last_seen > 0).then_some(u.last_seen);
                            json!({"name": &*u.name, "online": u.online, "last_seen": seen})
                        })
                        .collect();
                    json_line(true, "Watching", Value::from(list), reply_id)
                };
                match self.watch(users, render).await {
                    // The hub queues the answer, in order with the pushes that follow.
                    Ok(()) => return Flow::Continue,
                    Err(kind) => Err(kind),
                }
            }
            Command::Unknown(name) if name.is_empty() => {
                return self.json_invalid(NO_COMMAND, id).await;
            }
            Command::Unknown(name) => {
                let message = format!("Validation error: unknown command: {name}");
                return self.json_invalid(&message, id).await;
            }
        };
        match answer {
            Ok((message, data)) => self.json_reply(true, &message, data, id).await,
            Err(kind) => {
                self.json_reply(false, json_error(kind), Value::from(""), id)
                    .await
            }
        }
        Flow::Continue
    }

    /// Refuses a request in words of its own: seed 001's validation's, or `DEVICE_BUSY`.
    async fn json_invalid(&mut self, message: &str, id: Id) -> Flow {
        // Boxed: rare, and its state would grow every session's.
        Box::pin(self.json_reply(false, message, Value::from(""), id)).await;
        Flow::Continue
    }

    /// Answers a line that could not be read.
    pub(super) async fn json_error(&mut self, id: Id, kind: ErrorKind) -> Flow {
        self.json_reply(false, json_error(kind), Value::from(""), id)
            .await;
        Flow::Continue
    }

    async fn json_reply(&mut self, success: bool, message: &str, data: Value, id: Id) {
        let mut out = Vec::new();
        json::encode_response(success, message, &data, id.as_deref(), &mut out);
        self.say(Item::Bytes(Bytes::from(out))).await;
    }

    async fn json_send(&mut self, to: Target, text: String, ok: &'static str, id: Id) {
        if text.is_empty() {
            // Boxed: rare, and its state would grow every session's.
            let message = "Message is empty";
            return Box::pin(self.json_reply(false, message, Value::from(""), id)).await;
        }
        let tag = Tag::Json { ok, id };
        let (body, sent_at) = (Bytes::from(text), unix_nanos());
        self.send(to, body, sent_at, tag, Who::Anyone).await
    }

    async fn json_contact(&mut self, name: String, action: ContactAction) -> Answer {
        let result = self.contact_action(&name, action).await;
        result.and_then(|()| done("Done"))
    }

    /// The last messages sent to everyone, as seed 001 formats them.
    async fn recent(&self) -> String {
        let messages = self.latest_broadcasts(RECENT).await;
        if messages.is_empty() {
            return "No messages yet".into();
        }
        let lines: Vec<String> = messages
            .iter()
            .map(|m| {
                let secs = m.received_at.div_euclid(1000).rem_euclid(86_400);
                let body = match m.deleted {
                    true => super::history::DELETED.into(),
                    false => String::from_utf8_lossy(&m.body),
                };
                format!(
                    "[{:02}:{:02}:{:02}] {}: {}",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60,
                    m.from,
                    text::one_line(&body)
                )
            })
            .collect();
        lines.join("\n")
    }
}

/// A history page as `HISTORY` answers it.
fn history_items(messages: Vec<HistoryMessage>) -> Value {
    let items: Vec<Value> = messages
        .into_iter()
        .map(|m| {
            serde_json::to_value(HistoryItem {
                id: m.id,
                conversation: m.conv,
                seq: m.seq,
                from: &m.from,
                text: &String::from_utf8_lossy(&m.body),
                time: m.sent_at,
                received_at: rfc3339_ms(m.received_at),
                deleted: m.deleted,
            })
            .unwrap_or(Value::Null)
        })
        .collect();
    Value::from(items)
}

#[derive(Serialize)]
struct HistoryItem<'a> {
    id: i64,
    conversation: i64,
    seq: i64,
    from: &'a str,
    text: &'a str,
    time: u64,
    received_at: String,
    /// Only on a deleted message (its `text` is empty).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The word of a JSON moderation command, as the text protocol spells it.
fn moderation_word(action: json::ModerationAction) -> &'static str {
    use json::ModerationAction::*;
    match action {
        Invite => "invite",
        Kick => "kick",
        Ban => "ban",
        Unban => "unban",
        Mute => "mute",
        Unmute => "unmute",
        Op => "op",
        Deop => "deop",
    }
}

/// Every command (docs/PROTOCOL.md lists them; a test checks that this list has each).
const HELP: &[&str] = &[
    "REGISTER data=name (seed 001: a name for this connection, no password)",
    "REGISTER data=name password=... (an account)",
    "LOGIN data=name (as REGISTER without a password)",
    "LOGIN data=name password=... device=... want_token=true",
    "RESUME token=...",
    "STATE token=... (as RESUME)",
    "TOKEN",
    "PASSWD password=old new_password=new",
    "LOGOUT all=false",
    "PROFILE target=name",
    "SET_PROFILE display_name=... avatar=base64",
    "ECHO data=text",
    "MESSAGE data=text (to everyone)",
    "LIST_USERS",
    "LIST_MESSAGES",
    "TIME",
    "QUIT",
    "DM to=user data=text (or recipients=[user, ...])",
    "JOIN room=name (or rooms=[name, ...])",
    "LEAVE room=name (or rooms=[name, ...])",
    "SAY room=name data=text",
    "ROOMS after=name limit=n (a page)",
    "MEMBERS room=name",
    "WHO",
    "USERS after=name limit=n (a page)",
    "HISTORY target=room|user|* limit=n before|after=id before_time|after_time=ms",
    "CONVERSATIONS",
    "SUBSCRIBE acks=false",
    "ACK conversation=id seq=n",
    "SEARCH data=prefix limit=n",
    "CONTACT_REQUEST to=user",
    "CONTACT_ACCEPT to=user",
    "CONTACT_DECLINE to=user",
    "CONTACT_REMOVE to=user",
    "CONTACTS",
    "FILE_OFFER sha256=hex size=n",
    "FILE_CHUNK sha256=hex size=n offset=n data=base64",
    "SEND_FILE to=user|room=name sha256=hex name=... type=... data=caption",
    "DOWNLOAD sha256=hex offset=n length=n",
    "PING",
    "HELP",
    "TOPIC room=name topic=text (operators)",
    "INVITE_ONLY room=name on=true|false (operators)",
    "INVITE room=name user=name (operators)",
    "KICK room=name user=name (operators)",
    "BAN room=name user=name (operators)",
    "UNBAN room=name user=name (operators)",
    "MUTE room=name user=name (operators)",
    "UNMUTE room=name user=name (operators)",
    "OP room=name user=name (operators)",
    "DEOP room=name user=name (operators)",
    "DELETE_ROOM room=name (the owner)",
    "ROOM_INFO room=name",
    "DELETE target=room|user|* seq=n",
    "BLOCK user=name",
    "UNBLOCK user=name",
    "BLOCKS",
    "WATCH users=[...]",
];

fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A Unix-millisecond time as RFC 3339 in UTC, always with three fractional digits.
pub(super) fn rfc3339_ms(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}
