//! How each style turns replies, messages and notices into bytes. A message or notice
//! pushed to many sessions is encoded at most once per style, by the first writer of that
//! style, and its bytes are shared by the rest.
//!
//! Byte layouts live in `parley-proto`; this is the thin switch between them, so the rest of
//! the server never matches on a wire format.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parley_proto::json::{self, Value};
use parley_proto::{binary, simpletcp, text, ConversationKind, ErrorKind, Reply};
use serde::Serialize;

use super::delivery::{ContactChange, Delivery, ModerationChange, Notice, RoomRun, SharedNotice};
use super::Style;

impl Style {
    /// About the bytes `encode_delivery` appends (exact for binary, where it is a frame of
    /// fixed fields and three strings), for sizing a write before encoding it.
    pub fn delivery_len_hint(self, d: &Delivery) -> usize {
        let strings = d.body.len() + d.from.len() + d.to.len();
        match self {
            Style::Binary => 4 + 3 + 4 + 6 + strings + 8,
            // Event frames carry ids and sequences too; lines and JSON a few words.
            _ => strings + 64,
        }
    }

    /// Appends a pushed message.
    pub fn encode_delivery(self, d: &Delivery, dst: &mut BytesMut) {
        if let Some((id, seq)) = d.deletes {
            return self.encode_deletion(d, id, seq, dst);
        }
        match self {
            Style::Binary => {
                // Bodies are bounded by the frame and line limits on the way in, so this
                // cannot fail for anything the server accepted.
                let (from, to) = (d.from.as_bytes(), d.to.as_bytes());
                if let Err(e) = binary::encode_message(0, &d.body, from, to, d.sent_at, dst) {
                    tracing::error!(error = %e, id = d.id, "cannot encode a delivery");
                }
            }
            Style::Events => {
                let event = event_of(d);
                if let Err(e) = binary::encode_event(&event, dst) {
                    tracing::error!(error = %e, id = d.id, "cannot encode a delivery");
                }
            }
            Style::Line | Style::Slash => {
                let text = d.text();
                let text = text::one_line(&text);
                // A slash session hears only gochat's `> ` lines, whatever reaches it.
                let line = match (d.kind, self) {
                    (ConversationKind::Room, Style::Slash) => format!("> {}: {}\n", d.from, text),
                    (ConversationKind::Direct, Style::Slash) => {
                        format!("> {} (to you): {}\n", d.from, text)
                    }
                    (ConversationKind::Broadcast, Style::Slash) => {
                        format!("> {} (to everyone): {}\n", d.from, text)
                    }
                    (ConversationKind::Direct, _) => format!("DM {} {}\n", d.from, text),
                    (ConversationKind::Broadcast, _) => format!("MSG {} {}\n", d.from, text),
                    (ConversationKind::Room, _) => format!("ROOM {} {} {}\n", d.to, d.from, text),
                };
                dst.put_slice(line.as_bytes());
            }
            Style::WebSocket => frame_json(|out| Style::Json.encode_delivery(d, out), dst),
            Style::SimpleTcp => super::simpletcp::forward(d, dst),
            Style::Json => {
                let event = MessageEvent {
                    event: "message",
                    kind: d.kind.name(),
                    id: d.id,
                    conversation: d.conv,
                    seq: d.seq,
                    from: &d.from,
                    to: &d.to,
                    text: &d.text(),
                    time: d.sent_at,
                };
                // Room for the fields around the text: one allocation, no regrowth.
                let mut out = Vec::with_capacity(192 + d.body.len());
                json::encode_line(&event, &mut out);
                dst.put_slice(&out);
            }
        }
    }

