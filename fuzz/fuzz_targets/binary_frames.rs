//! Seed-000 binary frames: any bytes, arriving in chunks of any size, through `decode` and
//! `decode_view` side by side. The two agree frame for frame and error for error; every
//! frame they hand out encodes to the bytes it took (0x09 may have had ignored trailing
//! bytes) and decodes back to itself; the buffer never holds more than one frame's worth.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_proto::binary::{self, Decoded, Frame};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the rest arrives: chunk size and the frame limit.
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control & 0x3F) + 1;
    let max = if control & 0x40 != 0 { 64 } else { 65_536 };
    let (mut plain, mut viewed) = (BytesMut::new(), BytesMut::new());
    for piece in data.chunks(chunk) {
        plain.extend_from_slice(piece);
        viewed.extend_from_slice(piece);
        loop {
            let before = plain.len();
            let (a, b) = (
                binary::decode(&mut plain, max),
                binary::decode_view(&mut viewed, max),
            );
            assert_eq!(plain, viewed, "both took the same bytes");
            match (a, b) {
                (Ok(None), Ok(None)) => break,
                (Ok(Some(frame)), Ok(Some(decoded))) => {
                    match (&frame, decoded) {
                        (
                            Frame::Message {
                                cid,
                                message,
                                from,
                                to,
                                time,
                            },
                            Decoded::Message(v),
                        ) => {
                            assert_eq!(
                                (*cid, &message[..], &from[..], &to[..], *time),
                                (v.cid, v.message(), v.from(), v.to(), v.time)
                            );
                        }
                        (frame, Decoded::Frame(other)) => assert_eq!(frame, &other),
                        (frame, other) => panic!("decode {frame:?}, decode_view {other:?}"),
                    }
                    round_trip(&frame, before - plain.len());
                }
                (Err(e), Err(f)) => {
                    assert_eq!(e, f);
                    if e.is_fatal() {
                        return;
                    }
                }
                (a, b) => panic!("decode {a:?}, decode_view {b:?}"),
            }
        }
        assert!(
            plain.len() < 4 + max + chunk,
            "{} bytes buffered",
            plain.len()
        );
    }
});

/// `frame` encodes to the `consumed` bytes it came from and decodes back to itself.
fn round_trip(frame: &Frame, consumed: usize) {
    let mut out = BytesMut::new();
    frame
        .encode(&mut out)
        .expect("a decoded frame's strings fit");
    if matches!(frame, Frame::CorrelationTest { .. }) {
        assert!(out.len() <= consumed);
    } else {
        assert_eq!(out.len(), consumed, "{frame:?}");
    }
    let again = binary::decode(&mut out, usize::MAX >> 1);
    assert_eq!(again, Ok(Some(frame.clone())));
    assert!(out.is_empty());
}
