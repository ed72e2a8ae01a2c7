//! The seed-000 "Console Chat" binary protocol, byte for byte.
//!
//! A frame is `u32 length | u8 version | u16 key | body`, all big-endian; `length` counts the
//! version, key and body but not itself. Strings are `u16 length | bytes`. Every request body
//! starts with a `u32` correlation id, which the response (key 0x03, always 13 bytes on the
//! wire) carries back. See docs/PROTOCOL.md for worked examples.
//!
//! Decoding takes bytes from a `BytesMut` and hands out `Bytes` slices of the frame, so the
//! strings of a message are never copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::ErrorKind;

/// The only protocol version there is.
pub const VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// Bytes of version + key, the smallest possible frame body.
pub const HEADER: usize = 3;

/// Command keys.
pub mod key {
    pub const LOGIN: u16 = 0x01;
    pub const MESSAGE: u16 = 0x02;
    pub const RESPONSE: u16 = 0x03;
    pub const CORRELATION_TEST: u16 = 0x09;
    pub const REGISTER: u16 = 0x10;
    pub const LOGIN_PASSWORD: u16 = 0x11;
    pub const LOGIN_TOKEN: u16 = 0x12;
    pub const TOKEN: u16 = 0x13;
    pub const LOGOUT: u16 = 0x14;
    pub const CHANGE_PASSWORD: u16 = 0x15;
    pub const SET_PROFILE: u16 = 0x16;
    pub const GET_PROFILE: u16 = 0x17;
    pub const PROFILE: u16 = 0x18;
    pub const JOIN: u16 = 0x20;
    pub const LEAVE: u16 = 0x21;
    pub const SEND_ROOM: u16 = 0x22;
    pub const SEND_MANY: u16 = 0x23;
    pub const SEND_ALL: u16 = 0x24;
    pub const LIST_ROOMS: u16 = 0x25;
    pub const ROOMS: u16 = 0x26;
    pub const LIST_MEMBERS: u16 = 0x27;
    pub const MEMBERS: u16 = 0x28;
    pub const LIST_USERS: u16 = 0x29;
    pub const USERS: u16 = 0x2A;
    pub const HISTORY: u16 = 0x2B;
    pub const HISTORY_PAGE: u16 = 0x2C;
    pub const ENABLE_ACKS: u16 = 0x2D;
    pub const EVENT: u16 = 0x2E;
    pub const ACK: u16 = 0x2F;
    pub const SEARCH: u16 = 0x30;
    pub const CONTACT_REQUEST: u16 = 0x31;
    pub const CONTACT_ANSWER: u16 = 0x32;
    pub const CONTACT_REMOVE: u16 = 0x33;
    pub const LIST_CONTACTS: u16 = 0x34;
    pub const CONTACTS: u16 = 0x35;
    pub const FILE_OFFER: u16 = 0x40;
    pub const FILE_STATUS: u16 = 0x41;
    pub const FILE_CHUNK: u16 = 0x42;
    pub const SEND_FILE: u16 = 0x43;
    pub const DOWNLOAD: u16 = 0x44;
    pub const FILE_DATA: u16 = 0x45;
}

/// Contact states in a `Contacts` list.
pub mod contact {
    /// This user asked the other.
    pub const REQUESTED: u8 = 1;
    /// The other asked this user.
    pub const PENDING: u8 = 2;
    pub const ACCEPTED: u8 = 3;
}

/// Kinds of conversation in an `Event`.
pub mod kind {
    pub const DIRECT: u8 = 1;
    pub const ROOM: u8 = 2;
    pub const BROADCAST: u8 = 3;
}

/// Which part of a history a `History` request wants.
pub mod page {
    pub const LATEST: u8 = 0;
    pub const BEFORE_ID: u8 = 1;
    pub const AFTER_ID: u8 = 2;
    pub const BEFORE_TIME: u8 = 3;
    pub const AFTER_TIME: u8 = 4;
}

/// A stored message as the ack-capable frames carry it: with its place in its
/// conversation, so a client sees gaps and can ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub conversation: u64,
    pub seq: u64,
    /// `kind::DIRECT`, `kind::ROOM` or `kind::BROADCAST`.
    pub kind: u8,
    pub from: Bytes,
    /// The recipient (direct), the room, or `*`.
    pub to: Bytes,
    /// The sender's timestamp.
    pub time: u64,
    pub message: Bytes,
}

/// A room in a `Rooms` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEntry {
    pub name: Bytes,
    pub members: u32,
    pub online: u32,
}

/// A contact in a `Contacts` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEntry {
    pub name: Bytes,
    /// One of `contact::*`.
    pub state: u8,
    pub online: bool,
    pub last_seen: u64,
}

/// A user in a `Users` or `Members` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: Bytes,
    pub online: bool,
    /// Unix ms of the end of the last session; 0 if unknown (`Members` always 0).
    pub last_seen: u64,
}

/// Flags of `LoginPassword`.
pub mod flags {
    /// Issue a device token (sent as a `Token` frame before the response).
    pub const WANT_TOKEN: u8 = 0x01;
}

