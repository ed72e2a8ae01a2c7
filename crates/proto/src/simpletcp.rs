//! Seed 003's framed JSON (Linloir's Simple-TCP-Server and its Flutter client).
//!
//! Every frame, both ways, is `i32 LE json_len | i64 LE payload_len | JSON | payload`.
//! Requests are `{"request": TYPE, "body": {...}, "tokenid": int|null}`; replies are
//! exactly `{"response","status","info","body"}`, compact, in that order, and only a
//! `FETCHFILE` reply carries a payload. The client reads the JSON one byte per character,
//! so every JSON byte written here is ASCII (other characters as `\uXXXX` escapes).
//!
//! Both lengths are bounded ([`Decoder`]): a length over its bound, or negative, cannot
//! be skipped safely (the stream is lost), so it is an error that ends the connection.

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
pub use serde_json::Value;

/// Bytes of a frame's header: the JSON length (4) and the payload length (8).
pub const HEADER: usize = 12;

/// The seed's own port.
pub const DEFAULT_PORT: u16 = 20706;

/// One whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub json: Bytes,
    pub payload: Bytes,
}

/// A frame whose header cannot be honoured; the stream cannot be read past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("JSON length {0} is negative or over the limit")]
    JsonLength(i64),
    #[error("payload length {0} is negative or over the limit")]
    PayloadLength(i64),
}

/// Splits frames from a byte stream, however the bytes arrive.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_json: usize,
    max_payload: usize,
}

impl Decoder {
    /// A decoder accepting JSON of at most `max_json` bytes and payloads of at most
    /// `max_payload` bytes.
    pub fn new(max_json: usize, max_payload: usize) -> Self {
        Decoder {
            max_json,
            max_payload,
        }
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The next whole frame at the front of `buf` (taken out of it), or `None` until
    /// more bytes arrive. A bad header is an error before its JSON or payload is awaited,
    /// so no more than a frame's bound is ever buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((json_len, payload_len)) = self.header(buf)? else {
            return Ok(None);
        };
        let total = HEADER + json_len + payload_len;
        if buf.len() < total {
            return Ok(None);
        }
        buf.advance(HEADER);
        let json = buf.split_to(json_len).freeze();
        let payload = buf.split_to(payload_len).freeze();
        Ok(Some(Frame { json, payload }))
    }

    /// The checked lengths (JSON, payload) of the frame at the front of `buf`, once its
    /// header is there.
    pub fn lengths(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        self.header(buf)
    }

    fn header(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let json = i32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        let payload = i64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
        let json_len = usize::try_from(json)
            .ok()
            .filter(|&n| n <= self.max_json)
            .ok_or(FrameError::JsonLength(i64::from(json)))?;
        let payload_len = usize::try_from(payload)
            .ok()
            .filter(|&n| n <= self.max_payload)
            .ok_or(FrameError::PayloadLength(payload))?;
        Ok(Some((json_len, payload_len)))
    }
}

/// Most bytes of JSON a frame can hold: its length is a signed 32-bit number.
pub const MAX_JSON: usize = i32::MAX as usize;

/// JSON longer than a frame can say ([`MAX_JSON`]): nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} bytes of JSON do not fit a frame")]
pub struct TooLarge(pub usize);

/// Appends one frame; JSON over [`MAX_JSON`] bytes is refused, with nothing written.
pub fn encode_frame(json: &[u8], payload: &[u8], dst: &mut BytesMut) -> Result<(), TooLarge> {
    encode_head(json, payload.len() as u64, dst)?;
    dst.put_slice(payload);
    Ok(())
}

/// Appends a frame's header and JSON, for a payload of `payload_len` bytes that the caller
/// writes after it (a file sent in pieces).
pub fn encode_head(json: &[u8], payload_len: u64, dst: &mut BytesMut) -> Result<(), TooLarge> {
    let json_len = i32::try_from(json.len()).map_err(|_| TooLarge(json.len()))?;
    // A payload is a slice or a file: far below 2^63 bytes.
    let payload_len = i64::try_from(payload_len).unwrap_or(i64::MAX);
    dst.reserve(HEADER + json.len());
    dst.put_i32_le(json_len);
    dst.put_i64_le(payload_len);
    dst.put_slice(json);
    Ok(())
}

