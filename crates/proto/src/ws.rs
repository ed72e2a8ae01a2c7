//! WebSocket framing (RFC 6455, section 5), sans-IO: frames from a buffer, frames into one.
//!
//! The server reads masked client frames and writes unmasked ones; the benchmark's client
//! does the opposite. A frame's length is checked as soon as its header is read, so an
//! oversized frame is refused before any of its payload is buffered. Fragmented messages
//! are joined by [`Reader`], bounded by the same limit.
//!
//! Why not tokio-tungstenite: idle memory, measured (docs/perf/2026-12-06-websocket-codec.md).
//! At 10,000 idle connections it adds, over a bare tokio task per connection, about
//! 9,560 bytes each with the workspace's 0.24 (two 4 KiB read buffers, not configurable),
//! 136,600 with 0.30's defaults (a 128 KiB read buffer allocated eagerly) and still about
//! 970 with 0.30 tuned (a 256-byte read buffer, the handshake's future boxed). Here the
//! codec's part of an idle connection is one boxed [`Reader`] (56 bytes), and the session
//! frees its read buffer while idle, which a library that owns its buffer does not allow: a
//! whole WebSocket session costs about 500–600 bytes over a binary one (2,806–2,894 bytes a
//! connection against 2,288–2,309). The margin against the tuned library is real but
//! moderate (about 0.9 KiB a connection); with it parley would still meet its 4 KiB target.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        self as u8 >= 0x8
    }
}

/// Close codes (RFC 6455, 7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const TOO_BIG: u16 = 1009;
}

/// Why bytes are not a valid frame; the connection cannot go on after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame or message larger than the limit")]
    TooLarge,
    #[error("a client frame without a mask")]
    Unmasked,
    #[error("reserved bits set or an unknown opcode")]
    Reserved,
    #[error("a control frame fragmented or over 125 bytes")]
    BadControl,
    #[error("a continuation without a message, or a new message inside one")]
    BadFragment,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    /// Unmasked.
    pub payload: Bytes,
}

/// Takes one frame off the front of `buf` if it holds a whole one. `masked`: whether
/// frames must be masked (what a server reads). Payloads over `max` are an error as soon
/// as the header says so.
pub fn decode(buf: &mut BytesMut, max: usize, masked: bool) -> Result<Option<Frame>, Error> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(Error::Reserved);
    }
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(Error::Reserved)?;
    let fin = b0 & 0x80 != 0;
    let has_mask = b1 & 0x80 != 0;
    if has_mask != masked {
        return Err(Error::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(Error::BadControl);
    }
    if len > max as u64 {
        return Err(Error::TooLarge);
    }
    let len = len as usize;
    let key = if has_mask {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    if buf.len() < at + len {
        buf.reserve(at + len - buf.len());
        return Ok(None);
    }
    buf.advance(at);
    let mut payload = buf.split_to(len);
    if let Some(key) = key {
        apply_mask(&mut payload, key);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// XORs `data` with the masking key (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// Appends the header of a final frame of `len` bytes; with `mask`, masked by it (the
/// payload must then be masked by the caller, or use [`encode`]).
pub fn encode_header(opcode: Opcode, len: usize, mask: Option<[u8; 4]>, dst: &mut BytesMut) {
    let bit = if mask.is_some() { 0x80 } else { 0 };
    dst.put_u8(0x80 | opcode as u8);
    match len {
        0..=125 => dst.put_u8(bit | len as u8),
        126..=0xFFFF => {
            dst.put_u8(bit | 126);
            dst.put_u16(len as u16);
        }
        _ => {
            dst.put_u8(bit | 127);
            dst.put_u64(len as u64);
        }
    }
    if let Some(key) = mask {
        dst.put_slice(&key);
    }
}

/// The header of an unmasked final frame of `len` bytes: its bytes, and how many of them
/// it takes (2, 4 or 10), for a writer that frames a payload already in place.
pub fn header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    out[0] = 0x80 | opcode as u8;
    let n = match len {
        0..=125 => {
            out[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (out, n)
}

/// The bytes a header of a `len`-byte unmasked frame takes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends a whole final frame, masked with `mask` if given (a client's frames).
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, dst: &mut BytesMut) {
    encode_header(opcode, payload.len(), mask, dst);
    let start = dst.len();
    dst.put_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key);
    }
}

/// A close frame's payload: the code, then a reason of at most 123 bytes.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// A complete message, or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The close code, if the peer gave one.
    Close(Option<u16>),
}

/// Reads messages, joining fragments (control frames may arrive between them).
#[derive(Debug)]
pub struct Reader {
    max: usize,
    masked: bool,
    partial: Option<(Opcode, BytesMut)>,
}

impl Reader {
    /// A reader of messages up to `max` bytes; `masked` for a server's side.
    pub fn new(max: usize, masked: bool) -> Reader {
        Reader {
            max,
            masked,
            partial: None,
        }
    }

    /// The next whole message in `buf`, if there is one.
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        loop {
            let room = self.max - self.partial.as_ref().map_or(0, |(_, p)| p.len());
            let Some(frame) = decode(buf, room.max(125), self.masked)? else {
                return Ok(None);
            };
            let payload = frame.payload;
            match (frame.opcode, &mut self.partial) {
                (Opcode::Ping, _) => return Ok(Some(Message::Ping(payload))),
                (Opcode::Pong, _) => return Ok(Some(Message::Pong(payload))),
                (Opcode::Close, _) => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                (Opcode::Text | Opcode::Binary, Some(_)) => return Err(Error::BadFragment),
                (Opcode::Continuation, None) => return Err(Error::BadFragment),
                (opcode @ (Opcode::Text | Opcode::Binary), None) => {
                    if payload.len() > self.max {
                        return Err(Error::TooLarge);
                    }
                    if frame.fin {
                        return Ok(Some(whole(opcode, payload)));
                    }
                    self.partial = Some((opcode, BytesMut::from(&payload[..])));
                }
                (Opcode::Continuation, Some((_, so_far))) => {
                    if so_far.len() + payload.len() > self.max {
                        return Err(Error::TooLarge);
                    }
                    so_far.extend_from_slice(&payload);
                    if frame.fin {
                        let (opcode, all) = self.partial.take().expect("a message in progress");
                        return Ok(Some(whole(opcode, all.freeze())));
                    }
                }
            }
        }
    }
}