/// Response codes. 0x01, 0x03 and 0x04 are the seed's; the rest are parley's, chosen so that
/// no seed client mistakes them for one of its own.
pub mod code {
    pub const OK: u16 = 0x01;
    /// A server-side failure (the seed reserved 0x02 for a generic error).
    pub const ERROR: u16 = 0x02;
    pub const USER_NOT_FOUND: u16 = 0x03;
    pub const USER_ALREADY_LOGGED: u16 = 0x04;
    pub const NOT_LOGGED_IN: u16 = 0x05;
    pub const FORBIDDEN: u16 = 0x06;
    pub const INVALID_NAME: u16 = 0x07;
    pub const MALFORMED: u16 = 0x08;
    pub const UNKNOWN_COMMAND: u16 = 0x09;
    pub const SHUTTING_DOWN: u16 = 0x0A;
    pub const NOT_MEMBER: u16 = 0x0B;
    pub const ROOM_NOT_FOUND: u16 = 0x0C;
    pub const TOO_LONG: u16 = 0x0D;
    pub const INVALID_UTF8: u16 = 0x0E;
    pub const RATE_LIMITED: u16 = 0x0F;
    pub const UNAUTHORIZED: u16 = 0x10;
    pub const TOO_MANY_ATTEMPTS: u16 = 0x11;
    pub const INVALID_PASSWORD: u16 = 0x12;
    pub const NOT_CONTACT: u16 = 0x13;
    pub const BAD_TRANSFER: u16 = 0x14;
    pub const CORRUPT: u16 = 0x15;
    pub const TOO_MANY_ROOMS: u16 = 0x16;
}

/// The response code that reports `kind`.
pub fn error_code(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Internal => code::ERROR,
        ErrorKind::UserNotFound => code::USER_NOT_FOUND,
        ErrorKind::AlreadyLoggedIn => code::USER_ALREADY_LOGGED,
        ErrorKind::NotLoggedIn => code::NOT_LOGGED_IN,
        ErrorKind::Forbidden => code::FORBIDDEN,
        ErrorKind::InvalidName => code::INVALID_NAME,
        ErrorKind::Malformed => code::MALFORMED,
        ErrorKind::UnknownCommand => code::UNKNOWN_COMMAND,
        ErrorKind::ShuttingDown => code::SHUTTING_DOWN,
        ErrorKind::NotMember => code::NOT_MEMBER,
        ErrorKind::RoomNotFound => code::ROOM_NOT_FOUND,
        ErrorKind::TooLong => code::TOO_LONG,
        ErrorKind::InvalidUtf8 => code::INVALID_UTF8,
        ErrorKind::RateLimited => code::RATE_LIMITED,
        ErrorKind::Unauthorized => code::UNAUTHORIZED,
        ErrorKind::TooManyAttempts => code::TOO_MANY_ATTEMPTS,
        ErrorKind::InvalidPassword => code::INVALID_PASSWORD,
        ErrorKind::NotContact => code::NOT_CONTACT,
        ErrorKind::BadTransfer => code::BAD_TRANSFER,
        ErrorKind::Corrupt => code::CORRUPT,
        ErrorKind::TooManyRooms => code::TOO_MANY_ROOMS,
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Login {
        cid: u32,
        username: Bytes,
    },
    Message {
        cid: u32,
        message: Bytes,
        from: Bytes,
        to: Bytes,
        time: u64,
    },
    Response {
        cid: u32,
        code: u16,
    },
    CorrelationTest {
        cid: u32,
    },
    Register {
        cid: u32,
        username: Bytes,
        password: Bytes,
    },
    LoginPassword {
        cid: u32,
        username: Bytes,
        password: Bytes,
        device: Bytes,
        flags: u8,
    },
    LoginToken {
        cid: u32,
        token: Bytes,
    },
    /// Server → client, before the response to a `LoginPassword` that asked for it.
    Token {
        cid: u32,
        token: Bytes,
        /// Unix milliseconds.
        expires_at: u64,
    },
    /// `scope` 0: this device; 1: every device of the account.
    Logout {
        cid: u32,
        scope: u8,
    },
    ChangePassword {
        cid: u32,
        old: Bytes,
        new: Bytes,
    },
    SetProfile {
        cid: u32,
        display_name: Bytes,
        avatar: Bytes,
    },
    GetProfile {
        cid: u32,
        username: Bytes,
    },
    /// Server → client, before the response to a `GetProfile`.
    Profile {
        cid: u32,
        username: Bytes,
        display_name: Bytes,
        avatar: Bytes,
    },
    Join {
        cid: u32,
        room: Bytes,
    },
    Leave {
        cid: u32,
        room: Bytes,
    },
    SendRoom {
        cid: u32,
        room: Bytes,
        message: Bytes,
        time: u64,
    },
    /// One message to several users (all or none).
    SendMany {
        cid: u32,
        to: Vec<Bytes>,
        message: Bytes,
        time: u64,
    },
    /// One message to everyone online.
    SendAll {
        cid: u32,
        message: Bytes,
        time: u64,
    },
    ListRooms {
        cid: u32,
    },
    Rooms {
        cid: u32,
        rooms: Vec<RoomEntry>,
    },
    ListMembers {
        cid: u32,
        room: Bytes,
    },
    Members {
        cid: u32,
        members: Vec<UserEntry>,
    },
    ListUsers {
        cid: u32,
    },
    Users {
        cid: u32,
        users: Vec<UserEntry>,
    },
    History {
        cid: u32,
        /// A room, a user (the direct conversation with them) or `*`.
        target: Bytes,
        /// One of `page::*`.
        mode: u8,
        /// The id or Unix-ms time the mode refers to.
        value: u64,
        limit: u16,
    },
    HistoryPage {
        cid: u32,
        events: Vec<Event>,
    },
    /// From now on, pushes are `Event` frames and the device's cursor moves only on `Ack`.
    EnableAcks {
        cid: u32,
    },
    /// A pushed message (cid 0) for a session that enabled acks.
    Event {
        cid: u32,
        event: Event,
    },
    /// Users whose names start with `prefix` (answered with a `Users` frame).
    Search {
        cid: u32,
        prefix: Bytes,
        limit: u16,
    },
    ContactRequest {
        cid: u32,
        name: Bytes,
    },
    /// `accept` 1: accept the other's request; 0: decline it.
    ContactAnswer {
        cid: u32,
        name: Bytes,
        accept: u8,
    },
    ContactRemove {
        cid: u32,
        name: Bytes,
    },
    ListContacts {
        cid: u32,
    },
    Contacts {
        cid: u32,
        contacts: Vec<ContactEntry>,
    },
    /// "I want to send content with this SHA-256 (lower-case hex) and size".
    FileOffer {
        cid: u32,
        sha256: Bytes,
        size: u64,
    },
    /// Server → client, before the response to a `FileOffer`: `have` 1 means the server
    /// holds the content (send it, no upload); otherwise upload from `offset`.
    FileStatus {
        cid: u32,
        have: u8,
        offset: u64,
    },
    FileChunk {
        cid: u32,
        sha256: Bytes,
        size: u64,
        offset: u64,
        data: Bytes,
    },
    /// A message carrying a stored file: `target_kind` 1 a user, 2 a room.
    SendFile {
        cid: u32,
        target_kind: u8,
        target: Bytes,
        sha256: Bytes,
        name: Bytes,
        mime: Bytes,
        caption: Bytes,
        time: u64,
    },
    Download {
        cid: u32,
        sha256: Bytes,
        offset: u64,
        length: u32,
    },
    /// Server → client, before the response to a `Download` (empty at the end).
    FileData {
        cid: u32,
        offset: u64,
        data: Bytes,
    },
    /// "I have everything of `conversation` up to `seq`". A notification: no response.
    Ack {
        cid: u32,
        conversation: u64,
        seq: u64,
    },
}

