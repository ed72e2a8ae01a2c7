//! WebSocket framing as the server reads it (masked client frames): any bytes, in chunks of
//! any size. The reader never panics, never hands out a message over its limit, never holds
//! more than a frame's worth beyond the message it is joining; and every message it hands
//! out, framed again (masked, in fragments), reads back as itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_proto::ws::{self, Message, Opcode, Reader};

const MAX: usize = 300;

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control & 0x7F) + 1;
    let mut reader = Reader::new(MAX, true);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match reader.read(&mut buf) {
                Ok(None) => break,
                Ok(Some(message)) => again(&message, control),
                Err(_) => return,
            }
        }
        // A frame's header (at most 14 bytes) and payload, and the piece read after it.
        assert!(
            buf.len() <= 14 + MAX + chunk,
            "{} bytes buffered",
            buf.len()
        );
    }
});

/// `message`, written as a client would (masked, data split in fragments), reads back as
/// itself.
fn again(message: &Message, control: u8) {
    let key = [control, 0x5a, 0xa5, control ^ 0xff];
    let mut out = BytesMut::new();
    match message {
        Message::Text(data) | Message::Binary(data) => {
            assert!(data.len() <= MAX);
            let opcode = match message {
                Message::Text(_) => Opcode::Text,
                _ => Opcode::Binary,
            };
            let pieces: Vec<&[u8]> = data.chunks(usize::from(control % 7) + 1).collect();
            if pieces.is_empty() {
                ws::encode(opcode, b"", Some(key), &mut out);
            }
            for (i, piece) in pieces.iter().enumerate() {
                let first = if i == 0 { opcode } else { Opcode::Continuation };
                let mut frame = BytesMut::new();
                ws::encode(first, piece, Some(key), &mut frame);
                if i + 1 < pieces.len() {
                    frame[0] &= 0x7F; // not the final fragment
                }
                out.extend_from_slice(&frame);
            }
        }
        Message::Ping(data) => ws::encode(Opcode::Ping, data, Some(key), &mut out),
        Message::Pong(data) => ws::encode(Opcode::Pong, data, Some(key), &mut out),
        Message::Close(code) => {
            let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
            ws::encode(Opcode::Close, &payload, Some(key), &mut out);
        }
    }
    let mut reader = Reader::new(MAX, true);
    assert_eq!(reader.read(&mut out), Ok(Some(message.clone())));
    assert!(out.is_empty());
}
