//! JSON lines: seed 001's `{"command","data"}` → `{"success","message","data"}`, and
//! parley's extensions of it.
//!
//! A request is one object; its `command` (case-insensitive) picks a [`Command`] variant,
//! which names every field that command reads. Other fields are ignored (seed 001 clients
//! send `from`), so a field's type is checked only by the commands that read it.
//!
//! Responses are compact, one per line, keys in the order `success`, `message`, `data`
//! (then `id` when the request had one), with `<`, `>`, `&` escaped as `\u003c`, `\u003e`,
//! `\u0026` as Go's encoder writes them. Pushed events carry `"event"` instead of `"success"`
//! and are sent only to sessions that asked for them (`SUBSCRIBE`), because seed-001 clients
//! pair every line they read with their last request.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
pub use serde_json::Value;

/// The greeting a seed-001 client waits for before it sends anything.
pub const WELCOME: &str = "Welcome to TCP/IP Educational Server!";

/// One request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the response, so programs can pipeline.
    pub id: Option<Value>,
    pub command: Command,
}

/// What a request asks: one variant per command, with the fields it reads (`data` is the
/// free-form field of seed 001: a text, a name, a room, a search prefix, a file chunk).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "command", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Command {
    /// Seed 001: answers `data`.
    Echo {
        #[serde(default)]
        data: String,
    },
    /// Seed 001: the server's time.
    Time,
    Ping,
    Help,
    /// Seed 001: ends the connection.
    Quit,
    /// Without a password: seed 001's nickname `data` for this connection (`LOGIN` alike).
    /// With one: a new account named `data`.
    Register {
        #[serde(default)]
        data: String,
        password: Option<String>,
    },
    /// With a password: logs in to the account `data` on `device`, and issues a token with
    /// `want_token`. Without one: as `REGISTER` without a password.
    Login {
        #[serde(default)]
        data: String,
        password: Option<String>,
        device: Option<String>,
        #[serde(default)]
        want_token: bool,
    },
    /// Logs in with a device token (`STATE` is seed 003's name for it).
    #[serde(alias = "STATE")]
    Resume {
        token: Option<String>,
    },
    /// Issues a token for this device.
    Token,
    Passwd {
        password: Option<String>,
        new_password: Option<String>,
    },
    /// Revokes this device's token (every device's with `all`) and ends the connection.
    Logout {
        #[serde(default)]
        all: bool,
    },
    /// The profile of `target` (or of the user named in `data`).
    Profile {
        target: Option<String>,
        #[serde(default)]
        data: String,
    },
    SetProfile {
        display_name: Option<String>,
        /// Base64 (standard alphabet, with padding).
        avatar: Option<String>,
    },
    /// Seed 001: `data` to everyone.
    Message {
        #[serde(default)]
        data: String,
    },
    /// `data` to the user `to`, or to each of `recipients`.
    Dm {
        to: Option<String>,
        recipients: Option<Vec<String>>,
        #[serde(default)]
        data: String,
    },
    /// `data` to the members of `room`.
    Say {
        room: Option<String>,
        #[serde(default)]
        data: String,
    },
    /// Joins `rooms`, or `room`, or the room named in `data`.
    Join {
        rooms: Option<Vec<String>>,
        room: Option<String>,
        #[serde(default)]
        data: String,
    },
    /// Leaves rooms, named as for `JOIN`.
    Leave {
        rooms: Option<Vec<String>>,
        room: Option<String>,
        #[serde(default)]
        data: String,
    },
    Rooms,
    /// The members of `room` (or of the room named in `data`).
    Members {
        room: Option<String>,
        #[serde(default)]
        data: String,
    },
    /// Seed 001: who is online, as one string.
    ListUsers,
    /// Who is online, as a list.
    Who,
    /// Every user, with presence.
    Users,
    /// Seed 001: the last messages to everyone, as one string.
    ListMessages,
    /// The user's conversations, each with this device's cursor and its last message.
    Conversations,
    /// A page of `target` (or of what `data` names): the latest `limit` messages, or those
    /// before or after a message id or a Unix-ms time.
    History {
        target: Option<String>,
        #[serde(default)]
        data: String,
        limit: Option<usize>,
        before: Option<i64>,
        after: Option<i64>,
        before_time: Option<i64>,
        after_time: Option<i64>,
    },
    /// Pushes from now on (`{"event":...}` lines); with `acks`, the device's cursor moves
    /// only on `ACK`.
    Subscribe {
        #[serde(default)]
        acks: bool,
    },
    /// Everything of `conversation` up to `seq` was received.
    Ack {
        conversation: Option<i64>,
        seq: Option<i64>,
    },
    /// Users whose names start with `data`, at most `limit`.
    Search {
        #[serde(default)]
        data: String,
        limit: Option<usize>,
    },
    /// The contact actions: with the user `to` (or the one named in `data`).
    ContactRequest {
        to: Option<String>,
        #[serde(default)]
        data: String,
    },
    ContactAccept {
        to: Option<String>,
        #[serde(default)]
        data: String,
    },
    ContactDecline {
        to: Option<String>,
        #[serde(default)]
        data: String,
    },
    ContactRemove {
        to: Option<String>,
        #[serde(default)]
        data: String,
    },
    Contacts,
    /// Files are named by their content's SHA-256 (lower-case hex). An offer of `size`
    /// bytes: the server has them, or says where the upload resumes.
    FileOffer {
        sha256: Option<String>,
        size: Option<u64>,
    },
    /// Bytes `offset..` of an upload of `size` bytes, base64-encoded in `data`.
    FileChunk {
        sha256: Option<String>,
        size: Option<u64>,
        offset: Option<u64>,
        #[serde(default)]
        data: String,
    },
    /// A message carrying the stored file `sha256` (named `name`, of media type `type`) to
    /// `room` or `to`, with the caption `data`.
    SendFile {
        room: Option<String>,
        to: Option<String>,
        sha256: Option<String>,
        name: Option<String>,
        #[serde(rename = "type")]
        mime: Option<String>,
        #[serde(default)]
        data: String,
    },
    /// Up to `length` bytes of the file `sha256` from `offset`.
    Download {
        sha256: Option<String>,
        offset: Option<u64>,
        length: Option<usize>,
    },
    /// Any other command name.
    #[serde(other)]
    Unknown,
}