/// Why a frame could not be decoded.
///
/// Fatal errors mean the byte stream can no longer be split into frames: the connection must
/// close. The others consumed exactly one bad frame, carry its correlation id when it had one,
/// and decoding can go on with the next frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("frame length {len} is shorter than the 3-byte header")]
    TooShort { len: usize },
    #[error("unsupported protocol version {version}")]
    UnknownVersion { version: u8, cid: Option<u32> },
    #[error("unknown command key {key:#06x}")]
    UnknownKey { key: u16, cid: Option<u32> },
    #[error("malformed frame (key {key:#06x}): {reason}")]
    Malformed {
        key: u16,
        cid: Option<u32>,
        reason: &'static str,
    },
}

impl FrameError {
    /// Whether the connection has to close (framing is lost).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::TooLong { .. } | FrameError::TooShort { .. }
        )
    }

    /// The correlation id of the bad frame, when it had one to answer.
    pub fn correlation_id(&self) -> Option<u32> {
        match self {
            FrameError::TooLong { .. } | FrameError::TooShort { .. } => None,
            FrameError::UnknownVersion { cid, .. }
            | FrameError::UnknownKey { cid, .. }
            | FrameError::Malformed { cid, .. } => *cid,
        }
    }

    /// The neutral error that reports this failure to the client.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FrameError::UnknownVersion { .. } | FrameError::UnknownKey { .. } => {
                ErrorKind::UnknownCommand
            }
            _ => ErrorKind::Malformed,
        }
    }
}

/// Takes one frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (and reserves room for the
/// rest of it); a length above `max_frame` is refused as soon as the prefix is read, before
/// any of the body is buffered.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    match take_frame(buf, max_frame)? {
        Some(frame) => parse(frame).map(Some),
        None => Ok(None),
    }
}

/// What [`decode_view`] took off the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A direct message (key 0x02), as a view of its frame.
    Message(MessageView),
    /// Any other frame.
    Frame(Frame),
}

/// [`decode`], with a direct message handed out as a [`MessageView`]: what a server reading
/// thousands a second uses. Every other frame, and every error, is exactly `decode`'s.
pub fn decode_view(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Decoded>, FrameError> {
    let Some(frame) = take_frame(buf, max_frame)? else {
        return Ok(None);
    };
    if frame.starts_with(&[VERSION, 0, key::MESSAGE as u8]) {
        if let Some(view) = MessageView::parse(&frame) {
            return Ok(Some(Decoded::Message(MessageView { frame, ..view })));
        }
    }
    parse(frame).map(|frame| Some(Decoded::Frame(frame)))
}

/// A direct message (key 0x02) as the frame it came in, its strings ranges of the frame's
/// bytes. Split into a `Bytes` per field, as [`Frame::Message`] is, a message holds four
/// references to the buffer it was read into, each taken and given back with an atomic
/// operation on the buffer's shared count that every thread the message passes through
/// touches; a view holds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    frame: Bytes,
    pub cid: u32,
    message: (u32, u32),
    from: (u32, u32),
    to: (u32, u32),
    pub time: u64,
}

impl MessageView {
    pub fn message(&self) -> &[u8] {
        self.field(self.message)
    }

    /// The message as its own `Bytes` (a reference to the same buffer).
    pub fn message_bytes(&self) -> Bytes {
        self.frame
            .slice(self.message.0 as usize..self.message.1 as usize)
    }

    pub fn from(&self) -> &[u8] {
        self.field(self.from)
    }

    pub fn to(&self) -> &[u8] {
        self.field(self.to)
    }

    fn field(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.frame[start as usize..end as usize]
    }

    /// The fields of a message frame (version, key, then the body), as `parse` reads
    /// them; `None` where `parse` finds it malformed. The returned view holds no frame yet.
    fn parse(frame: &[u8]) -> Option<MessageView> {
        let word = |at: usize, n: usize| frame.get(at..at + n);
        let cid = u32::from_be_bytes(word(HEADER, 4)?.try_into().ok()?);
        let mut at = HEADER + 4;
        let mut string = || -> Option<(u32, u32)> {
            let len = u16::from_be_bytes(word(at, 2)?.try_into().ok()?) as usize;
            let (start, end) = (at + 2, at + 2 + len);
            frame.get(start..end)?;
            at = end;
            Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
        };
        let (message, from, to) = (string()?, string()?, string()?);
        let time = u64::from_be_bytes(word(at, 8)?.try_into().ok()?);
        Some(MessageView {
            frame: Bytes::new(),
            cid,
            message,
            from,
            to,
            time,
        })
    }
}