fn whole(opcode: Opcode, payload: Bytes) -> Message {
    match opcode {
        Opcode::Binary => Message::Binary(payload),
        _ => Message::Text(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// RFC 6455 5.7's examples.
    #[test]
    fn the_rfcs_examples_decode() {
        let mut unmasked = BytesMut::from(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f][..]);
        let frame = decode(&mut unmasked, 100, false).unwrap().unwrap();
        assert_eq!(
            (frame.fin, frame.opcode, &frame.payload[..]),
            (true, Opcode::Text, &b"Hello"[..])
        );
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut buf = BytesMut::from(&masked[..]);
        assert_eq!(
            decode(&mut buf, 100, true).unwrap().unwrap().payload,
            &b"Hello"[..]
        );
        let mut out = BytesMut::new();
        encode(Opcode::Text, b"Hello", Some(KEY), &mut out);
        assert_eq!(&out[..], &masked[..]);
        // A fragmented message: "Hel" then "lo".
        let mut buf = BytesMut::from(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f][..]);
        let mut reader = Reader::new(100, false);
        assert_eq!(
            reader.read(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static(b"Hello")))
        );
    }

    #[test]
    fn every_length_form_round_trips_byte_by_byte() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut wire = BytesMut::new();
            encode(Opcode::Binary, &payload, Some(KEY), &mut wire);
            assert_eq!(wire.len(), header_len(len) + 4 + len);
            let mut buf = BytesMut::new();
            let mut got = None;
            for (i, b) in wire.iter().enumerate() {
                buf.put_u8(*b);
                got = decode(&mut buf, 1 << 20, true).unwrap();
                assert!(
                    got.is_none() || i == wire.len() - 1,
                    "whole only at the end"
                );
            }
            assert_eq!(got.unwrap().payload, &payload[..]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_header_in_place_is_the_encoders() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let mut encoded = BytesMut::new();
            encode_header(Opcode::Text, len, None, &mut encoded);
            let (bytes, n) = header(Opcode::Text, len);
            assert_eq!((&bytes[..n], n), (&encoded[..], header_len(len)));
        }
    }

    #[test]
    fn bad_frames_are_refused_before_their_payload() {
        let mut header = BytesMut::new();
        encode_header(Opcode::Text, 1 << 30, Some(KEY), &mut header);
        assert_eq!(decode(&mut header, 8192, true), Err(Error::TooLarge));
        let mut unmasked = BytesMut::new();
        encode(Opcode::Text, b"hi", None, &mut unmasked);
        assert_eq!(decode(&mut unmasked, 8192, true), Err(Error::Unmasked));
        let mut reserved = BytesMut::from(&[0xC1, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut reserved, 8192, true), Err(Error::Reserved));
        let mut long_ping = BytesMut::new();
        encode(Opcode::Ping, &[0; 126], Some(KEY), &mut long_ping);
        assert_eq!(decode(&mut long_ping, 8192, true), Err(Error::BadControl));
        // Fragments that add up past the limit.
        let mut buf = BytesMut::from(
            &[
                0x01, 0x84, 0, 0, 0, 0, 1, 2, 3, 4, 0x80, 0x84, 0, 0, 0, 0, 1, 2, 3, 4,
            ][..],
        );
        assert_eq!(Reader::new(6, true).read(&mut buf), Err(Error::TooLarge));
        let mut stray = BytesMut::from(&[0x80, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(
            Reader::new(6, true).read(&mut stray),
            Err(Error::BadFragment)
        );
    }

    #[test]
    fn control_frames_pass_between_fragments() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[0x01, 0x01, b'a']);
        encode(Opcode::Ping, b"p", None, &mut buf);
        buf.put_slice(&[0x80, 0x01, b'b']);
        encode(
            Opcode::Close,
            &close_payload(close::NORMAL, "bye"),
            None,
            &mut buf,
        );
        let mut reader = Reader::new(100, false);
        assert_eq!(
            reader.read(&mut buf).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            reader.read(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from_static(b"ab")))
        );
        assert_eq!(
            reader.read(&mut buf).unwrap(),
            Some(Message::Close(Some(1000)))
        );
        assert_eq!(reader.read(&mut buf).unwrap(), None);
        assert_eq!(close_payload(1000, &"é".repeat(100)).len(), 2 + 122);
    }
}