    /// Appends the deletion `d` (a tombstone) of message `id` at `seq`: a frame or line of
    /// its own where the style has one, nothing where it has none (seed 000's binary; the
    /// text protocol outside rooms, whose seed-002 clients expect no such line).
    fn encode_deletion(self, d: &Delivery, id: i64, seq: i64, dst: &mut BytesMut) {
        match self {
            // Seed 003's protocol has no word for a deletion either.
            Style::Binary | Style::SimpleTcp => {}
            Style::Events => {
                let frame = binary::Frame::Deleted {
                    cid: 0,
                    event: event_of(d),
                    message_id: id as u64,
                    message_seq: seq as u64,
                };
                if let Err(e) = frame.encode(dst) {
                    tracing::error!(error = %e, id = d.id, "cannot encode a deletion");
                }
            }
            Style::Line | Style::Slash => {
                let line = match (d.kind, self) {
                    (ConversationKind::Room, Style::Slash) => {
                        format!("> {} deleted a message\n", d.from)
                    }
                    (ConversationKind::Room, _) => format!("DELETED {} {seq} {}\n", d.to, d.from),
                    _ => return,
                };
                dst.put_slice(line.as_bytes());
            }
            Style::WebSocket => frame_json(|out| Style::Json.encode_delivery(d, out), dst),
            Style::Json => {
                let event = DeletedEvent {
                    event: "deleted",
                    kind: d.kind.name(),
                    id: d.id,
                    conversation: d.conv,
                    seq: d.seq,
                    from: &d.from,
                    to: &d.to,
                    deleted: DeletedRef { id, seq },
                };
                let mut out = Vec::with_capacity(192);
                json::encode_line(&event, &mut out);
                dst.put_slice(&out);
            }
        }
    }

    /// Whether this style shows `notice` at all: the hub queues it only for sessions whose
    /// style does (without encoding it on its own thread).
    pub fn shows(self, notice: &Notice) -> bool {
        !matches!(
            (self, notice),
            (Style::Binary | Style::SimpleTcp, _)
                | (Style::Events | Style::Slash, Notice::Disconnected { .. })
                | (
                    Style::Line | Style::Slash,
                    Notice::Online { .. } | Notice::Offline { .. }
                )
        )
    }

    /// Appends a notice (nothing for styles that cannot carry one: see `shows`).
    pub fn encode_notice(self, notice: &Notice, dst: &mut BytesMut) {
        if !self.shows(notice) {
            return;
        }
        let line = match (self, notice) {
            (Style::Binary | Style::SimpleTcp, _) => return,
            (Style::Events, notice) => return encode_notice_frame(notice, dst),
            (Style::Line | Style::Slash, Notice::Online { .. } | Notice::Offline { .. }) => return,
            (
                Style::Line | Style::Slash,
                Notice::Moderation {
                    room,
                    user,
                    by,
                    change,
                },
            ) => moderation_line(self, room, user.as_deref().unwrap_or(""), by, change),
            (Style::WebSocket, notice) => {
                return frame_json(|out| Style::Json.encode_notice(notice, out), dst);
            }
            (Style::Line, Notice::Joined { room, name }) => format!("INFO {name} joined {room}\n"),
            (Style::Line, Notice::Left { room, name }) => format!("INFO {name} left {room}\n"),
            (Style::Line, Notice::Disconnected { name }) => format!("INFO {name} disconnected\n"),
            (Style::Slash, Notice::Joined { name, .. }) => format!("> {name} joined the room\n"),
            (Style::Slash, Notice::Left { name, .. }) => format!("> {name} has left the room\n"),
            (Style::Slash, Notice::Disconnected { .. }) => return,
            (Style::Line | Style::Slash, Notice::Contact { name, change }) => {
                let what = match change {
                    ContactChange::Requested => "wants to be your contact",
                    ContactChange::Accepted => "accepted your contact request",
                    ContactChange::Declined => "declined your contact request",
                    ContactChange::Removed => "removed you from their contacts",
                };
                match self {
                    Style::Slash => format!("> {name} {what}\n"),
                    _ => format!("INFO {name} {what}\n"),
                }
            }
            (
                Style::Json,
                Notice::Moderation {
                    room,
                    user,
                    by,
                    change,
                },
            ) => {
                let topic = match change {
                    ModerationChange::Topic(topic) => Some(&**topic),
                    _ => None,
                };
                let event = ModerationEvent {
                    event: "moderation",
                    room,
                    change: change.name(),
                    user: user.as_deref(),
                    topic,
                    by,
                };
                let mut out = Vec::new();
                json::encode_line(&event, &mut out);
                dst.put_slice(&out);
                return;
            }
            (Style::Json, Notice::Offline { name, last_seen }) => {
                let event = OfflineEvent {
                    event: "offline",
                    user: name,
                    last_seen: *last_seen,
                };
                let mut out = Vec::new();
                json::encode_line(&event, &mut out);
                dst.put_slice(&out);
                return;
            }
            (Style::Json, notice) => {
                let (event, room, user) = match notice {
                    Notice::Joined { room, name } => ("joined", Some(&**room), name),
                    Notice::Left { room, name } => ("left", Some(&**room), name),
                    Notice::Disconnected { name } => ("disconnected", None, name),
                    Notice::Contact { name, change } => (change.event(), None, name),
                    Notice::Online { name } => ("online", None, name),
                    Notice::Moderation { .. } | Notice::Offline { .. } => {
                        unreachable!("handled above")
                    }
                };
                let mut out = Vec::new();
                json::encode_line(&NoticeEvent { event, room, user }, &mut out);
                dst.put_slice(&out);
                return;
            }
        };
        dst.put_slice(line.as_bytes());
    }
}