/// Takes one frame's bytes (version, key, body) off the front of `buf`; see [`decode`].
fn take_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(FrameError::TooLong {
            len,
            max: max_frame,
        });
    }
    if len < HEADER {
        return Err(FrameError::TooShort { len });
    }
    if buf.len() < LENGTH_PREFIX + len {
        buf.reserve(LENGTH_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Parses one frame body (version, key and the rest), without the length prefix.
fn parse(mut body: Bytes) -> Result<Frame, FrameError> {
    let version = body.get_u8();
    let key = body.get_u16();
    let cid = (body.len() >= 4).then(|| u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
    if version != VERSION {
        return Err(FrameError::UnknownVersion { version, cid });
    }
    let malformed = |reason| FrameError::Malformed { key, cid, reason };
    let mut r = Reader(body);
    let frame = match key {
        key::LOGIN => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let username = r.string().ok_or_else(|| malformed("bad username"))?;
            Frame::Login { cid, username }
        }
        key::MESSAGE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let message = r.string().ok_or_else(|| malformed("bad message"))?;
            let from = r.string().ok_or_else(|| malformed("bad from"))?;
            let to = r.string().ok_or_else(|| malformed("bad to"))?;
            let time = r.u64().ok_or_else(|| malformed("missing time"))?;
            Frame::Message {
                cid,
                message,
                from,
                to,
                time,
            }
        }
        key::RESPONSE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let code = r.u16().ok_or_else(|| malformed("missing code"))?;
            Frame::Response { cid, code }
        }
        key::CORRELATION_TEST => {
            // Seed clients send a bare correlation id; the seed's own server read this frame
            // as a login, so anything after the id is accepted and ignored.
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            return Ok(Frame::CorrelationTest { cid });
        }
        key::REGISTER => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let username = r.string().ok_or_else(|| malformed("bad username"))?;
            let password = r.string().ok_or_else(|| malformed("bad password"))?;
            Frame::Register {
                cid,
                username,
                password,
            }
        }
        key::LOGIN_PASSWORD => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let username = r.string().ok_or_else(|| malformed("bad username"))?;
            let password = r.string().ok_or_else(|| malformed("bad password"))?;
            let device = r.string().ok_or_else(|| malformed("bad device"))?;
            let flags = r.u8().ok_or_else(|| malformed("missing flags"))?;
            Frame::LoginPassword {
                cid,
                username,
                password,
                device,
                flags,
            }
        }
        key::LOGIN_TOKEN => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let token = r.string().ok_or_else(|| malformed("bad token"))?;
            Frame::LoginToken { cid, token }
        }
        key::TOKEN => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let token = r.string().ok_or_else(|| malformed("bad token"))?;
            let expires_at = r.u64().ok_or_else(|| malformed("missing expiry"))?;
            Frame::Token {
                cid,
                token,
                expires_at,
            }
        }
        key::LOGOUT => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let scope = r.u8().ok_or_else(|| malformed("missing scope"))?;
            Frame::Logout { cid, scope }
        }
        key::CHANGE_PASSWORD => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let old = r.string().ok_or_else(|| malformed("bad old password"))?;
            let new = r.string().ok_or_else(|| malformed("bad new password"))?;
            Frame::ChangePassword { cid, old, new }
        }
        key::SET_PROFILE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let display_name = r.string().ok_or_else(|| malformed("bad display name"))?;
            let avatar = r.string().ok_or_else(|| malformed("bad avatar"))?;
            Frame::SetProfile {
                cid,
                display_name,
                avatar,
            }
        }
        key::GET_PROFILE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let username = r.string().ok_or_else(|| malformed("bad username"))?;
            Frame::GetProfile { cid, username }
        }
        key::PROFILE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let username = r.string().ok_or_else(|| malformed("bad username"))?;
            let display_name = r.string().ok_or_else(|| malformed("bad display name"))?;
            let avatar = r.string().ok_or_else(|| malformed("bad avatar"))?;
            Frame::Profile {
                cid,
                username,
                display_name,
                avatar,
            }
        }
        key::JOIN | key::LEAVE | key::LIST_MEMBERS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let room = r.string().ok_or_else(|| malformed("bad room"))?;
            match key {
                key::JOIN => Frame::Join { cid, room },
                key::LEAVE => Frame::Leave { cid, room },
                _ => Frame::ListMembers { cid, room },
            }
        }
        key::SEND_ROOM => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let room = r.string().ok_or_else(|| malformed("bad room"))?;
            let message = r.string().ok_or_else(|| malformed("bad message"))?;
            let time = r.u64().ok_or_else(|| malformed("missing time"))?;
            Frame::SendRoom {
                cid,
                room,
                message,
                time,
            }
        }
        key::SEND_MANY => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let count = r.u16().ok_or_else(|| malformed("missing count"))?;
            let mut to = Vec::with_capacity(usize::from(count).min(1024));
            for _ in 0..count {
                to.push(r.string().ok_or_else(|| malformed("bad recipient"))?);
            }
            let message = r.string().ok_or_else(|| malformed("bad message"))?;
            let time = r.u64().ok_or_else(|| malformed("missing time"))?;
            Frame::SendMany {
                cid,
                to,
                message,
                time,
            }
        }
        key::SEND_ALL => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let message = r.string().ok_or_else(|| malformed("bad message"))?;
            let time = r.u64().ok_or_else(|| malformed("missing time"))?;
            Frame::SendAll { cid, message, time }
        }
        key::LIST_ROOMS | key::LIST_USERS | key::ENABLE_ACKS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            match key {
                key::LIST_ROOMS => Frame::ListRooms { cid },
                key::LIST_USERS => Frame::ListUsers { cid },
                _ => Frame::EnableAcks { cid },
            }
        }
        key::ROOMS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let count = r.u16().ok_or_else(|| malformed("missing count"))?;
            let mut rooms = Vec::with_capacity(usize::from(count).min(1024));
            for _ in 0..count {
                rooms.push(RoomEntry {
                    name: r.string().ok_or_else(|| malformed("bad room"))?,
                    members: r.u32().ok_or_else(|| malformed("missing members"))?,
                    online: r.u32().ok_or_else(|| malformed("missing online"))?,
                });
            }
            Frame::Rooms { cid, rooms }
        }
        key::MEMBERS | key::USERS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let count = r.u16().ok_or_else(|| malformed("missing count"))?;
            let mut users = Vec::with_capacity(usize::from(count).min(1024));
            for _ in 0..count {
                users.push(UserEntry {
                    name: r.string().ok_or_else(|| malformed("bad name"))?,
                    online: r.u8().ok_or_else(|| malformed("missing online"))? != 0,
                    last_seen: r.u64().ok_or_else(|| malformed("missing last seen"))?,
                });
            }
            match key {
                key::MEMBERS => Frame::Members {
                    cid,
                    members: users,
                },
                _ => Frame::Users { cid, users },
            }
        }
        key::HISTORY => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let target = r.string().ok_or_else(|| malformed("bad target"))?;
            let mode = r.u8().ok_or_else(|| malformed("missing mode"))?;
            let value = r.u64().ok_or_else(|| malformed("missing value"))?;
            let limit = r.u16().ok_or_else(|| malformed("missing limit"))?;
            Frame::History {
                cid,
                target,
                mode,
                value,
                limit,
            }
        }
        key::HISTORY_PAGE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let count = r.u16().ok_or_else(|| malformed("missing count"))?;
            let mut events = Vec::with_capacity(usize::from(count).min(1024));
            for _ in 0..count {
                events.push(r.event().ok_or_else(|| malformed("bad event"))?);
            }
            Frame::HistoryPage { cid, events }
        }
        key::EVENT => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let event = r.event().ok_or_else(|| malformed("bad event"))?;
            Frame::Event { cid, event }
        }
        key::SEARCH => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let prefix = r.string().ok_or_else(|| malformed("bad prefix"))?;
            let limit = r.u16().ok_or_else(|| malformed("missing limit"))?;
            Frame::Search { cid, prefix, limit }
        }
        key::CONTACT_REQUEST | key::CONTACT_REMOVE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let name = r.string().ok_or_else(|| malformed("bad name"))?;
            match key {
                key::CONTACT_REQUEST => Frame::ContactRequest { cid, name },
                _ => Frame::ContactRemove { cid, name },
            }
        }
        key::CONTACT_ANSWER => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let name = r.string().ok_or_else(|| malformed("bad name"))?;
            let accept = r.u8().ok_or_else(|| malformed("missing answer"))?;
            Frame::ContactAnswer { cid, name, accept }
        }
        key::LIST_CONTACTS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            Frame::ListContacts { cid }
        }
        key::CONTACTS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let count = r.u16().ok_or_else(|| malformed("missing count"))?;
            let mut contacts = Vec::with_capacity(usize::from(count).min(1024));
            for _ in 0..count {
                contacts.push(ContactEntry {
                    name: r.string().ok_or_else(|| malformed("bad name"))?,
                    state: r.u8().ok_or_else(|| malformed("missing state"))?,
                    online: r.u8().ok_or_else(|| malformed("missing online"))? != 0,
                    last_seen: r.u64().ok_or_else(|| malformed("missing last seen"))?,
                });
            }
            Frame::Contacts { cid, contacts }
        }
        key::FILE_OFFER => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let sha256 = r.string().ok_or_else(|| malformed("bad sha256"))?;
            let size = r.u64().ok_or_else(|| malformed("missing size"))?;
            Frame::FileOffer { cid, sha256, size }
        }
        key::FILE_STATUS => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let have = r.u8().ok_or_else(|| malformed("missing have"))?;
            let offset = r.u64().ok_or_else(|| malformed("missing offset"))?;
            Frame::FileStatus { cid, have, offset }
        }
        key::FILE_CHUNK => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let sha256 = r.string().ok_or_else(|| malformed("bad sha256"))?;
            let size = r.u64().ok_or_else(|| malformed("missing size"))?;
            let offset = r.u64().ok_or_else(|| malformed("missing offset"))?;
            let data = r.string().ok_or_else(|| malformed("bad data"))?;
            Frame::FileChunk {
                cid,
                sha256,
                size,
                offset,
                data,
            }
        }
        key::SEND_FILE => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let target_kind = r.u8().ok_or_else(|| malformed("missing target kind"))?;
            let target = r.string().ok_or_else(|| malformed("bad target"))?;
            let sha256 = r.string().ok_or_else(|| malformed("bad sha256"))?;
            let name = r.string().ok_or_else(|| malformed("bad name"))?;
            let mime = r.string().ok_or_else(|| malformed("bad type"))?;
            let caption = r.string().ok_or_else(|| malformed("bad caption"))?;
            let time = r.u64().ok_or_else(|| malformed("missing time"))?;
            Frame::SendFile {
                cid,
                target_kind,
                target,
                sha256,
                name,
                mime,
                caption,
                time,
            }
        }
        key::DOWNLOAD => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let sha256 = r.string().ok_or_else(|| malformed("bad sha256"))?;
            let offset = r.u64().ok_or_else(|| malformed("missing offset"))?;
            let length = r.u32().ok_or_else(|| malformed("missing length"))?;
            Frame::Download {
                cid,
                sha256,
                offset,
                length,
            }
        }
        key::FILE_DATA => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let offset = r.u64().ok_or_else(|| malformed("missing offset"))?;
            let data = r.string().ok_or_else(|| malformed("bad data"))?;
            Frame::FileData { cid, offset, data }
        }
        key::ACK => {
            let cid = r.u32().ok_or_else(|| malformed("missing correlation id"))?;
            let conversation = r.u64().ok_or_else(|| malformed("missing conversation"))?;
            let seq = r.u64().ok_or_else(|| malformed("missing seq"))?;
            Frame::Ack {
                cid,
                conversation,
                seq,
            }
        }
        _ => return Err(FrameError::UnknownKey { key, cid }),
    };
    if r.0.has_remaining() {
        return Err(malformed("trailing bytes after the last field"));
    }
    Ok(frame)
}