/// The request types of the seed, and `None` for any other string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    State,
    Register,
    Login,
    Logout,
    Profile,
    ModifyPasswd,
    ModifyProfile,
    SendMsg,
    AckFetch,
    FetchMsg,
    FindFile,
    FetchFile,
    SearchUsr,
    AddContact,
    FetchContact,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::State,
        Kind::Register,
        Kind::Login,
        Kind::Logout,
        Kind::Profile,
        Kind::ModifyPasswd,
        Kind::ModifyProfile,
        Kind::SendMsg,
        Kind::AckFetch,
        Kind::FetchMsg,
        Kind::FindFile,
        Kind::FetchFile,
        Kind::SearchUsr,
        Kind::AddContact,
        Kind::FetchContact,
    ];

    /// The word on the wire, which is also the reply's `response`.
    pub fn word(self) -> &'static str {
        match self {
            Kind::State => "STATE",
            Kind::Register => "REGISTER",
            Kind::Login => "LOGIN",
            Kind::Logout => "LOGOUT",
            Kind::Profile => "PROFILE",
            Kind::ModifyPasswd => "MODIFYPASSWD",
            Kind::ModifyProfile => "MODIFYPROFILE",
            Kind::SendMsg => "SENDMSG",
            Kind::AckFetch => "ACKFETCH",
            Kind::FetchMsg => "FETCHMSG",
            Kind::FindFile => "FINDFILE",
            Kind::FetchFile => "FETCHFILE",
            Kind::SearchUsr => "SEARCHUSR",
            Kind::AddContact => "ADDCONTACT",
            Kind::FetchContact => "FETCHCONTACT",
        }
    }

    pub fn from_word(word: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.word() == word)
    }
}

/// A request whose envelope parsed; its body is read by [`Request::body`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None`: a type the seed does not know (answered `UNKNOWN`).
    pub kind: Option<Kind>,
    /// `None` for a missing or null `tokenid`.
    pub tokenid: Option<i64>,
    body: Value,
}

/// Why a request could not be read. [`BadRequest::Body`] knows the request's type, so its
/// ERR reply names it; the others are answered as `UNKNOWN`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("\"request\" is not a string")]
    Type,
    #[error("\"tokenid\" is not an integer")]
    Token,
    #[error("{kind:?}: bad body: {reason}")]
    Body { kind: Kind, reason: String },
}

#[derive(Deserialize)]
struct Envelope {
    request: Value,
    #[serde(default)]
    body: Value,
    #[serde(default)]
    tokenid: Value,
}

/// Parses a request's JSON envelope (its body is checked when it is read).
pub fn parse_request(json: &[u8]) -> Result<Request, BadRequest> {
    let envelope: Envelope =
        serde_json::from_slice(json).map_err(|e| BadRequest::NotJson(e.to_string()))?;
    let Value::String(word) = &envelope.request else {
        return Err(BadRequest::Type);
    };
    let tokenid = match envelope.tokenid {
        Value::Null => None,
        Value::Number(n) => Some(n.as_i64().ok_or(BadRequest::Token)?),
        _ => return Err(BadRequest::Token),
    };
    Ok(Request {
        kind: Kind::from_word(word),
        tokenid,
        body: envelope.body,
    })
}

impl Request {
    /// The body as `T` (a missing or null body reads as `{}`), read from the parsed value
    /// in place (no copy of it).
    pub fn body<T: DeserializeOwned>(&self) -> Result<T, BadRequest> {
        static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        let body = match &self.body {
            Value::Null => EMPTY.get_or_init(|| Value::Object(Default::default())),
            other => other,
        };
        T::deserialize(body).map_err(|e| BadRequest::Body {
            kind: self.kind.unwrap_or(Kind::State),
            reason: e.to_string(),
        })
    }
}

/// `{"username": base64 name, "passwd": md5 hex, "newPasswd": md5 hex|null}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserIdentity {
    pub username: String,
    pub passwd: String,
    #[serde(default, rename = "newPasswd")]
    pub new_passwd: Option<String>,
}

/// `{"userid": int, "username": base64 name, "avatar": base64|null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub userid: i64,
    pub username: String,
    #[serde(default)]
    pub avatar: Option<String>,
}

/// A chat message, keys in the seed's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub userid: i64,
    pub targetid: i64,
    pub contenttype: ContentType,
    /// Base64: the text, a file's name, or (for images) the image's base64.
    pub content: String,
    /// Unix ms, set by the sending client.
    pub timestamp: i64,
    /// The sender's id of the message (see [`message_md5`]).
    pub md5encoded: String,
    #[serde(default)]
    pub filemd5: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    Plaintext,
    Image,
    File,
}

/// `{"userid": int}` (PROFILE, ADDCONTACT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct UserId {
    pub userid: i64,
}

/// `{"username": base64}` (SEARCHUSR).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserName {
    pub username: String,
}

/// `{"timestamp": int}` (ACKFETCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Timestamp {
    pub timestamp: i64,
}

/// `{"filemd5": hex}` (FINDFILE).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileMd5 {
    pub filemd5: String,
}

/// `{"msgmd5": hex}` (FETCHFILE).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MsgMd5 {
    pub msgmd5: String,
}

#[derive(Serialize)]
struct Reply<'a, T: Serialize> {
    response: &'a str,
    status: &'static str,
    info: Option<&'a str>,
    body: Option<&'a T>,
}

