//! JSON lines: seed 001's `{"command","data"}` → `{"success","message","data"}`, and
//! parley's extensions of it.
//!
//! Responses are compact, one per line, keys in the order `success`, `message`, `data`
//! (then `id` when the request had one), with `<`, `>`, `&` escaped as `\u003c`, `\u003e`,
//! `\u0026` as Go's encoder writes them. Pushed events carry `"event"` instead of `"success"`
//! and are sent only to sessions that asked for them (`SUBSCRIBE`), because seed-001 clients
//! pair every line they read with their last request.

use serde::{Deserialize, Serialize};
pub use serde_json::Value;

/// The greeting a seed-001 client waits for before it sends anything.
pub const WELCOME: &str = "Welcome to TCP/IP Educational Server!";

/// One request line. Unknown fields (seed 001 clients send `from`) are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Request {
    pub command: String,
    #[serde(default)]
    pub data: String,
    /// Echoed in the response, so programs can pipeline.
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub new_password: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    /// With a password `LOGIN`: also issue a device token.
    #[serde(default)]
    pub want_token: bool,
    #[serde(default)]
    pub token: Option<String>,
    /// With `LOGOUT`: every device of the account.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Base64 (standard alphabet, with padding).
    #[serde(default)]
    pub avatar: Option<String>,
    /// `DM` to several users at once.
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
    /// `HISTORY` paging: message ids, or Unix-ms times.
    #[serde(default)]
    pub before: Option<i64>,
    #[serde(default)]
    pub after: Option<i64>,
    #[serde(default)]
    pub before_time: Option<i64>,
    #[serde(default)]
    pub after_time: Option<i64>,
    /// `SUBSCRIBE` with acks: the device's cursor moves only on `ACK`.
    #[serde(default)]
    pub acks: bool,
    /// `ACK`: everything of `conversation` up to `seq` was received.
    #[serde(default)]
    pub conversation: Option<i64>,
    #[serde(default)]
    pub seq: Option<i64>,
    /// Files: the content's SHA-256 (lower-case hex), its size, a chunk's offset, how many
    /// bytes to download; the file's name and media type for `SEND_FILE`. Chunk bytes
    /// travel base64-encoded in `data`.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub length: Option<usize>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub r#type: Option<String>,
}

/// Parses a request line.
pub fn parse(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line)
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
        assert_eq!((r.command.as_str(), r.data.as_str()), ("ECHO", "hi"));
        assert_eq!(r.id, Some(Value::from(7)));
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
}