/// A binary push (a session that enabled acks) of `notice`: a `Presence` frame for a
/// watched user's change, a `Notice` frame for the rest.
fn encode_notice_frame(notice: &Notice, dst: &mut BytesMut) {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let none = Bytes::new();
    let frame = match notice {
        Notice::Online { name } => binary::Frame::Presence {
            cid: 0,
            user: b(name),
            online: true,
            last_seen: 0,
        },
        Notice::Offline { name, last_seen } => binary::Frame::Presence {
            cid: 0,
            user: b(name),
            online: false,
            last_seen: (*last_seen).max(0) as u64,
        },
        Notice::Disconnected { .. } => return,
        Notice::Joined { room, name } | Notice::Left { room, name } => binary::Frame::Notice {
            cid: 0,
            room: b(room),
            change: match notice {
                Notice::Joined { .. } => binary::change::JOINED,
                _ => binary::change::LEFT,
            },
            user: b(name),
            by: b(name),
            text: none,
        },
        Notice::Contact { name, change } => binary::Frame::Notice {
            cid: 0,
            room: none.clone(),
            change: match change {
                ContactChange::Requested => binary::change::CONTACT_REQUESTED,
                ContactChange::Accepted => binary::change::CONTACT_ACCEPTED,
                ContactChange::Declined => binary::change::CONTACT_DECLINED,
                ContactChange::Removed => binary::change::CONTACT_REMOVED,
            },
            user: b(name),
            by: b(name),
            text: none,
        },
        Notice::Moderation {
            room,
            user,
            by,
            change,
        } => binary::Frame::Notice {
            cid: 0,
            room: b(room),
            change: change.code(),
            user: user.as_deref().map_or(none.clone(), b),
            by: b(by),
            text: match change {
                ModerationChange::Topic(topic) => b(topic),
                _ => none,
            },
        },
    };
    if let Err(e) = frame.encode(dst) {
        tracing::error!(error = %e, "cannot encode a notice");
    }
}

/// A moderation notice as a text line: seed 002's `INFO` style, or seed 004's `> `.
fn moderation_line(
    style: Style,
    room: &str,
    user: &str,
    by: &str,
    change: &ModerationChange,
) -> String {
    use ModerationChange::*;
    if style == Style::Slash {
        return match change {
            Invited => format!("> {by} invited you to {room}\n"),
            Topic(t) if t.is_empty() => format!("> {by} cleared the topic\n"),
            Topic(t) => format!("> {by} set the topic: {}\n", text::one_line(t)),
            InviteOnly(true) => format!("> {by} made the room invite-only\n"),
            InviteOnly(false) => format!("> {by} opened the room\n"),
            Deleted => format!("> {by} deleted the room\n"),
            Opped => format!("> {user} was made an operator by {by}\n"),
            Deopped => format!("> {user} is no longer an operator (by {by})\n"),
            change => format!("> {user} was {} by {by}\n", change.name()),
        };
    }
    match change {
        Topic(t) if t.is_empty() => format!("INFO {by} cleared the topic of {room}\n"),
        Topic(t) => format!("INFO {by} set the topic of {room}: {}\n", text::one_line(t)),
        InviteOnly(true) => format!("INFO {by} made {room} invite-only\n"),
        InviteOnly(false) => format!("INFO {by} opened {room}\n"),
        Invited => format!("INFO {by} invited you to {room}\n"),
        Kicked => format!("INFO {by} kicked {user} from {room}\n"),
        Banned => format!("INFO {by} banned {user} from {room}\n"),
        Unbanned => format!("INFO {by} lifted the ban on {user} in {room}\n"),
        Muted => format!("INFO {by} muted {user} in {room}\n"),
        Unmuted => format!("INFO {by} unmuted {user} in {room}\n"),
        Opped => format!("INFO {by} made {user} an operator of {room}\n"),
        Deopped => format!("INFO {by} took operator of {room} from {user}\n"),
        Deleted => format!("INFO {by} deleted {room}\n"),
    }
}