/// Bounds-checked big-endian reads over a frame body.
struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Option<u8> {
        (!self.0.is_empty()).then(|| self.0.get_u8())
    }
    fn u16(&mut self) -> Option<u16> {
        (self.0.len() >= 2).then(|| self.0.get_u16())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.len() >= 4).then(|| self.0.get_u32())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.len() >= 8).then(|| self.0.get_u64())
    }
    fn string(&mut self) -> Option<Bytes> {
        let len = self.u16()? as usize;
        (self.0.len() >= len).then(|| self.0.split_to(len))
    }
    fn event(&mut self) -> Option<Event> {
        Some(Event {
            id: self.u64()?,
            conversation: self.u64()?,
            seq: self.u64()?,
            kind: self.u8()?,
            from: self.string()?,
            to: self.string()?,
            time: self.u64()?,
            message: self.string()?,
        })
    }
}

/// A string field longer than the `u16` length prefix can describe.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a string of {0} bytes does not fit the u16 length prefix")]
pub struct StringTooLong(pub usize);

impl Frame {
    /// The frame's correlation id (0 on pushed messages).
    pub fn cid(&self) -> u32 {
        match self {
            Frame::Login { cid, .. }
            | Frame::Message { cid, .. }
            | Frame::Response { cid, .. }
            | Frame::CorrelationTest { cid }
            | Frame::Register { cid, .. }
            | Frame::LoginPassword { cid, .. }
            | Frame::LoginToken { cid, .. }
            | Frame::Token { cid, .. }
            | Frame::Logout { cid, .. }
            | Frame::ChangePassword { cid, .. }
            | Frame::SetProfile { cid, .. }
            | Frame::GetProfile { cid, .. }
            | Frame::Profile { cid, .. }
            | Frame::Join { cid, .. }
            | Frame::Leave { cid, .. }
            | Frame::SendRoom { cid, .. }
            | Frame::SendMany { cid, .. }
            | Frame::SendAll { cid, .. }
            | Frame::ListRooms { cid }
            | Frame::Rooms { cid, .. }
            | Frame::ListMembers { cid, .. }
            | Frame::Members { cid, .. }
            | Frame::ListUsers { cid }
            | Frame::Users { cid, .. }
            | Frame::History { cid, .. }
            | Frame::HistoryPage { cid, .. }
            | Frame::EnableAcks { cid }
            | Frame::Event { cid, .. }
            | Frame::Ack { cid, .. }
            | Frame::Search { cid, .. }
            | Frame::ContactRequest { cid, .. }
            | Frame::ContactAnswer { cid, .. }
            | Frame::ContactRemove { cid, .. }
            | Frame::ListContacts { cid }
            | Frame::Contacts { cid, .. }
            | Frame::FileOffer { cid, .. }
            | Frame::FileStatus { cid, .. }
            | Frame::FileChunk { cid, .. }
            | Frame::SendFile { cid, .. }
            | Frame::Download { cid, .. }
            | Frame::FileData { cid, .. } => *cid,
        }
    }

