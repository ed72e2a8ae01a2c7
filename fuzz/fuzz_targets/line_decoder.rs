//! The line splitter of the text and JSON protocols: any bytes in chunks of any size give
//! exactly the lines a plain split gives (a line longer than the limit reported once as too
//! long), and no more than the limit (plus a `\r`) is ever buffered.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use parley_proto::lines::{Line, LineDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let max = usize::from(control & 0x0F);
    let chunk = usize::from(control >> 4) + 1;
    let mut decoder = LineDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(line) = decoder.decode(&mut buf) {
            got.push(line);
        }
        assert!(
            buf.len() <= max + 1,
            "{} bytes buffered, limit {max}",
            buf.len()
        );
    }
    assert_eq!(got, split(data, max));
});

/// The lines of `data` as a whole: every `\n`-terminated piece, one `\r` before the `\n`
/// dropped, too long past `max` bytes.
fn split(data: &[u8], max: usize) -> Vec<Line> {
    let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    pieces.pop(); // not terminated (or empty after the last `\n`)
    pieces
        .into_iter()
        .map(|piece| {
            let line = piece.strip_suffix(b"\r").unwrap_or(piece);
            if line.len() > max {
                Line::TooLong
            } else {
                Line::Complete(Bytes::copy_from_slice(line))
            }
        })
        .collect()
}