/// A delivery as the binary `Event` it is pushed as.
fn event_of(d: &Delivery) -> binary::Event {
    binary::Event {
        id: d.id as u64,
        conversation: d.conv as u64,
        seq: d.seq as u64,
        kind: d.kind.code(),
        from: Bytes::copy_from_slice(d.from.as_bytes()),
        to: Bytes::copy_from_slice(d.to.as_bytes()),
        time: d.sent_at,
        message: d.body.clone(),
    }
}

/// Appends, in the text dialects, a direct message the session's own user sent from
/// another device: `SENT <to> <text>` (a `DM <self> <text>` would read as a message to
/// oneself). Rare, so never shared between sessions.
pub fn encode_sent(d: &Delivery, dst: &mut BytesMut) {
    let text = d.text();
    let line = format!("SENT {} {}\n", d.to, text::one_line(&text));
    dst.put_slice(line.as_bytes());
}

/// Appends, as one WebSocket text frame, the JSON line that `encode` appends (without its
/// newline). The line is written in place after room for the usual 4-byte header (payloads
/// of 126 to 65,535 bytes), which is moved when the payload turns out shorter or longer:
/// no buffer of its own per frame.
pub fn frame_json(encode: impl FnOnce(&mut BytesMut), dst: &mut BytesMut) {
    const ROOM: usize = 4;
    let start = dst.len();
    dst.put_slice(&[0; ROOM]);
    encode(dst);
    if dst.last() == Some(&b'\n') {
        dst.truncate(dst.len() - 1);
    }
    let len = dst.len() - start - ROOM;
    if len == 0 {
        dst.truncate(start);
        return;
    }
    let (header, n) = parley_proto::ws::header(parley_proto::ws::Opcode::Text, len);
    let end = dst.len();
    if n < ROOM {
        dst.copy_within(start + ROOM..end, start + n);
        dst.truncate(end - (ROOM - n));
    } else if n > ROOM {
        dst.put_slice(&[0; 10 - ROOM]);
        dst.copy_within(start + ROOM..end, start + n);
    }
    dst[start..start + n].copy_from_slice(&header[..n]);
}

/// Appends a JSON line as one WebSocket text frame (without its newline).
pub fn frame_line(line: &[u8], dst: &mut BytesMut) {
    let json = line.strip_suffix(b"\n").unwrap_or(line);
    if json.is_empty() {
        return;
    }
    parley_proto::ws::encode(parley_proto::ws::Opcode::Text, json, None, dst);
}

/// The answer to a stored message over WebSocket, keys as every JSON response has them.
#[derive(Serialize)]
struct StoredResponse<'a> {
    success: bool,
    message: &'a str,
    data: StoredAt,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct StoredAt {
    id: i64,
    conversation: i64,
    seq: i64,
}

/// A message's bytes per style, encoded by the first session of each style to write it
/// and shared by the rest.
impl Delivery {
    /// This delivery's bytes in `style`, encoded on first use.
    pub fn encoded(&self, style: Style) -> &Bytes {
        self.encoded
            .get(style, |buf| style.encode_delivery(self, buf))
    }

    /// Appends this delivery's bytes in `style` to `dst`. One that no other session holds
    /// (a direct message to a single device, the usual case) is encoded straight into
    /// `dst`: keeping its bytes for others would be an allocation, a copy and a free per
    /// message for nobody.
    pub fn write_to(self: &Arc<Self>, style: Style, dst: &mut BytesMut) {
        match self.encoded.cached(style) {
            Some(bytes) => dst.extend_from_slice(bytes),
            // Nobody else holds it, so nobody can start to while it is written here.
            None if Arc::strong_count(self) == 1 => style.encode_delivery(self, dst),
            None => dst.extend_from_slice(self.encoded(style)),
        }
    }

    /// About the bytes this takes in `style` (exact for binary), without encoding it.
    pub fn encoded_len_hint(&self, style: Style) -> usize {
        match self.encoded.cached(style) {
            Some(bytes) => bytes.len(),
            None => style.delivery_len_hint(self),
        }
    }
}

