//! The seed's own frames (keys 0x01–0x09): login, message, response and the correlation-id
//! test, byte for byte as the seed-000 clients send and expect them, and the hand-made
//! encoders and decoder a server runs for every message.

use bytes::{Bytes, BytesMut};

use super::field::{check_len, frame_start, put_string, StringTooLong};
use super::{key, HEADER, LENGTH_PREFIX};

/// The seed's frames, for `define_frames!` (see `binary/table.rs`).
macro_rules! seed_frames {
    ([$next:ident $($rest:ident)*] $($done:tt)*) => { $next! { [$($rest)*] $($done)*
        Login = LOGIN 0x01 { username: Bytes },
        /// A direct message; pushed to its recipient with cid 0, `from` and `time` as the
        /// sender sent them.
        Message = MESSAGE 0x02 { message: Bytes, from: Bytes, to: Bytes, time: u64 },
        /// Always 13 bytes on the wire: the request's cid and a `code::*`.
        Response = RESPONSE 0x03 { code: u16 },
        /// Sent by seed clients as a bare correlation id; anything after it is ignored.
        CorrelationTest = CORRELATION_TEST 0x09 {},
    } };
}
pub(super) use seed_frames;

/// Whether a frame of `key` may carry bytes after its last field. Only the correlation-id
/// test does: the seed's own server read it as a login, so anything after the id is
/// accepted and ignored.
pub(super) fn ignores_trailing_bytes(key: u16) -> bool {
    key == key::CORRELATION_TEST
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

/// A direct message (key 0x02) as the frame it came in, its strings ranges of the frame's
/// bytes. Split into a `Bytes` per field, as [`Frame::Message`](super::Frame::Message) is, a
/// message holds four references to the buffer it was read into, each taken and given back
/// with an atomic operation on the buffer's shared count that every thread the message
/// passes through touches; a view holds one.
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

    /// This view, holding the frame its fields are ranges of.
    pub(super) fn holding(self, frame: Bytes) -> MessageView {
        MessageView { frame, ..self }
    }

    /// The fields of a message frame (version, key, then the body), as `parse` reads
    /// them; `None` where `parse` finds it malformed. The returned view holds no frame yet
    /// (see [`holding`](Self::holding)).
    pub(super) fn parse(frame: &[u8]) -> Option<MessageView> {
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
        if at + 8 != frame.len() {
            return None; // bytes after the time: `parse` refuses the frame
        }
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