/// Appends an OK reply (or push) of type `response` with `body` (`None`: null) and
/// `payload`. A reply whose JSON would not fit a frame is written as an ERR saying so
/// (callers bound what they send; this keeps every input from panicking).
pub fn encode_ok<T: Serialize>(
    response: &str,
    body: Option<&T>,
    payload: &[u8],
    dst: &mut BytesMut,
) {
    let reply = Reply {
        response,
        status: "OK",
        info: None,
        body,
    };
    if encode_frame(&ascii_json(&reply), payload, dst).is_err() {
        encode_err(response, "Exception: reply too large", dst);
    }
}

/// The bytes an OK reply of type `response` adds around its body's JSON.
pub fn ok_overhead(response: &str) -> usize {
    HEADER + ok_prefix(response).len() + 1
}

fn ok_prefix(response: &str) -> Vec<u8> {
    let mut prefix = br#"{"response":"#.to_vec();
    prefix.extend_from_slice(&ascii_json(&response));
    prefix.extend_from_slice(br#","status":"OK","info":null,"body":"#);
    prefix
}

/// Appends an OK reply of type `response` whose body is `body`, JSON already written (ASCII,
/// as [`ascii_json`] writes it): a long reply is assembled from its pieces once, without
/// a copy of them as a value. Too large for a frame, it is an ERR as in [`encode_ok`].
pub fn encode_ok_json(response: &str, body: &[u8], dst: &mut BytesMut) {
    let mut json = ok_prefix(response);
    json.reserve(body.len() + 1);
    json.extend_from_slice(body);
    json.push(b'}');
    if encode_frame(&json, b"", dst).is_err() {
        encode_err(response, "Exception: reply too large", dst);
    }
}

/// Appends an ERR reply of type `response`: `info` says why, the body is null. An `info`
/// too long for a frame is cut (at a character boundary).
pub fn encode_err(response: &str, info: &str, dst: &mut BytesMut) {
    let mut info = info;
    if info.len() > 4096 {
        let mut end = 4096;
        while !info.is_char_boundary(end) {
            end -= 1;
        }
        info = &info[..end];
    }
    let response = if response.len() > 64 {
        "UNKNOWN"
    } else {
        response
    };
    let reply: Reply<'_, ()> = Reply {
        response,
        status: "ERR",
        info: Some(info),
        body: None,
    };
    // At most 6 bytes per character escaped, of under 5,000: far below `MAX_JSON`.
    let _ = encode_frame(&ascii_json(&reply), &[], dst);
}