/// A room run's bytes per style: the messages one after the other, encoded once for
/// every member, each member copying its stretch.
impl RoomRun {
    /// Appends messages `range` of the run in `style` (the part of it the run holds: the
    /// hub stages only stretches of a completed run, and a writer must not panic on
    /// one that is not).
    pub fn write_to(&self, style: Style, range: std::ops::Range<usize>, dst: &mut BytesMut) {
        let Some(deliveries) = self.deliveries.get() else {
            return;
        };
        let (bytes, ends) = self.encoded[style as usize].get_or_init(|| {
            let mut buf = BytesMut::new();
            let mut ends = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                style.encode_delivery(d, &mut buf);
                ends.push(buf.len());
            }
            (buf.freeze(), ends)
        });
        // Where message `i` starts (past the last: the run's end).
        let start_of = |i: usize| match i {
            0 => 0,
            i => ends.get(i - 1).copied().unwrap_or(bytes.len()),
        };
        let (start, end) = (start_of(range.start), start_of(range.end));
        dst.extend_from_slice(bytes.get(start..end).unwrap_or_default());
    }

    /// About the bytes messages `range` take in `style`.
    pub fn encoded_len_hint(&self, style: Style, range: std::ops::Range<usize>) -> usize {
        let messages = self.deliveries().get(range).unwrap_or_default();
        messages.iter().map(|d| d.encoded_len_hint(style)).sum()
    }
}

impl SharedNotice {
    /// The notice's bytes in `style` (empty where the style shows none), encoded on first use.
    pub fn encoded(&self, style: Style) -> &Bytes {
        self.encoded
            .get(style, |buf| style.encode_notice(&self.notice, buf))
    }
}

#[derive(Serialize)]
struct MessageEvent<'a> {
    event: &'static str,
    kind: &'static str,
    id: i64,
    conversation: i64,
    seq: i64,
    from: &'a str,
    to: &'a str,
    text: &'a str,
    time: u64,
}

#[derive(Serialize)]
struct DeletedEvent<'a> {
    event: &'static str,
    kind: &'static str,
    id: i64,
    conversation: i64,
    seq: i64,
    from: &'a str,
    to: &'a str,
    deleted: DeletedRef,
}

#[derive(Serialize)]
struct DeletedRef {
    id: i64,
    seq: i64,
}

#[derive(Serialize)]
struct ModerationEvent<'a> {
    event: &'static str,
    room: &'a str,
    change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    by: &'a str,
}

#[derive(Serialize)]
struct OfflineEvent<'a> {
    event: &'static str,
    user: &'a str,
    last_seen: i64,
}

#[derive(Serialize)]
struct NoticeEvent<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    user: &'a str,
}

/// What identifies a request to its client, and how its outcome is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Tag {
    /// The binary protocol's correlation id.
    Cid(u32),
    /// A seed-002-style command: silent on success, `ERR <word>` on failure.
    Line,
    /// A seed-004 slash command: silent on success, `err: <text>` on failure.
    Slash,
    /// A JSON request: the success message, and the request's id to echo.
    Json {
        ok: &'static str,
        id: Option<Arc<Value>>,
    },
    /// A seed-003 `SENDMSG`: its reply carries the client's id of the message.
    SimpleTcp { md5encoded: Arc<str> },
    /// A JSON request over WebSocket that stored a message: the answer's `data` says where.
    /// Boxed: the rest are at most three words, and every item staged, queued and written
    /// moves a whole `Item` (64 bytes with this inline, 40 without).
    Stored(Box<StoredTag>),
}

/// What [`Tag::Stored`] answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTag {
    pub ok: &'static str,
    pub id: Option<Arc<Value>>,
    /// Where the message was stored: `id`, `conversation`, `seq`.
    pub stored: [i64; 3],
}

