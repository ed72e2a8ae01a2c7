//! Seed 003's framed JSON as the server reads it: any bytes, in chunks of any size. The
//! decoder never panics, never buffers more than a frame's bound beyond the piece just
//! read, hands out frames within its bounds that frame again to the same bytes, and the
//! request parser takes whatever JSON a frame holds without panicking; what it accepts
//! writes back as ASCII-only JSON.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_proto::simpletcp::{self, Decoder, Kind, HEADER};

const MAX_JSON: usize = 200;
const MAX_PAYLOAD: usize = 300;

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control & 0x3F) + 1;
    let decoder = Decoder::new(MAX_JSON, MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(frame)) => check(&frame.json, &frame.payload),
                Err(_) => return,
            }
        }
        assert!(
            buf.len() <= HEADER + MAX_JSON + MAX_PAYLOAD + chunk,
            "{} bytes buffered",
            buf.len()
        );
    }
});

fn check(json: &[u8], payload: &[u8]) {
    assert!(json.len() <= MAX_JSON && payload.len() <= MAX_PAYLOAD);
    let mut again = BytesMut::new();
    simpletcp::encode_frame(json, payload, &mut again).expect("JSON within bounds");
    let frame = Decoder::new(MAX_JSON, MAX_PAYLOAD)
        .decode(&mut again)
        .expect("a frame within bounds")
        .expect("a whole frame");
    assert_eq!((&frame.json[..], &frame.payload[..]), (json, payload));
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) {
        let ascii = simpletcp::ascii_json(&value);
        assert!(ascii.is_ascii());
        let back: serde_json::Value = serde_json::from_slice(&ascii).expect("still JSON");
        // Floats need not read back bit for bit (serde_json's default float parser).
        let text = value.to_string();
        if !text.contains(['.', 'e', 'E']) {
            assert_eq!(back, value);
        }
    }
    if let Ok(request) = simpletcp::parse_request(json) {
        let kind = request.kind.unwrap_or(Kind::State);
        let _ = request.body::<simpletcp::Message>();
        let _ = request.body::<simpletcp::UserIdentity>();
        if let Ok(info) = request.body::<simpletcp::UserInfo>() {
            let mut out = BytesMut::new();
            simpletcp::encode_ok(kind.word(), Some(&info), b"", &mut out);
            assert!(out[HEADER..].is_ascii());
        }
    }
}