/// Compact JSON with every character outside ASCII written as a `\uXXXX` escape (UTF-16
/// surrogate pairs beyond the BMP). Outside strings JSON is ASCII already, so escaping
/// every such character wherever it is gives the same value.
pub fn ascii_json<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_string(value).expect("serialising plain data cannot fail");
    if json.is_ascii() {
        return json.into_bytes();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// Base64 (standard alphabet, padded), as the client writes names and text.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of padded standard base64, or `None`.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Lowercase hex MD5.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

/// The id the client gives a message (`md5encoded`): MD5 of the decoded content, then
/// the sender's id, the target's id and the timestamp, each as its low 32 bits, little-
/// endian. Recomputed from a stored message, it matches what the sender's client made.
pub fn message_md5(content: &[u8], userid: i64, targetid: i64, timestamp: i64) -> String {
    let mut md5 = Md5::new();
    md5.update(content);
    for n in [userid, targetid, timestamp] {
        md5.update((n as i32).to_le_bytes());
    }
    hex(&md5.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` is 32 lowercase hex digits (an MD5 as the client writes it).
pub fn is_md5(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &[u8], payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(json, payload, &mut out).unwrap();
        out
    }

    #[test]
    fn a_frame_is_two_little_endian_lengths_then_json_then_payload() {
        let out = frame(b"{}", b"abc");
        assert_eq!(&out[..], b"\x02\0\0\0\x03\0\0\0\0\0\0\0{}abc");
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let mut stream = frame(b"{\"a\":1}", b"");
        stream.extend_from_slice(&frame(b"{}", b"xyz"));
        let decoder = Decoder::new(100, 100);
        for step in 1..stream.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(f) = decoder.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 2, "step {step}");
            assert_eq!(&got[0].json[..], b"{\"a\":1}");
            assert_eq!(
                (&got[1].json[..], &got[1].payload[..]),
                (&b"{}"[..], &b"xyz"[..])
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn lengths_over_the_bounds_or_negative_are_errors_before_any_body() {
        let decoder = Decoder::new(10, 20);
        let mut buf = BytesMut::from(&frame(&[b' '; 11], b"")[..HEADER]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::JsonLength(11)));
        let mut buf = BytesMut::from(&frame(b"{}", &[0; 21])[..HEADER]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::PayloadLength(21)));
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::JsonLength(-1)));
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::PayloadLength(i64::MIN))
        );
        let mut exact = frame(&[b' '; 10], &[7; 20]);
        assert!(decoder.decode(&mut exact).unwrap().is_some());
    }

    #[test]
    fn replies_have_the_seeds_keys_in_order_and_ascii_only() {
        let mut out = BytesMut::new();
        let info = UserInfo {
            userid: 5,
            username: b64("zoë".as_bytes()),
            avatar: None,
        };
        encode_ok("LOGIN", Some(&info), b"", &mut out);
        let json = &out[HEADER..];
        assert_eq!(
            json,
            br#"{"response":"LOGIN","status":"OK","info":null,"body":{"userid":5,"username":"em/Dqw==","avatar":null}}"#
        );
        let mut out = BytesMut::new();
        encode_err("UNKNOWN", "Unkown request", &mut out);
        assert_eq!(
            &out[HEADER..],
            br#"{"response":"UNKNOWN","status":"ERR","info":"Unkown request","body":null}"#
        );
        let escaped = ascii_json(&"é😀");
        assert_eq!(escaped, br#""\u00e9\ud83d\ude00""#);
        let back: String = serde_json::from_slice(&escaped).unwrap();
        assert_eq!(back, "é😀");
    }

    #[test]
    fn a_reply_assembled_from_json_pieces_is_the_same_as_a_serialised_one() {
        let body = serde_json::json!({"messages": [{"a": 1}, {"b": "é"}]});
        let (mut whole, mut pieces) = (BytesMut::new(), BytesMut::new());
        encode_ok("FETCHMSG", Some(&body), b"", &mut whole);
        encode_ok_json("FETCHMSG", &ascii_json(&body), &mut pieces);
        assert_eq!(whole, pieces);
        assert_eq!(
            whole.len(),
            ok_overhead("FETCHMSG") + ascii_json(&body).len()
        );
    }

    #[test]
    fn a_head_announces_a_payload_written_after_it_and_errors_stay_small() {
        let mut head = BytesMut::new();
        encode_head(b"{}", 5, &mut head).unwrap();
        assert_eq!(&head[..], b"\x02\0\0\0\x05\0\0\0\0\0\0\0{}");
        let mut err = BytesMut::new();
        encode_err("X", &"é".repeat(10_000), &mut err);
        assert!(err.len() < 6 * 4096, "an ERR stays small: {}", err.len());
    }

    #[test]
    fn requests_parse_with_or_without_a_token_and_bad_ones_say_why() {
        let r = parse_request(br#"{"request":"STATE","body":{},"tokenid":null}"#).unwrap();
        assert_eq!((r.kind, r.tokenid), (Some(Kind::State), None));
        let r = parse_request(br#"{"request":"ACKFETCH","body":{"timestamp":9},"tokenid":42}"#)
            .unwrap();
        assert_eq!(r.tokenid, Some(42));
        assert_eq!(r.body::<Timestamp>().unwrap().timestamp, 9);
        let r = parse_request(br#"{"request":"DANCE","body":null}"#).unwrap();
        assert_eq!(r.kind, None);
        assert!(matches!(
            parse_request(b"{nope"),
            Err(BadRequest::NotJson(_))
        ));
        assert_eq!(parse_request(br#"{"request":5}"#), Err(BadRequest::Type));
        assert_eq!(
            parse_request(br#"{"request":"STATE","tokenid":"7"}"#),
            Err(BadRequest::Token)
        );
        let r = parse_request(br#"{"request":"PROFILE","body":{"userid":"x"}}"#).unwrap();
        assert!(matches!(
            r.body::<UserId>(),
            Err(BadRequest::Body {
                kind: Kind::Profile,
                ..
            })
        ));
    }

    #[test]
    fn a_message_keeps_its_key_order_and_its_md5_is_the_clients() {
        let m = Message {
            userid: 1,
            targetid: 2,
            contenttype: ContentType::Plaintext,
            content: b64(b"hi"),
            timestamp: 1_700_000_000_123,
            md5encoded: message_md5(b"hi", 1, 2, 1_700_000_000_123),
            filemd5: None,
        };
        let json = ascii_json(&m);
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.starts_with(
            r#"{"userid":1,"targetid":2,"contenttype":"plaintext","content":"aGk=","timestamp":1700000000123,"md5encoded":""#
        ));
        assert!(text.ends_with(r#","filemd5":null}"#));
        // MD5 of "hi", 1, 2 and the timestamp's low 32 bits (0xd5d0_607b), little-endian.
        let mut bytes = b"hi".to_vec();
        bytes.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        bytes.extend_from_slice(&(1_700_000_000_123_i64 as i32).to_le_bytes());
        assert_eq!(m.md5encoded, md5_hex(&bytes));
        assert!(is_md5(&m.md5encoded));
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