/// Appends the answer to the request tagged `tag`.
pub fn encode_reply(tag: &Tag, reply: &Reply, dst: &mut BytesMut) {
    match (tag, reply) {
        (Tag::Cid(cid), Reply::Ok) => binary::encode_response(*cid, binary::code::OK, dst),
        (Tag::Cid(cid), Reply::Error(kind)) => {
            binary::encode_response(*cid, binary::error_code(*kind), dst)
        }
        (Tag::Line | Tag::Slash, Reply::Ok) => {}
        (Tag::Line, Reply::Error(kind)) => {
            dst.put_slice(format!("ERR {}\n", text::error_word(*kind)).as_bytes())
        }
        (Tag::Slash, Reply::Error(kind)) => {
            dst.put_slice(format!("err: {}\n", slash_error(*kind)).as_bytes())
        }
        (Tag::Json { ok, id }, reply) => {
            let (success, message) = match reply {
                Reply::Ok => (true, *ok),
                Reply::Error(kind) => (false, json_error(*kind)),
            };
            let mut out = Vec::new();
            json::encode_response(success, message, &Value::from(""), id.as_deref(), &mut out);
            dst.put_slice(&out);
        }
        (Tag::Stored(tag), Reply::Ok) => {
            let StoredTag { ok, id, stored } = &**tag;
            let [message, conversation, seq] = *stored;
            let response = StoredResponse {
                success: true,
                message: ok,
                data: StoredAt {
                    id: message,
                    conversation,
                    seq,
                },
                id: id.as_deref(),
            };
            let mut out = Vec::with_capacity(128);
            json::encode_line(&response, &mut out);
            dst.put_slice(&out);
        }
        (Tag::SimpleTcp { md5encoded }, Reply::Ok) => {
            let body = serde_json::json!({ "md5encoded": &**md5encoded });
            simpletcp::encode_ok("SENDMSG", Some(&body), b"", dst);
        }
        (Tag::SimpleTcp { .. }, Reply::Error(kind)) => {
            let info = format!("Exception: {}", json_error(*kind));
            simpletcp::encode_err("SENDMSG", &info, dst);
        }
        (Tag::Stored(tag), Reply::Error(kind)) => {
            let id = &tag.id;
            let mut out = Vec::new();
            let (message, data) = (json_error(*kind), Value::from(""));
            json::encode_response(false, message, &data, id.as_deref(), &mut out);
            dst.put_slice(&out);
        }
    }
}

/// How seed-004-style replies word an error.
pub fn slash_error(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotMember | ErrorKind::RoomNotFound => {
            "you are not in a room. usage: /join ROOM_NAME"
        }
        ErrorKind::AlreadyLoggedIn => "that nick is taken",
        ErrorKind::LoggedInHere => "you are logged in already",
        ErrorKind::InvalidName => {
            "invalid name (no spaces or control characters, at most 32 bytes)"
        }
        ErrorKind::NotLoggedIn => "set a nick first. usage: /nick NAME",
        ErrorKind::TooLong => "line too long",
        ErrorKind::InvalidUtf8 => "invalid UTF-8",
        ErrorKind::ShuttingDown => "server shutting down",
        ErrorKind::RateLimited => "too many messages, slow down",
        ErrorKind::NotContact => "not a contact: DMs need an accepted contact request",
        ErrorKind::Unauthorized => "invalid credentials",
        ErrorKind::TooManyAttempts => "too many failed logins, try again later",
        ErrorKind::TooManyRooms => "you have created as many rooms as this server allows",
        ErrorKind::TlsRequired => "passwords need a TLS connection here",
        ErrorKind::NotOperator => "you are not an operator of that room",
        ErrorKind::Banned => "you are banned from that room",
        ErrorKind::Muted => "you are muted in that room",
        ErrorKind::InviteOnly => "that room is invite-only",
        ErrorKind::Blocked => "that user does not accept your messages",
        ErrorKind::Unsupported => "not supported by this server",
        _ => "internal error",
    }
}

