//! Requests of the JSON-lines protocol: seed 001's commands and parley's extensions.
//!
//! Strictly one response line per request, in order; pushes (`{"event":...}`) only after
//! `SUBSCRIBE`, because seed-001 clients pair each line they read with their last request.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use parley_proto::json::{self, Value};
use parley_proto::{text, validate_name, ErrorKind, Target};
use serde::Serialize;

use super::history::HistoryMessage;
use super::{Flow, Session, Who};
use crate::files::{Offer, Progress};
use crate::outbound::{json_error, Item, Tag};
use crate::store::Page;

/// Messages LIST_MESSAGES shows (as seed 001 does).
const RECENT: usize = 20;

/// One response line, ready to queue.
fn json_line(success: bool, message: &str, data: Value, id: Option<Arc<Value>>) -> Item {
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
            Err(_) => return self.json_error(None, ErrorKind::Malformed).await,
        };
        let id = request.id.clone().map(Arc::new);
        let command = request.command.to_ascii_uppercase();
        let logged_in = self.login.is_some();
        let max_name = self.shared.config.max_name_bytes;
        match command.as_str() {
            // The hot paths, not boxed: a box as large as the biggest command's state,
            // allocated and freed for every message, costs more than the message's own
            // work in the session. The rest is boxed, so idle sessions stay small.
            "MESSAGE" => {
                self.json_send(Target::Everyone, request.data, "Message broadcasted", id)
                    .await
            }
            "DM" if logged_in
                && request.recipients.is_none()
                && request
                    .to
                    .as_deref()
                    .is_some_and(|to| validate_name(to.as_bytes(), max_name).is_ok()) =>
            {
                let to = Target::User(request.to.unwrap_or_default());
                self.json_send(to, request.data, "Message sent", id).await
            }
            "SAY" if logged_in => {
                let room = Target::Room(request.room.unwrap_or_default());
                self.json_send(room, request.data, "Message sent", id).await
            }
            _ => return Box::pin(self.json_request(request, command, id)).await,
        }
        Flow::Continue
    }

    /// Every request but the hot paths of `json_line`.
    async fn json_request(
        &mut self,
        request: json::Request,
        command: String,
        id: Option<Arc<Value>>,
    ) -> Flow {
        let max_name = self.shared.config.max_name_bytes;
        let name_ok = |name: &str| validate_name(name.as_bytes(), max_name).is_ok();
        let (success, message, data): (bool, String, Value) = match command.as_str() {
            "ECHO" => (true, "Echo response".into(), Value::from(request.data)),
            "TIME" => (true, "Server time".into(), Value::from(rfc3339_now())),
            "PING" => (true, "PONG".into(), Value::from("")),
            "QUIT" => {
                self.json_reply(true, "Goodbye!", Value::from(""), id).await;
                return Flow::Close("quit".into());
            }
            "REGISTER" | "LOGIN" if request.password.is_some() => {
                let name = request.data.trim().to_string();
                let password = request.password.clone().unwrap_or_default();
                if command == "REGISTER" {
                    match self.register(&name, &password).await {
                        Ok(()) => (true, format!("Account {name} created"), Value::from("")),
                        Err(kind) => (false, json_error(kind).into(), Value::from("")),
                    }
                } else {
                    let device = request.device.clone().unwrap_or_default();
                    let welcome = (!request.want_token).then(|| {
                        json_line(
                            true,
                            &format!("Welcome, {name}!"),
                            Value::from(""),
                            id.clone(),
                        )
                    });
                    match self
                        .password_login(&name, &password, &device, welcome)
                        .await
                    {
                        Ok(()) if !request.want_token => return Flow::Continue,
                        Ok(()) if request.want_token => match self.issue_token().await {
                            Ok((token, expires_at)) => (
                                true,
                                format!("Welcome, {name}!"),
                                serde_json::json!({"token": token, "expires_at": expires_at}),
                            ),
                            Err(kind) => (false, json_error(kind).into(), Value::from("")),
                        },
                        Ok(()) => (true, format!("Welcome, {name}!"), Value::from("")),
                        Err(kind) => (false, json_error(kind).into(), Value::from("")),
                    }
                }
            }
            "REGISTER" | "LOGIN" => {
                let name = request.data.trim();
                if !name_ok(name) {
                    (
                        false,
                        json_error(ErrorKind::InvalidName).into(),
                        Value::from(""),
                    )
                } else if let Some((_, current)) = &self.login {
                    (
                        false,
                        format!("Already registered as {current}"),
                        Value::from(""),
                    )
                } else {
                    let message = format!("Registration successful. Welcome, {name}!");
                    let welcome = json_line(true, &message, Value::from(""), id.clone());
                    match self.login(name, Some(welcome)).await {
                        Ok(()) => return Flow::Continue,
                        Err(kind) => (false, json_error(kind).into(), Value::from("")),
                    }
                }
            }
            // STATE is seed 003's name for a token login.
            "RESUME" | "STATE" => match self
                .token_login(request.token.as_deref().unwrap_or(""), |name| {
                    let message = format!("Welcome back, {name}!");
                    Some(json_line(true, &message, Value::from(name), id.clone()))
                })
                .await
            {
                Ok(_) => return Flow::Continue,
                Err(kind) => (false, json_error(kind).into(), Value::from("")),
            },
            "TOKEN" => match self.issue_token().await {
                Ok((token, expires_at)) => (
                    true,
                    "Token issued".into(),
                    serde_json::json!({"token": token, "expires_at": expires_at}),
                ),
                Err(kind) => (false, json_error(kind).into(), Value::from("")),
            },
            "PASSWD" => {
                let old = request.password.as_deref().unwrap_or("");
                let new = request.new_password.as_deref().unwrap_or("");
                match self.change_password(old, new).await {
                    Ok(()) => (true, "Password changed".into(), Value::from("")),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "LOGOUT" => match self.logout(request.all).await {
                Ok(()) => {
                    self.json_reply(true, "Logged out", Value::from(""), id)
                        .await;
                    return Flow::Close("logged out".into());
                }
                Err(kind) => (false, json_error(kind).into(), Value::from("")),
            },
            "PROFILE" => {
                let name = request.target.clone().unwrap_or(request.data.clone());
                match self.get_profile(&name).await {
                    Ok(p) => (
                        true,
                        "Profile".into(),
                        serde_json::json!({
                            "name": p.name,
                            "display_name": p.display_name,
                            "avatar": p.avatar.map(|a| BASE64.encode(a)),
                        }),
                    ),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "SET_PROFILE" => {
                let avatar = match request.avatar.as_deref().map(|a| BASE64.decode(a)) {
                    Some(Ok(bytes)) => Ok(Some(bytes)),
                    Some(Err(_)) => Err(ErrorKind::Malformed),
                    None => Ok(None),
                };
                let result = match avatar {
                    Ok(avatar) => self.set_profile(request.display_name.clone(), avatar).await,
                    Err(kind) => Err(kind),
                };
                match result {
                    Ok(()) => (true, "Profile saved".into(), Value::from("")),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "MESSAGE" => {
                self.json_send(Target::Everyone, request.data, "Message broadcasted", id)
                    .await;
                return Flow::Continue;
            }
            "DM" if request.recipients.is_some() && self.login.is_some() => {
                let names = request.recipients.clone().unwrap_or_default();
                if names.iter().all(|n| name_ok(n)) && !names.is_empty() {
                    let to = Target::Users(names);
                    self.json_send(to, request.data, "Message sent", id).await;
                    return Flow::Continue;
                }
                (
                    false,
                    json_error(ErrorKind::UserNotFound).into(),
                    Value::from(""),
                )
            }
            "DM" => {
                let to = request.to.unwrap_or_default();
                if self.login.is_none() {
                    (
                        false,
                        json_error(ErrorKind::NotLoggedIn).into(),
                        Value::from(""),
                    )
                } else if !name_ok(&to) {
                    (
                        false,
                        json_error(ErrorKind::UserNotFound).into(),
                        Value::from(""),
                    )
                } else {
                    self.json_send(Target::User(to), request.data, "Message sent", id)
                        .await;
                    return Flow::Continue;
                }
            }
            // Room commands need a login: an anonymous JSON session must never be pushed
            // room traffic it did not subscribe to.
            "SAY" if self.login.is_none() => (
                false,
                json_error(ErrorKind::NotLoggedIn).into(),
                Value::from(""),
            ),
            "SAY" => {
                let room = request.room.unwrap_or_default();
                self.json_send(Target::Room(room), request.data, "Message sent", id)
                    .await;
                return Flow::Continue;
            }
            "LIST_USERS" | "WHO" => {
                let presence = self.who().await;
                let mut names: Vec<String> = presence.users.iter().map(|u| u.to_string()).collect();
                names.extend(std::iter::repeat_n(
                    crate::hub::ANONYMOUS.to_string(),
                    presence.anonymous,
                ));
                if command == "WHO" {
                    (true, "Online users".into(), Value::from(names))
                } else {
                    (true, "Online users".into(), Value::from(names.join(", ")))
                }
            }
            "LIST_MESSAGES" => (
                true,
                "Recent messages".into(),
                Value::from(self.recent().await),
            ),
            "JOIN" | "LEAVE" => {
                let rooms = request
                    .rooms
                    .or(request.room.map(|r| vec![r]))
                    .unwrap_or_else(|| vec![request.data.clone()]);
                // Room commands need a login: an anonymous JSON session must never be
                // pushed room traffic it did not subscribe to.
                let result = match command.as_str() {
                    "JOIN" => self.join(&rooms, None, Who::Members).await,
                    _ => self.leave(&rooms, Who::Members).await,
                };
                match result {
                    Ok(()) if command == "JOIN" => (true, "Joined".into(), Value::from("")),
                    Ok(()) => (true, "Left".into(), Value::from("")),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "ROOMS" => {
                let rooms: Vec<Value> = self
                    .rooms()
                    .await
                    .into_iter()
                    .map(|r| serde_json::json!({"name": &*r.name, "members": r.members, "online": r.online}))
                    .collect();
                (true, "Rooms".into(), Value::from(rooms))
            }
            "HISTORY" => {
                let target = request.target.unwrap_or(request.data);
                let page = match (
                    request.before,
                    request.after,
                    request.before_time,
                    request.after_time,
                ) {
                    (Some(id), ..) => Page::BeforeId(id),
                    (_, Some(id), ..) => Page::AfterId(id),
                    (_, _, Some(ms), _) => Page::BeforeTime(ms),
                    (_, _, _, Some(ms)) => Page::AfterTime(ms),
                    _ => Page::Latest,
                };
                match self.history(&target, page, request.limit).await {
                    Ok(messages) => (true, "History".into(), history_items(messages)),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "FILE_OFFER" => {
                let hash = request.sha256.clone().unwrap_or_default();
                match self.file_offer(&hash, request.size.unwrap_or(0)).await {
                    Ok(Offer::Have) => (true, "Have".into(), serde_json::json!({"have": true})),
                    Ok(Offer::Upload { offset }) => (
                        true,
                        "Upload".into(),
                        serde_json::json!({"have": false, "offset": offset}),
                    ),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "FILE_CHUNK" => {
                let hash = request.sha256.clone().unwrap_or_default();
                let (size, offset) = (request.size.unwrap_or(0), request.offset.unwrap_or(0));
                let result = match BASE64.decode(request.data.as_bytes()) {
                    Ok(data) => {
                        self.file_chunk(&hash, size, offset, Bytes::from(data))
                            .await
                    }
                    Err(_) => Err(ErrorKind::Malformed),
                };
                match result {
                    Ok(Progress::Complete) => {
                        (true, "Stored".into(), serde_json::json!({"complete": true}))
                    }
                    Ok(Progress::Partial { received }) => (
                        true,
                        "Received".into(),
                        serde_json::json!({"complete": false, "received": received}),
                    ),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "SEND_FILE" => {
                let (kind, target) = match (&request.room, &request.to) {
                    (Some(room), _) => (2, room.clone()),
                    (None, Some(to)) => (1, to.clone()),
                    _ => (0, String::new()),
                };
                let hash = request.sha256.clone().unwrap_or_default();
                let name = request.name.clone().unwrap_or_default();
                let mime = request.r#type.clone().unwrap_or_default();
                let tag = Tag::Json {
                    ok: "File sent",
                    id: id.clone(),
                };
                let sent = match self.file_target(kind, &target) {
                    Ok(to) => {
                        let now = unix_nanos();
                        self.send_file(to, &hash, &name, &mime, &request.data, now, tag)
                            .await
                    }
                    Err(kind) => Err(kind),
                };
                match sent {
                    Ok(()) => return Flow::Continue,
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "DOWNLOAD" => {
                let hash = request.sha256.clone().unwrap_or_default();
                let (offset, length) =
                    (request.offset.unwrap_or(0), request.length.unwrap_or(4096));
                match self.download(&hash, offset, length).await {
                    Ok(data) => (
                        true,
                        "Data".into(),
                        serde_json::json!({"offset": offset, "data": BASE64.encode(&data)}),
                    ),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "SEARCH" => {
                let limit = request.limit.unwrap_or(usize::MAX);
                match self.search_users(&request.data, limit).await {
                    Ok(found) => {
                        let found: Vec<Value> = found
                            .into_iter()
                            .map(|u| serde_json::json!({"name": u.name, "online": u.online}))
                            .collect();
                        (true, "Users found".into(), Value::from(found))
                    }
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "CONTACT_REQUEST" | "CONTACT_ACCEPT" | "CONTACT_DECLINE" | "CONTACT_REMOVE" => {
                let word = command.trim_start_matches("CONTACT_").to_ascii_lowercase();
                let name = request.to.clone().unwrap_or(request.data.clone());
                let action = super::contacts::action(&word).expect("one of the four");
                match self.contact_action(&name, action).await {
                    Ok(()) => (true, "Done".into(), Value::from("")),
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "CONTACTS" => match self.contact_list().await {
                Ok(list) => {
                    let list: Vec<Value> = list
                        .into_iter()
                        .map(|c| {
                            serde_json::json!({
                                "name": c.name,
                                "state": c.state.name(),
                                "online": c.online,
                                "last_seen": (c.last_seen > 0).then_some(c.last_seen),
                            })
                        })
                        .collect();
                    (true, "Contacts".into(), Value::from(list))
                }
                Err(kind) => (false, json_error(kind).into(), Value::from("")),
            },
            "USERS" => match self.users().await {
                Ok(users) => {
                    let users: Vec<Value> = users
                        .into_iter()
                        .map(|u| {
                            serde_json::json!({
                                "name": u.name,
                                "online": u.online,
                                "last_seen": (u.last_seen > 0).then_some(u.last_seen),
                            })
                        })
                        .collect();
                    (true, "Users".into(), Value::from(users))
                }
                Err(kind) => (false, json_error(kind).into(), Value::from("")),
            },
            "MEMBERS" => {
                let room = request.room.clone().unwrap_or(request.data.clone());
                match self.members(&room).await {
                    Ok(members) => {
                        let members: Vec<Value> = members
                            .into_iter()
                            .map(|(name, online)| serde_json::json!({"name": &*name, "online": online}))
                            .collect();
                        (true, "Members".into(), Value::from(members))
                    }
                    Err(kind) => (false, json_error(kind).into(), Value::from("")),
                }
            }
            "ACK" => match (&self.login, request.conversation, request.seq) {
                (Some((identity, _)), Some(conv), Some(seq)) => {
                    self.shared.hub.cursors(identity.device, vec![(conv, seq)]);
                    (true, "Acked".into(), Value::from(""))
                }
                (None, ..) => (
                    false,
                    json_error(ErrorKind::NotLoggedIn).into(),
                    Value::from(""),
                ),
                _ => (
                    false,
                    json_error(ErrorKind::Malformed).into(),
                    Value::from(""),
                ),
            },
            "SUBSCRIBE" => {
                if request.acks {
                    let _ = self.enable_acks();
                }
                self.subscribed = true;
                if let Some((identity, _)) = &self.login {
                    self.shared.hub.subscribe(self.link.id, identity.user);
                    self.start_catchup();
                }
                (true, "Subscribed".into(), Value::from(""))
            }
            "CONVERSATIONS" => match self.conversations().await {
                Ok(list) => {
                    let list: Vec<Value> = list
                        .into_iter()
                        .map(|c| {
                            let last = c.last.map(|m| {
                                serde_json::json!({
                                    "id": m.id,
                                    "seq": m.seq,
                                    "from": &*m.from,
                                    "text": String::from_utf8_lossy(&m.body),
                                    "time": m.time,
                                    "received_at": rfc3339_ms(m.received_at),
                                })
                            });
                            serde_json::json!({
                                "conversation": c.conv,
                                "kind": c.kind.name(),
                                "name": c.name,
                                "last_seq": c.last_seq,
                                "cursor": c.cursor,
                                "last": last,
                            })
                        })
                        .collect();
                    (true, "Conversations".into(), Value::from(list))
                }
                Err(kind) => (false, json_error(kind).into(), Value::from("")),
            },
            "HELP" => {
                let help: Vec<&str> = HELP.to_vec();
                (true, "Commands".into(), Value::from(help))
            }
            _ => (
                false,
                json_error(ErrorKind::UnknownCommand).into(),
                Value::from(""),
            ),
        };
        self.json_reply(success, &message, data, id).await;
        Flow::Continue
    }

    /// Answers a line that could not be read.
    pub(super) async fn json_error(&mut self, id: Option<Arc<Value>>, kind: ErrorKind) -> Flow {
        self.json_reply(false, json_error(kind), Value::from(""), id)
            .await;
        Flow::Continue
    }

    async fn json_reply(
        &mut self,
        success: bool,
        message: &str,
        data: Value,
        id: Option<Arc<Value>>,
    ) {
        let mut out = Vec::new();
        json::encode_response(success, message, &data, id.as_deref(), &mut out);
        self.say(Item::Bytes(Bytes::from(out))).await;
    }

    async fn json_send(
        &mut self,
        to: Target,
        text: String,
        ok: &'static str,
        id: Option<Arc<Value>>,
    ) {
        // The refusals are boxed: rare, and their state would grow every session's.
        if text.is_empty() {
            let message = "Message is empty";
            return Box::pin(self.json_reply(false, message, Value::from(""), id)).await;
        }
        if !self.messages.allow() {
            Box::pin(self.json_error(id, ErrorKind::RateLimited)).await;
            return;
        }
        self.acquire_inflight().await;
        let tag = Tag::Json { ok, id };
        let hub = &self.shared.hub;
        hub.send(
            self.link.clone(),
            self.actor(),
            to,
            Bytes::from(text),
            unix_nanos(),
            tag,
        );
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
                let body = String::from_utf8_lossy(&m.body);
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
}

const HELP: &[&str] = &[
    "REGISTER data=name password=... (an account)",
    "LOGIN data=name password=... device=... want_token=true",
    "RESUME token=...",
    "TOKEN",
    "PASSWD password=old new_password=new",
    "LOGOUT all=false",
    "PROFILE target=name",
    "SET_PROFILE display_name=... avatar=base64",
    "ECHO data",
    "REGISTER data=name",
    "MESSAGE data=text (to everyone)",
    "LIST_USERS",
    "LIST_MESSAGES",
    "TIME",
    "QUIT",
    "DM to=user data=text",
    "JOIN room|rooms",
    "LEAVE room|rooms",
    "SAY room data=text",
    "ROOMS",
    "WHO",
    "HISTORY target=room|user|* limit=n",
    "CONVERSATIONS",
    "SUBSCRIBE",
    "PING",
    "HELP",
];

/// Now, in Unix nanoseconds: the timestamp of messages whose protocol carries none.
pub(super) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

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