    /// Appends this frame, length prefix included, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), StringTooLong> {
        match self {
            Frame::Login { cid, username } => {
                check_len(username)?;
                let len = HEADER + 4 + 2 + username.len();
                put_header(dst, len, key::LOGIN);
                dst.put_u32(*cid);
                put_string(dst, username);
            }
            Frame::Message {
                cid,
                message,
                from,
                to,
                time,
            } => encode_message(*cid, message, from, to, *time, dst)?,
            Frame::Response { cid, code } => encode_response(*cid, *code, dst),
            Frame::CorrelationTest { cid } => {
                put_header(dst, HEADER + 4, key::CORRELATION_TEST);
                dst.put_u32(*cid);
            }
            Frame::Register {
                cid,
                username,
                password,
            } => put_fields(dst, key::REGISTER, *cid, &[username, password], &[], None)?,
            Frame::LoginPassword {
                cid,
                username,
                password,
                device,
                flags,
            } => put_fields(
                dst,
                key::LOGIN_PASSWORD,
                *cid,
                &[username, password, device],
                &[*flags],
                None,
            )?,
            Frame::LoginToken { cid, token } => {
                put_fields(dst, key::LOGIN_TOKEN, *cid, &[token], &[], None)?
            }
            Frame::Token {
                cid,
                token,
                expires_at,
            } => put_fields(dst, key::TOKEN, *cid, &[token], &[], Some(*expires_at))?,
            Frame::Logout { cid, scope } => {
                put_fields(dst, key::LOGOUT, *cid, &[], &[*scope], None)?
            }
            Frame::ChangePassword { cid, old, new } => {
                put_fields(dst, key::CHANGE_PASSWORD, *cid, &[old, new], &[], None)?
            }
            Frame::SetProfile {
                cid,
                display_name,
                avatar,
            } => put_fields(
                dst,
                key::SET_PROFILE,
                *cid,
                &[display_name, avatar],
                &[],
                None,
            )?,
            Frame::GetProfile { cid, username } => {
                put_fields(dst, key::GET_PROFILE, *cid, &[username], &[], None)?
            }
            Frame::Profile {
                cid,
                username,
                display_name,
                avatar,
            } => put_fields(
                dst,
                key::PROFILE,
                *cid,
                &[username, display_name, avatar],
                &[],
                None,
            )?,
            other => {
                let mut body = Body::new(*other_key(other), other.cid());
                other.write_body(&mut body)?;
                body.finish(dst);
            }
        }
        Ok(())
    }

    /// The bodies of the list and event frames, built field by field.
    fn write_body(&self, b: &mut Body) -> Result<(), StringTooLong> {
        match self {
            Frame::Join { room, .. }
            | Frame::Leave { room, .. }
            | Frame::ListMembers { room, .. } => b.string(room)?,
            Frame::SendRoom {
                room,
                message,
                time,
                ..
            } => {
                b.string(room)?;
                b.string(message)?;
                b.u64(*time);
            }
            Frame::SendMany {
                to, message, time, ..
            } => {
                b.u16(count(to));
                for name in to.iter().take(usize::from(count(to))) {
                    b.string(name)?;
                }
                b.string(message)?;
                b.u64(*time);
            }
            Frame::SendAll { message, time, .. } => {
                b.string(message)?;
                b.u64(*time);
            }
            Frame::Rooms { rooms, .. } => {
                b.u16(count(rooms));
                for room in rooms.iter().take(usize::from(count(rooms))) {
                    b.string(&room.name)?;
                    b.u32(room.members);
                    b.u32(room.online);
                }
            }
            Frame::Members { members: users, .. } | Frame::Users { users, .. } => {
                b.u16(count(users));
                for user in users.iter().take(usize::from(count(users))) {
                    b.string(&user.name)?;
                    b.u8(u8::from(user.online));
                    b.u64(user.last_seen);
                }
            }
            Frame::History {
                target,
                mode,
                value,
                limit,
                ..
            } => {
                b.string(target)?;
                b.u8(*mode);
                b.u64(*value);
                b.u16(*limit);
            }
            Frame::HistoryPage { events, .. } => {
                b.u16(count(events));
                for event in events.iter().take(usize::from(count(events))) {
                    b.event(event)?;
                }
            }
            Frame::Event { event, .. } => b.event(event)?,
            Frame::FileOffer { sha256, size, .. } => {
                b.string(sha256)?;
                b.u64(*size);
            }
            Frame::FileStatus { have, offset, .. } => {
                b.u8(*have);
                b.u64(*offset);
            }
            Frame::FileChunk {
                sha256,
                size,
                offset,
                data,
                ..
            } => {
                b.string(sha256)?;
                b.u64(*size);
                b.u64(*offset);
                b.string(data)?;
            }
            Frame::SendFile {
                target_kind,
                target,
                sha256,
                name,
                mime,
                caption,
                time,
                ..
            } => {
                b.u8(*target_kind);
                for s in [target, sha256, name, mime, caption] {
                    b.string(s)?;
                }
                b.u64(*time);
            }
            Frame::Download {
                sha256,
                offset,
                length,
                ..
            } => {
                b.string(sha256)?;
                b.u64(*offset);
                b.u32(*length);
            }
            Frame::FileData { offset, data, .. } => {
                b.u64(*offset);
                b.string(data)?;
            }
            Frame::Search { prefix, limit, .. } => {
                b.string(prefix)?;
                b.u16(*limit);
            }
            Frame::ContactRequest { name, .. } | Frame::ContactRemove { name, .. } => {
                b.string(name)?
            }
            Frame::ContactAnswer { name, accept, .. } => {
                b.string(name)?;
                b.u8(*accept);
            }
            Frame::Contacts { contacts, .. } => {
                b.u16(count(contacts));
                for c in contacts.iter().take(usize::from(count(contacts))) {
                    b.string(&c.name)?;
                    b.u8(c.state);
                    b.u8(u8::from(c.online));
                    b.u64(c.last_seen);
                }
            }
            Frame::Ack {
                conversation, seq, ..
            } => {
                b.u64(*conversation);
                b.u64(*seq);
            }
            _ => {}
        }
        Ok(())
    }
}