/// How JSON replies word an error.
pub fn json_error(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Internal => "Internal error",
        ErrorKind::UserNotFound => "User not found",
        ErrorKind::AlreadyLoggedIn => "Username already taken",
        ErrorKind::LoggedInHere => "Already logged in",
        ErrorKind::NotLoggedIn => "Register first",
        ErrorKind::Forbidden => "Forbidden",
        ErrorKind::InvalidName => "Invalid username",
        ErrorKind::Malformed => "Invalid message format",
        ErrorKind::UnknownCommand => "Unknown command",
        ErrorKind::ShuttingDown => "Server shutting down",
        ErrorKind::NotMember => "Not a member of that room",
        ErrorKind::RoomNotFound => "Room not found",
        ErrorKind::TooLong => "Line too long",
        ErrorKind::InvalidUtf8 => "Invalid UTF-8",
        ErrorKind::Unauthorized => "Invalid credentials",
        ErrorKind::RateLimited => "Too many messages, slow down",
        ErrorKind::TooManyAttempts => "Too many failed logins, try again later",
        ErrorKind::InvalidPassword => "Passwords have 8 to 128 bytes",
        ErrorKind::NotContact => {
            "Not a contact: this server allows DMs only between accepted contacts"
        }
        ErrorKind::BadTransfer => "Bad transfer: unknown upload, wrong offset or too large",
        ErrorKind::Corrupt => "Corrupt upload: the bytes do not match the announced SHA-256",
        ErrorKind::TooManyRooms => {
            "Too many rooms: you have created as many as this server allows (join existing ones)"
        }
        ErrorKind::TlsRequired => "Passwords need a TLS connection on this server",
        ErrorKind::NotOperator => "Not allowed: you are not an operator of that room",
        ErrorKind::Banned => "Banned from that room",
        ErrorKind::Muted => "Muted in that room: the message was not sent",
        ErrorKind::InviteOnly => "Invite-only: you were not invited",
        ErrorKind::Blocked => "Blocked: that user does not accept your messages",
        ErrorKind::MessageNotFound => "Message not found",
        ErrorKind::Unsupported => {
            "Not supported by this server: moderation is not available in cluster mode yet"
        }
    }
}

#[cfg(test)]
mod websocket_tests {
    use super::*;

    /// Whatever a line's length, its frame decodes to the line without its newline, also
    /// behind bytes already in the buffer.
    #[test]
    fn a_line_framed_in_place_decodes_to_itself() {
        for len in [1, 124, 125, 126, 127, 65_534, 65_535, 65_536, 70_000] {
            let line: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut dst = BytesMut::from(&b"before"[..]);
            frame_json(
                |out| {
                    out.put_slice(&line);
                    out.put_u8(b'\n');
                },
                &mut dst,
            );
            assert_eq!(&dst[..6], b"before");
            let mut rest = dst.split_off(6);
            let frame = parley_proto::ws::decode(&mut rest, 1 << 20, false)
                .unwrap()
                .unwrap();
            assert_eq!(frame.payload, &line[..], "{len}");
            assert!(rest.is_empty(), "{len}");
        }
        let mut empty = BytesMut::new();
        frame_json(|out| out.put_u8(b'\n'), &mut empty);
        assert!(empty.is_empty(), "nothing to frame");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Seq;

    fn delivery(seq: Seq, body: &'static [u8]) -> Arc<Delivery> {
        let (from, to): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("#room"));
        let body = Bytes::from_static(body);
        Arc::new(Delivery::new(
            seq,
            7,
            seq,
            ConversationKind::Room,
            from,
            to,
            body,
            0,
        ))
    }

    /// Any stretch of a run reads as its messages one after the other, in every style, and
    /// its length hint is that of its messages.
    #[test]
    fn a_stretch_of_a_run_is_its_messages_in_order() {
        let deliveries: Vec<Arc<Delivery>> = [&b"one"[..], b"two", b"", b"four"]
            .iter()
            .zip(1..)
            .map(|(body, seq)| delivery(seq, body))
            .collect();
        let run = RoomRun::new(7);
        run.complete(deliveries.clone());
        for style in [
            Style::Binary,
            Style::Line,
            Style::Slash,
            Style::Json,
            Style::Events,
        ] {
            for start in 0..=deliveries.len() {
                for end in start..=deliveries.len() {
                    let mut expected = BytesMut::new();
                    for d in &deliveries[start..end] {
                        style.encode_delivery(d, &mut expected);
                    }
                    let mut got = BytesMut::new();
                    run.write_to(style, start..end, &mut got);
                    assert_eq!(got, expected, "{style:?} {start}..{end}");
                }
            }
        }
        assert_eq!(run.seq(3), Some(4));
        assert_eq!(run.seq(4), None);
        let hint = run.encoded_len_hint(Style::Binary, 1..3);
        let mut two = BytesMut::new();
        run.write_to(Style::Binary, 1..3, &mut two);
        assert_eq!(hint, two.len());
        // Past the run's end, or of a run not completed: what it holds, no panic.
        let mut past = BytesMut::new();
        run.write_to(Style::Binary, 3..9, &mut past);
        let mut last = BytesMut::new();
        run.write_to(Style::Binary, 3..4, &mut last);
        assert_eq!(past, last);
        let mut none = BytesMut::new();
        RoomRun::new(7).write_to(Style::Binary, 0..2, &mut none);
        assert!(none.is_empty());
    }
}