/// Parses a request line.
pub fn parse(line: &[u8]) -> Result<Request, serde_json::Error> {
    /// What every request has: its command's name and the id to echo.
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        command: Cow<'a, str>,
        #[serde(default)]
        id: Option<Value>,
    }
    // serde reads a struct from an array too (fields in order): a request is an object.
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err(serde::de::Error::custom("a request is a JSON object"));
    }
    let head: Head = serde_json::from_slice(line)?;
    let command = if head.command.bytes().any(|b| b.is_ascii_lowercase()) {
        // Command names are case-insensitive, and the variants are named in upper case.
        let mut request: Value = serde_json::from_slice(line)?;
        request["command"] = Value::from(head.command.to_ascii_uppercase());
        Command::deserialize(request)?
    } else {
        serde_json::from_slice(line)?
    };
    Ok(Request {
        id: head.id,
        command,
    })
}

#[derive(Serialize)]
struct Response<'a> {
    success: bool,
    message: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

/// Appends one response line to `dst`.
pub fn encode_response(
    success: bool,
    message: &str,
    data: &Value,
    id: Option<&Value>,
    dst: &mut Vec<u8>,
) {
    let response = Response {
        success,
        message,
        data,
        id,
    };
    encode_line(&response, dst);
}

/// Appends any serialisable value as one escaped line (used for pushed events).
pub fn encode_line<T: Serialize>(value: &T, dst: &mut Vec<u8>) {
    let start = dst.len();
    serde_json::to_writer(&mut *dst, value).expect("serialising plain data cannot fail");
    // Go's encoder writes `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026`, and seed-001
    // clients see exactly that. They can only occur inside strings and seldom do, so the
    // line is serialised in place and rewritten only when one does.
    if dst[start..].iter().any(|b| matches!(b, b'<' | b'>' | b'&')) {
        let json = dst.split_off(start);
        for &b in &json {
            match b {
                b'<' => dst.extend_from_slice(b"\\u003c"),
                b'>' => dst.extend_from_slice(b"\\u003e"),
                b'&' => dst.extend_from_slice(b"\\u0026"),
                _ => dst.push(b),
            }
        }
    }
    dst.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_welcome_line_is_byte_for_byte_the_seeds() {
        let mut out = Vec::new();
        encode_response(true, WELCOME, &Value::from(""), None, &mut out);
        assert_eq!(
            out,
            b"{\"success\":true,\"message\":\"Welcome to TCP/IP Educational Server!\",\"data\":\"\"}\n"
        );
    }

    #[test]
    fn html_characters_are_escaped_like_go() {
        let mut out = Vec::new();
        encode_response(true, "Echo response", &Value::from("<a&b>"), None, &mut out);
        assert_eq!(
            out,
            b"{\"success\":true,\"message\":\"Echo response\",\"data\":\"\\u003ca\\u0026b\\u003e\"}\n"
        );
    }

    #[test]
    fn requests_ignore_from_and_keep_the_id() {
        let r = parse(br#"{"command":"ECHO","data":"hi","from":"x","id":7}"#).unwrap();
        let echo = Command::Echo { data: "hi".into() };
        assert_eq!((r.command, r.id.clone()), (echo, Some(Value::from(7))));
        let mut out = Vec::new();
        encode_response(
            true,
            "Echo response",
            &Value::from("hi"),
            r.id.as_ref(),
            &mut out,
        );
        assert!(out.ends_with(b",\"id\":7}\n"));
    }

    /// Each command reads its own fields, whatever the order; a missing one is `None` (or
    /// empty), and fields of other commands are not looked at.
    #[test]
    fn a_command_reads_its_own_fields() {
        let r = parse(br#"{"limit":5,"target":"red","command":"HISTORY","before":9}"#);
        let history = Command::History {
            target: Some("red".into()),
            data: String::new(),
            limit: Some(5),
            before: Some(9),
            after: None,
            before_time: None,
            after_time: None,
        };
        assert_eq!(r.unwrap().command, history);
        let time = parse(br#"{"command":"TIME","limit":"not read"}"#).unwrap();
        assert_eq!(time.command, Command::Time);
        let send = parse(br#"{"command":"SEND_FILE","to":"bob","type":"image/png"}"#);
        let Command::SendFile { to, mime, .. } = send.unwrap().command else {
            panic!("not a SEND_FILE");
        };
        assert_eq!(
            (to.as_deref(), mime.as_deref()),
            (Some("bob"), Some("image/png"))
        );
    }

    /// Command names are case-insensitive; `STATE` is `RESUME`; any other name is
    /// `Unknown` and keeps its id (it is answered); a field of the wrong type for its
    /// command, or a line that is not an object with a `command`, is an error.
    #[test]
    fn names_are_case_insensitive_and_unknown_ones_are_kept() {
        let dm = parse(br#"{"command":"dM","to":"bob","data":"hi"}"#).unwrap();
        let expected = Command::Dm {
            to: Some("bob".into()),
            recipients: None,
            data: "hi".into(),
        };
        assert_eq!(dm.command, expected);
        let state = parse(br#"{"command":"state","token":"t"}"#).unwrap();
        let resume = Command::Resume {
            token: Some("t".into()),
        };
        assert_eq!(state.command, resume);
        let unknown = parse(br#"{"command":"FLY","id":"a"}"#).unwrap();
        assert_eq!(
            (unknown.command, unknown.id),
            (Command::Unknown, Some(Value::from("a")))
        );
        assert!(parse(br#"{"command":"HISTORY","limit":"five"}"#).is_err());
        assert!(parse(br#"{"data":"no command"}"#).is_err());
        assert!(parse(br#"["ECHO","hi"]"#).is_err());
        assert!(parse(br#" {"command":"PING"}"#).is_ok());
        assert!(parse(br#"{"command":"ECHO","data":"cut"#).is_err());
    }
}