/// How many entries of a list a frame carries: its `u16` count field caps a list at 65,535
/// (longer lists are cut there rather than sent with a wrong count).
fn count<T>(list: &[T]) -> u16 {
    list.len().min(usize::from(u16::MAX)) as u16
}

/// The key of a frame encoded through `Body`.
fn other_key(frame: &Frame) -> &'static u16 {
    match frame {
        Frame::Join { .. } => &key::JOIN,
        Frame::Leave { .. } => &key::LEAVE,
        Frame::SendRoom { .. } => &key::SEND_ROOM,
        Frame::SendMany { .. } => &key::SEND_MANY,
        Frame::SendAll { .. } => &key::SEND_ALL,
        Frame::ListRooms { .. } => &key::LIST_ROOMS,
        Frame::Rooms { .. } => &key::ROOMS,
        Frame::ListMembers { .. } => &key::LIST_MEMBERS,
        Frame::Members { .. } => &key::MEMBERS,
        Frame::ListUsers { .. } => &key::LIST_USERS,
        Frame::Users { .. } => &key::USERS,
        Frame::History { .. } => &key::HISTORY,
        Frame::HistoryPage { .. } => &key::HISTORY_PAGE,
        Frame::EnableAcks { .. } => &key::ENABLE_ACKS,
        Frame::Event { .. } => &key::EVENT,
        Frame::Ack { .. } => &key::ACK,
        Frame::Search { .. } => &key::SEARCH,
        Frame::FileOffer { .. } => &key::FILE_OFFER,
        Frame::FileStatus { .. } => &key::FILE_STATUS,
        Frame::FileChunk { .. } => &key::FILE_CHUNK,
        Frame::SendFile { .. } => &key::SEND_FILE,
        Frame::Download { .. } => &key::DOWNLOAD,
        Frame::FileData { .. } => &key::FILE_DATA,
        Frame::ContactRequest { .. } => &key::CONTACT_REQUEST,
        Frame::ContactAnswer { .. } => &key::CONTACT_ANSWER,
        Frame::ContactRemove { .. } => &key::CONTACT_REMOVE,
        Frame::ListContacts { .. } => &key::LIST_CONTACTS,
        Frame::Contacts { .. } => &key::CONTACTS,
        _ => &key::RESPONSE,
    }
}

/// A frame body under construction: the length prefix is written once the body is known.
struct Body {
    key: u16,
    buf: BytesMut,
}

impl Body {
    fn new(key: u16, cid: u32) -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32(cid);
        Body { key, buf }
    }
    fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }
    fn u64(&mut self, v: u64) {
        self.buf.put_u64(v);
    }
    fn string(&mut self, s: &[u8]) -> Result<(), StringTooLong> {
        check_len(s)?;
        put_string(&mut self.buf, s);
        Ok(())
    }
    fn event(&mut self, e: &Event) -> Result<(), StringTooLong> {
        self.u64(e.id);
        self.u64(e.conversation);
        self.u64(e.seq);
        self.u8(e.kind);
        self.string(&e.from)?;
        self.string(&e.to)?;
        self.u64(e.time);
        self.string(&e.message)
    }
    fn finish(self, dst: &mut BytesMut) {
        put_header(dst, HEADER + self.buf.len(), self.key);
        dst.put_slice(&self.buf);
    }
}

/// Appends an `Event` push frame (cid 0) from borrowed parts.
pub fn encode_event(event: &Event, dst: &mut BytesMut) -> Result<(), StringTooLong> {
    let mut body = Body::new(key::EVENT, 0);
    body.event(event)?;
    body.finish(dst);
    Ok(())
}

/// Appends a 13-byte response frame to `dst`, in one copy.
pub fn encode_response(cid: u32, code: u16, dst: &mut BytesMut) {
    let mut frame = [0; 13];
    frame[..11].copy_from_slice(&frame_start(HEADER + 4 + 2, key::RESPONSE, cid));
    frame[11..].copy_from_slice(&code.to_be_bytes());
    dst.extend_from_slice(&frame);
}

/// Appends a message frame to `dst` from borrowed parts (no `Frame` needed).
pub fn encode_message(
    cid: u32,
    message: &[u8],
    from: &[u8],
    to: &[u8],
    time: u64,
    dst: &mut BytesMut,
) -> Result<(), StringTooLong> {
    check_len(message)?;
    check_len(from)?;
    check_len(to)?;
    let len = HEADER + 4 + 6 + message.len() + from.len() + to.len() + 8;
    dst.reserve(LENGTH_PREFIX + len);
    // The fixed fields go in with as few copies as the layout allows: every `put_u*` is
    // a call and a copy of its own, and this runs for every delivery.
    let mut head = [0; 13];
    head[..11].copy_from_slice(&frame_start(len, key::MESSAGE, cid));
    head[11..].copy_from_slice(&(message.len() as u16).to_be_bytes());
    dst.extend_from_slice(&head);
    dst.extend_from_slice(message);
    put_string(dst, from);
    put_string(dst, to);
    dst.extend_from_slice(&time.to_be_bytes());
    Ok(())
}

/// The length prefix, version, key and correlation id a frame begins with.
fn frame_start(len: usize, key: u16, cid: u32) -> [u8; 11] {
    let mut head = [0; 11];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = VERSION;
    head[5..7].copy_from_slice(&key.to_be_bytes());
    head[7..].copy_from_slice(&cid.to_be_bytes());
    head
}

/// Appends a frame of parley's own keys: cid, then strings, then single bytes, then an
/// optional u64 — the order every such frame uses.
fn put_fields(
    dst: &mut BytesMut,
    key: u16,
    cid: u32,
    strings: &[&Bytes],
    bytes: &[u8],
    tail: Option<u64>,
) -> Result<(), StringTooLong> {
    for s in strings {
        check_len(s)?;
    }
    let len = HEADER
        + 4
        + strings.iter().map(|s| 2 + s.len()).sum::<usize>()
        + bytes.len()
        + tail.map_or(0, |_| 8);
    put_header(dst, len, key);
    dst.put_u32(cid);
    for s in strings {
        put_string(dst, s);
    }
    dst.put_slice(bytes);
    if let Some(tail) = tail {
        dst.put_u64(tail);
    }
    Ok(())
}

fn check_len(s: &[u8]) -> Result<(), StringTooLong> {
    if s.len() > u16::MAX as usize {
        return Err(StringTooLong(s.len()));
    }
    Ok(())
}

fn put_header(dst: &mut BytesMut, len: usize, key: u16) {
    dst.reserve(LENGTH_PREFIX + len);
    dst.put_u32(len as u32);
    dst.put_u8(VERSION);
    dst.put_u16(key);
}

fn put_string(dst: &mut BytesMut, s: &[u8]) {
    dst.put_u16(s.len() as u16);
    dst.put_slice(s);
}
